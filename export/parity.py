"""Proof that an exported graph computes what the official inference path computes.

ONNX Runtime (CPU) on the exported model versus ``reference.reference_depth``
with the same weights, over frames of several sizes and aspect ratios and a
batch, scored by normalised RMSE (RMS error / std of the reference).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dronedepth.contract import INPUT_NAME, depth_grid_shape
from dronedepth.errors import ExportError
from dronedepth.export.architecture import DepthAnythingV2
from dronedepth.export.reference import nrmse, reference_depth, synthetic_frames

FP32_TOLERANCE = 1e-3
FP16_TOLERANCE = 2e-2  # FP16 weights and activations; measured ~1e-3 on CPU (ORT computes some ops in FP32)


@dataclass(frozen=True)
class ParityCase:
    height: int
    width: int
    batch: int = 1

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}" + (f" x{self.batch}" if self.batch > 1 else "")


PARITY_CASES: tuple[ParityCase, ...] = (
    ParityCase(480, 640),
    ParityCase(640, 480),
    ParityCase(240, 320),
    ParityCase(720, 1280),
    ParityCase(480, 640, batch=2),
)
"""Width×height 640×480, 480×640, 320×240, 1280×720 and a batch of two 640×480 frames."""


@dataclass(frozen=True)
class ParityResult:
    case: ParityCase
    nrmse: float
    max_abs: float
    onnx_seconds: float

    def passed(self, tolerance: float) -> bool:
        return bool(np.isfinite(self.nrmse)) and self.nrmse <= tolerance


def onnx_session(path: str | Path, threads: int | None = None) -> object:
    """An ONNX Runtime CPU session (errors converted to ExportError)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def run_onnx(session: object, frames: np.ndarray) -> np.ndarray:
    return session.run(None, {INPUT_NAME: frames})[0]  # type: ignore[attr-defined]


def check_parity(
    onnx_path: str | Path,
    model: DepthAnythingV2,
    input_size: int,
    cases: Sequence[ParityCase] = PARITY_CASES,
    seed: int = 0,
    depth_stride: int = 1,
) -> list[ParityResult]:
    """Score the exported model against the reference on every case (at stride ``s``: the reference's
    every ``s``-th row and column)."""
    session = onnx_session(onnx_path)
    # The first run allocates and plans: keep it out of the per-case timings.
    run_onnx(session, synthetic_frames(64, 64, 1, seed=seed))
    results = []
    for i, case in enumerate(cases):
        frames = synthetic_frames(case.height, case.width, case.batch, seed=seed + i)
        start = time.perf_counter()
        out = run_onnx(session, frames)
        seconds = time.perf_counter() - start
        expected_shape = (case.batch, *depth_grid_shape(case.height, case.width, depth_stride))
        if out.shape != expected_shape or out.dtype != np.float32:
            raise ExportError(
                f"{case.label}: the ONNX model returned {out.dtype} {out.shape}, expected float32 {expected_shape}"
            )
        ref = reference_depth(model, frames, input_size)[:, ::depth_stride, ::depth_stride]
        results.append(ParityResult(case, nrmse(out, ref), float(np.abs(out - ref).max()), seconds))
    return results
