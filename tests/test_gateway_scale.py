"""Metric scale in the gateway: the per-session helper (gateway/scaling.py) and real aiortc drones.

The scene is a flat ground 10 m below a drone pitched 0.5 rad nose down: every pixel sees the ground, so
its true z-depth is known in closed form (ray–plane intersection in the ENU world, independent of the
anchors module). A "relative model" outputs ``d = 3 / Z + 0.05`` (unknown scale and shift); a "metric
model with wrong scale" outputs ``1.4 · Z``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import Any

import numpy as np
import pytest
from gateway_fixtures import FakeDepthClient, TestDrone, camera_for, drones, photo, running_gateway, wait_until
from numpy.typing import NDArray

from dronedepth import protocol
from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.frames import Transform, quaternion_from_rpy
from dronedepth.gateway.pipeline import FramePose, ProcessingConfig
from dronedepth.gateway.projection import ray_grid
from dronedepth.gateway.scaling import SessionScale
from dronedepth.pose_buffer import TimedPose
from dronedepth.protocol import VIDEO_CLOCK_RATE, AnchorsMessage

FPS = 10.0
HEIGHT_M = 10.0
PITCH_RAD = 0.5
CAMERA = camera_for()
WORLD_FROM_BODY = Transform(quaternion_from_rpy(0.0, PITCH_RAD, 0.0), np.array([3.0, -2.0, HEIGHT_M]))
TICKS = round(VIDEO_CLOCK_RATE / FPS)


def true_depth() -> NDArray[np.float64]:
    """The z-depth (m) of every pixel of CAMERA: its ray meets the ground z = 0 of the ENU world."""
    world_from_camera = WORLD_FROM_BODY @ CAMERA.body_from_camera
    rays = ray_grid(CAMERA).rays.astype(np.float64)
    down = world_from_camera.rotate(rays.reshape(-1, 3))[:, 2].reshape(rays.shape[:2])
    assert (down < 0).all(), "the scene must be all ground"
    return -world_from_camera.translation[2] / down


TRUE_Z = true_depth()


def relative_output(_rgb: NDArray[np.uint8] | None = None) -> NDArray[np.float32]:
    return (3.0 / TRUE_Z + 0.05).astype(np.float32)


def metric_output_x14(_rgb: NDArray[np.uint8] | None = None) -> NDArray[np.float32]:
    return (1.4 * TRUE_Z).astype(np.float32)


def frame_pose(pts: int, height: float | None = HEIGHT_M) -> FramePose:
    return FramePose("map", "exact", TimedPose(pts / VIDEO_CLOCK_RATE, WORLD_FROM_BODY, height))


def rangefinder(pts: int, depth_m: float | None = None) -> AnchorsMessage:
    """The depth at the image centre pixel (160, 120), as a rangefinder along the optical axis gives it."""
    z = float(TRUE_Z[120, 160]) if depth_m is None else depth_m
    return AnchorsMessage(pts=pts, width=CAMERA.width, height=CAMERA.height, pixels=((160.0, 120.0),), depths=(z,))


# ---------------------------------------------------------------------------- the per-session helper


def test_anchors_match_their_frame_by_pts_and_old_ones_go() -> None:
    scaling = SessionScale("auto", max_gap_s=0.1)
    for pts in (0, 9000, 18000):
        scaling.add_anchors(rangefinder(pts))
    assert scaling.take_anchors(9000 + 900) is not None
    assert scaling.take_anchors(9000 + 900).pts == 9000  # type: ignore[union-attr]
    assert scaling.take_anchors(18000 + 4000) is not None  # 44 ms away
    assert scaling.take_anchors(18000 + 12000) is None  # 133 ms past the newest: none within the gap
    scaling.add_anchors(rangefinder(0))  # late, older than every frame to come: dropped at the next lookup
    assert scaling.take_anchors(36000) is None


def test_relative_model_becomes_metric_from_ground_and_goes_stale_without_anchors() -> None:
    scaling = SessionScale("auto")
    first = scaling.frame(relative_output(), "relative", CAMERA, 0, frame_pose(0, height=None), None)
    assert first is not None and first.metric_depth is None and first.scale.source == "model"

    results = [
        scaling.frame(relative_output(), "relative", CAMERA, n * TICKS, frame_pose(n * TICKS), None)
        for n in range(1, 6)
    ]
    assert all(r is not None and r.metric_depth is not None for r in results)
    last = results[-1]
    assert last is not None and last.metric_depth is not None
    assert last.scale.source == "ground" and last.check is None
    assert np.nanmax(np.abs(last.metric_depth / TRUE_Z - 1)) < 0.01
    assert last.scale.a == pytest.approx(1 / 3, rel=0.01)

    # Frames without a height above ground: the estimate is held, then goes stale (relative again).
    held = scaling.frame(relative_output(), "relative", CAMERA, 7 * TICKS, frame_pose(7 * TICKS, None), None)
    assert held is not None and held.metric_depth is not None and held.scale.a == last.scale.a
    stale = scaling.frame(relative_output(), "relative", CAMERA, 200 * TICKS, frame_pose(200 * TICKS, 0.0), None)
    assert stale is not None and stale.metric_depth is None and stale.scale == protocol.Scale.unscaled()


def test_drone_anchors_alone_say_anchors_and_a_bad_one_never_reaches_the_estimate() -> None:
    scaling = SessionScale("auto", config=None)
    # A rangefinder spot alone cannot fix a and b; with the ground it moves the source to 'anchors'.
    out = None
    for n in range(5):
        pts = n * TICKS
        scaling.add_anchors(rangefinder(pts))
        out = scaling.frame(relative_output(), "relative", CAMERA, pts, frame_pose(pts), scaling.take_anchors(pts))
    assert out is not None and out.scale.source == "anchors" and out.metric_depth is not None
    good = out.scale
    for bad in (math.nan, -3.0, 0.0, 5000.0):
        with pytest.raises(ProtocolError) as caught:
            rangefinder(0, depth_m=bad)
        assert caught.value.code == protocol.INVALID_ANCHORS
    with pytest.raises(ProtocolError, match="outside"):
        AnchorsMessage(pts=0, width=320, height=240, pixels=((900.0, 120.0),), depths=(12.0,))
    held = scaling.frame(relative_output(), "relative", CAMERA, 5 * TICKS, frame_pose(5 * TICKS, None), None)
    assert held is not None and (held.scale.a, held.scale.b) == (good.a, good.b)


def test_metric_model_is_checked_and_corrected_only_with_scale_correct() -> None:
    checked = SessionScale("auto")
    corrected = SessionScale("auto", correct=True)
    for n in range(6):
        pts = n * TICKS
        plain = checked.frame(metric_output_x14(), "metric", CAMERA, pts, frame_pose(pts), None)
        fixed = corrected.frame(metric_output_x14(), "metric", CAMERA, pts, frame_pose(pts), None)
    assert plain is not None and plain.metric_depth is None and plain.scale.source == "model"
    assert plain.check is not None and plain.check.ratio == pytest.approx(1 / 1.4, rel=0.03)
    assert fixed is not None and fixed.metric_depth is not None and fixed.scale.source == "ground"
    assert np.nanmax(np.abs(fixed.metric_depth / TRUE_Z - 1)) < 0.02
    assert checked.snapshot()["check"]["ratio"] == pytest.approx(1 / 1.4, rel=0.03)


def test_scale_modes() -> None:
    assert SessionScale("off").frame(relative_output(), "relative", CAMERA, 0, frame_pose(0), None) is None
    model = SessionScale("model")
    for n in range(4):
        out = model.frame(relative_output(), "relative", CAMERA, n * TICKS, frame_pose(n * TICKS), None)
        assert out is not None and out.metric_depth is None and out.scale.source == "model"
    with pytest.raises(ConfigError, match="--scale auto"):
        SessionScale("model", correct=True)
    with pytest.raises(ConfigError):
        SessionScale("always")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- real gateway + aiortc drone


def pose_message(pts: int) -> str:
    return protocol.encode(
        protocol.PoseMessage(
            pts=pts,
            position=tuple(WORLD_FROM_BODY.translation.tolist()),  # type: ignore[arg-type]
            orientation=tuple(WORLD_FROM_BODY.rotation.tolist()),  # type: ignore[arg-type]
            height_above_ground=HEIGHT_M,
        )
    )


async def send_poses(drone: TestDrone, stop: asyncio.Event) -> None:
    """Poses at the frame rate, a frame or two ahead of the video."""
    assert drone.track is not None
    next_pts = 0
    while not stop.is_set():
        while next_pts <= (drone.track.sent + 2) * TICKS:
            drone.send(pose_message(next_pts))
            next_pts += TICKS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


def keypoint_depth_error(message: dict[str, Any]) -> float:
    """Largest relative error of the keypoints' z against the ground truth at their pixels."""
    points = np.asarray(message["points"], dtype=np.float64).reshape(-1, 3)
    pixels = np.rint(np.asarray(message["pixels"], dtype=np.float64).reshape(-1, 2)).astype(int)
    assert len(points) > 0
    truth = TRUE_Z[pixels[:, 1], pixels[:, 0]]
    return float(np.max(np.abs(points[:, 2] / truth - 1)))


def metric_results(drone: TestDrone) -> list[dict[str, Any]]:
    return [m for m in drone.keypoints if m["depth_kind"] == "metric"]


async def test_relative_model_results_switch_to_metric_from_ground_and_bad_anchors_are_refused() -> None:
    client = FakeDepthClient(depth_kind="relative", output=relative_output)
    processing = ProcessingConfig(build_cloud=False)
    async with running_gateway(client, processing=processing) as gateway, drones(1, photo(), fps=FPS) as (drone,):
        await drone.connect(gateway.url, camera=CAMERA)
        stop = asyncio.Event()
        sender = asyncio.get_running_loop().create_task(send_poses(drone, stop))
        try:
            await drone.wait_for(lambda d: len(metric_results(d)) >= 3, what="3 metric results")
            first = drone.keypoints[0]
            assert first["depth_kind"] == "relative" or first["scale"]["source"] == "ground"
            metric = metric_results(drone)[-1]
            assert metric["scale"]["source"] == "ground" and metric["scale"]["confidence"] >= 0.3
            assert "scale_check" not in metric
            assert keypoint_depth_error(metric) < 0.05
            assert all(m["scale"]["source"] == "model" for m in drone.keypoints if m["depth_kind"] == "relative")

            # Bad anchors: refused with invalid_anchors (rate-limited), the session and its scale go on.
            for depth in ("NaN", "-2", "0", "1e9"):
                drone.send(
                    f'{{"type": "anchors", "pts": 0, "width": 320, "height": 240, '
                    f'"pixels": [[160, 120]], "depths": [{depth}]}}'
                )
            drone.send(
                '{"type": "anchors", "pts": 0, "width": 320, "height": 240, "pixels": [[5000, 1]], "depths": [9]}'
            )
            await drone.wait_for(lambda d: protocol.INVALID_ANCHORS in d.error_codes(), what="invalid_anchors")
            seen = len(drone.keypoints)
            await drone.wait_for(lambda d: len(d.keypoints) >= seen + 3, what="3 more results")
            assert drone.error_codes().count(protocol.INVALID_ANCHORS) == 1  # one report per second at most
            assert drone.keypoints[-1]["depth_kind"] == "metric"
            assert keypoint_depth_error(drone.keypoints[-1]) < 0.05

            confidence = re.search(
                rf'dronedepth_drone_scale_confidence{{drone="{drone.drone_id}",source="ground"}} ([0-9.]+)',
                gateway.metrics.render(),
            )
            assert confidence is not None and float(confidence.group(1)) >= 0.3
        finally:
            stop.set()
            await sender


@pytest.mark.parametrize("correct", [False, True], ids=["checked", "scale-correct"])
async def test_metric_model_with_wrong_scale_is_checked_and_corrected(correct: bool) -> None:
    processing = ProcessingConfig(build_cloud=False)
    client = FakeDepthClient(depth_kind="metric", output=metric_output_x14)
    async with (
        running_gateway(client, processing=processing, scale_correct=correct) as gateway,
        drones(1, photo(), fps=FPS) as (drone,),
    ):
        await drone.connect(gateway.url, camera=CAMERA)
        stop = asyncio.Event()
        sender = asyncio.get_running_loop().create_task(send_poses(drone, stop))
        try:
            want = "ground" if correct else "model"
            await drone.wait_for(
                lambda d: (
                    sum(m.get("scale", {}).get("source") == want and "scale_check" in m for m in d.keypoints) >= 3
                ),
                what=f"3 results with scale from {want} and a scale check",
            )
            last = drone.keypoints[-1]
            assert last["depth_kind"] == "metric"
            assert last["scale_check"]["ratio"] == pytest.approx(1 / 1.4, rel=0.03)
            if correct:
                assert keypoint_depth_error(last) < 0.05
            else:
                assert keypoint_depth_error(last) == pytest.approx(0.4, abs=0.01)  # the model's own metres
            await wait_until(lambda: "dronedepth_drone_scale_ratio{" in gateway.metrics.render(), what="ratio")
            ratio = re.search(r'dronedepth_drone_scale_ratio\{drone="[^"]+"\} ([0-9.]+)', gateway.metrics.render())
            assert ratio is not None and float(ratio.group(1)) == pytest.approx(1 / 1.4, rel=0.03)
        finally:
            stop.set()
            await sender
