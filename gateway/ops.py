"""The operations endpoints: what orchestrators and Prometheus poll.

- ``GET /health``: liveness (always 200 while the process serves HTTP), open.
- ``GET /ready``: 200 when the depth server answers and the model is ready,
  else 503. Open, but only the status: with the operator token it also tells
  the depth server's address, the model's depth kind and the session counts.
- ``GET /metrics``: the gateway's Prometheus registry
  (:mod:`dronedepth.gateway.metrics`). Open for the aggregate series; the
  per-drone series (which name the connected drones) need the operator token
  (Prometheus: ``authorization: {credentials_file: ...}`` in the scrape config).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dronedepth.gateway.app_keys import ACCESS_TOKEN, GATEWAY
from dronedepth.gateway.auth import presented_token, token_matches
from dronedepth.gateway.metrics import CONTENT_TYPE

__all__ = ["add_ops_routes"]


def _operator(request: web.Request) -> bool:
    """True when the request carries the operator token (or the gateway has none)."""
    return token_matches(presented_token(request, allow_query=False), request.app[ACCESS_TOKEN])


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    ready = await gateway.depth.ready()
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
    if _operator(request):
        body["depth_server"] = str(gateway.depth.client)
        body["sessions"] = len(gateway.sessions)
        body["max_drones"] = gateway.config.max_drones
        if ready:
            body["depth_kind"] = gateway.depth.depth_kind
    return web.json_response(body, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[GATEWAY].metrics.render(detail=_operator(request))
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def add_ops_routes(app: web.Application) -> None:
    """Mount ``/health``, ``/ready`` and ``/metrics`` on ``app``, which holds the gateway (``GATEWAY``)."""
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
