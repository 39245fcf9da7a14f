"""Shared MAVLink test helpers: pymavlink peers on 127.0.0.1 standing in for the autopilot.

- :data:`PROFILE`: a 13-sector obstacle profile with free, no-data, minimum and maximum ranges;
- :func:`free_udp_port`: a UDP port of 127.0.0.1 nothing listens on yet (TCP: ``drone_fixtures.free_port``);
- :func:`send_hover`: one sample of the hovering flight the pose tests check;
- :class:`Autopilot`: a pymavlink peer in threads recording OBSTACLE_DISTANCE, optionally flying;
- :func:`listener`: a pytest fixture, a bare pymavlink ``udpin`` connection and its port. Import it into
  a test module as ``listener = mavlink_fixtures.listener``.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from drone_fixtures import free_port

from dronedepth.drone.mavlink import mavutil
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, ObstaclesMessage

PROFILE = ObstaclesMessage(
    pts=9000,
    stamp=1_764_000_000.0,
    gravity_aligned=True,
    sector_width_deg=5.0,
    angle_offset_deg=-30.0,
    min_range_m=0.3,
    max_range_m=20.0,
    distances_m=(6.2, 5.0, 3.04, OBSTACLE_FREE, OBSTACLE_NO_DATA, 0.3, 20.0, 7.5, 7.0, 6.5, 6.0, 5.5, 5.0),
)

HOVER_HEIGHT_M = 5.2
"""The rangefinder's reading in :func:`send_hover`, along the tilted body's down axis."""


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def send_hover(mav: Any, time_boot_ms: int, north_m_s: float = 0.0) -> None:
    """LOCAL_POSITION_NED (10, 20, −5) moving north at ``north_m_s``, DISTANCE_SENSOR 5.20 m, ATTITUDE roll 10°,
    pitch −5°, yaw 30°, all stamped ``time_boot_ms``, sent on the pymavlink connection ``mav``."""
    mav.mav.local_position_ned_send(time_boot_ms, 10.0, 20.0, -5.0, north_m_s, 0.0, 0.0)
    mav.mav.distance_sensor_send(time_boot_ms, 10, 4000, round(HOVER_HEIGHT_M * 100), 0, 0, 25, 0)
    mav.mav.attitude_send(time_boot_ms, math.radians(10), math.radians(-5), math.radians(30), 0.0, 0.0, 0.0)


class Autopilot:
    """A pymavlink peer in a thread: records every OBSTACLE_DISTANCE, optionally sends a flight at 50 Hz."""

    def __init__(self, connection: str, *, fly: bool = False) -> None:
        self.mav = mavutil.mavlink_connection(connection, source_system=1, source_component=1)
        self.obstacles: list[tuple[float, Any]] = []
        """(arrival on time.monotonic(), message)."""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True)]
        if fly:
            self._threads.append(threading.Thread(target=self._send_flight, daemon=True))
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            msg = self.mav.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=0.1)
            if msg is not None:
                self.obstacles.append((time.monotonic(), msg))

    def _send_flight(self) -> None:
        """:func:`send_hover` every 20 ms; the autopilot booted 1234.5 s ago."""
        boot = time.monotonic() - 1234.5
        while not self._stop.wait(0.02):
            send_hover(self.mav, int((time.monotonic() - boot) * 1000))

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.mav.close()


@pytest.fixture
def listener() -> Iterator[tuple[Any, int]]:
    """A bare pymavlink connection listening on a free UDP port of 127.0.0.1, and that port."""
    port = free_udp_port()
    autopilot = mavutil.mavlink_connection(f"udpin:127.0.0.1:{port}", source_system=1, source_component=1)
    yield autopilot, port
    autopilot.close()
