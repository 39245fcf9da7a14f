"""The benchmark's outputs: one JSON document, a Markdown report and PNG plots.

Everything here reads the result document built by :mod:`benchmarks.runner`
(plain dicts and lists), so a saved ``benchmark.json`` can be re-rendered.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

__all__ = ["fmt", "markdown_report", "markdown_table", "write_outputs", "write_plots"]

log = logging.getLogger("dronedepth.benchmarks.report")


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: ``-`` for missing values, fixed decimals for floats."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one character per column (``l`` or ``r``), default all ``l``."""
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError("every row and the alignment must have as many columns as the header")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ sections


def _header(doc: dict[str, Any]) -> list[str]:
    m, model, v = doc["machine"], doc.get("model") or {}, doc["versions"]
    lines = ["# dronedepth benchmark", ""]
    if doc["quick"]:
        lines += [
            f"> **Quick mode**: input size {model.get('input_size', '-')}, {doc['config']['duration_s']:g} s streams, "
            f"{doc['config']['frames']} timed frames: a smoke run that keeps the scripts working, not a measurement "
            "to quote.",
            "",
        ]
    lines += [
        f"- **Machine:** {m['cpu']}, {m['cores_usable']} usable cores ({m['cores_total']} total), "
        f"{fmt(m['memory_gib'])} GiB; {m['os']}; Python {m['python']}; load average at start "
        f"{', '.join(str(x) for x in m.get('load_average_at_start') or [])}, at end "
        f"{', '.join(str(x) for x in m.get('load_average_at_end') or [])} (other work on the machine shows here).",
    ]
    if model:
        lines.append(f"- **Model:** {model['description']}.")
        lines.append(
            f"- **Input:** 640×480 frames → network input {model['network_input']} "
            f"(input size {model['input_size']}), precision {model['precision']}, batch 1 per request."
        )
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    lines += [f"- **Versions:** {versions}.", f"- **Frames:** {doc['frames']}.", f"- **Warm-up:** {doc['warmup_note']}"]
    lines.append(
        f"- **Run:** {doc['created']}, {doc['elapsed_s']:.0f} s; sections: {', '.join(doc['config']['sections'])}."
    )
    return lines


def _stages(section: dict[str, Any]) -> list[str]:
    rows = []
    for r in section["rows"]:
        rows.append(
            [
                r["stage"],
                r["where"],
                r.get("n", 0),
                fmt(r.get("p50")),
                fmt(r.get("p95")),
                fmt(r.get("p99")),
                fmt(r.get("mean")),
                r.get("note", ""),
            ]
        )
    counts = section["gateway_counts"]
    dropped = ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts["dropped"].items())) or "none"
    t = section["triton_window"]
    return [
        f"## 1. Per-stage latency (one drone, 640×480 at {section['drone'].get('fps', '-')} fps, ms)",
        "",
        markdown_table(["stage", "where", "n", "p50", "p95", "p99", "mean", "note"], rows, "llrrrrrl"),
        "",
        f"{section['results_measured']} results measured after the warm-up ({section['results_total']} in all, "
        f"{section['frames_sent']} frames sent at {fmt(section['drone'].get('sent_fps'))} fps; the gateway keeps "
        "only the newest frame, so frames that arrive "
        f"while one is processed are superseded: {dropped}). Result rate {fmt(section['result_rate_fps'], 2)} "
        f"frames/s. Triton over the window: {fmt(t.get('requests'), 0)} requests, "
        f"{fmt(t.get('frames_per_execution'), 2)} frames per execution. Point cloud built per frame "
        f"({section['processing']['keypoints']} keypoints, max {section['processing']['max_keypoints']}).",
    ]


def _rounds(measured: dict[str, Any]) -> str:
    return " / ".join(fmt(x, 2) for x in measured.get("fps_rounds", []))


def _efficiency(section: dict[str, Any]) -> list[str]:
    bare, alone = section["bare_onnxruntime"], section.get("triton_alone")
    threads = f"{bare['threads']}"
    rows = [
        [
            "bare ONNX Runtime session, same model file and frames, one at a time",
            threads,
            fmt(bare["fps"], 2),
            _rounds(bare),
            fmt(bare["latency_ms"]["p50"]),
            fmt(bare["latency_ms"]["p95"]),
        ]
    ]
    if alone:
        rows.append(
            [
                "Triton alone: a gRPC client sends the same frames one at a time",
                f"{threads} (Triton)",
                fmt(alone["fps"], 2),
                _rounds(alone),
                fmt(alone["latency_ms"]["p50"]),
                fmt(alone["latency_ms"]["p95"]),
            ]
        )
    rows.append(
        [
            "full pipeline: drone → WebRTC → gateway → Triton → keypoints back (1 drone)",
            f"{threads} (Triton)",
            fmt(section.get("pipeline_fps"), 2),
            "-",
            "glass-to-result: see 1.",
            "",
        ]
    )
    header = ["path", "ORT threads", "frames/s", "rounds before / after (frames/s)", "latency p50 (ms)", "p95 (ms)"]
    lines = [
        "## 2. Serving efficiency",
        "",
        markdown_table(header, rows, "llrrrr"),
        "",
    ]
    if section.get("efficiency") is not None:
        if section.get("saturated") is False:
            lines += [
                "**Not saturated:** the pipeline answered nearly every frame the drone sent, so its rate is the "
                "drone's frame rate, not the pipeline's capacity: the efficiency below is a lower bound.",
                "",
            ]
        lines.append(
            f"**Efficiency {section['efficiency']:.2f}** (pipeline frames/s ÷ bare ONNX Runtime frames/s): our "
            f"serving costs {section['overhead_percent']:.0f} % of the throughput, "
            f"{section['per_frame_gap_ms']:.0f} ms per frame. {section.get('gap_explained', '')}"
        )
    if section.get("triton_alone_ratio") is not None:
        lines += [
            "",
            f"Triton alone runs at {section['triton_alone_ratio']:.2f} of bare ONNX Runtime: that part is the serving "
            "layer itself (gRPC, Python backend); the rest of the gap is the stream and the gateway, including their "
            "share of the same cores.",
        ]
    best = section.get("scaling_best")
    if best:
        lines += [
            "",
            f"With several drones the gateway's work overlaps Triton's: the best total rate in the scaling run was "
            f"{best['fps']:.2f} frames/s with {best['drones']} drone(s), {best['efficiency']:.2f} of bare ONNX Runtime "
            "(measured later in the run, not paired with the bare rounds).",
        ]
    return lines


def _baseline(section: dict[str, Any]) -> list[str]:
    if section.get("skipped"):
        return ["## 3. Against the naive baseline", "", f"Skipped: {section['skipped']}"]
    steps = section["steps_ms"]
    ours = section.get("ours", {})
    rows = [
        [
            "naive: PyTorch eager infer_image + meshgrid + Open3D cloud",
            fmt(section["fps"], 2),
            fmt(steps["total"]["p50"]),
            fmt(steps["total"]["p95"]),
            "in-process loop, no network, no keypoints",
        ],
        [
            "ours: full pipeline (glass-to-result)",
            fmt(ours.get("fps"), 2),
            fmt(ours.get("latency_p50")),
            fmt(ours.get("latency_p95")),
            "WebRTC both ways, keypoints, cloud",
        ],
        [
            "ours: model only (bare ONNX Runtime)",
            fmt(ours.get("bare_fps"), 2),
            fmt(ours.get("bare_p50")),
            fmt(ours.get("bare_p95")),
            "same model file as Triton serves",
        ],
    ]
    step_rows = [[k, fmt(v["p50"]), fmt(v["p95"])] for k, v in steps.items()]
    lines = [
        "## 3. Against the naive baseline",
        "",
        markdown_table(["contender", "frames/s", "latency p50 (ms)", "p95 (ms)", "note"], rows, "lrrrl"),
        "",
    ]
    if ours.get("throughput_ratio") is not None:
        lines.append(
            f"**Throughput ×{ours['throughput_ratio']:.2f}** (ours ÷ naive), **latency ×{ours['latency_ratio']:.2f}** "
            f"(naive p50 ÷ our glass-to-result p50; above 1 means ours is faster). Model alone: ONNX Runtime is "
            f"×{ours['model_speedup']:.2f} the naive PyTorch forward + pre/post-processing."
        )
    lines += [
        "",
        f"Same weights: the naive model's depth differs from the served ONNX model's by nRMSE "
        f"{section['parity_nrmse_vs_onnx']:.1e} on the first frame. {section['threads']} threads, "
        f"{section['warmup_frames']} warm-up frames, {section['frames']} timed.",
        "",
        markdown_table(["naive step", "p50 (ms)", "p95 (ms)"], step_rows, "lrr"),
    ]
    return lines


def _projection(section: dict[str, Any]) -> list[str]:
    from dronedepth.benchmarks.projection import markdown

    return [
        "## 4. Projection: ours against Open3D `create_from_depth_image`",
        "",
        markdown(section["projection"]),
        "",
        f"FrameProcessor at 640×480 (ORB, 200 keypoints, cloud on), {section['runs']} runs after 5 warm-up runs:",
        "",
        markdown(section["pipeline"]),
    ]


def _scaling(section: dict[str, Any]) -> list[str]:
    rows = []
    for s in section["steps"]:
        lat, tr, res, counts = s.get("latency_ms") or {}, s.get("trend") or {}, s["resources"], s["gateway_counts"]
        dropped = counts["dropped"]
        other = sum(v for k, v in dropped.items() if k not in ("superseded", "session_closed"))
        gw, tt = res.get("gateway", {}), res.get("triton (server + stubs)", {})
        drones = res.get("drones (bench process)", {})
        third = "-" if not tr else f"{tr['first_p50']:.0f} → {tr['last_p50']:.0f}"
        rows.append(
            [
                s["drones"],
                fmt(s.get("sent_fps_mean"), 1),
                fmt(s["per_drone_fps_mean"], 2),
                fmt(s["aggregate_fps"], 2),
                fmt(lat.get("p50"), 0),
                fmt(lat.get("p95"), 0),
                fmt(lat.get("p99"), 0),
                fmt(tr.get("slope_ms_per_min"), 0),
                third,
                ("yes" if tr.get("flat") else "NO") if tr else "-",
                f"{dropped.get('superseded', 0):.0f} / {other:.0f}",
                fmt(gw.get("cpu_percent_mean"), 0),
                fmt(gw.get("rss_mib_max"), 0),
                fmt(tt.get("cpu_percent_mean"), 0),
                fmt(drones.get("cpu_percent_mean"), 0),
            ]
        )
    header = [
        "drones",
        "sent fps per drone",
        "results/s per drone",
        "total results/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "slope ms/min",
        "p50 first → last third",
        "flat",
        "dropped superseded / other",
        "gateway CPU %",
        "gateway RSS MiB",
        "Triton CPU %",
        "drones CPU %",
    ]
    failures = {s["drones"]: s["failures"] for s in section["steps"] if s["failures"]}
    lines = [
        f"## 5. Scaling with drones ({section['fps_per_drone']:g} fps each, {section['duration_s']:g} s per step)",
        "",
        markdown_table(header, rows, "r" * len(header)),
        "",
        "Triton per step: "
        + "; ".join(
            f"{s['drones']} drone(s): {fmt(s.get('triton', {}).get('frames_per_execution'), 2)} frames per execution, "
            f"compute_infer {fmt(s.get('triton', {}).get('compute_infer_ms'), 0)} ms, queue "
            f"{fmt(s.get('triton', {}).get('queue_ms'), 0)} ms per request"
            for s in section["steps"]
        )
        + ".",
        "",
        "CPU is % of one core, averaged over the step (sampled each second with psutil); RSS is the gateway "
        "process's peak. 'Dropped other' counts frames lost for any reason but the newest-frame policy "
        "and the frame left in the slot when a drone hangs up (inference errors, send backlog...). The drones run in "
        "the benchmark process on the same cores, streaming frames decoded once (no per-frame image reading).",
    ]
    if failures:
        lines += ["", f"Drone failures: {failures}"]
    return lines


def _gpu(section: dict[str, Any]) -> list[str]:
    lines = ["## 6. GPU mode", ""]
    if section.get("skipped"):
        return [*lines, f"**Skipped:** {section['reason']}."]
    for encoder, rows in section["encoders"].items():
        table = []
        for r in rows:
            if "skipped" in r:
                table.append([r["contender"], "-", "-", "-", "-", f"skipped: {r['skipped'][:120]}"])
                continue
            a, b = r.get("640x480", {}), r.get("518x518", {})
            table.append(
                [
                    r["contender"],
                    fmt(a.get("latency_ms", {}).get("p50"), 2),
                    fmt(a.get("fps"), 1),
                    fmt(b.get("latency_ms", {}).get("p50"), 2),
                    fmt(b.get("fps"), 1),
                    fmt(a.get("fps_4_clients"), 1) if "fps_4_clients" in a else "",
                ]
            )
        published = "; ".join(f"{k}: {v}" for k, v in section["published"][encoder].items())
        lines += [
            f"### {encoder}",
            "",
            markdown_table(
                ["contender", "640×480 p50 ms", "640×480 fps", "518×518 p50 ms", "518×518 fps", "note"], table, "lrrrrl"
            ),
            "",
            f"Published: {published}.",
            "",
        ]
    return lines


def _gateway_cost(section: dict[str, Any]) -> list[str]:
    alone = section["triton_alone"]
    clip = section["clip"]
    slower = "/".join(f"{r['fps']:g}" for r in clip.get("rates", [])[1:])  # the clips a drone switches to
    lines = [
        "## gateway cost (zero-cost model, replayed drones)",
        "",
        f"{section['frame']} VP8 clip of {clip['frames']} frames (keyframe every {clip['keyframe_interval']}, "
        f"{clip['bitrate_kbit_s']} kbit/s) encoded once and replayed by every drone at "
        f"{section['fps_per_drone']:g} fps{f' (or {slower} fps, as the gateway advises)' if slower else ''}; "
        f"model: {section['model']}. "
        "The model alone, one request at a time "
        f"from a plain gRPC client: p50 {fmt(alone['latency_ms']['p50'])} ms per request (Triton server side "
        f"{fmt(alone['triton'].get('server_request_ms'), 2)} ms). Window: "
        f"{section['duration_s'] - section['warmup_s']:g} s after a {section['warmup_s']:g} s warm-up.",
        "",
    ]
    stage_names = ("queue", "convert", "inference", "detection", "projection", "keypoints", "pointcloud", "message")
    rows = []
    for step in section["steps"]:
        latency = step["latency_ms"] or {}
        worst = max((d["p95"] for d in step["per_drone_latency_ms"].values() if d), default=None)
        cores = step["cores_busy"]
        advised = [fps for fps in (step.get("advised_fps") or {}).values() if fps is not None]
        rows.append(
            [
                step["drones"],
                fmt(step["results_per_s"]),
                fmt(step.get("frames_sent_per_s")),
                fmt(step["frames_received_per_s"]),
                f"{min(advised):g}–{max(advised):g}" if advised else "-",  # at the end of the step
                fmt(step["gateway_cpu_ms_per_result"]),
                fmt(latency.get("p50"), 0),
                fmt(latency.get("p95"), 0),
                fmt(worst, 0),
                " / ".join(fmt(cores.get(k), 2) for k in ("gateway", "triton", "drones (bench process)")),
                *(fmt(step["stages_ms"].get(k)) for k in stage_names),
            ]
        )
    header = [
        "drones", "results/s", "frames sent/s", "frames in/s", "advised fps/drone", "gateway CPU ms/result",
        "p50 ms", "p95 ms", "worst drone p95",
        "cores: gateway / Triton / drones", *(f"{k} ms" for k in stage_names),
    ]  # fmt: skip
    lines.append(markdown_table(header, rows))
    if section.get("levers"):
        base = section["steps"][-1]
        lines += ["", f"Levers at {base['drones']} drones, against the defaults above (same run):", ""]
        lever_rows = [
            [
                f"{lever['lever']} (`{' '.join(lever['gateway_args'])}`)",
                f"{fmt(base['results_per_s'])} → {fmt(lever['results_per_s'])}",
                f"{fmt(base['gateway_cpu_ms_per_result'])} → {fmt(lever['gateway_cpu_ms_per_result'])}",
                f"{fmt(base['stages_ms'].get('detection'))} → {fmt(lever['stages_ms'].get('detection'))}",
                f"{fmt((base['latency_ms'] or {}).get('p50'), 0)} → {fmt((lever['latency_ms'] or {}).get('p50'), 0)}",
                f"{fmt((base['latency_ms'] or {}).get('p95'), 0)} → {fmt((lever['latency_ms'] or {}).get('p95'), 0)}",
            ]
            for lever in section["levers"]
        ]
        lines.append(
            markdown_table(
                ["lever", "results/s", "gateway CPU ms/result", "detection ms", "p50 ms", "p95 ms"], lever_rows
            )
        )
    profile = section.get("profile") or {}
    if profile.get("skipped"):
        lines += ["", f"Profile skipped: {profile['skipped']}"]
    elif profile:
        lines += [
            "",
            f"py-spy profile of the gateway at {profile['drones']} drones ({profile['samples']} samples, "
            f"{profile['results']:.0f} results), top {min(10, len(profile['rows']))} by cumulative time "
            f"(all {len(profile['rows'])} in `gateway_cost_profile.txt`):",
            "",
            markdown_table(
                ["function", "cumulative %", "own %", "sampled ms/result (busy threads, not CPU)"],
                [
                    [f"`{r['function']}`", fmt(r["cumulative_pct"]), fmt(r["own_pct"]), fmt(r["ms_per_result"], 2)]
                    for r in profile["rows"][:10]
                ],
            ),
        ]
    return lines


def _fleet(section: dict[str, Any]) -> list[str]:
    lines = [
        "## fleet (M gateways × K Tritons × N replayed drones, zero-cost model)",
        "",
        f"{section['frame']} replayed VP8 drones at {section['fps_per_drone']:g} fps each until the gateway advises "
        f"fewer; model: {section['model']}; {section['split']}. Window: "
        f"{section['duration_s'] - section['warmup_s']:g} s after a {section['warmup_s']:g} s warm-up.",
        "",
    ]
    rows = []
    for c in section["configurations"]:
        latency = c["latency_ms"] or {}
        advice = c["advised_fps"]
        rows.append(
            [
                c["gateways"],
                c["tritons"],
                f"{c['streamed']}/{c['drones']}",
                fmt(c["results_per_s"]),
                f"{fmt(c['per_drone_results_per_s']['mean'])} / {fmt(c['per_drone_results_per_s']['min'])}",
                fmt(c["frames_sent_per_s"]),
                fmt(c["frames_decoded_per_s"]),
                f"{advice['min']:g}–{advice['max']:g}" if advice else "-",
                fmt(latency.get("p50"), 0),
                fmt(latency.get("p95"), 0),
                fmt(c["worst_drone_p95_ms"], 0),
                fmt(c["gateway_cpu_ms_per_result"]),
                " / ".join(fmt(c["cores_busy"][k], 2) for k in ("gateways", "tritons", "drones (bench process)")),
                len(c["failures"]),
            ]
        )
    header = [
        "gateways", "Tritons", "drones streamed", "results/s", "per drone results/s mean / min", "frames sent/s",
        "frames decoded/s", "advised fps/drone", "p50 ms", "p95 ms", "worst drone p95", "gateway CPU ms/result",
        "cores: gateways / Tritons / drones", "failures",
    ]  # fmt: skip
    lines.append(markdown_table(header, rows, "rrrrrrrrrrrrrr"))
    block = section["sizing"]
    per_core = ", ".join(
        f"{c['gateways']}×{c['tritons']}×{c['drones']}: {fmt(c['results_per_s_per_gateway_core'])}"
        for c in block["per_configuration"]
    )
    lines += [
        "",
        f"Sizing rule: {block['rule']}.",
        "",
        f"- results/s per gateway core (1000 / gateway CPU ms per result), gateways×Tritons×drones: {per_core}",
    ]
    lines += [
        f"- {c['gateways']} gateway(s), {c['tritons']} Triton(s): carries {c['drones']} drones "
        f"({fmt(c['drones_per_gateway'], 2)} per gateway)"
        for c in block["carried"]
    ]
    return lines


def _receiver(section: dict[str, Any]) -> list[str]:
    setup = section["setup"]
    rows = []
    for run in section["runs"]:
        latency = run["latency_ms"] or {}
        rows.append(
            [
                run["receiver"],
                f"{run['loss']:.0%}",
                fmt(latency.get("p50")),
                fmt(latency.get("p95")),
                run["frames_sent"],
                run["frames_answered"],
                run["frames_lost"],
                run["frames_corrupted"],
                f"{run['rtp_packets_dropped']} / {run['rtp_packets_sent']}",
            ]
        )
    return [
        "## 8. Receiver: aiortc's frame release against release at the marker packet",
        "",
        f"One drone, {setup['frame']} at {setup['fps']:g} fps, {setup['duration_s']:g} s per run, the first "
        f"{setup['warmup_s']:g} s left out; depth: {setup['depth']}; {setup['link']}. Glass-to-result is the "
        "drone's capture to its `keypoints`; lost: sent in the window, never answered; corrupted: frames aiortc's "
        "decoder failed on.",
        "",
        markdown_table(
            ["receiver", "RTP loss", "p50 ms", "p95 ms", "sent", "answered", "lost", "corrupted", "RTP dropped"],
            rows,
            "llrrrrrrr",
        ),
    ]


def markdown_report(doc: dict[str, Any]) -> str:
    lines = _header(doc)
    sections = doc["sections"]
    renderers = {
        "stages": _stages,
        "efficiency": _efficiency,
        "baseline": _baseline,
        "projection": _projection,
        "scaling": _scaling,
        "gateway-cost": _gateway_cost,
        "fleet": _fleet,
        "receiver": _receiver,
        "gpu": _gpu,
    }
    for name, render in renderers.items():
        if name in sections:
            lines += ["", *render(sections[name])]
        elif name in doc.get("skipped", {}):
            lines += ["", f"## {name}", "", f"Skipped: {doc['skipped'][name]}"]
    if doc.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in doc["plots"]) + "."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ outputs


def write_plots(doc: dict[str, Any], out: Path) -> list[str]:
    """PNG plots next to the report; returns their file names (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    sections = doc["sections"]
    title = f"{(doc.get('model') or {}).get('encoder', '')} @ {(doc.get('model') or {}).get('input_size', '')}"
    if "stages" in sections:
        rows = [r for r in sections["stages"]["rows"] if r.get("p50") is not None or r.get("mean") is not None]
        labels = [r["stage"].strip() for r in rows]
        values = [r.get("p50", r.get("mean")) or 0.0 for r in rows]
        errors = [max(0.0, (r.get("p95") or v) - v) for r, v in zip(rows, values, strict=True)]
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
        floor = 0.05  # log axis: bars start here
        widths = [max(v, floor * 1.01) - floor for v in values]
        colours = ["tab:orange" if r.get("p50") is None else "tab:blue" for r in rows]
        ax.barh(range(len(rows)), widths, left=floor, xerr=[[0.0] * len(rows), errors], color=colours, alpha=0.85)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms, log scale (blue: p50 with p95 whisker; orange: mean per request from Triton statistics)")
        ax.set_title(f"Per-stage latency, 640×480, one drone ({title})")
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=110)
        plt.close(fig)
        written.append("stages.png")
    if "scaling" in sections:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for step in sections["scaling"]["steps"]:
            series = step["latency_series"]
            if series:
                ax.plot(
                    [t for t, _, _ in series],
                    [ms for _, ms, _ in series],
                    ".",
                    ms=3,
                    label=f"{step['drones']} drone(s)",
                )
        ax.set_xlabel("capture time since the first frame (s)")
        ax.set_ylabel("glass-to-result latency (ms)")
        ax.set_title(f"Latency over the run, {sections['scaling']['fps_per_drone']:g} fps per drone ({title})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "scaling_latency.png", dpi=110)
        plt.close(fig)
        written.append("scaling_latency.png")
    if "fleet" in sections:
        fig, (rate_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
        layouts: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for c in sections["fleet"]["configurations"]:
            layouts.setdefault((c["gateways"], c["tritons"]), []).append(c)
        for (gateways, tritons), steps in layouts.items():
            label = f"{gateways} gateway(s) × {tritons} Triton(s)"
            drones = [c["drones"] for c in steps]
            rate_ax.plot(drones, [c["results_per_s"] for c in steps], "o-", label=label)
            worst = [math.nan if c["worst_drone_p95_ms"] is None else c["worst_drone_p95_ms"] for c in steps]
            latency_ax.plot(drones, worst, "o-", label=label)
        limit = sections["fleet"]["sizing"]["latency_limit_ms"]
        latency_ax.axhline(limit, color="tab:gray", linestyle="--", label=f"{limit:g} ms")
        for ax, ylabel in ((rate_ax, "results/s (all drones)"), (latency_ax, "worst drone p95 glass-to-result (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("replayed drones (N)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        fig.suptitle(f"Fleet: zero-cost model, {sections['fleet']['frame']} replayed drones")
        fig.tight_layout()
        fig.savefig(out / "fleet_curve.png", dpi=110)
        plt.close(fig)
        written.append("fleet_curve.png")
    bars: list[tuple[str, float]] = []
    if "efficiency" in sections:
        bars.append(("bare ONNX Runtime", sections["efficiency"]["bare_onnxruntime"]["fps"]))
        if sections["efficiency"].get("pipeline_fps"):
            bars.append(("pipeline, 1 drone", sections["efficiency"]["pipeline_fps"]))
    if "scaling" in sections:
        best = max(sections["scaling"]["steps"], key=lambda s: s["aggregate_fps"])
        bars.append((f"pipeline, best total ({best['drones']} drone(s))", best["aggregate_fps"]))
    if "baseline" in sections and not sections["baseline"].get("skipped"):
        bars.append(("naive PyTorch loop", sections["baseline"]["fps"]))
    if bars:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(
            [b[0] for b in bars],
            [b[1] for b in bars],
            color=["tab:gray", "tab:blue", "tab:green", "tab:red"][: len(bars)],
        )
        ax.set_ylabel("frames/s (640×480)")
        ax.set_title(f"Throughput ({title})")
        plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        written.append("throughput.png")
    return written


def write_outputs(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``benchmark.json``, plots and ``benchmark.md`` under ``out``; returns the JSON and Markdown paths."""
    out.mkdir(parents=True, exist_ok=True)
    doc["plots"] = write_plots(doc, out)
    json_path, md_path = out / "benchmark.json", out / "benchmark.md"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md_path.write_text(markdown_report(doc))
    return json_path, md_path
