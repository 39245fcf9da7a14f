"""DroneClient over real WebRTC against a stand-in gateway (tests/drone_fixtures.py).

Covers camera-first, pts matching and latency, obstacle profiles matched to
their frames (callback, results file, waypoints), the results file, a resolution
change, reconnection after a restart on the same port and after a silent
gateway, refused offers, and stop(). Timeouts are generous and no assertion
depends on timing: two CPU cores are shared with other test runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from drone_fixtures import WAIT_S, FakeGateway, drone_config, free_port, wait_until

from dronedepth.drone.client import DroneClient, DroneConfig, DroneSummary
from dronedepth.drone.sources import SyntheticSource
from dronedepth.drone.waypoints import Waypoints
from dronedepth.errors import ConfigError, InferenceUnavailable, ProtocolError
from dronedepth.protocol import (
    CAMERA_MISMATCH,
    INFERENCE_UNAVAILABLE,
    OBSTACLE_FREE,
    OBSTACLE_NO_DATA,
    CameraMessage,
    ErrorMessage,
    LocalMapMessage,
    ObstaclesMessage,
    encode,
)


@pytest.fixture
async def gateway():
    async with FakeGateway() as gw:
        yield gw


async def run_for(client: DroneClient) -> DroneSummary:
    return await asyncio.wait_for(client.run(), WAIT_S)


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gateway": "ftp://x"}, "--gateway must be an http"),
        ({"token": ""}, "token must be a non-empty"),
        ({"token": "a b"}, "without whitespace"),
        ({"drone_id": "no spaces!"}, r"drone id must match"),
        ({"fps": 0}, "fps must be a positive number, got 0"),
        ({"fps": 500}, "fps must be at most 120"),
        ({"width": 0}, "width must be a positive integer, got 0"),
        ({"max_frames": 1.5}, "max_frames must be a positive integer"),
        ({"result_timeout": -1}, "result_timeout must be a positive number"),
        ({"reconnect_delay": 5, "reconnect_max_delay": 1}, "reconnect_max_delay"),
    ],
)
def test_config_names_the_bad_value(overrides, message):
    settings = {"gateway": "http://127.0.0.1:8080", "token": "t", **overrides}
    with pytest.raises(ConfigError, match=message):
        DroneConfig(**settings)


def test_config_accepts_a_bare_host_port():
    assert DroneConfig(gateway="gw.local:8080", token="t").offer_url == "http://gw.local:8080/offer"
    assert DroneConfig(gateway="https://gw/base/", token="t").offer_url == "https://gw/base/offer"


# -- streaming -----------------------------------------------------------------------------------------------


PROFILE = ObstaclesMessage(
    pts=0,
    stamp=1_764_000_000.0,
    gravity_aligned=True,
    sector_width_deg=10.0,
    angle_offset_deg=-20.0,
    min_range_m=0.3,
    max_range_m=20.0,
    distances_m=(4.0, OBSTACLE_FREE, 2.5, OBSTACLE_NO_DATA, 9.0),
)


async def test_streams_camera_first_and_matches_every_result_to_its_frame(gateway, tmp_path):
    results = tmp_path / "out" / "results.jsonl"
    gateway.profile = PROFILE
    seen: list[tuple[int, float | None]] = []
    profiles: list[tuple[int, float | None, Waypoints | None]] = []
    client = DroneClient(
        drone_config(gateway, max_frames=8, results_path=results, drone_id="alpha", waypoints=True),
        on_result=lambda message, latency: seen.append((message.pts, latency)),
        on_obstacles=lambda message, captured, waypoints: profiles.append((message.pts, captured, waypoints)),
    )
    summary = await run_for(client)

    assert summary.frames_sent == 8 and summary.state == "finished"
    assert summary.sessions == 1 and summary.reconnects == 0 and summary.errors == 0
    # camera first, at the sent size, with the synthetic source's own intrinsics
    assert gateway.cameras[0].width == 320 and gateway.cameras[0].height == 240
    assert client.camera == gateway.cameras[0]
    assert gateway.drone_ids == ["alpha"] and client.drone_id == "alpha"
    # the gateway's receiver saw pts from 0, and every frame including the last (flushed by the repeat)
    received = gateway.received_pts[0]
    assert received[0] == 0 and len(received) == 8 and received == sorted(received)
    everything = read_results(results)
    lines = [line for line in everything if line["type"] == "keypoints"]
    assert len(lines) == summary.results == len(seen) >= 1
    assert lines[-1]["pts"] == received[-1], "the last frame gets its result"
    assert summary.unmatched == 0
    for line in lines:
        assert line["pts"] in received
        assert line["latency_ms"] > 0 and line["received_at"] >= line["captured_at"]
        assert line["drone_id"] == "alpha" and line["session"] == 1
        assert len(line["points"]) == 9 and line["depth_kind"] == "metric"
        assert "waypoints" not in line, "waypoints come from the obstacle profile, not the keypoints"
    assert summary.latency_p50_ms is not None and summary.latency_p95_ms >= summary.latency_p50_ms
    # One obstacles line per profile, matched to its frame's capture time like its keypoints.
    obstacles = [line for line in everything if line["type"] == "obstacles"]
    assert len(obstacles) == summary.obstacle_profiles == len(profiles) == len(gateway.obstacles_sent)
    assert [line["pts"] for line in obstacles] == [line["pts"] for line in lines]
    assert all(captured is not None for _, captured, _ in profiles), "keypoints first do not forget the frame"
    for line, keypoints in zip(obstacles, lines, strict=True):
        assert line["captured_at"] == pytest.approx(keypoints["captured_at"], abs=0.01)
        assert line["distances_m"] == list(PROFILE.distances_m) and line["frame"] == "body_frd"
        assert line["waypoints"]["obstacles"][0] == {"azimuth_deg": 0.0, "distance_m": 2.5}
        assert line["waypoints"]["frame"] == "base_link_level" and line["waypoints"]["units"] == "m"


class SwitchingSource(SyntheticSource):
    """The synthetic scene whose output size halves after three frames, then doubles back after six."""

    def read(self):
        if self._index == 3:
            self.set_output_size(160, 120)
        elif self._index == 6:
            self.set_output_size(320, 240)
        return super().read()


async def test_resolution_change_resends_the_scaled_camera(gateway):
    source = SwitchingSource(320, 240, fps=10)
    sizes_seen: set[tuple[int, int]] = set()
    client = DroneClient(
        drone_config(gateway, max_frames=9),
        source=source,
        on_result=lambda message, latency: sizes_seen.add((message.width, message.height)),
    )
    summary = await run_for(client)
    assert summary.frames_sent == 9
    assert [(c.width, c.height) for c in gateway.cameras] == [(320, 240), (160, 120), (320, 240)]
    assert source.intrinsics is not None
    assert gateway.cameras[1] == source.intrinsics.scaled(160, 120)
    assert gateway.cameras[2] == source.intrinsics
    assert sizes_seen == {(320, 240), (160, 120)}, "frames of both sizes got results"


class CroppingSource(SyntheticSource):
    """The synthetic scene whose frames turn from 4:3 to 16:9 after three frames (a camera mode that crops)."""

    def read(self):
        if self._index == 3:
            self.set_output_size(320, 180)
        return super().read()


async def test_frames_the_intrinsics_cannot_be_scaled_to_get_no_camera(gateway, caplog):
    settings = drone_config(gateway, max_frames=6, drain_timeout=1.0)
    client = DroneClient(settings, source=CroppingSource(320, 240, fps=10))
    summary = await run_for(client)
    assert [(c.width, c.height) for c in gateway.cameras] == [(320, 240)], "no camera claims to describe 320x180"
    assert summary.error_codes.get(CAMERA_MISMATCH, 0) >= 1, "the gateway dropped the 16:9 frames"
    assert "no camera for 320x180 frames: frames are 320x180" in caplog.text


async def test_intrinsics_for_another_aspect_ratio_are_refused_before_connecting(gateway):
    widescreen = CameraMessage(640, 360, 500.0, 500.0, 319.5, 179.5)
    with pytest.raises(ConfigError, match=r"do not fit the frames of source 'synthetic'.*320x240.*640x360"):
        await run_for(DroneClient(drone_config(gateway, camera=widescreen)))
    assert gateway.offers == 0


async def test_gateway_errors_and_bad_messages_are_counted_not_fatal(gateway):
    gateway.greeting = [encode(ErrorMessage(INFERENCE_UNAVAILABLE, "triton is down")), "{not json"]
    summary = await run_for(DroneClient(drone_config(gateway, max_frames=3)))
    assert summary.error_codes == {INFERENCE_UNAVAILABLE: 1, "bad_message": 1}
    assert summary.errors == 2 and summary.frames_sent == 3


async def test_stop_closes_cleanly_and_flushes_results(gateway, tmp_path):
    results = tmp_path / "results.jsonl"
    client = DroneClient(drone_config(gateway, results_path=results))
    task = asyncio.ensure_future(client.run())
    await wait_until(lambda: client.summary().results >= 2, "two results")
    client.stop()
    summary = await asyncio.wait_for(task, WAIT_S)
    assert summary.state == "stopped"
    lines = read_results(results)
    assert len(lines) == summary.results >= 2


# -- reconnection --------------------------------------------------------------------------------------------


async def test_reconnects_after_the_gateway_restarts_on_the_same_port(gateway, tmp_path):
    results = tmp_path / "results.jsonl"
    client = DroneClient(drone_config(gateway, results_path=results))
    task = asyncio.ensure_future(client.run())
    try:
        await wait_until(lambda: client.summary().results >= 2, "results before the restart")
        await gateway.restart(down_s=0.5)
        await wait_until(lambda: client.summary().sessions >= 2, "a second session")
        after = client.summary().results
        await wait_until(lambda: client.summary().results >= after + 2, "results after the restart")
    finally:
        client.stop()
        summary = await asyncio.wait_for(task, WAIT_S)
    assert summary.reconnects >= 1 and gateway.offers >= 2
    assert summary.unmatched == 0, "pts restart at 0 with the new connection and still match"
    second = [line for line in read_results(results) if line["session"] >= 2]
    assert second and all(line["latency_ms"] > 0 for line in second)
    assert gateway.received_pts[-1][0] == 0


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_reconnects_when_the_gateway_goes_silent(gateway):
    # Each session connects, so the delay stays at reconnect_delay: offers come at least
    # result_timeout + reconnect_delay apart (a lower bound only: a loaded machine only widens the gaps).
    gateway.silent = True
    client = DroneClient(drone_config(gateway, result_timeout=0.5, reconnect_delay=1.0, reconnect_max_delay=4.0))
    task = asyncio.ensure_future(client.run())
    try:
        await wait_until(lambda: gateway.offers >= 3, "a third offer")
    finally:
        client.stop()
        summary = await asyncio.wait_for(task, WAIT_S)
    assert summary.reconnects >= 2 and summary.results == 0
    assert all(gap >= 0.5 + 1.0 for gap in gaps(gateway.offer_times[:3])), gaps(gateway.offer_times)


async def test_no_reconnect_while_the_gateway_reports_its_depth_server_down(gateway):
    gateway.silent = True
    gateway.greeting = [encode(ErrorMessage(INFERENCE_UNAVAILABLE, "triton is down"))]
    client = DroneClient(drone_config(gateway, result_timeout=0.3))
    task = asyncio.ensure_future(client.run())
    try:
        await wait_until(lambda: client.summary().errors >= 1, "the inference_unavailable error")
        await asyncio.sleep(1.5)  # five result timeouts of silence
        assert gateway.offers == 1 and client.summary().reconnects == 0
        assert client.summary().state == "gateway waiting for its depth server"
    finally:
        client.stop()
        await asyncio.wait_for(task, WAIT_S)


# -- refusals ------------------------------------------------------------------------------------------------


async def test_a_refused_token_is_fatal_and_says_so(gateway):
    client = DroneClient(drone_config(gateway, token="wrong"))
    with pytest.raises(ConfigError, match=r"refused the token \(HTTP 401.*DRONEDEPTH_TOKEN"):
        await run_for(client)
    assert gateway.offers == 1
    assert client.summary().state == "failed"


async def test_a_full_gateway_is_retried_with_exponential_backoff_then_given_up(gateway, caplog):
    gateway.reject_status = 503
    client = DroneClient(drone_config(gateway, max_attempts=5, reconnect_delay=0.2, reconnect_max_delay=0.6))
    with (
        caplog.at_level(logging.INFO, logger="dronedepth.drone.client"),
        pytest.raises(InferenceUnavailable, match=r"gave up after 5 failed attempts.*HTTP 503"),
    ):
        await run_for(client)
    assert gateway.offers == 5
    assert client.summary().reconnects == 4
    delays = [r.args[0] for r in caplog.records if r.msg == "reconnecting in %.1f s"]
    assert delays == pytest.approx([0.2, 0.4, 0.6, 0.6]), "doubling from reconnect_delay, capped"
    # The client really waits each delay before the next offer (lower bounds: load only widens the gaps).
    assert all(gap >= delay for gap, delay in zip(gaps(gateway.offer_times), delays, strict=True))


async def test_a_malformed_offer_reply_is_fatal(gateway):
    gateway.reject_status = 400
    with pytest.raises(ProtocolError, match="rejected the offer"):
        await run_for(DroneClient(drone_config(gateway)))


async def test_an_unreachable_gateway_is_retried_with_backoff():
    url = f"http://127.0.0.1:{free_port()}"
    client = DroneClient(
        DroneConfig(gateway=url, token="t", max_attempts=2, reconnect_delay=0.05, reconnect_max_delay=0.1)
    )
    with pytest.raises(InferenceUnavailable, match="is unreachable"):
        await run_for(client)


async def test_no_intrinsics_is_refused_before_connecting(gateway, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"no camera intrinsics for source .* \(64x48\)"):
        await run_for(DroneClient(drone_config(gateway, source=str(tmp_path), width=None, height=None)))
    assert gateway.offers == 0


async def test_stop_while_the_gateway_is_answering(gateway):
    gateway.answer_delay = 300.0
    client = DroneClient(drone_config(gateway, connect_timeout=300.0))
    task = asyncio.ensure_future(client.run())
    await wait_until(lambda: gateway.offers >= 1, "the offer")
    client.stop()
    summary = await asyncio.wait_for(task, WAIT_S)
    assert summary.state == "stopped" and summary.sessions == 0


async def test_stop_before_run_returns_at_once(gateway):
    client = DroneClient(drone_config(gateway))
    client.stop()
    summary = await run_for(client)
    assert summary.frames_sent == 0 and summary.state == "stopped" and gateway.offers == 0


async def test_local_maps_are_kept_for_an_onboard_planner(gateway):
    """A gateway with --map sends ``local_map``: the client keeps the newest, calls back, and counts no error."""
    heights = bytes(range(16)) * 4
    gateway.local_map = LocalMapMessage(
        stamp=1.7e9,
        frame_id="map",
        origin=(10.0, -4.0, 0.0),
        cell_size_m=0.5,
        width=8,
        height=8,
        heights=heights,
    )
    seen: list[LocalMapMessage] = []
    client = DroneClient(drone_config(gateway, max_frames=4), on_local_map=seen.append)
    summary = await run_for(client)
    assert summary.errors == 0, summary.error_codes
    assert summary.local_maps == len(seen) >= 1
    assert client.local_map == gateway.local_map == seen[-1]
