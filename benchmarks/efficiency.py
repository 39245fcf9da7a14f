"""Section 2: the full pipeline's frame rate against a bare ONNX Runtime session on the same model.

The bare session runs the exported ``model.onnx`` with the embedded Triton
adapter's session options and thread count
(:func:`benchmarks.triton_overhead.adapter_session_options`), one 640×480 frame
at a time, on the same frames the drone streams, in two rounds: right before
and right after the pipeline run; so does a plain gRPC client sending the
same frames to the embedded Triton one at a time ("Triton alone": serving
without the stream, the gateway or anything else competing for the cores). A shared machine drifts, so both rounds are
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

from dronedepth.benchmarks.stats import summarize
from dronedepth.contract import INPUT_NAME, OUTPUT_NAME

__all__ = ["BareSession", "TritonAlone", "efficiency_section", "pooled"]


class BareSession:
    """The served ``model.onnx`` in a plain ONNX Runtime session with the adapter's options."""

    def __init__(self, onnx_path: Path, frames: list[NDArray[np.uint8]], threads: int) -> None:
        import onnxruntime as ort

        from dronedepth.benchmarks.triton_overhead import adapter_session_options

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


class TritonAlone:
    """The same frames sent to the embedded Triton one at a time by a plain gRPC client: no stream, no gateway."""

    def __init__(self, url: str, frames: list[NDArray[np.uint8]]) -> None:
        import tritonclient.grpc as grpcclient

        from dronedepth.benchmarks.harness import TritonStats

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.stats = TritonStats(url)
        self.batches = [np.ascontiguousarray(f)[None] for f in frames]

    def _infer(self, batch: NDArray[np.uint8]) -> Any:
        from dronedepth.contract import MODEL_NAME

        tensor = self._grpc.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        return self.client.infer(MODEL_NAME, [tensor]).as_numpy(OUTPUT_NAME)

    def measure(self, *, warmup: int, count: int) -> dict[str, Any]:
        for i in range(warmup):
            self._infer(self.batches[i % len(self.batches)])
        before = self.stats.snapshot()
        latencies = []
        begin = time.perf_counter()
        for i in range(count):
            start = time.perf_counter()
            self._infer(self.batches[i % len(self.batches)])
            latencies.append((time.perf_counter() - start) * 1e3)
        elapsed = time.perf_counter() - begin
        summary = summarize(latencies)
        assert summary is not None
        server = self.stats.delta(before, self.stats.snapshot())
        return {
            "warmup_runs": warmup,
            "runs": count,
            "latency_ms": summary.to_dict(),
            "fps": count / elapsed,
            "triton": {k: round(v, 3) for k, v in server.items()},
        }

    def close(self) -> None:
        self.client.close()


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds measured before and after the pipeline run, pooled: the machine's drift shows in their spread."""
    runs = sum(r["runs"] for r in rounds)
    seconds = sum(r["runs"] / r["fps"] for r in rounds)
    out: dict[str, Any] = {
        "rounds": rounds,
        "fps": runs / seconds,
        "fps_rounds": [round(r["fps"], 3) for r in rounds],
        "latency_ms": {
            key: sum(r["latency_ms"][key] * r["runs"] for r in rounds) / runs for key in ("p50", "p95", "mean")
        },
    }
    if all("triton" in r and "compute_infer_ms" in r["triton"] for r in rounds):
        out["compute_infer_ms"] = sum(r["triton"]["compute_infer_ms"] * r["runs"] for r in rounds) / runs
    return out


def efficiency_section(
    pipeline_fps: float | None,
    bare: dict[str, Any],
    triton: dict[str, Any] | None,
    stage_rows: list[dict[str, Any]],
    sent_fps: float | None = None,
) -> dict[str, Any]:
    """The ratios: pipeline ÷ bare ONNX Runtime (the efficiency) and the Triton-alone step in between.

    ``saturated`` is False when the pipeline answered at least 90 % of the frames the drone sent:
    its rate then is the drone's, a lower bound of its capacity.
    """
    out: dict[str, Any] = {"bare_onnxruntime": bare, "triton_alone": triton, "pipeline_fps": pipeline_fps}
    if pipeline_fps and sent_fps:
        out["saturated"] = pipeline_fps < 0.9 * sent_fps
    if pipeline_fps:
        ratio = pipeline_fps / bare["fps"]
        out["efficiency"] = ratio
        out["overhead_percent"] = (1 - ratio) * 100
        out["per_frame_gap_ms"] = 1e3 / pipeline_fps - 1e3 / bare["fps"]
    if triton:
        out["triton_alone_ratio"] = triton["fps"] / bare["fps"]
    medians = {row["stage"]: row.get("p50", row.get("mean")) for row in stage_rows}
    out["stage_medians_ms"] = {k: v for k, v in medians.items() if v is not None}
    return out
