"""Shared world-map test helpers: map settings for the synthetic scene and fusing its flights one frame at a time.

- :data:`SETTINGS`: 0.2 m voxels out to 15 m, no pose gate, local maps and snapshots at every fused frame;
- :class:`CountingRegistry`: a :class:`~dronedepth.gateway.fusion.MapRegistry` that says when each frame is done;
- :func:`fuse`: one drone's flight over the synthetic scene (``test_fusion``) into a running map service.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from test_fusion import CAMERA, _depth, _scene

from dronedepth.frames import Transform
from dronedepth.gateway.fusion import MapConfig, MapRegistry
from dronedepth.gateway.mapping import MapService, MapSettings
from dronedepth.protocol import CameraPose

SETTINGS = MapSettings(
    fusion=MapConfig(voxel_size_m=0.2, max_depth_m=15.0, block_budget=4000, gate=False),
    local_map_half_width_m=8.0,
    local_map_period_s=0.0,
    snapshot_period_s=0.0,
)


class CountingRegistry(MapRegistry):
    """A registry that says when each frame is done (the thread then has published what it fused)."""

    def __init__(self, config: MapConfig) -> None:
        super().__init__(config)
        self.done = threading.Semaphore(0)

    def offer(self, *args: object, **kwargs: object) -> str:  # type: ignore[override]
        try:
            return super().offer(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.done.release()


def fuse(service: MapService, registry: CountingRegistry, drone: str, flight: Sequence[Transform]) -> None:
    """Submit each camera pose of ``flight`` (``map`` from camera) with the scene's exact metric depth, waiting
    for each frame to be fused before the next (none skipped)."""
    scene = _scene()
    for world_from_camera in flight:
        depth, _ = _depth(scene, world_from_camera)
        service.submit(drone, depth, CAMERA, CameraPose("map", world_from_camera), metric=True, stamp=1.0)
        assert registry.done.acquire(timeout=30)
