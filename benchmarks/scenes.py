"""Synthetic flights with exact depth and pose, and the oracles that turn the depth into what a model outputs.

World ENU (x east, y north, z up), ground at ``z = 0``, axis-aligned boxes
standing on it. The drone's body (FLU, level, heading east) flies east at a
constant height; the camera is pitched down on its mount
(:func:`~dronedepth.frames.body_from_camera`). The true z-depth in the camera
optical frame is ray-cast per pixel (metres, ``inf`` where a ray meets
nothing: sky).

Scenes (:data:`SCENES`): ``ground`` (the plane alone), ``boxes`` (a dozen
boxes sized to the altitude around and ahead of the track) and ``walls`` (a
façade across the track ahead, taller than the flight, with a side wall
along it: a street corner seen from above).

Oracles turn the truth into model output: the **relative** one gives
affine-invariant disparity ``d = (1/Z − b) / a`` with a slowly drifting
unknown ``(a, b)``, multiplicative noise and outliers (what a relative Depth
Anything model gives); the **metric** one gives depth in metres off by a
constant factor, with the same noise. The sensors the scale estimator sees
(height above ground, attitude) are noisy. :meth:`Flight.render` draws an RGB
frame of the same geometry for a real model.

Used by ``dronedepth eval`` (:mod:`dronedepth.benchmarks.evaluation`) and the
scale, flicker and evaluation tests: one implementation of the scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from dronedepth.frames import Transform, body_from_camera, quaternion_from_rpy
from dronedepth.gateway.anchors import GroundPlane, ground_from_pose
from dronedepth.gateway.projection import ray_grid
from dronedepth.protocol import CameraMessage

__all__ = ["CAMERA", "FPS", "SCENES", "Flight", "SceneName"]

CAMERA: Final = CameraMessage(width=160, height=120, fx=131.25, fy=131.25, cx=79.5, cy=59.5)
"""A 160×120 pinhole camera, 62.7° horizontal field of view (small: the evaluation is per pixel)."""
FPS: Final = 10.0
SceneName = Literal["ground", "boxes", "walls"]
SCENES: Final[tuple[SceneName, ...]] = ("ground", "boxes", "walls")

_SKY: Final = -1
_GROUND: Final = 0
"""Hit ids of :meth:`Flight.ray_cast`: sky, ground, then box ``k`` is ``k + 1``."""


@dataclass
class Flight:
    """A flight over ``scene`` at ``altitude_m`` (body above the ground) with the camera ``pitch_deg`` down.

    Noise: ``model_noise`` (relative, per pixel), ``outlier_fraction`` of
    pixels replaced by random values, ``height_noise`` (relative, of the
    sensed height) and ``attitude_noise_deg`` (roll and pitch of the sensed
    attitude). ``seed`` fixes the boxes and every noise draw.
    """

    altitude_m: float
    pitch_deg: float
    scene: SceneName = "boxes"
    camera: CameraMessage = CAMERA
    speed_m_s: float = 4.0
    model_noise: float = 0.02
    outlier_fraction: float = 0.05
    height_noise: float = 0.01
    attitude_noise_deg: float = 0.2
    seed: int = 1
    boxes: NDArray[np.float64] = field(init=False)
    """``(N, 6)``: ``x0, y0, z0, x1, y1, z1`` of each box in the world (metres)."""

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ValueError(f"scene must be one of {', '.join(SCENES)}, got {self.scene!r}")
        if not (math.isfinite(self.altitude_m) and self.altitude_m > 0):
            raise ValueError(f"altitude must be finite and > 0 metres, got {self.altitude_m!r}")
        rng = np.random.default_rng(self.seed)
        h = self.altitude_m
        if self.scene == "boxes":
            # Boxes ahead of the drone and around its track: footprint ~h, height up to 0.4 h.
            count = 12
            x0 = rng.uniform(0.3 * h, 6.0 * h + 30.0, count)
            y0 = rng.uniform(-1.5 * h - 5.0, 1.5 * h + 5.0, count)
            size = rng.uniform(0.2 * h + 0.3, 0.6 * h + 0.5, (count, 2))
            height = rng.uniform(0.1 * h, 0.4 * h, count)
            self.boxes = np.stack([x0, y0, np.zeros(count), x0 + size[:, 0], y0 + size[:, 1], height], axis=1)
        elif self.scene == "walls":
            # A façade across the track 3 h + 15 m ahead, 1.3 h tall (the drone flies below its top), and a
            # side wall along the track on the right, half as tall: the camera sees both and the ground.
            front = 3.0 * h + 15.0
            self.boxes = np.array(
                [
                    [front, -4.0 * h - 20.0, 0.0, front + 2.0, 4.0 * h + 20.0, 1.3 * h],
                    [0.5 * h, -1.0 * h - 6.0, 0.0, front, -1.0 * h - 5.0, 0.6 * h],
                ]
            )
        else:
            self.boxes = np.zeros((0, 6))
        self._rng = rng
        rays = ray_grid(self.camera).rays.reshape(-1, 3).astype(np.float64)
        self._rays = rays

    def world_from_body(self, time_s: float) -> Transform:
        """Ground truth: ``map_from_base_link`` (ENU/FLU, metres) at ``time_s`` (seconds from take-off)."""
        return Transform(quaternion_from_rpy(0.0, 0.0, 0.0), np.array([self.speed_m_s * time_s, 0.0, self.altitude_m]))

    @property
    def body_from_camera(self) -> Transform:
        return body_from_camera(pitch=math.radians(self.pitch_deg))

    def world_from_camera(self, time_s: float) -> Transform:
        return self.world_from_body(time_s) @ self.body_from_camera

    def ray_cast(self, time_s: float) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        """Per pixel (flattened): the z-depth (m, ``inf`` for sky) and what it hit (-1 sky, 0 ground, k + 1 box k)."""
        pose = self.world_from_camera(time_s)
        direction = pose.rotate(self._rays)  # the world displacement per metre of z-depth
        origin = pose.translation
        depth = np.full(len(direction), np.inf)
        hit = np.full(len(direction), _SKY, dtype=np.intp)
        down = direction[:, 2] < -1e-9
        depth[down] = -origin[2] / direction[down, 2]
        hit[down] = _GROUND
        # Slab test per box; a direction component of exactly 0 becomes tiny, so no 0 × inf.
        inverse = 1.0 / np.where(np.abs(direction) < 1e-12, 1e-12, direction)
        for k, box in enumerate(self.boxes):
            t1 = (box[:3] - origin) * inverse
            t2 = (box[3:] - origin) * inverse
            near = np.minimum(t1, t2).max(axis=1)
            far = np.maximum(t1, t2).min(axis=1)
            nearer = (near <= far) & (near > 0) & (near < depth)
            depth[nearer] = near[nearer]
            hit[nearer] = k + 1
        return depth, hit

    def true_depth(self, time_s: float) -> NDArray[np.float64]:
        """Ray-cast z-depth (m) in the optical frame, ``(H, W)``; inf where a ray meets nothing (sky)."""
        return self.ray_cast(time_s)[0].reshape(self.camera.height, self.camera.width)

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

    def render(self, time_s: float) -> NDArray[np.uint8]:
        """An RGB frame ``(H, W, 3)`` of the same geometry for a real model: textured ground, shaded boxes, sky.

        The ground has 1 m-scale checker cells whose shade varies per cell
        (texture gradient and perspective are the depth cues), boxes a colour
        each with their faces shaded by orientation; both fade into haze
        with distance. Deterministic in ``time_s``.
        """
        depth, hit = self.ray_cast(time_s)
        pose = self.world_from_camera(time_s)
        points = pose.translation + pose.rotate(self._rays) * np.where(np.isfinite(depth), depth, 0.0)[:, None]
        cell = max(1.0, round(self.altitude_m / 10.0))
        ix, iy = np.floor(points[:, 0] / cell).astype(np.int64), np.floor(points[:, 1] / cell).astype(np.int64)
        shade = 0.45 + 0.45 * ((ix * 73856093 ^ iy * 19349663) % 1000) / 1000.0
        colour = np.empty((len(depth), 3))
        colour[:] = np.array([0.42, 0.5, 0.3]) * shade[:, None] * np.where((ix + iy) % 2 == 0, 1.0, 0.75)[:, None]
        palette = np.random.default_rng(self.seed + 17).uniform(0.3, 0.9, (max(len(self.boxes), 1), 3))
        on_box = hit > _GROUND
        if on_box.any():
            box = self.boxes[hit[on_box] - 1]
            p = points[on_box]
            # Which face: the coordinate nearest a box bound. Roofs are bright, sides darker by their axis.
            gaps = np.minimum(np.abs(p - box[:, :3]), np.abs(p - box[:, 3:]))
            face_shade = np.array([0.65, 0.8, 1.0])[np.argmin(gaps, axis=1)]
            colour[on_box] = palette[hit[on_box] - 1] * face_shade[:, None]
        haze = 1.0 - np.exp(-np.where(np.isfinite(depth), depth, np.inf) / (8.0 * self.altitude_m + 40.0))
        colour = colour + haze[:, None] * (np.array([0.75, 0.8, 0.85]) - colour)
        sky = hit == _SKY
        colour[sky] = np.array([0.55, 0.7, 0.92])
        image = np.clip(colour * 255.0, 0.0, 255.0).astype(np.uint8)
        return image.reshape(self.camera.height, self.camera.width, 3)
