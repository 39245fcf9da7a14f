"""Metric scale end to end: a relative model on the real embedded Triton, the real gateway, ``dronedepth drone``.

The model (:func:`~dronedepth.serving.synthetic.ground_disparity_model`) sees
every frame as the synthetic scene's flat ground: disparity proportional to
the ground's true inverse depth under the drone's level camera, with a scale
the gateway does not know. The drone (``--source synthetic --pose synthetic``,
a subprocess) sends its exact pose with the height above ground (1.6 m); the
gateway fits the ground plane's anchors and its results switch from
``relative`` to ``metric`` with ``scale.source == "ground"``, in metres the
closed form confirms. The gateway's rosbag2 records the same ``scale`` the
drone received, on ``/<ns>/scale``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gateway_fixtures import TOKEN, gateway_config
from serving_fixtures import reference_depth, serve
from test_drone_cli import run_cli
from test_rosbag import read_bag

from dronedepth.contract import MODEL_NAME
from dronedepth.drone.cli import TOKEN_ENV
from dronedepth.drone.sources import SyntheticSource
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.gateway.outputs.rosbag import BagSink, ros_name
from dronedepth.gateway.server import Gateway
from dronedepth.serving import EmbeddedTriton
from dronedepth.serving.synthetic import ground_disparity_model, write_model

GAIN = 2.5
"""The model's unknown scale: disparity = GAIN · height / tan(hfov / 2) × the true inverse depth."""
WIDTH, HEIGHT, HFOV_DEG = 320, 240, 70.0  # the drone's synthetic camera (its default field of view)
FRAMES = 20
DRONE_ID = "scale-e2e"


def ground_inverse_depth(rows: np.ndarray) -> np.ndarray:
    """The true inverse z-depth (1/m) of the ground at image ``rows`` (pixels, may be fractional); 0 above it."""
    camera = SyntheticSource(WIDTH, HEIGHT).intrinsics
    below = (np.asarray(rows, dtype=np.float64) - camera.cy) / camera.fy  # the optical ray's y per unit z
    return np.maximum(below, 0.0) / SyntheticSource.CAMERA_HEIGHT_M


def expected_a() -> float:
    """``a`` of ``1/Z = a·d + b`` that turns the model's disparity into the ground's inverse depth."""
    return math.tan(math.radians(HFOV_DEG) / 2) / (GAIN * SyntheticSource.CAMERA_HEIGHT_M)


@pytest.fixture(scope="module")
def ground_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("ground_repository")
    write_model(repository, ground_disparity_model(GAIN), warmup_hw=(48, 64))  # depth_kind relative
    return repository


def test_the_model_outputs_the_grounds_disparity_at_an_unknown_scale(ground_repository: Path) -> None:
    image = np.zeros((2, HEIGHT, WIDTH, 3), np.uint8)
    disparity = reference_depth(ground_repository, image)
    assert disparity.shape == (2, HEIGHT, WIDTH)
    np.testing.assert_allclose(disparity[1], disparity[0])
    np.testing.assert_allclose(
        disparity[0] * expected_a(), np.repeat(ground_inverse_depth(np.arange(HEIGHT))[:, None], WIDTH, 1), atol=1e-6
    )


@pytest.fixture(scope="module")
def ground_triton(ground_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    with serve(ground_repository, tmp_path_factory) as server:
        yield server


def keypoints_on_the_ground(line: dict[str, Any]) -> bool:
    """Whether every keypoint's z is the ground's true depth within its depth window (5 rows about its pixel).

    A keypoint's depth is the median of the valid depths in a 5 × 5 window
    (``gateway/keypoints.py``), so near the horizon, where the validity mask
    trims the window, it is the depth of a row up to two away.
    """
    points = np.asarray(line["points"], dtype=np.float64).reshape(-1, 3)
    rows = np.rint(np.asarray(line["pixels"], dtype=np.float64).reshape(-1, 2)[:, 1])
    assert len(points) > 0
    nearest = 1.0 / ground_inverse_depth(rows + 2)
    with np.errstate(divide="ignore"):
        farthest = 1.0 / ground_inverse_depth(rows - 2)
    return bool(np.all((points[:, 2] >= nearest * (1 - 1e-4)) & (points[:, 2] <= farthest * (1 + 1e-4))))


@pytest.mark.slow
async def test_relative_results_turn_metric_from_the_ground_and_the_bag_records_their_scale(
    ground_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    results = tmp_path / "results.jsonl"
    bags = BagSink(tmp_path / "bags")
    gateway = Gateway(
        gateway_config(idle_timeout=60.0), TritonDepthClient(ground_triton.url, MODEL_NAME, timeout=30), sink=bags
    )
    await gateway.start()
    try:
        code, _, err = await run_cli(
            "--gateway",
            gateway.url,
            "--drone-id",
            DRONE_ID,
            "--source",
            "synthetic",
            "--width",
            str(WIDTH),
            "--height",
            str(HEIGHT),
            "--fps",
            "5",
            "--max-frames",
            str(FRAMES),
            "--pose",
            "synthetic",
            "--results",
            str(results),
            env={TOKEN_ENV: TOKEN},
        )
    finally:
        await gateway.stop()
        bags.close()
    assert code == 0, err[-3000:]

    keypoints = [line for line in map(json.loads, results.read_text().splitlines()) if line["type"] == "keypoints"]
    assert len(keypoints) >= FRAMES // 2
    for line in keypoints:  # the gateway runs --scale auto: every result says where its scale came from
        if line["depth_kind"] == "relative":
            assert line["scale"]["source"] == "model" and line["scale"]["confidence"] == 0.0
        else:
            assert line["scale"]["source"] == "ground", line["scale"]
        assert "scale_check" not in line, "a relative model has no metres of its own to check"
    metric = [line for line in keypoints if line["depth_kind"] == "metric"]
    assert len(metric) >= FRAMES // 2 and keypoints[-1]["depth_kind"] == "metric"
    first_metric = keypoints.index(metric[0])
    assert all(line["depth_kind"] == "metric" for line in keypoints[first_metric:]), "once trusted, held"
    last = metric[-1]["scale"]
    assert last["a"] == pytest.approx(expected_a(), rel=0.02) and abs(last["b"]) < 0.01
    assert last["confidence"] >= 0.3 and last["anchors_used"] > 0
    assert all(keypoints_on_the_ground(line) for line in metric), "the keypoints' z are the ground's metres"

    # The gateway's bag: the scale of every result, as the drone received it.
    (bag,) = (tmp_path / "bags").iterdir()
    recorded = {}
    for _, name, message in read_bag(bag)[f"/{ros_name(DRONE_ID)}/scale"]:
        assert name == "std_msgs/msg/String"
        payload = json.loads(message.data)
        recorded[payload["pts"]] = payload
    received = {line["pts"]: line for line in keypoints}
    assert set(received) <= set(recorded)
    for pts, line in received.items():
        assert recorded[pts] == {"pts": pts, "depth_kind": line["depth_kind"], "scale": line["scale"]}
