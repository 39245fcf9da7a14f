"""The typed keys under which the gateway's aiohttp application holds what its route handlers need.

Set by :func:`dronedepth.gateway.app.create_app` (and, for a bare stream app,
:func:`dronedepth.gateway.stream_route.add_stream_routes`); read by the
handlers from ``request.app``. The handlers see the gateway through
:class:`RoutedGateway`, the part of :class:`~dronedepth.gateway.server.Gateway`
they use, so no route module depends on the server, not even for types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.http_guard import ConnectionGuard
    from dronedepth.gateway.inference import DepthService
    from dronedepth.gateway.logthrottle import LogThrottle
    from dronedepth.gateway.mapping import MapService
    from dronedepth.gateway.metrics import GatewayMetrics
    from dronedepth.gateway.outputs.previews import PreviewHub
    from dronedepth.gateway.outputs.stream import StreamHub
    from dronedepth.gateway.session import DroneSession
    from dronedepth.protocol import SessionDescription

__all__ = ["ACCESS_TOKEN", "GATEWAY", "STREAM_HUB", "RoutedGateway"]


class RoutedGateway(Protocol):
    """What the route handlers use of the gateway."""

    config: GatewayConfig
    depth: DepthService
    metrics: GatewayMetrics
    preview_hub: PreviewHub | None
    world_map: MapService | None
    stream_hub: StreamHub
    guard: ConnectionGuard
    refusal_log: LogThrottle

    @property
    def drone_ids_by_token_digest(self) -> Mapping[str, str] | None: ...

    @property
    def sessions(self) -> Mapping[str, DroneSession]: ...

    def new_drone_id(self) -> str: ...

    async def open_session(self, offer: SessionDescription, drone_id: str, *, remote: str = "?") -> str: ...


GATEWAY: Final[web.AppKey[RoutedGateway]] = web.AppKey("dronedepth_gateway")
"""The gateway the app serves: its config, sessions, depth service, metrics and preview hub."""
STREAM_HUB: Final[web.AppKey[StreamHub]] = web.AppKey("dronedepth_stream_hub")
"""The hub behind ``GET /stream/<drone>``."""
ACCESS_TOKEN: Final[web.AppKey[str | None]] = web.AppKey("dronedepth_access_token")
"""The bearer token every endpoint but the health checks and assets wants; None: no authentication."""
