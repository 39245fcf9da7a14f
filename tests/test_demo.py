"""The demo's pipeline end to end, reduced: a small input size and a few frames per drone."""

import json
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest

from dronedepth import cli
from dronedepth.export.repository import read_model_facts
from dronedepth.gateway.outputs.recording import session_folders

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
    markdown = (out / "summary.md").read_text()
    assert "Random-init weights" in markdown and "obstacles" in markdown and "map" in markdown
    for drone_id, drone in summary["drones"].items():
        assert drone["frames_sent"] == 6
        assert drone["results"] >= 1, drone
        lines = [json.loads(line) for line in (out / drone_id / "results.jsonl").read_text().splitlines()]
        results = [line for line in lines if line["type"] == "keypoints"]
        assert results and all(r["depth_kind"] == "metric" for r in results)
        for picture in ("depth_preview.png", "pointcloud.png", "obstacles.png"):
            image = cv2.imread(str(out / drone_id / picture))
            assert image is not None and image.std() > 0, picture
        navigation = drone["navigation"]
        assert navigation["depth_kinds"] == {"metric": drone["results"]}
        assert sum(navigation["scale_sources"].values()) == drone["results"]
        assert sum(navigation["pose_matches"].values()) == drone["results"]
        assert navigation["obstacle_messages"] == drone["obstacle_profiles"] > 0
        assert navigation["last_profile"]["sectors"] > 0
        assert f"| {drone_id} |" in markdown.split("## Navigation")[1]
        (session,) = session_folders(out / "recordings", drone_id)
        assert list(session.glob("cloud_*.ply"))
        assert (session / "keypoints.jsonl").stat().st_size > 0
        assert list((out / "bags").glob(f"{drone_id}*/*.mcap"))
    assert "dronedepth_frames_processed_total" in (out / "gateway_metrics.txt").read_text()

    # The synthetic drone flies with its exact pose: landmarks, a fused map, profiles to the autopilot stand-in.
    synthetic = summary["drones"]["synthetic-2"]
    assert synthetic["navigation"]["results_with_pose"] == synthetic["navigation"]["pose_matches"]["exact"] > 0
    assert synthetic["navigation"]["landmark_ids"]["distinct"] > 0
    assert synthetic["navigation"]["gravity_aligned_obstacle_messages"] > 0
    autopilot = synthetic["autopilot"]
    assert autopilot["obstacle_distance_messages"] > 0
    assert autopilot["last"]["frame"] == "MAV_FRAME_BODY_FRD" and len(autopilot["last"]["distances_cm"]) == 72
    # The photo drone has no pose: nothing tracked, nothing fused, no autopilot link.
    photos = summary["drones"]["photos-1"]
    assert photos["navigation"]["results_with_pose"] == 0
    assert photos["navigation"]["pose_matches"] == {"no_pose": photos["results"]}
    assert photos["navigation"]["landmark_ids"] == {"distinct": 0, "reobserved": 0}
    assert photos["navigation"]["gravity_aligned_obstacle_messages"] == 0
    assert "autopilot" not in photos

    world_map = summary["map"]
    assert world_map["frames"]["fused"] > 0 and world_map["frames"]["no_pose"] >= photos["results"]
    assert world_map["blocks"]["map"] > 0
    cloud = o3d.t.io.read_point_cloud(str(out / "map.ply"))
    assert len(cloud.point.positions) > 0
    topdown = cv2.imread(str(out / "map_topdown.png"), cv2.IMREAD_UNCHANGED)
    assert topdown is not None and topdown.size > 1 and np.count_nonzero(topdown) > 0
    assert (out / "recordings" / "map_map.ply").stat().st_size > 0  # also saved by the gateway on shutdown

    # A second run reuses the export instead of exporting again.
    model = out / "model_repository" / "depth_anything_v2" / "1" / "model.onnx"
    before = model.stat().st_mtime_ns
    assert cli.main([*args, "--out", str(out), "--drones", "1", "--frames", "2"]) == 0
    assert model.stat().st_mtime_ns == before
