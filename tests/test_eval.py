"""``dronedepth eval``: the metric functions on hand-made arrays, and the quick grid end to end (CI's run)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dronedepth.benchmarks.evaluation import abs_rel, depth_metrics, obstacle_error
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA


def test_depth_metrics_on_hand_made_arrays() -> None:
    truth = np.array([[1.0, 2.0], [4.0, 10.0]])
    estimate = np.array([[1.1, 2.0], [6.0, np.nan]], dtype=np.float32)
    mask = np.array([[True, True], [True, True]])
    metrics = depth_metrics(estimate, truth, mask)
    assert metrics is not None and metrics.pixels == 3  # the NaN estimate is not scored
    assert metrics.abs_rel == pytest.approx((0.1 + 0.0 + 0.5) / 3, rel=1e-6)
    assert metrics.delta1 == pytest.approx(2 / 3)  # 6 / 4 = 1.5 is not within 1.25
    assert metrics.rmse_m == pytest.approx(math.sqrt((0.01 + 0.0 + 4.0) / 3), rel=1e-6)
    assert abs_rel(estimate, truth, np.array([[False, True], [False, False]])) == 0.0
    assert depth_metrics(estimate, truth, np.zeros((2, 2), bool)) is None
    assert math.isnan(abs_rel(estimate, truth, np.zeros((2, 2), bool)))


def test_obstacle_error_counts_missed_sectors() -> None:
    truth = np.array([10.0, 20.0, OBSTACLE_FREE, OBSTACLE_NO_DATA, 5.0], dtype=np.float32)
    estimate = np.array([11.0, OBSTACLE_FREE, 3.0, 7.0, 5.0], dtype=np.float32)
    assert obstacle_error(estimate, truth) == pytest.approx(0.1)  # median of 0.1, 1 (missed), 0
    assert obstacle_error(estimate, np.full(5, OBSTACLE_FREE, dtype=np.float32)) is None


def test_quick_eval_passes_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "dronedepth.cli", "eval", "--quick", "--check", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| relative |" in done.stdout and "PASS" in done.stdout
    doc = json.loads((out / "eval.json").read_text())
    assert [t["status"] for t in doc["targets"]] == ["PASS", "PASS", "PASS"]
    assert all(t["runs"] > 0 for t in doc["targets"])
    sources = {row["source"]: row for row in doc["summary"]}
    assert set(sources) == {"exact", "relative", "metric_x0.7", "metric_x1.4"}
    runs = len(doc["grid"]["scenes"]) * len(doc["grid"]["altitudes_m"]) * len(doc["grid"]["pitches_deg"])
    assert all(row["runs"] == runs > 0 for row in sources.values())
    assert sources["exact"]["abs_rel_raw"] < 1e-6 and sources["exact"]["delta1"] == 1.0
    # The wrong scales are as wrong as they are before the correction, and the health check sees it.
    assert sources["metric_x0.7"]["abs_rel_raw"] == pytest.approx(0.3, abs=0.01)
    assert sources["metric_x1.4"]["abs_rel_raw"] == pytest.approx(0.4, abs=0.01)
    assert sources["relative"]["abs_rel"] <= 0.05 and sources["relative"]["convergence_s_max"] <= 2.0
    assert sources["relative"]["flicker_tae"] < sources["relative"]["flicker_tae_per_frame_fit"]
    for row in sources.values():
        assert row["cost_ms"] > 0 and row["flicker_tae"] is not None
    run = doc["runs"][0]
    assert len(run["series"]["time_s"]) == len(run["series"]["abs_rel"]) == doc["grid"]["seconds"] * doc["grid"]["fps"]
    for plot in ("abs_rel_vs_time.png", "abs_rel_vs_altitude.png", "scale_ratio_vs_time.png"):
        assert (out / plot).stat().st_size > 1000
    assert "## Targets" in (out / "eval.md").read_text()


def test_eval_refuses_a_bad_grid(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dronedepth.cli", "eval", "--scenes", "moon", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "scenes must be among ground, boxes, walls" in done.stderr


def test_a_strided_model_is_scored_on_its_depth_grid() -> None:
    """A model of depth stride 2 returning the exact depth on its grid scores as exact depth does, on that grid."""
    from dronedepth.benchmarks.evaluation import EvalGrid, ModelOutputs, evaluate, flight_key

    grid = EvalGrid(scenes=("walls",), altitudes_m=(2.0,), pitches_deg=(0.0,), seconds=3.0)
    (flight,) = grid.flights()
    outputs = [flight.true_depth(t)[::2, ::2].astype(np.float32) for t in grid.times_s]
    model = ModelOutputs("exact at stride 2", "metric", False, {flight_key(flight): outputs})
    doc = evaluate(grid, model, progress=lambda _: None)
    runs = {run["source"]: run for run in doc["runs"]}
    strided, exact = runs["model"], runs["exact"]
    # Only the scale fitted from the (noisy) sensed ground separates either from the truth.
    assert strided["steady_frames_metric"] == exact["steady_frames_metric"] > 0 and strided["delta1"] == 1.0
    assert strided["abs_rel"] == pytest.approx(exact["abs_rel"], abs=1e-3) and strided["abs_rel"] < 0.01
    assert strided["obstacle_error"] == pytest.approx(exact["obstacle_error"], abs=1e-3)
    # The flicker floor is the grid's own (coarser pixels round more), measured with the grid's camera.
    assert strided["flicker_tae_truth"] > exact["flicker_tae_truth"]
    assert strided["flicker_tae_truth"] <= strided["flicker_tae"] < 2 * strided["flicker_tae_truth"]
