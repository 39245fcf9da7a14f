"""Keypoints become landmarks: ids that persist across frames, world positions refined over observations.

One :class:`LandmarkTracker` per drone session. Each posed frame, its
keypoints (optical-frame points in metres, descriptors) are associated with
the landmarks the map predicts to be in view:

1. **Prediction:** every landmark is moved into the current camera with
   ``camera_from_world`` and projected with the frame's intrinsics; only those
   in front of the camera and inside the image are candidates, so matching
   costs O(keypoints × visible landmarks), not O(map).
2. **3D gate:** a keypoint and a candidate may match only if the keypoint's
   world point lies within ``max(min_gate_m, gate_fraction × range)`` of the
   landmark (depth error grows with range, so the gate does too).
3. **Descriptors:** among gated candidates, the nearest descriptor (Hamming
   for binary ORB descriptors, L2 for SIFT) must be below an absolute
   threshold and pass Lowe's ratio test against the second nearest, unless
   the two are the same place (ORB finds one corner at several pyramid
   levels, so the map holds near-duplicates: then both are offered).
4. **Assignment:** the surviving pairs are taken greedily, best first,
   one-to-one, so one id never stands for two keypoints of a frame.
   Detectors without descriptors (``fast``, ``gftt``, ``grid``) fall back
   to the 3D gate alone (nearest in the world first): weaker, since nothing
   tells two nearby corners apart, and meaningless for ``grid``, whose points
   are fixed pixels sliding over the scene.

A matched landmark's world position is the inverse-variance weighted mean of
its observations, each with an isotropic standard deviation
``max(min_sigma_m, sigma_fraction × range)`` (a simplification: monocular depth
error lies mostly along the ray). Its descriptor becomes the latest
observation's (appearance drifts as the drone approaches). Unmatched keypoints
become new landmarks with fresh ids, increasing from 0 per tracker and never
reused. A landmark is forgotten after ``max_missed`` consecutive frames in
which it was predicted in view but not matched, or ``max_unseen_s`` seconds
without a match; at most ``max_landmarks`` are kept, the least recently seen
evicted first.

Persistence needs metric points and a pose. Without a pose, or with relative
depth (no metric scale: the gate in metres and the pose's translation would
not agree with the points), :meth:`LandmarkTracker.update` returns
:data:`UNTRACKED` for every keypoint and leaves the map alone: an id is never
claimed for a point that was not associated.

Frames: keypoints in the camera optical frame (REP-103), poses
``world_from_camera`` (``map`` or ``odom``, ENU, metres), landmark positions in
that world frame. Pure numpy + OpenCV, no I/O, not thread-safe: the session
calls it from its executor, one frame at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np
from numpy.typing import NDArray

from dronedepth.contract import DepthKind
from dronedepth.errors import ConfigError
from dronedepth.frames import Transform
from dronedepth.gateway.projection import project_points, ray_grid
from dronedepth.protocol import CameraMessage

__all__ = ["UNTRACKED", "LandmarkConfig", "LandmarkTracker"]

UNTRACKED: Final = -1
"""The id of a keypoint not associated with a landmark (no pose, relative depth, or the map is full)."""

_MIN_DEPTH_M: Final = 1e-3
"""Landmarks closer to the image plane than this (or behind it) are not predicted in view."""
_BINARY_DESCRIPTORS: Final = frozenset({"orb"})


@dataclass(frozen=True, slots=True)
class LandmarkConfig:
    """How keypoints are associated with landmarks and how long landmarks live.

    Distances in metres, times in seconds. ``max_descriptor_distance`` is in
    the descriptor's own norm: bits of 256 for ORB (Hamming), the L2 norm of
    the uint8 vector for SIFT; ``ratio`` is Lowe's ratio (best / second best).
    """

    min_gate_m: float = 0.2
    gate_fraction: float = 0.05
    max_hamming: int = 64
    max_l2: float = 250.0
    ratio: float = 0.8
    min_sigma_m: float = 0.02
    sigma_fraction: float = 0.02
    max_missed: int = 10
    max_unseen_s: float = 10.0
    max_landmarks: int = 10_000

    def __post_init__(self) -> None:
        positive = {
            "min_gate_m": self.min_gate_m,
            "gate_fraction": self.gate_fraction,
            "max_l2": self.max_l2,
            "min_sigma_m": self.min_sigma_m,
            "sigma_fraction": self.sigma_fraction,
            "max_unseen_s": self.max_unseen_s,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"landmarks: {name} must be a positive finite number, got {value!r}")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"landmarks: ratio must be in (0, 1], got {self.ratio!r}")
        for name in ("max_hamming", "max_missed", "max_landmarks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"landmarks: {name} must be a positive integer, got {value!r}")


class LandmarkTracker:
    """The landmark map of one drone: associates each posed frame's keypoints and returns their ids."""

    def __init__(self, config: LandmarkConfig | None = None) -> None:
        self.config = config or LandmarkConfig()
        self._next_id = 0
        self._descriptor_type: str | None = None
        self._descriptor_shape: tuple[int, ...] | None = None
        capacity = self.config.max_landmarks
        # Fixed-size slots, allocated once: a frame's update only writes into them.
        self._alive = np.zeros(capacity, dtype=bool)
        self._ids = np.full(capacity, UNTRACKED, dtype=np.int64)
        self._positions = np.zeros((capacity, 3), dtype=np.float64)
        self._weights = np.zeros(capacity, dtype=np.float64)
        self._observations = np.zeros(capacity, dtype=np.int64)
        self._missed = np.zeros(capacity, dtype=np.int64)
        self._last_seen_s = np.zeros(capacity, dtype=np.float64)
        self._descriptors: NDArray[Any] | None = None
        self._slot_of: dict[int, int] = {}
        self._view_limits: dict[CameraMessage, float] = {}

    def __len__(self) -> int:
        """The number of landmarks kept."""
        return len(self._slot_of)

    def reset(self) -> None:
        """Forget every landmark (the world frame changed); ids keep increasing, never reused."""
        self._alive[:] = False
        self._ids[:] = UNTRACKED
        self._slot_of.clear()
        self._descriptor_type = None
        self._descriptor_shape = None
        self._descriptors = None

    def positions(self, ids: NDArray[np.integer]) -> NDArray[np.float64]:
        """World positions ``(N, 3)`` (metres) of landmarks ``ids``; NaN for untracked or forgotten ids."""
        out = np.full((len(ids), 3), np.nan)
        for row, landmark in enumerate(np.asarray(ids).tolist()):
            slot = self._slot_of.get(landmark)
            if slot is not None:
                out[row] = self._positions[slot]
        return out

    def observation_counts(self, ids: NDArray[np.integer]) -> NDArray[np.int64]:
        """How many frames observed each landmark of ``ids`` (0 for untracked or forgotten ids)."""
        slots = [self._slot_of.get(landmark) for landmark in np.asarray(ids).tolist()]
        return np.array([0 if s is None else self._observations[s] for s in slots], dtype=np.int64)

    def update(
        self,
        points_optical: NDArray[np.floating],
        descriptors: NDArray[Any] | None,
        descriptor_type: str | None,
        world_from_camera: Transform | None,
        camera: CameraMessage,
        *,
        depth_kind: DepthKind,
        time_s: float,
    ) -> NDArray[np.int64]:
        """The landmark id of each keypoint of one frame (``int64``, :data:`UNTRACKED` where none).

        ``points_optical`` ``(N, 3)`` are the keypoints' points in the camera
        optical frame (metres when ``depth_kind`` is ``metric``),
        ``descriptors`` one row per keypoint or None, ``world_from_camera`` the
        frame's camera pose (None when unknown), ``camera`` the intrinsics the
        points were lifted with, ``time_s`` the frame's capture time in seconds
        (only differences matter). Without a pose or with relative depth, every
        id is :data:`UNTRACKED` and the map is left untouched.
        """
        points = np.asarray(points_optical, dtype=np.float64)
        n = len(points)
        if points.shape != (n, 3) or not np.isfinite(points).all():
            raise ValueError(f"landmarks: points must be a finite (N, 3) array, got shape {points.shape}")
        if descriptors is not None and len(descriptors) != n:
            raise ValueError(f"landmarks: {len(descriptors)} descriptors for {n} points")
        if not math.isfinite(time_s):
            raise ValueError(f"landmarks: time_s must be finite, got {time_s!r}")
        ids = np.full(n, UNTRACKED, dtype=np.int64)
        if world_from_camera is None or depth_kind != "metric":
            return ids
        if descriptors is None or descriptor_type is None:
            descriptors, descriptor_type = None, None
        self._adopt_descriptors(descriptors, descriptor_type)

        self._forget_unseen(time_s)
        ranges = np.linalg.norm(points, axis=1)
        world = world_from_camera.apply(points)
        candidates = self._in_view(world_from_camera, camera)
        rows, slots = self._associate(world, ranges, descriptors, candidates, world_from_camera.translation)

        self._refine(slots, world[rows], ranges[rows], time_s)
        if descriptors is not None and self._descriptors is not None:
            self._descriptors[slots] = descriptors[rows]
        ids[rows] = self._ids[slots]

        unmatched_candidates = np.setdiff1d(candidates, slots, assume_unique=True)
        self._missed[unmatched_candidates] += 1
        self._drop(unmatched_candidates[self._missed[unmatched_candidates] > self.config.max_missed])

        new_rows = np.setdiff1d(np.arange(n), rows, assume_unique=True)
        ids[new_rows] = self._create(new_rows, world, ranges, descriptors, time_s, keep=slots)
        return ids

    def _adopt_descriptors(self, descriptors: NDArray[Any] | None, descriptor_type: str | None) -> None:
        shape = None if descriptors is None else descriptors.shape[1:]
        if descriptor_type == self._descriptor_type and shape == self._descriptor_shape:
            return
        if self._slot_of:  # another detector: old descriptors cannot be compared with the new ones
            self.reset()
        self._descriptor_type, self._descriptor_shape = descriptor_type, shape
        self._descriptors = None
        if descriptors is not None:
            self._descriptors = np.zeros((self.config.max_landmarks, *descriptors.shape[1:]), dtype=descriptors.dtype)

    def _forget_unseen(self, time_s: float) -> None:
        alive = np.flatnonzero(self._alive)
        stale = alive[time_s - self._last_seen_s[alive] > self.config.max_unseen_s]
        self._drop(stale)

    def _drop(self, slots: NDArray[np.intp]) -> None:
        for landmark in self._ids[slots].tolist():
            del self._slot_of[landmark]
        self._alive[slots] = False
        self._ids[slots] = UNTRACKED

    def _in_view(self, world_from_camera: Transform, camera: CameraMessage) -> NDArray[np.intp]:
        """Slots of the landmarks that project inside ``camera``'s image from this pose."""
        alive = np.flatnonzero(self._alive)
        if len(alive) == 0:
            return alive
        local = world_from_camera.inverse().apply(self._positions[alive])
        z = local[:, 2]
        ahead = z > _MIN_DEPTH_M
        normalised = local[ahead, :2] / z[ahead, None]
        # A distorted lens folds rays from outside its field of view back into the image: keep only
        # rays no wider than the widest the image's own pixels have.
        ahead[ahead] = np.hypot(normalised[:, 0], normalised[:, 1]) <= self._view_limit(camera)
        alive, local = alive[ahead], local[ahead]
        if len(alive) == 0:
            return alive
        # cv2.projectPoints costs ~0.1 ms per thousand points: fine for the landmarks ahead.
        pixels = project_points(local, camera)
        inside = (
            (pixels[:, 0] >= -0.5)
            & (pixels[:, 0] <= camera.width - 0.5)
            & (pixels[:, 1] >= -0.5)
            & (pixels[:, 1] <= camera.height - 0.5)
        )
        return alive[inside]

    def _view_limit(self, camera: CameraMessage) -> float:
        limit = self._view_limits.get(camera)
        if limit is None:
            rays = ray_grid(camera).rays
            limit = float(np.nanmax(np.hypot(rays[..., 0], rays[..., 1])))
            if len(self._view_limits) >= 8:  # a drone changes cameras rarely; keep the cache bounded anyway
                self._view_limits.clear()
            self._view_limits[camera] = limit
        return limit

    def _associate(
        self,
        world: NDArray[np.float64],
        ranges: NDArray[np.float64],
        descriptors: NDArray[Any] | None,
        candidates: NDArray[np.intp],
        origin: NDArray[np.float64],
    ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Matched (keypoint rows, landmark slots), one-to-one; without descriptors the cost is the 3D distance."""
        empty = np.empty(0, dtype=np.intp)
        if len(world) == 0 or len(candidates) == 0:
            return empty, empty
        config = self.config
        gates = np.maximum(config.min_gate_m, config.gate_fraction * ranges)
        # Relative to the camera: float32 keeps sub-millimetre precision near it wherever the map's origin is.
        a = (world - origin).astype(np.float32)
        b = (self._positions[candidates] - origin).astype(np.float32)
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        gated = squared <= (gates * gates)[:, None]
        if not gated.any():
            return empty, empty

        if descriptors is None or self._descriptors is None:
            rows, cols = np.nonzero(gated)
            costs = squared[rows, cols].astype(np.float64)
        else:
            rows, cols, costs = self._descriptor_pairs(descriptors, candidates, gated, gates)
        # Greedy one-to-one assignment, best pairs first: a landmark never takes two keypoints, and a
        # keypoint that loses its best landmark to a better keypoint may still take its second best.
        order = np.argsort(costs, kind="stable")
        used_rows: set[int] = set()
        used_cols: set[int] = set()
        kept_rows: list[int] = []
        kept_cols: list[int] = []
        for row, col in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
            if row in used_rows or col in used_cols:
                continue
            used_rows.add(row)
            used_cols.add(col)
            kept_rows.append(row)
            kept_cols.append(col)
        return np.array(kept_rows, dtype=np.intp), candidates[np.array(kept_cols, dtype=np.intp)]

    def _descriptor_pairs(
        self,
        descriptors: NDArray[Any],
        candidates: NDArray[np.intp],
        gated: NDArray[np.bool_],
        gates: NDArray[np.float64],
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
        """(keypoint row, candidate column, descriptor distance) of the pairs that pass the descriptor tests.

        Each keypoint offers its two nearest gated landmarks. The ratio test rejects a keypoint
        whose two nearest are different places with similar descriptors (a repeated texture); two
        landmarks closer together than half the keypoint's gate are the same place seen twice (ORB
        detects one corner at several pyramid levels), so both are offered instead.
        """
        assert self._descriptors is not None
        config = self.config
        binary = self._descriptor_type in _BINARY_DESCRIPTORS
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING if binary else cv2.NORM_L2)
        limit = config.max_hamming if binary else config.max_l2
        found = matcher.knnMatch(
            np.ascontiguousarray(descriptors),
            np.ascontiguousarray(self._descriptors[candidates]),
            k=2,
            mask=gated.astype(np.uint8),
        )
        rows: list[int] = []
        cols: list[int] = []
        costs: list[float] = []
        for pair in found:
            if not pair or pair[0].distance > limit:
                continue
            best = pair[0]
            rows.append(best.queryIdx)
            cols.append(best.trainIdx)
            costs.append(best.distance)
            if len(pair) < 2:
                continue
            second = pair[1]
            apart = self._positions[candidates[best.trainIdx]] - self._positions[candidates[second.trainIdx]]
            if float(np.linalg.norm(apart)) <= 0.5 * gates[best.queryIdx]:
                if second.distance <= limit:
                    rows.append(second.queryIdx)
                    cols.append(second.trainIdx)
                    costs.append(second.distance)
            elif best.distance >= config.ratio * second.distance:
                del rows[-1], cols[-1], costs[-1]
        return np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp), np.array(costs, dtype=np.float64)

    def _refine(
        self, slots: NDArray[np.intp], world: NDArray[np.float64], ranges: NDArray[np.float64], time_s: float
    ) -> None:
        weight = self._observation_weight(ranges)
        total = self._weights[slots] + weight
        self._positions[slots] += (weight / total)[:, None] * (world - self._positions[slots])
        self._weights[slots] = total
        self._observations[slots] += 1
        self._missed[slots] = 0
        self._last_seen_s[slots] = time_s

    def _observation_weight(self, ranges: NDArray[np.float64]) -> NDArray[np.float64]:
        sigma = np.maximum(self.config.min_sigma_m, self.config.sigma_fraction * ranges)
        return 1.0 / (sigma * sigma)

    def _create(
        self,
        rows: NDArray[np.intp],
        world: NDArray[np.float64],
        ranges: NDArray[np.float64],
        descriptors: NDArray[Any] | None,
        time_s: float,
        *,
        keep: NDArray[np.intp],
    ) -> NDArray[np.int64]:
        """New landmarks for keypoint ``rows``; evicts the least recently seen (never ``keep``) when full."""
        free = np.flatnonzero(~self._alive)
        shortfall = len(rows) - len(free)
        if shortfall > 0:
            evictable = np.setdiff1d(np.flatnonzero(self._alive), keep, assume_unique=True)
            oldest = evictable[np.lexsort((self._ids[evictable], self._last_seen_s[evictable]))[:shortfall]]
            self._drop(oldest)
            free = np.flatnonzero(~self._alive)
        created = min(len(rows), len(free))  # more new keypoints than the map holds: the rest stay untracked
        ids = np.full(len(rows), UNTRACKED, dtype=np.int64)
        rows, slots = rows[:created], free[:created]
        new_ids = np.arange(self._next_id, self._next_id + created, dtype=np.int64)
        self._next_id += created
        self._alive[slots] = True
        self._ids[slots] = new_ids
        self._positions[slots] = world[rows]
        self._weights[slots] = self._observation_weight(ranges[rows])
        self._observations[slots] = 1
        self._missed[slots] = 0
        self._last_seen_s[slots] = time_s
        if descriptors is not None and self._descriptors is not None:
            self._descriptors[slots] = descriptors[rows]
        self._slot_of.update(zip(new_ids.tolist(), slots.tolist(), strict=True))
        ids[:created] = new_ids
        return ids
