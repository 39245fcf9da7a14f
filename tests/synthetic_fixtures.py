"""Ground truth of ``SyntheticSource`` scenes for tests: exact depth and which surface each pixel sees."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from dronedepth.drone.sources import SyntheticSource
from dronedepth.frames import Transform
from dronedepth.gateway.projection import ray_grid

GROUND = 0
"""Surface label of the ground; a box front's is ``1 +`` its ``x`` in millimetres (the same in every frame);
the sky's is -1."""


def synthetic_depth_and_surfaces(
    source: SyntheticSource, world_from_camera: Transform
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Exact z-depth (m, NaN for the sky) of the camera at ``world_from_camera`` (the scene's ``map``), ray-cast
    against the ground 1.6 m below and the box fronts the renderer draws (3–40 m ahead), and the surface label
    of every pixel."""
    camera = source.intrinsics
    assert camera is not None
    rays = ray_grid(camera).rays.reshape(-1, 3).astype(np.float64)
    direction = world_from_camera.rotate(rays)  # world displacement per metre of z-depth
    origin = world_from_camera.translation
    depth = np.full(len(rays), np.inf)
    label = np.full(len(rays), -1, dtype=np.int32)
    ground = rays[:, 1] > 1e-3  # the renderer's ground mask: rays more than 1e-3 below the horizon
    depth[ground] = -origin[2] / direction[ground, 2]
    label[ground] = GROUND
    with np.errstate(divide="ignore", invalid="ignore"):
        for front in source.box_fronts(origin[0] + 3.0, origin[0] + 40.0):
            t = (front.x - origin[0]) / direction[:, 0]
            hit = origin + t[:, None] * direction
            on = (t > 0) & (hit[:, 1] >= front.y_min) & (hit[:, 1] <= front.y_max)
            on &= (hit[:, 2] >= 0) & (hit[:, 2] <= front.top) & (t < depth)
            depth[on] = t[on]
            label[on] = 1 + round(front.x * 1000)
    depth[np.isinf(depth)] = np.nan
    shape = (camera.height, camera.width)
    return depth.reshape(shape).astype(np.float32), label.reshape(shape)
