"""A simulated flight for the scale tests: ray-cast ground truth over a ground plane with boxes, and oracles.

World ENU (z up), ground at z = 0, boxes standing on it. The drone flies east
at a constant height with a camera pitched down on its mount; the true depth
is ray-cast. Oracles turn it into what a model would output: a **relative**
one (disparity ``d = (1/Z − b) / a`` with a slowly drifting unknown ``(a, b)``,
multiplicative noise and outliers) or a **metric** one with a wrong scale.
The sensors the estimator sees (height above ground, attitude) are noisy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from dronedepth.gateway.anchors import GroundPlane, ground_from_pose
from dronedepth.gateway.projection import ray_grid
from numpy.typing import NDArray

from dronedepth.frames import Transform, body_from_camera, quaternion_from_rpy
from dronedepth.protocol import CameraMessage

CAMERA = CameraMessage(width=160, height=120, fx=131.25, fy=131.25, cx=79.5, cy=59.5)
FPS = 10.0


@dataclass
class Flight:
    """A flight at ``altitude_m`` with the camera ``pitch_deg`` down; boxes sized to the altitude."""

    altitude_m: float
    pitch_deg: float
    camera: CameraMessage = CAMERA
    speed_m_s: float = 4.0
    model_noise: float = 0.02
    outlier_fraction: float = 0.05
    height_noise: float = 0.01
    attitude_noise_deg: float = 0.2
    seed: int = 1
    boxes: NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        h = self.altitude_m
        # Boxes ahead of the drone and around its track: footprint ~h, height up to 0.4 h.
        count = 12
        x0 = rng.uniform(0.3 * h, 6.0 * h + 30.0, count)
        y0 = rng.uniform(-1.5 * h - 5.0, 1.5 * h + 5.0, count)
        size = rng.uniform(0.2 * h + 0.3, 0.6 * h + 0.5, (count, 2))
        height = rng.uniform(0.1 * h, 0.4 * h, count)
        self.boxes = np.stack([x0, y0, np.zeros(count), x0 + size[:, 0], y0 + size[:, 1], height], axis=1)
        self._rng = rng

    def world_from_body(self, time_s: float) -> Transform:
        return Transform(quaternion_from_rpy(0.0, 0.0, 0.0), np.array([self.speed_m_s * time_s, 0.0, self.altitude_m]))

    @property
    def body_from_camera(self) -> Transform:
        return body_from_camera(pitch=math.radians(self.pitch_deg))

    def world_from_camera(self, time_s: float) -> Transform:
        return self.world_from_body(time_s) @ self.body_from_camera

    def true_depth(self, time_s: float) -> NDArray[np.float64]:
        """Ray-cast z-depth (m) in the optical frame; inf where a ray meets nothing (sky)."""
        pose = self.world_from_camera(time_s)
        rays = ray_grid(self.camera).rays.reshape(-1, 3).astype(np.float64)
        direction = pose.rotate(rays)  # the world displacement per metre of z-depth
        origin = pose.translation
        depth = np.full(len(rays), np.inf)
        down = direction[:, 2] < -1e-9
        depth[down] = -origin[2] / direction[down, 2]
        # Slab test per box; a direction component of exactly 0 becomes tiny, so no 0 × inf.
        inverse = 1.0 / np.where(np.abs(direction) < 1e-12, 1e-12, direction)
        for box in self.boxes:
            t1 = (box[:3] - origin) * inverse
            t2 = (box[3:] - origin) * inverse
            near = np.minimum(t1, t2).max(axis=1)
            far = np.maximum(t1, t2).min(axis=1)
            hit = (near <= far) & (near > 0)
            np.minimum(depth, np.where(hit, near, np.inf), out=depth)
        return depth.reshape(self.camera.height, self.camera.width)

    def true_scale(self, time_s: float) -> tuple[float, float]:
        """The relative oracle's unknown (a, b) at ``time_s``: 1/Z = a·d + b, drifting slowly."""
        h = self.altitude_m
        a = (0.05 / h) * (1.0 + 0.15 * math.sin(2 * math.pi * time_s / 20.0))
        b = -(0.1 / h) * (1.0 + 0.3 * math.sin(2 * math.pi * time_s / 15.0 + 1.0))
        return a, b

    def relative_output(
        self, depth: NDArray[np.float64], time_s: float
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """The relative oracle's disparity, and the mask of the pixels it made outliers."""
        a, b = self.true_scale(time_s)
        disparity = (1.0 / depth - b) / a
        disparity *= 1.0 + self.model_noise * self._rng.standard_normal(depth.shape)
        outliers = self._rng.random(depth.shape) < self.outlier_fraction
        disparity[outliers] = self._rng.uniform(0.0, 2.0 * np.max(disparity), int(outliers.sum()))
        return disparity.astype(np.float32), outliers

    def metric_output(
        self, depth: NDArray[np.float64], scale_error: float
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """A metric model's depth wrong by ``scale_error`` (0.7: 30 % short), with noise and outliers."""
        out = depth * scale_error * (1.0 + self.model_noise * self._rng.standard_normal(depth.shape))
        outliers = self._rng.random(depth.shape) < self.outlier_fraction
        out[outliers] = self._rng.uniform(0.5, 2.0, int(outliers.sum())) * out[outliers]
        return out.astype(np.float32), outliers

    def sensed_ground(self, time_s: float) -> GroundPlane:
        """The ground plane from noisy sensors: rangefinder height and attitude."""
        noise = np.radians(self.attitude_noise_deg) * self._rng.standard_normal(2)
        true_pose = self.world_from_body(time_s)
        sensed_pose = Transform(quaternion_from_rpy(noise[0], noise[1], 0.0), true_pose.translation)
        height = self.altitude_m * (1.0 + self.height_noise * self._rng.standard_normal())
        return ground_from_pose(sensed_pose, self.body_from_camera, height)


def abs_rel(estimate: NDArray[np.floating], truth: NDArray[np.floating], mask: NDArray[np.bool_]) -> float:
    """Mean |Z − Z*| / Z* over ``mask`` (where the estimate is finite)."""
    m = mask & np.isfinite(estimate)
    return float(np.mean(np.abs(estimate[m] - truth[m]) / truth[m]))
