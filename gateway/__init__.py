"""The ground gateway: WebRTC in, depth from Triton, 3D keypoints out.

The public surface is listed in ``__all__``; names load lazily so importing a
numeric module such as ``gateway.projection`` does not pull in aiortc or
tritonclient.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.inference import DepthClient, DepthService, OnnxRuntimeDepthClient, TritonDepthClient
    from dronedepth.gateway.metrics import GatewayMetrics
    from dronedepth.gateway.server import Gateway
    from dronedepth.gateway.session import DroneSession

__all__ = [
    "DepthClient",
    "DepthService",
    "DroneSession",
    "Gateway",
    "GatewayConfig",
    "GatewayMetrics",
    "OnnxRuntimeDepthClient",
    "TritonDepthClient",
]

_WHERE = {
    "DepthClient": "dronedepth.gateway.inference",
    "DepthService": "dronedepth.gateway.inference",
    "DroneSession": "dronedepth.gateway.session",
    "Gateway": "dronedepth.gateway.server",
    "GatewayConfig": "dronedepth.gateway.config",
    "GatewayMetrics": "dronedepth.gateway.metrics",
    "OnnxRuntimeDepthClient": "dronedepth.gateway.inference",
    "TritonDepthClient": "dronedepth.gateway.inference",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
