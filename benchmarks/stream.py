"""Simulated drones streaming to a gateway, and what they measure.

:func:`fly` runs N :class:`~drone.client.DroneClient` in this event loop
against any gateway URL and keeps, for every result, the capture and arrival
times and the gateway's per-stage ``timing``. :func:`pipeline_run` runs the
stage benchmark: a gateway in this process (so aiortc's decoder can be timed
and each frame's arrival at the gateway is known on the same clock as the
drone's) in front of the embedded Triton, with one drone at 640×480.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dronedepth.benchmarks.harness import FRAME_HEIGHT, FRAME_WIDTH, BenchConfig, CodecTimer, Frames, TritonStats
from dronedepth.benchmarks.stats import parse_prometheus, prometheus_total
from dronedepth.drone.sources import CapturedFrame, FrameSource

__all__ = ["Fleet", "PreloadedSource", "ResultSample", "fly", "gateway_counts", "pipeline_run"]

log = logging.getLogger("dronedepth.benchmarks.stream")


@dataclass(frozen=True, slots=True)
class ResultSample:
    """One keypoints message as the drone saw it. Times are ``time.time()`` seconds."""

    drone: str
    pts: int
    captured: float
    received: float
    latency_ms: float
    timing: dict[str, float]


@dataclass
class Fleet:
    """What a group of drones measured in one run."""

    started: float
    """``time.time()`` when the drones were launched."""
    duration_s: float
    warmup_s: float
    results: list[ResultSample] = field(default_factory=list)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: dict[str, list[float]] = field(default_factory=dict)
    """Per drone, ``time.time()`` of every frame its source produced (read by the sending track)."""
    latest: dict[str, float] = field(default_factory=dict)
    """Per drone, the capture time of the newest frame it got a result for."""

    def span(self, drone: str) -> tuple[float, float] | None:
        """The drone's measured window: from ``warmup_s`` to ``duration_s`` after its first frame."""
        times = self.sent.get(drone)
        if not times:
            return None
        return times[0] + self.warmup_s, min(times[0] + self.duration_s, times[-1])

    def measured(self, drone: str | None = None) -> list[ResultSample]:
        """Results of frames captured inside their drone's window, by capture time."""
        out = []
        for name in sorted(self.sent) if drone is None else [drone]:
            window = self.span(name)
            if window is not None:
                out += [r for r in self.results if r.drone == name and window[0] <= r.captured <= window[1]]
        return sorted(out, key=lambda r: r.captured)

    def result_rate(self, drone: str) -> float | None:
        """Results per second of one drone over its window."""
        window = self.span(drone)
        if window is None or window[1] <= window[0]:
            return None
        return len(self.measured(drone)) / (window[1] - window[0])

    def aggregate_rate(self) -> float:
        return sum(rate for d in self.sent if (rate := self.result_rate(d)) is not None)

    def frames_in_window(self, drone: str) -> int:
        window = self.span(drone)
        return 0 if window is None else sum(1 for t in self.sent[drone] if window[0] <= t <= window[1])


class PreloadedSource(FrameSource):
    """The benchmark's frames, in a loop, decoded once: the drones spend no CPU on reading images.

    Notes the wall time of every frame it hands out in ``sent``.
    """

    name = "benchmark frames"

    def __init__(self, frames: list[NDArray[np.uint8]], sent: list[float]) -> None:
        height, width = frames[0].shape[:2]
        super().__init__(width, height, width, height)
        self._frames = frames
        self._sent = sent
        self._index = 0

    def read(self) -> CapturedFrame:
        frame = self._frames[self._index % len(self._frames)]
        self._index += 1
        self._sent.append(time.time())
        return CapturedFrame(frame, time.monotonic())


async def fly(
    gateway_url: str,
    token: str,
    count: int,
    frames: Frames,
    *,
    fps: float,
    duration_s: float,
    warmup_s: float,
    tail_s: float,
    on_first_result: Any = None,
) -> Fleet:
    """Stream ``count`` drones at ``fps``; returns every result they got.

    Each drone's window is ``duration_s`` from its first frame. It keeps streaming
    (the load stays the same) until it has the result of a frame captured after
    its window, so every frame of the window was answered or superseded, or
    ``tail_s`` more seconds have passed; then it stops.
    """
    from dronedepth.drone.client import DroneClient, DroneConfig

    fleet = Fleet(started=time.time(), duration_s=duration_s, warmup_s=warmup_s)
    lock = threading.Lock()
    first_seen = asyncio.Event()

    def callback(drone: str) -> Any:
        def on_result(message: Any, latency_ms: float | None) -> None:
            if latency_ms is None:
                return
            received = time.time()
            sample = ResultSample(
                drone=drone,
                pts=int(message.pts),
                captured=received - latency_ms / 1e3,
                received=received,
                latency_ms=float(latency_ms),
                timing={k: float(v) for k, v in (message.timing or {}).items()},
            )
            with lock:
                fleet.results.append(sample)
                fleet.latest[drone] = max(fleet.latest.get(drone, 0.0), sample.captured)
            if not first_seen.is_set():
                first_seen.set()
                if on_first_result is not None:
                    on_first_result(sample)

        return on_result

    async def stop_when_done(drone: str, client: DroneClient) -> None:
        sent = fleet.sent[drone]
        while not sent:
            await asyncio.sleep(0.1)
        end = sent[0] + duration_s
        while time.time() < end or (fleet.latest.get(drone, 0.0) <= end and time.time() < end + tail_s):
            await asyncio.sleep(0.1)
        client.stop()

    clients = {}
    for i in range(count):
        drone = f"bench-{i + 1}"
        fleet.sent[drone] = []
        config = DroneConfig(
            gateway=gateway_url,
            token=token,
            source=frames.source,
            camera=frames.camera,
            fps=fps,
            width=FRAME_WIDTH,
            height=FRAME_HEIGHT,
            drone_id=drone,
            connect_timeout=60.0,
            result_timeout=120.0,
            drain_timeout=1.0,
        )
        source = PreloadedSource(frames.rgb, fleet.sent[drone])
        clients[drone] = DroneClient(config, source=source, on_result=callback(drone))
    launched = time.monotonic()
    watchers = [asyncio.create_task(stop_when_done(d, c)) for d, c in clients.items()]
    try:
        outcomes = await asyncio.gather(*(c.run() for c in clients.values()), return_exceptions=True)
    finally:
        for watcher in watchers:
            watcher.cancel()
    for (drone, client), outcome in zip(clients.items(), outcomes, strict=True):
        summary = client.summary() if isinstance(outcome, BaseException) else outcome
        record = {k: getattr(summary, k) for k in summary.__dataclass_fields__}
        record["error_codes"] = dict(record.get("error_codes") or {})
        record["fps"] = fps
        times = fleet.sent[drone]
        window = fleet.span(drone)
        if window is not None:
            inside = [t for t in times if times[0] <= t <= window[1]]
            if len(inside) > 1:
                record["sent_fps"] = round((len(inside) - 1) / (inside[-1] - inside[0]), 2)
            record["frames_in_window"] = fleet.frames_in_window(drone)
            record["connected_after_s"] = round(times[0] - fleet.started, 2)
        if isinstance(outcome, BaseException):
            record["failure"] = repr(outcome)
            log.error("drone %s failed: %r", drone, outcome)
        fleet.summaries[drone] = record
    log.info("%d drone(s) done in %.1f s", count, time.monotonic() - launched)
    return fleet


def gateway_counts(metrics_text: str) -> dict[str, Any]:
    """Frames received, processed and dropped (by reason) from a gateway's /metrics text."""
    samples = parse_prometheus(metrics_text)
    return {
        "received": prometheus_total(samples, "dronedepth_frames_received_total").get("", 0.0),
        "processed": prometheus_total(samples, "dronedepth_frames_processed_total").get("", 0.0),
        "dropped": prometheus_total(samples, "dronedepth_frames_dropped_total", by="reason"),
        "triton_errors": prometheus_total(samples, "dronedepth_triton_errors_total", by="reason"),
    }


class ArrivalSink:
    """A gateway result sink that only notes when each frame reached the gateway (its drain task)."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def write(self, record: Any) -> None:
        with self._lock:
            self.arrivals[(record.drone_id, int(record.message.pts))] = record.stamp_ns / 1e9

    def close_drone(self, drone_id: str) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Nothing to flush."""


@dataclass
class PipelineRun:
    """The stage benchmark's raw material."""

    fleet: Fleet
    arrivals: dict[tuple[str, int], float]
    decode_ms: list[float]
    encode_ms: list[float]
    triton: dict[str, float]
    counts: dict[str, Any]
    processing: dict[str, Any]


async def pipeline_run(config: BenchConfig, frames: Frames, triton_url: str, *, tail_s: float) -> PipelineRun:
    """One drone → in-process gateway → embedded Triton, for ``config.duration_s`` seconds."""
    from dronedepth.contract import MODEL_NAME
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.inference import TritonDepthClient
    from dronedepth.gateway.pipeline import ProcessingConfig
    from dronedepth.gateway.server import Gateway

    token = secrets.token_urlsafe(24)
    sink = ArrivalSink()
    codec = CodecTimer()
    stats = TritonStats(triton_url)
    processing = ProcessingConfig(build_cloud=True)  # time the Open3D cloud too (as with --record --voxel-size)
    gateway = Gateway(
        GatewayConfig(token=token, host="127.0.0.1", port=0, processing=processing, inference_timeout=60.0),
        TritonDepthClient(triton_url, MODEL_NAME, timeout=60.0),
        sink=sink,
    )
    loop = asyncio.get_running_loop()
    window: dict[str, Any] = {}

    async def open_window(first_capture: float) -> None:
        # Triton's counters and the codec timings start when the warm-up ends.
        await asyncio.sleep(max(0.0, first_capture + config.warmup_s - time.time()))
        window["before"] = await asyncio.to_thread(stats.snapshot)
        window["start"] = time.monotonic()

    tasks: list[asyncio.Task[None]] = []

    def on_first(sample: ResultSample) -> None:
        tasks.append(loop.create_task(open_window(sample.captured)))

    with codec.active():
        await gateway.start()
        try:
            fleet = await fly(
                gateway.url,
                token,
                1,
                frames,
                fps=config.fps,
                duration_s=config.duration_s,
                warmup_s=config.warmup_s,
                tail_s=tail_s,
                on_first_result=on_first,
            )
            for task in tasks:
                await task
            after = await asyncio.to_thread(stats.snapshot)
            end = time.monotonic()
            counts = gateway_counts(gateway.metrics.render())
        finally:
            await gateway.stop()
    if "before" not in window:
        raise RuntimeError("the drone got no result: see the gateway and Triton logs above")
    return PipelineRun(
        fleet=fleet,
        arrivals=dict(sink.arrivals),
        decode_ms=codec.between("decode", window["start"], end),
        encode_ms=codec.between("encode", window["start"], end),
        triton=TritonStats.delta(window["before"], after),
        counts=counts,
        processing={
            "build_cloud": True,
            "keypoints": processing.keypoints.method,
            "max_keypoints": processing.keypoints.max_keypoints,
        },
    )
