"""Shared world-map test helpers: map settings for the synthetic scene and fusing its flights one frame at a time.

- :data:`SETTINGS`: 0.2 m voxels out to 15 m, no pose gate, local maps and snapshots at every fused frame;
- :class:`CountingRegistry`: a :class:`~dronedepth.gateway.fusion.MapRegistry` that says when each frame's
  ``offer`` returned, and with what outcome;
- :func:`fuse`: one drone's flight over the synthetic scene (``test_fusion``) into a running map service; it
  returns once the service has published the snapshot of its last frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from test_fusion import CAMERA, _depth, _scene

from dronedepth.frames import Transform
from dronedepth.gateway.fusion import FUSED, MapConfig, MapRegistry
from dronedepth.gateway.mapping import MapService, MapSettings
from dronedepth.protocol import CameraPose

SETTINGS = MapSettings(
    fusion=MapConfig(voxel_size_m=0.2, max_depth_m=15.0, block_budget=4000, gate=False),
    local_map_half_width_m=8.0,
    local_map_period_s=0.0,
    snapshot_period_s=0.0,
)


class CountingRegistry(MapRegistry):
    """A registry that says when each frame's ``offer`` returned (``done``) and its outcome (``outcome``).

    ``offer`` returning is not the end of the frame: the service's thread then reads the map's occupied
    voxels and publishes them as its snapshot (:meth:`MapService.snapshot`). :func:`fuse` waits for both.
    """

    def __init__(self, config: MapConfig) -> None:
        super().__init__(config)
        self.done = threading.Semaphore(0)
        self.outcome: str | None = None
        """The last ``offer``'s outcome (None: it raised)."""

    def offer(self, *args: object, **kwargs: object) -> str:  # type: ignore[override]
        self.outcome = None
        try:
            self.outcome = super().offer(*args, **kwargs)  # type: ignore[arg-type]
            return self.outcome
        finally:
            self.done.release()


def fuse(service: MapService, registry: CountingRegistry, drone: str, flight: Sequence[Transform]) -> None:
    """Submit each camera pose of ``flight`` (``map`` from camera) with the scene's exact metric depth, waiting
    for each frame to be fused and its snapshot published before the next (none skipped).

    On return ``service.snapshot("map")`` is the map with every frame of ``flight`` in it: the service
    publishes no newer snapshot until something else is fused. Needs a snapshot at every fused frame
    (``snapshot_period_s`` 0, as in :data:`SETTINGS`).
    """
    assert service.settings.snapshot_period_s == 0.0, "fuse() waits for a snapshot at every fused frame"
    scene = _scene()
    for world_from_camera in flight:
        depth, _ = _depth(scene, world_from_camera)
        before = service.snapshot("map")
        service.submit(drone, depth, CAMERA, CameraPose("map", world_from_camera), metric=True, stamp=1.0)
        assert registry.done.acquire(timeout=30)
        assert registry.outcome == FUSED, registry.outcome
        # The thread publishes the frame's snapshot after offer() returns (a few ms for these maps).
        deadline = time.monotonic() + 30
        while service.snapshot("map") is before:
            assert time.monotonic() < deadline, "the fused frame's snapshot was never published"
            time.sleep(0.001)
