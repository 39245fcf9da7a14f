"""One ``dronedepth bench`` run: every section on the same machine, model, input size and frames.

Order: the model is exported (or reused), the embedded Triton started once;
then the stage run (one drone through the whole pipeline), bare ONNX Runtime,
the naive PyTorch baseline, projection, the scaling steps, the gateway cost,
the receiver runs (their own in-process gateway and zero-cost depth) and GPU mode. Each
section that fails is recorded as skipped with its reason; the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from dronedepth.benchmarks.environment import machine_info, package_versions, server_env_versions
from dronedepth.benchmarks.harness import BenchConfig, Frames, ModelSetup, bench_camera, load_frames, prepare_model

__all__ = ["run_benchmark"]

log = logging.getLogger("dronedepth.benchmarks")


def _model_doc(setup: ModelSetup) -> dict[str, Any]:
    from dronedepth.export.reference import lower_bound_size_numpy

    facts = dict(setup.facts)
    height, width = lower_bound_size_numpy(480, 640, int(facts["input_size"]))
    return {
        **facts,
        "description": setup.describe(),
        "onnx": str(setup.onnx_path),
        "onnx_mib": round(setup.onnx_path.stat().st_size / 2**20, 1),
        "network_input": f"{width}×{height}",
        "exported_here": setup.exported_here,
        "export_s": None if setup.export_s is None else round(setup.export_s, 1),
    }


def _warmup_note(config: BenchConfig) -> str:
    return (
        f"streams: results of frames captured in the first {config.warmup_s:g} s after each drone's first frame are "
        f"left out (Triton also runs its own warm-up frame at load); bare ONNX Runtime, Triton alone and the naive "
        "baseline: "
        f"{config.warmup_frames} untimed frames first; projection: 5 untimed runs. No contender shares a cache with "
        "another: each has its own session or model (the gateway's per-camera ray grid is built once per camera, "
        "as in production)."
    )


def _ours_vs_naive(doc: dict[str, Any]) -> None:
    baseline = doc["sections"].get("baseline")
    if not baseline or baseline.get("skipped"):
        return
    ours: dict[str, Any] = {}
    stages = doc["sections"].get("stages")
    if stages:
        end_to_end = next(r for r in stages["rows"] if r["stage"].startswith("glass-to-result"))
        ours.update(fps=stages["result_rate_fps"], latency_p50=end_to_end.get("p50"), latency_p95=end_to_end.get("p95"))
    efficiency = doc["sections"].get("efficiency")
    if efficiency:
        bare = efficiency["bare_onnxruntime"]
        ours.update(bare_fps=bare["fps"], bare_p50=bare["latency_ms"]["p50"], bare_p95=bare["latency_ms"]["p95"])
        naive_model = sum(baseline["steps_ms"][k]["p50"] for k in ("preprocess", "model", "upsample"))
        ours["model_speedup"] = naive_model / bare["latency_ms"]["p50"]
    if ours.get("fps") and ours.get("latency_p50"):
        ours["throughput_ratio"] = ours["fps"] / baseline["fps"]
        ours["latency_ratio"] = baseline["steps_ms"]["total"]["p50"] / ours["latency_p50"]
        ours.setdefault("model_speedup", float("nan"))
    baseline["ours"] = ours


def _best_scaling(doc: dict[str, Any]) -> None:
    efficiency, scaling = doc["sections"].get("efficiency"), doc["sections"].get("scaling")
    if not efficiency or not scaling or not scaling["steps"]:
        return
    best = max(scaling["steps"], key=lambda s: s["aggregate_fps"])
    efficiency["scaling_best"] = {
        "drones": best["drones"],
        "fps": best["aggregate_fps"],
        "efficiency": best["aggregate_fps"] / efficiency["bare_onnxruntime"]["fps"],
    }


def _explain_gap(doc: dict[str, Any]) -> None:
    efficiency, stages = doc["sections"].get("efficiency"), doc["sections"].get("stages")
    if not efficiency or not stages or efficiency.get("per_frame_gap_ms") is None:
        return
    rows = {r["stage"].strip(): r for r in stages["rows"]}
    bare_mean = efficiency["bare_onnxruntime"]["latency_ms"]["mean"]

    def mean(prefix: str) -> float:
        row: dict[str, Any] = next((r for k, r in rows.items() if k.startswith(prefix)), {})
        return float(row.get("mean") or 0.0)

    alone = efficiency.get("triton_alone") or {}
    alone_infer = alone.get("compute_infer_ms", bare_mean)
    parts = {
        "Triton's Python backend (compute_infer alone − bare ONNX Runtime)": alone_infer - bare_mean,
        "sharing the cores with the stream (compute_infer in the pipeline − alone)": mean("Triton compute_infer")
        - alone_infer,
        "gRPC transfer + (de)serialisation": mean("gRPC transfer"),
        "Triton queue + tensor in/out": mean("Triton queue")
        + mean("Triton compute_input")
        + mean("Triton compute_output"),
        "gateway convert (to RGB)": mean("convert"),
        "gateway processing (projection, keypoints, cloud, message)": sum(
            mean(k) for k in ("projection", "keypoints", "point cloud", "other processing")
        ),
    }
    efficiency["gap_parts_ms"] = {k: round(v, 1) for k, v in parts.items()}
    biggest = max(parts, key=lambda k: parts[k])
    efficiency["gap_explained"] = (
        "Per frame (means): "
        + "; ".join(f"{k} {v:.0f} ms" for k, v in parts.items())
        + f". Largest: {biggest}. One drone's frames go through these steps one after the other."
    )


def _section(doc: dict[str, Any], name: str, work: Any) -> None:
    started = time.perf_counter()
    log.info("── %s", name)
    try:
        doc["sections"][name] = work()
    except Exception as exc:
        log.error("section %s failed: %s", name, exc)
        log.debug("%s", traceback.format_exc())
        doc["skipped"][name] = f"failed: {exc}"
    doc["section_seconds"][name] = round(time.perf_counter() - started, 1)


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run the selected sections; returns the result document (see :mod:`benchmarks.report`)."""
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    versions: dict[str, Any] = package_versions()
    versions["tritonserver"] = None
    versions["server env"] = ", ".join(f"{k} {v}" for k, v in server_env_versions().items() if v) or None
    doc: dict[str, Any] = {
        "benchmark": "dronedepth bench",
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": config.quick,
        "config": {
            "sections": list(config.sections),
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "frames": config.frames,
            "warmup_frames": config.warmup_frames,
            "drones": list(config.drones),
            "fps": config.fps,
            "threads": config.thread_count,
            "queue_timeout_ms": config.queue_timeout_ms,
            "max_in_flight": config.max_in_flight,
            "input_size_asked": config.input_size,
            "encoder_asked": config.encoder,
        },
        "machine": machine_info(),
        "versions": versions,
        "warmup_note": _warmup_note(config),
        "sections": {},
        "skipped": {},
        "section_seconds": {},
    }
    frames = load_frames(config.photos)
    doc["frames"] = frames.description
    needs_model = config.wants("stages", "efficiency", "baseline", "scaling")
    setup = None
    if needs_model:
        setup = prepare_model(config)
        doc["model"] = _model_doc(setup)
        log.info("model: %s", setup.describe())
    if config.wants("stages", "efficiency", "baseline", "scaling"):
        assert setup is not None
        _with_triton(config, setup, frames, doc)
    if config.wants("projection"):
        from dronedepth.benchmarks.projection import pipeline_rows, projection_rows

        runs = 10 if config.quick else 50
        _section(
            doc,
            "projection",
            lambda: {"projection": projection_rows(runs), "pipeline": pipeline_rows(runs), "runs": runs},
        )
    if config.wants("gateway-cost"):
        from dronedepth.benchmarks.gateway_cost import gateway_cost_section

        _section(doc, "gateway-cost", lambda: gateway_cost_section(config))
    if config.wants("fleet"):
        from dronedepth.benchmarks.fleet import fleet_section

        _section(doc, "fleet", lambda: fleet_section(config))
    if config.wants("receiver"):
        from dronedepth.benchmarks.receiver import receiver_section

        _section(
            doc,
            "receiver",
            lambda: asyncio.run(
                receiver_section(frames, fps=config.fps, duration_s=config.duration_s, warmup_s=config.warmup_s)
            ),
        )
    if config.wants("gpu"):
        from dronedepth.benchmarks.gpu import gpu_section

        _section(doc, "gpu", lambda: gpu_section(config, frames.rgb))
    _ours_vs_naive(doc)
    _explain_gap(doc)
    _best_scaling(doc)
    doc["elapsed_s"] = time.perf_counter() - started
    doc["machine"]["load_average_at_end"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    return doc


def _with_triton(config: BenchConfig, setup: ModelSetup, frames: Frames, doc: dict[str, Any]) -> None:
    from dronedepth.benchmarks.harness import TritonStats
    from dronedepth.serving import AdapterSettings, EmbeddedTriton

    settings = AdapterSettings(
        intra_op_threads=config.thread_count, queue_timeout_us=round(config.queue_timeout_ms * 1000)
    )
    log_dir = config.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tail_s = 10.0 if config.quick else 60.0
    log.info("starting the embedded Triton (%d ONNX Runtime threads)", config.thread_count)
    with EmbeddedTriton(
        setup.repository, grpc_port=0, http_port=0, metrics_port=0, settings=settings, log_file=log_dir / "triton.log"
    ) as triton:
        doc["versions"]["tritonserver"] = TritonStats(triton.grpc_url).server_version()
        doc["serving"] = {
            "instances": settings.instances,
            "onnxruntime_threads": settings.threads(),
            "queue_timeout_ms": config.queue_timeout_ms,
            "backend": "Python backend + ONNX Runtime (embedded CPU Triton)",
        }
        bare, alone = None, None
        bare_rounds: list[dict[str, Any]] = []
        alone_rounds: list[dict[str, Any]] = []

        def paired_round(label: str) -> None:
            assert bare is not None and alone is not None
            log.info("── bare ONNX Runtime and Triton alone, %s", label)
            bare_rounds.append(bare.measure(warmup=config.warmup_frames, count=config.frames))
            alone_rounds.append(alone.measure(warmup=config.warmup_frames, count=config.frames))

        if config.wants("efficiency"):
            from dronedepth.benchmarks.efficiency import BareSession, TritonAlone

            bare = BareSession(setup.onnx_path, frames.rgb, config.thread_count)
            alone = TritonAlone(triton.grpc_url, frames.rgb)
            paired_round("round 1 (before the pipeline run)")
        if config.wants("stages", "efficiency", "baseline"):
            from dronedepth.benchmarks.stages import stages_section
            from dronedepth.benchmarks.stream import pipeline_run

            def stages() -> dict[str, Any]:
                run = asyncio.run(pipeline_run(config, frames, triton.grpc_url, tail_s=tail_s))
                return stages_section(run)

            _section(doc, "stages", stages)
        if bare is not None and alone is not None:
            from dronedepth.benchmarks.efficiency import efficiency_section, pooled

            def efficiency() -> dict[str, Any]:
                assert bare is not None
                paired_round("round 2 (after the pipeline run)")
                stages_doc = doc["sections"].get("stages") or {}
                bare_doc = {
                    **pooled(bare_rounds),
                    "threads": config.thread_count,
                    "session_load_s": round(bare.load_s, 2),
                    "session_options": "intra-op threads as the adapter, inter-op 1, sequential, no spinning",
                }
                return efficiency_section(
                    stages_doc.get("result_rate_fps"),
                    bare_doc,
                    pooled(alone_rounds),
                    stages_doc.get("rows", []),
                    (stages_doc.get("drone") or {}).get("sent_fps"),
                )

            _section(doc, "efficiency", efficiency)
            alone.close()
            del bare, alone
        if config.wants("baseline"):
            from dronedepth.benchmarks.baseline import naive_baseline

            def baseline() -> dict[str, Any]:
                try:
                    return naive_baseline(
                        setup.facts,
                        setup.onnx_path,
                        frames.rgb,
                        bench_camera(),
                        threads=config.thread_count,
                        warmup=config.warmup_frames,
                        count=config.frames,
                    )
                except LookupError as exc:
                    return {"skipped": str(exc)}

            _section(doc, "baseline", baseline)
        if config.wants("scaling"):
            from dronedepth.benchmarks.scaling import scaling_section

            _section(
                doc,
                "scaling",
                lambda: asyncio.run(scaling_section(config, frames, triton.grpc_url, triton.pid, tail_s)),
            )
