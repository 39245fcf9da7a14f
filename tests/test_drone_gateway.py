"""The drone client against the real gateway and a real embedded Triton (the tiny contract model).

Each source kind streams through WebRTC, the gateway gets depth from Triton,
projects keypoints with the camera the drone sent, and the drone matches every
result to its frame; the client also reconnects by itself when the gateway
restarts on the same port. Small frames, few frames, low fps, generous
timeouts, no timed assertions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import cv2
import pytest
import serving_fixtures
from drone_fixtures import wait_until
from gateway_fixtures import TOKEN, check_projection, gateway_config

from dronedepth.contract import MODEL_NAME
from dronedepth.drone.client import DroneClient, DroneConfig, DroneSummary
from dronedepth.drone.intrinsics import intrinsics_from_values
from dronedepth.drone.sources import FrameSource, ImageFolderSource, SyntheticSource, VideoFileSource
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.gateway.server import Gateway
from dronedepth.samples import SAMPLE_DIR
from dronedepth.serving import EmbeddedTriton

triton_repository = serving_fixtures.triton_repository
triton_server = serving_fixtures.triton_server

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)
WAIT_S = 120.0


def depth_client(server: EmbeddedTriton) -> TritonDepthClient:
    return TritonDepthClient(server.url, MODEL_NAME, timeout=30)


async def start_gateway(server: EmbeddedTriton, port: int = 0) -> Gateway:
    gateway = Gateway(gateway_config(port=port, idle_timeout=60.0), depth_client(server))
    await gateway.start()
    return gateway


def drone_config(gateway: Gateway, results: Path, **overrides) -> DroneConfig:
    settings = {
        "gateway": gateway.url,
        "token": TOKEN,
        "fps": 5.0,
        "results_path": results,
        "drone_id": "it-drone",
        "reconnect_delay": 0.2,
        "reconnect_max_delay": 1.0,
        "connect_timeout": 60.0,
        "result_timeout": 60.0,
        "drain_timeout": 30.0,
        "waypoints": True,
    }
    settings.update(overrides)
    return DroneConfig(**settings)


def check_results(results: Path, client: DroneClient, summary: DroneSummary) -> list[dict]:
    every_line = [json.loads(line) for line in results.read_text().splitlines()]
    assert {line["type"] for line in every_line} <= {"keypoints", "obstacles"}
    lines = [line for line in every_line if line["type"] == "keypoints"]
    profiles = [line for line in every_line if line["type"] == "obstacles"]
    assert summary.results == len(lines) >= 1
    # Obstacle profiles (metric depth only), each after its frame's keypoints, with the drone's waypoints.
    assert summary.obstacle_profiles == len(profiles)
    assert {line["pts"] for line in profiles} <= {line["pts"] for line in lines}
    for line in profiles:
        assert line["waypoints"]["frame"] == "base_link_level" and line["waypoints"]["units"] == "m"
    assert summary.unmatched == 0, "every result's pts matched a frame sent"
    assert summary.errors == 0, summary.error_codes
    camera = client.camera
    assert camera is not None
    with_points = [line for line in lines if line["points"]]
    assert with_points, "the gateway found keypoints"
    for line in lines:
        assert line["type"] == "keypoints" and line["drone_id"] == "it-drone"
        assert (line["width"], line["height"]) == (camera.width, camera.height)
        assert line["latency_ms"] > 0
        assert "waypoints" not in line  # waypoints come from obstacle profiles, not keypoints
    for line in with_points:
        check_projection(line, camera, tolerance_px=0.2)  # points travel rounded to 0.1 mm
    latencies = sorted(line["latency_ms"] for line in lines)
    log.info(
        "%d results, glass-to-result p50 %.0f ms, p95 %.0f ms",
        len(lines),
        summary.latency_p50_ms,
        summary.latency_p95_ms,
    )
    assert summary.latency_p50_ms == pytest.approx(latencies[len(latencies) // 2], rel=0.5)
    return lines


def _video(tmp_path: Path) -> FrameSource:
    path = tmp_path / "flight.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 240))
    synthetic = SyntheticSource(320, 240, fps=5)
    for i in range(8):
        writer.write(cv2.cvtColor(synthetic.render(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return VideoFileSource(path)


def _photos(tmp_path: Path) -> FrameSource:
    return ImageFolderSource(SAMPLE_DIR, width=320)


SOURCES = {
    "synthetic": lambda tmp_path: SyntheticSource(320, 240, fps=5),
    "video": _video,
    "images": _photos,
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
async def test_each_source_streams_through_the_gateway_and_gets_keypoints(kind, triton_server, tmp_path):
    source = SOURCES[kind](tmp_path)
    camera = None
    if source.intrinsics is None:
        w, h = source.native_width, source.native_height
        camera = intrinsics_from_values(width=w, height=h, fx=0.9 * w, fy=0.9 * w, cx=w / 2 - 0.5, cy=h / 2 - 0.5)
    results = tmp_path / "results.jsonl"
    gateway = await start_gateway(triton_server)
    try:
        client = DroneClient(drone_config(gateway, results, max_frames=6, camera=camera), source=source)
        summary = await asyncio.wait_for(client.run(), WAIT_S)
    finally:
        await gateway.stop()
        source.close()
    assert summary.frames_sent == 6 and summary.sessions == 1 and summary.reconnects == 0
    lines = check_results(results, client, summary)
    assert lines[-1]["frame_index"] >= lines[0]["frame_index"]


async def test_reconnects_after_the_gateway_restarts(triton_server, tmp_path):
    results = tmp_path / "results.jsonl"
    gateway = await start_gateway(triton_server)
    port = gateway.port
    client = DroneClient(drone_config(gateway, results, source="synthetic", width=320, height=240))
    task = asyncio.ensure_future(client.run())
    try:
        await wait_until(lambda: client.summary().results >= 2, "results from the first gateway", WAIT_S)
        await gateway.stop()
        gateway = await start_gateway(triton_server, port=port)
        await wait_until(lambda: client.summary().sessions >= 2, "a session with the restarted gateway", WAIT_S)
        before = client.summary().results
        await wait_until(lambda: client.summary().results >= before + 2, "results from the restarted gateway", WAIT_S)
    finally:
        client.stop()
        summary = await asyncio.wait_for(task, WAIT_S)
        await gateway.stop()
    assert summary.reconnects >= 1 and summary.state == "stopped"
    lines = check_results(results, client, summary)
    sessions = {line["session"] for line in lines}
    assert {1, 2} <= sessions
    assert all(line["latency_ms"] > 0 for line in lines if line["session"] == 2)
