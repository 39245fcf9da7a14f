"""Poses through a real gateway and real aiortc drones: world_from_camera, obstacles, no_pose, invalid_pose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import numpy as np
from gateway_fixtures import VIDEO_CLOCK, TestDrone, camera_for, drones, photo, running_gateway

from dronedepth import protocol
from dronedepth.frames import Transform, body_from_camera, quaternion_from_rpy
from dronedepth.gateway.pipeline import ProcessingConfig

FPS = 10.0
POSE_TICKS = 4500
"""Poses at 20 Hz, twice the frame rate: every frame's pts (9000 n) has a pose of its own."""


def true_pose(pts: int) -> Transform:
    """The drone's ``map_from_base_link`` at ``pts``: moving and turning, so position and yaw both matter."""
    t = pts / VIDEO_CLOCK
    return Transform(quaternion_from_rpy(0.0, 0.0, 0.3 * t), np.array([0.5 * t, 0.2 * t, 2.0]))


def pose_message(pts: int) -> str:
    pose = true_pose(pts)
    return protocol.encode(
        protocol.PoseMessage(
            pts=pts,
            position=tuple(pose.translation.tolist()),  # type: ignore[arg-type]
            orientation=tuple(pose.rotation.tolist()),  # type: ignore[arg-type]
            height_above_ground=2.0,
        )
    )


async def send_poses(drone: TestDrone, stop: asyncio.Event) -> None:
    """Keep the poses a frame or two ahead of the video, as a drone reading its autopilot does."""
    assert drone.track is not None
    next_pts = 0
    while not stop.is_set():
        up_to = round((drone.track.sent + 2) * VIDEO_CLOCK / FPS)
        while next_pts <= up_to:
            drone.send(pose_message(next_pts))
            next_pts += POSE_TICKS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


def posed(drone: TestDrone) -> list[dict[str, Any]]:
    return [m for m in drone.keypoints if "world_from_camera" in m]


def obstacles(drone: TestDrone) -> list[dict[str, Any]]:
    return [m for m in drone.messages if m["type"] == "obstacles"]


async def test_poses_give_world_results_obstacles_and_once_no_pose_when_they_stop() -> None:
    processing = ProcessingConfig(output_frame="world", build_cloud=False)
    camera = camera_for()
    mount = body_from_camera()
    async with running_gateway(processing=processing) as gateway, drones(2, photo(), fps=FPS) as (drone, bystander):
        await drone.connect(gateway.url, camera=camera)
        await bystander.connect(gateway.url, camera=camera)
        stop = asyncio.Event()
        sender = asyncio.get_running_loop().create_task(send_poses(drone, stop))
        await drone.wait_for(lambda d: len(posed(d)) >= 5, what="5 results with a pose")

        # Bad poses in a burst: refused with invalid_pose (rate-limited), nothing else changes.
        bad = [
            '{"type": "pose", "pts": 0, "position": [1, 2], "orientation": [0, 0, 0, 1]}',
            '{"type": "pose", "pts": 0, "position": [1, 2, 3], "orientation": [0, 0, 0, 2]}',
            pose_message(0),  # goes backwards
        ] * 7
        for text in bad:
            drone.send(text)
        await drone.wait_for(lambda d: "invalid_pose" in d.error_codes(), what="invalid_pose")
        count = len(posed(drone))
        await drone.wait_for(lambda d: len(posed(d)) >= count + 5, what="results with a pose after bad poses")
        assert 1 <= drone.error_codes().count("invalid_pose") < len(bad)

        stop.set()
        await sender
        await drone.wait_for(lambda d: "no_pose" in d.error_codes(), what="no_pose")
        count = len(drone.keypoints)
        await drone.wait_for(lambda d: len(d.keypoints) >= count + 5, what="results without a pose")
        await bystander.wait_for(lambda d: len(d.keypoints) >= 5, what="the bystander's results")
        snapshot = next(s.snapshot() for s in gateway.sessions.values() if s.drone_id == drone.drone_id)

    for message in posed(drone):
        pose = message["world_from_camera"]
        assert pose["frame_id"] == "map" and pose["match"] in ("exact", "interpolated", "extrapolated")
        expected = true_pose(message["pts"]) @ mount
        np.testing.assert_allclose(pose["position"], expected.translation, atol=2e-4)
        got = np.array(pose["orientation"])
        assert abs(abs(float(got @ expected.rotation)) - 1.0) < 1e-6
        assert message["frame"] == "map"
        decoded = protocol.decode(json.dumps(message))
        assert isinstance(decoded, protocol.KeypointsMessage) and decoded.camera_pose is not None
        np.testing.assert_allclose(
            np.array(message["points"]), decoded.camera_pose.world_from_camera.apply(decoded.points), atol=2e-3
        )
    without = drone.keypoints[-3:]
    assert all("world_from_camera" not in m and m["frame"] == "camera_optical" for m in without)
    assert drone.error_codes().count("no_pose") == 1
    assert set(drone.error_codes()) == {"invalid_pose", "no_pose"}

    # One obstacles message per delivered metric frame, after its keypoints, for the same pts.
    sent = obstacles(drone)
    assert len(sent) >= 10
    keypoint_pts = {m["pts"] for m in drone.keypoints}
    assert all(m["pts"] in keypoint_pts for m in sent)
    by_pts = {m["pts"]: m for m in sent}
    for message in posed(drone):
        if message["pts"] in by_pts:
            assert by_pts[message["pts"]]["gravity_aligned"] is True
    assert by_pts[without[-1]["pts"]]["gravity_aligned"] is False
    assert any(d > 0 for d in sent[-1]["distances_m"])  # the fake depth is 1–5 m: obstacles in the band
    assert snapshot["pose"]["frames_with_pose"] >= 10 and snapshot["pose"]["match"] == "ahead"
    assert snapshot["nearest_obstacle_m"] is not None and math.isfinite(snapshot["nearest_obstacle_m"])

    # The drone without poses: results as before, no pose notices.
    assert bystander.errors == [] and not posed(bystander)
