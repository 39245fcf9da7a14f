"""The video track: pts from the source clock starting at 0, capture-time matching, the end of a stream."""

from __future__ import annotations

import asyncio
import fractions
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from dronedepth.drone.sources import CapturedFrame, FrameSource
from dronedepth.drone.track import SourceTrack, _encoder_frame
from dronedepth.samples import sample_photo


class ClockSource(FrameSource):
    """Frames with given capture times; records the thread each read ran in."""

    def __init__(self, times: list[float], delay: float = 0.0) -> None:
        super().__init__(32, 24, None, None)
        self.times = list(times)
        self.delay = delay
        self.threads: list[str] = []

    def read(self) -> CapturedFrame | None:
        self.threads.append(threading.current_thread().name)
        if not self.times:
            return None
        if self.delay:
            threading.Event().wait(self.delay)  # a blocking read, like a camera
        t = self.times.pop(0)
        return CapturedFrame(np.full((24, 32, 3), int(t * 10) % 256, np.uint8), t)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(1, thread_name_prefix="test-source") as pool:
        yield pool


async def test_pts_start_at_zero_and_follow_the_capture_clock(executor):
    track = SourceTrack(ClockSource([100.0, 100.1, 100.25, 100.25, 100.2503]), fps=1000, executor=executor)
    frames = [await track.recv() for _ in range(5)]
    assert [f.pts for f in frames] == [0, 9000, 22500, 22590, 22680]  # whole ms, strictly increasing
    assert all(f.time_base == fractions.Fraction(1, 90000) for f in frames)
    assert (frames[0].width, frames[0].height) == (32, 24)
    assert track.last_pts == 22680 and track.frames == 5


async def test_capture_times_are_matched_by_pts_and_older_ones_forgotten(executor):
    track = SourceTrack(ClockSource([5.0, 5.1, 5.2, 5.3]), fps=1000, executor=executor)
    for _ in range(4):
        await track.recv()
    assert track.capture_time(9000) == 5.1
    assert track.capture_time(9000) == 5.1, "the matched frame stays for its other messages (obstacles)"
    assert track.capture_time(0) is None, "frames older than an answered one are forgotten"
    assert track.capture_time(18000 - 1) == 5.2, "a pts one tick off (decoder rounding) still matches"
    assert track.capture_time(12345) is None
    assert track.capture_time(27000) == 5.3


async def test_reads_run_off_the_event_loop(executor):
    source = ClockSource([1.0, 1.1, 1.2], delay=0.2)
    track = SourceTrack(source, fps=1000, executor=executor)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        for _ in range(3):
            await track.recv()
    finally:
        task.cancel()
    assert all(name.startswith("test-source") for name in source.threads)
    assert ticks > 3, "the loop kept running while the source blocked"


async def test_the_gate_holds_the_first_frame(executor):
    gate = asyncio.Event()
    track = SourceTrack(ClockSource([1.0]), fps=1000, executor=executor, start=gate)
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.05)
    assert not pending.done()
    gate.set()
    frame = await asyncio.wait_for(pending, 30)
    assert frame.pts == 0


async def test_end_of_source_sends_one_repeat_then_ends(executor):
    seen = []
    track = SourceTrack(
        ClockSource([1.0, 1.1]), fps=1000, executor=executor, on_frame=lambda pts, frame: seen.append(pts)
    )
    first, second = await track.recv(), await track.recv()
    repeat = await track.recv()
    assert repeat.pts == second.pts + 90
    np.testing.assert_array_equal(repeat.to_ndarray(format="rgb24"), second.to_ndarray(format="rgb24"))
    assert seen == [0, 9000], "the repeat is not a frame of the stream"
    assert track.last_pts == second.pts
    assert not track.ended.is_set()
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.ended.is_set() and track.readyState == "ended"
    assert first.pts == 0


async def test_a_frame_budget_ends_the_track(executor):
    budget = iter([True, True, False])
    track = SourceTrack(ClockSource([1.0] * 10), fps=1000, executor=executor, may_continue=lambda: next(budget))
    await track.recv()
    await track.recv()
    await track.recv()  # the repeat
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.frames == 2


async def test_an_empty_source_ends_at_once(executor):
    track = SourceTrack(ClockSource([]), fps=1000, executor=executor)
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.ended.is_set()


def test_fps_must_be_positive():
    with pytest.raises(ValueError, match="fps"):
        SourceTrack(ClockSource([]), fps=0)


async def test_frames_go_to_the_encoder_as_the_yuv420p_it_would_convert_them_to(executor):
    track = SourceTrack(ClockSource([1.0, 1.1]), fps=1000, executor=executor)
    assert (await track.recv()).format.name == "yuv420p"
    rgb = np.ascontiguousarray(cv2.cvtColor(cv2.imread(str(sample_photo())), cv2.COLOR_BGR2RGB)[:240, :320])
    frame = _encoder_frame(rgb)
    # The planes swscale (the encoder's own conversion) would give, up to chroma rounding; colours survive.
    swscale = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert frame.format.name == "yuv420p" and (frame.width, frame.height) == (320, 240)
    assert np.abs(frame.to_ndarray().astype(int) - swscale).mean() < 0.5
    assert np.abs(frame.to_ndarray(format="rgb24").astype(int) - rgb).mean() < 3
    odd = _encoder_frame(rgb[:239, :319])
    assert odd.format.name == "rgb24" and (odd.width, odd.height) == (319, 239)
