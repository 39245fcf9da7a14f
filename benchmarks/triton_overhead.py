"""What going through the embedded Triton costs compared with calling ONNX Runtime directly.

Serves synthetic depth models with the export contract through
:class:`~dronedepth.serving.EmbeddedTriton` (gRPC, dynamic batching, the
Python-backend ONNX Runtime adapter) and runs the same ONNX file in-process
with the same session options, then prints a table and writes JSON:

- ``conv``: a conv net of ~4.5 GFLOP at 480x640 (tens of ms on a laptop CPU),
  where the overhead is small next to the compute;
- ``tiny``: a few element-wise ops, so the latency *is* the overhead
  (gRPC, serialisation of ~0.9 MB in and 1.2 MB out, shared memory, scheduling).

Each is measured at batch 1, one request at a time, and with N concurrent
clients sending frames back to back (direct: N threads sharing one session;
Triton: N gRPC clients, the dynamic batcher merging their frames). Shared
machines are noisy, so each case runs in rounds that alternate the two paths;
the overhead is the median of the per-round differences.

    python -m benchmarks.triton_overhead [--seconds 2] [--rounds 5] [--clients 8] [--height 480 --width 640]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from dronedepth.contract import INPUT_NAME, OUTPUT_NAME
from dronedepth.serving import AdapterSettings, EmbeddedTriton
from dronedepth.serving.repository import usable_cpus
from dronedepth.serving.synthetic import conv_depth_model, tiny_depth_model, write_model

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "triton_overhead.json"


@dataclass
class Result:
    model: str
    path: str  # "onnxruntime" or "triton"
    clients: int
    requests: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    frames_per_s: float
    round_p50_ms: list[float]
    """p50 of each round: the spread shows how noisy the machine was."""
    overhead_p50_ms: float | None = None
    """Triton only: median over rounds of (Triton p50 - ONNX Runtime p50) measured back to back."""
    throughput_ratio: float | None = None
    """Triton only: median over rounds of Triton frames/s over ONNX Runtime frames/s."""


def adapter_session_options(threads: int) -> ort.SessionOptions:
    """The session options of the embedded Triton's adapter (onnx_adapter.py), for like-for-like comparisons."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """The session options of the adapter (onnx_adapter.py), for a like-for-like comparison."""
    options = adapter_session_options(threads)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _measure(
    call: Callable[[np.ndarray], np.ndarray], frames: list[np.ndarray], clients: int, seconds: float
) -> list[float]:
    """Latencies (s) of ``call`` from ``clients`` threads sending back to back for ``seconds``."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        i = index
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            call(frames[i % len(frames)])
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def _result(model: str, path: str, clients: int, rounds: list[tuple[list[float], float]]) -> Result:
    ms = sorted(x * 1000 for latencies, _ in rounds for x in latencies)
    elapsed = sum(seconds for _, seconds in rounds)
    return Result(
        model=model,
        path=path,
        clients=clients,
        requests=len(ms),
        p50_ms=round(statistics.median(ms), 2),
        p90_ms=round(ms[int(0.9 * (len(ms) - 1))], 2),
        mean_ms=round(statistics.fmean(ms), 2),
        frames_per_s=round(len(ms) / elapsed, 1),
        round_p50_ms=[round(statistics.median(latencies) * 1000, 2) for latencies, _ in rounds],
    )


def _compare(direct: Result, triton: Result, rounds: list[dict[str, tuple[list[float], float]]]) -> None:
    """Paired, round by round: adjacent measurements share the machine's state of the moment."""
    differences, ratios = [], []
    for r in rounds:
        (d_lat, d_s), (t_lat, t_s) = r["onnxruntime"], r["triton"]
        differences.append((statistics.median(t_lat) - statistics.median(d_lat)) * 1000)
        ratios.append((len(t_lat) / t_s) / (len(d_lat) / d_s))
    triton.overhead_p50_ms = round(statistics.median(differences), 2)
    triton.throughput_ratio = round(statistics.median(ratios), 2)


def run(
    seconds: float, rounds: int, clients: int, height: int, width: int, threads: int, instances: int
) -> tuple[list[Result], dict[str, dict[str, float]]]:
    models = {"conv": conv_depth_model(channels=64, layers=3), "tiny": tiny_depth_model()}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8) for _ in range(8)]
    results: list[Result] = []
    breakdowns: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="triton-overhead-") as tmp:
        for name, model in models.items():
            write_model(tmp, model, name=name, max_batch_size=8, max_queue_size=64, max_queue_delay_us=2000)
        settings = AdapterSettings(intra_op_threads=threads, instances=instances)
        with EmbeddedTriton(tmp, grpc_port=0, http_port=0, metrics_port=0, settings=settings) as server:
            local = threading.local()

            def triton_call(name: str) -> Callable[[np.ndarray], np.ndarray]:
                def call(frame: np.ndarray) -> np.ndarray:
                    if not hasattr(local, "client"):
                        local.client = grpcclient.InferenceServerClient(server.url)
                    tensor = grpcclient.InferInput(INPUT_NAME, list(frame.shape), "UINT8")
                    tensor.set_data_from_numpy(frame)
                    return local.client.infer(name, [tensor]).as_numpy(OUTPUT_NAME)

                return call

            for name, model in models.items():
                session = _session(model, threads)

                def direct(frame: np.ndarray, session: ort.InferenceSession = session) -> np.ndarray:
                    return session.run([OUTPUT_NAME], {INPUT_NAME: frame})[0]

                calls = {"onnxruntime": direct, "triton": triton_call(name)}
                for call in calls.values():
                    _measure(call, frames, clients, 1.0)  # warm up (and open the clients)
                for k in (1, clients):
                    measured: list[dict[str, tuple[list[float], float]]] = []
                    for r in range(rounds):
                        order = list(calls) if r % 2 == 0 else list(reversed(calls))
                        measured.append({path: (_measure(calls[path], frames, k, seconds), seconds) for path in order})
                    direct_result, triton_result = (
                        _result(name, path, k, [m[path] for m in measured]) for path in calls
                    )
                    _compare(direct_result, triton_result, measured)
                    results += [direct_result, triton_result]
                    logging.info("%s\n%s", direct_result, triton_result)
                with grpcclient.InferenceServerClient(server.url) as stats_client:
                    breakdowns[name] = _server_breakdown(stats_client.get_inference_statistics(name).model_stats[0])
                logging.info("%s inside Triton: %s", name, breakdowns[name])
    return results, breakdowns


def _server_breakdown(stats: object) -> dict[str, float]:
    """Where a request's time went inside Triton, in ms per request, and the frames per execution."""
    inference = stats.inference_stats  # type: ignore[attr-defined]
    requests = max(inference.success.count, 1)
    breakdown = {
        f"{part}_ms": round(getattr(inference, part).ns / requests / 1e6, 2)
        for part in ("queue", "compute_input", "compute_infer", "compute_output")
    }
    breakdown["frames_per_execution"] = round(
        stats.inference_count / max(stats.execution_count, 1),  # type: ignore[attr-defined]
        2,
    )
    return breakdown


def _table(results: list[Result]) -> str:
    header = (
        f"{'model':6} {'clients':>7} {'path':12} {'p50 ms':>8} {'p90 ms':>8} {'frames/s':>9} {'overhead':>14}"
        "   round p50s (ms)"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        overhead = ""
        if r.path == "triton":
            overhead = f"{r.overhead_p50_ms:+.1f} ms / {r.throughput_ratio:.2f}x"
        timing = f"{r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.frames_per_s:>9.1f}"
        spread = " ".join(f"{x:.1f}" for x in r.round_p50_ms)
        rows.append(f"{r.model:6} {r.clients:>7} {r.path:12} {timing} {overhead:>14}   {spread}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round (default %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds alternating ONNX Runtime and Triton (default %(default)s)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="ONNX Runtime threads (default: all cores)")
    parser.add_argument(
        "--instances",
        type=int,
        default=AdapterSettings().instances,
        help="Triton model instances (default %(default)s, as 'dronedepth triton')",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    results, breakdowns = run(
        args.seconds, args.rounds, args.clients, args.height, args.width, args.threads, args.instances
    )
    print(_table(results))
    for name, breakdown in breakdowns.items():
        print(f"{name} inside Triton (per request, all runs): " + ", ".join(f"{k} {v}" for k, v in breakdown.items()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "triton_overhead",
        "frame": [args.height, args.width],
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "queue_delay_us": 2000,
        "onnxruntime_threads": args.threads,
        "triton_instances": args.instances,
        "cpus": usable_cpus(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "onnxruntime": ort.__version__,
        "results": [asdict(r) for r in results],
        "inside_triton": breakdowns,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
