"""Waypoints from hand-made obstacle profiles: nearest obstacles, free directions, no-data sectors, frames."""

from __future__ import annotations

import json
import math

import pytest

from dronedepth.drone.waypoints import nearest_obstacle, plan_waypoints
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, ObstaclesMessage, decode, encode

FREE, NO_DATA = OBSTACLE_FREE, OBSTACLE_NO_DATA


def profile(distances: tuple[float, ...], *, aligned: bool = True, width: float = 10.0) -> ObstaclesMessage:
    """Sectors ``width`` wide centred on 0°, ±width, ... (body FRD: positive to the right)."""
    return ObstaclesMessage(
        pts=900,
        stamp=1_764_000_000.0,
        gravity_aligned=aligned,
        sector_width_deg=width,
        angle_offset_deg=-width * (len(distances) // 2),
        min_range_m=0.3,
        max_range_m=20.0,
        distances_m=distances,
    )


def test_nearest_obstacles_first_with_their_sector_azimuths():
    wp = plan_waypoints(profile((8.0, 3.0, 12.0, 1.5, 6.0)), max_obstacles=2)
    assert [(o.azimuth_deg, o.distance_m) for o in wp.obstacles] == [(10.0, 1.5), (-10.0, 3.0)]
    assert nearest_obstacle(profile((8.0, 3.0, 12.0, 1.5, 6.0))) == wp.obstacles[0]


def test_seen_free_sectors_rank_first_then_the_most_room():
    wp = plan_waypoints(profile((8.0, FREE, 12.0, 1.5, 6.0)), max_free=3, clearance_m=2.0)
    assert [(f.azimuth_deg, f.free_distance_m, f.beyond_max_range) for f in wp.free] == [
        (-10.0, 20.0, True),
        (0.0, 12.0, False),
        (-20.0, 8.0, False),
    ]
    ahead = wp.free[1]
    assert ahead.direction == (1.0, 0.0, 0.0) and ahead.waypoint == (10.0, 0.0, 0.0)


def test_an_frd_azimuth_to_the_right_is_negative_y_in_flu():
    """30° clockwise seen from above (to the right) is x forward, y **negative** (FLU: y points left)."""
    wp = plan_waypoints(profile((NO_DATA, NO_DATA, NO_DATA, 11.0, NO_DATA), width=30.0), clearance_m=1.0)
    (right,) = wp.free
    assert right.azimuth_deg == 30.0
    x, y, z = right.direction
    assert x == pytest.approx(math.cos(math.radians(30)), abs=1e-4) and y == pytest.approx(-0.5, abs=1e-4) and z == 0
    assert right.waypoint == pytest.approx((10 * math.cos(math.radians(30)), -5.0, 0.0), abs=1e-3)


def test_no_data_sectors_are_never_free_nor_obstacles():
    wp = plan_waypoints(profile((NO_DATA, NO_DATA, 5.0, NO_DATA, NO_DATA)), max_free=5, max_obstacles=5)
    assert [f.azimuth_deg for f in wp.free] == [0.0]
    assert [o.azimuth_deg for o in wp.obstacles] == [0.0]
    assert wp.no_data_sectors == 4 and wp.sectors == 5
    unseen = plan_waypoints(profile((NO_DATA,) * 5))
    assert unseen.free == () and unseen.obstacles == () and nearest_obstacle(profile((NO_DATA,) * 5)) is None
    assert "free none" in unseen.describe() and "no data 5/5" in unseen.describe()


def test_no_room_beyond_the_clearance_is_not_a_free_direction():
    wp = plan_waypoints(profile((0.8, 1.0, 1.2)), clearance_m=1.0)
    assert [(f.azimuth_deg, f.free_distance_m) for f in wp.free] == [(10.0, 1.2)]
    # 0.2 m ahead along the sector's centre, rounded to mm.
    assert wp.free[0].waypoint == pytest.approx(
        (0.2 * math.cos(math.radians(10)), -0.2 * math.sin(math.radians(10)), 0.0), abs=1e-3
    )


@pytest.mark.parametrize("aligned", [True, False])
def test_gravity_alignment_is_carried_and_said(aligned):
    wp = plan_waypoints(profile((4.0, FREE, 6.0), aligned=aligned))
    payload = json.loads(json.dumps(wp.to_dict()))
    assert payload["gravity_aligned"] is aligned and payload["frame"] == "base_link_level"
    assert payload["azimuth_frame"] == "body_frd" and payload["units"] == "m" and payload["pts"] == 900
    assert ("not gravity-aligned" in wp.describe()) is not aligned


def test_azimuths_wrap_into_plus_minus_180():
    wide = ObstaclesMessage(
        pts=0,
        stamp=0.0,
        gravity_aligned=True,
        sector_width_deg=90.0,
        angle_offset_deg=90.0,
        min_range_m=0.3,
        max_range_m=20.0,
        distances_m=(5.0, 6.0, 7.0),
    )
    assert sorted(o.azimuth_deg for o in plan_waypoints(wide).obstacles) == [-180.0, -90.0, 90.0]


def test_the_plan_of_a_received_message_equals_the_plan_of_the_sent_one():
    sent = profile((4.0, FREE, 2.345, NO_DATA, 9.0))
    received = decode(encode(sent), accept=(ObstaclesMessage.type,))
    assert isinstance(received, ObstaclesMessage)
    assert plan_waypoints(received).to_dict() == plan_waypoints(sent).to_dict()
    line = plan_waypoints(sent).describe()
    assert "\n" not in line and line.startswith("obstacles 2.3m@+0° 4.0m@-20°") and "free >20.0m@-10°" in line


@pytest.mark.parametrize("kwargs", [{"max_free": -1}, {"max_obstacles": -1}, {"clearance_m": -1.0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        plan_waypoints(profile((1.0,)), **kwargs)


def test_the_message_names_its_nearest_sector_and_wraps_sector_azimuths():
    """Azimuths past 180° wrap into [-180, 180); the first of equal ranges wins; free and no data never do."""
    message = profile((FREE, 7.0, 2.0, NO_DATA, 2.0), width=90.0)  # centres -180, -90, 0, 90, 180
    assert message.sector_azimuths_deg().tolist() == [-180.0, -90.0, 0.0, 90.0, -180.0]
    assert message.nearest_sector() == 2
    assert profile((FREE, NO_DATA, FREE)).nearest_sector() is None
