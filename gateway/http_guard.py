"""Deadlines and a cap for HTTP connections whose request has not reached a handler.

aiohttp has no header timeout: a client that trickles its request line or
headers (or connects and sends nothing) holds a connection, a file descriptor
and a parser for as long as it likes, before any token is checked.
:class:`ConnectionGuard` wraps aiohttp's per-connection protocol:

- a connection must get a request into a handler within ``header_timeout``
  seconds of opening, and again within ``header_timeout`` of its previous
  response (keep-alive idle), or it is closed;
- at most ``max_waiting`` connections may be waiting so (connected, no request
  in a handler): more are closed as they arrive;
- inside a handler the connection is the handler's business (the WebSocket of
  ``/stream`` lives there; ``POST /offer`` bounds its body read itself).

Closed connections are counted through ``on_drop(reason)``. The guard sees a
request reach a handler through :meth:`ConnectionGuard.middleware`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

__all__ = ["ConnectionGuard", "GuardedTCPSite"]


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard's deadline around it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_handlers = 0
        self._refused = False

    # -- asyncio.Protocol, forwarded to aiohttp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # loop.create_server gives a stream protocol a full Transport (with abort); asyncio.Protocol's
        # signature only promises the base class.
        stream = cast(asyncio.Transport, transport)
        guard = self._guard
        if len(guard.waiting) >= guard.max_waiting:
            self._refused = True
            guard.on_drop("too_many_waiting")
            stream.abort()
            return
        self._transport = stream
        guard.by_transport[stream] = self
        self._wait()
        self._inner.connection_made(stream)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._stop_waiting()
        self._guard.by_transport.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:  # anything else aiohttp or asyncio asks of its protocol
        return getattr(self._inner, name)

    # -- the deadline

    def _wait(self) -> None:
        """Start waiting for the next request to reach a handler."""
        self._guard.waiting.add(self)
        self._timer = asyncio.get_running_loop().call_later(self._guard.header_timeout, self._expire)

    def _stop_waiting(self) -> None:
        self._guard.waiting.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._in_handlers == 0 and self._transport is not None:
            self._guard.on_drop("header_timeout")
            self._transport.abort()

    def entered_handler(self) -> None:
        self._in_handlers += 1
        self._stop_waiting()

    def left_handler(self) -> None:
        self._in_handlers -= 1
        if self._in_handlers == 0 and self._transport is not None and not self._transport.is_closing():
            self._wait()


class ConnectionGuard:
    """The connection deadline and cap of one server (see the module docstring)."""

    def __init__(self, *, header_timeout: float, max_waiting: int, on_drop: Callable[[str], None]) -> None:
        self.header_timeout = header_timeout
        self.max_waiting = max_waiting
        self.on_drop = on_drop
        self.waiting: set[_GuardedConnection] = set()
        """Connections with no request in a handler now."""
        self.by_transport: dict[object, _GuardedConnection] = {}

    def wrap(self, protocol_factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that guards each connection of ``protocol_factory``."""
        return lambda: _GuardedConnection(self, protocol_factory())

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Tell the guard that ``request`` reached a handler (its connection's deadline stops meanwhile)."""
        connection = self.by_transport.get(request.transport)
        if connection is None:
            return await handler(request)
        connection.entered_handler()
        try:
            return await handler(request)
        finally:
            connection.left_handler()


class GuardedTCPSite(web.TCPSite):
    """A :class:`aiohttp.web.TCPSite` whose connections go through ``guard``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
