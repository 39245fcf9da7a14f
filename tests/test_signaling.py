"""POST /offer and the operations endpoints over real HTTP, with real aiortc offers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from gateway_fixtures import TOKEN, FakeDepthClient, OfferRefused, TestDrone, camera_for, photo, running_gateway

from dronedepth.errors import ConfigError
from dronedepth.gateway.config import GatewayConfig
from dronedepth.gateway.server import Gateway

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post(url: str, data: Any = None, *, json: Any = None, headers: dict[str, str] | None = None) -> tuple:
    async with ClientSession() as http, http.post(f"{url}/offer", data=data, json=json, headers=headers) as reply:
        return reply.status, await reply.json(), dict(reply.headers)


async def _offer_sdp(*, video: bool = True, channel: bool = True) -> str:
    drone = TestDrone(photo(), video=video)
    if not channel:
        drone.pc = type(drone.pc)()  # a fresh connection without the data channel
        drone.pc.addTrack(drone.track)
    try:
        return await drone.offer()
    finally:
        await drone.close()


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with running_gateway(max_drones=1) as gw:
        yield gw


def _assert_nothing_created(gateway: Gateway) -> None:
    assert gateway.metrics.peer_connections.value() == 0
    assert gateway.sessions == {}


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "missing Authorization header"),
        ({"Authorization": "Bearer not-the-token"}, 401, "wrong token"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "must be 'Bearer <token>'"),
        ({"Authorization": "Bearer "}, 401, "must be 'Bearer <token>'"),
    ],
)
async def test_unauthorized_offers_get_401(
    gateway: Gateway, headers: dict[str, str], status: int, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sdp = await _offer_sdp()
    got, body, reply_headers = await _post(gateway.url, json={"sdp": sdp, "type": "offer"}, headers=headers)
    assert (got, body["error"]) == (status, "unauthorized")
    assert message in body["message"]
    assert reply_headers["WWW-Authenticate"].startswith("Bearer")
    _assert_nothing_created(gateway)
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"[1]", "invalid_message", "JSON object"),
        (b'{"type": "offer"}', "invalid_message", "'sdp' must be an SDP text"),
        (b'{"sdp": "v=0\\r\\n", "type": "answer"}', "invalid_message", "'type' must be 'offer'"),
        (b'{"sdp": "v=0\\r\\n", "type": "rollback"}', "invalid_message", "'type' must be 'offer' or 'answer'"),
        (b'{"sdp": "v=0\\r\\nm=video\\r\\n", "type": "offer"}', "invalid_sdp", "cannot be parsed"),
        (b'{"sdp": "v=0\\r\\n", "type": "offer"}', "invalid_sdp", "no video section"),
    ],
)
async def test_malformed_offers_get_400(gateway: Gateway, body: bytes, code: str, message: str) -> None:
    status, reply, _ = await _post(gateway.url, body, headers=AUTH)
    assert (status, reply["error"]) == (400, code)
    assert message in reply["message"]
    _assert_nothing_created(gateway)


async def test_offer_without_data_channel_gets_400(gateway: Gateway) -> None:
    sdp = await _offer_sdp(channel=False)
    status, reply, _ = await _post(gateway.url, json={"sdp": sdp, "type": "offer"}, headers=AUTH)
    assert (status, reply["error"]) == (400, "invalid_sdp")
    assert "no data channel" in reply["message"]
    _assert_nothing_created(gateway)


@pytest.mark.parametrize("drone_id", ["bad id", "x" * 65, "dröne", ""])
async def test_invalid_drone_id_gets_400(gateway: Gateway, drone_id: str) -> None:
    sdp = await _offer_sdp()
    async with (
        ClientSession() as http,
        http.post(
            f"{gateway.url}/offer",
            params={"drone": drone_id},
            json={"sdp": sdp, "type": "offer"},
            headers=AUTH,
        ) as reply,
    ):
        assert reply.status == 400
        assert (await reply.json())["error"] == "invalid_drone_id"
    _assert_nothing_created(gateway)


async def test_oversized_body_gets_413(gateway: Gateway) -> None:
    body = b'{"sdp": "' + b"x" * (gateway.config.max_body_bytes + 1) + b'", "type": "offer"}'
    status, reply, _ = await _post(gateway.url, body, headers=AUTH)
    assert (status, reply["error"]) == (413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b"x" * (gateway.config.max_body_bytes // 4)

    status, reply, _ = await _post(gateway.url, chunks(), headers=AUTH)
    assert (status, reply["error"]) == (413, "body_too_large")
    _assert_nothing_created(gateway)


async def test_offer_beyond_max_drones_gets_503_without_a_peer_connection(gateway: Gateway) -> None:
    first = TestDrone(photo())
    try:
        await first.connect(gateway.url, drone_id="first")
        assert list(gateway.sessions) == ["first"]
        sdp = await _offer_sdp()
        status, reply, headers = await _post(gateway.url, json={"sdp": sdp, "type": "offer"}, headers=AUTH)
        assert (status, reply["error"]) == (503, "gateway_full")
        assert headers["Retry-After"] == "5"
        assert gateway.metrics.peer_connections.value() == 1
        assert gateway.metrics.offers.value(outcome="gateway_full") == 1
        # The same drone offering again replaces its session instead of being refused.
        again = TestDrone(photo())
        try:
            await again.connect(gateway.url, drone_id="first", camera=camera_for())
            await again.wait_for(lambda d: len(d.keypoints) >= 1, what="keypoints after re-offer")
            assert list(gateway.sessions) == ["first"]
            assert gateway.sessions["first"].pc is not None
        finally:
            await again.close()
    finally:
        await first.close()


async def test_drone_id_comes_from_header_query_or_is_generated() -> None:
    async with running_gateway() as gateway:
        drones = [TestDrone(photo()) for _ in range(3)]
        try:
            await drones[0].connect(gateway.url, drone_id="alpha-1")
            await drones[1].connect(gateway.url)
            assert drones[0].drone_id == "alpha-1"
            assert drones[1].drone_id is not None and drones[1].drone_id.startswith("drone-")
            sdp = await drones[2].offer()
            async with (
                ClientSession() as http,
                http.post(
                    f"{gateway.url}/offer?drone=beta_2", json={"sdp": sdp, "type": "offer"}, headers=AUTH
                ) as reply,
            ):
                body = await reply.json()
                assert reply.status == 200 and body["drone_id"] == "beta_2" and body["type"] == "answer"
                assert body["sdp"].startswith("v=0")
            assert set(gateway.sessions) == {"alpha-1", drones[1].drone_id, "beta_2"}
        finally:
            for drone in drones:
                await drone.close()


async def test_health_ready_and_metrics() -> None:
    client = FakeDepthClient()
    async with running_gateway(client) as gateway, ClientSession() as http:
        async with http.get(f"{gateway.url}/health") as reply:
            assert reply.status == 200 and (await reply.json())["status"] == "ok"
        async with http.get(f"{gateway.url}/ready", headers=AUTH) as reply:  # the operator sees the detail
            body = await reply.json()
            assert reply.status == 200 and body["status"] == "ready" and body["depth_kind"] == "metric"
        client.available = False
        async with http.get(f"{gateway.url}/ready") as reply:
            assert reply.status == 503 and (await reply.json())["status"] == "unavailable"
        async with http.get(f"{gateway.url}/metrics") as reply:
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await reply.text()
        for name in (
            "dronedepth_sessions_active 0",
            "# TYPE dronedepth_frames_received_total counter",
            "# TYPE dronedepth_frames_dropped_total counter",
            "# TYPE dronedepth_stage_duration_seconds histogram",
            "# TYPE dronedepth_triton_errors_total counter",
            "dronedepth_inference_available 1",
        ):
            assert name in text


async def test_no_auth_only_when_asked_for_explicitly() -> None:
    with pytest.raises(ConfigError, match="no token"):
        GatewayConfig(token=None)
    async with running_gateway(token=None, allow_no_auth=True) as gateway:
        drone = TestDrone(photo())
        try:
            await drone.connect(gateway.url, token=None)
            assert drone.drone_id in gateway.sessions
        finally:
            await drone.close()


async def test_refused_connect_raises_with_the_reply(gateway: Gateway) -> None:
    drone = TestDrone(photo())
    try:
        with pytest.raises(OfferRefused) as info:
            await drone.connect(gateway.url, token="nope")
        assert info.value.status == 401
    finally:
        await drone.close()
