"""The operations endpoints: what orchestrators and Prometheus poll (no authentication).

- ``GET /health``: liveness (always 200 while the process serves HTTP).
- ``GET /ready``: 200 when the depth server answers and the model is ready, else 503.
- ``GET /metrics``: the gateway's Prometheus registry (:mod:`dronedepth.gateway.metrics`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from dronedepth.gateway.app_keys import GATEWAY
from dronedepth.gateway.metrics import CONTENT_TYPE

__all__ = ["add_ops_routes"]


async def _health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return web.json_response({"status": "ok", "sessions": len(gateway.sessions)})


async def _ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    ready = await gateway.depth.ready()
    body: dict[str, Any] = {
        "status": "ready" if ready else "unavailable",
        "depth_server": str(gateway.depth.client),
        "sessions": len(gateway.sessions),
        "max_drones": gateway.config.max_drones,
    }
    if ready:
        body["depth_kind"] = gateway.depth.depth_kind
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[GATEWAY].metrics.render()
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def add_ops_routes(app: web.Application) -> None:
    """Mount ``/health``, ``/ready`` and ``/metrics`` on ``app``, which holds the gateway (``GATEWAY``)."""
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
