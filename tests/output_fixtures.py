"""Shared helpers for the output tests: a processed frame record, and a stream hub served on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import numpy as np
from aiohttp import web

from dronedepth.contract import depth_grid_shape
from dronedepth.gateway.outputs.sinks import FrameRecord
from dronedepth.gateway.outputs.stream import StreamHub
from dronedepth.gateway.pipeline import DensePoints, FrameResult
from dronedepth.gateway.stream_route import add_stream_routes
from dronedepth.protocol import CameraMessage, KeypointsMessage

STAMP = 1_700_000_000.25


def make_record(
    drone_id: str = "drone-1",
    *,
    n: int = 1000,
    k: int = 12,
    frame_index: int = 0,
    axes: str = "optical",
    depth_kind: str = "metric",
    width: int = 64,
    height: int = 48,
    stamp: float = STAMP,
    seed: int = 0,
    depth_stride: int = 1,
) -> FrameRecord:
    """A processed frame with random optical-frame points (z > 0); ``axes`` is its wire frame.

    Its depth is on the grid of a model of ``depth_stride`` (``depth_camera`` that grid's camera; None at 1).
    """
    rng = np.random.default_rng(seed)
    optical = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1, 1, n), rng.uniform(0.5, 9, n)]).astype(np.float32)
    kp_optical = optical[:k].copy()
    message = KeypointsMessage(
        pts=frame_index * 3000,
        points=kp_optical,
        pixels=rng.uniform(0, [width, height], (k, 2)).astype(np.float32),
        scores=rng.uniform(0, 1, k).astype(np.float32),
        depth_kind=depth_kind,  # type: ignore[arg-type]
        width=width,
        height=height,
        frame_index=frame_index,
        axes=axes,  # type: ignore[arg-type]
    )
    u = np.linspace(0, 255, width, dtype=np.float32)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = u[None, :]
    rgb[..., 1] = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb[..., 2] = 128
    depth = rng.uniform(0.5, 9, depth_grid_shape(height, width, depth_stride)).astype(np.float32)
    if depth_kind == "relative":
        depth[0, :5] = np.nan
    camera = CameraMessage(
        width, height, 50.0, 52.0, width / 2 - 0.5, height / 2 + 0.5, (0.1, -0.02, 0.001, 0.002, 0.003)
    )
    result = FrameResult(
        message=message,
        cloud=None,
        dense=DensePoints.of(optical, rng.integers(0, 256, (n, 3), dtype=np.uint8)),
        depth=depth,
        depth_camera=None if depth_stride == 1 else camera.strided(depth_stride),
    )
    return FrameRecord.from_capture_time(drone_id, stamp + frame_index * 0.1, camera, rgb, result)


@contextlib.asynccontextmanager
async def serve_stream_hub(token: str | None, hub: StreamHub | None = None) -> AsyncIterator[tuple[str, StreamHub]]:
    """``hub`` (a new one by default) behind ``/stream/<drone>`` on 127.0.0.1; yields (base URL, hub)."""
    hub = hub or StreamHub()
    app = web.Application()
    add_stream_routes(app, hub, token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", hub
    finally:
        await runner.cleanup()
