"""World-frame results and obstacle profiles of the real FrameProcessor on exact synthetic depth and exact poses."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from numpy.typing import NDArray
from synthetic_fixtures import synthetic_depth_and_surfaces

from dronedepth.drone.sources import SyntheticSource
from dronedepth.errors import ConfigError
from dronedepth.frames import Transform, quaternion_from_rpy
from dronedepth.gateway.pipeline import FramePose, FrameProcessor, FrameResult, ProcessingConfig
from dronedepth.pose_buffer import TimedPose
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, KeypointsMessage, decode, encode

FPS = 15.0
FRAMES = (0, 4, 8, 12)
WORLD_FROM_MAP = Transform(quaternion_from_rpy(0.0, 0.0, math.radians(35.0)), np.array([12.0, -7.0, 3.0]))
"""A world turned and moved against the scene's map, so that rotations and translations of every pose matter."""


def _process(source: SyntheticSource, processor: FrameProcessor, index: int) -> FrameResult:
    camera = source.intrinsics
    assert camera is not None
    map_from_body = source.world_from_body(index)
    depth, _ = synthetic_depth_and_surfaces(source, map_from_body @ camera.body_from_camera)
    body = TimedPose(index / FPS, WORLD_FROM_MAP @ map_from_body, height_above_ground_m=source.CAMERA_HEIGHT_M)
    pose = FramePose("map", "exact", body)
    rgb = source.render(index)
    return processor.process(rgb, depth, camera, pts=round(index / FPS * 90_000), frame_index=index, pose=pose)


@pytest.fixture(scope="module")
def flight() -> tuple[SyntheticSource, dict[int, FrameResult]]:
    source = SyntheticSource(640, 480, fps=FPS)
    processor = FrameProcessor(ProcessingConfig(output_frame="world", build_cloud=False, max_range=60.0), "metric")
    return source, {index: _process(source, processor, index) for index in FRAMES}


def _world_grid(result: FrameResult) -> NDArray[np.float64]:
    """Every pixel's world point (NaN where invalid)."""
    pose = result.message.camera_pose
    assert pose is not None and result.valid is not None
    grid = np.full((*result.valid.shape, 3), np.nan)
    grid[result.valid] = pose.world_from_camera.apply(result.points)
    return grid


def _map_from_camera(source: SyntheticSource, result: FrameResult) -> Transform:
    camera = source.intrinsics
    assert camera is not None
    return source.world_from_body(result.message.frame_index) @ camera.body_from_camera


def consistency_errors(source: SyntheticSource, a: FrameResult, b: FrameResult) -> NDArray[np.float64]:
    """For each valid pixel of ``b``: distance between its world point and the same surface point seen in ``a``
    (``b``'s point projected into ``a``, ``a``'s inverse depth interpolated bilinearly: exact on planes), as a
    fraction of its range from ``b``'s camera. Pixels whose 2×2 neighbourhood in ``a`` spans several surfaces
    or invalid depth are left out."""
    camera = source.intrinsics
    assert camera is not None and a.message.camera_pose is not None and b.message.camera_pose is not None
    world_b = _world_grid(b)[b.valid]
    in_a = a.message.camera_pose.world_from_camera.inverse().apply(world_b)
    u = camera.fx * in_a[:, 0] / in_a[:, 2] + camera.cx
    v = camera.fy * in_a[:, 1] / in_a[:, 2] + camera.cy
    inside = (in_a[:, 2] > 0) & (u >= 0) & (v >= 0) & (u < camera.width - 1) & (v < camera.height - 1)
    _, surfaces_b = synthetic_depth_and_surfaces(source, _map_from_camera(source, b))
    u, v, world_b, surface = u[inside], v[inside], world_b[inside], surfaces_b[b.valid][inside]
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    _, surfaces = synthetic_depth_and_surfaces(source, _map_from_camera(source, a))
    corners = [(v0, u0), (v0, u0 + 1), (v0 + 1, u0), (v0 + 1, u0 + 1)]
    same = np.ones(len(u), dtype=bool)
    for r, c in corners:
        same &= (surfaces[r, c] == surface) & np.isfinite(a.depth[r, c]) & a.valid[r, c]
    weights = [(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv]
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = sum(w / a.depth[r, c] for w, (r, c) in zip(weights, corners, strict=True))
        z = 1.0 / inverse
    rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], axis=1)
    world_a = a.message.camera_pose.world_from_camera.apply(rays * z[:, None])
    ranges = np.linalg.norm(world_b - b.message.camera_pose.world_from_camera.translation, axis=1)
    return (np.linalg.norm(world_a - world_b, axis=1) / ranges)[same]


def test_world_points_of_static_surfaces_agree_across_frames(flight) -> None:
    source, results = flight
    errors = np.concatenate([consistency_errors(source, results[a], results[b]) for a, b in ((0, 4), (4, 12), (0, 8))])
    assert len(errors) > 100_000
    median, worst = float(np.median(errors)), float(errors.max())
    print(f"world consistency: median {median * 100:.2e} %, max {worst * 100:.2e} % of range, {len(errors)} points")
    assert worst <= 0.01


def test_a_frame_with_a_pose_carries_world_from_camera_and_world_keypoints(flight) -> None:
    source, results = flight
    camera = source.intrinsics
    for index, result in results.items():
        pose = result.message.camera_pose
        assert pose is not None and pose.frame_id == "map" and pose.match == "exact"
        expected = WORLD_FROM_MAP @ source.world_from_body(index) @ camera.body_from_camera
        assert pose.world_from_camera.is_close(expected, atol=1e-9)
        wire = encode(result.message)
        decoded = decode(wire)
        assert isinstance(decoded, KeypointsMessage) and decoded.frame == "map"
        np.testing.assert_allclose(decoded.points, result.message.points, atol=2e-3)
        # On the wire the keypoints are world points: ENU, on the ground (z = 3 m in this world) or above it
        # (a keypoint's depth is the median of a small window: a few centimetres off near edges).
        world = np.array(json.loads(wire)["points"])
        np.testing.assert_allclose(world, pose.world_from_camera.apply(result.message.points), atol=1e-3)
        assert world[:, 2].min() >= 3.0 - 0.05


def test_without_a_pose_the_keypoints_stay_in_the_camera_frame() -> None:
    source = SyntheticSource(320, 240, fps=FPS)
    camera = source.intrinsics
    depth, _ = synthetic_depth_and_surfaces(source, source.world_from_body(0) @ camera.body_from_camera)
    processor = FrameProcessor(ProcessingConfig(output_frame="world", build_cloud=False), "metric")
    result = processor.process(source.render(0), depth, camera, pts=0, frame_index=0)
    assert result.message.camera_pose is None and result.message.frame == "camera_optical"
    assert result.obstacles is not None and not result.obstacles.gravity_aligned
    relative = FrameProcessor(ProcessingConfig(build_cloud=False), "relative")
    assert relative.process(source.render(0), 1.0 / depth, camera, pts=0, frame_index=0).obstacles is None


def test_world_output_refuses_axes_other_than_optical() -> None:
    with pytest.raises(ConfigError, match="world-frame output is always ENU"):
        ProcessingConfig(output_frame="world", axes="opengl")


def _true_nearest(source: SyntheticSource, index: int, azimuths_deg: tuple[float, float], max_range: float) -> float:
    """Ground truth: the nearest horizontal range (m) of a box front seen in the body-FRD azimuth span."""
    body = source.world_from_body(index).translation
    nearest = math.inf
    low, high = (math.radians(a) for a in azimuths_deg)
    for front in source.box_fronts(body[0] + 3.0, body[0] + 40.0):
        dx = front.x - body[0]
        # FRD azimuth a (clockwise) looks along FLU (cos a, -sin a): the front's lateral span seen from the body.
        left, right = front.y_max - body[1], front.y_min - body[1]
        # Lateral offsets y at distance dx inside the wedge: y = -dx·tan(a) for a in [low, high].
        y_lo, y_hi = max(right, -dx * math.tan(high)), min(left, -dx * math.tan(low))
        if y_lo <= y_hi:
            closest_y = 0.0 if y_lo <= 0.0 <= y_hi else min(abs(y_lo), abs(y_hi))
            nearest = min(nearest, math.hypot(dx, closest_y))
    return nearest if nearest <= max_range else OBSTACLE_FREE


def test_the_obstacle_profile_matches_the_ground_truth(flight) -> None:
    source, results = flight
    camera = source.intrinsics
    half_fov = math.degrees(math.atan((camera.width / 2) / camera.fx))
    compared = obstacles = 0
    for index, result in results.items():
        profile = result.obstacles
        assert profile is not None and profile.gravity_aligned
        width = profile.layout.sector_width_deg
        for centre, measured in zip(profile.layout.centres_deg, profile.distances_m, strict=True):
            span = (centre - width / 2, centre + width / 2)
            if max(abs(span[0]), abs(span[1])) > half_fov - 0.5:
                continue  # partly out of view
            truth = _true_nearest(source, index, span, profile.max_range_m)
            # A box edge within a pixel or so of the sector's edge may fall either side of it: not comparable.
            margin = 0.2
            narrow = _true_nearest(source, index, (span[0] + margin, span[1] - margin), profile.max_range_m)
            wide = _true_nearest(source, index, (span[0] - margin, span[1] + margin), profile.max_range_m)
            if narrow != pytest.approx(wide, rel=0.01):
                continue
            compared += 1
            if truth == OBSTACLE_FREE:
                # Nothing in the band but sky (no depth) and far boxes: free or unknown, never an obstacle.
                assert measured in (OBSTACLE_FREE, OBSTACLE_NO_DATA), (index, centre, measured)
            else:
                obstacles += 1
                assert measured == pytest.approx(truth, rel=0.05), (index, centre)
    assert compared >= 40 and obstacles >= 5


def test_obstacle_profile_cost_at_640x480(flight) -> None:
    """The profile's share of the per-frame work (reported, not asserted: no timed assertions)."""
    source, _ = flight
    camera = source.intrinsics
    processor = FrameProcessor(ProcessingConfig(build_cloud=False), "metric")
    depth, _ = synthetic_depth_and_surfaces(source, source.world_from_body(0) @ camera.body_from_camera)
    rgb = source.render(0)
    costs = []
    for _ in range(10):
        timing: dict[str, float] = {}
        processor.process(rgb, depth, camera, pts=0, frame_index=0, timing=timing)
        costs.append(timing["obstacles"])
    print(f"obstacle profile at 640x480: median {np.median(costs):.2f} ms, min {min(costs):.2f} ms")
    assert all(c > 0 for c in costs)
