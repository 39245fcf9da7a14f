"""The world map's 360° profile reaches the autopilot unchanged: ``surround()`` → ``obstacles`` on the wire →
the drone's ``OBSTACLE_DISTANCE`` over a real pymavlink link on 127.0.0.1, decoded by an independent listener."""

from __future__ import annotations

import time
from typing import Any

import mavlink_fixtures
import numpy as np
import pytest
from map_fixtures import SETTINGS, CountingRegistry, fuse
from test_fusion import FLIGHT_A, FLIGHT_B, _pose

from dronedepth import protocol
from dronedepth.drone.mavlink import UNKNOWN_CM, MavlinkLink, mavutil
from dronedepth.gateway.mapping import MapService
from dronedepth.gateway.obstacles import (
    SOURCE_CAMERA,
    SOURCE_MAP,
    SOURCE_NONE,
    ObstacleConfig,
    ObstacleProfile,
    SectorLayout,
)
from dronedepth.pose_buffer import TimedPose
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, ObstaclesMessage

listener = mavlink_fixtures.listener


@pytest.fixture
def merged_profile() -> ObstacleProfile:
    """Drone B's camera profile (15 forward sectors, two of them free) completed to 360° from a fused map."""
    service = MapService(SETTINGS)
    service.registry = registry = CountingRegistry(SETTINGS.fusion)
    service.start()
    try:
        fuse(service, registry, "a", FLIGHT_A)
        fuse(service, registry, "b", FLIGHT_B)
    finally:
        service.close(timeout=5.0)
    distances = np.full(15, 6.0, np.float32)
    distances[3:5] = OBSTACLE_FREE
    camera = ObstacleProfile(SectorLayout(5.0, -35.0, 15), distances, 0.3, 15.0, gravity_aligned=True)
    return service.surround("b", camera, TimedPose(0.0, _pose(0.0, -3.0, -90.0)), "map", ObstacleConfig(15.0))


def _expected_cm(profile: ObstacleProfile) -> list[int]:
    """OBSTACLE_DISTANCE's distances written out by hand: cm, free = max + 1, no data = UINT16_MAX."""
    max_cm = round(profile.max_range_m * 100)
    expected = []
    for distance in profile.distances_m.tolist():
        if distance == OBSTACLE_NO_DATA:
            expected.append(65535)
        elif distance == OBSTACLE_FREE:
            expected.append(max_cm + 1)
        else:
            expected.append(round(round(distance, 3) * 100))  # the wire carries 3 decimals
    return expected


def test_a_72_sector_map_profile_goes_through_obstacle_distance_unchanged(
    merged_profile: ObstacleProfile, listener: tuple[Any, int]
) -> None:
    profile = merged_profile
    assert profile.layout == SectorLayout(5.0, 0.0, 72) and profile.sources is not None
    sources = set(profile.sources.tolist())
    assert sources == {SOURCE_CAMERA, SOURCE_MAP, SOURCE_NONE}, "the test needs camera, map and empty sectors"

    # Gateway → drone over the data channel's JSON, then the drone's MAVLink sender.
    wire = protocol.decode(protocol.encode(profile.to_message(pts=9000, stamp=time.time())))
    assert isinstance(wire, ObstaclesMessage) and wire.sources == profile.source_names
    autopilot, port = listener
    link = MavlinkLink(f"udpout:127.0.0.1:{port}", rate_hz=20.0, max_age_s=5.0)
    link.start()
    try:
        msg = None
        deadline = time.monotonic() + 10.0
        while msg is None:
            assert time.monotonic() < deadline, "no OBSTACLE_DISTANCE within 10 s"
            link.publish(wire, time.monotonic())
            msg = autopilot.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=0.2)
    finally:
        link.close()

    # One MAVLink sector per profile sector: no merging, no shift, sector 0 straight ahead.
    assert msg.frame == mavutil.mavlink.MAV_FRAME_BODY_FRD
    assert msg.increment_f == pytest.approx(5.0) and msg.increment == 5
    assert msg.angle_offset == pytest.approx(0.0)
    assert (msg.min_distance, msg.max_distance) == (30, 1500)
    received = list(msg.distances)
    assert received == _expected_cm(profile)
    from_map = profile.sources == SOURCE_MAP
    assert all(received[i] < 1500 for i in np.flatnonzero(from_map))  # map sectors are obstacles, in cm
    assert all(received[i] == UNKNOWN_CM for i in np.flatnonzero(profile.sources == SOURCE_NONE))
    assert received[-7 + 3 : -7 + 5] == [1501, 1501]  # the camera's free sectors (azimuths -20°, -15°)
