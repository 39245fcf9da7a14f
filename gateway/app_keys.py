"""The typed keys under which the gateway's aiohttp application holds what its route handlers need.

Set by :func:`dronedepth.gateway.app.create_app` (and, for a bare stream app,
:func:`dronedepth.gateway.stream_route.add_stream_routes`); read by the
handlers from ``request.app``, so no route module imports the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

if TYPE_CHECKING:
    from dronedepth.gateway.outputs.stream import StreamHub
    from dronedepth.gateway.server import Gateway

__all__ = ["ACCESS_TOKEN", "GATEWAY", "STREAM_HUB"]

GATEWAY: Final[web.AppKey[Gateway]] = web.AppKey("dronedepth_gateway")
"""The gateway the app serves: its config, sessions, depth service, metrics and preview hub."""
STREAM_HUB: Final[web.AppKey[StreamHub]] = web.AppKey("dronedepth_stream_hub")
"""The hub behind ``GET /stream/<drone>``."""
ACCESS_TOKEN: Final[web.AppKey[str | None]] = web.AppKey("dronedepth_access_token")
"""The bearer token every endpoint but the health checks and assets wants; None: no authentication."""
