"""One drone's session: its peer connection, camera, frames and results.

Per drone, three tasks run on the event loop and none of them does CPU work:

- the **drain** task pulls decoded frames from the video track as fast as they
  come (aiortc queues them without bound) into a one-frame slot, so the
  newest frame wins and the frames it replaces are counted as ``superseded``;
- the **process** task takes the newest frame, converts it to RGB and runs the
  :class:`~gateway.pipeline.FrameProcessor` in the shared thread pool, awaits
  depth from the shared :class:`~gateway.inference.DepthService` in between
  (so frames of several drones are in flight together and Triton's dynamic
  batcher can merge them), and sends one ``keypoints`` message per frame.
  It holds one of the service's request slots (``--max-in-flight``) for the
  inference only, never for CPU work, so a drone with expensive frames cannot
  keep the slot from the others;
- the **watchdog** closes the session when no frame has arrived for
  ``idle_timeout`` seconds.

Fair shares of the CPU: each session awaits every job it gives the shared
thread pool before it submits the next, so a drone has at most one CPU job
queued or running at a time, and the pool's first-in first-out queue serves
the drones in turn (round robin): a drone with expensive frames waits for its
own jobs, not the others for it. The costliest per-camera work (undistorting a
ray grid) is cached by :func:`~gateway.projection.ray_grid` and bounded by
allowing each drone at most :data:`MAX_CAMERA_CHANGES` distinct cameras per
:data:`CAMERA_CHANGE_WINDOW_S` seconds.

Poses: ``pose`` messages go into the session's
:class:`~dronedepth.pose_buffer.PoseBuffer`; each frame gets the pose at its
pts (``pts / 90 kHz``), looked up once its depth is back. A frame whose pose
has not arrived yet waits for it at most the buffer's maximum gap (on the loop,
never blocking it), and only while the previous frame had a pose, so a drone
whose poses stopped costs no wait. A frame without a matching pose is processed
without one and the drone is told once (``no_pose``) until a pose matches again.

Every problem with what the drone sends gets an ``error`` message and the
session goes on. Conditions that repeat every frame (no camera yet, frame too
large, camera mismatch, inference outage) are reported once until they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from numpy.typing import NDArray

from dronedepth import protocol
from dronedepth.errors import InferenceError, InferenceTimeout, InferenceUnavailable, ProtocolError
from dronedepth.gateway.config import GatewayConfig
from dronedepth.gateway.frame_rate import FleetShare, FrameRateAdvisor
from dronedepth.gateway.inference import DepthService
from dronedepth.gateway.logthrottle import LogThrottle
from dronedepth.gateway.metrics import GatewayMetrics
from dronedepth.gateway.outputs.sinks import CaptureClock, FrameRecord
from dronedepth.gateway.pipeline import DetectedKeypoints, FramePose, FrameProcessor, FrameResult, ProcessingConfig
from dronedepth.gateway.receiver import FrameSizeGate
from dronedepth.gateway.receiver import install as install_receiver
from dronedepth.gateway.scaling import SessionScale
from dronedepth.pose_buffer import PoseBuffer, PoseMatch, TimedPose
from dronedepth.protocol import (
    VIDEO_CLOCK_RATE,
    AnchorsMessage,
    CameraMessage,
    ErrorMessage,
    KeypointsMessage,
    PoseMessage,
)

if TYPE_CHECKING:
    from dronedepth.gateway.mapping import MapService
    from dronedepth.gateway.obstacles import ObstacleProfile
    from dronedepth.gateway.outputs.sinks import ResultSink

__all__ = ["DroneSession", "LatestFrame", "SessionContext"]

log = logging.getLogger(__name__)
_camera_log = LogThrottle(log)
"""A drone that changes its camera in a loop logs one line per 10 s, with the count."""

NO_CAMERA_GRACE_S = 1.0
"""Seconds after the data channel opens before frames without a camera get the ``no_camera`` error."""
MAX_CAMERA_CHANGES = 4
"""Distinct cameras a drone may set per :data:`CAMERA_CHANGE_WINDOW_S` (each may cost a new ray grid)."""
CAMERA_CHANGE_WINDOW_S = 10.0
INVALID_POSE_REPORT_S = 1.0
"""At most one ``invalid_pose`` (or ``invalid_anchors``) error per this many seconds (a drone streaming bad
poses or rangefinder readings at 50 Hz)."""
_RATE_LIMITED_NOUNS = {protocol.INVALID_POSE: "invalid poses", protocol.INVALID_ANCHORS: "invalid anchors messages"}
_WAIT_FOR_POSE = ("ahead", "extrapolated")
"""Lookups that a pose arriving a little later turns into a better (or any) match."""

# Drop reasons (the ``reason`` label of dronedepth_frames_dropped_total).
SUPERSEDED = "superseded"
NO_CAMERA = "no_camera"
FRAME_TOO_LARGE = "frame_too_large"
INFERENCE_UNAVAILABLE = "inference_unavailable"
INFERENCE_OVERLOADED = "inference_overloaded"
INFERENCE_TIMEOUT = "inference_timeout"
INFERENCE_ERROR = "inference_error"
PROCESSING_ERROR = "processing_error"
SEND_BACKLOG = "send_backlog"
SEND_FAILED = "send_failed"
SESSION_CLOSED = "session_closed"


@dataclass(frozen=True, slots=True)
class _Received:
    frame: VideoFrame
    index: int
    """0-based index of the frame among those this session decoded."""
    received_at: float
    """``time.monotonic()`` when the drain task took it from the track."""
    received_wall: float
    """The same instant on the ``time.time()`` clock."""


_BT601_COLORSPACES = frozenset({2, 5, 6})
"""FFmpeg's AVCOL_SPC unspecified (libswscale then assumes BT.601), BT470BG and SMPTE170M (both BT.601)."""
_LIMITED_RANGES = frozenset({0, 1})
"""FFmpeg's AVCOL_RANGE unspecified and MPEG (limited: Y in 16..235)."""


def _rgb24(frame: VideoFrame) -> NDArray[np.uint8]:
    """The frame as packed RGB, uint8 ``(H, W, 3)``.

    Decoded video is I420 (VP8 always, BT.601 limited range): OpenCV converts
    its planes in ~0.13 ms at 640x480, where av's ``to_ndarray("rgb24")``
    (libswscale, set up anew for each frame) takes ~0.6 ms; the two differ by
    ~1 level per channel (99.9 % within 3; up to ~12 on a few colour edges, where they upsample chroma
    apart). Other formats, sizes and colour spaces go through av.
    """
    if (
        frame.format.name == "yuv420p"
        and frame.width % 2 == 0
        and frame.height % 2 == 0
        and frame.colorspace in _BT601_COLORSPACES
        and frame.color_range in _LIMITED_RANGES
    ):
        return np.asarray(cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420), dtype=np.uint8)
    return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def _finish_frame(
    processor: FrameProcessor,
    rgb: Any,
    depth: Any,
    camera: CameraMessage,
    item: _Received,
    timing: dict[str, float],
    inferred: float,
    pose: FramePose | None,
    captured: float,
    scaling: SessionScale,
    anchors: AnchorsMessage | None,
    detected: DetectedKeypoints | None,
) -> tuple[FrameResult, str, str | None]:
    """Worker-thread part of a frame after inference: scale, process, complete the timing, encode.

    Returns the result, the encoded ``keypoints`` and the encoded ``obstacles`` (None without metric depth).
    """
    pts = int(item.frame.pts or 0)
    started = time.perf_counter()
    scale = scaling.frame(depth, processor.depth_kind, camera, pts, pose, anchors)
    if scale is not None:
        timing["scale"] = (time.perf_counter() - started) * 1e3
    result = processor.process(
        rgb, depth, camera, pts=pts, frame_index=item.index, timing=timing, pose=pose, scale=scale, detected=detected
    )
    obstacles = None
    if result.obstacles is not None:
        obstacles = protocol.encode(result.obstacles.to_message(pts, captured, item.index))
    done = time.monotonic()
    timing = {**result.message.timing, **timing}
    timing["processing"] = (done - inferred) * 1e3
    timing["total"] = (done - item.received_at) * 1e3
    message = dataclasses.replace(result.message, timing=timing)
    return dataclasses.replace(result, message=message), protocol.encode(message), obstacles


def _write_record(
    sink: ResultSink,
    drone_id: str,
    capture_time: float,
    camera: CameraMessage,
    rgb: Any,
    result: FrameResult,
) -> None:
    """Worker-thread part of handing a frame to the sink."""
    sink.write(FrameRecord.from_capture_time(drone_id, capture_time, camera, rgb, result))


class LatestFrame:
    """A slot holding only the newest item *waiting* for the consumer: ``put`` replaces, ``get`` waits for one.

    An item put while the consumer waits in :meth:`get` is handed to it at
    once, not left in the slot until the consumer's task runs: it is being
    processed, not waiting, so an item put just after it (a frame held behind
    a repaired packet loss comes out of the receiver together with its
    successor) waits in the slot instead of replacing it. An item is replaced
    only when a newer one comes while it waits for a busy consumer: at most
    one in hand and one waiting, never a queue.
    """

    def __init__(self) -> None:
        self._item: Any = None
        self._waiter: asyncio.Future[Any] | None = None

    def put(self, item: Any) -> bool:
        """Store ``item`` (or hand it to a waiting :meth:`get`); True when it replaced one that was never taken."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
            return False
        replaced = self._item is not None
        self._item = item
        return replaced

    async def get(self) -> Any:
        if self._item is not None:
            item, self._item = self._item, None
            return item
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    def peek(self) -> Any:
        """The waiting item, left in the slot, or None."""
        return self._item

    def clear(self) -> bool:
        had = self._item is not None
        self._item = None
        return had


@dataclass
class SessionContext:
    """What every session shares, owned by :class:`gateway.server.Gateway`."""

    config: GatewayConfig
    depth: DepthService
    executor: Executor
    metrics: GatewayMetrics
    make_processor: Callable[[str], FrameProcessor]
    """``depth_kind`` → a new FrameProcessor."""
    on_closed: Callable[[DroneSession], None] | None = None
    sink: ResultSink | None = None
    """Gets every processed frame and ``close_drone`` when the session ends (called in the executor).

    The gateway's :class:`~gateway.sinks.SinkSet`: recordings, bags, live
    viewers all go through it."""
    world_map: MapService | None = None
    """The world map (``--map``): gets each frame after its keypoints, completes its obstacles to 360°."""
    fleet_share: FleetShare | None = None
    """The drones' rates processed, for fair frame-rate advice (one per gateway process)."""


class DroneSession:
    """The gateway's side of one drone connection.

    Create it with the peer connection *before* applying the drone's offer (so
    the ``track`` and ``datachannel`` events are caught), then call
    :meth:`start`. :meth:`close` is idempotent and releases everything.
    """

    def __init__(self, drone_id: str, pc: RTCPeerConnection, context: SessionContext, *, remote: str = "?") -> None:
        self.drone_id = drone_id
        self.pc = pc
        self.remote = remote
        self._ctx = context
        self._config = context.config
        self._metrics = context.metrics
        self.camera: CameraMessage | None = None
        self.channel: RTCDataChannel | None = None
        self._channel_opened_at: float | None = None
        self.created_at = time.monotonic()
        self._last_frame_at = self.created_at
        self._slot = LatestFrame()
        self._capture_clock = CaptureClock()
        self._poses = PoseBuffer(max_gap_s=context.config.pose_max_gap)
        self._pose_frame_id: str | None = None
        self._pose_arrived = asyncio.Event()
        self._newest_frame_s: float | None = None
        """pts time (seconds) of the newest frame received: poses far beyond it are refused."""
        self._last_frame_had_pose = False
        self._refusal_reported_at: dict[str, float] = {}
        self._refusals_unreported: Counter[str] = Counter()
        self._scale = SessionScale(
            context.config.scale,
            correct=context.config.scale_correct,
            max_gap_s=context.config.pose_max_gap,
            min_disparity=(context.config.processing or ProcessingConfig()).min_disparity,
        )
        advice = context.config.frame_rate_advice
        self._frame_rate = None if advice is None else FrameRateAdvisor(advice, context.fleet_share, drone_id)
        self._tasks: set[asyncio.Task[None]] = set()
        self._video_track: MediaStreamTrack | None = None
        self._processor: FrameProcessor | None = None
        self._processor_kind: str | None = None
        self._frame_cameras: dict[tuple[int, int], CameraMessage] = {}
        self._camera_changes: deque[float] = deque(maxlen=MAX_CAMERA_CHANGES)
        """``time.monotonic()`` of the latest accepted camera changes."""
        self._sink_write: Future[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self.close_reason: str | None = None
        # Conditions reported once until they change.
        self._told_no_camera = False
        self._told_too_large: tuple[int, int] | None = None
        self._told_mismatch = False
        self._told_camera_rate = False
        self._told_inference_error = False
        self._told_internal = False
        self._told_send_failed = False
        self._told_no_pose = False
        self._degraded = False
        self._outage_drops = 0
        # Counts.
        self.frames_received = 0
        self.frames_processed = 0
        self._gateway_ms_sum = 0.0
        """The processed frames' times in the gateway (``timing.total``), summed: the advice's latency."""
        self.dropped: Counter[str] = Counter()
        self.messages_received = 0
        self.errors_sent: Counter[str] = Counter()
        self.last_timing: dict[str, float] = {}
        self.poses_received = 0
        self.frames_with_pose = 0
        self.last_pose_match = "none"
        """The pose lookup status of the latest processed frame (``none`` before any frame)."""
        self.nearest_obstacle_m: float | None = None
        """Nearest obstacle distance of the latest ``obstacles`` message (None: none seen or no message)."""
        self.last_obstacles: tuple[ObstacleProfile, float] | None = None
        """The latest profile sent and its frame's capture time (Unix s), for the operator page's staleness."""
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    def __repr__(self) -> str:
        return f"DroneSession({self.drone_id!r}, state={self.pc.connectionState})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the processing and watchdog tasks (the drain starts with the video track)."""
        self._spawn(self._process_loop(), "process")
        self._spawn(self._watchdog(), "watchdog")
        if self._frame_rate is not None:
            self._spawn(self._advise_frame_rate(self._frame_rate), "frame rate")

    @property
    def closed(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"drone-{self.drone_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("drone %s: task %s failed: %r", self.drone_id, task.get_name(), exc, exc_info=exc)
            self.schedule_close("internal error")

    def schedule_close(self, reason: str) -> None:
        """Close from a callback (a task is spawned; the gateway tracks it through ``on_closed``)."""
        if not self._closing:
            task = asyncio.get_running_loop().create_task(self.close(reason), name=f"drone-{self.drone_id}-close")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self, reason: str = "closed") -> None:
        """Stop the tasks, close the peer connection, tell the sink the drone left, log a summary."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and t.get_name() != f"drone-{self.drone_id}-close"]
        for task in tasks:
            task.cancel()
        timeout = self._config.shutdown_timeout
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
        except TimeoutError:
            log.warning("drone %s: tasks did not stop within %.0f s", self.drone_id, timeout)
        if self._slot.clear():
            self._drop(SESSION_CLOSED)
        if self._frame_rate is not None:
            self._frame_rate.close()
        try:
            await asyncio.wait_for(self.pc.close(), timeout)
        except Exception as exc:
            log.warning("drone %s: closing the peer connection: %r", self.drone_id, exc)
        if self._ctx.sink is not None:
            await self._close_sink(timeout)
        self._processor = None
        self._frame_cameras.clear()
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        log.info(
            "drone %s disconnected (%s) after %.0f s: %d frames received, %d processed, dropped: %s",
            self.drone_id,
            reason,
            time.monotonic() - self.created_at,
            self.frames_received,
            self.frames_processed,
            dropped,
        )
        self._metrics.sessions_closed.inc(reason=reason.split(":")[0])
        if self._ctx.world_map is not None:
            self._ctx.world_map.forget(self.drone_id)
        self._closed.set()
        if self._ctx.on_closed is not None:
            self._ctx.on_closed(self)

    # ------------------------------------------------------------------ aiortc events

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("drone %s: connection %s", self.drone_id, state)
        if state == "connected":
            log.info("drone %s connected from %s", self.drone_id, self.remote)
        elif state in ("failed", "closed"):
            self.schedule_close(f"connection {state}")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._video_track is None:
            self._video_track = track
            self._install_receiver(track)
            self._spawn(self._drain(track), "drain")
        else:
            # aiortc queues every decoded frame of every track: consume the ones we do not use.
            log.info("drone %s: ignoring an extra %s track", self.drone_id, track.kind)
            self._spawn(self._discard(track), f"discard-{track.kind}")

    def _install_receiver(self, track: MediaStreamTrack) -> None:
        """Frames of ``track`` go to the decoder at their last packet, and only if their size is allowed."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track:
                gate = FrameSizeGate(self._config.max_frame_pixels, self._refuse_too_large)
                install_receiver(transceiver.receiver, gate=gate)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != protocol.DATA_CHANNEL_LABEL or self.channel is not None:
            log.info("drone %s: ignoring data channel %r", self.drone_id, channel.label)
            return
        self.channel = channel
        self._channel_opened_at = time.monotonic()
        channel.on("message", self._on_message)

    # ------------------------------------------------------------------ data channel

    def _on_message(self, data: str | bytes) -> None:
        self.messages_received += 1
        self._metrics.messages_received.inc()
        try:
            self._handle_message(data)
        except Exception as exc:
            # A message fails alone: an exception escaping here would kill the data channel's transport.
            log.exception("drone %s: message could not be handled", self.drone_id)
            self._refuse_message(protocol.INTERNAL, f"message could not be handled: {exc!r}")

    def _handle_message(self, data: str | bytes) -> None:
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size > protocol.MAX_MESSAGE_BYTES:
            self._refuse_message(
                protocol.MESSAGE_TOO_LARGE,
                f"message of {size} bytes exceeds the limit of {protocol.MAX_MESSAGE_BYTES} bytes",
            )
            return
        try:
            message = protocol.decode(data, accept=(CameraMessage.type, PoseMessage.type, AnchorsMessage.type))
        except ProtocolError as exc:
            if exc.code in _RATE_LIMITED_NOUNS:
                self._refuse_limited(exc.code, exc.message)
            else:
                self._refuse_message(exc.code, exc.message)
            return
        if isinstance(message, PoseMessage):
            self._add_pose(message)
            return
        if isinstance(message, AnchorsMessage):
            # Refused ones never get here: the estimate keeps its last good state.
            self._scale.add_anchors(message)
            return
        assert isinstance(message, CameraMessage)
        if message != self.camera and not self._camera_change_allowed():
            return
        self.set_camera(message)

    def _add_pose(self, message: PoseMessage) -> None:
        """Store a pose (already ENU/FLU) for the frames to come; a refused one gets ``invalid_pose``."""
        if message.frame_id != self._pose_frame_id:
            if self._pose_frame_id is not None:
                log.info("drone %s: poses now in %r, not %r", self.drone_id, message.frame_id, self._pose_frame_id)
            # Poses of two worlds never mix: a change of world starts the buffer afresh.
            self._poses.clear()
            self._pose_frame_id = message.frame_id
        sample = TimedPose(
            message.time_s,
            message.world_from_body,
            message.height_above_ground,
            None if message.velocity is None else np.array(message.velocity, dtype=np.float64),
        )
        try:
            self._poses.add(sample, reference_s=self._newest_frame_s)
        except ProtocolError as exc:
            self._refuse_limited(protocol.INVALID_POSE, exc.message)
            return
        self.poses_received += 1
        self._pose_arrived.set()

    def _refuse_limited(self, code: str, text: str) -> None:
        """``invalid_pose`` / ``invalid_anchors``, rate-limited per code: the first of a burst at once, then one
        per second with the count."""
        self._metrics.messages_refused.inc(reason=code)
        now = time.monotonic()
        if now - self._refusal_reported_at.get(code, -math.inf) < INVALID_POSE_REPORT_S:
            self._refusals_unreported[code] += 1
            return
        if unreported := self._refusals_unreported[code]:
            text = f"{text} ({unreported} more {_RATE_LIMITED_NOUNS[code]} since the last report)"
        if self.send_error(code, text):
            self._refusal_reported_at[code] = now
            self._refusals_unreported[code] = 0

    def _refuse_message(self, code: str, text: str) -> None:
        self._metrics.messages_refused.inc(reason=code)
        self.send_error(code, text)

    def _camera_change_allowed(self) -> bool:
        """Count a change of camera; False (reported once per burst) past the rate limit, keeping the camera."""
        now = time.monotonic()
        changes = self._camera_changes
        if len(changes) == MAX_CAMERA_CHANGES and now - changes[0] < CAMERA_CHANGE_WINDOW_S:
            self._metrics.camera_changes_refused.inc()
            self._metrics.messages_refused.inc(reason=protocol.CAMERA_RATE_LIMITED)
            if not self._told_camera_rate:
                self._told_camera_rate = self.send_error(
                    protocol.CAMERA_RATE_LIMITED,
                    f"more than {MAX_CAMERA_CHANGES} different cameras in {CAMERA_CHANGE_WINDOW_S:.0f} s: "
                    "this one is ignored and the previous camera stays in use",
                )
            return False
        changes.append(now)
        self._told_camera_rate = False
        return True

    def set_camera(self, camera: CameraMessage) -> None:
        """Use ``camera`` for the frames that follow."""
        if camera == self.camera:
            return
        self.camera = camera
        self._frame_cameras.clear()
        self._told_mismatch = False
        distortion = f", distortion {list(camera.distortion)}" if camera.has_distortion else ""
        _camera_log.log(
            logging.INFO,
            self.drone_id,
            "drone %s: camera %dx%d %s fx=%.1f fy=%.1f cx=%.1f cy=%.1f%s",
            self.drone_id,
            camera.width,
            camera.height,
            camera.model,
            camera.fx,
            camera.fy,
            camera.cx,
            camera.cy,
            distortion,
        )

    def _send(self, text: str) -> bool:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        try:
            channel.send(text)
        except ValueError as exc:  # larger than the drone's SCTP max-message-size
            if not self._told_send_failed:
                self._told_send_failed = True
                log.warning("drone %s: cannot send a %d-byte message: %s", self.drone_id, len(text), exc)
            return False
        except Exception as exc:  # the channel closed underneath us
            log.debug("drone %s: cannot send: %r", self.drone_id, exc)
            return False
        return True

    def send_error(self, code: str, message: str) -> bool:
        """Send an ``error`` message; False when the data channel is not open."""
        sent = self._send(protocol.encode(ErrorMessage(code=code, message=message)))
        if sent:
            self.errors_sent[code] += 1
            self._metrics.errors_sent.inc(code=code)
        log.debug("drone %s: error %s: %s (sent: %s)", self.drone_id, code, message, sent)
        return sent

    # ------------------------------------------------------------------ frames

    async def _discard(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            return

    async def _drain(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, VideoFrame):  # a video track yields frames; a packet has no image
                    continue
                now = time.monotonic()
                self._last_frame_at = now
                item = _Received(frame=frame, index=self.frames_received, received_at=now, received_wall=time.time())
                frame_s = (frame.pts or 0) / VIDEO_CLOCK_RATE
                if self._newest_frame_s is None or frame_s > self._newest_frame_s:
                    self._newest_frame_s = frame_s
                self.frames_received += 1
                self._metrics.frames_received.inc()
                if self._slot.put(item):
                    self._drop(SUPERSEDED)
        except MediaStreamError:
            log.debug("drone %s: video track ended", self.drone_id)

    async def _watchdog(self) -> None:
        idle = self._config.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            quiet = time.monotonic() - self._last_frame_at
            if quiet > idle:
                await self.close(f"idle: no video for {quiet:.0f} s")
                return

    async def _advise_frame_rate(self, advisor: FrameRateAdvisor) -> None:
        """Once a period, tell the drone the most frames per second worth sending (see :mod:`gateway.frame_rate`)."""
        while True:
            await asyncio.sleep(advisor.config.period_s)
            channel = self.channel
            if channel is None or channel.readyState != "open":
                continue  # advice nobody can hear would only be believed to be in force
            message = advisor.update(
                time.monotonic(),
                self.frames_received,
                self.frames_processed,
                self.dropped[SUPERSEDED],
                self._gateway_ms_sum,
            )
            if message is not None and self._send(protocol.encode(message)):
                log.debug("drone %s: frame rate advised: %s fps", self.drone_id, message.max_fps or "no limit")

    def _refuse_too_large(self, width: int, height: int) -> None:
        """Drop a frame over ``max_frame_pixels`` (by the receiver's gate, else once decoded); tell once a size."""
        self._last_frame_at = time.monotonic()  # refused video is still video: not an idle drone
        self._drop(FRAME_TOO_LARGE)
        if self._told_too_large != (width, height) and self.send_error(
            protocol.FRAME_TOO_LARGE,
            f"frame of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{self._config.max_frame_pixels} pixels; frames this large are dropped",
        ):
            self._told_too_large = (width, height)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self._metrics.frames_dropped.inc(reason=reason)

    async def _process_loop(self) -> None:
        while True:
            item: _Received = await self._slot.get()
            try:
                await self._process(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Fail this frame, not the session.
                self._drop(PROCESSING_ERROR)
                if not self._told_internal:
                    log.exception("drone %s: frame %d failed", self.drone_id, item.index)
                    self._told_internal = self.send_error(
                        protocol.INTERNAL, f"frame {item.index} could not be processed: {exc}"
                    )

    def _frame_camera(self, width: int, height: int) -> CameraMessage | None:
        """The camera for a frame of this size, or None (reported once) when it does not fit."""
        assert self.camera is not None
        key = (width, height)
        cached = self._frame_cameras.get(key)
        if cached is not None:
            return cached
        try:
            camera = self.camera.scaled(width, height)
        except ProtocolError as exc:
            self._drop(protocol.CAMERA_MISMATCH)
            if not self._told_mismatch:
                self._told_mismatch = self.send_error(exc.code, exc.message)
            return None
        if len(self._frame_cameras) > 8:
            self._frame_cameras.clear()
        self._frame_cameras[key] = camera
        return camera

    def _processor_for(self, depth_kind: str) -> FrameProcessor:
        if self._processor is None or self._processor_kind != depth_kind:
            self._processor = self._ctx.make_processor(depth_kind)
            self._processor_kind = depth_kind
        return self._processor

    async def _process(self, item: _Received) -> None:
        frame = item.frame
        width, height = frame.width, frame.height
        if self.camera is None:
            self._drop(NO_CAMERA)
            # Video flows before the data channel opens, so the first frames of every session come
            # before its camera message: only tell a drone whose camera is late once its channel is open.
            opened = self._channel_opened_at
            if not self._told_no_camera and opened is not None and time.monotonic() - opened >= NO_CAMERA_GRACE_S:
                self._told_no_camera = self.send_error(
                    protocol.NO_CAMERA,
                    "frames are not processed until a 'camera' message gives the intrinsics",
                )
            return
        if width * height > self._config.max_frame_pixels:
            self._refuse_too_large(width, height)  # a size the receiver's gate could not read (unreadable SPS)
            return
        camera = self._frame_camera(width, height)
        if camera is None:
            return

        loop = asyncio.get_running_loop()
        executor = self._ctx.executor
        started = time.monotonic()
        rgb = await loop.run_in_executor(executor, _rgb24, frame)
        converted = time.monotonic()
        processor = self._processor_for(self._ctx.depth.depth_kind)
        detecting: Future[DetectedKeypoints] | None = None
        depth: NDArray[np.float32] | None = None
        try:
            # The request slot is held for the inference alone: CPU work never keeps it from other drones.
            admission_asked = time.monotonic()
            async with self._ctx.depth.admission():
                newer: _Received | None = self._slot.peek()
                if newer is not None and newer.received_at > admission_asked:
                    # A frame that arrived while this one waited for a request slot makes it stale: the newer
                    # one is processed instead. One that arrived during this frame's conversion does not: this
                    # frame is being processed, not waiting, and the newer one waits its turn in the slot.
                    self._drop(SUPERSEDED)
                    return
                if self._ctx.depth.available:  # in an outage the request fails at once: detect only for a result
                    # Keypoints need only the image: a worker detects them while the depth request is in flight.
                    detecting = executor.submit(processor.detect_keypoints, rgb)
                depth = await self._ctx.depth.infer(rgb)
        except InferenceUnavailable as exc:
            if self._ctx.depth.available:  # a busy server rejected this one frame: no outage to report
                self._drop(INFERENCE_TIMEOUT if isinstance(exc, InferenceTimeout) else INFERENCE_OVERLOADED)
                return
            self._drop(INFERENCE_UNAVAILABLE)
            if not self._degraded:
                self._degraded = True
                self._outage_drops = self.dropped[INFERENCE_UNAVAILABLE] - 1
                log.info("drone %s: depth unavailable, dropping its frames until it is back", self.drone_id)
                self.send_error(
                    protocol.INFERENCE_UNAVAILABLE,
                    f"depth inference is unavailable, frames are dropped until it is back: {exc}",
                )
            return
        except InferenceError as exc:
            self._drop(INFERENCE_ERROR)
            if not self._told_inference_error:
                self._told_inference_error = self.send_error(protocol.INTERNAL, f"depth inference failed: {exc}")
            return
        finally:
            if depth is None and detecting is not None:
                detecting.cancel()  # no depth, no result: a detection under way ends on its worker, unheard
        inferred = time.monotonic()
        self._told_inference_error = False
        if self._degraded:
            self._degraded = False
            lost = self.dropped[INFERENCE_UNAVAILABLE] - self._outage_drops
            log.info("drone %s: depth is back, results resume (%d frames dropped meanwhile)", self.drone_id, lost)
            self.send_error(
                protocol.INFERENCE_RESUMED, f"depth inference is back; results resume ({lost} frames dropped)"
            )

        timing = {
            "queue": (started - item.received_at) * 1e3,
            "convert": (converted - started) * 1e3,
            "inference": (inferred - converted) * 1e3,
        }
        pose = await self._frame_pose(item)
        anchors = self._scale.take_anchors(int(item.frame.pts or 0))
        # Stamped with the drone's capture clock (the frame's pts), not this frame's arrival.
        captured = self._capture_clock.capture_time(int(item.frame.pts or 0), item.received_wall)
        detected = None
        # A detection no worker has started yet (they are all busy: the gateway is saturated) is done with the
        # rest of the frame instead: waiting for it, then for the rest, would queue the frame twice.
        if detecting is not None and not detecting.cancel():
            detected = await asyncio.wrap_future(detecting)
        # The first answer may reveal the depth kind (a model's metadata): the processor follows it.
        processor = self._processor_for(self._ctx.depth.depth_kind)
        work = functools.partial(
            _finish_frame,
            processor,
            rgb,
            depth,
            camera,
            item,
            timing,
            inferred,
            pose,
            captured,
            self._scale,
            anchors,
            detected,
        )
        result, text, obstacles = await loop.run_in_executor(executor, work)
        message = result.message
        self._told_internal = False
        delivered = self._deliver(message, text)
        if delivered and self._ctx.world_map is not None:
            obstacles = await self._with_world_map(self._ctx.world_map, result, camera, captured, item, obstacles)
        if delivered and obstacles is not None and result.obstacles is not None:
            self._send(obstacles)
            ranges = result.obstacles.distances_m[result.obstacles.distances_m >= 0]  # not free, not no data
            self.nearest_obstacle_m = float(ranges.min()) if len(ranges) else None
            self.last_obstacles = (result.obstacles, captured)
        if (
            delivered
            and self._ctx.world_map is not None
            and (local_map := self._ctx.world_map.take_local_map(self.drone_id))
        ):
            self._send(local_map)
        for stage, ms in message.timing.items():
            self._metrics.stage_seconds.observe(ms / 1e3, stage=stage)
        if self._ctx.sink is not None:
            await self._to_sink(captured, camera, rgb, result)

    async def _with_world_map(
        self,
        world_map: MapService,
        result: FrameResult,
        camera: CameraMessage,
        captured: float,
        item: _Received,
        obstacles: str | None,
    ) -> str | None:
        """Hand the frame to the map (never waits) and complete its obstacles to 360° from the map.

        Returns the encoded ``obstacles`` to send: the merged profile (in a
        worker thread; ``result.obstacles`` becomes it, so the outputs see it
        too), or ``obstacles`` unchanged when there is nothing to merge.
        """
        world_map.submit(
            self.drone_id,
            result.depth,
            result.depth_camera or camera,
            result.message.camera_pose,
            metric=result.message.depth_kind == "metric",
            stamp=captured,
        )
        pose = result.pose
        if result.obstacles is None or pose is None or self._processor is None:
            return obstacles
        obstacle_config = self._processor.config.obstacles
        assert obstacle_config is not None  # the profile exists
        work = functools.partial(
            world_map.surround, self.drone_id, result.obstacles, pose.body, pose.frame_id, obstacle_config
        )
        merged = await asyncio.get_running_loop().run_in_executor(self._ctx.executor, work)
        if merged is result.obstacles:
            return obstacles
        result.obstacles = merged
        return protocol.encode(merged.to_message(int(item.frame.pts or 0), captured, item.index))

    async def _frame_pose(self, item: _Received) -> FramePose | None:
        """The body's pose at the frame's pts, waiting at most the maximum gap for one still on its way."""
        t = int(item.frame.pts or 0) / VIDEO_CLOCK_RATE
        match = self._poses.lookup(t)
        if self._last_frame_had_pose and match.status in _WAIT_FOR_POSE:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._poses.max_gap_s
            while match.status in _WAIT_FOR_POSE and (remaining := deadline - loop.time()) > 0:
                self._pose_arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pose_arrived.wait(), remaining)
                match = self._poses.lookup(t)
        self.last_pose_match = match.status
        if match.pose is not None:
            assert self._pose_frame_id is not None
            self._last_frame_had_pose = True
            self._told_no_pose = False
            self.frames_with_pose += 1
            return FramePose(self._pose_frame_id, match.status, match.pose)
        self._last_frame_had_pose = False
        if match.status != "empty" and not self._told_no_pose:  # a drone that never sent a pose is not told
            self._told_no_pose = self.send_error(protocol.NO_POSE, self._no_pose_reason(item.index, t, match))
        return None

    def _no_pose_reason(self, index: int, t: float, match: PoseMatch) -> str:
        gap = self._poses.max_gap_s
        why = {
            "ahead": f"the newest pose is {match.nearest_s:.3f} s older than the frame",
            "behind": f"the frame is {match.nearest_s:.3f} s older than the oldest pose kept",
            "gap": "the poses either side of the frame are too far apart",
        }[match.status]
        return (
            f"frame {index} at {t:.3f} s is processed without a pose: {why} (maximum gap {gap:g} s); "
            "results carry no world_from_camera and obstacles are not gravity-aligned until poses match again"
        )

    def _deliver(self, message: KeypointsMessage, text: str) -> bool:
        """Send a frame's keypoints; False (the frame counted as dropped) when they could not go."""
        channel = self.channel
        if channel is not None and channel.bufferedAmount > self._config.data_channel_buffer_bytes:
            self._drop(SEND_BACKLOG)
            return False
        if not self._send(text):
            self._drop(SESSION_CLOSED if self._closing else SEND_FAILED)
            return False
        self.frames_processed += 1
        self._gateway_ms_sum += message.timing.get("total", 0.0)
        self.last_timing = dict(message.timing)
        self._metrics.frames_processed.inc()
        if self.frames_processed == 1:
            log.info(
                "drone %s: first keypoints: %d points from a %dx%d frame, depth %s, %.0f ms",
                self.drone_id,
                len(message.points),
                message.width,
                message.height,
                message.depth_kind,
                message.timing.get("total", 0.0),
            )
        return True

    async def _to_sink(self, captured: float, camera: CameraMessage, rgb: Any, result: FrameResult) -> None:
        """Hand the frame to the sink in a worker thread; the next frame waits for it (sinks never queue up)."""
        sink = self._ctx.sink
        assert sink is not None
        # The record shares the frame's arrays (the sinks only read them): nothing is copied.
        work = functools.partial(_write_record, sink, self.drone_id, captured, camera, rgb, result)
        future = self._sink_write = self._ctx.executor.submit(work)
        # SinkSet isolates and logs its sinks' failures; a bare sink's are logged here.
        try:
            await asyncio.wrap_future(future)
        except Exception:
            log.exception("drone %s: result sink failed", self.drone_id)

    async def _close_sink(self, timeout: float) -> None:
        """``close_drone`` once the last ``write`` has returned, so no frame of this session comes after it."""
        sink = self._ctx.sink
        assert sink is not None
        loop = asyncio.get_running_loop()
        pending, self._sink_write = self._sink_write, None
        try:
            if pending is not None and not pending.done():  # cancelling the task did not stop the worker
                await asyncio.wait([asyncio.wrap_future(pending)], timeout=timeout)
            await asyncio.wait_for(loop.run_in_executor(self._ctx.executor, sink.close_drone, self.drone_id), timeout)
        except Exception as exc:
            log.error("drone %s: closing its outputs failed: %r", self.drone_id, exc)

    # ------------------------------------------------------------------ metrics

    def snapshot(self) -> dict[str, Any]:
        """Counts and state, for /metrics and tests."""
        return {
            "drone_id": self.drone_id,
            "state": self.pc.connectionState,
            "camera": self.camera is not None,
            "frames_received": self.frames_received,
            "frames_processed": self.frames_processed,
            "dropped": dict(self.dropped),
            "errors_sent": dict(self.errors_sent),
            "last_timing": dict(self.last_timing),
            "pose": {
                "received": self.poses_received,
                "frames_with_pose": self.frames_with_pose,
                "match": self.last_pose_match,
                "frame_id": self._pose_frame_id,
            },
            "nearest_obstacle_m": self.nearest_obstacle_m,
            "advised_fps": None if self._frame_rate is None else self._frame_rate.advised_fps,
            "scale": self._scale.snapshot(),
        }
