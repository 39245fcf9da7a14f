"""DroneSession without a network: a fake data channel and a fake video track drive the real session code."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from gateway_fixtures import (
    FakeDepthClient,
    camera_for,
    check_projection,
    drones,
    gateway_config,
    photo,
    running_gateway,
    wait_until,
)

from dronedepth import protocol
from dronedepth.errors import InferenceOverloaded
from dronedepth.gateway import session as session_module
from dronedepth.gateway.inference import DepthService
from dronedepth.gateway.metrics import GatewayMetrics
from dronedepth.gateway.pipeline import DetectedKeypoints, FrameProcessor, ProcessingConfig
from dronedepth.gateway.session import DroneSession, LatestFrame, SessionContext


class FakeChannel:
    label = protocol.DATA_CHANNEL_LABEL
    readyState = "open"
    bufferedAmount = 0

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._handlers: dict[str, Any] = {}

    def on(self, event: str, handler: Any) -> None:
        self._handlers[event] = handler

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def receive(self, data: str | bytes) -> None:
        self._handlers["message"](data)

    def codes(self) -> list[str]:
        return [m["code"] for m in self.sent if m["type"] == "error"]

    def keypoints(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "keypoints"]

    async def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        """Poll ``predicate`` (it may watch the session's counters, which send nothing)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)


class FakeTrack:
    """A video track fed by the test; ``end()`` ends it like aiortc does."""

    kind = "video"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue()

    def push(self, rgb: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = pts
        self.queue.put_nowait(frame)

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def recv(self) -> av.VideoFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


def started_session(
    name: str, client: FakeDepthClient, executor: ThreadPoolExecutor, **context: Any
) -> tuple[DroneSession, FakeChannel, FakeTrack]:
    """A started session on ``client`` with a fake data channel and video track; ``context`` overrides the
    SessionContext (``make_processor``: a processor without a cloud by default)."""
    settings: dict[str, Any] = {
        "config": gateway_config(max_frame_pixels=320 * 240, idle_timeout=60),
        "depth": DepthService(client),
        "executor": executor,
        "metrics": GatewayMetrics(),
        "make_processor": lambda kind: FrameProcessor(ProcessingConfig(build_cloud=False), kind),
        **context,
    }
    session = DroneSession(name, RTCPeerConnection(RTCConfiguration(iceServers=[])), SessionContext(**settings))
    channel = FakeChannel()
    session._on_datachannel(channel)  # type: ignore[arg-type]
    track = FakeTrack()
    session._on_track(track)  # type: ignore[arg-type]
    session.start()
    return session, channel, track


@pytest.fixture
async def parts() -> AsyncIterator[dict[str, Any]]:
    executor = ThreadPoolExecutor(2)
    client = FakeDepthClient()
    metrics = GatewayMetrics()
    closed: list[DroneSession] = []
    context = SessionContext(
        config=gateway_config(max_frame_pixels=320 * 240, idle_timeout=60),
        depth=DepthService(client, min_backoff=0.05, max_backoff=0.1),
        executor=executor,
        metrics=metrics,
        make_processor=lambda kind: FrameProcessor(ProcessingConfig(build_cloud=False), kind),  # type: ignore[arg-type]
        on_closed=closed.append,
    )
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    session = DroneSession("unit", pc, context)
    channel = FakeChannel()
    session._on_datachannel(channel)  # type: ignore[arg-type]
    yield {"session": session, "channel": channel, "client": client, "metrics": metrics, "closed": closed}
    await session.close("test over")
    executor.shutdown()


# ---------------------------------------------------------------- LatestFrame


async def test_latest_frame_keeps_only_the_newest() -> None:
    slot = LatestFrame()
    assert slot.put(1) is False
    assert slot.put(2) is True  # replaced 1, never taken
    assert await slot.get() == 2
    getter = asyncio.ensure_future(slot.get())
    await asyncio.sleep(0)
    assert not getter.done()
    slot.put(3)
    assert await asyncio.wait_for(getter, 5) == 3
    assert slot.clear() is False


# ---------------------------------------------------------------- messages


async def test_camera_message_sets_the_camera(parts: dict[str, Any]) -> None:
    session, channel = parts["session"], parts["channel"]
    camera = camera_for()
    channel.receive(protocol.encode(camera))
    assert session.camera == camera and channel.sent == []
    channel.receive(protocol.encode(camera).encode())  # binary messages are accepted too
    assert session.camera == camera and channel.sent == []


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        ("{not json", protocol.INVALID_JSON, "not valid JSON"),
        ("[1, 2]", protocol.INVALID_MESSAGE, "JSON object"),
        ('{"type": "telemetry"}', protocol.UNKNOWN_TYPE, "'telemetry'"),
        ('{"type": "keypoints", "pts": 0}', protocol.UNKNOWN_TYPE, "expected one of: camera"),
        (
            '{"type": "camera", "width": 320, "height": 240, "fx": -1, "fy": 300, "cx": 160, "cy": 120}',
            protocol.INVALID_CAMERA,
            "focal lengths must be between",
        ),
        (
            '{"type": "camera", "width": 320, "height": 240, "fx": 300, "fy": 300, "cx": 900, "cy": 120}',
            protocol.INVALID_CAMERA,
            "principal point",
        ),
        ('{"type": "camera", "width": "320"}', protocol.INVALID_CAMERA, "'width' must be an integer"),
        ("x" * (protocol.MAX_MESSAGE_BYTES + 1), protocol.MESSAGE_TOO_LARGE, "exceeds the limit"),
        ('{"type": "camera", "pad": "' + "é" * 40_000 + '"}', protocol.MESSAGE_TOO_LARGE, "bytes"),
    ],
)
async def test_bad_messages_get_an_error_and_keep_the_camera(
    parts: dict[str, Any], data: str, code: str, text: str
) -> None:
    session, channel = parts["session"], parts["channel"]
    good = camera_for()
    channel.receive(protocol.encode(good))
    channel.receive(data)
    assert channel.codes() == [code]
    assert text in channel.sent[0]["message"]
    assert session.camera == good
    assert parts["metrics"].errors_sent.value(code=code) == 1


# ---------------------------------------------------------------- frames


async def test_frames_before_camera_get_one_no_camera_error_then_results(
    parts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    session, channel = parts["session"], parts["channel"]
    monkeypatch.setattr(session_module, "NO_CAMERA_GRACE_S", 0.1)
    track = FakeTrack()
    session._on_track(track)  # type: ignore[arg-type]
    session.start()
    rgb = photo()
    for i in range(4):
        track.push(rgb, pts=i * 3000)
        await asyncio.sleep(0.05)
    await channel.wait_for(lambda: session.dropped["no_camera"] + session.dropped["superseded"] >= 4)
    assert channel.codes() == [protocol.NO_CAMERA]
    camera = camera_for()
    channel.receive(protocol.encode(camera))
    track.push(rgb, pts=4 * 3000)
    await channel.wait_for(lambda: len(channel.keypoints()) == 1)
    message = channel.keypoints()[0]
    assert message["pts"] == 12000 and message["frame_index"] == 4
    assert message["depth_kind"] == "metric" and message["axes"] == "optical"
    assert {"queue", "convert", "inference", "projection", "keypoints", "total"} <= set(message["timing"])
    check_projection(message, camera)
    assert channel.codes() == [protocol.NO_CAMERA]


async def test_oversized_and_mismatched_frames_are_reported_once(parts: dict[str, Any]) -> None:
    session, channel = parts["session"], parts["channel"]
    track = FakeTrack()
    session._on_track(track)  # type: ignore[arg-type]
    session.start()
    channel.receive(protocol.encode(camera_for(320, 240)))
    big = photo(640, 480)
    for i in range(3):
        track.push(big, pts=i)
        await channel.wait_for(lambda i=i: sum(session.dropped.values()) >= i + 1)
    assert channel.codes() == [protocol.FRAME_TOO_LARGE]
    square = photo(200, 200)  # aspect differs from the 4:3 camera: intrinsics cannot be rescaled
    for i in range(3):
        track.push(square, pts=10 + i)
        await channel.wait_for(lambda i=i: session.dropped["camera_mismatch"] >= i + 1)
    assert channel.codes() == [protocol.FRAME_TOO_LARGE, protocol.CAMERA_MISMATCH]
    assert session.dropped["frame_too_large"] == 3
    # A frame at half the camera's size keeps the aspect: the camera is rescaled, results come.
    track.push(photo(160, 120), pts=20)
    await channel.wait_for(lambda: len(channel.keypoints()) == 1)
    check_projection(channel.keypoints()[0], camera_for(320, 240).scaled(160, 120))


async def test_outage_is_reported_once_and_resumption_announced(parts: dict[str, Any]) -> None:
    session, channel, client = parts["session"], parts["channel"], parts["client"]
    track = FakeTrack()
    session._on_track(track)  # type: ignore[arg-type]
    session.start()
    channel.receive(protocol.encode(camera_for()))
    rgb = photo()
    client.available = False
    for i in range(4):
        track.push(rgb, pts=i)
        await channel.wait_for(lambda i=i: session.dropped["inference_unavailable"] >= i + 1)
    assert channel.codes() == [protocol.INFERENCE_UNAVAILABLE]
    client.available = True
    await asyncio.sleep(0.15)  # past the backoff
    track.push(rgb, pts=99)
    await channel.wait_for(lambda: len(channel.keypoints()) == 1)
    assert channel.codes() == [protocol.INFERENCE_UNAVAILABLE, protocol.INFERENCE_RESUMED]
    assert channel.keypoints()[0]["pts"] == 99


async def test_close_is_idempotent_and_reports_once(parts: dict[str, Any]) -> None:
    session, closed = parts["session"], parts["closed"]
    track = FakeTrack()
    session._on_track(track)  # type: ignore[arg-type]
    session.start()
    await asyncio.gather(session.close("first"), session.close("second"))
    await session.close("third")
    assert closed == [session] and session.close_reason == "first"
    assert session.pc.connectionState == "closed"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("drone-unit") and not t.done()]


async def test_rejections_by_a_busy_server_drop_frames_without_an_error() -> None:
    """Through the public surface: a real drone, a real gateway, a depth server that is briefly overloaded."""

    class BusyDepthClient(FakeDepthClient):
        busy = False
        refused = 0

        async def infer(self, rgb: np.ndarray) -> np.ndarray:
            if self.busy:
                self.refused += 1
                raise InferenceOverloaded("queue full")
            return await super().infer(rgb)

    client = BusyDepthClient()
    async with running_gateway(client, inference_timeout=60.0) as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url, camera=camera_for())
        await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="the first result")
        client.busy = True
        await wait_until(lambda: client.refused >= 3, what="three rejected frames")
        dropped = gateway.metrics.frames_dropped
        assert dropped.value(reason="inference_overloaded") >= 3
        assert dropped.value(reason="inference_unavailable") == 0, "a few rejections are not an outage"
        client.busy = False
        seen = len(drone.keypoints)
        await drone.wait_for(lambda d: len(d.keypoints) >= seen + 2, what="results once the server has room")
        assert drone.errors == [], "a busy server's rejections drop frames silently"


async def test_keypoints_are_detected_while_the_depth_request_is_in_flight() -> None:
    """The depth server answers a frame only once its keypoints are being detected; in an outage none are."""
    detecting = threading.Event()
    detections = 0

    class WatchedProcessor(FrameProcessor):
        def detect_keypoints(self, rgb: np.ndarray) -> DetectedKeypoints:
            nonlocal detections
            detections += 1
            detecting.set()
            return super().detect_keypoints(rgb)

    class WaitingClient(FakeDepthClient):
        overlapped = 0
        wait_for_detection = True

        async def infer(self, rgb: np.ndarray) -> np.ndarray:
            if self.available and self.wait_for_detection and await asyncio.to_thread(detecting.wait, 4):
                self.overlapped += 1
            detecting.clear()
            return await super().infer(rgb)

    executor = ThreadPoolExecutor(2)
    client = WaitingClient()
    session, channel, track = started_session(
        "overlap",
        client,
        executor,
        depth=DepthService(client, min_backoff=0.05, max_backoff=0.1),
        make_processor=lambda kind: WatchedProcessor(ProcessingConfig(build_cloud=False), kind),
    )
    try:
        channel.receive(protocol.encode(camera_for()))
        rgb = photo()
        for i in range(2):
            track.push(rgb, pts=i * 3000)
            await channel.wait_for(lambda n=i + 1: len(channel.keypoints()) == n)
        assert client.overlapped == 2 and detections == 2, "each frame's depth came back while it was detected"
        assert len(channel.keypoints()[-1]["points"]) > 10
        client.available = False
        for i in range(2, 6):
            track.push(rgb, pts=i * 3000)
            await channel.wait_for(lambda n=i - 1: session.dropped["inference_unavailable"] == n)
        # Only the outage's first frame may have been detected (the server was not known to be down yet; its
        # detection is cancelled unless a worker already took it), none of the three after it.
        assert detections in (2, 3) and len(channel.keypoints()) == 2
        # The probe that ends the outage is detected after its depth came back.
        client.available, client.wait_for_detection = True, False
        await asyncio.sleep(0.15)  # past the backoff
        track.push(rgb, pts=6 * 3000)
        await channel.wait_for(lambda: len(channel.keypoints()) == 3)
        assert len(channel.keypoints()[-1]["points"]) > 10
    finally:
        await session.close("test over")
        executor.shutdown()


async def test_a_detection_no_worker_started_is_done_with_the_rest_of_the_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a saturated gateway (here: its one worker busy) a frame does not queue twice, for its detection
    and then for the rest: the queued detection is withdrawn and runs inside the frame's processing."""
    release = threading.Event()
    executor = ThreadPoolExecutor(1)
    convert = session_module._rgb24

    def convert_then_busy(frame: av.VideoFrame) -> np.ndarray:
        rgb = convert(frame)
        executor.submit(release.wait, 10)  # queued ahead of the detection: other drones' work
        return rgb

    monkeypatch.setattr(session_module, "_rgb24", convert_then_busy)
    inside_process: list[bool] = []

    class WatchedProcessor(FrameProcessor):
        processing = False

        def detect_keypoints(self, rgb: np.ndarray) -> DetectedKeypoints:
            inside_process.append(self.processing)
            return super().detect_keypoints(rgb)

        def process(self, *args: Any, **kwargs: Any) -> Any:
            self.processing = True
            try:
                return super().process(*args, **kwargs)
            finally:
                self.processing = False

    class ReleasingClient(FakeDepthClient):
        async def infer(self, rgb: np.ndarray) -> np.ndarray:
            depth = await super().infer(rgb)
            asyncio.get_running_loop().call_later(0.2, release.set)  # the worker frees up after the answer
            return depth

    session, channel, track = started_session(
        "busy",
        ReleasingClient(),
        executor,
        make_processor=lambda kind: WatchedProcessor(ProcessingConfig(build_cloud=False), kind),
    )
    try:
        channel.receive(protocol.encode(camera_for()))
        track.push(photo(), pts=0)
        await channel.wait_for(lambda: len(channel.keypoints()) == 1)
        assert inside_process == [True], "detected once, with the rest of the frame"
        assert len(channel.keypoints()[0]["points"]) > 10
    finally:
        release.set()
        await session.close("test over")
        executor.shutdown()


async def test_close_drone_comes_after_the_last_write_returns() -> None:
    """A frame still in a sink when its session closes must not come after ``close_drone`` (a new bag)."""
    calls: list[tuple[str, str]] = []
    entered, release = threading.Event(), threading.Event()

    class SlowSink:
        def write(self, record: Any) -> None:
            calls.append(("write", record.drone_id))
            assert record.rgb.shape == (240, 320, 3) and record.camera == camera_for()
            entered.set()
            release.wait(60)
            calls.append(("written", record.drone_id))

        def close_drone(self, drone_id: str) -> None:
            calls.append(("close_drone", drone_id))

        def close(self) -> None:
            calls.append(("close", ""))

    executor = ThreadPoolExecutor(2)
    session, channel, track = started_session(
        "slow", FakeDepthClient(), executor, config=gateway_config(idle_timeout=60), sink=SlowSink()
    )
    try:
        channel.receive(protocol.encode(camera_for()))
        track.push(photo(), pts=0)
        assert await asyncio.to_thread(entered.wait, 60)
        assert len(channel.keypoints()) == 1, "the drone has its result before the sinks get the frame"
        closing = asyncio.create_task(session.close("test over"))
        await asyncio.sleep(0.3)
        assert calls == [("write", "slow")], "close_drone waits for the write in progress"
        release.set()
        await asyncio.wait_for(closing, 60)
        assert calls == [("write", "slow"), ("written", "slow"), ("close_drone", "slow")]
    finally:
        release.set()
        await session.close("test over")
        executor.shutdown()


def test_rgb24_converts_decoded_i420_like_av_and_falls_back_to_av_otherwise() -> None:
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame

    from dronedepth.samples import sample_photo

    with av.open(str(sample_photo())) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")[:480, :640]
    source = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    source.pts, source.time_base = 0, Fraction(1, 90000)
    payloads, timestamp = Vp8Encoder().encode(source, force_keyframe=True)
    (decoded,) = Vp8Decoder().decode(JitterFrame(data=b"".join(map(vp8_depayload, payloads)), timestamp=timestamp))
    assert decoded.format.name == "yuv420p"
    fast = session_module._rgb24(decoded)
    reference = decoded.to_ndarray(format="rgb24")
    assert fast.shape == reference.shape == (*rgb.shape[:2], 3) and fast.dtype == np.uint8
    difference = np.abs(fast.astype(np.int16) - reference)
    # BT.601 limited range both; they round and upsample chroma apart: ~1 level, a few colour edges up to ~12.
    assert difference.mean() < 1.5 and np.percentile(difference, 99.9) <= 3 and (difference > 4).mean() < 1e-3
    full_range = decoded.reformat(format="yuvj420p")  # not BT.601 limited: av converts it
    np.testing.assert_array_equal(session_module._rgb24(full_range), full_range.to_ndarray(format="rgb24"))
