"""Section 2: the full pipeline's frame rate against a bare ONNX Runtime session on the same model.

The bare session runs the exported ``model.onnx`` with the embedded Triton
adapter's session options and thread count
(:func:`benchmarks.triton_overhead.adapter_session_options`), one 640×480 frame
at a time, on the same frames the drone streams, in two rounds: right before
and right after the pipeline run. A shared machine drifts, so both rounds are
kept; the ratio uses their pooled rate and the percentiles shown are the
run-weighted means of the rounds'. The pipeline's rate is the drone's result
rate in the stage run (drone → WebRTC → gateway → Triton → keypoints back),
after the warm-up. Their ratio is the serving efficiency; ``1 - ratio`` is
what our serving costs on top of the model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks.stats import summarize
from dronedepth.contract import INPUT_NAME, OUTPUT_NAME

__all__ = ["BareSession", "bare_onnxruntime", "efficiency_section"]


class BareSession:
    """The served ``model.onnx`` in a plain ONNX Runtime session with the adapter's options."""

    def __init__(self, onnx_path: Path, frames: list[NDArray[np.uint8]], threads: int) -> None:
        import onnxruntime as ort

        from benchmarks.triton_overhead import adapter_session_options

        started = time.perf_counter()
        self.session = ort.InferenceSession(
            str(onnx_path), adapter_session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.load_s = time.perf_counter() - started
        self.threads = threads
        self.batches = [np.ascontiguousarray(f)[None] for f in frames]

    def measure(self, *, warmup: int, count: int) -> dict[str, Any]:
        """Latency and frame rate of ``session.run`` on one frame at a time, after ``warmup`` runs."""
        for i in range(warmup):
            self.session.run([OUTPUT_NAME], {INPUT_NAME: self.batches[i % len(self.batches)]})
        latencies = []
        begin = time.perf_counter()
        for i in range(count):
            start = time.perf_counter()
            self.session.run([OUTPUT_NAME], {INPUT_NAME: self.batches[i % len(self.batches)]})
            latencies.append((time.perf_counter() - start) * 1e3)
        elapsed = time.perf_counter() - begin
        summary = summarize(latencies)
        assert summary is not None
        return {"warmup_runs": warmup, "runs": count, "latency_ms": summary.to_dict(), "fps": count / elapsed}


def bare_onnxruntime(rounds: list[dict[str, Any]], threads: int, load_s: float) -> dict[str, Any]:
    """Rounds measured before and after the pipeline run, pooled: the machine's drift shows in their spread."""
    runs = sum(r["runs"] for r in rounds)
    seconds = sum(r["runs"] / r["fps"] for r in rounds)
    return {
        "threads": threads,
        "session_options": "intra-op threads as the adapter, inter-op 1, sequential, no spinning",
        "rounds": rounds,
        "fps": runs / seconds,
        "fps_rounds": [round(r["fps"], 3) for r in rounds],
        "latency_ms": {
            key: sum(r["latency_ms"][key] * r["runs"] for r in rounds) / runs for key in ("p50", "p95", "mean")
        },
        "session_load_s": round(load_s, 2),
    }


def efficiency_section(
    pipeline_fps: float | None, bare: dict[str, Any], stage_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ratio and where the gap goes (per-frame medians of the stage run against bare ORT)."""
    out: dict[str, Any] = {"bare_onnxruntime": bare, "pipeline_fps": pipeline_fps}
    if pipeline_fps:
        ratio = pipeline_fps / bare["fps"]
        out["efficiency"] = ratio
        out["overhead_percent"] = (1 - ratio) * 100
        out["per_frame_gap_ms"] = 1e3 / pipeline_fps - 1e3 / bare["fps"]
    medians = {row["stage"]: row.get("p50", row.get("mean")) for row in stage_rows}
    out["stage_medians_ms"] = {k: v for k, v in medians.items() if v is not None}
    return out
