"""The ground gateway: WebRTC in, depth from Triton, 3D keypoints out.

The public surface is listed in ``__all__``; names load lazily so importing a
numeric module such as ``gateway.projection`` does not pull in aiortc or
tritonclient.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.inference import DepthClient, DepthService, OnnxRuntimeDepthClient, TritonDepthClient
    from gateway.metrics import GatewayMetrics
    from gateway.server import Gateway
    from gateway.session import DroneSession

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
    "DepthClient": "gateway.inference",
    "DepthService": "gateway.inference",
    "DroneSession": "gateway.session",
    "Gateway": "gateway.server",
    "GatewayConfig": "gateway.config",
    "GatewayMetrics": "gateway.metrics",
    "OnnxRuntimeDepthClient": "gateway.inference",
    "TritonDepthClient": "gateway.inference",
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
