"""``GET /stream/<drone>``: each processed frame's cloud and keypoints over a WebSocket.

:class:`StreamHub` is a :class:`~gateway.sinks.ResultSink`: the session's worker
thread hands it every frame; if anyone watches that drone it encodes the frame
once (:mod:`dronedepth.stream_format`, the cloud thinned to ``max_points``) and
passes the bytes to the event loop with ``call_soon_threadsafe``. Each
subscriber has a one-frame slot: a frame that arrives while the previous one is
still unsent replaces it (counted as dropped), so a slow viewer sees fewer,
fresh frames and never makes the gateway buffer more than one frame for it.

The route itself (authentication, the drone id) is
:func:`dronedepth.gateway.stream_route.add_stream_routes`; it hands each
accepted request to :meth:`StreamHub.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web
from dronedepth.gateway.outputs.sinks import FrameRecord
from dronedepth.gateway.responses import json_error

from dronedepth.stream_format import StreamFrame, encode_frame

__all__ = ["DEFAULT_MAX_POINTS", "STREAM_ROUTE", "StreamHub", "stream_frame"]

log = logging.getLogger(__name__)

STREAM_ROUTE: Final = "/stream/{drone}"
DEFAULT_MAX_POINTS: Final = 20_000
"""At 15 bytes a point, ~300 kB a frame: a few Mbit/s at 10 fps."""
_HEARTBEAT_S: Final = 30.0


def stream_frame(record: FrameRecord, max_points: int = DEFAULT_MAX_POINTS) -> StreamFrame:
    """The stream message of ``record``: its points thinned by a regular stride to at most ``max_points``.

    The points come in row-major pixel order, so a stride keeps an even
    spread over the image (and costs nothing, unlike a voxel grid). They stay
    in the optical frame: :func:`~dronedepth.stream_format.encode_frame` writes
    them in the message's ``axes`` (the gateway's ``--axes``).
    """
    points, colors = record.result.points, record.result.colors
    if len(points) > max_points:
        step = -(-len(points) // max_points)
        points, colors = points[::step], colors[::step]
    message = record.message
    return StreamFrame(
        frame_index=message.frame_index,
        pts=message.pts,
        stamp=record.stamp_ns / 1e9,
        depth_kind=message.depth_kind,
        axes=message.axes,
        width=message.width,
        height=message.height,
        cloud_xyz=points,
        cloud_rgb=colors,
        keypoints_xyz=message.points,
        keypoints_uv=message.pixels,
        keypoints_score=message.scores,
    )


class _Subscriber:
    """One WebSocket client of one drone. Touched only on the event loop."""

    __slots__ = ("closing", "drone_id", "dropped", "event", "pending", "sent", "ws")

    def __init__(self, drone_id: str, ws: web.WebSocketResponse) -> None:
        self.drone_id = drone_id
        self.ws = ws
        self.pending: bytes | None = None
        self.event = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.closing = False

    def offer(self, payload: bytes) -> None:
        if self.pending is not None:
            self.dropped += 1
        self.pending = payload
        self.event.set()

    async def next(self) -> bytes | None:
        """The newest unsent frame, waiting for one; None once the hub closes."""
        while self.pending is None and not self.closing:
            self.event.clear()
            await self.event.wait()
        payload, self.pending = self.pending, None
        return None if self.closing else payload


class StreamHub:
    """Fans encoded frames out to WebSocket subscribers; a :class:`~gateway.sinks.ResultSink`.

    ``write`` is called from worker threads; everything else about
    subscribers runs on the event loop the app runs on (bound at startup by
    :func:`~dronedepth.gateway.stream_route.add_stream_routes`). A drone nobody watches costs nothing per frame.
    """

    def __init__(self, *, max_points: int = DEFAULT_MAX_POINTS, max_subscribers: int = 32) -> None:
        if max_points < 1 or max_subscribers < 1:
            raise ValueError(f"max_points and max_subscribers must be positive, got {max_points}, {max_subscribers}")
        self.max_points = max_points
        self.max_subscribers = max_subscribers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: dict[str, set[_Subscriber]] = {}
        # What worker threads may read: how many subscribers each drone has.
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}
        self._closed = False
        # Totals for metrics; sent/dropped are added when a subscriber leaves. Event loop only.
        self.frames_encoded = 0
        self.frames_sent = 0
        self.frames_dropped = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver frames on ``loop`` (the aiohttp app's)."""
        with self._lock:
            self._loop = loop
            self._closed = False

    def subscriber_count(self, drone_id: str | None = None) -> int:
        with self._lock:
            return sum(self._wanted.values()) if drone_id is None else self._wanted.get(drone_id, 0)

    # ------------------------------------------------------------------ ResultSink (worker threads)

    def write(self, record: FrameRecord) -> None:
        with self._lock:
            loop = None if self._closed else self._loop
            watched = record.drone_id in self._wanted
        if loop is None or not watched:
            return
        payload = encode_frame(stream_frame(record, self.max_points))
        with contextlib.suppress(RuntimeError):  # the loop has closed: the gateway is stopping
            loop.call_soon_threadsafe(self._publish, record.drone_id, payload)

    def close_drone(self, drone_id: str) -> None:
        """Nothing to finish: viewers stay connected and get frames again if the drone comes back."""

    def close(self) -> None:
        """Disconnect every subscriber (close code 1001). Idempotent; callable from any thread."""
        with self._lock:
            loop, self._closed = self._loop, True
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._close_all)

    # ------------------------------------------------------------------ event loop side

    def _publish(self, drone_id: str, payload: bytes) -> None:
        self.frames_encoded += 1
        for subscriber in self._subscribers.get(drone_id, ()):
            subscriber.offer(payload)

    def _subscribe(self, drone_id: str, ws: web.WebSocketResponse) -> _Subscriber | None:
        with self._lock:
            if self._closed or sum(self._wanted.values()) >= self.max_subscribers:
                return None
            self._wanted[drone_id] = self._wanted.get(drone_id, 0) + 1
        subscriber = _Subscriber(drone_id, ws)
        self._subscribers.setdefault(drone_id, set()).add(subscriber)
        return subscriber

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        group = self._subscribers.get(subscriber.drone_id)
        if group is None or subscriber not in group:
            return
        group.discard(subscriber)
        if not group:
            del self._subscribers[subscriber.drone_id]
        with self._lock:
            left = self._wanted.get(subscriber.drone_id, 1) - 1
            if left > 0:
                self._wanted[subscriber.drone_id] = left
            else:
                self._wanted.pop(subscriber.drone_id, None)

    def _close_all(self) -> list[_Subscriber]:
        subscribers = [s for group in self._subscribers.values() for s in group]
        for subscriber in subscribers:
            subscriber.closing = True
            subscriber.event.set()
        return subscribers

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Close every subscriber's WebSocket; an ``on_shutdown`` hook (an open socket would delay shutdown)."""
        with self._lock:
            self._closed = True
        subscribers = self._close_all()
        await asyncio.gather(
            *(s.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway stopping") for s in subscribers),
            return_exceptions=True,
        )

    async def _send_loop(self, subscriber: _Subscriber) -> None:
        ws = subscriber.ws
        try:
            while True:
                payload = await subscriber.next()
                if payload is None:
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway stopping")
                    return
                # Waits while the client's socket is full; meanwhile newer frames replace `pending`.
                await ws.send_bytes(payload)
                subscriber.sent += 1
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("stream %s: send stopped: %r", subscriber.drone_id, exc)

    async def serve(self, request: web.Request, drone_id: str) -> web.StreamResponse:
        """Stream ``drone_id``'s frames to the WebSocket client of ``request`` until it leaves or the hub closes."""
        ws = web.WebSocketResponse(heartbeat=_HEARTBEAT_S, max_msg_size=64 * 1024)
        if not ws.can_prepare(request).ok:
            return json_error(
                400,
                "not_websocket",
                f"{request.path} is a WebSocket endpoint: connect with a WebSocket client",
            )
        subscriber = self._subscribe(drone_id, ws)
        if subscriber is None:
            return json_error(
                503,
                "unavailable",
                f"the gateway is stopping or already serves {self.max_subscribers} stream clients",
                {"Retry-After": "5"},
            )
        sender: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            log.info("stream %s: viewer connected from %s", drone_id, request.remote)
            sender = asyncio.create_task(self._send_loop(subscriber), name=f"stream-{drone_id}-send")
            async for message in ws:  # viewers send nothing; reading notices when they leave
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self._unsubscribe(subscriber)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            # Counted once the sender has stopped, so no send can land after it.
            self.frames_sent += subscriber.sent
            self.frames_dropped += subscriber.dropped
            log.info(
                "stream %s: viewer left: %d frames sent, %d dropped (slow viewer)",
                drone_id,
                subscriber.sent,
                subscriber.dropped,
            )
        return ws
