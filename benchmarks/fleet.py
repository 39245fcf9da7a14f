"""Section ``fleet``: M gateway processes × K embedded Tritons × N replayed drones, the curve that sizes a cluster.

Everything per gateway is :mod:`~dronedepth.benchmarks.gateway_cost`'s: the
zero-cost model (the tiny synthetic model through the real embedded Triton)
and the replayed VP8 drones that honour the gateway's frame-rate advice. What
this section adds is the fleet around them, laid out as a cluster would be:

- **K Tritons** are K separate embedded Triton servers (like K Triton pods),
  each with the zero-cost model and gateway-cost's settings.
- **M gateways** are M independent ``dronedepth gateway`` subprocesses on
  their own ports (like M pods, not ``--processes``); gateway m asks Triton
  m mod K.
- **N drones** are split across the gateways round-robin (:func:`split_round_robin`),
  each sticking to its gateway as a Service with session affinity keeps it.

For each configuration (M, K, N) of the grid the drones stream at
:data:`~dronedepth.benchmarks.gateway_cost.FPS` (until the advice lowers it),
and the window after the warm-up gives total and per-drone results/s,
glass-to-result latency, gateway CPU per result and the cores each part kept
busy. :func:`sizing` turns the grid into the drones a configuration carries
under :data:`SIZING_RULE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dronedepth.benchmarks.gateway_cost import (
    FPS,
    Clip,
    ReplayFleet,
    all_streaming,
    clip_frames,
    encode_clips,
    process_cpu_s,
    replay_drones,
)
from dronedepth.benchmarks.harness import FRAME_HEIGHT, FRAME_WIDTH, BenchConfig
from dronedepth.benchmarks.scaling import counts_difference, gateway_process, http_get
from dronedepth.benchmarks.stats import summarize
from dronedepth.benchmarks.stream import gateway_counts
from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.protocol import CameraMessage
from dronedepth.shutdown import deferred_stop

__all__ = [
    "DRONES",
    "GRID",
    "LATENCY_LIMIT_MS",
    "MIN_RESULTS_PER_S",
    "QUICK_DRONES",
    "QUICK_GRID",
    "SIZING_RULE",
    "Layout",
    "fleet_section",
    "sizing",
    "split_round_robin",
]

log = logging.getLogger("dronedepth.benchmarks.fleet")

GRID: Final = ((1, 1), (2, 1), (2, 2))
"""(gateways, Tritons) of a full run."""
DRONES: Final = (2, 4, 8, 16)
QUICK_GRID: Final = ((1, 1), (2, 1))
QUICK_DRONES: Final = (2,)
LATENCY_LIMIT_MS: Final = 100.0
MIN_RESULTS_PER_S: Final = 10.0
SIZING_RULE: Final = (
    f"the largest N of the grid at which the configuration, and every smaller N of the grid, kept every "
    f"drone at >= {MIN_RESULTS_PER_S:g} results/s with the worst drone's glass-to-result p95 <= "
    f"{LATENCY_LIMIT_MS:g} ms, every drone streaming and none failing"
)
"""How :func:`sizing` reads "drones a gateway carries at >= 10 fps with p95 <= 100 ms" off the grid. Every smaller
N must pass too: a lucky larger step after a failed smaller one is noise, not capacity."""


@dataclass(frozen=True, slots=True)
class Layout:
    """One configuration of the grid: ``gateways`` gateway processes, ``tritons`` Triton servers, ``drones``."""

    gateways: int
    tritons: int
    drones: int

    def __post_init__(self) -> None:
        if self.gateways < 1 or self.tritons < 1 or self.drones < 1:
            raise ConfigError(f"a fleet needs at least one gateway, Triton and drone, got {self}")
        if self.tritons > self.gateways:
            raise ConfigError(f"{self.tritons} Tritons for {self.gateways} gateway(s): gateway m asks Triton m mod K")

    @property
    def name(self) -> str:
        return f"{self.gateways}gw-{self.tritons}triton-{self.drones}drones"

    def triton_of(self, gateway: int) -> int:
        """The Triton (0-based) that gateway ``gateway`` (0-based) asks."""
        return gateway % self.tritons


def split_round_robin(drones: int, gateways: int) -> list[list[int]]:
    """Per gateway, the drones (numbered from 1) it serves: drone i goes to gateway (i - 1) mod ``gateways``.

    As a Service with session affinity spreads new sessions: the counts differ by at most one, and a drone
    never moves.
    """
    if drones < 0 or gateways < 1:
        raise ConfigError(f"cannot split {drones} drones across {gateways} gateways")
    return [list(range(first, drones + 1, gateways)) for first in range(1, gateways + 1)]


def _meets_rule(configuration: dict[str, Any]) -> bool:
    slowest = configuration["per_drone_results_per_s"]["min"]
    worst_p95 = configuration["worst_drone_p95_ms"]
    return (
        configuration["streamed"] == configuration["drones"]
        and not configuration["failures"]
        and slowest is not None
        and slowest >= MIN_RESULTS_PER_S
        and worst_p95 is not None
        and worst_p95 <= LATENCY_LIMIT_MS
    )


def sizing(configurations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sizing block of the section: results/s per gateway core per configuration, and per (M, K) the
    drones carried under :data:`SIZING_RULE` (0 when even the smallest N fails)."""
    per_configuration = []
    layouts: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for c in configurations:
        cpu_ms = c["gateway_cpu_ms_per_result"]
        per_configuration.append(
            {
                "gateways": c["gateways"],
                "tritons": c["tritons"],
                "drones": c["drones"],
                "results_per_s_per_gateway_core": round(1000.0 / cpu_ms, 1) if cpu_ms else None,
                "meets_rule": _meets_rule(c),
            }
        )
        layouts.setdefault((c["gateways"], c["tritons"]), []).append(c)
    carried = []
    for (gateways, tritons), steps in layouts.items():
        drones = 0
        for step in sorted(steps, key=lambda s: s["drones"]):
            if not _meets_rule(step):
                break
            drones = step["drones"]
        carried.append(
            {
                "gateways": gateways,
                "tritons": tritons,
                "drones": drones,
                "drones_per_gateway": round(drones / gateways, 2),
            }
        )
    return {
        "rule": SIZING_RULE,
        "min_results_per_s": MIN_RESULTS_PER_S,
        "latency_limit_ms": LATENCY_LIMIT_MS,
        "per_configuration": per_configuration,
        "carried": carried,
    }


@contextlib.contextmanager
def _running_gateways(
    config: BenchConfig, layout: Layout, triton_urls: Sequence[str], assignment: list[list[int]], workdir: Path
) -> Iterator[list[tuple[subprocess.Popen[bytes], str, str]]]:
    """The layout's gateways, started side by side (each a subprocess on its own port and token); stopped at the
    end, side by side."""
    managers = []
    for m, drones in enumerate(assignment):
        gateway_dir = workdir / f"gateway-{m + 1}"  # its own token file: they start at once
        gateway_dir.mkdir(parents=True, exist_ok=True)
        log_path = config.out / "logs" / f"fleet-{layout.name}-gateway-{m + 1}.log"
        triton_url = triton_urls[layout.triton_of(m)]
        managers.append(gateway_process(triton_url, gateway_dir, log_path, max(8, len(drones)), config.max_in_flight))
    started: list[Any] = []
    try:
        # A stop request lands once every gateway that started is in the list of those to stop.
        with deferred_stop():
            with ThreadPoolExecutor(max_workers=len(managers)) as pool:
                entering = [pool.submit(manager.__enter__) for manager in managers]
            started = [m for m, future in zip(managers, entering, strict=True) if future.exception() is None]
        for future in entering:
            if (error := future.exception()) is not None:
                raise error
        yield [future.result() for future in entering]
    finally:
        with deferred_stop(), ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
            for manager in started:
                pool.submit(manager.__exit__, None, None, None)


def _cpu_seconds(pids: Sequence[int], children: bool) -> list[float]:
    """User + system CPU seconds of each process so far (with its children: Triton's stubs, gateway workers)."""
    return [process_cpu_s(pid, children) for pid in pids]


async def _stream(
    config: BenchConfig,
    layout: Layout,
    gateways: Sequence[tuple[subprocess.Popen[bytes], str, str]],
    triton_pids: Sequence[int],
    assignment: list[list[int]],
    clips: Sequence[Clip],
    camera: CameraMessage,
) -> dict[str, Any]:
    """Stream the layout's drones to their gateways and measure the window after the warm-up."""
    stop = asyncio.Event()
    started = [
        await replay_drones(url, token, len(drones), clips, camera, stop)
        for (_, url, token), drones in zip(gateways, assignment, strict=True)
    ]
    fleets = [fleet for fleet, _ in started]
    gateway_pids = [process.pid for process, _, _ in gateways]

    async def counts() -> list[dict[str, Any]]:
        texts = await asyncio.gather(*(asyncio.to_thread(http_get, f"{url}/metrics") for _, url, _ in gateways))
        return [gateway_counts(text) for _, text in texts]

    try:
        await asyncio.gather(*(all_streaming(fleet, running) for fleet, running in started))
        await asyncio.sleep(config.warmup_s)
        counts_before = await counts()
        gateways_before, tritons_before = _cpu_seconds(gateway_pids, True), _cpu_seconds(triton_pids, True)
        bench_before = process_cpu_s(os.getpid())
        start_wall, start = time.time(), time.monotonic()
        await asyncio.sleep(config.duration_s - config.warmup_s)
        elapsed = time.monotonic() - start
        end_wall = time.time()
        gateways_after, tritons_after = _cpu_seconds(gateway_pids, True), _cpu_seconds(triton_pids, True)
        bench_after = process_cpu_s(os.getpid())
        counts_after = await counts()
        advised = [dict(fleet.advised) for fleet in fleets]
    finally:
        stop.set()
        outcomes = [await running for _, running in started]
    gateway_cpu = [after - before for before, after in zip(gateways_before, gateways_after, strict=True)]
    differences = [counts_difference(b, a) for b, a in zip(counts_before, counts_after, strict=True)]
    return _summary(
        layout,
        assignment,
        fleets,
        outcomes,
        advised,
        differences,
        gateway_cpu_s=gateway_cpu,
        triton_cpu_s=sum(tritons_after) - sum(tritons_before),
        bench_cpu_s=bench_after - bench_before,
        window=(start_wall, end_wall),
        elapsed=elapsed,
    )


def _summary(
    layout: Layout,
    assignment: list[list[int]],
    fleets: Sequence[ReplayFleet],
    outcomes: Sequence[Sequence[Any]],
    advised: Sequence[dict[str, float | None]],
    differences: Sequence[dict[str, Any]],
    *,
    gateway_cpu_s: Sequence[float],
    triton_cpu_s: float,
    bench_cpu_s: float,
    window: tuple[float, float],
    elapsed: float,
) -> dict[str, Any]:
    """One configuration's figures; drones are named ``drone-i`` by their number in the whole fleet."""
    per_drone: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    latencies: list[float] = []
    for m, (fleet, drones) in enumerate(zip(fleets, assignment, strict=True)):
        for j, number in enumerate(drones):
            local, name = f"replay-{j + 1}", f"drone-{number}"  # replay_drones names a gateway's own drones
            if isinstance(outcomes[m][j], BaseException):
                failures[name] = repr(outcomes[m][j])
            results = [r.latency_ms for r in fleet.results if r.drone == local and window[0] <= r.received <= window[1]]
            latencies += results
            latency = summarize(results)
            fps = advised[m].get(local)
            per_drone[name] = {
                "gateway": m + 1,
                "results_per_s": round(len(results) / elapsed, 2),
                "sent_fps": round(sum(1 for t in fleet.sent[local] if window[0] <= t <= window[1]) / elapsed, 2),
                "advised_fps": None if fps is None else round(fps, 2),
                "p50_ms": None if latency is None else round(latency.p50, 1),
                "p95_ms": None if latency is None else round(latency.p95, 1),
            }
    processed = sum(d["processed"] for d in differences)
    rates = [d["results_per_s"] for d in per_drone.values()]
    p95s = [d["p95_ms"] for d in per_drone.values() if d["p95_ms"] is not None]
    advice = [d["advised_fps"] for d in per_drone.values() if d["advised_fps"] is not None]
    dropped: dict[str, float] = {}
    for difference in differences:
        for reason, count in difference["dropped"].items():
            dropped[reason] = dropped.get(reason, 0.0) + count
    latency = summarize(latencies)
    per_gateway = [
        {
            "gateway": m + 1,
            "triton": layout.triton_of(m) + 1,
            "drones": len(assignment[m]),
            "results_per_s": round(differences[m]["processed"] / elapsed, 2),
            "gateway_cpu_ms_per_result": (
                round(gateway_cpu_s[m] * 1e3 / differences[m]["processed"], 2) if differences[m]["processed"] else None
            ),
            "cores_busy": round(gateway_cpu_s[m] / elapsed, 2),
        }
        for m in range(layout.gateways)
    ]
    return {
        "gateways": layout.gateways,
        "tritons": layout.tritons,
        "drones": layout.drones,
        "streamed": sum(1 for d in per_drone.values() if d["results_per_s"] > 0),
        "window_s": round(elapsed, 2),
        "results": processed,
        "results_per_s": round(processed / elapsed, 2),
        "per_drone_results_per_s": {
            "mean": round(sum(rates) / len(rates), 2) if rates else None,
            "min": min(rates) if rates else None,
        },
        "frames_sent_per_s": round(sum(d["sent_fps"] for d in per_drone.values()), 2),
        "frames_decoded_per_s": round(sum(d["received"] for d in differences) / elapsed, 2),
        "advised_fps": {"min": min(advice), "max": max(advice)} if advice else None,
        "latency_ms": None if latency is None else latency.to_dict(),
        "worst_drone_p95_ms": max(p95s) if p95s else None,
        "gateway_cpu_ms_per_result": round(sum(gateway_cpu_s) * 1e3 / processed, 2) if processed else None,
        "cores_busy": {
            "gateways": round(sum(gateway_cpu_s) / elapsed, 2),
            "tritons": round(triton_cpu_s / elapsed, 2),
            "drones (bench process)": round(bench_cpu_s / elapsed, 2),
        },
        "dropped": dropped,
        "per_gateway": per_gateway,
        "per_drone": per_drone,
        "failures": failures,
    }


def _configuration(
    config: BenchConfig,
    layout: Layout,
    tritons: Sequence[tuple[str, int]],
    clips: Sequence[Clip],
    camera: CameraMessage,
    workdir: Path,
) -> dict[str, Any]:
    """Start the layout's gateways against its Tritons (url, pid), stream, measure, stop the gateways."""
    assignment = split_round_robin(layout.drones, layout.gateways)
    used = tritons[: layout.tritons]
    with _running_gateways(config, layout, [url for url, _ in used], assignment, workdir) as gateways:
        step = asyncio.run(_stream(config, layout, gateways, [pid for _, pid in used], assignment, clips, camera))
    log.info(
        "fleet %d gateway(s) x %d Triton(s), %d drones: %.1f results/s, slowest drone %s results/s, worst p95 %s ms",
        layout.gateways,
        layout.tritons,
        layout.drones,
        step["results_per_s"],
        step["per_drone_results_per_s"]["min"],
        step["worst_drone_p95_ms"],
    )
    return step


def fleet_section(config: BenchConfig) -> dict[str, Any]:
    """Start the Tritons the grid needs and measure every configuration; fails if one measured fewer drones
    than it claims."""
    from dronedepth.serving import AdapterSettings, EmbeddedTriton
    from dronedepth.serving.synthetic import tiny_depth_model, write_model

    grid, drone_counts = (QUICK_GRID, QUICK_DRONES) if config.quick else (GRID, DRONES)
    layouts = [Layout(m, k, n) for m, k in grid for n in drone_counts]
    frames, camera = clip_frames()
    clips = encode_clips(frames)
    log_dir = config.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dronedepth-fleet-") as tmp, contextlib.ExitStack() as stack:
        repository = Path(tmp) / "repository"
        write_model(repository, tiny_depth_model(), warmup_hw=(FRAME_HEIGHT, FRAME_WIDTH))
        settings = AdapterSettings(intra_op_threads=1)  # gateway-cost's zero-cost Triton
        tritons = []
        for k in range(max(layout.tritons for layout in layouts)):
            triton = stack.enter_context(
                EmbeddedTriton(
                    repository,
                    grpc_port=0,
                    http_port=0,
                    metrics_port=0,
                    settings=settings,
                    log_file=log_dir / f"fleet-triton-{k + 1}.log",
                )
            )
            assert triton.pid is not None
            tritons.append((triton.grpc_url, triton.pid))
        configurations = [_configuration(config, layout, tritons, clips, camera, Path(tmp)) for layout in layouts]
    short = [
        f"{c['gateways']} gw × {c['tritons']} Triton × {c['drones']} drones ({c['streamed']} streamed)"
        for c in configurations
        if c["streamed"] < c["drones"]
    ]
    if short:  # a curve point for N drones measured with fewer would oversize the cluster it sizes
        raise DroneDepthError(
            f"fleet: not every drone streamed in {'; '.join(short)}; see the failures and logs/fleet-*.log"
        )
    return {
        "fps_per_drone": FPS,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "frame": f"{FRAME_WIDTH}×{FRAME_HEIGHT}",
        "model": "tiny synthetic (depth = 0.5 + 4·luma/255, relative) through the embedded CPU Triton",
        "triton_settings": {"instances": settings.instances, "onnxruntime_threads": settings.intra_op_threads},
        "split": "round-robin: drone i to gateway (i - 1) mod M; gateway m asks Triton m mod K",
        "configurations": configurations,
        "sizing": sizing(configurations),
    }
