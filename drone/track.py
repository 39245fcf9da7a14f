"""The WebRTC video track that pulls frames from a :class:`~drone.sources.FrameSource`.

Timing contract with the gateway: aiortc's receiver maps the first frame it
receives to ``pts`` 0, so this track starts at ``pts`` 0 with time base
1/90000 and derives every later ``pts`` from the source's capture clock
(strictly increasing). It remembers each frame's capture time by ``pts`` so a
``keypoints`` message, which echoes the ``pts``, can be matched to its frame.
One track serves one peer connection: a reconnection makes a new track and so
restarts at ``pts`` 0, as the new receiver does.
"""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Final

import cv2
import numpy as np
from aiortc import VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from numpy.typing import NDArray

from dronedepth.drone.sources import CapturedFrame, FrameSource
from dronedepth.protocol import VIDEO_CLOCK_RATE

__all__ = ["SourceTrack"]

TIME_BASE: Final = fractions.Fraction(1, VIDEO_CLOCK_RATE)
_PTS_STEP: Final = 90
"""pts are whole milliseconds (90 ticks): they survive the receiver's decoder time-base round trip exactly."""
_MAX_REMEMBERED: Final = 4096
"""Capture times kept for frames still waiting for a result (minutes of video at 15 fps)."""


def _encoder_frame(rgb: NDArray[np.uint8]) -> VideoFrame:
    """An RGB image as the encoder's input frame: planar YUV 4:2:0 when both sides are even.

    The VP8 and H.264 encoders take yuv420p and would convert an rgb24 frame
    with swscale (about 2.3 ms at 640×480 here, on the capture-to-gateway
    path); OpenCV's SIMD conversion gives the same BT.601 limited-range
    planes in about 0.3 ms. Odd sizes have no 4:2:0 layout there: they go as
    rgb24 and the encoder converts them.
    """
    height, width = rgb.shape[:2]
    if height % 2 or width % 2:
        return VideoFrame.from_ndarray(rgb, format="rgb24")
    i420 = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), dtype=np.uint8)  # (H·3/2, W): Y, then U, V
    return VideoFrame.from_ndarray(i420, format="yuv420p")


class SourceTrack(VideoStreamTrack):
    """Sends ``source``'s frames at ``fps``, never blocking the event loop.

    - ``executor`` runs the blocking :meth:`FrameSource.read` (use one thread,
      since sources are not thread-safe);
    - ``start`` (optional) holds the first frame back until it is set (the
      client sets it once the ``camera`` message is sent);
    - ``may_continue`` (optional) is asked before each frame; ``False`` ends
      the track (a frame budget);
    - ``on_frame(pts, frame)`` (optional) is called for each frame before it
      goes to the encoder.
    - ``on_repeat(pts, frame)`` (optional) is called for the end-of-stream
      repeat of the last frame (see :meth:`_finish`).

    :attr:`ended` is set when the source ran out or ``may_continue`` said no
    (after one repeat of the last frame, see :meth:`_finish`).

    :attr:`max_fps` (None: no limit; the gateway's ``frame_rate`` advice)
    skips source frames before they are converted and encoded. Frames are due
    every ``1 / max_fps`` of capture time from the last one sent; the first
    frame captured no earlier than a quarter interval before its due time is
    sent and the next due time is one interval on (not one interval after the
    frame), so the rate averages at most ``max_fps`` whatever the source's rate
    (a 30 fps source asked for 24 skips one frame in five, for 15 every other
    one) and camera jitter neither adds up nor costs frames. ``on_skip()``
    (optional) is called for each frame skipped.
    """

    kind = "video"

    def __init__(
        self,
        source: FrameSource,
        *,
        fps: float,
        executor: Executor | None = None,
        start: asyncio.Event | None = None,
        may_continue: Callable[[], bool] | None = None,
        on_frame: Callable[[int, CapturedFrame], None] | None = None,
        on_repeat: Callable[[int, CapturedFrame], None] | None = None,
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.source = source
        self.period = 1.0 / fps
        self.ended = asyncio.Event()
        self.frames = 0
        self.max_fps: float | None = None
        self._last_sent_capture: float | None = None
        self._rate_due: tuple[float, float] | None = None
        """The capture time the next frame is due at under :attr:`max_fps`, and that max_fps."""
        self._executor = executor
        self._gate = start
        self._may_continue = may_continue
        self._on_frame = on_frame
        self._on_repeat = on_repeat
        self._on_skip = on_skip
        self._due: float | None = None
        self._origin: float | None = None
        self._last_pts = -1
        self._last: CapturedFrame | None = None
        self._flushed = False
        self._capture_times: dict[int, float] = {}

    @property
    def last_pts(self) -> int:
        """The ``pts`` of the last frame sent; -1 before the first."""
        return self._last_pts

    def capture_time(self, pts: int) -> float | None:
        """The capture time of the frame sent with ``pts``, forgetting every older frame.

        A ``pts`` within half a step of a frame's matches it (a decoder may
        round the time base). The gateway answers frames in order, skipping
        some, so once a frame has a result no older frame will get one. The
        matched frame itself is kept: the gateway sends more than one message
        per frame (``keypoints`` and ``obstacles``), each looked up here.
        """
        match = pts if pts in self._capture_times else None
        if match is None:
            match = next((p for p in self._capture_times if abs(p - pts) <= _PTS_STEP // 2), None)
            if match is None:
                return None
        captured = self._capture_times[match]
        for old in list(self._capture_times):
            if old >= match:
                break
            del self._capture_times[old]
        return captured

    def _read(self) -> tuple[CapturedFrame, VideoFrame | None] | None:
        """The next source frame and, unless :attr:`max_fps` skips it, its encoder frame; None at the end."""
        captured = self.source.read()
        if captured is None:
            return None
        if self._over_rate(captured.capture_time):
            return captured, None
        return captured, _encoder_frame(captured.rgb)

    def _over_rate(self, capture_time: float) -> bool:
        """Whether a frame captured at ``capture_time`` comes before its due time under :attr:`max_fps`."""
        max_fps, last = self.max_fps, self._last_sent_capture
        if max_fps is None or last is None:
            self._rate_due = None
            return False
        interval = 1.0 / max_fps
        if self._rate_due is None or self._rate_due[1] != max_fps:
            self._rate_due = (last + interval, max_fps)
        due = self._rate_due[0]
        if capture_time < due - 0.25 * interval:  # a frame a little early is taken: due times do not move
            return True
        # Due times step by the interval (the average holds); after a stall the next is due at once, not in a burst.
        self._rate_due = (max(due + interval, capture_time), max_fps)
        return False

    def _finish(self) -> VideoFrame:
        """After the last frame: one repeat of it, then the end.

        aiortc's stock receiver releases a frame only when the next frame's
        first packet arrives, so without the repeat such a gateway would never
        see the last frame. A receiver that releases frames at their marker
        packet (the dronedepth gateway's) processes the repeat too, so it is
        remembered as a capture of the last frame's instant (its result matches) and
        ``on_repeat(pts, frame)`` lets the client send its pose too.
        """
        if self._last is None or self._flushed:
            self.ended.set()
            self.stop()
            raise MediaStreamError("the source has no more frames")
        self._flushed = True
        frame = _encoder_frame(self._last.rgb)
        frame.pts = self._last_pts + _PTS_STEP
        frame.time_base = TIME_BASE
        self._capture_times[frame.pts] = self._last.capture_time
        if self._on_repeat is not None:
            self._on_repeat(frame.pts, self._last)
        self._last = None
        return frame

    async def _pace(self) -> None:
        """Sleep until the next frame is due at ``fps``."""
        now = asyncio.get_running_loop().time()
        if self._due is None:
            self._due = now
            return
        self._due += self.period
        if self._due > now:
            await asyncio.sleep(self._due - now)
        elif now - self._due > self.period:
            self._due = now  # fell behind (slow source or encoder): do not burst to catch up

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._gate is not None:
            await self._gate.wait()
        while True:
            await self._pace()
            if self._flushed or (self._may_continue is not None and not self._may_continue()):
                return self._finish()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._read)
            if result is None:
                return self._finish()
            captured, frame = result
            if frame is not None:
                break
            if self._on_skip is not None:
                self._on_skip()
        self._last_sent_capture = captured.capture_time
        if self._origin is None:
            self._origin = captured.capture_time
        ticks = _PTS_STEP * round((captured.capture_time - self._origin) * VIDEO_CLOCK_RATE / _PTS_STEP)
        pts = 0 if self._last_pts < 0 else max(self._last_pts + _PTS_STEP, ticks)
        self._last_pts = pts
        self._last = captured
        frame.pts = pts
        frame.time_base = TIME_BASE
        self._capture_times[pts] = captured.capture_time
        if len(self._capture_times) > _MAX_REMEMBERED:
            del self._capture_times[next(iter(self._capture_times))]
        self.frames += 1
        if self._on_frame is not None:
            self._on_frame(pts, captured)
        return frame
