"""Where processed frames go besides the drone: recordings, bags, live viewers.

A session hands every processed frame to one :class:`ResultSink` as a
:class:`FrameRecord`, **from a worker thread** (sinks block: they encode and
write files), and tells it when a drone leaves and when the gateway stops:

    sink = SinkSet([RecorderSink(dir), BagSink(bag_dir), FoxgloveSink(port=8765), hub])
    sink.write(FrameRecord.from_capture_time(drone_id, capture_time, camera, rgb, result))
    sink.close_drone(drone_id)       # the drone left: finish its files
    sink.close()                     # shutdown: flush and close everything

:class:`SinkSet` fans out and isolates failures: one sink raising is logged
and the others still get the frame.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ConfigError
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE, VIDEO_CLOCK_RATE, CameraMessage, KeypointsMessage

if TYPE_CHECKING:
    from dronedepth.gateway.obstacles import ObstacleProfile
    from dronedepth.gateway.outputs.recording import FaultHandler, Recorder, RecordingLimits
    from dronedepth.gateway.pipeline import FramePose

__all__ = [
    "CaptureClock",
    "FrameData",
    "FrameRecord",
    "RecorderSink",
    "ResultSink",
    "SinkSet",
]

log = logging.getLogger(__name__)

_LOG_EVERY: Final = 100
"""A sink failing on every frame is logged on its first failure and then every this many."""

T = TypeVar("T")
_MISSING: Final = object()


class FrameData(Protocol):
    """What sinks read of :class:`gateway.pipeline.FrameResult` (which satisfies it)."""

    @property
    def message(self) -> KeypointsMessage: ...
    @property
    def points(self) -> NDArray[np.float32]: ...
    @property
    def colors(self) -> NDArray[np.uint8]: ...
    @property
    def depth(self) -> NDArray[np.float32]: ...
    @property
    def depth_camera(self) -> CameraMessage | None:
        """The camera of ``depth``'s grid (a model's strided depth); None: the frame's camera, full resolution."""

    @property
    def cloud(self) -> Any:
        """The Open3D cloud or None; only :class:`RecorderSink` (its PLY files) reads it."""

    @property
    def pose(self) -> FramePose | None:
        """The body's pose at the frame (None: no pose)."""

    @property
    def obstacles(self) -> ObstacleProfile | None:
        """The frame's obstacle profile (None: none, e.g. relative depth)."""


class CaptureClock:
    """Capture times of one session's frames on the ``time.time()`` clock, from their ``pts``.

    The drone derives each frame's ``pts`` (90 kHz ticks) from its capture
    clock, and the receiver starts them at 0 (see ``drone/track.py``), so
    ``pts / 90 000`` is the time since the session's first capture, on the
    drone's clock. The gateway cannot read that clock's epoch, so it estimates
    it as the earliest ``received_wall - pts / 90 000`` seen: the frame that
    travelled fastest. Stamps keep the drone's spacing between frames exactly
    (none of the network's or decoder's jitter), are never later than the frame
    arrived, and are late by at most the fastest frame's transport time. One
    per session; not thread-safe.
    """

    def __init__(self) -> None:
        self._epoch: float | None = None

    def capture_time(self, pts: int, received_wall: float) -> float:
        """The capture time (seconds since the Unix epoch) of the frame with ``pts`` received at ``received_wall``."""
        since_first = pts / VIDEO_CLOCK_RATE
        epoch = received_wall - since_first
        if self._epoch is None or epoch < self._epoch:
            self._epoch = epoch
        return self._epoch + since_first


@dataclass(frozen=True, eq=False)
class FrameRecord:
    """One processed frame with what sinks need to describe it.

    ``stamp_ns`` is the capture time (nanoseconds since the Unix epoch, see
    :class:`CaptureClock`); the result's points are in the camera optical frame;
    ``camera`` is the intrinsics of *this* frame's size; ``rgb`` the frame
    ``(H, W, 3)`` uint8. Arrays are shared, never modified by sinks.
    """

    drone_id: str
    stamp_ns: int
    camera: CameraMessage
    rgb: NDArray[np.uint8]
    result: FrameData
    _memo: dict[object, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.drone_id, str) or not DRONE_ID_PATTERN.fullmatch(self.drone_id):
            raise ConfigError(f"drone id {self.drone_id!r} must be {DRONE_ID_RULE}")
        if self.stamp_ns < 0:
            raise ConfigError(f"stamp_ns must not be negative, got {self.stamp_ns}")

    @classmethod
    def from_capture_time(
        cls, drone_id: str, capture_time: float, camera: CameraMessage, rgb: NDArray[np.uint8], result: FrameData
    ) -> FrameRecord:
        """A record stamped with ``capture_time`` in seconds since the epoch (``time.time()`` clock)."""
        # Whole seconds and fraction apart: ``capture_time * 1e9`` exceeds float64's
        # 53-bit integer range and would be off by up to ~100 ns.
        seconds = math.floor(capture_time)
        return cls(drone_id, seconds * 1_000_000_000 + round((capture_time - seconds) * 1e9), camera, rgb, result)

    @property
    def message(self) -> KeypointsMessage:
        return self.result.message

    def memo(self, key: object, build: Callable[[], T]) -> T:
        """``build()`` once per record and key: sinks share encodings of the same frame.

        Sinks of one :class:`SinkSet` run one after the other on one thread, so
        no lock is needed.
        """
        value = self._memo.get(key, _MISSING)
        if value is _MISSING:
            value = self._memo[key] = build()
        return value


@runtime_checkable
class ResultSink(Protocol):
    """Receives processed frames; every method is called from a worker thread, never the event loop."""

    def write(self, record: FrameRecord) -> None: ...

    def close_drone(self, drone_id: str) -> None:
        """The drone left: finish its files (a later frame of the same id starts new ones)."""

    def close(self) -> None:
        """Shutdown: flush and close everything. Idempotent."""


class SinkSet:
    """Fans every call out to several sinks; a sink raising is logged, the others go on."""

    def __init__(self, sinks: Iterable[ResultSink] = ()) -> None:
        self.sinks: tuple[ResultSink, ...] = tuple(sinks)
        self._failures: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __len__(self) -> int:
        return len(self.sinks)

    def _call(self, method: str, *args: Any) -> None:
        for index, sink in enumerate(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception:
                with self._lock:
                    count = self._failures[index, method] = self._failures.get((index, method), 0) + 1
                # Traceback once; then a count, so a broken sink cannot flood the log at frame rate.
                if count == 1:
                    log.exception("%s.%s failed", type(sink).__name__, method)
                elif count % _LOG_EVERY == 0:
                    log.error("%s.%s has failed %d times", type(sink).__name__, method, count)

    def write(self, record: FrameRecord) -> None:
        if not self._closed:
            self._call("write", record)

    def close_drone(self, drone_id: str) -> None:
        self._call("close_drone", drone_id)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._call("close")

    def failures(self, sink: ResultSink) -> int:
        """How many calls to ``sink`` raised (for tests and metrics)."""
        index = self.sinks.index(sink)
        with self._lock:
            return sum(n for (i, _), n in self._failures.items() if i == index)


class RecorderSink:
    """:class:`gateway.outputs.recording.Recorder` (keypoints JSONL + periodic PLY) per drone session, as a sink.

    A drone's first frame after :meth:`close_drone` starts a new session folder.
    ``limits`` and ``on_fault`` go to every recorder (see :mod:`gateway.outputs.recording`).
    """

    def __init__(
        self,
        directory: Path | str,
        cloud_every: int = 10,
        *,
        limits: RecordingLimits | None = None,
        on_fault: FaultHandler | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.cloud_every = cloud_every
        self.limits = limits
        self.on_fault = on_fault
        self._recorders: dict[str, Recorder] = {}
        self._lock = threading.Lock()

    def _recorder(self, drone_id: str) -> Recorder:
        from dronedepth.gateway.outputs.recording import Recorder

        with self._lock:
            recorder = self._recorders.get(drone_id)
            if recorder is None:
                recorder = self._recorders[drone_id] = Recorder(
                    self.directory, drone_id, cloud_every=self.cloud_every, limits=self.limits, on_fault=self.on_fault
                )
            return recorder

    def write(self, record: FrameRecord) -> None:
        self._recorder(record.drone_id).write(record.result, stamp_ns=record.stamp_ns)  # type: ignore[arg-type]

    def close_drone(self, drone_id: str) -> None:
        with self._lock:
            recorder = self._recorders.pop(drone_id, None)
        if recorder is not None:
            recorder.close()

    def close(self) -> None:
        with self._lock:
            recorders, self._recorders = list(self._recorders.values()), {}
        for recorder in recorders:
            recorder.close()
