"""MAVLink to the flight controller, both ways: poses in, obstacle distances out (pymavlink).

**In: a :class:`~dronedepth.drone.trajectory.PoseSource`.** ``ATTITUDE``
(roll, pitch, yaw) with the newest ``LOCAL_POSITION_NED`` (position,
extrapolated with its velocity to the attitude's instant), or ``ODOMETRY``
(local NED world, FRD body), give the body's pose; ``DISTANCE_SENSOR`` with
orientation 25 (``MAV_SENSOR_ROTATION_PITCH_270``, looking down) gives the
height above ground (its range times the cosine of the tilt). NED/FRD is
converted to ENU/FLU here, once (:func:`dronedepth.frames.enu_from_ned_pose`).

**Clocks.** The autopilot stamps messages with its own clock
(``time_boot_ms`` / ``time_usec`` since its boot). :class:`ClockOffset`
maps them onto the companion's capture clock (``time.monotonic()``, the
clock of :attr:`CapturedFrame.capture_time`): the offset is the **minimum of
(local receive time − remote time)** over a sliding window (default 10 s).
Each sample is the true offset plus that message's one-way delay (and up to
1 ms of ``time_boot_ms`` truncation), never less, so the minimum is the true
offset plus the *smallest* delay in the window: the error is bounded by the
link's minimum delay plus its jitter floor, whatever the queueing of the
other messages. A remote clock that jumps back (autopilot reboot) restarts
the estimate.

**Out: ``OBSTACLE_DISTANCE`` (id 330).** The newest ``obstacles`` profile is
repeated at ``rate_hz`` (default 20) in ``MAV_FRAME_BODY_FRD``: distances in
cm, ``UINT16_MAX`` where a sector has no data, ``max_distance + 1`` where it
is free, ``increment_f`` / ``angle_offset`` from the sectors (more than 72
sectors are merged into 72 by taking the nearest, unknown winning over
free). A profile whose frame was captured more than ``max_age_s`` (default
0.5 s) ago is no longer sent: the autopilot then sees the data go missing
rather than an old picture that may look free.

One connection serves both; a reader thread and a sender thread share it. A
connection that fails (serial unplugged, TCP closed) is reopened with
backoff while the rest of the drone goes on; :attr:`MavlinkLink.last_error`
says why it is down. ``MAVLINK20=1`` is set before pymavlink is imported:
``OBSTACLE_DISTANCE`` exists only in MAVLink 2.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from dronedepth.drone.trajectory import StampedPose
from dronedepth.errors import ConfigError
from dronedepth.frames import (
    Transform,
    enu_from_ned_pose,
    enu_from_ned_vector,
    normalised_quaternion,
    quaternion_from_rpy,
)
from dronedepth.protocol import OBSTACLE_NO_DATA, ObstaclesMessage

os.environ["MAVLINK20"] = "1"  # before the first import of mavutil: OBSTACLE_DISTANCE is MAVLink 2 only
from pymavlink import mavutil

__all__ = ["ClockOffset", "MavlinkLink", "MavlinkObstacles", "obstacle_distance_fields"]

log = logging.getLogger("dronedepth.drone.mavlink")

MAX_SECTORS: Final = 72
UNKNOWN_CM: Final = 0xFFFF
DOWNWARD: Final = 25  # MAV_SENSOR_ROTATION_PITCH_270
COMPANION_COMPONENT: Final = 191  # MAV_COMP_ID_ONBOARD_COMPUTER
_POSITION_MAX_AGE_S: Final = 0.2
_HEIGHT_MAX_AGE_S: Final = 0.5
_REBOOT_JUMP_S: Final = 1.0
_HEARTBEAT_PERIOD_S: Final = 1.0
_MAX_PENDING_POSES: Final = 256


class ClockOffset:
    """Maps a remote clock onto the local one: ``local ≈ remote + offset``.

    ``offset`` is the minimum of ``local_receive − remote`` over the samples of
    the last ``window_s`` local seconds (a monotonic deque: O(1) amortised).
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque()  # (local, offset), offset rising
        self._last_remote: float | None = None
        self._offset: float | None = None

    def observe(self, remote_s: float, local_s: float) -> float:
        """Add one message's remote stamp and local receive time; returns the offset now."""
        if self._last_remote is not None and remote_s < self._last_remote - _REBOOT_JUMP_S:
            log.info(
                "autopilot clock jumped back %.3f s (reboot?): clock offset restarted", self._last_remote - remote_s
            )
            self._samples.clear()
        self._last_remote = remote_s
        offset = local_s - remote_s
        while self._samples and self._samples[-1][1] >= offset:
            self._samples.pop()
        self._samples.append((local_s, offset))
        while self._samples[0][0] < local_s - self.window_s:
            self._samples.popleft()
        # One attribute store, so other threads read a consistent value without the deque.
        self._offset = self._samples[0][1]
        return self._offset

    @property
    def offset(self) -> float | None:
        """Seconds to add to a remote time; ``None`` before the first sample."""
        return self._offset

    def to_local(self, remote_s: float) -> float | None:
        offset = self.offset
        return None if offset is None else remote_s + offset


@dataclass(frozen=True, slots=True)
class MavlinkObstacles:
    """The ``OBSTACLE_DISTANCE`` fields of one profile (cm, degrees, ``MAV_FRAME_BODY_FRD``)."""

    distances_cm: tuple[int, ...]
    increment_deg: float
    angle_offset_deg: float
    min_distance_cm: int
    max_distance_cm: int


def obstacle_distance_fields(message: ObstaclesMessage) -> MavlinkObstacles:
    """An ``obstacles`` message as ``OBSTACLE_DISTANCE`` fields, at most :data:`MAX_SECTORS` sectors.

    ``k = ceil(n / 72)`` neighbouring sectors merge into one ``k`` times as
    wide, centred on their middle: the nearest obstacle among them, else
    unknown if any was unknown (unknown never becomes free), else free.
    """
    min_cm = max(0, round(message.min_range_m * 100))
    max_cm = min(UNKNOWN_CM - 2, round(message.max_range_m * 100))
    distances = np.asarray(message.distances_m, dtype=np.float64)
    group = math.ceil(len(distances) / MAX_SECTORS)
    padded = np.full(group * math.ceil(len(distances) / group), OBSTACLE_NO_DATA)
    padded[: len(distances)] = distances
    groups = padded.reshape(-1, group)
    obstacle = np.where(groups >= 0, groups, np.inf).min(axis=1)
    cm = np.where(
        np.isfinite(obstacle),
        np.clip(np.round(np.where(np.isfinite(obstacle), obstacle, 0.0) * 100), min_cm, max_cm),
        np.where((groups == OBSTACLE_NO_DATA).any(axis=1), UNKNOWN_CM, max_cm + 1),
    ).astype(int)
    out = np.full(MAX_SECTORS, UNKNOWN_CM, dtype=int)
    out[: len(cm)] = cm
    width = message.sector_width_deg * group
    return MavlinkObstacles(
        distances_cm=tuple(int(v) for v in out),
        increment_deg=width,
        angle_offset_deg=message.angle_offset_deg + (group - 1) * message.sector_width_deg / 2,
        min_distance_cm=min_cm,
        max_distance_cm=max_cm,
    )


def _raise_closed() -> None:
    raise ConnectionError("closed by the other end")


@dataclass(frozen=True, slots=True)
class _Attitude:
    local_time: float
    world_ned_from_body_frd: Transform  # rotation only


class MavlinkLink:
    """One MAVLink connection to the autopilot: a :class:`PoseSource` and the ``OBSTACLE_DISTANCE`` sender.

    ``connection`` is a pymavlink connection string: ``udpin:0.0.0.0:14550``
    (listen; replies go to the last sender), ``udpout:HOST:PORT``,
    ``tcp:HOST:PORT``, ``/dev/ttyACM0,921600`` (serial, with baud rate).
    Call :meth:`start`, then :meth:`publish` each ``obstacles`` message with
    the capture time of its frame; :meth:`close` stops both threads.
    """

    def __init__(
        self,
        connection: str,
        *,
        rate_hz: float = 20.0,
        max_age_s: float = 0.5,
        max_pose_rate_hz: float = 30.0,
        source_system: int = 1,
        source_component: int = COMPANION_COMPONENT,
        clock: Callable[[], float] = time.monotonic,
        clock_window_s: float = 10.0,
        reconnect_max_delay_s: float = 5.0,
    ) -> None:
        if not connection:
            raise ConfigError("--mavlink needs a connection string such as udpin:0.0.0.0:14550")
        if not rate_hz >= 10.0:
            raise ConfigError(f"OBSTACLE_DISTANCE must be sent at 10 Hz or more, got {rate_hz} Hz")
        if not max_age_s > 0:
            raise ConfigError(f"the obstacle max age must be positive, got {max_age_s} s")
        self.connection = connection
        self.rate_hz = rate_hz
        self.max_age_s = max_age_s
        self.source_system = source_system
        self.source_component = source_component
        self._clock = clock
        self._reconnect_max_delay_s = reconnect_max_delay_s
        self._min_pose_interval_s = 1.0 / max_pose_rate_hz
        self.boot_clock = ClockOffset(clock_window_s)
        self.unix_clock = ClockOffset(clock_window_s)
        self.last_error: str | None = None
        self._logged_error: str | None = None  # the reason last logged, until a connection carries a message
        self.sent_count = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._mav: Any = None
        self._threads: list[threading.Thread] = []
        self._profile: tuple[MavlinkObstacles, float] | None = None
        self._poses: collections.deque[StampedPose] = collections.deque(maxlen=_MAX_PENDING_POSES)
        self._last_pose_time = -math.inf
        self._attitude: _Attitude | None = None
        self._position: tuple[float, np.ndarray, np.ndarray] | None = None  # local time, NED position, NED velocity
        self._height: tuple[float, float] | None = None  # local time, range along the body's down axis (m)

    # -- lifecycle

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._read_loop, name="mavlink-read", daemon=True),
            threading.Thread(target=self._send_loop, name="mavlink-send", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._drop_connection()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _open(self) -> None:
        mav = mavutil.mavlink_connection(
            self.connection,
            source_system=self.source_system,
            source_component=self.source_component,
            retries=0,
        )
        if hasattr(mav, "handle_eof"):
            # pymavlink's TCP connection prints "EOF on TCP socket" and returns no data forever once the
            # peer closes (without autoreconnect): make it an error so the link reconnects and says why.
            mav.handle_eof = _raise_closed
            mav.handle_disconnect = _raise_closed
        with self._lock:
            self._mav = mav
            self.last_error = None
            self._connected.set()
        log.info("MAVLink connection %s open", self.connection)

    def _drop_connection(self) -> None:
        self._connected.clear()
        with self._lock:
            mav, self._mav = self._mav, None
        if mav is not None:
            with contextlib.suppress(OSError):
                mav.close()

    def _fail(self, exc: BaseException, mav: Any) -> None:
        """``mav`` (``None`` for a failed open) failed with ``exc``: drop it and say why, once per reason.

        A reason is logged again only after a connection has carried a message (see :meth:`_read_loop`), not
        merely after it opened: a peer going away (or restarting) can complete the TCP handshake of the
        immediate reopen in its listen backlog, then reset it, which is the same outage and the same reason.
        Both threads share the connection: the first to report it claims it under the lock; a report about
        one no longer current (dropped, or already reopened) is ignored, so it cannot drop the new one.
        """
        message = f"MAVLink connection {self.connection}: {exc}"
        with self._lock:
            if mav is not self._mav:
                return
            self._mav = None
            self._connected.clear()
            self.last_error = message
            repeated, self._logged_error = message == self._logged_error, message
        if not repeated:
            log.warning("%s; reconnecting", message)
        if mav is not None:
            with contextlib.suppress(OSError):
                mav.close()

    # -- reading

    def _read_loop(self) -> None:
        delay = 0.25
        while not self._stop.is_set():
            if self._mav is None:
                try:
                    self._open()
                    delay = 0.25
                except Exception as exc:  # pymavlink raises OSError, SerialException or its own errors
                    self._fail(exc, None)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._reconnect_max_delay_s)
                    continue
            mav = self._mav  # once: the sender may drop it meanwhile
            if mav is None:
                continue
            try:
                msg = mav.recv_match(
                    type=["ATTITUDE", "LOCAL_POSITION_NED", "ODOMETRY", "DISTANCE_SENSOR"], blocking=True, timeout=0.1
                )
            except Exception as exc:
                self._fail(exc, mav)
                continue
            if self._logged_error is not None and mav.mav_count:  # a valid message from the peer: the link is back
                with self._lock:
                    if mav is self._mav:
                        self._logged_error = None
            if msg is not None:
                self.handle(msg, self._clock())

    def handle(self, msg: Any, received: float) -> None:
        """Use one decoded message received at local time ``received`` (called by the reader thread)."""
        kind = msg.get_type()
        if kind == "ODOMETRY":
            local = self._local_time(msg.time_usec / 1e6, received)
        else:
            local = self._local_time(msg.time_boot_ms / 1e3, received)
        if kind == "ATTITUDE":
            rotation = quaternion_from_rpy(msg.roll, msg.pitch, msg.yaw)  # NED world from FRD body, ZYX Euler
            attitude = _Attitude(local, Transform(rotation, np.zeros(3)))
            self._attitude = attitude
            self._emit_from_attitude(attitude)
        elif kind == "LOCAL_POSITION_NED":
            self._position = (local, np.array([msg.x, msg.y, msg.z]), np.array([msg.vx, msg.vy, msg.vz]))
        elif kind == "DISTANCE_SENSOR":
            if msg.orientation == DOWNWARD and msg.min_distance <= msg.current_distance <= msg.max_distance:
                self._height = (local, msg.current_distance / 100.0)
        elif kind == "ODOMETRY" and msg.frame_id == mavutil.mavlink.MAV_FRAME_LOCAL_NED:
            w, x, y, z = msg.q  # MAVLink quaternions are w, x, y, z
            try:
                rotation = normalised_quaternion([x, y, z, w])
            except ValueError as exc:
                log.debug("ODOMETRY ignored: %s", exc)
                return
            pose = Transform(rotation, np.array([msg.x, msg.y, msg.z]))
            velocity = np.array([msg.vx, msg.vy, msg.vz])
            if msg.child_frame_id == mavutil.mavlink.MAV_FRAME_BODY_FRD:
                velocity = pose.rotate(velocity)  # body-frame velocity into the world's axes
            self._emit(local, pose, velocity)

    def _local_time(self, remote_s: float, received: float) -> float:
        # time_usec may be Unix time on some autopilots: a separate estimate for each base.
        clock = self.unix_clock if remote_s > 1e9 else self.boot_clock
        return remote_s + clock.observe(remote_s, received)

    def _emit_from_attitude(self, attitude: _Attitude) -> None:
        if self._position is None or abs(attitude.local_time - self._position[0]) > _POSITION_MAX_AGE_S:
            return
        position_time, position, velocity = self._position
        position = position + velocity * (attitude.local_time - position_time)
        pose = Transform(attitude.world_ned_from_body_frd.rotation, position)
        self._emit(attitude.local_time, pose, velocity)

    def _emit(self, local_time: float, world_ned_from_body_frd: Transform, velocity_ned: np.ndarray) -> None:
        if local_time - self._last_pose_time < self._min_pose_interval_s:
            return
        self._last_pose_time = local_time
        height = None
        if self._height is not None and abs(local_time - self._height[0]) <= _HEIGHT_MAX_AGE_S:
            # The range runs along the body's down axis; its vertical part is the height.
            down_of_body_down = world_ned_from_body_frd.rotate([0.0, 0.0, 1.0])[2]
            height = self._height[1] * down_of_body_down if down_of_body_down > 0 else None
        pose = StampedPose(
            capture_time=local_time,
            world_from_body=enu_from_ned_pose(world_ned_from_body_frd),
            convention="enu_flu",
            frame_id="odom",
            height_above_ground_m=height,
            velocity_m_s=enu_from_ned_vector(velocity_ned),
        )
        with self._lock:
            self._poses.append(pose)

    # -- PoseSource

    def poses_for_frame(self, index: int, capture_time: float) -> Sequence[StampedPose]:
        """The poses read since the last call, oldest first (ENU world ``odom``, FLU body)."""
        with self._lock:
            poses = tuple(self._poses)
            self._poses.clear()
        return poses

    # -- sending

    def publish(self, message: ObstaclesMessage, capture_time: float) -> None:
        """Send ``message`` from now on, until a newer one or until its frame is ``max_age_s`` old.

        ``capture_time`` is the frame's capture instant on the local clock (``time.monotonic()``).
        """
        fields = obstacle_distance_fields(message)
        with self._lock:
            if self._profile is None or capture_time >= self._profile[1]:
                self._profile = (fields, capture_time)

    def _send_loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_heartbeat = 0.0
        next_send = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now < next_send:
                self._stop.wait(next_send - now)
                continue
            next_send = max(next_send + period, now)  # a late wake-up does not send a burst
            with self._lock:
                mav, profile = self._mav, self._profile
            if mav is None:
                continue
            try:
                if now >= next_heartbeat:
                    mav.mav.heartbeat_send(
                        mavutil.mavlink.MAV_TYPE_ONBOARD_CONTROLLER, mavutil.mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0
                    )
                    next_heartbeat = now + _HEARTBEAT_PERIOD_S
                if profile is not None and now - profile[1] <= self.max_age_s:
                    self._send(mav, profile[0], profile[1])
            except Exception as exc:
                self._fail(exc, mav)

    def _send(self, mav: Any, fields: MavlinkObstacles, capture_time: float) -> None:
        # time_usec: the frame's capture instant on the autopilot's boot clock when known.
        offset = self.boot_clock.offset
        time_usec = max(0, round((capture_time - offset) * 1e6)) if offset is not None else 0
        mav.mav.obstacle_distance_send(
            time_usec,
            mavutil.mavlink.MAV_DISTANCE_SENSOR_UNKNOWN,
            fields.distances_cm,
            max(1, min(255, round(fields.increment_deg))),
            fields.min_distance_cm,
            fields.max_distance_cm,
            fields.increment_deg,
            fields.angle_offset_deg,
            mavutil.mavlink.MAV_FRAME_BODY_FRD,
        )
        self.sent_count += 1
