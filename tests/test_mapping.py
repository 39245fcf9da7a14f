"""The gateway's map service: the one-slot-per-drone handoff, its counts, and what it gives back."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
from map_fixtures import SETTINGS, CountingRegistry, fuse
from numpy.typing import NDArray
from test_fusion import CAMERA, FLIGHT_A, FLIGHT_B, _pose

from dronedepth.errors import ConfigError
from dronedepth.gateway.fusion import FUSED, MapConfig, MapRegistry
from dronedepth.gateway.mapping import MapService, MapSettings
from dronedepth.gateway.obstacles import ObstacleConfig, ObstacleProfile, SectorLayout
from dronedepth.pose_buffer import TimedPose
from dronedepth.protocol import CameraPose, LocalMapMessage, decode

DEPTH = np.ones((CAMERA.height, CAMERA.width), np.float32)
POSE = CameraPose("map", FLIGHT_A[0])


class _HeldRegistry(MapRegistry):
    """A registry whose ``offer`` waits for the test to let it go: a fusion that takes as long as the test likes."""

    def __init__(self, config: MapConfig) -> None:
        super().__init__(config)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.offered: list[tuple[str, float]] = []
        self.done = threading.Semaphore(0)

    def offer(self, drone_id: str, depth_m: NDArray[np.float32], *args: object, **kwargs: object) -> str:  # type: ignore[override]
        self.entered.set()
        assert self.release.wait(30)
        self.offered.append((drone_id, float(depth_m[0, 0])))
        self.done.release()
        return FUSED


def test_frames_without_pose_metric_depth_or_selection_are_counted_and_never_queued() -> None:
    service = MapService(dataclasses.replace(SETTINGS, drones=frozenset({"a"})))
    assert service.submit("b", DEPTH, CAMERA, POSE, metric=True, stamp=0.0) == "not_selected"
    assert service.submit("a", DEPTH, CAMERA, POSE, metric=False, stamp=0.0) == "not_metric"
    assert service.submit("a", DEPTH, CAMERA, None, metric=True, stamp=0.0) == "no_pose"
    assert service.submit("a", DEPTH, CAMERA, POSE, metric=True, stamp=0.0) is None  # waits for the thread
    counts = service.counts()
    assert counts["not_selected"] == counts["not_metric"] == counts["no_pose"] == 1
    assert counts["fused"] == counts["behind"] == 0


def test_a_frame_arriving_while_the_previous_waits_replaces_it_and_counts_behind() -> None:
    service = MapService(SETTINGS)
    service.registry = registry = _HeldRegistry(SETTINGS.fusion)
    service.start()
    try:
        assert service.submit("a", DEPTH * 1, CAMERA, POSE, metric=True, stamp=0.0) is None
        assert registry.entered.wait(30)  # the thread is busy with frame 1 and cannot take more
        # Submitting never waits for the busy thread (if it did, this test would hang here).
        assert service.submit("a", DEPTH * 2, CAMERA, POSE, metric=True, stamp=0.0) is None
        assert service.submit("a", DEPTH * 3, CAMERA, POSE, metric=True, stamp=0.0) == "behind"
        assert service.submit("b", DEPTH * 4, CAMERA, POSE, metric=True, stamp=0.0) is None  # its own slot
        registry.release.set()
        for _ in range(3):
            assert registry.done.acquire(timeout=30)
    finally:
        service.close(timeout=5.0)
    # Frame 2 never reached the map; the newest of drone a and drone b's did, in the order they waited.
    assert registry.offered == [("a", 1.0), ("a", 3.0), ("b", 4.0)]
    assert service.counts()["behind"] == 1


def test_fused_frames_feed_the_snapshot_local_map_360_profile_ply_png_and_metrics(tmp_path: Path) -> None:
    service = MapService(SETTINGS)
    service.registry = registry = CountingRegistry(SETTINGS.fusion)
    service.start()
    try:
        fuse(service, registry, "a", FLIGHT_A)
        fuse(service, registry, "b", FLIGHT_B)
    finally:
        service.close(timeout=5.0)
    counts = service.counts()
    assert counts["fused"] == len(FLIGHT_A) + len(FLIGHT_B) and counts["behind"] == 0
    snapshot = service.snapshot("map")
    assert snapshot is not None and len(snapshot.points) > 1000
    assert service.snapshot("odom") is None

    # local_map: taken once, around the drone, in the drone's world frame.
    text = service.take_local_map("b")
    assert text is not None and service.take_local_map("b") is None
    local = decode(text)
    assert isinstance(local, LocalMapMessage) and local.frame_id == "map" and local.width == 80
    assert (local.grid != 255).sum() > 100

    # The camera's forward sectors stay the camera's; drone B (south of A, facing south) gets the
    # north box that only A saw, 10 m behind it, from the map.
    camera = ObstacleProfile(
        SectorLayout(5.0, -35.0, 15), np.full(15, 6.0, np.float32), 0.3, 15.0, gravity_aligned=True
    )
    body = TimedPose(0.0, _pose(0.0, -3.0, -90.0))
    merged = service.surround("b", camera, body, "map", ObstacleConfig(max_range_m=15.0))
    assert merged.layout.count == 72 and merged.sources is not None
    assert merged.source_names[0] == "camera" and merged.distances_m[0] == 6.0
    assert merged.source_names[36] == "map" and abs(float(merged.distances_m[36]) - 10.0) <= 0.3
    assert service.surround("b", camera, None, None, ObstacleConfig()) is camera  # no pose: camera only

    # The PLY reads back with Open3D, in ENU metres.
    ply = service.ply_bytes("map", "cloud")
    assert ply is not None and ply.startswith(b"ply\n")
    (tmp_path / "cloud.ply").write_bytes(ply)
    cloud = o3d.io.read_point_cloud(str(tmp_path / "cloud.ply"))
    assert len(cloud.points) == len(service.snapshot("map").points)  # type: ignore[union-attr]
    mesh_ply = service.ply_bytes("map", "mesh")
    assert mesh_ply is not None
    (tmp_path / "mesh.ply").write_bytes(mesh_ply)
    assert len(o3d.io.read_triangle_mesh(str(tmp_path / "mesh.ply")).triangles) > 1000
    assert service.ply_bytes("odom", "cloud") is None

    png = service.occupancy_png("map")
    assert png is not None
    image = cv2.imdecode(np.frombuffer(png[0], np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2 and image.max() > 0

    saved = service.save(tmp_path / "record")
    assert saved == [tmp_path / "record" / "map_map.ply"]
    assert sorted(p.name for p in (tmp_path / "record").iterdir()) == ["map_map.ply"]  # no temporary left

    families = {family.name: family for family in service.collect()}
    frames = {s.labels["outcome"]: s.value for s in families["dronedepth_map_frames"].samples}
    assert frames["fused"] == counts["fused"]
    assert next(s.value for s in families["dronedepth_map_blocks"].samples) > 0


def test_the_local_map_box_must_fit_the_message() -> None:
    with pytest.raises(ConfigError, match=r"half-width of at most 10\.0 m"):
        MapSettings(fusion=MapConfig(voxel_size_m=0.1), local_map_half_width_m=15.0)
    with pytest.raises(ConfigError, match="height levels"):
        MapSettings(fusion=MapConfig(voxel_size_m=0.1), local_map_below_m=20.0, local_map_above_m=10.0)
