"""``dronedepth eval``: ground-truth evaluation of metric depth, scale, obstacles and flicker.

Writes ``eval.json``, ``eval.md`` and PNG plots to ``--out`` and prints the
table; the acceptance targets are PASS/FAIL in both. ``--check`` exits 1 when
a target fails; a run that measured nothing fails in any case. See
``docs/scale.md`` (Evaluation) for what each number means.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any, TypedDict

from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.shutdown import run_until_signalled

__all__ = ["add_arguments", "run"]

log = logging.getLogger("dronedepth.benchmarks.eval")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "eval"


class _Grid(TypedDict):
    altitudes: tuple[float, ...]
    pitches: tuple[float, ...]
    seconds: float


QUICK: _Grid = {"altitudes": (2.0, 30.0), "pitches": (30.0,), "seconds": 3.0}
"""``--quick``: every scene at 2 and 30 m, pitch 30°, 3 s flights (about 20 s on 2 cores)."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 2,10,30, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "depth sources: exact (sanity), relative (oracle: drifting affine disparity, noise, outliers; ground\n"
        "anchors alone), metric_x0.7 / metric_x1.4 (a metric model with a wrong scale: health check and\n"
        "--scale-correct), and with --model/--checkpoint/--random-init a real model through the embedded Triton\n\n"
        "examples:\n"
        "  dronedepth eval --quick --check              # CI: small grid, exit 1 if a target fails\n"
        "  dronedepth eval                              # full grid: 3 scenes x 4 altitudes x 3 pitches\n"
        "  dronedepth eval --checkpoint depth_anything_v2_vits.pth --encoder vits\n\n"
        "Writes eval.json, eval.md and PNG plots to --out."
    )
    parser.add_argument("--quick", action="store_true", help="altitudes 2,30 m, pitch 30°, 3 s flights (every scene)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default benchmarks/results/eval)")
    parser.add_argument("--check", action="store_true", help="exit 1 if an acceptance target is missed")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--scenes", help="comma list of ground,boxes,walls (default all)")
    grid.add_argument("--altitudes", type=_floats, metavar="M", help="altitudes in metres (default 2,10,30,60)")
    grid.add_argument("--pitches", type=_floats, metavar="DEG", help="camera pitch down, degrees (default 0,30,60)")
    grid.add_argument("--seconds", type=float, help="flight length in seconds at 10 fps (default 4)")
    model = parser.add_argument_group("a real model (optional; scored on rendered frames through Triton)")
    model.add_argument("--model", metavar="ID_OR_DIR", help="Hugging Face hub id or save_pretrained directory")
    model.add_argument("--checkpoint", metavar="FILE.pth", help="official checkpoint (needs --encoder)")
    model.add_argument(
        "--random-init", action="store_true", help="random weights: the path runs, the depth is meaningless"
    )
    model.add_argument("--encoder", metavar="E", help="encoder of --checkpoint / --random-init (e.g. vits)")
    model.add_argument("--metric", metavar="{indoor,outdoor}", help="the checkpoint is a metric model")
    model.add_argument("--input-size", type=int, default=518, help="short side the network sees (default 518)")


def _model_spec(args: argparse.Namespace) -> Any:
    from dronedepth.benchmarks.eval_model import ModelSpec

    chosen = [flag for flag in ("model", "checkpoint", "random_init") if getattr(args, flag)]
    if not chosen:
        return None
    if len(chosen) > 1:
        raise ConfigError("give one of --model, --checkpoint, --random-init")
    if args.model:
        flags, label = ["--model", args.model], args.model
    elif args.checkpoint:
        if not args.encoder:
            raise ConfigError("--checkpoint needs --encoder")
        flags, label = ["--checkpoint", args.checkpoint, "--encoder", args.encoder], Path(args.checkpoint).name
    else:
        encoder = args.encoder or "vits"
        flags, label = ["--random-init", "--encoder", encoder], f"random-init {encoder}"
    if args.metric:
        flags += ["--metric", args.metric]
    return ModelSpec(tuple(flags), label, bool(args.random_init), args.input_size)


def run(args: argparse.Namespace) -> int:
    return run_until_signalled(lambda: _eval(args))


def _eval(args: argparse.Namespace) -> int:
    from dronedepth.benchmarks.evaluation import EvalGrid, evaluate
    from dronedepth.benchmarks.scenes import SCENES

    defaults = EvalGrid()
    scenes = tuple(s.strip() for s in args.scenes.split(",")) if args.scenes else SCENES
    try:
        grid = EvalGrid(
            scenes=scenes,
            altitudes_m=args.altitudes or (QUICK["altitudes"] if args.quick else defaults.altitudes_m),
            pitches_deg=args.pitches or (QUICK["pitches"] if args.quick else defaults.pitches_deg),
            seconds=args.seconds or (QUICK["seconds"] if args.quick else defaults.seconds),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec = _model_spec(args)
    model = None
    if spec is not None:
        from dronedepth.benchmarks.eval_model import model_outputs

        model = model_outputs(spec, grid, out)
    log.info(
        "flying %d scenes x %d altitudes x %d pitches, %g s each%s",
        len(grid.scenes),
        len(grid.altitudes_m),
        len(grid.pitches_deg),
        grid.seconds,
        " (QUICK: a smoke run)" if args.quick else "",
    )
    doc = evaluate(grid, model)
    doc["quick"] = bool(args.quick)
    doc["plots"] = write_plots(doc, out)
    (out / "eval.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    report = markdown_report(doc)
    (out / "eval.md").write_text(report)
    print(report)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}" + "".join(f", {out / p}" for p in doc["plots"]))
    if not doc["runs"]:
        raise DroneDepthError("the evaluation measured nothing")
    failed = [t["target"] for t in doc["targets"] if t["status"] != "PASS"]
    if failed:
        log.warning("targets missed: %s", "; ".join(failed))
        if args.check:
            print("dronedepth eval: FAIL: " + "; ".join(failed))
            return 1
    return 0


# ------------------------------------------------------------------------------------------ report


def _source_label(doc: dict[str, Any], source: str) -> str:
    model = doc.get("model")
    if source == "model" and model:
        return f"model: {model['label']}" + (" — MEANINGLESS" if model["meaningless"] else "")
    return source


def markdown_report(doc: dict[str, Any]) -> str:
    from dronedepth.benchmarks.report import fmt, markdown_table

    g = doc["grid"]
    lines = [
        "# dronedepth eval: metric depth, scale, obstacles, flicker against ground truth",
        "",
        f"Grid: scenes {', '.join(g['scenes'])}; altitudes {', '.join(f'{h:g}' for h in g['altitudes_m'])} m; "
        f"camera pitch {', '.join(f'{p:g}' for p in g['pitches_deg'])}° down; {g['seconds']:g} s flights at "
        f"{g['fps']:g} fps; {len(doc['runs'])} runs in {doc['elapsed_s']:g} s."
        + (" **Quick mode: a smoke run.**" if doc.get("quick") else ""),
        f"Scored pixels: {doc['scored_pixels']}. Steady state: frames from 2 s on (medians over runs).",
        "",
    ]
    header = [
        "source", "runs", "AbsRel", "δ1", "RMSE m", "conv. s (med/max)", "not conv.", "AbsRel raw",
        "ratio err (frame/filtered)", "obstacle err", "TAE filter", "TAE per-frame fit", "TAE truth", "cost ms",
    ]  # fmt: skip
    rows = []
    for r in doc["summary"]:
        rows.append(
            [
                _source_label(doc, r["source"]),
                r["runs"],
                fmt(r["abs_rel"], 4),
                fmt(r["delta1"], 3),
                fmt(r["rmse_m"], 2),
                f"{fmt(r['convergence_s_median'], 1)} / {fmt(r['convergence_s_max'], 1)}",
                r["not_converged"],
                fmt(r.get("abs_rel_raw"), 3),
                f"{fmt(r.get('ratio_error_max'), 3)} / {fmt(r.get('ratio_error_filtered_max'), 3)}"
                if "ratio_error_max" in r
                else "-",
                fmt(r["obstacle_error"], 3),
                fmt(r["flicker_tae"], 4),
                fmt(r["flicker_tae_per_frame_fit"], 4),
                fmt(r["flicker_tae_truth"], 4),
                fmt(r["cost_ms"], 2),
            ]
        )
    lines += [markdown_table(header, rows, "lrrrrrrrrrrrrr"), "", "## Targets", ""]
    lines.append(
        markdown_table(
            ["target", "runs", "status", "failed runs"],
            [[t["target"], t["runs"], t["status"], ", ".join(t["failed_runs"]) or "-"] for t in doc["targets"]],
        )
    )
    lines += ["", "## Runs", ""]
    run_rows = [
        [
            r["scene"],
            f"{r['altitude_m']:g}",
            f"{r['pitch_deg']:g}",
            _source_label(doc, r["source"]),
            fmt(r["abs_rel"], 4),
            fmt(r["delta1"], 3),
            fmt(r["rmse_m"], 2),
            fmt(r["convergence_s"], 1),
            fmt(r.get("ratio_error_filtered_max"), 3),
            fmt(r["obstacle_error"], 3),
            fmt(r["flicker_tae"], 4),
        ]
        for r in doc["runs"]
    ]
    lines.append(
        markdown_table(
            [
                "scene",
                "alt m",
                "pitch °",
                "source",
                "AbsRel",
                "δ1",
                "RMSE m",
                "conv. s",
                "ratio err",
                "obst. err",
                "TAE",
            ],
            run_rows,
            "lrrlrrrrrrr",
        )
    )
    if doc.get("model") and doc["model"]["meaningless"]:
        lines += ["", "**The model's weights are random: its rows show the path runs; the numbers are meaningless.**"]
    return "\n".join(lines) + "\n"


def write_plots(doc: dict[str, Any], out: Path) -> list[str]:
    """AbsRel vs time per source, steady AbsRel vs altitude, scale ratio vs time; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from dronedepth.benchmarks.evaluation import ABS_REL_TARGET, RATIO_TOLERANCE

    runs = doc["runs"]
    sources = list(dict.fromkeys(r["source"] for r in runs))
    written = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for source in sources:
        series = [r["series"] for r in runs if r["source"] == source]
        times = series[0]["time_s"]
        values = np.array([[math.nan if v is None else v for v in s["abs_rel"]] for s in series], dtype=float)
        counts = np.sum(np.isfinite(values), axis=0)
        median = np.array([np.nanmedian(col) if n else math.nan for col, n in zip(values.T, counts, strict=True)])
        ax.plot(times, np.maximum(median, 1e-5), ".-", label=_source_label(doc, source))
    ax.axhline(ABS_REL_TARGET, color="gray", ls="--", lw=1, label=f"target {ABS_REL_TARGET}")
    ax.set_yscale("log")
    ax.set_xlabel("flight time (s)")
    ax.set_ylabel("metric AbsRel (median over runs)")
    ax.set_title("Metric depth error over time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "abs_rel_vs_time.png", dpi=110)
    plt.close(fig)
    written.append("abs_rel_vs_time.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    altitudes = sorted({r["altitude_m"] for r in runs})
    for source in sources:
        medians = []
        for h in altitudes:
            kept = [r["abs_rel"] for r in runs if r["source"] == source and r["altitude_m"] == h and r["abs_rel"]]
            medians.append(float(np.median(kept)) if kept else math.nan)
        ax.plot(altitudes, np.maximum(medians, 1e-5), "o-", label=_source_label(doc, source))
    ax.axhline(ABS_REL_TARGET, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("altitude above ground (m)")
    ax.set_ylabel("steady-state AbsRel (median)")
    ax.set_title("Steady-state metric depth error vs altitude")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "abs_rel_vs_altitude.png", dpi=110)
    plt.close(fig)
    written.append("abs_rel_vs_altitude.png")

    wrong = [r for r in runs if r.get("scale_error") not in (None, 1.0)]
    if wrong:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for r, colour in ((r, "tab:blue" if r["scale_error"] < 1 else "tab:red") for r in wrong):
            expected = 1.0 / r["scale_error"]
            for key, style in (("ratio", ":"), ("ratio_filtered", "-")):
                errors = [math.nan if v is None else 100.0 * (v / expected - 1.0) for v in r["series"][key]]
                ax.plot(r["series"]["time_s"], errors, style, color=colour, lw=0.8, alpha=0.6)
        ax.axhspan(-100 * RATIO_TOLERANCE, 100 * RATIO_TOLERANCE, color="green", alpha=0.1)
        ax.set_xlabel("flight time (s)")
        ax.set_ylabel("health-check ratio error (%)")
        ax.set_title("Metric scale check: ×0.7 blue, ×1.4 red; dotted per frame, solid filtered; band ±3 %")
        fig.tight_layout()
        fig.savefig(out / "scale_ratio_vs_time.png", dpi=110)
        plt.close(fig)
        written.append("scale_ratio_vs_time.png")
    return written
