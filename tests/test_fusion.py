"""The world map: synthetic flights with exact depth and pose through a known scene of boxes on flat ground."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import open3d as o3d
import open3d.core as o3c
import pytest
from numpy.typing import NDArray

from dronedepth import protocol
from dronedepth.frames import Transform, body_from_camera, quaternion_from_rpy
from dronedepth.gateway.fusion import (
    FUSED,
    SKIP_NO_POSE,
    SKIP_NOT_METRIC,
    SKIP_NOT_SELECTED,
    SKIP_POSE_REJECTED,
    MapConfig,
    MapRegistry,
    WorldMap,
    local_height_map,
    map_profile,
    occupancy_image,
)
from dronedepth.gateway.obstacles import (
    SOURCE_CAMERA,
    SOURCE_MAP,
    ObstacleConfig,
    ObstacleProfile,
    SectorLayout,
    merge_profiles,
)
from dronedepth.protocol import OBSTACLE_NO_DATA, CameraMessage, LocalMapMessage

VOXEL = 0.2
CAMERA = CameraMessage(160, 120, 100.0, 100.0, 79.5, 59.5)
MOUNT = body_from_camera(pitch=0.25)  # tilted down to see the ground
BOXES = {  # name: (min corner, max corner), ENU metres
    "east": ((7.0, -1.0, 0.0), (9.0, 1.0, 3.0)),
    "north": ((-1.0, 7.0, 0.0), (1.0, 9.0, 3.0)),
    "west": ((-9.0, -4.0, 0.0), (-7.0, -2.0, 3.0)),
}
ALTITUDE = 1.5


def _scene(boxes: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = BOXES) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    ground = o3d.geometry.TriangleMesh.create_box(400.0, 400.0, 0.01)
    ground.translate((-200.0, -200.0, -0.01))
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(ground))
    for low, high in boxes.values():
        box = o3d.geometry.TriangleMesh.create_box(*(h - lo for lo, h in zip(low, high, strict=True)))
        box.translate(low)
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(box))
    return scene


def _pose(x: float, y: float, yaw_deg: float) -> Transform:
    return Transform(quaternion_from_rpy(0.0, 0.0, math.radians(yaw_deg)), np.array([x, y, ALTITUDE]))


def _depth(
    scene: o3d.t.geometry.RaycastingScene, world_from_camera: Transform, camera: CameraMessage = CAMERA
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Exact z-depth (metres, 0 = no hit) and the world points hit: rays with optical z = 1, so t = z-depth."""
    u, v = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    optical = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u, float)], axis=-1)
    directions = world_from_camera.rotate(optical.reshape(-1, 3))
    origins = np.broadcast_to(world_from_camera.translation, directions.shape)
    rays = o3c.Tensor(np.concatenate([origins, directions], axis=1).astype(np.float32))
    t = scene.cast_rays(rays)["t_hit"].numpy()
    depth = np.where(np.isfinite(t), t, 0.0).astype(np.float32).reshape(camera.height, camera.width)
    hits = (origins + directions * t[:, None])[np.isfinite(t) & (t <= 15.0)]
    return depth, hits.astype(np.float32)


def _flight(x: float, y: float, yaws: NDArray[np.float64]) -> list[Transform]:
    return [_pose(x, y, yaw) @ MOUNT for yaw in yaws]


def _mean_distance(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    cloud_a = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(a.astype(np.float64)))
    cloud_b = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(b.astype(np.float64)))
    return float(np.mean(np.asarray(cloud_a.compute_point_cloud_distance(cloud_b))))


def _misplaced_fraction(surface: NDArray[np.float32], truth: NDArray[np.float32]) -> float:
    """The fraction of map voxels more than 3 voxels from any ground-truth surface point."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(surface.astype(np.float64)))
    reference = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(truth.astype(np.float64)))
    return float(np.mean(np.asarray(cloud.compute_point_cloud_distance(reference)) > 3 * VOXEL))


def _config(**changes: object) -> MapConfig:
    settings: dict[str, object] = {"voxel_size_m": VOXEL, "max_depth_m": 15.0, "block_budget": 4000}
    settings.update(changes)
    return MapConfig(**settings)  # type: ignore[arg-type]


# Drone A turns from east to north at the origin (sees the east and north boxes); drone B turns from
# west to south 3 m south of it (sees the west box, never the north one).
FLIGHT_A = _flight(0.0, 0.0, np.linspace(0.0, 90.0, 10))
FLIGHT_B = _flight(0.0, -3.0, np.linspace(180.0, 270.0, 10))
LIAR_VIEWS = FLIGHT_A[6:]


@pytest.fixture(scope="module")
def scene() -> o3d.t.geometry.RaycastingScene:
    return _scene()


@pytest.fixture(scope="module")
def shared_map(scene: o3d.t.geometry.RaycastingScene) -> tuple[WorldMap, NDArray[np.float32]]:
    """Both drones fused into one map, with the ground-truth surface points they saw."""
    world_map = WorldMap("map", _config())
    truth = []
    for drone, flight in (("a", FLIGHT_A), ("b", FLIGHT_B)):
        for world_from_camera in flight:
            depth, hits = _depth(scene, world_from_camera)
            assert world_map.integrate(drone, depth, CAMERA, world_from_camera) == FUSED
            truth.append(hits)
    return world_map, np.concatenate(truth)


def test_the_fused_surface_matches_the_ground_truth_within_one_and_a_half_voxels(
    shared_map: tuple[WorldMap, NDArray[np.float32]],
) -> None:
    world_map, truth = shared_map
    surface = world_map.occupied().points
    assert len(surface) > 2000
    map_to_truth = _mean_distance(surface, truth)
    truth_to_map = _mean_distance(truth[:: max(1, len(truth) // 50_000)], surface)
    print(f"Chamfer at {VOXEL} m voxels: map→truth {map_to_truth:.3f} m, truth→map {truth_to_map:.3f} m")
    assert map_to_truth <= 1.5 * VOXEL
    assert truth_to_map <= 1.5 * VOXEL
    # Both boxes' faces are in the map (not just the ground).
    for name in ("east", "north", "west"):
        low, high = (np.array(c) for c in BOXES[name])
        on_box = np.all((surface >= low - VOXEL) & (surface <= high + VOXEL), axis=1) & (surface[:, 2] > 0.5)
        assert on_box.sum() > 50, name


def test_a_box_seen_only_by_drone_a_is_in_drone_b_360_profile_at_its_bearing_and_range(
    shared_map: tuple[WorldMap, NDArray[np.float32]],
) -> None:
    world_map, _ = shared_map
    config = ObstacleConfig(band_below_m=1.0, band_above_m=1.0, max_range_m=15.0)
    # B at (0, -3) facing south: the north box's near face (y = 7, |x| <= 1) is 10 m straight behind.
    world_from_body = _pose(0.0, -3.0, -90.0)
    profile = map_profile(world_map.occupied(), world_from_body, config, sector_width_deg=5.0)
    assert profile.layout.count == 72 and profile.gravity_aligned
    behind = profile.layout.count // 2  # 180° in body FRD
    nearby = profile.distances_m[behind - 1 : behind + 2]
    assert np.all(nearby != OBSTACLE_NO_DATA)
    assert abs(float(nearby.min()) - 10.0) <= 1.5 * VOXEL
    # The east box's nearest corner (7, -1) is 2 m behind and 7 m to the left of a south-facing B:
    # FRD azimuth -atan2(left, forward) = -106°, i.e. sector 51 of 72.
    bearing = -math.degrees(math.atan2(7.0, -2.0))
    assert round(bearing / 5.0) % 72 == 51
    seen = profile.distances_m[50:53][profile.distances_m[50:53] > 0]
    assert seen.min() == pytest.approx(math.hypot(7.0, 2.0), abs=1.5 * VOXEL)
    # Merged with B's camera profile (sectors -35..35°), the rear sector comes from the map, the front from the camera.
    camera_layout = SectorLayout(sector_width_deg=5.0, angle_offset_deg=-35.0, count=15)
    camera = ObstacleProfile(camera_layout, np.full(15, 6.0, np.float32), 0.3, 15.0, gravity_aligned=True)
    merged = merge_profiles(camera, profile)
    assert merged.sources is not None
    assert merged.sources[0] == SOURCE_CAMERA and merged.distances_m[0] == 6.0
    assert merged.sources[behind] == SOURCE_MAP and merged.distances_m[behind] == profile.distances_m[behind]
    assert merged.source_names[behind] == "map" and merged.source_names[0] == "camera"
    assert camera.source_names[0] == "camera"


def test_a_wildly_wrong_pose_is_rejected_and_leaves_the_map_as_it_was(scene: o3d.t.geometry.RaycastingScene) -> None:
    def build(gate: bool) -> tuple[WorldMap, int]:
        world_map = WorldMap("map", _config(gate=gate))
        for world_from_camera in FLIGHT_A:
            world_map.integrate("a", _depth(scene, world_from_camera)[0], CAMERA, world_from_camera)
        # Drone C sees what A saw (facing the boxes) but reports a pose 5 m off and turned by 30°.
        # (Views whose wrong pose only overlaps flat ground cannot be told apart: ground agrees with any x, y, yaw.)
        error = Transform(quaternion_from_rpy(0.0, 0.0, math.radians(30.0)), np.array([3.0, 4.0, 0.0]))
        outcomes = [
            world_map.integrate("c", _depth(scene, world_from_camera)[0], CAMERA, error @ world_from_camera)
            for world_from_camera in LIAR_VIEWS
        ]
        return world_map, sum(o == SKIP_POSE_REJECTED for o in outcomes)

    truth = np.concatenate([_depth(scene, pose)[1] for pose in FLIGHT_A])
    gated, rejected = build(gate=True)
    assert rejected == len(LIAR_VIEWS)
    assert gated.drone_rejections("c") == len(LIAR_VIEWS) and gated.drone_rejections("a") == 0
    assert _mean_distance(gated.occupied().points, truth) <= 1.5 * VOXEL
    assert _misplaced_fraction(gated.occupied().points, truth) <= 0.01
    # The same flight without the gate puts phantom surfaces in the map: the checks above would see it.
    ungated, rejected = build(gate=False)
    assert rejected == 0
    assert _misplaced_fraction(ungated.occupied().points, truth) > 0.05
    # The honest drone still fuses after the liar was rejected.
    assert gated.integrate("a", _depth(scene, FLIGHT_A[0])[0], CAMERA, FLIGHT_A[0]) == FUSED


def test_a_long_correct_flight_stays_within_the_block_budget_and_the_gate_rejects_none_of_it() -> None:
    scene = _scene({f"box{i}": ((10.0 * i, 3.0, 0.0), (10.0 * i + 2.0, 5.0, 3.0)) for i in range(21)})
    camera = CameraMessage(80, 60, 50.0, 50.0, 39.5, 29.5)
    config = _config(block_budget=1500, max_depth_m=10.0)  # the pose gate on, as the gateway ships it
    world_map = WorldMap("map", config)
    capacity = world_map.memory_bytes
    assert capacity <= config.budget_bytes
    peak = 0
    truth = []
    for step in range(300):  # 200 m east, turning to look along and across the route
        x = 200.0 * step / 299
        world_from_camera = _pose(x, 0.0, 60.0 * math.sin(step / 10.0)) @ MOUNT
        depth, hits = _depth(scene, world_from_camera, camera)
        truth.append(hits)
        assert world_map.integrate("a", depth, camera, world_from_camera) == FUSED, f"frame {step}"
        peak = max(peak, world_map.block_count)
        assert world_map.block_count <= config.block_budget
        assert world_map.memory_bytes == capacity
    assert world_map.blocks_evicted > 0
    surface = world_map.occupied().points
    # Evicted blocks leave nothing behind: a reused block starts empty (Open3D does not clear it).
    assert _misplaced_fraction(surface, np.concatenate(truth)) <= 0.01
    # What is near the drone now is kept; the first quarter of the route is forgotten.
    assert np.any(np.linalg.norm(surface[:, :2] - [200.0, 0.0], axis=1) < 10.0)
    assert not np.any(surface[:, 0] < 50.0)
    print(f"long flight: peak {peak} of {config.block_budget} blocks, {capacity / 2**20:.1f} MiB of voxels")


def test_frames_without_pose_or_metric_scale_are_counted_not_fused_and_frames_do_not_mix(
    scene: o3d.t.geometry.RaycastingScene,
) -> None:
    registry = MapRegistry(_config(), drones=["a", "b"])
    pose = FLIGHT_A[0]
    depth, _ = _depth(scene, pose)
    assert registry.offer("a", depth, CAMERA, metric=False, frame_id="map", world_from_camera=pose) == SKIP_NOT_METRIC
    assert registry.offer("a", depth, CAMERA, metric=True, frame_id=None, world_from_camera=None) == SKIP_NO_POSE
    assert registry.offer("z", depth, CAMERA, metric=True, frame_id="map", world_from_camera=pose) == SKIP_NOT_SELECTED
    assert registry.maps == {}
    assert registry.offer("a", depth, CAMERA, metric=True, frame_id="map", world_from_camera=pose) == FUSED
    # B's odom frame is not A's map: the same numbers 50 m away must not land in A's map.
    far = _pose(50.0, 0.0, 0.0) @ MOUNT
    assert registry.offer("b", depth, CAMERA, metric=True, frame_id="odom", world_from_camera=far) == FUSED
    assert set(registry.maps) == {"map", "odom"}
    assert registry.maps["map"].occupied().points[:, 0].max() < 20.0
    assert registry.maps["odom"].occupied().points[:, 0].min() > 40.0
    assert dict(registry.counts) == {SKIP_NOT_METRIC: 1, SKIP_NO_POSE: 1, SKIP_NOT_SELECTED: 1, FUSED: 2}


def test_a_busy_map_skips_the_frame_as_behind(scene: o3d.t.geometry.RaycastingScene) -> None:
    world_map = WorldMap("map", _config())
    depth, _ = _depth(scene, FLIGHT_A[0])
    with world_map._lock:  # another frame is being fused
        assert world_map.try_integrate("a", depth, CAMERA, FLIGHT_A[0]) == "behind"
    assert world_map.try_integrate("a", depth, CAMERA, FLIGHT_A[0]) == FUSED


def test_bad_input_gets_a_clear_error(scene: o3d.t.geometry.RaycastingScene) -> None:
    world_map = WorldMap("map", _config())
    depth, _ = _depth(scene, FLIGHT_A[0])
    with pytest.raises(ValueError, match="shape"):
        world_map.integrate("a", depth[:10], CAMERA, FLIGHT_A[0])
    distorted = CameraMessage(160, 120, 100.0, 100.0, 79.5, 59.5, distortion=(0.1, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="undistorted pinhole"):
        world_map.integrate("a", depth, distorted, FLIGHT_A[0])
    with pytest.raises(ValueError, match="frame_id"):
        WorldMap("earth", _config())
    with pytest.raises(ValueError, match="voxel_size_m"):
        MapConfig(voxel_size_m=0.0)
    noisy = depth.copy()
    noisy[:5] = np.nan
    noisy[5:10] = np.inf
    assert world_map.integrate("a", noisy, CAMERA, FLIGHT_A[0]) == FUSED
    assert np.isfinite(world_map.occupied().points).all()


def test_local_map_is_a_compact_height_map_around_the_drone(shared_map: tuple[WorldMap, NDArray[np.float32]]) -> None:
    world_map, _ = shared_map
    message = local_height_map(
        world_map.occupied(), np.array([0.0, 0.0, ALTITUDE]), half_width_m=10.0, below_m=2.0, above_m=3.0, stamp=1.0
    )
    text = protocol.encode(message)
    assert len(text) <= protocol.MAX_MESSAGE_BYTES
    decoded = protocol.decode(text)
    assert isinstance(decoded, LocalMapMessage) and decoded.heights == message.heights
    grid = decoded.grid
    assert grid.shape == (100, 100)
    # The east box's face (x = 7) reaches z = 3 at y = 0; the ground (z = 0) at x = 4, y = 0.
    origin = np.array(decoded.origin)

    def height_at(x: float, y: float) -> float:
        value = int(grid[int((y - origin[1]) / VOXEL), int((x - origin[0]) / VOXEL)])
        assert value != protocol.LOCAL_MAP_NO_DATA
        return origin[2] + value * VOXEL

    assert abs(height_at(7.05, 0.0) - 3.0) <= 1.5 * VOXEL
    assert abs(height_at(4.0, 0.0) - 0.0) <= 1.5 * VOXEL
    image, west, north = occupancy_image(world_map.occupied(), -0.5, 3.5)
    assert image.dtype == np.uint8 and image.max() > 200 and west < -5.0 and north > 7.0
    assert world_map.to_ply_bytes().startswith(b"ply\n")


def test_local_map_messages_refuse_bad_fields() -> None:
    good = LocalMapMessage(1.0, "map", (0.0, 0.0, 0.0), 0.2, 2, 2, bytes(4)).to_dict()
    for key, value, match in (
        ("frame_id", "earth", "frame_id"),
        ("encoding", "raw", "encoding"),
        ("heights", "!!", "base64"),
        ("width", 1000, "cells"),
        ("cell_size_m", 0.0, "cell_size_m"),
    ):
        with pytest.raises(protocol.ProtocolError, match=match):
            LocalMapMessage.from_dict(good | {key: value})
    with pytest.raises(protocol.ProtocolError, match="heights hold"):
        LocalMapMessage.from_dict(good | {"width": 3})


@pytest.mark.skipif(not os.environ.get("DRONEDEPTH_BENCH"), reason="set DRONEDEPTH_BENCH=1 to measure")
def test_fusion_cost_per_frame_at_640x480(scene: o3d.t.geometry.RaycastingScene) -> None:
    camera = CameraMessage(640, 480, 400.0, 400.0, 319.5, 239.5)
    world_map = WorldMap("map", MapConfig(voxel_size_m=0.1, max_depth_m=15.0, block_budget=40_000))
    frames = [(_depth(scene, pose, camera)[0], pose) for pose in _flight(0.0, 0.0, np.linspace(0.0, 90.0, 20))]
    world_map.integrate("a", frames[0][0], camera, frames[0][1])
    start = time.perf_counter()
    for depth, pose in frames[1:]:
        world_map.integrate("a", depth, camera, pose)
    per_frame = (time.perf_counter() - start) / (len(frames) - 1)
    print(f"fusion at 640x480, 0.1 m voxels, {world_map.device}: {1000 * per_frame:.1f} ms per frame")


def test_a_moderately_wrong_pose_within_the_gate_tolerance_is_fused(scene: o3d.t.geometry.RaycastingScene) -> None:
    # What the gate cannot resolve, pinned: 1 m and 5° off is inside its tolerance (3 voxels + 5 % of the depth,
    # capped by the 4-voxel truncation) at 0.2 m voxels, so it is fused, not rejected (docs/outputs.md, World map).
    world_map = WorldMap("map", _config())
    for world_from_camera in FLIGHT_A:
        world_map.integrate("a", _depth(scene, world_from_camera)[0], CAMERA, world_from_camera)
    error = Transform(quaternion_from_rpy(0.0, 0.0, math.radians(5.0)), np.array([0.6, 0.8, 0.0]))
    outcomes = {
        world_map.integrate("c", _depth(scene, world_from_camera)[0], CAMERA, error @ world_from_camera)
        for world_from_camera in LIAR_VIEWS
    }
    assert outcomes == {FUSED}
