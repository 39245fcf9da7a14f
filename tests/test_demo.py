"""The demo's pipeline end to end, reduced: a small input size and a few frames per drone."""

import json
from pathlib import Path

import cv2
import pytest
from dronedepth.export.repository import read_model_facts
from dronedepth.gateway.outputs.recording import session_folders

from dronedepth import cli

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--random-init", "--input-size", "70", "--frames", "6", "--fps", "3", "--width", "320"]
    assert cli.main([*args, "--out", str(out)]) == 0

    facts = read_model_facts(out / "model_repository" / "depth_anything_v2")
    assert facts.random_init and facts.input_size == 70
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["random_init"] is True
    assert set(summary["drones"]) == {"photos-1", "synthetic-2"}
    assert "Random-init weights" in (out / "summary.md").read_text()
    for drone_id, drone in summary["drones"].items():
        assert drone["frames_sent"] == 6
        assert drone["results"] >= 1, drone
        results = [json.loads(line) for line in (out / drone_id / "results.jsonl").read_text().splitlines()]
        assert results and all(r["depth_kind"] == "metric" for r in results)
        for picture in ("depth_preview.png", "pointcloud.png"):
            image = cv2.imread(str(out / drone_id / picture))
            assert image is not None and image.std() > 0, picture
        (session,) = session_folders(out / "recordings", drone_id)
        assert list(session.glob("cloud_*.ply"))
        assert (session / "keypoints.jsonl").stat().st_size > 0
        assert list((out / "bags").glob(f"{drone_id}*/*.mcap"))
    assert "dronedepth_frames_processed_total" in (out / "gateway_metrics.txt").read_text()

    # A second run reuses the export instead of exporting again.
    model = out / "model_repository" / "depth_anything_v2" / "1" / "model.onnx"
    before = model.stat().st_mtime_ns
    assert cli.main([*args, "--out", str(out), "--drones", "1", "--frames", "2"]) == 0
    assert model.stat().st_mtime_ns == before
