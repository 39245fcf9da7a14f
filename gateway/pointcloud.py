"""Open3D point clouds from back-projected points: building, thinning, cleaning.

Open3D does the geometry (voxel grid, k-nearest-neighbour statistics); this
module only converts arrays and chooses the order of operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import open3d as o3d
from numpy.typing import NDArray

if TYPE_CHECKING:
    from open3d.geometry import PointCloud

__all__ = ["make_point_cloud"]


def make_point_cloud(
    points: NDArray[np.float32],
    colors: NDArray[np.uint8] | NDArray[np.float32] | None,
    *,
    voxel_size: float | None = None,
    remove_outliers: bool = False,
    nb_neighbors: int = 20,
    std_ratio: float = 2.0,
) -> PointCloud:
    """An ``open3d.geometry.PointCloud`` of ``points`` ``(N, 3)``.

    ``colors`` are ``(N, 3)`` RGB, uint8 (0–255) or float (0–1). With
    ``voxel_size`` the cloud is down-sampled on a voxel grid (the legacy API
    averages the points and colours that share a voxel). With
    ``remove_outliers`` points whose mean distance to their ``nb_neighbors``
    nearest neighbours exceeds the cloud's mean by ``std_ratio`` standard
    deviations are dropped; this costs a k-NN search, so down-sample first on
    full-resolution clouds (it runs after the voxel step).
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {points.shape}")
    if voxel_size is not None and not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size!r}")
    if nb_neighbors < 1 or not std_ratio > 0:
        raise ValueError(f"need nb_neighbors >= 1 and std_ratio > 0, got {nb_neighbors!r} and {std_ratio!r}")
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64))
    if colors is not None:
        color_array = np.asarray(colors)
        if color_array.shape != points.shape:
            raise ValueError(f"colors must have the shape of points {points.shape}, got {color_array.shape}")
        if color_array.dtype == np.uint8:
            rgb = color_array.astype(np.float64)
            rgb *= 1.0 / 255.0
        else:
            rgb = np.asarray(color_array, dtype=np.float64)
        cloud.colors = o3d.utility.Vector3dVector(rgb)
    if voxel_size is not None and len(points):
        cloud = cloud.voxel_down_sample(voxel_size)
    if remove_outliers and len(cloud.points) > nb_neighbors:
        cloud, _ = cloud.remove_statistical_outlier(nb_neighbors=nb_neighbors, std_ratio=std_ratio)
    return cloud
