"""Candidate waypoints from one frame's obstacle profile (the gateway's ``obstacles`` message): pure, no I/O.

Input. An :class:`~dronedepth.protocol.ObstaclesMessage`: the nearest
obstacle per azimuth sector, from the frame's dense metric depth. Sector
azimuths follow ``MAV_FRAME_BODY_FRD`` (0° = the body's forward direction,
positive **clockwise seen from above**, to the right); ranges are horizontal
metres from the body origin. When ``gravity_aligned`` the plane is the
horizontal one (roll and pitch removed, heading kept); otherwise the gateway
took the body as level and a tilted drone's ranges are off: the plan says so.
Only metric depth gives a profile, so every distance here is in metres.

Output frame. Directions and waypoints are in ``base_link_level``: the body's
heading with REP-103 FLU axes (x forward, y left, z up) in the profile's
plane. The FRD azimuth ``a`` becomes the unit vector ``(cos a, −sin a, 0)``
here, once.

Method.

- **Obstacles**: the sectors with a measured range, nearest first, with their
  range.
- **Free directions**: the sectors with the most room, most first, where the
  room exceeds ``clearance_m``: a sector seen free up to ``max_range_m``
  counts as ``max_range_m`` of room (``beyond_max_range``) and ranks before
  any measured range; then measured ranges, farthest first. Its waypoint is
  ``direction × (room − clearance_m)``.
- A sector with **no data** was not seen: unknown, never listed as free (nor
  as an obstacle). Directions outside the profile's sectors are unknown too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, ObstaclesMessage

__all__ = ["FreeDirection", "Obstacle", "Waypoints", "nearest_obstacle", "plan_waypoints"]

FRAME: Final = "base_link_level"
Vector = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Obstacle:
    """The nearest obstacle of one sector."""

    azimuth_deg: float
    """Centre of the sector, ``MAV_FRAME_BODY_FRD``: 0 straight ahead, positive to the right."""
    distance_m: float
    """Horizontal range from the body origin, metres."""


@dataclass(frozen=True, slots=True)
class FreeDirection:
    """A sector with room to fly into."""

    azimuth_deg: float
    """Centre of the sector, ``MAV_FRAME_BODY_FRD``: 0 straight ahead, positive to the right."""
    direction: Vector
    """Unit vector in ``base_link_level`` (FLU axes): ``(cos a, −sin a, 0)``."""
    free_distance_m: float
    """The room in that direction, metres: the sector's nearest range, or ``max_range_m`` when seen free."""
    beyond_max_range: bool
    """True when the sector was seen free up to ``max_range_m`` (the room may be larger)."""
    waypoint: Vector
    """``direction × (free_distance_m − clearance_m)`` in ``base_link_level``, metres."""


@dataclass(frozen=True, slots=True)
class Waypoints:
    """One profile's obstacles and free directions (see the module doc)."""

    pts: int
    gravity_aligned: bool
    obstacles: tuple[Obstacle, ...]
    free: tuple[FreeDirection, ...]
    sectors: int
    no_data_sectors: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "pts": self.pts,
            "frame": FRAME,
            "azimuth_frame": "body_frd",
            "gravity_aligned": self.gravity_aligned,
            "units": "m",
            "sectors": self.sectors,
            "no_data_sectors": self.no_data_sectors,
            "obstacles": [{"azimuth_deg": o.azimuth_deg, "distance_m": o.distance_m} for o in self.obstacles],
            "free": [
                {
                    "azimuth_deg": f.azimuth_deg,
                    "direction": list(f.direction),
                    "free_distance_m": f.free_distance_m,
                    "beyond_max_range": f.beyond_max_range,
                    "waypoint": list(f.waypoint),
                }
                for f in self.free
            ],
        }

    def describe(self) -> str:
        """One line for a log: ``obstacles 2.1m@-10° ... | free >20.0m@+30° ... | no data 4/13``."""
        obstacles = " ".join(f"{o.distance_m:.1f}m@{o.azimuth_deg:+.0f}°" for o in self.obstacles) or "none"
        free = (
            " ".join(
                f"{'>' if f.beyond_max_range else ''}{f.free_distance_m:.1f}m@{f.azimuth_deg:+.0f}°" for f in self.free
            )
            or "none"
        )
        note = "" if self.gravity_aligned else " (not gravity-aligned: body taken as level)"
        return f"obstacles {obstacles} | free {free} | no data {self.no_data_sectors}/{self.sectors}{note}"


def _azimuths(profile: ObstaclesMessage) -> NDArray[np.float64]:
    return np.round(profile.sector_azimuths_deg(), 2)


def nearest_obstacle(profile: ObstaclesMessage) -> Obstacle | None:
    """The nearest measured obstacle of ``profile``; ``None`` when no sector has one."""
    i = profile.nearest_sector()
    if i is None:
        return None
    return Obstacle(float(_azimuths(profile)[i]), round(float(profile.distances_m[i]), 3))


def plan_waypoints(
    profile: ObstaclesMessage, *, max_obstacles: int = 3, max_free: int = 3, clearance_m: float = 1.0
) -> Waypoints:
    """Obstacles and free directions from one ``obstacles`` message; see the module doc."""
    if max_obstacles < 0 or max_free < 0:
        raise ValueError(f"max_obstacles and max_free must not be negative, got {max_obstacles} and {max_free}")
    if not (math.isfinite(clearance_m) and clearance_m >= 0):
        raise ValueError(f"clearance_m must be a non-negative number, got {clearance_m!r}")
    distances = np.asarray(profile.distances_m, dtype=np.float64)
    azimuths = _azimuths(profile)
    measured = np.flatnonzero(distances >= 0)
    nearest_first = measured[np.argsort(distances[measured], kind="stable")]
    obstacles = tuple(
        Obstacle(float(azimuths[i]), round(float(distances[i]), 3)) for i in nearest_first[:max_obstacles]
    )

    seen_free = distances == OBSTACLE_FREE
    room = np.where(seen_free, profile.max_range_m, distances)  # no data stays negative: never free
    candidates = np.flatnonzero(room > clearance_m)
    # Seen-free sectors first (their room is at least max_range_m), then by room, most first.
    order = candidates[np.lexsort((-room[candidates], ~seen_free[candidates]))]
    free = []
    for i in order[:max_free]:
        a = math.radians(float(azimuths[i]))
        forward, left = math.cos(a), -math.sin(a)  # FRD azimuth (clockwise) → FLU axes, once
        ahead = float(room[i]) - clearance_m
        direction = (round(forward, 4), round(left, 4), 0.0)
        waypoint = (round(forward * ahead, 3), round(left * ahead, 3), 0.0)
        free.append(
            FreeDirection(float(azimuths[i]), direction, round(float(room[i]), 3), bool(seen_free[i]), waypoint)
        )
    return Waypoints(
        pts=profile.pts,
        gravity_aligned=profile.gravity_aligned,
        obstacles=obstacles,
        free=tuple(free),
        sectors=len(distances),
        no_data_sectors=int(np.count_nonzero(distances == OBSTACLE_NO_DATA)),
    )
