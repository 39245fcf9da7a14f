"""Matching poses to frames: a bounded, per-drone buffer of timed poses, interpolated at a frame's instant.

Pure and numpy-only (the drone's TUM trajectories use it too). Times are
seconds on one clock the caller chooses; the gateway uses ``pts / 90000``, the
video clock of :mod:`dronedepth.protocol`. Poses are ``world_from_body`` in
ENU/FLU (REP-103/105), already converted at the edge.

Matching rules (:meth:`PoseBuffer.lookup`), with ``max_gap_s`` (default 0.1 s):

- a sample at exactly ``t``: that sample (``exact``);
- samples ``a < t < b`` on both sides, each within ``max_gap_s`` of ``t``:
  linear position, slerp orientation (``interpolated``); one further: ``gap``;
- ``t`` past the newest (or before the oldest) sample by at most ``max_gap_s``,
  and the two end samples at most ``max_gap_s`` apart: the same formula
  continued (``extrapolated``); otherwise ``ahead`` (or ``behind``).

A frame with no match is processed without a pose: poses go stale rather than lie.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ProtocolError
from dronedepth.frames import Transform, interpolate, normalised_quaternion
from dronedepth.protocol import INVALID_POSE

__all__ = ["DEFAULT_MAX_GAP_S", "MatchStatus", "PoseBuffer", "PoseMatch", "TimedPose"]

DEFAULT_MAX_GAP_S: Final = 0.1
DEFAULT_CAPACITY: Final = 512
"""About 10 s of poses at 50 Hz: far more than a frame waits for its depth."""
DEFAULT_MAX_FUTURE_S: Final = 2.0

MatchStatus = Literal["exact", "interpolated", "extrapolated", "empty", "gap", "ahead", "behind"]


@dataclass(frozen=True, slots=True)
class TimedPose:
    """The body's pose at ``time_s``: ``world_from_body`` (ENU world, FLU body; metres).

    ``height_above_ground_m`` (rangefinder) and ``velocity_m_s`` (world ENU axes)
    are optional.
    """

    time_s: float
    world_from_body: Transform
    height_above_ground_m: float | None = None
    velocity_m_s: NDArray[np.float64] | None = None


@dataclass(frozen=True, slots=True)
class PoseMatch:
    """What :meth:`PoseBuffer.lookup` found: ``pose`` is ``None`` unless ``status`` is a match."""

    status: MatchStatus
    pose: TimedPose | None = None
    nearest_s: float = math.inf
    """Distance in time to the nearest sample (``inf`` when empty)."""


def _checked(sample: TimedPose) -> TimedPose:
    """``sample`` with a unit quaternion; :class:`ProtocolError` naming the bad value otherwise."""
    where = f"pose at {sample.time_s!r} s"
    if not math.isfinite(sample.time_s):
        raise ProtocolError(INVALID_POSE, f"pose: time must be finite, got {sample.time_s!r}")
    try:
        rotation = normalised_quaternion(sample.world_from_body.rotation)
    except ValueError as exc:
        raise ProtocolError(INVALID_POSE, f"{where}: {exc}") from None
    translation = np.asarray(sample.world_from_body.translation, dtype=np.float64)
    if translation.shape != (3,) or not np.all(np.isfinite(translation)):
        raise ProtocolError(INVALID_POSE, f"{where}: position must be 3 finite numbers, got {translation.tolist()}")
    height = sample.height_above_ground_m
    if height is not None and not (math.isfinite(height) and height >= 0):
        raise ProtocolError(INVALID_POSE, f"{where}: height above ground must be finite and ≥ 0, got {height!r}")
    velocity = sample.velocity_m_s
    if velocity is not None:
        velocity = np.asarray(velocity, dtype=np.float64)
        if velocity.shape != (3,) or not np.all(np.isfinite(velocity)):
            raise ProtocolError(INVALID_POSE, f"{where}: velocity must be 3 finite numbers, got {velocity.tolist()}")
    return TimedPose(sample.time_s, Transform(rotation, translation), height, velocity)


def _blend(a: TimedPose, b: TimedPose, t: float) -> TimedPose:
    fraction = (t - a.time_s) / (b.time_s - a.time_s)
    height = None
    if a.height_above_ground_m is not None and b.height_above_ground_m is not None:
        height = a.height_above_ground_m + fraction * (b.height_above_ground_m - a.height_above_ground_m)
    velocity = None
    if a.velocity_m_s is not None and b.velocity_m_s is not None:
        velocity = a.velocity_m_s + fraction * (b.velocity_m_s - a.velocity_m_s)
    return TimedPose(t, interpolate(a.world_from_body, b.world_from_body, fraction), height, velocity)


class PoseBuffer:
    """The newest ``capacity`` poses of one drone, strictly increasing in time.

    :meth:`add` refuses (``ProtocolError`` ``invalid_pose``) a pose that is not
    finite, has a quaternion off unit length beyond the tolerance, is not newer
    than the newest pose, or lies more than ``max_future_s`` after the
    ``reference_s`` the caller gives (its newest frame time); nothing is stored then.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
        max_future_s: float = DEFAULT_MAX_FUTURE_S,
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, got {capacity}")
        if not (math.isfinite(max_gap_s) and max_gap_s >= 0):
            raise ValueError(f"max_gap_s must be finite and ≥ 0, got {max_gap_s}")
        if not (max_future_s > 0):
            raise ValueError(f"max_future_s must be positive, got {max_future_s}")
        self.max_gap_s = max_gap_s
        self.max_future_s = max_future_s
        self._times: deque[float] = deque(maxlen=capacity)
        self._poses: deque[TimedPose] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._poses)

    @property
    def newest(self) -> TimedPose | None:
        return self._poses[-1] if self._poses else None

    def clear(self) -> None:
        self._times.clear()
        self._poses.clear()

    def add(self, pose: TimedPose, reference_s: float | None = None) -> TimedPose:
        """Store ``pose`` (quaternion normalised) and return it as stored."""
        sample = _checked(pose)
        if self._times and sample.time_s <= self._times[-1]:
            verb = "repeats" if sample.time_s == self._times[-1] else "goes backwards from"
            raise ProtocolError(
                INVALID_POSE, f"pose time {sample.time_s:.6f} s {verb} the newest pose at {self._times[-1]:.6f} s"
            )
        if reference_s is not None and sample.time_s > reference_s + self.max_future_s:
            raise ProtocolError(
                INVALID_POSE,
                f"pose time {sample.time_s:.6f} s is more than {self.max_future_s} s after "
                f"the newest frame at {reference_s:.6f} s",
            )
        self._times.append(sample.time_s)
        self._poses.append(sample)
        return sample

    def lookup(self, t: float) -> PoseMatch:
        """The pose at ``t`` by the rules of the module doc."""
        if not self._poses:
            return PoseMatch("empty")
        i = bisect.bisect_left(self._times, t)
        if i < len(self._times) and self._times[i] == t:
            return PoseMatch("exact", self._poses[i], 0.0)
        gap = self.max_gap_s
        if 0 < i < len(self._times):
            a, b = self._poses[i - 1], self._poses[i]
            nearest = min(t - a.time_s, b.time_s - t)
            if t - a.time_s > gap or b.time_s - t > gap:
                return PoseMatch("gap", None, nearest)
            return PoseMatch("interpolated", _blend(a, b, t), nearest)
        ahead = i == len(self._times)
        end = self._poses[-1] if ahead else self._poses[0]
        nearest = abs(t - end.time_s)
        status: MatchStatus = "ahead" if ahead else "behind"
        if len(self._poses) < 2 or nearest > gap:
            return PoseMatch(status, None, nearest)
        a, b = (self._poses[-2], self._poses[-1]) if ahead else (self._poses[0], self._poses[1])
        if b.time_s - a.time_s > gap:
            return PoseMatch(status, None, nearest)
        return PoseMatch("extrapolated", _blend(a, b, t), nearest)
