"""Candidate waypoints from one frame's sparse 3D keypoints: pure numpy, no I/O.

Frame and units. Everything is in the **camera optical frame** of the frame
the keypoints came from: x right, y down, z forward (REP-103, as OpenCV).
With ``depth_kind == "metric"`` distances are metres. With ``"relative"`` the
gateway's points carry an unknown scale: distances are **unitless and only
ordinal** (nearer/farther is meaningful, their values and ratios are not) and
no metric waypoint is given.

Method. The horizontal field of view is cut into ``sectors`` equal azimuth
sectors (azimuth = ``atan2(x, z)``, 0° straight ahead, positive to the right).
Only keypoints in front of the camera (z > 0) within ``elevation_band_deg`` of
the horizontal plane through the camera (elevation = ``atan2(-y, hypot(x,
z))``) count, so the ground far below and the sky are left out. For each
sector with keypoints, its *nearest distance* is the smallest horizontal range
``hypot(x, z)`` of its keypoints.

- **Obstacles**: the sectors whose nearest keypoint is closest, nearest first,
  with that keypoint (x, y, z) and its range.
- **Free directions**: the sectors whose nearest keypoint is farthest,
  farthest first, as a unit direction in the horizontal plane ``(sin a, 0, cos
  a)`` for the sector's centre azimuth ``a`` and the *free distance* (that
  sector's nearest range). For metric depth a candidate waypoint is
  ``direction * (free_distance - clearance_m)`` when that is positive.

Keypoints are sparse: a sector with no keypoints is *unknown*, not free, and
is never listed. The planner sees one frame, so it knows nothing behind or
beside the field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dronedepth.contract import DepthKind
from dronedepth.protocol import CameraMessage

__all__ = ["FreeDirection", "Obstacle", "Waypoints", "horizontal_fov_deg", "plan_waypoints"]

Vector = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Obstacle:
    """The nearest keypoint of one sector (camera optical frame)."""

    azimuth_deg: float
    """Centre of the sector: 0 straight ahead, positive to the right."""
    point: Vector
    distance: float
    """Horizontal range ``hypot(x, z)``: metres, or unitless for relative depth."""


@dataclass(frozen=True, slots=True)
class FreeDirection:
    """A sector whose nearest keypoint is far away."""

    azimuth_deg: float
    direction: Vector
    """Unit vector ``(sin a, 0, cos a)`` in the camera optical frame."""
    free_distance: float
    """Range of the sector's nearest keypoint: metres, or unitless for relative depth."""
    waypoint: Vector | None
    """``direction * (free_distance - clearance)`` in metres; ``None`` for relative depth or no room."""


@dataclass(frozen=True, slots=True)
class Waypoints:
    """One frame's obstacles and free directions; ``units`` is ``"m"`` or ``"relative"``."""

    depth_kind: DepthKind
    obstacles: tuple[Obstacle, ...]
    free: tuple[FreeDirection, ...]
    sectors: int
    points_used: int

    @property
    def units(self) -> str:
        return "m" if self.depth_kind == "metric" else "relative"

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": "camera_optical",
            "units": self.units,
            "obstacles": [
                {"azimuth_deg": o.azimuth_deg, "point": list(o.point), "distance": o.distance} for o in self.obstacles
            ],
            "free": [
                {
                    "azimuth_deg": f.azimuth_deg,
                    "direction": list(f.direction),
                    "free_distance": f.free_distance,
                    "waypoint": None if f.waypoint is None else list(f.waypoint),
                }
                for f in self.free
            ],
        }

    def describe(self) -> str:
        """One line for a log: ``obstacles 2.1m@-10° ... | free 14.0m@+30° ...``."""
        unit = "m" if self.depth_kind == "metric" else ""
        obstacles = " ".join(f"{o.distance:.1f}{unit}@{o.azimuth_deg:+.0f}°" for o in self.obstacles) or "none"
        free = " ".join(f"{f.free_distance:.1f}{unit}@{f.azimuth_deg:+.0f}°" for f in self.free) or "none"
        note = "" if self.depth_kind == "metric" else " (relative depth: ordinal only)"
        return f"obstacles {obstacles} | free {free}{note}"


def horizontal_fov_deg(camera: CameraMessage) -> float:
    """The horizontal field of view of a pinhole camera, symmetric about the optical axis (widest side)."""
    half_width = max(camera.cx + 0.5, camera.width - camera.cx - 0.5)
    return 2.0 * math.degrees(math.atan2(half_width, camera.fx))


def _round(values: ArrayLike) -> Vector:
    x, y, z = (round(float(v), 3) for v in np.asarray(values).ravel())
    return (x, y, z)


def plan_waypoints(
    points: ArrayLike,
    depth_kind: DepthKind,
    *,
    hfov_deg: float = 90.0,
    sectors: int = 9,
    elevation_band_deg: float = 20.0,
    max_obstacles: int = 3,
    max_free: int = 3,
    clearance_m: float = 1.0,
) -> Waypoints:
    """Obstacles and free directions from ``points`` (N×3, camera optical frame); see the module doc."""
    if sectors < 1:
        raise ValueError(f"sectors must be at least 1, got {sectors}")
    if not (0.0 < hfov_deg < 360.0):
        raise ValueError(f"hfov_deg must be within (0, 360), got {hfov_deg}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    horizontal = np.hypot(x, z)
    with np.errstate(invalid="ignore"):
        elevation = np.degrees(np.arctan2(-y, horizontal))
        keep = np.isfinite(pts).all(axis=1) & (z > 0) & (np.abs(elevation) <= elevation_band_deg)
    pts, horizontal = pts[keep], horizontal[keep]
    if len(pts) == 0:
        return Waypoints(depth_kind, (), (), sectors, 0)

    half = hfov_deg / 2.0
    width = hfov_deg / sectors
    azimuth = np.degrees(np.arctan2(pts[:, 0], pts[:, 2]))
    sector = np.clip(np.floor((azimuth + half) / width).astype(np.int64), 0, sectors - 1)
    # Nearest keypoint per sector: sort by (sector, range) and take each sector's first.
    order = np.lexsort((horizontal, sector))
    occupied, first = np.unique(sector[order], return_index=True)
    nearest = order[first]
    ranges = horizontal[nearest]
    centres = -half + (occupied + 0.5) * width

    obstacles = tuple(
        Obstacle(round(float(centres[i]), 2), _round(pts[nearest[i]]), round(float(ranges[i]), 3))
        for i in np.argsort(ranges, kind="stable")[:max_obstacles]
    )
    free = []
    for i in np.argsort(-ranges, kind="stable")[:max_free]:
        a = math.radians(float(centres[i]))
        direction = np.array([math.sin(a), 0.0, math.cos(a)])
        room = float(ranges[i]) - clearance_m
        waypoint = _round(direction * room) if depth_kind == "metric" and room > 0 else None
        free.append(FreeDirection(round(float(centres[i]), 2), _round(direction), round(float(ranges[i]), 3), waypoint))
    return Waypoints(depth_kind, obstacles, tuple(free), sectors, len(pts))
