"""Section 5: 1, 2, 4, 8 drones at 15 fps each against one gateway and one Triton.

Each step starts a fresh ``dronedepth gateway`` subprocess (so psutil sees
its own CPU and memory), streams N simulated drones from this process for
``--duration`` seconds, and reads the gateway's ``/metrics`` before and after.
Reported per step: the per-drone result rate, glass-to-result percentiles
after the warm-up, frames dropped by reason, CPU and memory of the gateway,
Triton (server + backend stubs) and this process (the drones' VP8 encoding),
and whether latency stays flat: the least-squares slope of latency against
time and the medians of the first and last third of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dronedepth.benchmarks.harness import BenchConfig, Frames, ResourceSampler, TritonStats
from dronedepth.benchmarks.stats import summarize, trend
from dronedepth.benchmarks.stream import Fleet, fly, gateway_counts

__all__ = ["counts_difference", "gateway_process", "http_get", "scaling_section", "scaling_step"]

log = logging.getLogger("dronedepth.benchmarks.scaling")

_READY_TIMEOUT_S = 60.0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@contextlib.contextmanager
def gateway_process(
    triton_url: str,
    workdir: Path,
    log_path: Path,
    max_drones: int,
    max_in_flight: int | None = None,
    *,
    extra_args: tuple[str, ...] = (),
    command_prefix: tuple[str, ...] = (),
) -> Any:
    """A ``dronedepth gateway`` subprocess on a free port, its output to ``log_path``; yields (process, url, token).

    ``extra_args`` go to the gateway; ``command_prefix`` runs it under another program (a profiler), whose
    process is then the one yielded and signalled.
    """
    from dronedepth.serving.embedded import find_free_port

    token = secrets.token_urlsafe(24)
    token_file = workdir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = find_free_port("127.0.0.1")
    command = [
        *command_prefix,
        sys.executable,
        "-m",
        "dronedepth.cli",
        "gateway",
        "--triton-url",
        triton_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--token-file",
        str(token_file),
        "--max-drones",
        str(max_drones),
        "--inference-timeout",
        "60",
        *(["--max-in-flight", str(max_in_flight)] if max_in_flight else []),
        *extra_args,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if http_get(f"{url}/ready", timeout=2.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway was not ready after {_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        yield process, url, token
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def counts_difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("received", "processed"):
        out[key] = after[key] - before[key]
    for key in ("dropped", "triton_errors"):
        out[key] = {
            reason: after[key].get(reason, 0.0) - before[key].get(reason, 0.0)
            for reason in after[key]
            if after[key].get(reason, 0.0) - before[key].get(reason, 0.0)
        }
    return out


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _step_summary(n: int, fleet: Fleet, counts: dict[str, Any], resources: dict[str, Any]) -> dict[str, Any]:
    measured = fleet.measured()
    latency = summarize(r.latency_ms for r in measured)
    t0 = min((times[0] for times in fleet.sent.values() if times), default=fleet.started)
    lat_trend = trend([r.captured - t0 for r in measured], [r.latency_ms for r in measured])
    rates = {d: fleet.result_rate(d) for d in fleet.summaries}
    per_drone = [r for r in rates.values() if r is not None]
    sent = sum(s.get("frames_sent", 0) for s in fleet.summaries.values())  # window, warm-up and tail
    results = sum(s.get("results", 0) for s in fleet.summaries.values())
    return {
        "drones": n,
        "frames_sent": sent,
        "results": results,
        "results_measured": len(measured),
        "per_drone_fps": {d: (None if r is None else round(r, 3)) for d, r in rates.items()},
        "per_drone_fps_mean": sum(per_drone) / len(per_drone) if per_drone else None,
        "sent_fps_mean": _mean([s.get("sent_fps") for s in fleet.summaries.values()]),
        "frames_in_window": sum(fleet.frames_in_window(d) for d in fleet.summaries),
        "aggregate_fps": sum(per_drone),
        "latency_ms": latency.to_dict() if latency else None,
        "trend": lat_trend.to_dict() if lat_trend else None,
        "gateway_counts": counts,
        "resources": resources,
        "failures": {d: s["failure"] for d, s in fleet.summaries.items() if "failure" in s},
        "latency_series": [(round(r.captured - t0, 3), round(r.latency_ms, 2), r.drone) for r in fleet.results],
    }


async def scaling_step(
    config: BenchConfig, frames: Frames, triton_url: str, triton_pid: int | None, n: int, workdir: Path, tail_s: float
) -> dict[str, Any]:
    log_path = config.out / "logs" / f"gateway-{n}-drones.log"
    stats = TritonStats(triton_url)
    with gateway_process(triton_url, workdir, log_path, max(8, n), config.max_in_flight) as (process, url, token):
        before = gateway_counts(http_get(f"{url}/metrics")[1])
        triton_before = stats.snapshot()
        processes = {"gateway": (process.pid, True), "drones (bench process)": (os.getpid(), False)}
        if triton_pid is not None:
            processes["triton (server + stubs)"] = (triton_pid, True)
        with ResourceSampler(processes) as sampler:
            fleet = await fly(
                url,
                token,
                n,
                frames,
                fps=config.fps,
                duration_s=config.duration_s,
                warmup_s=config.warmup_s,
                tail_s=tail_s,
            )
        after = gateway_counts(http_get(f"{url}/metrics")[1])
        triton = TritonStats.delta(triton_before, stats.snapshot())
    step = _step_summary(n, fleet, counts_difference(before, after), sampler.summary())
    step["triton"] = {k: round(v, 3) for k, v in triton.items()}
    step["resource_series"] = {
        name: {"t": s.times, "cpu_percent": s.cpu_percent, "rss_mib": s.rss_mib} for name, s in sampler.series.items()
    }
    log.info(
        "%d drone(s): %.2f results/s per drone, p50 %s ms",
        n,
        step["per_drone_fps_mean"] or 0.0,
        None if step["latency_ms"] is None else round(step["latency_ms"]["p50"]),
    )
    return step


async def scaling_section(
    config: BenchConfig, frames: Frames, triton_url: str, triton_pid: int | None, tail_s: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dronedepth-bench-") as tmp:
        steps = []
        for n in config.drones:
            steps.append(await scaling_step(config, frames, triton_url, triton_pid, n, Path(tmp), tail_s))
            await asyncio.sleep(1.0)  # let the previous gateway's sockets and Triton's queue settle
    return {"fps_per_drone": config.fps, "duration_s": config.duration_s, "steps": steps}
