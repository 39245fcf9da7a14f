"""The drone client with ``--mavlink``: profiles out as OBSTACLE_DISTANCE, poses in, a link that drops.

Real WebRTC against the stand-in gateway (tests/drone_fixtures.py) and real
pymavlink peers on 127.0.0.1 acting as the autopilot: an independent decoder
of what the client sends, and a sender of ATTITUDE + LOCAL_POSITION_NED +
DISTANCE_SENSOR. Waits are bounded and wait on conditions, not fixed sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from drone_fixtures import FakeGateway, drone_config, free_port, wait_until
from mavlink_fixtures import HOVER_HEIGHT_M, PROFILE, Autopilot, free_udp_port

from dronedepth.drone.client import DroneClient, DroneConfig
from dronedepth.drone.mavlink import mavutil, obstacle_distance_fields

WAIT_S = 60.0
MAX_AGE_S = 0.5


def config(gw: FakeGateway, **overrides: Any) -> DroneConfig:
    """A small synthetic stream whose obstacle profiles go stale after :data:`MAX_AGE_S`."""
    return drone_config(gw, width=160, height=120, obstacle_max_age=MAX_AGE_S, **overrides)


@pytest.fixture
def udp_autopilot() -> Iterator[tuple[Autopilot, int]]:
    port = free_udp_port()
    autopilot = Autopilot(f"udpin:127.0.0.1:{port}")
    yield autopilot, port
    autopilot.close()


async def test_profiles_reach_the_autopilot_at_20_hz_and_stop_once_stale(udp_autopilot):
    autopilot, port = udp_autopilot
    captures: list[float] = []
    async with FakeGateway() as gateway:
        gateway.profile = PROFILE
        client = DroneClient(
            config(gateway, mavlink=f"udpout:127.0.0.1:{port}"),
            on_obstacles=lambda message, captured, waypoints: captured is not None and captures.append(captured),
        )
        task = asyncio.ensure_future(client.run())
        try:
            await wait_until(
                lambda: len(autopilot.obstacles) >= 2 and autopilot.obstacles[-1][0] - autopilot.obstacles[0][0] >= 2,
                "2 s of OBSTACLE_DISTANCE",
            )
            streaming = list(autopilot.obstacles)
            assert client.summary().nearest_obstacle is not None  # the live status line's nearest obstacle
            assert "nearest obstacle 0.3 m @ -5°" in client.summary().line()

            gateway.profile = None  # the gateway stops sending profiles; keypoints go on
            profiles_before = len(captures)
            results = client.summary().results
            await wait_until(lambda: client.summary().results >= results + 15, "1.5 s more of keypoints")
            last_capture = max(captures)
            assert len(captures) <= profiles_before + 1, "no profile after the gateway stopped sending them"
            assert client.summary().nearest_obstacle is None and "no current profile" in client.summary().line()
        finally:
            client.stop()
            summary = await asyncio.wait_for(task, WAIT_S)
    assert summary.obstacle_profiles >= 1

    window = streaming[-1][0] - streaming[0][0]
    rate = (len(streaming) - 1) / window
    print(f"\nOBSTACLE_DISTANCE received at {rate:.1f} Hz over {window:.1f} s")
    assert rate >= 10.0, f"{rate:.1f} Hz"
    msg = streaming[-1][1]
    fields = obstacle_distance_fields(PROFILE)
    assert list(msg.distances) == list(fields.distances_cm)
    assert msg.frame == mavutil.mavlink.MAV_FRAME_BODY_FRD
    assert msg.increment_f == pytest.approx(5.0) and msg.angle_offset == pytest.approx(-30.0)
    assert (msg.min_distance, msg.max_distance) == (30, 2000)
    # Nothing after the newest profile's frame turned max_age old (the link checks at send time; + transit).
    last_arrival = autopilot.obstacles[-1][0]
    assert last_arrival <= last_capture + MAX_AGE_S + 0.5, f"sent {last_arrival - last_capture:.2f} s after capture"


async def test_pose_mavlink_sends_the_autopilots_poses_in_enu_flu_stamped_on_the_video_clock():
    port = free_udp_port()
    async with FakeGateway() as gateway:
        client = DroneClient(config(gateway, mavlink=f"udpin:127.0.0.1:{port}", pose="mavlink"))
        task = asyncio.ensure_future(client.run())
        autopilot = None
        try:
            await wait_until(lambda: client.mavlink is not None and client.mavlink.connected, "the link")
            autopilot = Autopilot(f"udpout:127.0.0.1:{port}", fly=True)
            await wait_until(lambda: len(gateway.received_pts[0]) >= 12 if gateway.received_pts else False, "frames")
            await wait_until(lambda: len(gateway.poses) >= 12, "poses")
        finally:
            client.stop()
            await asyncio.wait_for(task, WAIT_S)
            if autopilot is not None:
                autopilot.close()

    stamps = [pose.pts for pose in gateway.poses]
    assert stamps == sorted(set(stamps)), "pose pts strictly increase"
    frames = gateway.received_pts[0]
    # Every frame after the autopilot started has a pose within 0.1 s on the video clock: the autopilot's
    # time_boot_ms mapped onto the capture clock, then onto pts like the frames.
    covered = [pts for pts in frames if pts >= stamps[0]]
    assert len(covered) >= 5
    assert all(min(abs(pts - stamp) for stamp in stamps) <= 9000 for pts in covered[:-1])
    pose = gateway.poses[-1]
    assert pose.convention == "enu_flu" and pose.frame_id == "odom"
    assert pose.position == pytest.approx((20.0, 10.0, 5.0))  # NED (10, 20, -5) → ENU
    tilt = math.cos(math.radians(10)) * math.cos(math.radians(5))
    assert pose.height_above_ground == pytest.approx(HOVER_HEIGHT_M * tilt)


async def test_a_link_that_drops_mid_run_is_logged_once_and_the_video_goes_on(caplog):
    port = free_port()
    server = mavutil.mavlink_connection(f"tcpin:127.0.0.1:{port}", source_system=1, source_component=1)
    async with FakeGateway() as gateway:
        gateway.profile = PROFILE
        client = DroneClient(config(gateway, mavlink=f"tcp:127.0.0.1:{port}"))
        task = asyncio.ensure_future(client.run())
        try:
            with caplog.at_level(logging.WARNING, logger="dronedepth.drone.mavlink"):
                heard = await asyncio.to_thread(server.recv_match, type="OBSTACLE_DISTANCE", blocking=True, timeout=30)
                assert heard is not None, "the autopilot heard the profiles before the drop"
                server.close()
                results = client.summary().results
                # Two seconds of video: several reconnection attempts (0.25, 0.5, 1 s apart) all refused.
                await wait_until(lambda: client.summary().results >= results + 20, "video after the drop")
                assert client.mavlink is not None and not client.mavlink.connected
        finally:
            client.stop()
            summary = await asyncio.wait_for(task, WAIT_S)
    assert summary.state == "stopped" and summary.reconnects == 0, "the gateway session never noticed"
    warnings = [r.getMessage() for r in caplog.records if r.name == "dronedepth.drone.mavlink"]
    assert any("closed by the other end" in w for w in warnings), warnings
    assert len(warnings) == len(set(warnings)), f"a reason logged more than once: {warnings}"
    assert len(warnings) <= 2, warnings  # the drop, then the refused reconnections
