"""Poses end to end: the real gateway with a real embedded Triton, and ``dronedepth drone`` in a subprocess.

The drone streams the synthetic scene with its exact pose (``--pose synthetic``)
and forwards obstacle profiles to a pymavlink autopilot on 127.0.0.1
(``--mavlink udpout``). The model is the tiny synthetic one declared metric
(depth = 0.5 + 4 × luma / 255 m: not the scene's depth), so this checks the
flow, the frames and the units, not accuracy: keypoints carry the camera pose
and landmark ids, obstacle profiles come back gravity-aligned and reach the
autopilot as OBSTACLE_DISTANCE, and the gateway's rosbag2 places the drone in
``map`` with the transforms its results state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gateway_fixtures import TOKEN, gateway_config
from mavlink_fixtures import Autopilot, free_udp_port
from serving_fixtures import metric_tiny_repository, serve
from test_drone_cli import run_cli
from test_rosbag import read_bag

from dronedepth.contract import MODEL_NAME
from dronedepth.drone.cli import TOKEN_ENV
from dronedepth.drone.mavlink import mavutil, obstacle_distance_fields
from dronedepth.frames import Transform
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.gateway.outputs.rosbag import BagSink
from dronedepth.gateway.server import Gateway
from dronedepth.protocol import ObstaclesMessage
from dronedepth.serving import EmbeddedTriton

pytestmark = pytest.mark.slow
FRAMES = 12
WAIT_S = 120.0


@pytest.fixture(scope="module")
def metric_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """An embedded Triton serving the tiny model as a metric one (metres, max depth 20)."""
    with serve(metric_tiny_repository(tmp_path_factory, max_depth_m=20), tmp_path_factory) as server:
        yield server


def pose_of(payload: dict) -> Transform:
    return Transform(np.array(payload["orientation"]), np.array(payload["position"]))


def tf_of(message) -> Transform:  # type: ignore[no-untyped-def]
    t, q = message.transform.translation, message.transform.rotation
    return Transform(np.array([q.x, q.y, q.z, q.w]), np.array([t.x, t.y, t.z]))


async def test_a_posed_drone_gets_poses_obstacles_and_mavlink_through_triton(
    metric_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    results = tmp_path / "results.jsonl"
    bags = BagSink(tmp_path / "bags")
    gateway = Gateway(
        gateway_config(idle_timeout=60.0), TritonDepthClient(metric_triton.url, MODEL_NAME, timeout=30), sink=bags
    )
    await gateway.start()
    port = free_udp_port()
    autopilot = Autopilot(f"udpin:127.0.0.1:{port}")
    try:
        code, _, err = await run_cli(
            "--gateway",
            gateway.url,
            "--drone-id",
            "e2e-drone",
            "--source",
            "synthetic",
            "--width",
            "320",
            "--height",
            "240",
            "--fps",
            "5",
            "--max-frames",
            str(FRAMES),
            "--pose",
            "synthetic",
            "--mavlink",
            f"udpout:127.0.0.1:{port}",
            "--obstacle-max-age",
            "5",  # a slow CI machine must not starve the autopilot; freshness is test_drone_mavlink's
            "--results",
            str(results),
            env={TOKEN_ENV: TOKEN},
        )
    finally:
        await gateway.stop()
        autopilot.close()
        bags.close()
    assert code == 0, err[-3000:]

    lines = [json.loads(line) for line in results.read_text().splitlines()]
    keypoints = [line for line in lines if line["type"] == "keypoints"]
    profiles = [line for line in lines if line["type"] == "obstacles"]
    assert len(keypoints) >= FRAMES // 2 and profiles

    # Keypoints: metric, in the optical frame, with the camera's pose in map (ENU) and landmark ids. Every frame
    # but the drone's end-of-stream repeat of its last one (sent to flush the receiver, after the last pose).
    posed = [line for line in keypoints if "world_from_camera" in line]
    assert len(posed) >= FRAMES - 1
    for line in keypoints:
        assert line["depth_kind"] == "metric" and line["axes"] == "optical"
        assert ("ids" in line) is ("world_from_camera" in line), "ids only with a pose"
    for line in posed:
        camera_pose = line["world_from_camera"]
        assert camera_pose["frame_id"] == "map" and camera_pose["match"] in {"exact", "interpolated", "extrapolated"}
        assert len(line["ids"]) == len(line["points"])
        assert all(i >= -1 for i in line["ids"])
    tracked = [i for line in posed for i in line["ids"] if i >= 0]
    assert tracked and len(set(tracked)) < len(tracked), "some landmark keeps its id across frames"

    # Obstacle profiles: after their frame's keypoints, gravity-aligned with a pose (the drone sent its attitude).
    assert {line["pts"] for line in profiles} <= {line["pts"] for line in keypoints}
    posed_pts = {line["pts"] for line in posed}
    for line in profiles:
        assert line["gravity_aligned"] is (line["pts"] in posed_pts)
        distances = [d for d in line["distances_m"] if d >= 0]
        assert all(line["min_range_m"] <= d <= line["max_range_m"] for d in distances)

    # The autopilot got OBSTACLE_DISTANCE (MAVLink 2, body FRD) equal to one of those profiles.
    received = [message for _, message in autopilot.obstacles]
    assert received, "no OBSTACLE_DISTANCE reached the autopilot"
    expected = {obstacle_distance_fields(ObstaclesMessage.from_dict(line)).distances_cm for line in profiles}
    for message in received:
        assert message.frame == mavutil.mavlink.MAV_FRAME_BODY_FRD
        assert tuple(message.distances) in expected

    # The gateway's bag: map → base_link per frame, the mount once; together the camera poses the results state.
    (bag,) = (tmp_path / "bags").iterdir()
    topics = read_bag(bag)
    (static,) = topics["/tf_static"]
    (mount,) = static[2].transforms
    assert mount.child_frame_id == "e2e_drone/camera_optical_frame"
    transforms = [t for _, _, msg in topics["/tf"] for t in msg.transforms]
    assert {(t.header.frame_id, t.child_frame_id) for t in transforms} == {
        ("map", "e2e_drone/base_link"),
        ("e2e_drone/base_link", "e2e_drone/base_link_level"),
    }
    world_from_camera = [tf_of(t) @ tf_of(mount) for t in transforms if t.header.frame_id == "map"]
    assert len(world_from_camera) == len(posed)
    sent = [pose_of(line["world_from_camera"]) for line in posed]
    for pose in sent:
        gaps = [np.abs(pose.matrix - recorded.matrix).max() for recorded in world_from_camera]
        assert min(gaps) < 1e-3  # the JSON rounds positions to 0.1 mm, quaternions to 1e-6
    assert len(topics["/e2e_drone/obstacles"]) >= len(profiles)
