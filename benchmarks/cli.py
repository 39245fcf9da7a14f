"""``dronedepth bench``: latency and throughput of every stage, the baselines and the scaling.

Only the standard library is imported here so ``dronedepth bench --help``
stays fast; the sections load what they need when they run. See
``docs/benchmarks.md`` for what each number means.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dronedepth.benchmarks.sections import SECTIONS
from dronedepth.contract import DEFAULT_INPUT_SIZE
from dronedepth.errors import DroneDepthError
from dronedepth.shutdown import run_until_signalled

if TYPE_CHECKING:
    from dronedepth.benchmarks.harness import BenchConfig

__all__ = ["QUICK", "SECTIONS", "add_arguments", "config_from_args", "run"]

log = logging.getLogger("dronedepth.benchmarks")

"""What ``--only`` chooses from, in report order; defined here, not in the harness, so ``--help`` stays light."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
QUICK = {"input_size": 154, "duration": 8.0, "warmup": 2.0, "frames": 6, "warmup_frames": 2, "drones": "1,2"}
"""``--quick``: a small input size and short runs (about 1.5 minutes on 2 cores); flags given win."""
FULL = {"duration": 60.0, "warmup": 5.0, "frames": 30, "warmup_frames": 3, "drones": "1,2,4,8"}


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SECTIONS)} (comma-separated), got {text!r}")
    return chosen


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        counts = ()
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"expected positive drone counts such as 1,2,4,8, got {text!r}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "sections: stages (per-stage latency), efficiency (pipeline vs bare ONNX Runtime), baseline (naive\n"
        "PyTorch loop), projection (ours vs Open3D), scaling (1-8 drones), gateway-cost (the gateway's CPU\n"
        "per result with a zero-cost model and replayed drones, 1-16 drones, py-spy profile), fleet (M gateway\n"
        "processes x K Tritons x 2-16 replayed drones: the drones-per-gateway curve and sizing), receiver (aiortc's\n"
        "frame release against release at the marker packet, clean and 1 % RTP loss), gpu (only with an NVIDIA\n"
        "GPU)\n\n"
        "examples:\n"
        "  dronedepth bench --quick                        # smoke run, ~1.5 min on 2 cores\n"
        "  dronedepth bench                                # everything, ViT-S random init at 518\n"
        "  dronedepth bench --only stages,efficiency --model-repository model_repository\n\n"
        "Writes benchmark.json, benchmark.md and PNG plots to --out. SIGINT (Ctrl-C) or SIGTERM stops\n"
        "Triton and the gateways it started, writes nothing and exits 130 (SIGINT) or 143 (SIGTERM)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small and short: input size {QUICK['input_size']}, {QUICK['duration']:g} s streams, "
        f"{QUICK['frames']} timed frames, drones {QUICK['drones']} (not numbers to quote)",
    )
    parser.add_argument("--encoder", default="vits", help="encoder of the random-init export (default vits)")
    parser.add_argument(
        "--input-size",
        type=int,
        help=f"short side the network sees, multiple of 14 (default {DEFAULT_INPUT_SIZE}; --quick: "
        f"{QUICK['input_size']})",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="benchmark this exported repository instead of exporting a random-init model",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default benchmarks/results)")
    parser.add_argument("--only", type=_sections, metavar="LIST", help=f"comma list of: {','.join(SECTIONS)}")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help=f"seconds of each stream (default {FULL['duration']:g}; --quick {QUICK['duration']:g})",
    )
    more = parser.add_argument_group("details")
    more.add_argument("--warmup", type=float, metavar="S", help="seconds of each stream left out (default 5; quick 2)")
    more.add_argument(
        "--frames", type=int, metavar="N", help="timed frames for ONNX Runtime and the baseline (default 30)"
    )
    more.add_argument("--drones", type=_counts, metavar="LIST", help="drone counts for scaling (default 1,2,4,8)")
    more.add_argument("--fps", type=float, default=15.0, help="frame rate of each drone (default 15)")
    more.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime / PyTorch threads (default: all usable cores)"
    )
    more.add_argument(
        "--queue-timeout-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="replace the exported Triton queue timeout (default 0: none, so no frame is refused, however long "
        "the queue; one request per drone is in flight at most)",
    )
    more.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help="the gateway's --max-in-flight in the scaling section (default: the gateway's own, auto)",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from dronedepth.benchmarks.harness import BenchConfig

    preset = QUICK if args.quick else FULL

    def pick(value: float | None, key: str) -> float:
        return float(preset[key]) if value is None else float(value)  # type: ignore[arg-type]

    input_size = args.input_size
    if input_size is None:
        input_size = QUICK["input_size"] if args.quick else DEFAULT_INPUT_SIZE
    drones = args.drones if args.drones is not None else _counts(str(preset["drones"]))
    return BenchConfig(
        out=args.out.resolve(),
        sections=args.only or SECTIONS,
        quick=args.quick,
        encoder=args.encoder,
        input_size=int(input_size),
        model_repository=args.model_repository.resolve() if args.model_repository else None,
        duration_s=pick(args.duration, "duration"),
        warmup_s=pick(args.warmup, "warmup"),
        frames=int(pick(args.frames, "frames")),
        warmup_frames=int(pick(None, "warmup_frames")),
        drones=drones,
        fps=args.fps,
        threads=args.threads,
        queue_timeout_ms=args.queue_timeout_ms,
        max_in_flight=args.max_in_flight,
    )


def run(args: argparse.Namespace) -> int:
    return run_until_signalled(lambda: _bench(args))


def _bench(args: argparse.Namespace) -> int:
    from dronedepth.benchmarks.report import write_outputs
    from dronedepth.benchmarks.runner import run_benchmark

    if not getattr(args, "verbose", False):
        for name in ("aioice", "aiortc", "gateway", "drone", "dronedepth.serving", "export"):
            logging.getLogger(name).setLevel(logging.WARNING)
    config = config_from_args(args)
    if config.quick:
        log.info(
            "QUICK mode: input size %d, %g s streams: a smoke run, not numbers to quote",
            config.input_size,
            config.duration_s,
        )
    doc = run_benchmark(config)
    json_path, md_path = write_outputs(doc, config.out)
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path}" + "".join(f", {config.out / p}" for p in doc.get("plots", [])))
    failed = {k: v for k, v in doc["skipped"].items() if v.startswith("failed")}
    if failed:
        raise DroneDepthError("benchmark sections failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return 0
