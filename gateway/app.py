"""The gateway's aiohttp application: every HTTP route, composed in one place.

- ``POST /offer`` (:mod:`~dronedepth.gateway.signaling`),
- ``GET /health``, ``/ready``, ``/metrics`` (:mod:`~dronedepth.gateway.ops`),
- every request passes the gateway's connection guard first
  (:mod:`~dronedepth.gateway.http_guard`: header deadline, cap on waiting connections),
- ``GET /stream/<drone>`` (:mod:`~dronedepth.gateway.stream_route`),
- the web pages ``/``, ``/drone``, ``/assets/...`` and the API ``/api/drones...``
  (:mod:`~dronedepth.gateway.web`),
- the world map ``GET /map.ply`` and ``/api/map.png`` (:mod:`~dronedepth.gateway.map_routes`).

The route modules import neither this module nor the server: their handlers
read the gateway and the token from the app (:mod:`~dronedepth.gateway.app_keys`).
"""

from __future__ import annotations

from aiohttp import web

from dronedepth.gateway import signaling
from dronedepth.gateway.app_keys import ACCESS_TOKEN, GATEWAY, RoutedGateway
from dronedepth.gateway.map_routes import add_map_routes
from dronedepth.gateway.ops import add_ops_routes
from dronedepth.gateway.stream_route import add_stream_routes
from dronedepth.gateway.web import add_web_routes

__all__ = ["create_app"]


def create_app(gateway: RoutedGateway) -> web.Application:
    """The aiohttp application serving ``gateway``: signalling, operations, ``/stream`` and the web pages."""
    app = web.Application(client_max_size=gateway.config.max_body_bytes, middlewares=[gateway.guard.middleware])
    app[GATEWAY] = gateway
    app[ACCESS_TOKEN] = gateway.config.token
    app.router.add_post("/offer", signaling.offer)
    add_ops_routes(app)
    add_stream_routes(app, gateway.stream_hub, gateway.config.token)
    add_web_routes(app)
    add_map_routes(app)
    return app
