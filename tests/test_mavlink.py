"""MAVLink both ways over real pymavlink links on 127.0.0.1: OBSTACLE_DISTANCE out, poses in."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import mavlink_fixtures
import numpy as np
import pytest
from drone_fixtures import free_port
from mavlink_fixtures import PROFILE, free_udp_port, send_hover

from dronedepth.drone.mavlink import UNKNOWN_CM, ClockOffset, MavlinkLink, mavutil, obstacle_distance_fields
from dronedepth.frames import matrix_from_quaternion
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, ObstaclesMessage

listener = mavlink_fixtures.listener


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_fields_pad_to_72_with_unknown_and_encode_free_and_no_data() -> None:
    fields = obstacle_distance_fields(PROFILE)
    assert len(fields.distances_cm) == 72
    assert fields.distances_cm[:13] == (620, 500, 304, 2001, UNKNOWN_CM, 30, 2000, 750, 700, 650, 600, 550, 500)
    assert set(fields.distances_cm[13:]) == {UNKNOWN_CM}
    assert (fields.increment_deg, fields.angle_offset_deg) == (5.0, -30.0)
    assert (fields.min_distance_cm, fields.max_distance_cm) == (30, 2000)


def test_more_than_72_sectors_merge_conservatively() -> None:
    distances = [10.0] * 144
    distances[0], distances[1] = 4.0, OBSTACLE_FREE  # obstacle wins over free
    distances[2], distances[3] = OBSTACLE_NO_DATA, OBSTACLE_FREE  # unknown never becomes free
    distances[4], distances[5] = OBSTACLE_FREE, OBSTACLE_FREE
    distances[6], distances[7] = OBSTACLE_NO_DATA, 2.5  # an obstacle is an obstacle
    message = ObstaclesMessage(
        pts=0,
        stamp=0.0,
        gravity_aligned=True,
        sector_width_deg=2.5,
        angle_offset_deg=-180.0,
        min_range_m=0.2,
        max_range_m=30.0,
        distances_m=tuple(distances),
    )
    fields = obstacle_distance_fields(message)
    assert fields.distances_cm[:5] == (400, UNKNOWN_CM, 3001, 250, 1000)
    assert fields.increment_deg == 5.0
    assert fields.angle_offset_deg == -178.75  # the middle of the first merged pair


def test_clock_offset_takes_the_minimum_and_restarts_after_a_reboot() -> None:
    clock = ClockOffset(window_s=10.0)
    for remote, delay in [(1.0, 0.004), (1.1, 0.001), (1.2, 0.030)]:
        clock.observe(remote, 100.0 + remote + delay)
    assert clock.offset == pytest.approx(100.001)
    clock.observe(0.5, 120.0)  # remote time went back: reboot
    assert clock.offset == pytest.approx(119.5)


def test_obstacle_distance_reaches_an_independent_listener(listener: tuple[Any, int]) -> None:
    autopilot, port = listener
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", rate_hz=20.0, max_age_s=0.5)
    link.start()
    try:
        # A fresh profile, refreshed as a live stream would, for as long as the listener counts.
        received: list[tuple[float, Any]] = []
        deadline = time.monotonic() + 10.0
        while len(received) < 1 or received[-1][0] - received[0][0] < 1.5:
            link.publish(PROFILE, time.monotonic())
            msg = autopilot.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=0.1)
            if msg is not None:
                received.append((time.monotonic(), msg))
            assert time.monotonic() < deadline
        window = received[-1][0] - received[0][0]
        rate = (len(received) - 1) / window
        assert rate >= 10.0, f"{rate:.1f} Hz"

        msg = received[-1][1]
        fields = obstacle_distance_fields(PROFILE)
        assert list(msg.distances) == list(fields.distances_cm)
        assert msg.frame == mavutil.mavlink.MAV_FRAME_BODY_FRD
        assert msg.increment_f == pytest.approx(5.0) and msg.increment == 5
        assert msg.angle_offset == pytest.approx(-30.0)
        assert (msg.min_distance, msg.max_distance) == (30, 2000)
        assert msg.get_srcComponent() == mavutil.mavlink.MAV_COMP_ID_ONBOARD_COMPUTER

        # Stop refreshing: sending stops once the last frame is max_age_s old.
        last_capture = time.monotonic()
        link.publish(PROFILE, last_capture)
        last_arrival = last_capture
        while (msg := autopilot.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=1.0)) is not None:
            last_arrival = time.monotonic()
            assert last_arrival - last_capture < 0.5 + 0.5, "still sending a stale profile"
        sent = link.sent_count
        assert autopilot.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=0.5) is None
        assert link.sent_count == sent
    finally:
        link.close()


def _send_flight(autopilot: Any, boot: float, count: int) -> list[float]:
    """:func:`~mavlink_fixtures.send_hover` moving north at 1 m/s, ``count`` times at ~50 Hz; returns each true
    local time.

    The autopilot's clock is ``time.monotonic() - boot``: the true local instant
    of a remote stamp ``ms`` is ``boot + ms / 1000``.
    """
    truths = []
    for _ in range(count):
        ms = int((time.monotonic() - boot) * 1000)
        truths.append(boot + ms / 1000)
        send_hover(autopilot, ms, north_m_s=1.0)
        time.sleep(0.02)
    return truths


def test_poses_come_out_in_enu_flu_with_mapped_timestamps() -> None:
    port = free_udp_port()
    link = MavlinkLink(f"udpin:127.0.0.1:{port}", max_pose_rate_hz=1000.0)
    link.start()
    autopilot = mavutil.mavlink_connection(f"udpout:127.0.0.1:{port}", source_system=1, source_component=1)
    try:
        assert link.wait_connected(10.0)
        boot = time.monotonic() - 1234.5  # the autopilot booted long before
        truths = _send_flight(autopilot, boot, 60)
        poses: list[Any] = []
        _wait_for(lambda: poses.extend(link.poses_for_frame(0, time.monotonic())) or len(poses) >= 60)
    finally:
        autopilot.close()
        link.close()

    errors_ms = [(pose.capture_time - truth) * 1000 for pose, truth in zip(poses, truths, strict=True)]
    print(
        f"\ntimestamp mapping error on localhost: median {statistics.median(errors_ms):.3f} ms, "
        f"max {max(errors_ms):.3f} ms, min {min(errors_ms):.3f} ms over {len(errors_ms)} poses"
    )
    assert min(errors_ms) >= -0.001  # the minimum of (receive − remote) never maps a message before it was sent
    assert max(errors_ms) < 20.0  # localhost: the one-way delay plus 1 ms of time_boot_ms truncation

    pose = poses[-1]
    assert pose.convention == "enu_flu"
    # NED (10, 20, -5) moving north at 1 m/s → ENU (20, 10, 5); the attitude's instant equals the position's here.
    np.testing.assert_allclose(pose.world_from_body.translation, [20.0, 10.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(pose.velocity_m_s, [0.0, 1.0, 0.0])
    rotation = matrix_from_quaternion(pose.world_from_body.rotation)
    forward_enu = rotation @ [1.0, 0.0, 0.0]  # FLU x
    # Yaw 30° clockwise from north: the nose points north-north-east, pitched 5° up (MAVLink pitch −5° is down).
    heading = math.degrees(math.atan2(forward_enu[0], forward_enu[1]))  # clockwise from north
    assert heading == pytest.approx(30.0, abs=1e-6)
    assert math.degrees(math.asin(forward_enu[2])) == pytest.approx(-5.0, abs=1e-6)  # nose up is positive z
    left_enu = rotation @ [0.0, 1.0, 0.0]
    # Roll right: the left wing rises by asin(sin(roll) cos(pitch)).
    assert left_enu[2] == pytest.approx(math.sin(math.radians(10)) * math.cos(math.radians(5)), abs=1e-6)
    # 5.20 m along the tilted body's down axis.
    assert pose.height_above_ground_m == pytest.approx(5.2 * math.cos(math.radians(10)) * math.cos(math.radians(5)))


def test_a_link_that_is_down_reconnects_and_the_rest_goes_on() -> None:
    port = free_port()
    link = MavlinkLink(f"tcp:127.0.0.1:{port}", reconnect_max_delay_s=0.5)
    link.start()
    server = None
    try:
        _wait_for(lambda: link.last_error is not None)
        assert "Connection refused" in link.last_error or "refused" in link.last_error.lower()
        link.publish(PROFILE, time.monotonic())  # accepted while down
        server = mavutil.mavlink_connection(f"tcpin:127.0.0.1:{port}", source_system=1, source_component=1)
        assert link.wait_connected(10.0)
        deadline = time.monotonic() + 10.0
        msg = None
        while msg is None and time.monotonic() < deadline:
            link.publish(PROFILE, time.monotonic())
            msg = server.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=0.2)
        assert msg is not None
        assert link.last_error is None
    finally:
        link.close()
        if server is not None:
            server.close()
