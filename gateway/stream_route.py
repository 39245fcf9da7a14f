"""``GET /stream/<drone>``: the route in front of the :class:`~dronedepth.gateway.outputs.stream.StreamHub`.

Authentication is the gateway's operator token (:mod:`dronedepth.gateway.auth`; a drone's own token does not open it),
in ``Authorization: Bearer <token>`` or, for browsers (which cannot set
WebSocket headers), ``?token=<token>``. An accepted request is handed to
:meth:`StreamHub.serve <dronedepth.gateway.outputs.stream.StreamHub.serve>`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from dronedepth.gateway.app_keys import ACCESS_TOKEN, STREAM_HUB
from dronedepth.gateway.auth import CHALLENGE, presented_token, token_matches
from dronedepth.gateway.outputs.stream import STREAM_ROUTE, StreamHub
from dronedepth.gateway.refusals import refuse
from dronedepth.gateway.responses import json_error
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE, INVALID_DRONE_ID, UNAUTHORIZED

__all__ = ["add_stream_routes"]


async def _stream(request: web.Request) -> web.StreamResponse:
    if not token_matches(presented_token(request, allow_query=True), request.app[ACCESS_TOKEN]):
        return refuse(
            request,
            "stream",
            401,
            UNAUTHORIZED,
            "missing or wrong token: send 'Authorization: Bearer <token>' or add ?token=<token>",
            CHALLENGE,
        )
    drone_id = request.match_info["drone"]
    if not DRONE_ID_PATTERN.fullmatch(drone_id):
        return json_error(400, INVALID_DRONE_ID, f"drone id {drone_id!r} must be {DRONE_ID_RULE}")
    return await request.app[STREAM_HUB].serve(request, drone_id)


async def _bind_hub(app: web.Application) -> None:
    app[STREAM_HUB].bind(asyncio.get_running_loop())


async def _shut_hub(app: web.Application) -> None:
    await app[STREAM_HUB].shutdown()


def add_stream_routes(app: web.Application, hub: StreamHub, token: str | None) -> None:
    """Mount ``GET /stream/{drone}`` for ``hub`` on ``app`` (before it starts); ``token`` None disables auth."""
    app[STREAM_HUB] = hub
    app[ACCESS_TOKEN] = token
    app.on_startup.append(_bind_hub)
    app.on_shutdown.append(_shut_hub)
    app.router.add_get(STREAM_ROUTE, _stream)
