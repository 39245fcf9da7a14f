import cv2
import numpy as np
import open3d as o3d
import pytest

from dronedepth.gateway.projection import (
    RayGrid,
    pixel_rays,
    points_from_depth,
    project_points,
    ray_grid,
    valid_depth_mask,
)
from dronedepth.protocol import CameraMessage

PINHOLE = CameraMessage(width=64, height=48, fx=52.5, fy=51.0, cx=31.7, cy=23.2)
RADTAN5 = CameraMessage(
    width=160, height=120, fx=110.0, fy=108.0, cx=80.3, cy=59.1, distortion=(-0.28, 0.09, 0.0012, -0.0007, -0.01)
)
RATIONAL8 = CameraMessage(
    width=160,
    height=120,
    fx=100.0,
    fy=100.0,
    cx=79.5,
    cy=59.5,
    distortion=(0.4, -0.1, 0.001, 0.002, 0.01, 0.5, -0.05, 0.02),
)
FISHEYE = CameraMessage(
    width=160, height=120, fx=60.0, fy=60.0, cx=79.5, cy=59.5, distortion=(0.05, -0.01, 0.002, -0.001), model="fisheye"
)
STRICT = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)


def pixel_grid(camera: CameraMessage) -> np.ndarray:
    u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
    return np.stack([u.ravel(), v.ravel()], axis=1)


# --- ray grid -------------------------------------------------------------------------------------


def test_pinhole_rays_are_the_closed_form_with_pixel_centres_at_integers():
    grid = ray_grid(PINHOLE)
    v, u = 7, 40
    assert grid.rays.shape == (48, 64, 3) and grid.rays.dtype == np.float32
    np.testing.assert_allclose(grid.rays[v, u], [(u - 31.7) / 52.5, (v - 23.2) / 51.0, 1.0], rtol=1e-6)
    assert grid.all_valid and (grid.width, grid.height) == (64, 48)


def test_ray_grid_is_cached_per_camera_and_read_only():
    same = CameraMessage(width=64, height=48, fx=52.5, fy=51.0, cx=31.7, cy=23.2)
    assert ray_grid(same) is ray_grid(PINHOLE)
    assert ray_grid(PINHOLE.scaled(32, 24)) is not ray_grid(PINHOLE)
    with pytest.raises(ValueError):
        ray_grid(PINHOLE).rays[0, 0, 0] = 1.0


@pytest.mark.parametrize("camera", [RADTAN5, RATIONAL8], ids=["radtan5", "rational8"])
def test_distorted_rays_reproject_onto_their_pixels_and_match_undistort_points(camera):
    grid = ray_grid(camera)
    assert grid.all_valid
    rays = grid.rays.reshape(-1, 3).astype(np.float64)
    pixels = pixel_grid(camera)
    projected, _ = cv2.projectPoints(
        rays.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera.matrix, np.array(camera.distortion)
    )
    error = np.linalg.norm(projected.reshape(-1, 2) - pixels, axis=1)
    assert error.max() < 1e-3
    reference = cv2.undistortPoints(
        pixels.reshape(-1, 1, 2), camera.matrix, np.array(camera.distortion), criteria=STRICT
    ).reshape(-1, 2)
    np.testing.assert_allclose(rays[:, :2], reference, atol=2e-6)
    # OpenCV's default (5 iterations) is not good enough with this much distortion; we must beat it.
    default = cv2.undistortPoints(pixels.reshape(-1, 1, 2), camera.matrix, np.array(camera.distortion))
    default_error = np.linalg.norm(
        cv2.projectPoints(
            np.concatenate([default.reshape(-1, 2), np.ones((len(pixels), 1))], 1).reshape(-1, 1, 3),
            np.zeros(3),
            np.zeros(3),
            camera.matrix,
            np.array(camera.distortion),
        )[0].reshape(-1, 2)
        - pixels,
        axis=1,
    )
    assert default_error.max() > error.max()


def test_fisheye_rays_reproject_and_wide_angles_are_marked_invalid():
    grid = ray_grid(FISHEYE)
    # 60 px focal length: the image corners are ~1.7 rad (> 90°) off-axis, not representable with z = 1.
    assert not grid.all_valid
    valid = grid.valid
    assert valid[60, 80] and not valid[0, 0] and 0.5 < valid.mean() < 1.0
    assert np.isnan(grid.rays[~valid]).all() and np.isfinite(grid.rays[valid]).all()
    pixels = pixel_grid(FISHEYE)[valid.ravel()]
    rays = grid.rays[valid].astype(np.float64)
    projected, _ = cv2.fisheye.projectPoints(
        rays.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), FISHEYE.matrix, np.array(FISHEYE.distortion)
    )
    assert np.abs(projected.reshape(-1, 2) - pixels).max() < 1e-3
    reference = cv2.fisheye.undistortPoints(
        pixels.reshape(-1, 1, 2), FISHEYE.matrix, np.array(FISHEYE.distortion), criteria=STRICT
    ).reshape(-1, 2)
    np.testing.assert_allclose(rays[:, :2], reference, atol=2e-6)
    # Invalid rays never become points.
    points = points_from_depth(np.full((120, 160), 2.0, np.float32), grid)
    assert len(points) == valid.sum() and np.isfinite(points).all()


def test_fisheye_without_coefficients_is_equidistant_not_pinhole():
    camera = CameraMessage(width=101, height=11, fx=50.0, fy=50.0, cx=50.0, cy=5.0, model="fisheye")
    ray = ray_grid(camera).rays[5, 100]  # 50 px right of centre: θ = 50 / f = 1 rad
    np.testing.assert_allclose(ray, [np.tan(1.0), 0.0, 1.0], rtol=1e-5)


def test_rays_beyond_the_fold_of_a_strong_radial_model_are_invalid():
    # r_d = r (1 - 0.5 r²) peaks at r = 0.816 (r_d = 0.544); the corners need r_d ≈ 0.67.
    camera = CameraMessage(width=160, height=120, fx=120.0, fy=120.0, cx=79.5, cy=59.5, distortion=(-0.5, 0, 0, 0))
    grid = ray_grid(camera)
    assert not grid.all_valid and grid.valid[60, 80] and not grid.valid[0, 0]
    radius = np.hypot(grid.rays[grid.valid][:, 0], grid.rays[grid.valid][:, 1])
    assert radius.max() < 0.8165


def test_pixel_rays_are_exact_at_sub_pixel_positions():
    rng = np.random.default_rng(1)
    pixels = rng.uniform([5, 5], [150, 110], size=(50, 2))
    for camera in (RADTAN5, RATIONAL8, FISHEYE.scaled(160, 120)):
        rays = pixel_rays(pixels, camera)
        assert rays.shape == (50, 3) and np.all(rays[:, 2] == 1)
        np.testing.assert_allclose(project_points(rays * 3.0, camera), pixels, atol=1e-3)


# --- back-projection pinned against Open3D -----------------------------------------------------------


def test_points_from_depth_match_open3d_create_from_depth_image():
    camera = CameraMessage(width=64, height=48, fx=52.5, fy=51.0, cx=31.7, cy=23.2)
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 12.0, size=(48, 64)).astype(np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3], depth[4, 4] = 0.0, np.nan, -1.0, np.inf, 25.0
    trunc = 20.0
    intrinsic = o3d.camera.PinholeCameraIntrinsic(64, 48, camera.fx, camera.fy, camera.cx, camera.cy)
    expected = np.asarray(
        o3d.geometry.PointCloud.create_from_depth_image(
            o3d.geometry.Image(depth), intrinsic, np.eye(4), depth_scale=1.0, depth_trunc=trunc
        ).points
    )
    mask = valid_depth_mask(depth, max_range=trunc, edge_threshold=None)
    ours = points_from_depth(depth, ray_grid(camera), mask)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (64 * 48 - 5, 3)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)  # same points, same (row-major) order


def test_points_land_on_integer_pixel_centres():
    for camera in (PINHOLE, RADTAN5, FISHEYE):
        depth = np.full((camera.height, camera.width), 4.0, dtype=np.float32)
        grid = ray_grid(camera)
        points = points_from_depth(depth, grid)
        pixels = pixel_grid(camera)[grid.valid.ravel() if grid.valid is not None else slice(None)]
        np.testing.assert_allclose(project_points(points, camera), pixels, atol=1e-3)
        assert np.all(points[:, 2] == 4.0)  # z-depth, not range along the ray


def test_points_from_depth_without_mask_skips_non_positive_and_non_finite():
    depth = np.ones((48, 64), np.float32)
    depth[0, :3] = [0.0, np.nan, np.inf]
    assert len(points_from_depth(depth, ray_grid(PINHOLE))) == 64 * 48 - 3


def test_points_from_depth_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="ray grid is 64x48"):
        points_from_depth(np.ones((24, 32), np.float32), ray_grid(PINHOLE))
    with pytest.raises(ValueError, match="mask shape"):
        points_from_depth(np.ones((48, 64), np.float32), ray_grid(PINHOLE), np.ones((4, 4), bool))


def test_ray_grid_validates_its_arrays():
    with pytest.raises(ValueError, match="rays must have shape"):
        RayGrid(width=4, height=3, rays=np.zeros((4, 3, 3), np.float32))


# --- validity rules -------------------------------------------------------------------------------


def test_each_invalid_depth_rule():
    depth = np.full((5, 9), 3.0, dtype=np.float32)
    depth[0, 0], depth[0, 4], depth[0, 8] = np.nan, np.inf, -np.inf
    depth[4, 0], depth[4, 4], depth[4, 8] = 0.0, -2.0, 1e-4
    depth[2, 8] = 9.0
    mask = valid_depth_mask(depth, max_range=5.0, edge_threshold=None)
    expected = np.ones((5, 9), bool)
    expected[[0, 0, 0, 4, 4, 4, 2], [0, 4, 8, 0, 4, 8, 8]] = False
    np.testing.assert_array_equal(mask, expected)
    assert valid_depth_mask(depth, max_range=None, edge_threshold=None)[2, 8]  # no range limit by default
    assert valid_depth_mask(depth, max_range=9.0, edge_threshold=None)[2, 8]  # the limit is inclusive
    assert not valid_depth_mask(depth, min_depth=9.0, edge_threshold=None).any()  # "<= min_depth" is invalid


def test_discontinuity_excludes_both_sides_of_a_jump_only():
    depth = np.full((6, 10), 2.0, dtype=np.float32)
    depth[:, 5:] = 4.0  # a wall 2 m behind an object edge between columns 4 and 5
    mask = valid_depth_mask(depth)
    assert not mask[:, 4:6].any()
    assert mask[:, :4].all() and mask[:, 6:].all()
    assert valid_depth_mask(depth, edge_threshold=None).all()


def test_a_flying_pixel_and_its_neighbours_are_excluded():
    depth = np.full((7, 7), 5.0, dtype=np.float32)
    depth[3, 3] = 3.0
    mask = valid_depth_mask(depth)
    assert mask.sum() == 49 - 5
    assert not mask[3, 3] and not mask[2, 3] and not mask[3, 2] and mask[2, 2]


def test_jumps_to_invalid_pixels_are_not_discontinuities():
    depth = np.full((5, 5), 5.0, dtype=np.float32)
    depth[2, 2], depth[0, 0] = np.nan, 0.0
    mask = valid_depth_mask(depth)
    assert mask.sum() == 25 - 2


def test_threshold_is_relative_to_the_nearer_depth():
    depth = np.array([[10.0, 10.4, 10.4 * 1.06]], dtype=np.float32)  # +4 %, then +6 %
    np.testing.assert_array_equal(valid_depth_mask(depth, edge_threshold=0.05), [[True, False, False]])


def test_flat_and_sloped_surfaces_are_kept():
    camera = CameraMessage(width=160, height=120, fx=100.0, fy=100.0, cx=79.5, cy=59.5)
    rays = ray_grid(camera).rays
    # Plane n·X = 3 tilted 30° about x and 15° about y: depth varies 3.8× across the image.
    normal = np.array([np.sin(np.radians(15)), np.sin(np.radians(30)), np.cos(np.radians(30))])
    depth = (3.0 / (rays @ normal)).astype(np.float32)  # z of the ray's intersection with the plane
    assert depth.min() > 0 and depth.max() / depth.min() > 3
    assert valid_depth_mask(depth).all()
    assert valid_depth_mask(np.full((120, 160), 7.0, np.float32)).all()


def test_the_edge_threshold_is_per_image_pixel_on_a_strided_grid():
    """Ground seen towards its horizon: at stride s the grid keeps the rows full resolution keeps."""
    rows_below_horizon = np.arange(1, 241, dtype=np.float32)[:, None]
    depth = np.repeat(300.0 / rows_below_horizon, 8, axis=1)  # z ∝ 1 / (v − v_horizon)
    first_kept = valid_depth_mask(depth).all(axis=1).argmax()
    for stride in (2, 4):
        grid = depth[::stride, ::stride]
        kept_rows = np.flatnonzero(valid_depth_mask(grid, depth_stride=stride).all(axis=1)) * stride
        assert abs(kept_rows[0] - first_kept) <= stride and len(kept_rows) == len(grid) - kept_rows[0] // stride
        # Per grid pixel the slope is s times steeper: the plane would be cut back s times as far.
        assert valid_depth_mask(grid).all(axis=1).argmax() * stride > 1.7 * first_kept
    jump = np.full((6, 12), 2.0, np.float32)
    jump[:, 6:] = 2.0 * 1.25  # a 25 % step is still a discontinuity at stride 4 (threshold 1.05⁴ ≈ 1.22)
    assert not valid_depth_mask(jump, depth_stride=4)[:, 5:7].any()


def test_valid_depth_mask_needs_a_2d_map():
    with pytest.raises(ValueError, match="2-D"):
        valid_depth_mask(np.ones((2, 2, 2), np.float32))


@pytest.mark.parametrize(
    "camera", [RADTAN5, RATIONAL8, FISHEYE, PINHOLE], ids=["radtan5", "rational8", "fisheye", "pinhole"]
)
def test_numpy_lens_model_used_to_check_the_grid_matches_opencv(camera):
    from dronedepth.gateway.projection import _distort

    xy = np.random.default_rng(2).uniform(-0.6, 0.6, size=(500, 2))
    xyz = np.concatenate([xy, np.ones((500, 1))], axis=1)
    np.testing.assert_allclose(_distort(xy, camera), project_points(xyz, camera).astype(np.float64), atol=1e-3)
