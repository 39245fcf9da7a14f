"""The gateway's web pages (``gateway/web.py``, ``gateway/static``).

Fast tests drive the HTTP endpoints with a real gateway, a real aiortc drone
and an in-process depth client; the slow one runs both pages in a real
headless Chromium whose fake camera plays a video made from the test photos,
against the real gateway and a real embedded Triton, and saves screenshots
under ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import logging
import re
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import serving_fixtures
import test_gateway_scale as ground_scene
from aiohttp import ClientSession
from browser_fixtures import ARTIFACTS, chromium, page_context, photo_paths, web_gateway, write_y4m
from gateway_fixtures import TOKEN, FakeDepthClient, TestDrone, camera_for, gateway_config, photo, wait_until
from multidict import CIMultiDict
from numpy.typing import NDArray
from test_gateway_poses import FPS, send_poses

from dronedepth.contract import MODEL_NAME
from dronedepth.gateway.frame_rate import FrameRateAdvisor
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.gateway.outputs.previews import PreviewHub, encode_preview, find_preview_hub
from dronedepth.gateway.outputs.sinks import FrameRecord
from dronedepth.gateway.server import Gateway
from dronedepth.gateway.web import STATIC_DIR
from dronedepth.protocol import FrameRateMessage, KeypointsMessage, encode

triton_repository = serving_fixtures.triton_repository
triton_server = serving_fixtures.triton_server

log = logging.getLogger(__name__)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------------- PreviewHub alone


@dataclass(frozen=True)
class _Result:
    message: KeypointsMessage
    depth: NDArray[np.float32]
    points: NDArray[np.float32]
    colors: NDArray[np.uint8]
    cloud: Any = None
    depth_camera: Any = None


def _record(drone_id: str = "d1", total_ms: float = 50.0, width: int = 640, height: int = 480) -> FrameRecord:
    n = 5
    message = KeypointsMessage(
        pts=0,
        points=np.ones((n, 3), np.float32),
        pixels=np.zeros((n, 2), np.float32),
        scores=np.ones(n, np.float32),
        depth_kind="metric",
        width=width,
        height=height,
        timing={"total": total_ms},
    )
    ramp = np.linspace(1.0, 5.0, width, dtype=np.float32)
    depth = np.tile(ramp, (height, 1))
    result = _Result(message, depth, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    return FrameRecord.from_capture_time(
        drone_id, time.time(), camera_for(width, height), np.zeros((1, 1, 3), np.uint8), result
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_preview_is_a_downscaled_colour_jpeg():
    depth = np.tile(np.linspace(1.0, 9.0, 1280, dtype=np.float32), (720, 1))
    depth[:10] = np.nan
    jpeg, width, height = encode_preview(depth, "metric", max_width=320)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert (width, height) == (320, 180) == (image.shape[1], image.shape[0])
    left, right = image[100, 5].astype(int), image[100, -5].astype(int)
    assert np.abs(left - right).sum() > 100, "near and far get different colours"
    small, w, h = encode_preview(np.ones((48, 64), np.float32), "relative", max_width=320)
    assert (w, h) == (64, 48) and small[:2] == b"\xff\xd8"


def test_hub_encodes_only_on_request_at_most_max_fps_per_drone_and_keeps_statistics():
    clock = _Clock()
    hub = PreviewHub(max_fps=3.0, clock=clock)
    assert hub.preview("d1") is None, "no result, no preview"
    for i in range(10):
        hub.write(_record(total_ms=10.0 * (i + 1)))
    assert hub.previews_encoded == 0, "nobody asked: results cost no previews"
    jpeg, seq = hub.preview("d1")
    assert seq == 10 and jpeg[:2] == b"\xff\xd8" and hub.previews_encoded == 1
    hub.write(_record())
    clock.now += 0.2
    assert hub.preview("d1") == (jpeg, 10) and hub.previews_encoded == 1, "not again within 1/max_fps"
    hub.write(_record())
    clock.now += 0.2
    jpeg, seq = hub.preview("d1")
    assert seq == 12 and hub.previews_encoded == 2
    clock.now += 0.4
    assert hub.preview("d1") == (jpeg, 12) and hub.previews_encoded == 2, "no newer depth: the same preview"
    hub.write(_record("d2"))
    assert hub.preview("d2") is not None and hub.previews_encoded == 3, "each drone has its own budget"

    stats = hub.stats("d1")
    assert stats is not None
    assert stats["depth_kind"] == "metric" and stats["frame"] == {"width": 640, "height": 480}
    assert stats["keypoints"] == 5 and stats["results"] == 12
    assert stats["latency_ms"]["samples"] == 12
    assert stats["latency_ms"]["p50"] == pytest.approx(float(np.percentile([*range(10, 101, 10), 50, 50], 50)))
    assert stats["latency_ms"]["p95"] == pytest.approx(float(np.percentile([*range(10, 101, 10), 50, 50], 95)))
    assert stats["preview"] == {"seq": 12, "width": 320, "height": 240, "age_s": 0.6}
    assert stats["result_rate"] == pytest.approx(12 / 1.0), "a young drone's rate is over at least one second"
    clock.now += 30.0
    later = hub.stats("d1")
    assert later["result_rate"] == 0 and later["latency_ms"]["p50"] is None, "old results age out"

    hub.close_drone("d1")
    assert hub.stats("d1") is None and hub.preview("d1") is None

    # A model of depth stride 2: a 320x240 frame's depth is 160x120, and so is its preview, as announced.
    full = _record("d3", width=320, height=240)
    strided = dataclasses.replace(full.result, depth=np.ascontiguousarray(full.result.depth[::2, ::2]))
    hub.write(dataclasses.replace(full, result=strided))
    announced = hub.stats("d3")
    assert announced is not None and announced["frame"] == {"width": 320, "height": 240}
    preview = hub.preview("d3")
    assert preview is not None
    image = cv2.imdecode(np.frombuffer(preview[0], np.uint8), cv2.IMREAD_COLOR)
    assert (announced["preview"]["width"], announced["preview"]["height"]) == (160, 120) == image.shape[1::-1]
    hub.write(_record("d1"))  # a frame that was still in a worker thread when its session closed
    hub.retain({"d2"})
    assert hub.stats("d1") is None and hub.stats("d2") is not None
    hub.close()
    hub.write(_record("d3"))
    assert hub.stats("d3") is None, "a closed hub ignores frames"


def test_hub_settings_are_validated_and_found_in_a_sink_set():
    from dronedepth.gateway.outputs.sinks import SinkSet

    with pytest.raises(ValueError, match="max_fps"):
        PreviewHub(max_fps=0)
    with pytest.raises(ValueError, match="max_width"):
        PreviewHub(max_width=4)
    hub = PreviewHub()
    assert find_preview_hub(hub) is hub
    assert find_preview_hub(SinkSet([hub])) is hub
    assert find_preview_hub(SinkSet()) is None and find_preview_hub(None) is None


# ---------------------------------------------------------------------- HTTP, with a real aiortc drone


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async with ClientSession() as http, http.get(url, headers=headers or {}, allow_redirects=False) as reply:
        return reply.status, CIMultiDict(reply.headers), await reply.read()


@pytest.mark.parametrize("path", ["/", "/drone"])
async def test_pages_ask_for_the_token_and_check_it(path):
    async with web_gateway() as (gw, _):
        status, headers, body = await _get(gw.url + path)
        text = body.decode()
        assert status == 200 and 'name="token"' in text and 'type="password"' in text
        assert "/api/drones" not in text and "operator.js" not in text and "drone.js" not in text
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"

        status, _, body = await _get(gw.url + path + "?token=wrong")
        assert status == 401 and "not accepted" in body.decode() and 'name="token"' in body.decode()

        status, headers, body = await _get(gw.url + path + f"?token={TOKEN}")
        page = "operator.js" if path == "/" else "drone.js"
        assert status == 200 and page in body.decode() and headers["Content-Type"].startswith("text/html")
        status, _, body = await _get(gw.url + path, AUTH)
        assert status == 200 and page in body.decode(), "a header works too (curl)"


async def test_pages_are_open_when_the_gateway_has_no_token():
    async with web_gateway(token=None, allow_no_auth=True) as (gw, _):
        status, _, body = await _get(gw.url + "/")
        assert status == 200 and "operator.js" in body.decode()
        status, _, _ = await _get(gw.url + "/api/drones")
        assert status == 200


async def test_assets_are_served_locally_with_etags():
    async with web_gateway() as (gw, _):
        for name, kind in [("style.css", "text/css"), ("operator.js", "text/javascript"), ("icon.svg", "image/svg")]:
            status, headers, body = await _get(f"{gw.url}/assets/{name}")
            assert status == 200 and headers["Content-Type"].startswith(kind) and body
            status, _, _ = await _get(f"{gw.url}/assets/{name}", {"If-None-Match": headers["ETag"]})
            assert status == 304
        for bad in ["/assets/missing.js", "/assets/..%2Fweb.py", "/assets/login.html"]:
            status, _, _ = await _get(gw.url + bad)
            assert status == 404, bad
    # Offline: nothing refers to another host (no CDN, no web fonts).
    external = re.compile(
        r"""(?:(?:src|href|action)\s*=\s*["']|url\(\s*["']?|@import\s+["']?|fetch\(\s*["'])(?:https?:)?//"""
    )
    for file in STATIC_DIR.iterdir():
        assert not external.search(file.read_text(encoding="utf-8")), file.name


def test_every_static_file_is_package_data():
    """A wheel (the Docker image) carries only the patterns of pyproject's package-data."""
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    for file in STATIC_DIR.iterdir():
        assert any(fnmatch.fnmatch(file.name, pattern) for pattern in patterns), file.name


async def test_api_requires_the_bearer_header():
    async with web_gateway() as (gw, _):
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]:
            status, reply_headers, body = await _get(gw.url + "/api/drones", headers)
            assert status == 401 and json.loads(body)["error"] == "unauthorized"
            assert reply_headers["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = await _get(f"{gw.url}/api/drones?token={TOKEN}")
        assert status == 401, "the API takes no ?token=: it would end up in logs and histories"
        status, _, _ = await _get(gw.url + "/api/drones/x/preview.jpg")
        assert status == 401


async def test_api_reports_a_connected_drone_and_serves_its_preview():
    rgb = photo(320, 240)
    worker_threads: set[str] = set()

    class ThreadSink:
        """Last in the gateway's SinkSet, which calls its sinks one after the other: the hub's thread too."""

        def write(self, record: FrameRecord) -> None:
            worker_threads.add(threading.current_thread().name)

        def close_drone(self, drone_id: str) -> None:
            pass

        def close(self) -> None:
            pass

    async with web_gateway(sink=ThreadSink()) as (gw, hub):
        assert gw.sinks is not None and hub in gw.sinks.sinks
        drone = TestDrone(rgb, fps=10)
        try:
            await drone.connect(gw.url, drone_id="scout-1", camera=camera_for(320, 240))
            session = gw.sessions["scout-1"]
            await wait_until(lambda: session.frames_processed >= 3, what="results")
            assert drone.track is not None
            drone.track.pause()  # no newer preview from here on: the ETag check below is exact
            await asyncio.sleep(0.5)
            assert hub.previews_encoded == 0, "nobody asked for a preview yet"
            status, headers, body = await _get(gw.url + "/api/drones", AUTH)
            assert status == 200 and headers["Cache-Control"] == "no-store"
            data = json.loads(body)
            assert data["gateway"]["depth_available"] is True and data["gateway"]["previews"] is True
            assert data["gateway"]["sessions"] == 1 and data["gateway"]["max_drones"] == 8
            entry = data["drones"]["scout-1"]
            assert entry["state"] == "connected" and entry["remote"]
            assert entry["camera"]["width"] == 320 and entry["camera"]["fx"] == 300.0
            assert entry["frame"] == {"width": 320, "height": 240}
            assert entry["frames"]["received"] >= entry["frames"]["processed"] >= 3
            assert entry["frames"]["dropped"] == sum(entry["dropped"].values())
            assert entry["result_rate"] > 0 and entry["depth_kind"] == "metric" and entry["keypoints"] > 0
            assert entry["advised_fps"] is None, "one drone a gateway keeps up with is not asked to slow down"
            assert entry["latency_ms"]["p50"] > 0 and entry["latency_ms"]["p95"] >= entry["latency_ms"]["p50"]
            assert entry["connected_s"] >= 0 and entry["connected_since"].endswith("+00:00")
            assert entry["preview"]["seq"] >= 1 and entry["preview"]["width"] == 320
            assert entry["pose"] == {
                "status": "none",
                "match": session.last_pose_match,
                "frame_id": None,
                "received": 0,
                "frames_with_pose": 0,
            }
            nearest = entry["nearest_obstacle"]  # metric depth: a profile per frame, the drone paused 0.5 s ago
            assert nearest["stale"] is (nearest["age_s"] > 0.5) and nearest["gravity_aligned"] is False
            assert nearest["range_m"] is None or 0 < nearest["range_m"] <= nearest["max_range_m"]
            assert worker_threads and all(name.startswith("gateway-worker") for name in worker_threads)
            assert threading.main_thread().name not in worker_threads, "never encoded in the event loop's thread"

            status, headers, body = await _get(gw.url + "/api/drones/scout-1/preview.jpg", AUTH)
            assert status == 200 and headers["Content-Type"] == "image/jpeg" and hub.previews_encoded == 1
            image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert (image.shape[1], image.shape[0]) == (320, 240)
            assert headers["ETag"] == f'"scout-1-{entry["preview"]["seq"]}"', "the depth the listing announced"
            etag = {**AUTH, "If-None-Match": headers["ETag"]}
            status, _, _ = await _get(gw.url + "/api/drones/scout-1/preview.jpg", etag)
            assert status == 304
        finally:
            await drone.close()
        await wait_until(lambda: "scout-1" not in gw.sessions, what="the session to close")
        status, _, body = await _get(gw.url + "/api/drones", AUTH)
        assert json.loads(body)["drones"] == {}
        status, _, body = await _get(gw.url + "/api/drones/scout-1/preview.jpg", AUTH)
        assert status == 404 and json.loads(body)["error"] == "no_preview", "forgotten when the drone leaves"
        status, _, body = await _get(gw.url + "/api/drones/bad%20id/preview.jpg", AUTH)
        assert status == 400 and json.loads(body)["error"] == "invalid_drone_id"


async def test_without_a_hub_drones_are_listed_without_previews():
    rgb = photo(320, 240)
    gw = Gateway(gateway_config(), FakeDepthClient())
    gw.preview_hub = None  # before start(): the gateway keeps no previews
    await gw.start()
    assert gw.sinks is not None and not [s for s in gw.sinks.sinks if isinstance(s, PreviewHub)]
    drone = TestDrone(rgb, fps=10)
    try:
        await drone.connect(gw.url, drone_id="plain", camera=camera_for(320, 240))
        await wait_until(lambda: gw.sessions["plain"].frames_processed >= 1, what="a result")
        status, _, body = await _get(gw.url + "/api/drones", AUTH)
        entry = json.loads(body)["drones"]["plain"]
        assert status == 200 and json.loads(body)["gateway"]["previews"] is False
        assert entry["preview"] is None and entry["result_rate"] is None and entry["latency_ms"]["last"] > 0
        status, _, body = await _get(gw.url + "/api/drones/plain/preview.jpg", AUTH)
        assert status == 404 and json.loads(body)["error"] == "previews_off"
    finally:
        await drone.close()
        await gw.stop()


# ---------------------------------------------------------------------- real Chromium, real Triton


@pytest.mark.slow
async def test_browser_drone_streams_and_the_operator_page_shows_it(triton_server, tmp_path):
    video = write_y4m(tmp_path / "camera.y4m", photo_paths(), width=640, height=480, frames=200, fps=15)
    ARTIFACTS.mkdir(exist_ok=True)
    client = TritonDepthClient(triton_server.url, MODEL_NAME, timeout=30)
    # The gateway's own frame-rate advice is off: the advice below is the test's, not a loaded CI's.
    async with (
        web_gateway(client, idle_timeout=60.0, frame_rate_advice=None) as (gw, hub),
        chromium(video) as browser,
    ):
        context, page_errors = await page_context(browser)
        drone_page = await context.new_page()
        console: list[str] = []
        drone_page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            await drone_page.goto(f"{gw.url}/drone?token={TOKEN}")
            assert "token" not in drone_page.url, "the token leaves the address bar at once"
            await drone_page.fill("#drone-id-input", "browser-1")
            await drone_page.select_option("#fov-preset", "70")
            await drone_page.click("#start")
            await drone_page.wait_for_function(
                "() => window.dronedepth.stats.keypointsDrawn > 0 && window.dronedepth.stats.resultsReceived >= 2"
            )
            await drone_page.wait_for_function(
                """() => { const c = document.getElementById('overlay');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true; return false; }"""
            )
        except Exception:
            log.error("drone page console:\n%s", "\n".join(console))
            await drone_page.screenshot(path=str(ARTIFACTS / "web-drone-failed.png"))
            raise
        stats = await drone_page.evaluate("() => window.dronedepth.stats")
        assert stats["droneId"] == "browser-1" and stats["state"] == "streaming"
        assert (stats["camera"]["width"], stats["camera"]["height"]) == (640, 480), "the track's real size"
        assert stats["camera"]["fx"] == pytest.approx(320 / np.tan(np.radians(35)), rel=1e-6)
        assert stats["depthKind"] in ("metric", "relative") and stats["lastKeypoints"] >= 0
        assert [e for e in stats["errors"] if e["code"] != "inference_resumed"] == []
        session = gw.sessions["browser-1"]
        assert session.frames_received > 0 and session.frames_processed >= 2
        assert gw.metrics.frames_received.value() >= session.frames_received
        assert session.camera is not None and (session.camera.width, session.camera.height) == (640, 480)
        # frame_rate advice caps the browser's encoder (RTCRtpEncodingParameters.maxFramerate); null lifts it.
        assert stats["maxFramerate"] is None
        assert session._send(encode(FrameRateMessage(max_fps=5.0)))
        await drone_page.wait_for_function("() => window.dronedepth.stats.maxFramerate === 5")
        assert session._send(encode(FrameRateMessage(max_fps=None)))
        await drone_page.wait_for_function("() => window.dronedepth.stats.maxFramerate === null")
        with contextlib.suppress(Exception):  # best effort, for a livelier screenshot: not a check
            await drone_page.wait_for_function("() => window.dronedepth.stats.lastKeypoints >= 5", timeout=5000)
        await drone_page.screenshot(path=str(ARTIFACTS / "web-drone.png"))

        operator = await context.new_page()
        await operator.goto(f"{gw.url}/?token={TOKEN}")
        assert "token" not in operator.url
        card = '[data-drone-id="browser-1"]'
        await operator.wait_for_function(
            f"""() => {{ const img = document.querySelector('{card} .preview-img');
                return img && img.complete && img.naturalWidth > 0 && !img.hidden; }}"""
        )
        await operator.wait_for_function(f"() => document.querySelector('{card} .p50').textContent !== '—'")
        assert "browser-1" in await operator.inner_text("#grid")
        # The frame-rate advice in force shows under the results/s (this gateway's own advice is off).
        assert await operator.evaluate(f"() => document.querySelector('{card} .rate .sub')") is None
        session._frame_rate = FrameRateAdvisor()
        session._frame_rate.advised_fps = 6.25
        await operator.wait_for_function(
            f"() => (document.querySelector('{card} .rate .sub') || {{}}).textContent === 'asked ≤ 6.3 fps'"
        )
        # The preview reloads every few seconds (naturalWidth is 0 while a new one loads): read a loaded one.
        loaded = await operator.wait_for_function(
            f"""() => {{ const img = document.querySelector('{card} .preview-img');
                return img && img.complete && img.naturalWidth > 0 && img.naturalWidth; }}"""
        )
        width = await loaded.json_value()
        assert 0 < width <= 320
        await operator.screenshot(path=str(ARTIFACTS / "web-operator.png"))
        await operator.set_viewport_size({"width": 820, "height": 1180})  # a tablet, portrait
        await asyncio.sleep(0.3)
        await operator.screenshot(path=str(ARTIFACTS / "web-operator-tablet.png"))

        await drone_page.click("#stop")
        await wait_until(lambda: "browser-1" not in gw.sessions, what="the session to close after Stop")
        login = await context.new_page()
        await login.goto(gw.url + "/")
        await login.screenshot(path=str(ARTIFACTS / "web-login.png"))
        await context.close()
    assert hub.previews_encoded >= 1
    assert page_errors == [], "no uncaught JavaScript errors on any page"


@pytest.mark.slow
async def test_operator_page_shows_pose_status_and_nearest_obstacle(tmp_path):
    """A posed aiortc drone: the card says matched (with the world frame), then lost when the poses stop, and
    the nearest obstacle goes stale when the video stops."""
    video = write_y4m(tmp_path / "camera.y4m", photo_paths(), width=320, height=240, frames=10, fps=15)
    ARTIFACTS.mkdir(exist_ok=True)
    async with web_gateway(FakeDepthClient()) as (gw, _), chromium(video) as browser:
        drone = TestDrone(photo(320, 240), fps=FPS)
        stop_poses = asyncio.Event()
        try:
            await drone.connect(gw.url, drone_id="posed-1", camera=camera_for(320, 240))
            poses = asyncio.ensure_future(send_poses(drone, stop_poses))
            context, page_errors = await page_context(browser)
            operator = await context.new_page()
            await operator.goto(f"{gw.url}/?token={TOKEN}")
            card = '[data-drone-id="posed-1"]'
            await operator.wait_for_function(
                f"""() => {{ const pose = document.querySelector('{card} .pose');
                    const obstacle = document.querySelector('{card} .obstacle');
                    return pose && pose.dataset.status === 'matched' && obstacle.dataset.stale === 'false'; }}"""
            )
            no_map = "() => { const panel = document.getElementById('map-panel'); return !panel || panel.hidden; }"
            assert await operator.evaluate(no_map), "no world map panel without --map"
            pose_text = await operator.inner_text(f"{card} .pose")
            assert pose_text.startswith("matched") and "map" in pose_text and "exact" in pose_text
            obstacle_text = await operator.inner_text(f"{card} .obstacle")
            assert re.match(r"^(\d+\.\dm|clear)", obstacle_text), obstacle_text  # the unit is a <small>
            assert "ago" in obstacle_text
            await operator.screenshot(path=str(ARTIFACTS / "web-operator-pose.png"))

            stop_poses.set()  # frames go on without poses: the pose is lost
            await poses
            await operator.wait_for_function(f"() => document.querySelector('{card} .pose').dataset.status === 'lost'")
            assert drone.track is not None
            drone.track.pause()  # no frame, no profile: the nearest obstacle goes stale
            await operator.wait_for_function(
                f"() => document.querySelector('{card} .obstacle').dataset.stale === 'true'"
            )
            assert "stale" in await operator.inner_text(f"{card} .obstacle")
            await operator.screenshot(path=str(ARTIFACTS / "web-operator-pose-lost.png"))
            await context.close()
            assert page_errors == [], "no uncaught JavaScript errors"
        finally:
            stop_poses.set()
            await drone.close()


@pytest.mark.slow
async def test_operator_page_shows_the_top_down_world_map_when_the_map_is_on(tmp_path):
    """With --map and a posed drone the page shows the occupancy PNG (refreshed); without --map no panel."""
    from test_gateway_map import MAP

    video = write_y4m(tmp_path / "camera.y4m", photo_paths(), width=320, height=240, frames=10, fps=15)
    ARTIFACTS.mkdir(exist_ok=True)
    async with web_gateway(FakeDepthClient(), world_map=MAP) as (gw, _), chromium(video) as browser:
        drone = TestDrone(photo(320, 240), fps=FPS)
        stop_poses = asyncio.Event()
        try:
            await drone.connect(gw.url, drone_id="mapper-1", camera=camera_for(320, 240))
            poses = asyncio.ensure_future(send_poses(drone, stop_poses))
            context, page_errors = await page_context(browser)
            operator = await context.new_page()
            await operator.goto(f"{gw.url}/?token={TOKEN}")
            await operator.wait_for_function(
                """() => { const img = document.getElementById('map-img');
                    return img && !img.hidden && img.complete && img.naturalWidth > 0
                        && !document.getElementById('map-panel').hidden; }"""
            )
            first = await operator.evaluate("() => document.getElementById('map-img').src")
            assert "m per pixel" in await operator.inner_text("#map-panel")
            await operator.wait_for_function(f"() => document.getElementById('map-img').src !== {first!r}")  # refreshed
            await operator.screenshot(path=str(ARTIFACTS / "web-operator-map.png"))
            stop_poses.set()
            await poses
            await context.close()
            assert page_errors == [], "no uncaught JavaScript errors"
        finally:
            stop_poses.set()
            await drone.close()


@pytest.mark.slow
async def test_operator_badge_says_where_the_scale_comes_from(tmp_path):
    """A relative model: the drone flying with its height above ground gets "metric (from ground) · N %", the one
    without stays "relative depth: not metres" (tests/test_gateway_scale.py's flat ground and model)."""
    video = write_y4m(tmp_path / "camera.y4m", photo_paths(), width=320, height=240, frames=10, fps=15)
    ARTIFACTS.mkdir(exist_ok=True)
    client = FakeDepthClient(depth_kind="relative", output=ground_scene.relative_output)
    async with web_gateway(client) as (gw, _), chromium(video) as browser:
        grounded = TestDrone(photo(320, 240), fps=ground_scene.FPS)
        unscaled = TestDrone(photo(320, 240), fps=ground_scene.FPS)
        stop_poses = asyncio.Event()
        poses = None
        try:
            await grounded.connect(gw.url, drone_id="grounded", camera=ground_scene.CAMERA)
            await unscaled.connect(gw.url, drone_id="unscaled", camera=ground_scene.CAMERA)
            poses = asyncio.ensure_future(ground_scene.send_poses(grounded, stop_poses))
            context, page_errors = await page_context(browser)
            operator = await context.new_page()
            await operator.goto(f"{gw.url}/?token={TOKEN}")
            badge = "document.querySelector('[data-drone-id=\"{}\"] .kind')"
            await operator.wait_for_function(
                f"""() => {{ const g = {badge.format("grounded")}, u = {badge.format("unscaled")};
                    return g && u && !g.hidden && !u.hidden && g.textContent.startsWith('metric'); }}"""
            )
            # textContent: the badge's CSS shows it in capitals.
            grounded_text = await operator.evaluate(f"() => {badge.format('grounded')}.textContent")
            assert re.fullmatch(r"metric \(from ground\) · \d+ %", grounded_text), grounded_text
            unscaled_text = await operator.evaluate(f"() => {badge.format('unscaled')}.textContent")
            assert unscaled_text == "relative depth: not metres"
            assert "metres recovered from ground" in (
                await operator.get_attribute('[data-drone-id="grounded"] .kind', "title") or ""
            )
            status, _, body = await _get(gw.url + "/api/drones", AUTH)
            entries = json.loads(body)["drones"]
            assert status == 200 and entries["grounded"]["scale"]["scale"]["source"] == "ground"
            assert entries["unscaled"]["scale"]["scale"]["source"] == "model"
            assert entries["unscaled"]["depth_kind"] == "relative" and entries["grounded"]["scale"]["mode"] == "auto"
            await operator.screenshot(path=str(ARTIFACTS / "web-operator-scale.png"))
            await context.close()
            assert page_errors == [], "no uncaught JavaScript errors"
        finally:
            stop_poses.set()
            if poses is not None:
                await poses
            await asyncio.gather(grounded.close(), unscaled.close())
