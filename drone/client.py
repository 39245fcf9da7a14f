"""The drone client: stream a source to a gateway over WebRTC and collect its 3D keypoints.

One :class:`DroneClient` runs sessions one after the other until the source
ends, ``max_frames`` frames were sent or :meth:`DroneClient.stop` is called.
A session is one ``RTCPeerConnection``:

1. create the ``dronedepth`` data channel and a :class:`~drone.track.SourceTrack`;
2. gather ICE candidates, ``POST /offer``, apply the answer;
3. when the data channel opens, send ``camera`` and only then release frames;
   re-send ``camera`` before the first frame of a new size, and when the
   gateway says ``no_camera`` (at most once a second). The camera travels on
   the data channel and frames on RTP, so the gateway may see the frame(s) in
   flight at a size change with the new camera (``camera_mismatch``, frame
   dropped); nothing else is lost;
4. for each ``keypoints`` message, match its ``pts`` to the frame's capture
   time, record the glass-to-result latency and write a line to the results file
   (the message as received: points in the gateway's ``--axes``). Decoding
   turns the points back into the camera optical frame, whatever the gateway's
   ``--axes``, so everything onboard sees optical points;
5. for each ``obstacles`` message (the gravity-aware profile, body FRD
   sectors), match its ``pts`` the same way, hand it to the MAVLink link with
   that capture time (``--mavlink``: the link forwards it as
   ``OBSTACLE_DISTANCE`` until it is ``obstacle_max_age`` old), plan waypoints
   from it (``--waypoints``) and write a line to the results file.

The MAVLink link (:class:`~drone.mavlink.MavlinkLink`) is opened once per run,
not per session: the autopilot link outlives gateway reconnections. With
``pose="mavlink"`` it is also the pose source.

A session ends when the peer connection fails or closes, the data channel
closes, or the gateway says nothing for ``result_timeout`` seconds (unless it
said ``inference_unavailable``: then the link is fine and the client waits for
``inference_resumed`` or results, relying on ICE consent checks); the client
then reconnects with a new peer connection after an exponential backoff
(``reconnect_delay`` doubling up to ``reconnect_max_delay``). Refused tokens and
malformed-offer replies are not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from dronedepth.drone.intrinsics import missing_intrinsics_error
from dronedepth.drone.results import LatencyStats, ResultsWriter
from dronedepth.drone.signaling import DRONE_ID_PATTERN, offer_url, post_offer
from dronedepth.drone.sources import CapturedFrame, FrameSource, SyntheticSource, open_source
from dronedepth.drone.track import SourceTrack
from dronedepth.drone.trajectory import PoseSource, StampedPose, TumPoseSource
from dronedepth.drone.waypoints import Obstacle, Waypoints, nearest_obstacle, plan_waypoints
from dronedepth.errors import ConfigError, InferenceUnavailable, ProtocolError
from dronedepth.protocol import (
    DATA_CHANNEL_LABEL,
    INFERENCE_RESUMED,
    INFERENCE_UNAVAILABLE,
    INVALID_MESSAGE,
    NO_CAMERA,
    VIDEO_CLOCK_RATE,
    CameraMessage,
    ErrorMessage,
    FrameRateMessage,
    KeypointsMessage,
    LocalMapMessage,
    ObstaclesMessage,
    PoseMessage,
    SessionDescription,
    decode,
    encode,
)

if TYPE_CHECKING:
    from dronedepth.drone.mavlink import MavlinkLink

__all__ = ["DroneClient", "DroneConfig", "DroneSummary", "LocalMapCallback", "ObstaclesCallback", "ResultCallback"]

log = logging.getLogger(__name__)

ResultCallback = Callable[[KeypointsMessage, "float | None"], None]
"""``on_result(message, latency_ms)``, called in the event loop for each ``keypoints`` message."""
ObstaclesCallback = Callable[[ObstaclesMessage, "float | None", "Waypoints | None"], None]
"""``on_obstacles(message, capture_time, waypoints)``, called in the event loop for each ``obstacles`` message;
``capture_time`` is its frame's (``time.monotonic()``), ``None`` when its ``pts`` matched no frame sent."""
LocalMapCallback = Callable[[LocalMapMessage], None]
"""``on_local_map(message)``, called in the event loop for each ``local_map`` (a gateway with ``--map``)."""

_CLOSE_TIMEOUT_S: Final = 5.0
_CAMERA_RESEND_INTERVAL_S: Final = 1.0
_WAYPOINT_LOG_INTERVAL_S: Final = 1.0


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def check_pose_link(pose: str | None, mavlink: str | None) -> None:
    """Refuse ``--pose mavlink`` without a ``--mavlink`` connection to read the poses from."""
    if pose == "mavlink" and mavlink is None:
        raise ConfigError(
            "--pose mavlink reads the autopilot's attitude and position: give --mavlink CONNECTION too "
            "(e.g. --mavlink udpin:0.0.0.0:14550)"
        )


@dataclass(frozen=True, slots=True)
class DroneConfig:
    """Everything the client needs; validates itself and names any bad value.

    ``camera`` is the calibration at its own resolution (see
    :mod:`drone.intrinsics`); it is scaled to the frames sent. It may be
    ``None`` only for a source with built-in intrinsics (``synthetic``).
    """

    gateway: str
    token: str
    source: str = "synthetic"
    camera: CameraMessage | None = None
    fps: float = 15.0
    width: int | None = None
    height: int | None = None
    max_frames: int | None = None
    results_path: Path | None = None
    drone_id: str | None = None
    ice_servers: tuple[str, ...] = ()
    ice_username: str | None = None
    ice_credential: str | None = None
    """TURN password for the ``turn:``/``turns:`` servers; needs ``ice_username``."""
    ice_relay_only: bool = False
    """Gather relayed (TURN) candidates only (``iceTransportPolicy`` relay): media goes through the TURN server."""
    waypoints: bool = False
    loop: bool = False
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0
    max_attempts: int | None = None
    """Consecutive failed connection attempts before giving up; ``None``: keep trying."""
    connect_timeout: float = 20.0
    result_timeout: float = 15.0
    """Reconnect when the gateway has sent nothing for this long during a session."""
    drain_timeout: float = 10.0
    """After the last frame, wait this long after the latest result for the remaining ones."""
    pose: str | None = None
    """Where poses come from: ``None`` (send none), ``synthetic`` (the synthetic source's exact
    pose), ``mavlink`` (the autopilot's, over ``mavlink``) or a TUM trajectory file (see
    :mod:`drone.trajectory`)."""
    pose_frame: Literal["enu", "ned"] = "enu"
    """The axes of a TUM file: ENU world / FLU body, or NED world / FRD body."""
    mavlink: str | None = None
    """A pymavlink connection string to the autopilot (``udpin:0.0.0.0:14550``, ``tcp:HOST:PORT``,
    ``/dev/ttyACM0,921600``): obstacles go out as ``OBSTACLE_DISTANCE``; ``pose="mavlink"`` reads poses."""
    obstacle_max_age: float = 0.5
    """Seconds after its frame's capture a profile is still sent to the autopilot (and shown as current)."""

    def __post_init__(self) -> None:
        offer_url(self.gateway)  # validates
        if not self.token or any(c.isspace() for c in self.token):
            raise ConfigError("the token must be a non-empty string without whitespace")
        if self.drone_id is not None and not DRONE_ID_PATTERN.fullmatch(self.drone_id):
            raise ConfigError(f"drone id must match [A-Za-z0-9_-]{{1,64}}, got {self.drone_id!r}")
        _positive("fps", self.fps)
        if self.fps > 120:
            raise ConfigError(f"fps must be at most 120, got {self.fps}")
        for name in ("width", "height", "max_frames", "max_attempts"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("reconnect_delay", "reconnect_max_delay", "connect_timeout", "result_timeout", "drain_timeout"):
            _positive(name, getattr(self, name))
        if (self.ice_username is None) != (self.ice_credential is None):
            raise ConfigError("TURN credentials need both --ice-username and --ice-credential-file")
        if self.ice_relay_only and not any(url.startswith(("turn:", "turns:")) for url in self.ice_servers):
            raise ConfigError("--ice-relay-only needs a TURN server: give --ice-server turn:HOST:PORT")
        if self.pose_frame not in ("enu", "ned"):
            raise ConfigError(f"pose_frame must be 'enu' or 'ned', got {self.pose_frame!r}")
        _positive("obstacle_max_age", self.obstacle_max_age)
        if self.mavlink is not None and not self.mavlink.strip():
            raise ConfigError("--mavlink needs a connection string such as udpin:0.0.0.0:14550")
        check_pose_link(self.pose, self.mavlink)
        if self.pose == "synthetic" and self.source != "synthetic":
            raise ConfigError("--pose synthetic needs --source synthetic (only that scene knows its own pose)")
        if self.reconnect_max_delay < self.reconnect_delay:
            raise ConfigError(
                f"reconnect_max_delay ({self.reconnect_max_delay}) must not be below "
                f"reconnect_delay ({self.reconnect_delay})"
            )

    @property
    def offer_url(self) -> str:
        return offer_url(self.gateway)


@dataclass(frozen=True, slots=True)
class DroneSummary:
    """Counters and latency of a run so far (or of a finished run). Latencies are glass-to-result, in ms."""

    frames_sent: int
    results: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_max_ms: float | None
    errors: int
    """``error`` messages received from the gateway."""
    reconnects: int
    sessions: int
    """Sessions that got as far as sending ``camera``."""
    unmatched: int
    """Results whose ``pts`` matched no frame sent (their latency is unknown)."""
    duration_s: float
    state: str
    error_codes: Mapping[str, int] = field(default_factory=dict)
    obstacle_profiles: int = 0
    """``obstacles`` messages received."""
    nearest_obstacle: Obstacle | None = None
    """The nearest obstacle of the newest profile, only while that profile is current (``obstacle_max_age``)."""
    obstacle_profile_current: bool = False
    """Whether a profile younger than ``obstacle_max_age`` is known (``False``: no picture, not free space)."""
    local_maps: int = 0
    """``local_map`` messages received (a gateway with ``--map``)."""
    frames_skipped: int = 0
    """Source frames not sent because the gateway advised a lower frame rate (``frame_rate``)."""
    advised_fps: float | None = None
    """The gateway's current frame-rate advice (None: no limit)."""

    def line(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        text = (
            f"frames {self.frames_sent} · results {self.results} · latency p50 {ms(self.latency_p50_ms)} ms "
            f"p95 {ms(self.latency_p95_ms)} ms · errors {self.errors} · reconnects {self.reconnects}"
        )
        if self.obstacle_profiles:
            if not self.obstacle_profile_current:
                nearest = "nearest obstacle - (no current profile)"
            elif self.nearest_obstacle is None:
                nearest = "nearest obstacle none seen"
            else:
                o = self.nearest_obstacle
                nearest = f"nearest obstacle {o.distance_m:.1f} m @ {o.azimuth_deg:+.0f}°"
            text += f" · {nearest}"
        if self.advised_fps is not None:
            text += f" · gateway asks ≤ {self.advised_fps:g} fps ({self.frames_skipped} frames skipped)"
        return f"{text} · {self.state}"


def _pose_message(pts: int, pose: StampedPose) -> PoseMessage:
    return PoseMessage(
        pts=pts,
        position=tuple(pose.world_from_body.translation.tolist()),
        orientation=tuple(pose.world_from_body.rotation.tolist()),
        frame_id=pose.frame_id,
        convention=pose.convention,
        height_above_ground=pose.height_above_ground_m,
        velocity=None if pose.velocity_m_s is None else tuple(pose.velocity_m_s.tolist()),
    )


class DroneClient:
    """Streams frames to a gateway and collects keypoints; see the module doc.

    ``source`` overrides ``config.source`` with an already open source (the
    client then does not close it). ``on_result`` is called for every
    ``keypoints`` message, ``on_obstacles`` for every ``obstacles`` message,
    ``on_local_map`` for every ``local_map`` message (the newest is also kept in
    :attr:`local_map`, for an onboard planner).
    """

    def __init__(
        self,
        config: DroneConfig,
        *,
        source: FrameSource | None = None,
        on_result: ResultCallback | None = None,
        on_obstacles: ObstaclesCallback | None = None,
        on_local_map: LocalMapCallback | None = None,
    ) -> None:
        self.config = config
        self._given_source = source
        self._on_result = on_result
        self._on_obstacles = on_obstacles
        self._on_local_map = on_local_map
        self.local_map: LocalMapMessage | None = None
        """The newest ``local_map`` from the gateway, or None."""
        self._local_maps = 0
        self._mavlink: MavlinkLink | None = None
        self._obstacle_profiles = 0
        self._nearest: tuple[Obstacle | None, float] | None = None
        """The newest profile's nearest obstacle and its frame's capture time."""
        self._latency = LatencyStats()
        self._frames_sent = 0
        self._frames_skipped = 0
        self._advised_fps: float | None = None
        self._results = 0
        self._unmatched = 0
        self._error_codes: Counter[str] = Counter()
        self._reconnects = 0
        self._sessions = 0
        self._state = "idle"
        self._started: float | None = None
        self._finished_at: float | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._result_event: asyncio.Event | None = None
        self._base_camera: CameraMessage | None = None
        self._camera: CameraMessage | None = None
        self._cameras: dict[tuple[int, int], CameraMessage | None] = {}
        """The camera sent for each frame size; None for a size the intrinsics cannot be scaled to."""
        self._camera_sent_at = -math.inf
        self._writer: ResultsWriter | None = None
        self._last_message_at = 0.0
        self._last_result_pts = -1
        self._inference_down = False
        self._last_waypoint_log = -math.inf
        self._drone_id: str | None = None
        self._running = False
        self._pose_source: PoseSource | None = None
        self._pose_origin: float | None = None
        self._last_pose_pts: int | None = None
        self._poses_sent = 0

    # -- public --------------------------------------------------------------------------------------------

    @property
    def camera(self) -> CameraMessage | None:
        """The camera message last sent (at the size of the frames being sent)."""
        return self._camera

    @property
    def drone_id(self) -> str | None:
        """The id the gateway assigned in its last answer."""
        return self._drone_id

    def stop(self) -> None:
        """Ask :meth:`run` to finish: close the connection, flush the results, return. Safe from any thread."""
        self._stopping = True
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_event.set)

    def summary(self, *, recent: bool = False) -> DroneSummary:
        """The counters so far; ``recent`` computes latency percentiles over the last few hundred results only."""
        pick = self._latency.recent if recent else self._latency.overall
        now = time.monotonic()
        end = self._finished_at if self._finished_at is not None else now
        current = self._nearest is not None and now - self._nearest[1] <= self.config.obstacle_max_age
        return DroneSummary(
            frames_sent=self._frames_sent,
            results=self._results,
            latency_p50_ms=pick(50),
            latency_p95_ms=pick(95),
            latency_max_ms=self._latency.maximum,
            errors=sum(self._error_codes.values()),
            reconnects=self._reconnects,
            sessions=self._sessions,
            unmatched=self._unmatched,
            duration_s=0.0 if self._started is None else end - self._started,
            state=self._state,
            error_codes=dict(self._error_codes),
            obstacle_profiles=self._obstacle_profiles,
            nearest_obstacle=self._nearest[0] if current and self._nearest is not None else None,
            obstacle_profile_current=current,
            local_maps=self._local_maps,
            frames_skipped=self._frames_skipped,
            advised_fps=self._advised_fps,
        )

    @property
    def mavlink(self) -> MavlinkLink | None:
        """The MAVLink link of the current or last run with ``config.mavlink`` (closed once :meth:`run` returns)."""
        return self._mavlink

    async def run(self) -> DroneSummary:
        """Stream until the source ends, ``max_frames`` were sent or :meth:`stop`; return the summary.

        Raises :class:`ConfigError` (bad source, no intrinsics, refused token),
        :class:`ProtocolError` (offer rejected) or, after ``max_attempts``
        failed attempts in a row, :class:`InferenceUnavailable`.
        """
        if self._running:
            raise RuntimeError("DroneClient.run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._result_event = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        self._started = time.monotonic()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drone-source")
        source = self._given_source
        try:
            if source is None:
                c = self.config
                source = await self._loop.run_in_executor(
                    executor, lambda: open_source(c.source, width=c.width, height=c.height, fps=c.fps, loop=c.loop)
                )
            self._base_camera = self._resolve_camera(source)
            self._mavlink = self._open_mavlink()
            self._pose_source = self._open_pose_source(source)
            if self.config.results_path is not None:
                self._writer = ResultsWriter(self.config.results_path)
            log.info(
                "streaming %r at %dx%d, %.1f fps to %s",
                source.name,
                source.width,
                source.height,
                self.config.fps,
                self.config.offer_url,
            )
            async with aiohttp.ClientSession() as http:
                await self._connect_loop(http, source, executor)
            self._state = "stopped" if self._stopping else "finished"
        except BaseException:
            self._state = "failed"
            raise
        finally:
            self._finished_at = time.monotonic()
            # The source thread may still be in a read the closed track no longer waits for: let it finish
            # (one worker, so this runs after it) before the source is closed, here or by its owner.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop.run_in_executor(executor, lambda: None), _CLOSE_TIMEOUT_S)
            if source is not None and self._given_source is None:
                await self._loop.run_in_executor(executor, source.close)
            executor.shutdown(wait=False, cancel_futures=True)
            if self._pose_source is not None and self._pose_source not in (source, self._mavlink):
                self._pose_source.close()
            if self._mavlink is not None:
                # close() joins the link's threads (each wakes within 0.1 s): off the event loop.
                await self._loop.run_in_executor(None, self._mavlink.close)
            if self._writer is not None:
                self._writer.close()
            self._running = False
        return self.summary()

    # -- sessions ------------------------------------------------------------------------------------------

    def _resolve_camera(self, source: FrameSource) -> CameraMessage:
        camera = self.config.camera
        if camera is None:
            camera = source.intrinsics
            if camera is None:
                raise missing_intrinsics_error(source.name, source.native_width, source.native_height)
            log.info("using the built-in intrinsics of the %s source", source.name)
        try:
            camera.scaled(source.width, source.height)
        except ProtocolError as exc:
            raise ConfigError(f"the intrinsics do not fit the frames of source {source.name!r}: {exc.message}") from exc
        return camera

    def _open_mavlink(self) -> MavlinkLink | None:
        if self.config.mavlink is None:
            return None
        try:
            # pymavlink is the optional 'mavlink' extra: imported only when a link is asked for.
            from dronedepth.drone.mavlink import MavlinkLink
        except ImportError as exc:
            raise ConfigError(f"--mavlink needs pymavlink: pip install 'dronedepth[mavlink]' ({exc})") from exc
        link = MavlinkLink(self.config.mavlink, max_age_s=self.config.obstacle_max_age)
        link.start()
        log.info("MAVLink link %s: obstacles out, profiles older than %.2f s not sent", link.connection, link.max_age_s)
        return link

    def _open_pose_source(self, source: FrameSource) -> PoseSource | None:
        spec = self.config.pose
        if spec is None:
            return None
        if spec == "mavlink":
            assert self._mavlink is not None  # DroneConfig requires --mavlink with --pose mavlink
            return self._mavlink
        if spec == "synthetic":
            if not isinstance(source, SyntheticSource):
                raise ConfigError(f"--pose synthetic needs the synthetic source, not {source.name!r}")
            return source
        return TumPoseSource(spec, fps=self.config.fps, ned=self.config.pose_frame == "ned")

    @property
    def poses_sent(self) -> int:
        """``pose`` messages sent so far."""
        return self._poses_sent

    def _ice_servers(self) -> list[RTCIceServer]:
        c = self.config
        return [RTCIceServer(urls=url, username=c.ice_username, credential=c.ice_credential) for url in c.ice_servers]

    def _may_continue(self) -> bool:
        limit = self.config.max_frames
        return not self._stopping and (limit is None or self._frames_sent < limit)

    async def _connect_loop(
        self, http: aiohttp.ClientSession, source: FrameSource, executor: ThreadPoolExecutor
    ) -> None:
        assert self._stop_event is not None
        failures = 0
        last_error: InferenceUnavailable | None = None
        while not self._stopping:
            self._state = "connecting"
            try:
                connected, finished = await self._session(http, source, executor)
            except InferenceUnavailable as exc:
                log.warning("%s", exc)
                connected, finished, last_error = False, False, exc
            if finished or self._stopping:
                return
            failures = 0 if connected else failures + 1
            if self.config.max_attempts is not None and failures >= self.config.max_attempts:
                detail = f": {last_error}" if last_error is not None else ""
                raise InferenceUnavailable(
                    f"gave up after {failures} failed attempts in a row to connect to {self.config.offer_url}{detail}"
                ) from last_error
            delay = min(self.config.reconnect_delay * 2 ** max(failures - 1, 0), self.config.reconnect_max_delay)
            self._reconnects += 1
            self._state = f"reconnecting in {delay:.1f} s"
            log.info("reconnecting in %.1f s", delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), timeout=delay)

    async def _session(
        self, http: aiohttp.ClientSession, source: FrameSource, executor: ThreadPoolExecutor
    ) -> tuple[bool, bool]:
        """One peer connection; returns (got connected, stream finished)."""
        assert self._stop_event is not None and self._loop is not None
        policy = RTCIceTransportPolicy.RELAY if self.config.ice_relay_only else RTCIceTransportPolicy.ALL
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers(), iceTransportPolicy=policy))
        self._last_result_pts = -1  # a new track starts again at pts 0
        self._inference_down = False
        self._advised_fps = None  # a new session starts without advice
        closed = asyncio.Event()
        reason: list[str] = []
        camera_sent = asyncio.Event()
        channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        track = SourceTrack(
            source,
            fps=self.config.fps,
            executor=executor,
            start=camera_sent,
            may_continue=self._may_continue,
            on_frame=lambda pts, frame: self._on_frame(channel, pts, frame),
            on_repeat=lambda pts, frame: self._on_repeat(channel, pts, frame),
            on_skip=self._on_skip,
        )
        pc.addTrack(track)

        def end(why: str) -> None:
            if not closed.is_set():
                reason.append(why)
                closed.set()

        @channel.on("open")
        def on_open() -> None:
            self._camera = None
            self._send_camera(channel, source.width, source.height)
            camera_sent.set()

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self._on_message(message, channel, track)

        @channel.on("close")
        def on_close() -> None:
            end("the data channel closed")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                end(f"the connection {pc.connectionState}")

        try:
            await pc.setLocalDescription(await pc.createOffer())
            if self.config.ice_relay_only and "a=candidate:" not in pc.localDescription.sdp:
                # aioice drops a failed TURN allocation silently: say why no media path can exist.
                raise InferenceUnavailable(
                    f"no relay candidate from {', '.join(self.config.ice_servers)}: the TURN server refused "
                    "--ice-username/--ice-credential-file or cannot be reached"
                )
            posting = asyncio.ensure_future(
                post_offer(
                    http,
                    self.config.offer_url,
                    self.config.token,
                    SessionDescription(sdp=pc.localDescription.sdp, type="offer"),
                    drone_id=self.config.drone_id,
                    timeout=self.config.connect_timeout,
                )
            )
            await self._wait_any((self._stop_event,), self.config.connect_timeout * 2, also=posting)
            if not posting.done():  # stopped while the gateway was answering
                posting.cancel()
                return False, False
            answer = posting.result()
            self._drone_id = answer.drone_id
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.description.sdp, type="answer"))
            except ValueError as exc:  # aiortc rejects an unusable answer with ValueError
                raise ProtocolError(INVALID_MESSAGE, f"the gateway's answer is unusable: {exc}") from exc
            await self._wait_any((camera_sent, closed, self._stop_event), self.config.connect_timeout)
            if not camera_sent.is_set():
                if not self._stopping:
                    why = reason[0] if reason else f"not connected after {self.config.connect_timeout:.0f} s"
                    log.warning("could not connect to %s: %s", self.config.offer_url, why)
                return False, False
            self._sessions += 1
            self._state = "streaming"
            log.info("connected to %s as drone %s", self.config.offer_url, answer.drone_id or "?")
            return True, await self._stream(track, closed, reason)
        finally:
            self._state = "closing" if self._stopping else self._state
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), timeout=_CLOSE_TIMEOUT_S)

    async def _stream(self, track: SourceTrack, closed: asyncio.Event, reason: list[str]) -> bool:
        """Watch a connected session; returns True when the stream finished (no more frames to send)."""
        assert self._stop_event is not None
        self._last_message_at = time.monotonic()
        while True:
            if self._stopping:
                return True
            if closed.is_set():
                log.warning("session ended: %s", reason[0] if reason else "closed")
                return False
            if track.ended.is_set():
                await self._drain(track, closed)
                return True
            silent = time.monotonic() - self._last_message_at
            if self._inference_down:
                # The gateway is alive and said its depth server is down: reconnecting would not help.
                self._state = "gateway waiting for its depth server"
                timeout = self.config.result_timeout
            elif silent >= self.config.result_timeout:
                log.warning("no message from the gateway for %.0f s: reconnecting", silent)
                return False
            else:
                self._state = "streaming"
                timeout = self.config.result_timeout - silent
            await self._wait_any((closed, self._stop_event, track.ended), timeout)

    async def _drain(self, track: SourceTrack, closed: asyncio.Event) -> None:
        """After the last frame: wait for its result, or until results stop coming for ``drain_timeout``."""
        assert self._stop_event is not None and self._result_event is not None
        self._state = "draining"
        last_pts = track.last_pts
        while not (self._stopping or closed.is_set()) and self._last_result_pts < last_pts:
            remaining = self._last_message_at + self.config.drain_timeout - time.monotonic()
            if remaining <= 0:
                break
            self._result_event.clear()
            await self._wait_any((self._result_event, closed, self._stop_event), remaining)

    @staticmethod
    async def _wait_any(
        events: tuple[asyncio.Event, ...], timeout: float, *, also: asyncio.Future[Any] | None = None
    ) -> None:
        """Wait until one of ``events`` is set (or ``also`` is done), at most ``timeout`` seconds."""
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(
                [*waiters, *([also] if also is not None else [])],
                timeout=max(timeout, 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for w in waiters:
                w.cancel()

    # -- messages ------------------------------------------------------------------------------------------

    def _send_camera(self, channel: RTCDataChannel, width: int, height: int) -> None:
        assert self._base_camera is not None
        if (width, height) not in self._cameras:  # scale (or refuse) once per size
            try:
                self._cameras[width, height] = self._base_camera.scaled(width, height)
            except ProtocolError as exc:
                # Frames the intrinsics cannot describe: the gateway drops them (camera_mismatch) rather than
                # project them with wrong geometry.
                self._cameras[width, height] = None
                log.error("no camera for %dx%d frames: %s", width, height, exc.message)
        camera = self._cameras[width, height]
        if camera is None:
            return
        try:
            channel.send(encode(camera))
        except Exception as exc:  # the channel closed under us; the session is ending
            log.debug("could not send camera: %s", exc)
            return
        if self._camera is None or (self._camera.width, self._camera.height) != (width, height):
            log.info(
                "camera %dx%d fx=%.2f fy=%.2f cx=%.2f cy=%.2f %s",
                camera.width,
                camera.height,
                camera.fx,
                camera.fy,
                camera.cx,
                camera.cy,
                camera.model,
            )
        self._camera = camera
        self._camera_sent_at = time.monotonic()

    def _on_frame(self, channel: RTCDataChannel, pts: int, frame: CapturedFrame) -> None:
        self._frames_sent += 1
        height, width = frame.rgb.shape[:2]
        if self._camera is None or (self._camera.width, self._camera.height) != (width, height):
            self._send_camera(channel, width, height)
        if self._pose_source is not None:
            self._send_poses(channel, pts, frame)

    def _on_repeat(self, channel: RTCDataChannel, pts: int, frame: CapturedFrame) -> None:
        """The track's end-of-stream repeat of ``frame``: the gateway processes it, so it gets its pose too."""
        if self._pose_source is not None:
            self._send_poses(channel, pts, frame)

    def _send_poses(self, channel: RTCDataChannel, pts: int, frame: CapturedFrame) -> None:
        """Send the pose source's poses for this frame, stamped on the video clock (docs/protocol.md)."""
        assert self._pose_source is not None
        if pts == 0:  # a new track: its first frame is the clock's zero
            self._pose_origin, self._last_pose_pts = frame.capture_time, None
        if self._pose_origin is None:
            return
        for pose in self._pose_source.poses_for_frame(self._frames_sent - 1, frame.capture_time):
            if pose.capture_time == frame.capture_time:
                stamp = pts  # this frame's own pose: exactly its pts
            else:
                stamp = round((pose.capture_time - self._pose_origin) * VIDEO_CLOCK_RATE)
            if self._last_pose_pts is not None and stamp <= self._last_pose_pts:
                continue  # the gateway refuses poses that do not move forward in time
            try:
                message = _pose_message(stamp, pose)
            except ProtocolError as exc:
                log.warning("not sending a bad pose: %s", exc.message)
                continue
            channel.send(encode(message))
            self._last_pose_pts = stamp
            self._poses_sent += 1

    def _on_message(self, text: str | bytes, channel: RTCDataChannel, track: SourceTrack) -> None:
        received = time.monotonic()
        self._last_message_at = received
        try:
            message = decode(
                text,
                accept=(
                    KeypointsMessage.type,
                    ObstaclesMessage.type,
                    LocalMapMessage.type,
                    FrameRateMessage.type,
                    ErrorMessage.type,
                ),
            )
        except ProtocolError as exc:
            self._error_codes["bad_message"] += 1
            log.warning("ignoring a bad message from the gateway (%s): %s", exc.code, exc.message)
            return
        if isinstance(message, ErrorMessage):
            self._on_error(message, channel)
        elif isinstance(message, KeypointsMessage):
            self._on_keypoints(message, track, received)
        elif isinstance(message, ObstaclesMessage):
            self._on_profile(message, track, received)
        elif isinstance(message, FrameRateMessage):
            self._on_frame_rate(message, track)
        elif isinstance(message, LocalMapMessage):
            self._local_maps += 1
            self.local_map = message
            if self._on_local_map is not None:
                self._on_local_map(message)

    def _on_frame_rate(self, message: FrameRateMessage, track: SourceTrack) -> None:
        track.max_fps = self._advised_fps = message.max_fps
        if message.max_fps is None:
            log.info("gateway lifted its frame-rate advice: sending at %g fps", self.config.fps)
        else:
            log.info(
                "gateway asks for at most %g fps (source %g fps): skipping frames", message.max_fps, self.config.fps
            )

    def _on_skip(self) -> None:
        self._frames_skipped += 1

    def _on_error(self, message: ErrorMessage, channel: RTCDataChannel) -> None:
        self._error_codes[message.code] += 1
        if message.code in (INFERENCE_UNAVAILABLE, INFERENCE_RESUMED):
            self._inference_down = message.code == INFERENCE_UNAVAILABLE
        level = logging.INFO if message.code == INFERENCE_RESUMED else logging.WARNING
        log.log(level, "gateway: %s: %s", message.code, message.message)
        if (
            message.code == NO_CAMERA
            and self._camera is not None
            and time.monotonic() - self._camera_sent_at >= _CAMERA_RESEND_INTERVAL_S
        ):
            self._send_camera(channel, self._camera.width, self._camera.height)

    def _on_keypoints(self, message: KeypointsMessage, track: SourceTrack, received: float) -> None:
        assert self._result_event is not None
        captured = track.capture_time(message.pts)
        latency_ms = None if captured is None else (received - captured) * 1000.0
        self._results += 1
        self._inference_down = False
        self._last_result_pts = max(self._last_result_pts, message.pts)
        self._result_event.set()
        if latency_ms is None:
            self._unmatched += 1
            log.debug("result for pts %d matches no frame sent in this session", message.pts)
        else:
            self._latency.add(latency_ms)
        self._write(message.to_dict(), captured, received, latency_ms=latency_ms)
        if self._on_result is not None:
            self._on_result(message, latency_ms)

    def _on_profile(self, message: ObstaclesMessage, track: SourceTrack, received: float) -> None:
        captured = track.capture_time(message.pts)
        self._obstacle_profiles += 1
        self._inference_down = False
        if captured is None:
            # Without its frame's capture time the profile's age is unknown: it must not reach the autopilot.
            log.debug("obstacles for pts %d match no frame sent in this session", message.pts)
        else:
            if self._mavlink is not None:
                self._mavlink.publish(message, captured)
            if self._nearest is None or captured >= self._nearest[1]:
                self._nearest = (nearest_obstacle(message), captured)
        waypoints = self._waypoints(message, received) if self.config.waypoints else None
        record: dict[str, Any] = message.to_dict()
        if waypoints is not None:
            record["waypoints"] = waypoints.to_dict()
        self._write(record, captured, received)
        if self._on_obstacles is not None:
            self._on_obstacles(message, captured, waypoints)

    def _write(
        self, record: dict[str, Any], captured: float | None, received: float, *, latency_ms: float | None = None
    ) -> None:
        """One results-file line: the message's fields plus when its frame was captured and it arrived."""
        if self._writer is None:
            return
        wall = time.time()
        if record["type"] == KeypointsMessage.type:
            record["latency_ms"] = None if latency_ms is None else round(latency_ms, 2)
        record["captured_at"] = None if captured is None else round(wall - (received - captured), 6)
        record["received_at"] = round(wall, 6)
        record["session"] = self._sessions
        record["drone_id"] = self._drone_id
        self._writer.write(record)

    def _waypoints(self, message: ObstaclesMessage, received: float) -> Waypoints:
        waypoints = plan_waypoints(message)
        if received - self._last_waypoint_log >= _WAYPOINT_LOG_INTERVAL_S:
            self._last_waypoint_log = received
            log.info("waypoints (pts %d): %s", message.pts, waypoints.describe())
        return waypoints
