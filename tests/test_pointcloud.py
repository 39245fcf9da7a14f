import numpy as np
import open3d as o3d
import pytest

from dronedepth.gateway.pointcloud import make_point_cloud


def grid_points(n: int = 20, spacing: float = 0.01) -> np.ndarray:
    axis = np.arange(n) * spacing
    x, y = np.meshgrid(axis, axis)
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, 2.0)], 1).astype(np.float32)


def test_points_and_uint8_colors_are_carried_over():
    points = grid_points()
    colors = np.zeros((len(points), 3), np.uint8)
    colors[:, 0], colors[:, 2] = 255, np.arange(len(points)) % 256
    cloud = make_point_cloud(points, colors)
    assert isinstance(cloud, o3d.geometry.PointCloud)
    np.testing.assert_allclose(np.asarray(cloud.points), points, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(cloud.colors), colors / 255.0)


def test_float_colors_are_taken_as_0_to_1_and_colors_are_optional():
    points = grid_points(4)
    cloud = make_point_cloud(points, np.full((16, 3), 0.25, np.float32))
    np.testing.assert_allclose(np.asarray(cloud.colors), 0.25)
    assert not make_point_cloud(points, None).has_colors()


def test_voxel_down_sampling_reduces_points_and_averages_colors():
    points = grid_points(20, spacing=0.01)  # 400 points on a 0.2 m square
    colors = np.full((400, 3), 200, np.uint8)
    cloud = make_point_cloud(points, colors, voxel_size=0.05)
    assert 0 < len(cloud.points) <= 25 < 400
    np.testing.assert_allclose(np.asarray(cloud.colors), 200 / 255.0)


def test_statistical_outlier_removal_drops_far_points():
    rng = np.random.default_rng(0)
    inliers = rng.normal(0.0, 0.05, size=(500, 3)).astype(np.float32)
    outliers = np.array([[5.0, 5.0, 5.0], [-4.0, 6.0, 1.0], [8.0, -3.0, 2.0]], np.float32)
    cloud = make_point_cloud(np.concatenate([inliers, outliers]), None, remove_outliers=True)
    kept = np.asarray(cloud.points)
    assert np.abs(kept).max() < 1.0, "every far point is gone"
    assert 495 <= len(kept) <= 500, "and (almost) every inlier is kept"


def test_empty_and_bad_inputs():
    assert len(make_point_cloud(np.empty((0, 3), np.float32), None, voxel_size=0.1, remove_outliers=True).points) == 0
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\)"):
        make_point_cloud(np.zeros((4, 2), np.float32), None)
    with pytest.raises(ValueError, match="colors must have the shape of points"):
        make_point_cloud(np.zeros((4, 3), np.float32), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="voxel_size must be positive"):
        make_point_cloud(np.zeros((4, 3), np.float32), None, voxel_size=0.0)
