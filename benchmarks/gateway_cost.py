"""Section ``gateway-cost``: the gateway's own CPU per frame, apart from the model and the drones.

The depth model costs (almost) nothing: the tiny synthetic model
(:func:`~dronedepth.serving.synthetic.tiny_depth_model`, a few element-wise
ops) served by the real embedded Triton, so what a result costs is the
gateway's work (decode, convert, gRPC, projection, keypoints, message,
sending) plus Triton's fixed per-request overhead, which is measured alone
first. The drones cost (almost) nothing either: a 640×480 VP8 clip is encoded
once with PyAV (libvpx) and every simulated drone replays its packets with
fresh timestamps (:class:`ReplayTrack`: aiortc packetises an ``av.Packet``
without encoding it), so no encoder competes for the cores being measured.
Like a real drone, a replayed one honours the gateway's frame-rate advice
(:class:`~dronedepth.protocol.FrameRateMessage`): the clip is encoded once at
each rate of :data:`CLIP_RATES` (sub-sampled from the same frames) and the
track switches to the fastest clip within the advice, at a keyframe.

Each step starts a fresh ``dronedepth gateway`` subprocess with its default
outputs, streams N replayed drones at :data:`FPS` each (more than one gateway
core can answer, so it saturates), and measures over the window after the
warm-up: results/s (the gateway's processed counter), frames/s the drones sent
(after the advice) and the gateway received, gateway CPU ms per
result (psutil: user + system time of the gateway process over results),
per-drone glass-to-result latency, and the mean of each stage of the
messages' own ``timing``. A last run at the largest N is sampled by py-spy
(all threads) and its top functions by cumulative time are written to
``gateway_cost_profile.txt`` / ``.json`` next to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from dronedepth.benchmarks.harness import FRAME_HEIGHT, FRAME_WIDTH, BenchConfig, TritonStats
from dronedepth.benchmarks.scaling import counts_difference, gateway_process, http_get
from dronedepth.benchmarks.stats import summarize
from dronedepth.benchmarks.stream import Fleet, ResultSample, gateway_counts
from dronedepth.errors import DroneDepthError, InferenceUnavailable
from dronedepth.protocol import (
    DATA_CHANNEL_LABEL,
    VIDEO_CLOCK_RATE,
    CameraMessage,
    FrameRateMessage,
    KeypointsMessage,
    SessionDescription,
    decode,
    encode,
)

__all__ = [
    "CLIP_RATES",
    "DRONES",
    "FPS",
    "QUICK_DRONES",
    "Clip",
    "ReplayFleet",
    "ReplayTrack",
    "all_streaming",
    "clip_for",
    "encode_clip",
    "encode_clips",
    "gateway_cost_section",
    "process_cpu_s",
    "profile_summary",
    "replay_drones",
]

log = logging.getLogger("dronedepth.benchmarks.gateway_cost")

DRONES: Final = (1, 2, 4, 8, 16)
QUICK_DRONES: Final = (2,)
FPS: Final = 30.0
"""Frames per second of each replayed drone until the gateway advises fewer: with 8 drones, more than the 2
cores can answer."""
CLIP_FRAMES: Final = 60
RATE_STEP: Final = 1.25
CLIP_RATES: Final = tuple(FPS / RATE_STEP**i for i in range(16))
"""Frames per second of the pre-encoded clips, 30 down to about 1 (the gateway's lowest advice by default),
each 1/:data:`RATE_STEP` of the one above. The gateway advises 1.25 × the rate it serves a drone; with steps
no coarser than that, the fastest clip within the advice still sends at least what the gateway serves (and
at most 1.25 × that): a coarser ladder (30, 15, 10, 7.5, 5, 3) would starve the gateway (advice 4.7 → 3 fps)
and understate its throughput. 16 clips, 292 frames: about 2 s of CPU (1.5-3 s here), once per run."""
KEYFRAME_INTERVAL: Final = 10
"""A keyframe every 10 frames: a replayed drone cannot answer the receiver's keyframe requests."""
CLIP_BITRATE: Final = 1_000_000
"""bits/s, between aiortc's VP8 start (0.5 Mbit/s) and its ceiling (1.5 Mbit/s)."""
TIME_BASE: Final = fractions.Fraction(1, VIDEO_CLOCK_RATE)
CONNECT_TIMEOUT_S: Final = 60.0
"""How long the drones of a step have to connect and get a first result before the step is measured anyway."""
OFFER_RETRY_S: Final = 0.5
"""The gateway admits a few ICE set-ups at a time and answers the rest 503 (retry later): a drone retries."""
PROFILE_TOP: Final = 25
LATENCY_BUDGET_MS: Final = 40


class Lever(NamedTuple):
    """Gateway options measured against the defaults at the largest drone count, in the same run."""

    label: str
    args: tuple[str, ...]
    settle_s: float = 0.0
    """Added to the warm-up: the drones' rates take a while to follow the lever's advice."""


LEVERS: Final = (
    Lever("keypoints on the half-resolution level", ("--keypoint-scale", "0.5")),
    Lever("2 gateway processes behind one port", ("--processes", "2")),
    # Backing off by 0.8 a second takes ~8 s from 30 fps down to what 16 drones share below saturation.
    Lever(f"a {LATENCY_BUDGET_MS} ms latency budget", ("--latency-budget", str(LATENCY_BUDGET_MS)), settle_s=10.0),
    Lever("no keypoint detection (a fixed grid): the floor", ("--keypoints", "grid")),
)
"""The gateway's CPU includes its worker processes'."""
STAGES: Final = (
    "queue",
    "convert",
    "inference",
    "detection",
    "projection",
    "keypoints",
    "pointcloud",
    "obstacles",
    "processing",
)


def encode_clip(frames: list[NDArray[np.uint8]], fps: float = FPS) -> list[bytes]:
    """The frames as VP8 packets (libvpx, realtime), one per frame, a keyframe every :data:`KEYFRAME_INTERVAL`."""
    codec = av.CodecContext.create("libvpx", "w")
    height, width = frames[0].shape[:2]
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    # The real frame period (7.5 fps: 2/15 s), so libvpx spreads CLIP_BITRATE over the frames a second holds.
    codec.time_base = 1 / fractions.Fraction(fps).limit_denominator(1000)
    codec.bit_rate = CLIP_BITRATE
    codec.gop_size = KEYFRAME_INTERVAL
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"}
    packets: list[bytes] = []
    for index, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.pict_type = av.video.frame.PictureType.I if index % KEYFRAME_INTERVAL == 0 else 0
        for packet in codec.encode(frame):
            packets.append(bytes(packet))
    for packet in codec.encode(None):
        packets.append(bytes(packet))
    if len(packets) != len(frames):
        raise DroneDepthError(f"libvpx gave {len(packets)} packets for {len(frames)} frames")
    return packets


@dataclass(frozen=True, slots=True)
class Clip:
    """One VP8 packet per frame at ``fps`` frames per second; packet 0 is a keyframe."""

    fps: float
    packets: list[bytes]

    @property
    def pts_step(self) -> int:
        """90 kHz ticks between frames, whole milliseconds as the real drone's track counts them."""
        return 90 * round(1000.0 / self.fps)


def encode_clips(
    frames: list[NDArray[np.uint8]], rates: Sequence[float] = CLIP_RATES, source_fps: float = FPS
) -> list[Clip]:
    """The frames (captured at ``source_fps``) encoded once per rate, as a drone skipping frames at its source.

    The clip at ``rate`` keeps every (``source_fps / rate``)-th frame (rounded), so it spans the same flight
    time as the source; each clip is encoded alone, with its own keyframe every :data:`KEYFRAME_INTERVAL`.
    """
    clips = []
    for rate in rates:
        if not 0 < rate <= source_fps:
            raise DroneDepthError(f"a clip rate must be in (0, {source_fps:g}] fps, got {rate!r}")
        count = max(1, round(len(frames) * rate / source_fps))
        kept = [frames[min(len(frames) - 1, round(i * source_fps / rate))] for i in range(count)]
        clips.append(Clip(rate, encode_clip(kept, rate)))
    return clips


def clip_for(clips: Sequence[Clip], max_fps: float | None) -> Clip:
    """The fastest clip at most ``max_fps`` (the gateway's advice); the slowest if every clip is faster; the
    fastest when ``max_fps`` is None (no limit)."""
    within = [clip for clip in clips if max_fps is None or clip.fps <= max_fps]
    if within:
        return max(within, key=lambda clip: clip.fps)
    return min(clips, key=lambda clip: clip.fps)


def clip_frames(count: int = CLIP_FRAMES) -> tuple[list[NDArray[np.uint8]], CameraMessage]:
    """``count`` 640×480 frames of the synthetic flight (real motion between frames) and their camera."""
    from dronedepth.drone.sources import SyntheticSource

    source = SyntheticSource(FRAME_WIDTH, FRAME_HEIGHT, fps=FPS)
    frames = []
    for _ in range(count):
        captured = source.read()
        assert captured is not None
        frames.append(captured.rgb)
    assert source.intrinsics is not None
    return frames, source.intrinsics


class ReplayTrack(MediaStreamTrack):
    """Sends pre-encoded VP8 clips in a loop; aiortc packetises the packets without encoding.

    Starts with the fastest clip and paces at the current clip's rate. :meth:`advise` switches to the clip
    the gateway's advice allows; the new clip starts at its first packet, a keyframe, so the gateway's
    decoder never gets a frame whose reference it lacks. pts start at 0 and step by the current clip's
    period in whole milliseconds (as :class:`~dronedepth.drone.track.SourceTrack`), so the ``pts`` a result
    echoes finds its frame; ``sent[pts]`` is the ``time.time()`` the frame was handed over.
    """

    kind = "video"

    def __init__(self, clips: Sequence[Clip], sent: dict[int, float], times: list[float]) -> None:
        super().__init__()
        self._clips = tuple(clips)
        self._clip = clip_for(self._clips, None)
        self._sent = sent
        self._times = times
        self._index = 0
        self._pts: int | None = None
        self._due: float | None = None

    @property
    def fps(self) -> float:
        """The rate of the clip being sent."""
        return self._clip.fps

    def advise(self, max_fps: float | None) -> None:
        """Follow the gateway's frame-rate advice (None: no limit) from the next frame on."""
        chosen = clip_for(self._clips, max_fps)
        if chosen is not self._clip:
            self._clip = chosen
            self._index = 0  # a keyframe: the decoder needs no frame of the previous clip

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        period = 1.0 / self._clip.fps
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._due = now if self._due is None else self._due + period
        if self._due > now:
            await asyncio.sleep(self._due - now)
        elif now - self._due > period:
            self._due = now  # fell behind: do not burst to catch up
        packets = self._clip.packets
        packet = av.Packet(packets[self._index % len(packets)])
        self._pts = 0 if self._pts is None else self._pts + self._clip.pts_step
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        self._index += 1
        wall = time.time()
        self._sent[packet.pts] = wall
        self._times.append(wall)
        return packet


@dataclass
class ReplayFleet(Fleet):
    """A :class:`Fleet` of replayed drones, with the frame-rate advice each got."""

    advised: dict[str, float | None] = field(default_factory=dict)
    """Per drone, the last ``max_fps`` the gateway advised (None: no limit, or no advice yet)."""
    advice_messages: int = 0


def _on_gateway_message(
    text: str | bytes, name: str, track: ReplayTrack, sent: dict[int, float], fleet: ReplayFleet
) -> None:
    """A replayed drone's data channel: results become :class:`ResultSample`; advice switches its clip."""
    received = time.time()
    message = decode(text)
    if isinstance(message, FrameRateMessage):
        track.advise(message.max_fps)
        fleet.advised[name] = message.max_fps
        fleet.advice_messages += 1
        return
    if not isinstance(message, KeypointsMessage) or message.pts not in sent:
        return
    captured = sent[message.pts]
    fleet.results.append(
        ResultSample(name, message.pts, captured, received, (received - captured) * 1e3, dict(message.timing))
    )
    fleet.latest[name] = max(fleet.latest.get(name, 0.0), captured)


async def _replay_drone(
    url: str,
    token: str,
    name: str,
    clips: Sequence[Clip],
    camera: CameraMessage,
    fleet: ReplayFleet,
    stop: asyncio.Event,
) -> None:
    """One replayed drone: offer, camera message, the clips in a loop, a :class:`ResultSample` per result."""
    import aiohttp

    from dronedepth.drone.signaling import offer_url, post_offer

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
    sent: dict[int, float] = {}
    track = ReplayTrack(clips, sent, fleet.sent[name])
    transceiver = pc.addTransceiver(track, direction="sendonly")
    # The packets are VP8: the gateway must not pick another codec.
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    transceiver.setCodecPreferences(vp8)

    @channel.on("open")
    def on_open() -> None:
        channel.send(encode(camera))

    @channel.on("message")
    def on_message(text: str | bytes) -> None:
        _on_gateway_message(text, name, track, sent, fleet)

    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = SessionDescription(sdp=pc.localDescription.sdp, type="offer")
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    answer = await post_offer(http, offer_url(url), token, offer, drone_id=name, timeout=60.0)
                    break
                except InferenceUnavailable:
                    if time.monotonic() > deadline or stop.is_set():
                        raise
                    await asyncio.sleep(OFFER_RETRY_S)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.description.sdp, type="answer"))
        await stop.wait()
    finally:
        await pc.close()


async def replay_drones(
    url: str, token: str, count: int, clips: Sequence[Clip], camera: CameraMessage, stop: asyncio.Event
) -> tuple[ReplayFleet, asyncio.Future[Any]]:
    """Start ``count`` replayed drones; they run until ``stop`` is set (await the returned future after)."""
    fleet = ReplayFleet(started=time.time(), duration_s=0.0, warmup_s=0.0)
    names = [f"replay-{i + 1}" for i in range(count)]
    for name in names:
        fleet.sent[name] = []
    running = asyncio.gather(
        *(_replay_drone(url, token, name, clips, camera, fleet, stop) for name in names), return_exceptions=True
    )
    return fleet, running


def _kbit_s(clip: Clip) -> int:
    return round(sum(map(len, clip.packets)) * 8 * clip.fps / len(clip.packets) / 1e3)


def process_cpu_s(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process (and its children, e.g. Triton's backend stubs)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *(root.children(recursive=True) if children else [])]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _stage_means(samples: list[ResultSample]) -> dict[str, float]:
    out: dict[str, float] = {}
    for stage in (*STAGES, "total"):
        values = [s.timing[stage] for s in samples if stage in s.timing]
        if values:
            out[stage] = round(float(np.mean(values)), 2)
    # What processing holds besides the timed steps: the message built and encoded, the obstacles message.
    # Not detection: it runs during the inference (inside processing only when no worker was free for it).
    timed = sum(out.get(k, 0.0) for k in ("projection", "keypoints", "pointcloud", "obstacles"))
    if "processing" in out:
        out["message"] = round(out["processing"] - timed, 2)
    return out


async def _step(
    config: BenchConfig,
    triton_url: str,
    triton_pid: int | None,
    n: int,
    clips: Sequence[Clip],
    camera: CameraMessage,
    workdir: Path,
    label: str = "",
    extra_args: tuple[str, ...] = (),
    settle_s: float = 0.0,
) -> dict[str, Any]:
    log_path = config.out / "logs" / f"gateway-cost-{n}-drones{'-' + '-'.join(extra_args) if extra_args else ''}.log"
    stats = TritonStats(triton_url)
    with gateway_process(triton_url, workdir, log_path, max(8, n), config.max_in_flight, extra_args=extra_args) as (
        process,
        url,
        token,
    ):

        def cpu_seconds() -> dict[str, float]:
            return {
                "gateway": process_cpu_s(process.pid, children=True),
                "drones (bench process)": process_cpu_s(os.getpid()),
                **({"triton": process_cpu_s(triton_pid, True)} if triton_pid else {}),
            }

        stop = asyncio.Event()
        fleet, running = await replay_drones(url, token, n, clips, camera, stop)
        try:
            await all_streaming(fleet, running)
            await asyncio.sleep(config.warmup_s + settle_s)
            counts_before = gateway_counts((await asyncio.to_thread(http_get, f"{url}/metrics"))[1])
            triton_before = await asyncio.to_thread(stats.snapshot)
            cpu_before = cpu_seconds()
            start_wall, start = time.time(), time.monotonic()
            await asyncio.sleep(config.duration_s - config.warmup_s)
            elapsed = time.monotonic() - start
            end_wall = time.time()
            advised = {name: fleet.advised.get(name) for name in sorted(fleet.sent)}
            cpu_after = cpu_seconds()
            counts_after = gateway_counts((await asyncio.to_thread(http_get, f"{url}/metrics"))[1])
            triton = TritonStats.delta(triton_before, await asyncio.to_thread(stats.snapshot))
        finally:
            stop.set()
            outcomes = await running
    failures = {f"replay-{i + 1}": repr(o) for i, o in enumerate(outcomes) if isinstance(o, BaseException)}
    counts = counts_difference(counts_before, counts_after)
    processed = counts["processed"]
    window = [r for r in fleet.results if start_wall <= r.received <= end_wall]
    per_drone = {}
    sent_per_s = {}
    for name in sorted(fleet.sent):
        latency = summarize(r.latency_ms for r in window if r.drone == name)
        per_drone[name] = None if latency is None else {"p50": round(latency.p50, 1), "p95": round(latency.p95, 1)}
        sent_per_s[name] = sum(1 for t in fleet.sent[name] if start_wall <= t <= end_wall) / elapsed
    latency = summarize(r.latency_ms for r in window)
    cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
    step = {
        "drones": n,
        "connected": sum(1 for name in fleet.sent if any(r.drone == name for r in window)),
        "window_s": round(elapsed, 2),
        "settle_s": settle_s,
        "results": processed,
        "results_per_s": processed / elapsed,
        "frames_sent_per_s": sum(sent_per_s.values()),
        "frames_received_per_s": counts["received"] / elapsed,
        "per_drone_sent_fps": {name: round(rate, 2) for name, rate in sent_per_s.items()},
        "advised_fps": {name: None if fps is None else round(fps, 2) for name, fps in advised.items()},
        "advice_messages": fleet.advice_messages,
        "dropped": counts["dropped"],
        "gateway_cpu_ms_per_result": cpu["gateway"] * 1e3 / processed if processed else None,
        "gateway_cores_busy": cpu["gateway"] / elapsed,
        "cores_busy": {k: round(v / elapsed, 2) for k, v in cpu.items()},
        "latency_ms": None if latency is None else latency.to_dict(),
        "per_drone_latency_ms": per_drone,
        "stages_ms": _stage_means(window),
        "triton": {k: round(v, 3) for k, v in triton.items()},
        "failures": failures,
    }
    log.info(
        "gateway cost %s, %d drone(s): %.1f results/s, gateway %.1f CPU ms/result, p95 %s ms",
        label or "(defaults)",
        n,
        step["results_per_s"],
        step["gateway_cpu_ms_per_result"] or float("nan"),
        None if latency is None else round(latency.p95),
    )
    return step


async def all_streaming(fleet: Fleet, running: asyncio.Future[Any]) -> None:
    """Wait until every drone got a result (or one failed, or :data:`CONNECT_TIMEOUT_S`): the warm-up starts
    with the whole fleet streaming, not with the first few drones the gateway admitted."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while len(fleet.latest) < len(fleet.sent) and not running.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def profile_summary(raw: str, results: float, top: int = PROFILE_TOP) -> dict[str, Any]:
    """Top functions by cumulative samples from py-spy's raw (collapsed stacks) output.

    Start-up stacks (module imports) are left out. ``ms_per_result`` turns
    samples (10 ms each at py-spy's 100 Hz) into CPU ms per result.
    """
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or "_find_and_load" in stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            cumulative[frame] += count
    rows = []
    for frame, count in cumulative.most_common(top):
        rows.append(
            {
                "function": frame,
                "cumulative_pct": round(100.0 * count / total, 1),
                "own_pct": round(100.0 * own[frame] / total, 1),
                "ms_per_result": round(count * 10.0 / results, 2) if results else None,
            }
        )
    return {"samples": total, "results": results, "rows": rows}


async def _profile(
    config: BenchConfig, triton_url: str, n: int, clips: Sequence[Clip], camera: CameraMessage, workdir: Path
) -> dict[str, Any]:
    """The largest step again with the gateway under py-spy (all its threads, 100 Hz, non-blocking)."""
    import psutil

    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when it is not on PATH
    spy = str(beside) if beside.is_file() else shutil.which("py-spy")
    if spy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    raw_path = config.out / "gateway_cost_profile.raw"
    prefix = (spy, "record", "--nonblocking", "--nolineno", "--format", "raw", "-o", str(raw_path), "--")
    log_path = config.out / "logs" / f"gateway-cost-{n}-drones-profiled.log"
    with gateway_process(triton_url, workdir, log_path, max(8, n), config.max_in_flight, command_prefix=prefix) as (
        process,
        url,
        token,
    ):
        stop = asyncio.Event()
        fleet, running = await replay_drones(url, token, n, clips, camera, stop)
        try:
            await all_streaming(fleet, running)
            await asyncio.sleep(config.duration_s)
            results = gateway_counts((await asyncio.to_thread(http_get, f"{url}/metrics"))[1])["processed"]
        finally:
            stop.set()
            await running
        # Stop the gateway itself: py-spy writes its samples when the process it runs exits.
        for child in psutil.Process(process.pid).children():
            child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, 30)
    if not raw_path.is_file():
        return {"skipped": f"py-spy wrote no samples (see {log_path})"}
    summary = profile_summary(raw_path.read_text(), results)
    summary["drones"] = n
    text = [
        f"py-spy, gateway process, {n} replayed drones, {results:.0f} results; start-up imports left out",
        f"{'cum %':>6} {'own %':>6} {'ms/result':>9}  function",
    ]
    text += [
        f"{r['cumulative_pct']:6.1f} {r['own_pct']:6.1f} {r['ms_per_result'] or 0:9.2f}  {r['function']}"
        for r in summary["rows"]
    ]
    (config.out / "gateway_cost_profile.txt").write_text("\n".join(text) + "\n")
    (config.out / "gateway_cost_profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["files"] = ["gateway_cost_profile.txt", "gateway_cost_profile.json", raw_path.name]
    return summary


def _triton_alone(triton_url: str, frames: list[NDArray[np.uint8]], count: int) -> dict[str, Any]:
    from dronedepth.benchmarks.efficiency import TritonAlone

    alone = TritonAlone(triton_url, frames[:4])
    try:
        return alone.measure(warmup=3, count=count)
    finally:
        alone.close()


def gateway_cost_section(config: BenchConfig) -> dict[str, Any]:
    """Start an embedded Triton with the zero-cost model and run every step; fails if nothing was measured."""
    from dronedepth.serving import AdapterSettings, EmbeddedTriton
    from dronedepth.serving.synthetic import tiny_depth_model, write_model

    drones = QUICK_DRONES if config.quick else DRONES
    frames, camera = clip_frames()
    started = time.perf_counter()
    clips = encode_clips(frames)
    encode_s = time.perf_counter() - started
    log_dir = config.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dronedepth-gateway-cost-") as tmp:
        repository = Path(tmp) / "repository"
        write_model(repository, tiny_depth_model(), warmup_hw=(FRAME_HEIGHT, FRAME_WIDTH))
        settings = AdapterSettings(intra_op_threads=1)
        with EmbeddedTriton(
            repository,
            grpc_port=0,
            http_port=0,
            metrics_port=0,
            settings=settings,
            log_file=log_dir / "triton-zero-cost.log",
        ) as triton:
            alone = _triton_alone(triton.grpc_url, frames, 20 if config.quick else 100)

            async def measure() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
                steps = []
                for n in drones:
                    steps.append(await _step(config, triton.grpc_url, triton.pid, n, clips, camera, Path(tmp)))
                levers = []
                for lever in LEVERS:
                    step = await _step(
                        config,
                        triton.grpc_url,
                        triton.pid,
                        drones[-1],
                        clips,
                        camera,
                        Path(tmp),
                        lever.label,
                        lever.args,
                        0.0 if config.quick else lever.settle_s,
                    )
                    levers.append({"lever": lever.label, "gateway_args": list(lever.args), **step})
                profile = await _profile(config, triton.grpc_url, drones[-1], clips, camera, Path(tmp))
                return steps, levers, profile

            steps, levers, profile = asyncio.run(measure())
    if not any(step["results"] > 0 for step in steps):
        raise DroneDepthError("the gateway-cost section measured no result: see logs/gateway-cost-*.log")
    short = [f"{s['drones']} ({s['connected']} streamed)" for s in [*steps, *levers] if s["connected"] < s["drones"]]
    if short:  # a figure for N drones measured with fewer would mislead whoever sizes a cluster with it
        raise DroneDepthError(
            f"gateway-cost: not every drone streamed in steps of {', '.join(short)} drones; "
            "see the steps' failures and logs/gateway-cost-*.log"
        )
    return {
        "fps_per_drone": FPS,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "frame": f"{FRAME_WIDTH}×{FRAME_HEIGHT}",
        "clip": {
            "frames": len(frames),
            "keyframe_interval": KEYFRAME_INTERVAL,
            "bitrate_kbit_s": _kbit_s(clip_for(clips, None)),
            "rates": [{"fps": round(c.fps, 2), "frames": len(c.packets), "kbit_s": _kbit_s(c)} for c in clips],
            "encode_once_s": round(encode_s, 2),
        },
        "model": "tiny synthetic (depth = 0.5 + 4·luma/255, relative) through the embedded CPU Triton",
        "triton_alone": alone,
        "steps": steps,
        "levers": levers,
        "profile": profile,
    }
