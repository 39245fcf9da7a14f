"""The obstacle profile against exact depth maps ray-cast from known geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from dronedepth import protocol
from dronedepth.frames import Transform, body_from_camera, matrix_from_quaternion, quaternion_from_rpy
from dronedepth.gateway.obstacles import (
    ObstacleConfig,
    ObstacleProfile,
    SectorLayout,
    obstacle_profile,
    obstacle_profile_from_depth,
    sector_layout,
)
from dronedepth.gateway.projection import points_from_depth, ray_grid
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, CameraMessage

CAMERA = CameraMessage(width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5)
SKY_M = 1000.0
"""Depth of pixels whose ray hits nothing (far beyond every max range)."""


@dataclass(frozen=True)
class Panel:
    """A vertical rectangle facing the drone: x = ``x`` (metres ahead), ``y`` and ``z`` spans in the level frame."""

    x: float
    y: tuple[float, float]
    z: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """Ground plane ``z = -height``, vertical panels; level frame (FLU axes, z up, x along the heading)."""

    height: float
    panels: tuple[Panel, ...]

    def render(self, level_from_camera: Transform) -> np.ndarray:
        """The exact z-depth map seen by a camera at ``level_from_camera``."""
        rays = ray_grid(CAMERA).rays.reshape(-1, 3).astype(np.float64)
        directions = rays @ matrix_from_quaternion(level_from_camera.rotation).T
        origin = level_from_camera.translation
        depth = np.full(len(rays), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-self.height - origin[2]) / directions[:, 2]
            depth = np.where((directions[:, 2] < 0) & (t > 0), np.minimum(depth, t), depth)
            for panel in self.panels:
                t = (panel.x - origin[0]) / directions[:, 0]
                hit = origin + t[:, None] * directions
                inside = (t > 0) & (directions[:, 0] > 0)
                inside &= (hit[:, 1] >= panel.y[0]) & (hit[:, 1] <= panel.y[1])
                inside &= (hit[:, 2] >= panel.z[0]) & (hit[:, 2] <= panel.z[1])
                depth = np.where(inside, np.minimum(depth, t), depth)
        depth[~np.isfinite(depth)] = SKY_M
        return depth.reshape(CAMERA.height, CAMERA.width).astype(np.float32)

    def horizontal_range(self, azimuth_frd_deg: np.ndarray, band: tuple[float, float]) -> np.ndarray:
        """Top-view ray cast from the body origin: nearest panel reaching into the band along each azimuth."""
        a = np.radians(-azimuth_frd_deg)  # back to counter-clockwise FLU
        dx, dy = np.cos(a), np.sin(a)
        nearest = np.full(a.shape, np.inf)
        for panel in self.panels:
            if panel.z[1] < band[0] or panel.z[0] > band[1]:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                t = panel.x / dx
                y = t * dy
            hit = (dx > 0) & (y >= panel.y[0]) & (y <= panel.y[1])
            nearest = np.where(hit, np.minimum(nearest, t), nearest)
        return nearest


WALL = Panel(x=6.0, y=(-50.0, 50.0), z=(-10.0, 10.0))
BOX = Panel(x=3.0, y=(0.8, 1.6), z=(-1.5, 0.5))  # to the left: negative FRD azimuths
OVERHANG = Panel(x=2.0, y=(-1.0, 1.0), z=(1.3, 2.5))  # above the band: never an obstacle
SCENE = Scene(height=1.5, panels=(WALL, BOX, OVERHANG))
CONFIG = ObstacleConfig(band_below_m=1.0, band_above_m=1.0, min_range_m=0.3, max_range_m=20.0)


def _level_from_camera(roll: float, pitch: float, mount: Transform) -> Transform:
    """Level-from-camera built directly from roll and pitch (the scene has no yaw)."""
    level_from_body = Transform(quaternion_from_rpy(roll, pitch, 0.0), np.zeros(3))
    return level_from_body @ mount


def _ground_truth(scene: Scene, depth: np.ndarray, level_from_camera: Transform, layout, config) -> np.ndarray:
    """Per sector: the nearest top-view range over the azimuths the camera saw inside the band."""
    points = points_from_depth(depth, ray_grid(CAMERA)).astype(np.float64)
    level = level_from_camera.apply(points)
    in_band = (level[:, 2] >= -config.band_below_m) & (level[:, 2] <= config.band_above_m)
    in_band &= np.hypot(level[:, 0], level[:, 1]) <= config.max_range_m
    azimuth = np.degrees(-np.arctan2(level[in_band, 1], level[in_band, 0]))
    truth = np.full(layout.count, np.nan)
    for i, centre in enumerate(layout.centres_deg):
        half = layout.sector_width_deg / 2
        seen = azimuth[(azimuth >= centre - half) & (azimuth < centre + half)]
        if len(seen):
            fine = np.linspace(seen.min(), seen.max(), 2001)
            truth[i] = scene.horizontal_range(fine, (-config.band_below_m, config.band_above_m)).min()
    return truth


def test_layout_covers_the_field_of_view() -> None:
    layout = sector_layout(ray_grid(CAMERA), body_from_camera(), 5.0)
    half_fov = math.degrees(math.atan(319.5 / 525.0))  # 31.3°
    assert layout.angle_offset_deg == -30.0 and layout.count == 13
    assert layout.centres_deg[0] - 2.5 <= -half_fov and layout.centres_deg[-1] + 2.5 >= half_fov


def test_a_rear_camera_straddles_180_degrees() -> None:
    layout = sector_layout(ray_grid(CAMERA), body_from_camera(yaw=math.pi), 10.0)
    assert layout.count == 7 and layout.angle_offset_deg == 150.0  # 150 … 210 (= -150) clockwise


@pytest.mark.parametrize(
    ("roll_deg", "pitch_deg", "mount_pitch_deg"),
    [(0.0, 0.0, 0.0), (12.0, -6.0, 15.0), (-15.0, 8.0, 10.0)],
    ids=["level", "rolled-and-camera-pitched", "rolled-other-way"],
)
def test_profile_matches_the_ground_truth_within_5_percent(
    roll_deg: float, pitch_deg: float, mount_pitch_deg: float
) -> None:
    mount = body_from_camera(x=0.1, z=-0.05, pitch=math.radians(mount_pitch_deg))
    roll, pitch = math.radians(roll_deg), math.radians(pitch_deg)
    level_from_camera = _level_from_camera(roll, pitch, mount)
    depth = SCENE.render(level_from_camera)
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    attitude = quaternion_from_rpy(roll, pitch, 0.9)  # the heading must not matter

    profile = obstacle_profile_from_depth(depth, rays, layout, mount, attitude, CONFIG)

    truth = _ground_truth(SCENE, depth, level_from_camera, layout, CONFIG)
    assert profile.gravity_aligned
    seen = ~np.isnan(truth)
    assert seen.sum() >= layout.count - 1  # at most one edge sector out of view
    np.testing.assert_allclose(profile.distances_m[seen], truth[seen], rtol=0.05)
    assert (profile.distances_m[~seen] == OBSTACLE_NO_DATA).all()
    # The box (3 m, left) is the nearest obstacle; the overhang at 2 m above the band and the ground are not.
    box_sectors = (profile.distances_m >= 0) & (profile.distances_m < 3.5)
    assert box_sectors.any() and (layout.centres_deg[box_sectors] < 0).all()
    assert profile.distances_m[seen].min() >= 3.0 * 0.95


def test_points_and_depth_give_the_same_profile() -> None:
    mount = body_from_camera(pitch=math.radians(10))
    depth = SCENE.render(_level_from_camera(0.0, 0.0, mount))
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 3.0)
    from_depth = obstacle_profile_from_depth(depth, rays, layout, mount, None, CONFIG)
    from_points = obstacle_profile(points_from_depth(depth, rays), layout, mount, None, CONFIG)
    np.testing.assert_allclose(from_points.distances_m, from_depth.distances_m, rtol=1e-5)
    assert not from_depth.gravity_aligned


def test_without_attitude_a_rolled_body_is_wrong_and_says_so() -> None:
    """The fallback (camera's own horizontal) is what the ``gravity_aligned`` flag warns about."""
    mount = body_from_camera()
    level_from_camera = _level_from_camera(math.radians(25), 0.0, mount)
    depth = SCENE.render(level_from_camera)
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    aligned = obstacle_profile_from_depth(
        depth, rays, layout, mount, quaternion_from_rpy(math.radians(25), 0, 0), CONFIG
    )
    unaligned = obstacle_profile_from_depth(depth, rays, layout, mount, None, CONFIG)
    truth = _ground_truth(SCENE, depth, level_from_camera, layout, CONFIG)
    seen = ~np.isnan(truth)
    np.testing.assert_allclose(aligned.distances_m[seen], truth[seen], rtol=0.05)
    assert not unaligned.gravity_aligned
    assert not np.allclose(unaligned.distances_m[seen], truth[seen], rtol=0.05)


def test_open_ground_is_free_and_the_ground_is_never_an_obstacle() -> None:
    mount = body_from_camera()
    open_field = Scene(height=1.5, panels=())
    depth = open_field.render(_level_from_camera(0.0, 0.0, mount))
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    profile = obstacle_profile_from_depth(depth, rays, layout, mount, quaternion_from_rpy(0, 0, 0), CONFIG)
    assert (profile.distances_m == OBSTACLE_FREE).all()


def test_a_known_height_above_ground_removes_ground_inside_the_band() -> None:
    mount = body_from_camera()
    low = Scene(height=0.8, panels=(WALL,))  # the ±1 m band reaches below the ground
    depth = low.render(_level_from_camera(0.0, 0.0, mount))
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    attitude = quaternion_from_rpy(0, 0, 0)
    blind = obstacle_profile_from_depth(depth, rays, layout, mount, attitude, CONFIG)
    told = obstacle_profile_from_depth(depth, rays, layout, mount, attitude, CONFIG, height_above_ground_m=0.8)
    assert blind.distances_m.max() < 5.0  # ground points within the band look like obstacles
    np.testing.assert_allclose(
        told.distances_m, WALL.x / np.cos(np.radians(np.abs(layout.centres_deg) - 2.5).clip(0)), rtol=0.05
    )


def test_a_camera_looking_at_the_ground_has_no_data() -> None:
    mount = body_from_camera(pitch=math.radians(80))
    depth = SCENE.render(_level_from_camera(0.0, 0.0, mount))
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    profile = obstacle_profile_from_depth(depth, rays, layout, mount, quaternion_from_rpy(0, 0, 0), CONFIG)
    assert (profile.distances_m == OBSTACLE_NO_DATA).all()


def test_masked_and_invalid_depth_give_no_data() -> None:
    rays = ray_grid(CAMERA)
    mount = body_from_camera()
    layout = sector_layout(rays, mount, 5.0)
    depth = np.full((CAMERA.height, CAMERA.width), np.nan, np.float32)
    depth[:, 320:] = 4.0
    mask = np.ones(depth.shape, bool)
    mask[:, 480:] = False
    profile = obstacle_profile_from_depth(depth, rays, layout, mount, None, CONFIG, mask=mask)
    right_of_centre = layout.centres_deg > 2.5
    assert (profile.distances_m[~right_of_centre][:-1] == OBSTACLE_NO_DATA).all()
    masked = layout.centres_deg - 2.5 > math.degrees(math.atan((480 - 319.5) / 525.0))
    assert (profile.distances_m[masked] == OBSTACLE_NO_DATA).all()
    assert (profile.distances_m[right_of_centre & ~masked] > 0).all()


def test_bad_inputs_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="min_range_m"):
        ObstacleConfig(min_range_m=5.0, max_range_m=2.0)
    with pytest.raises(ValueError, match=r"support_bin must be in \(0, 1\], got 0.0"):
        ObstacleConfig(support_bin=0.0)
    with pytest.raises(ValueError, match="min_support_points must be an integer >= 1, got 0"):
        ObstacleConfig(min_support_points=0)
    with pytest.raises(ValueError, match="min_support_fraction must be in"):
        ObstacleConfig(min_support_fraction=1.5)
    with pytest.raises(ValueError, match="sector width"):
        sector_layout(ray_grid(CAMERA), body_from_camera(), 0.0)
    with pytest.raises(ValueError, match="depth has shape"):
        layout = sector_layout(ray_grid(CAMERA), body_from_camera(), 5.0)
        obstacle_profile_from_depth(
            np.ones((4, 4), np.float32), ray_grid(CAMERA), layout, body_from_camera(), None, CONFIG
        )


def test_the_profile_becomes_an_obstacles_message_that_round_trips() -> None:
    mount = body_from_camera()
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    depth = SCENE.render(_level_from_camera(0.0, 0.0, mount))
    profile = obstacle_profile_from_depth(depth, rays, layout, mount, None, CONFIG)
    message = profile.to_message(pts=18_000, stamp=1_764_000_000.25, frame_index=2)
    decoded = protocol.decode(protocol.encode(message), accept=("obstacles",))
    assert decoded == message
    assert decoded.to_dict()["frame"] == "body_frd" and decoded.gravity_aligned is False
    np.testing.assert_allclose(decoded.distances_m, profile.distances_m, atol=5e-4)


def test_infinite_sky_depth_is_no_data_and_no_warning() -> None:
    """+inf depth (sky, as some metric models output) is rejected quietly: warnings are errors in the tests."""
    rays = ray_grid(CAMERA)
    mount = body_from_camera()
    layout = sector_layout(rays, mount, 5.0)
    depth = np.full((CAMERA.height, CAMERA.width), np.inf, np.float32)
    depth[CAMERA.height // 2 :, :] = 4.0  # the lower half sees a wall; the upper half is sky
    depth[: CAMERA.height // 2, 320:] = -np.inf
    profile = obstacle_profile_from_depth(depth, rays, layout, mount, quaternion_from_rpy(0, 0, 0), CONFIG)
    assert np.isfinite(profile.distances_m).all()
    assert (profile.distances_m != OBSTACLE_NO_DATA).all()
    sky = np.full_like(depth, np.inf)
    sky_profile = obstacle_profile_from_depth(sky, rays, layout, mount, None, CONFIG)
    assert (sky_profile.distances_m == OBSTACLE_NO_DATA).all()


def test_nearest_is_the_closest_measured_sector_with_its_frd_bearing() -> None:
    layout = SectorLayout(sector_width_deg=5.0, angle_offset_deg=170.0, count=4)  # 170, 175, 180 (-180), 185 (-175)
    distances = np.array([OBSTACLE_FREE, 3.0, 2.5, OBSTACLE_NO_DATA], np.float32)
    profile = ObstacleProfile(layout, distances, 0.3, 8.0, True)
    assert profile.nearest() == (2.5, -180.0)
    empty = ObstacleProfile(layout, np.array([OBSTACLE_FREE, OBSTACLE_NO_DATA] * 2, np.float32), 0.3, 8.0, True)
    assert empty.nearest() is None


def _with_flying_pixels(depth: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of the pixels at a random range, uniform in inverse depth out to half the nearest true
    depth: the outliers of the evaluation's relative oracle (a random disparity up to twice the largest)."""
    rng = np.random.default_rng(seed)
    noisy = depth.copy()
    outliers = rng.random(depth.shape) < fraction
    nearest_inverse = 2.0 / float(depth.min())
    noisy[outliers] = 1.0 / rng.uniform(1e-3, nearest_inverse, int(outliers.sum()))
    return noisy


def test_five_percent_flying_pixels_make_no_phantom_obstacles() -> None:
    mount = body_from_camera(x=0.1, z=-0.05)
    level_from_camera = _level_from_camera(0.0, 0.0, mount)
    depth = SCENE.render(level_from_camera)
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    attitude = quaternion_from_rpy(0.0, 0.0, 0.0)
    truth = _ground_truth(SCENE, depth, level_from_camera, layout, CONFIG)
    seen = ~np.isnan(truth)
    for seed in range(3):
        noisy = _with_flying_pixels(depth, 0.05, seed)
        profile = obstacle_profile_from_depth(noisy, rays, layout, mount, attitude, CONFIG)
        # The nearest single pixel would put a phantom obstacle near half the nearest range in every sector.
        np.testing.assert_allclose(profile.distances_m[seen], truth[seen], rtol=0.05)


@pytest.mark.parametrize(
    "thin",
    [
        Panel(x=10.0, y=(-0.03, 0.03), z=(-1.5, 10.0)),  # a 6 cm pole straight ahead: 3 pixels wide at 10 m
        Panel(x=10.0, y=(-50.0, 50.0), z=(0.2, 0.26)),  # a 6 cm wire across the view: 3 pixels tall
    ],
    ids=["pole", "wire"],
)
def test_a_thin_obstacle_among_flying_pixels_is_still_reported(thin: Panel) -> None:
    mount = body_from_camera()
    level_from_camera = _level_from_camera(0.0, 0.0, mount)
    scene = Scene(height=1.5, panels=(Panel(x=18.0, y=(-50.0, 50.0), z=(-10.0, 10.0)), thin))
    depth = scene.render(level_from_camera)
    rays = ray_grid(CAMERA)
    layout = sector_layout(rays, mount, 5.0)
    profile = obstacle_profile_from_depth(
        _with_flying_pixels(depth, 0.05, 7), rays, layout, mount, quaternion_from_rpy(0.0, 0.0, 0.0), CONFIG
    )
    truth = _ground_truth(scene, depth, level_from_camera, layout, CONFIG)
    seen = ~np.isnan(truth)
    np.testing.assert_allclose(profile.distances_m[seen], truth[seen], rtol=0.05)
    behind_thin = truth < 15.0  # the pole's sector, or every sector the wire crosses (the far wall: 18 m+)
    assert behind_thin.sum() == (1 if thin.y[1] < 1.0 else seen.sum())
