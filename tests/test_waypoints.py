"""Waypoints from sparse 3D keypoints: sectors, nearest obstacles, free directions, units."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dronedepth.drone.waypoints import horizontal_fov_deg, plan_waypoints

from dronedepth.axes import AXES
from dronedepth.protocol import CameraMessage, KeypointsMessage, decode, encode


def _at(azimuth_deg: float, distance: float, y: float = 0.0) -> list[float]:
    a = math.radians(azimuth_deg)
    return [distance * math.sin(a), y, distance * math.cos(a)]


def test_nearest_obstacles_and_free_directions_per_sector():
    points = np.array(
        [
            _at(-40, 8.0),
            _at(-40, 3.0),  # nearest of the left sector
            _at(0, 12.0),
            _at(2, 20.0),
            _at(40, 1.5),  # nearest overall
            _at(40, 6.0),
        ]
    )
    wp = plan_waypoints(points, "metric", hfov_deg=90, sectors=3, max_obstacles=2, max_free=1, clearance_m=2.0)
    assert wp.units == "m" and wp.points_used == 6
    assert [o.azimuth_deg for o in wp.obstacles] == [30.0, -30.0]
    assert [o.distance for o in wp.obstacles] == pytest.approx([1.5, 3.0])
    np.testing.assert_allclose(wp.obstacles[0].point, _at(40, 1.5), atol=1e-3)
    (free,) = wp.free
    assert free.azimuth_deg == 0.0 and free.free_distance == pytest.approx(12.0)
    assert free.direction == (0.0, 0.0, 1.0)
    assert free.waypoint == pytest.approx((0.0, 0.0, 10.0))


def test_free_direction_is_a_unit_vector_in_the_horizontal_plane():
    points = np.array([_at(-30, 5.0), _at(25, 9.0)])
    wp = plan_waypoints(points, "metric", hfov_deg=90, sectors=6)
    best = wp.free[0]
    assert best.free_distance == pytest.approx(9.0)
    x, y, z = best.direction
    assert y == 0.0 and math.hypot(x, z) == pytest.approx(1.0, abs=1e-3)
    assert math.degrees(math.atan2(x, z)) == pytest.approx(best.azimuth_deg, abs=0.1)
    assert 15.0 <= best.azimuth_deg <= 30.0  # centre of the sector holding 25°


def test_points_off_the_flight_level_behind_or_invalid_are_ignored():
    points = np.array(
        [
            [0.0, 5.0, 4.0],  # far below (ground): elevation about -51°
            [0.0, -5.0, 4.0],  # far above
            [0.0, 0.0, -3.0],  # behind the camera
            [np.nan, 0.0, 2.0],
            [0.5, 0.2, 7.0],  # the only usable one
        ]
    )
    wp = plan_waypoints(points, "metric", elevation_band_deg=20)
    assert wp.points_used == 1
    assert wp.obstacles[0].point == pytest.approx((0.5, 0.2, 7.0))


def test_relative_depth_is_ordinal_only_without_metric_waypoints():
    points = np.array([_at(-30, 0.2), _at(30, 0.9)])
    wp = plan_waypoints(points, "relative", hfov_deg=90, sectors=2)
    assert wp.units == "relative"
    assert wp.obstacles[0].azimuth_deg < 0 < wp.free[0].azimuth_deg
    assert all(f.waypoint is None for f in wp.free)
    assert "relative depth: ordinal only" in wp.describe()
    assert wp.to_dict()["units"] == "relative"


def test_no_room_means_no_waypoint():
    wp = plan_waypoints(np.array([_at(0, 0.8)]), "metric", clearance_m=1.0)
    assert wp.free[0].waypoint is None


def test_empty_input_gives_empty_lists():
    wp = plan_waypoints(np.zeros((0, 3), np.float32), "metric")
    assert wp.obstacles == () and wp.free == () and wp.points_used == 0
    assert wp.describe() == "obstacles none | free none"


def test_points_outside_the_field_of_view_go_to_the_edge_sectors():
    wp = plan_waypoints(np.array([_at(80, 4.0), _at(-80, 6.0)]), "metric", hfov_deg=60, sectors=3)
    assert sorted(o.azimuth_deg for o in wp.obstacles) == [-20.0, 20.0]


def test_to_dict_is_json_ready_and_describe_is_one_line():
    import json

    wp = plan_waypoints(np.array([_at(-10, 2.0), _at(20, 9.0)], np.float32), "metric")
    payload = json.loads(json.dumps(wp.to_dict()))
    assert payload["frame"] == "camera_optical" and payload["units"] == "m"
    assert payload["obstacles"][0]["distance"] == pytest.approx(2.0, abs=1e-3)
    line = wp.describe()
    assert "\n" not in line and line.startswith("obstacles 2.0m@")


def test_horizontal_fov_of_a_camera():
    camera = CameraMessage(width=640, height=480, fx=320.0, fy=320.0, cx=319.5, cy=239.5)
    assert horizontal_fov_deg(camera) == pytest.approx(90.0)


@pytest.mark.parametrize("kwargs", [{"sectors": 0}, {"hfov_deg": 0}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        plan_waypoints(np.zeros((1, 3)), "metric", **kwargs)


@pytest.mark.parametrize("axes", AXES)
def test_the_drone_plans_the_same_waypoints_whatever_the_gateways_axes(axes):
    """Keypoints go through the wire as the drone receives them: encoded in ``axes``, decoded back."""
    optical = np.array([_at(-40, 3.0), _at(0, 12.0, y=0.5), _at(40, 1.5), _at(10, 7.0, y=-0.3)], np.float32)
    sent = KeypointsMessage(
        pts=0,
        points=optical,
        pixels=np.zeros((len(optical), 2), np.float32),
        scores=np.ones(len(optical), np.float32),
        depth_kind="metric",
        width=64,
        height=48,
        axes=axes,
    )
    received = decode(encode(sent), accept=(KeypointsMessage.type,))
    assert isinstance(received, KeypointsMessage)
    on_the_wire = np.round(optical.astype(np.float64), 4).astype(np.float32)  # the message precision
    reference = plan_waypoints(on_the_wire, "metric", hfov_deg=90, sectors=3)
    planned = plan_waypoints(received.points, received.depth_kind, hfov_deg=90, sectors=3)
    assert reference.obstacles and reference.free, "the reference sees obstacles and free space"
    assert planned.to_dict() == reference.to_dict()
