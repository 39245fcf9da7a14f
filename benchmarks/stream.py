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

from benchmarks.harness import FRAME_HEIGHT, FRAME_WIDTH, BenchConfig, CodecTimer, Frames, TritonStats, bench_camera
from benchmarks.stats import parse_prometheus, prometheus_total

__all__ = ["Fleet", "ResultSample", "fly", "gateway_counts", "pipeline_run"]

log = logging.getLogger("benchmarks.stream")


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

    def span(self, drone: str) -> tuple[float, float] | None:
        """The drone's measured window: from ``warmup_s`` after its first frame to its last frame."""
        times = self.sent.get(drone)
        if not times:
            return None
        return times[0] + self.warmup_s, times[-1]

    def measured(self, drone: str | None = None) -> list[ResultSample]:
        """Results of frames captured inside their drone's window (after the warm-up), by capture time."""
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


def _timestamped(spec: str, sent: list[float]) -> Any:
    """Open the drone source ``spec`` at 640×480 and note the wall time of every frame it hands out."""
    from drone.sources import open_source

    source = open_source(spec, width=FRAME_WIDTH, height=FRAME_HEIGHT)
    read = source.read

    def timed_read() -> Any:
        frame = read()
        if frame is not None:
            # CapturedFrame.capture_time is time.monotonic(); results are matched on the wall clock.
            sent.append(time.time() - (time.monotonic() - frame.capture_time))
        return frame

    source.read = timed_read  # type: ignore[method-assign]
    return source


async def fly(
    gateway_url: str,
    token: str,
    count: int,
    frames: Frames,
    *,
    fps: float,
    duration_s: float,
    warmup_s: float,
    drain_s: float,
    on_first_result: Any = None,
) -> Fleet:
    """Stream ``count`` drones at ``fps`` for ``duration_s`` seconds each; returns every result they got."""
    from drone.client import DroneClient, DroneConfig

    fleet = Fleet(started=time.time(), duration_s=duration_s, warmup_s=warmup_s)
    lock = threading.Lock()
    first_seen = asyncio.Event()
    camera = bench_camera() if frames.source != "synthetic" else None

    def callback(drone: str) -> Any:
        def on_result(message: Any, latency_ms: float | None, _waypoints: Any) -> None:
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
            if not first_seen.is_set():
                first_seen.set()
                if on_first_result is not None:
                    on_first_result(sample)

        return on_result

    clients = {}
    sources = []
    try:
        for i in range(count):
            drone = f"bench-{i + 1}"
            fleet.sent[drone] = []
            source = await asyncio.to_thread(_timestamped, frames.source, fleet.sent[drone])
            sources.append(source)
            config = DroneConfig(
                gateway=gateway_url,
                token=token,
                source=frames.source,
                camera=camera,
                fps=fps,
                width=FRAME_WIDTH,
                height=FRAME_HEIGHT,
                max_frames=max(1, round(duration_s * fps)),
                drone_id=drone,
                connect_timeout=60.0,
                result_timeout=120.0,
                drain_timeout=drain_s,
            )
            clients[drone] = DroneClient(config, source=source, on_result=callback(drone))
        launched = time.monotonic()
        outcomes = await asyncio.gather(*(c.run() for c in clients.values()), return_exceptions=True)
    finally:
        for source in sources:
            source.close()
    for (drone, client), outcome in zip(clients.items(), outcomes, strict=True):
        summary = client.summary() if isinstance(outcome, BaseException) else outcome
        record = {k: getattr(summary, k) for k in summary.__dataclass_fields__}
        record["error_codes"] = dict(record.get("error_codes") or {})
        record["fps"] = fps
        times = fleet.sent[drone]
        if len(times) > 1:
            record["sent_fps"] = round((len(times) - 1) / (times[-1] - times[0]), 2)
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


async def pipeline_run(config: BenchConfig, frames: Frames, triton_url: str, *, drain_s: float) -> PipelineRun:
    """One drone → in-process gateway → embedded Triton, for ``config.duration_s`` seconds."""
    from dronedepth.contract import MODEL_NAME
    from gateway.config import GatewayConfig
    from gateway.inference import TritonDepthClient
    from gateway.pipeline import ProcessingConfig
    from gateway.server import Gateway

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
                drain_s=drain_s,
                on_first_result=on_first,
            )
            for task in tasks:
                await task
            after = await asyncio.to_thread(stats.snapshot)
            end = time.monotonic()
            counts = gateway_counts(gateway.metrics.registry.render())
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
