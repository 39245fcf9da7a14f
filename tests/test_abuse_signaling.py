"""Signalling and HTTP under abuse: impersonation, half-open offers, slow clients, garbage headers, floods.

Real gateways, real aiortc offers and raw sockets on 127.0.0.1; deadlines are
configured short so the tests wait on events, not on the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import pytest
from aiohttp import ClientSession
from gateway_fixtures import TOKEN, OfferRefused, TestDrone, camera_for, photo, running_gateway, wait_until

from dronedepth import protocol
from dronedepth.gateway.auth import token_digest
from dronedepth.gateway.logthrottle import LogThrottle

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post_offer(url: str, sdp: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with (
        ClientSession() as http,
        http.post(f"{url}/offer", json={"sdp": sdp, "type": "offer"}, headers=headers) as r,
    ):
        return r.status, await r.json()


async def _fresh_offer() -> str:
    drone = TestDrone(photo())
    try:
        return await drone.offer()
    finally:
        await drone.close()


def _rtx_only(sdp: str) -> str:
    """``sdp`` whose video section offers nothing but ``rtx`` (retransmission, decodes nothing)."""
    lines = sdp.split("\r\n")
    video = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    rtx = [re.match(r"a=rtpmap:(\d+) rtx/", line) for line in lines]
    rtx_types = [m.group(1) for m in rtx if m]
    keep_types = set(rtx_types)
    out = []
    for i, line in enumerate(lines):
        if i == video:
            out.append(" ".join(line.split(" ")[:3] + rtx_types))
            continue
        m = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+)", line)
        if m and m.group(1) not in keep_types:
            continue
        out.append(line)
    return "\r\n".join(out)


async def _raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 30)
    finally:
        writer.close()


# ---------------------------------------------------------------------- finding 2, 10: refused offers change nothing


async def test_a_refused_offer_leaves_the_live_session_of_that_id_alone() -> None:
    async with running_gateway() as gateway:
        drone = TestDrone(photo())
        try:
            await drone.connect(gateway.url, drone_id="alpha")
            live = gateway.sessions["alpha"]
            status, body = await _post_offer(
                gateway.url, _rtx_only(await _fresh_offer()), {**AUTH, "X-Drone-Id": "alpha"}
            )
            assert (status, body["error"]) == (400, "invalid_sdp")
            assert "no common video codec" in body["message"]
            assert gateway.sessions.get("alpha") is live and not live.closed
            assert gateway.metrics.sessions_closed.value(reason="replaced by a new offer") == 0
        finally:
            await drone.close()


async def test_an_offer_with_hundreds_of_media_sections_is_refused_before_parsing() -> None:
    async with running_gateway(max_body_bytes=1024 * 1024) as gateway:
        sdp = await _fresh_offer()
        video = sdp[sdp.index("m=video") : sdp.index("m=application")]
        bloated = sdp + video * ((32_000 - len(sdp)) // len(video))  # whole sections, within the sdp limit
        status, body = await _post_offer(gateway.url, bloated, AUTH)
        assert (status, body["error"]) == (400, "invalid_sdp")
        assert "media sections" in body["message"]
        assert gateway.metrics.peer_connections.value() == 0


# ---------------------------------------------------------------------- finding 3: identity


async def test_a_drone_token_opens_only_its_own_session_and_no_operator_endpoint() -> None:
    tokens = {"alpha": token_digest("alpha-secret"), "beta": token_digest("beta-secret")}
    async with running_gateway(drone_tokens=tokens) as gateway, ClientSession() as http:
        alpha = TestDrone(photo())
        beta = TestDrone(photo())
        try:
            await alpha.connect(gateway.url, token="alpha-secret", camera=camera_for())
            assert alpha.drone_id == "alpha"  # the credential names the drone; no header needed
            victim = gateway.sessions["alpha"]
            # beta's holder cannot take alpha's id; the fleet/operator token opens no session at all.
            with pytest.raises(OfferRefused) as refused:
                await beta.connect(gateway.url, token="beta-secret", drone_id="alpha")
            assert (refused.value.status, refused.value.body["error"]) == (401, "unauthorized")
            assert gateway.sessions["alpha"] is victim and not victim.closed
            status, body = await _post_offer(gateway.url, await _fresh_offer(), {**AUTH, "X-Drone-Id": "alpha"})
            assert (status, body["error"]) == (401, "unauthorized")
            assert gateway.sessions["alpha"] is victim and not victim.closed
            # A drone token reads no operator endpoint (another drone's stream included).
            for path in ("/api/drones", "/stream/alpha", "/stream/beta"):
                async with http.get(gateway.url + path, headers={"Authorization": "Bearer beta-secret"}) as r:
                    assert r.status == 401, path
            async with http.get(f"{gateway.url}/api/drones", headers=AUTH) as r:
                assert r.status == 200 and list((await r.json())["drones"]) == ["alpha"]
            # The holder of alpha's token may replace alpha's session.
            again = TestDrone(photo())
            try:
                await again.connect(gateway.url, token="alpha-secret", drone_id="alpha")
                assert gateway.sessions["alpha"] is not victim
            finally:
                await again.close()
        finally:
            await alpha.close()
            await beta.close()


# ---------------------------------------------------------------------- finding 5: half-open offers


async def test_half_open_offers_neither_lock_out_drones_nor_stay() -> None:
    async with running_gateway(max_drones=1, max_pending_offers=3, max_pending_per_remote=3, pending_timeout=1.0) as gw:
        half_open = [TestDrone(photo()) for _ in range(3)]
        real = TestDrone(photo())
        try:
            for drone in half_open[:2]:  # answered, never completed
                assert (await _post_offer(gw.url, await drone.offer(), AUTH))[0] == 200
            status, body = await _post_offer(gw.url, await half_open[2].offer(), AUTH)
            assert status == 200, body  # a pending slot is left; max_drones is not spent on them
            with pytest.raises(OfferRefused) as refused:  # the pending budget is spent
                await TestDrone(photo()).connect(gw.url)
            assert refused.value.body["error"] == "gateway_full"
            await wait_until(lambda: gw.metrics.pending_offers_expired.value() == 3, what="pending offers expired")
            await wait_until(lambda: not gw.sessions, what="expired sessions closed")
            await real.connect(gw.url, camera=camera_for())
            await real.wait_for(lambda d: len(d.keypoints) >= 1, what="keypoints")
            assert list(gw.sessions) == [real.drone_id] and gw.connected_count == 1
        finally:
            for drone in [*half_open, real]:
                await drone.close()


# ---------------------------------------------------------------------- finding 6: slow connections


async def test_slow_and_idle_connections_are_closed_and_capped() -> None:
    async with running_gateway(header_timeout=0.5, body_timeout=0.5, max_waiting_connections=10) as gateway:
        streams = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(20)]
        for _, writer in streams:
            writer.write(b"GET /api/drones HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
            await writer.drain()
        for reader, writer in streams:  # every one is closed by the gateway: EOF or reset
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()
        dropped = gateway.metrics.connections_dropped
        assert dropped.value(reason="too_many_waiting") >= 10
        assert dropped.value(reason="header_timeout") >= 1
        assert dropped.value(reason="too_many_waiting") + dropped.value(reason="header_timeout") == 20
        # A body that trickles gets 408 after body_timeout, with the usual JSON error.
        reply = await _raw_request(
            gateway.port,
            f"POST /offer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode(),
        )
        assert reply.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in reply
        # Real drones are served as before.
        drone = TestDrone(photo())
        try:
            await drone.connect(gateway.url)
        finally:
            await drone.close()


# ---------------------------------------------------------------------- finding 7: non-ASCII Authorization


@pytest.mark.parametrize("path", ["POST /offer", "GET /api/drones", "GET /stream/alpha", "GET /"])
async def test_non_ascii_authorization_is_401_not_500(path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway() as gateway:
        reply = await _raw_request(
            gateway.port,
            f"{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n".encode()
            + b"Authorization: Bearer \xff\xfe\r\n\r\n",
        )
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


# ---------------------------------------------------------------------- finding 11: what anonymous clients learn


async def test_ready_and_metrics_tell_anonymous_clients_no_drone_or_server_detail() -> None:
    async with running_gateway() as gateway, ClientSession() as http:
        drone = TestDrone(photo())
        try:
            await drone.connect(gateway.url, drone_id="secret-drone-7")
            async with http.get(f"{gateway.url}/ready") as r:
                assert r.status == 200 and await r.json() == {"status": "ready"}
            async with http.get(f"{gateway.url}/ready", headers=AUTH) as r:
                body = await r.json()
                assert body["depth_server"] == "FakeDepthClient()" and body["sessions"] == 1
            async with http.get(f"{gateway.url}/metrics") as r:
                anonymous = await r.text()
            async with http.get(f"{gateway.url}/metrics", headers=AUTH) as r:
                operator = await r.text()
            assert "dronedepth_offers_total" in anonymous and "secret-drone-7" not in anonymous
            assert 'drone="secret-drone-7"' in operator
            async with http.get(f"{gateway.url}/health") as r:
                assert await r.json() == {"status": "ok"}
        finally:
            await drone.close()


# ---------------------------------------------------------------------- finding 12: log amplification, refusal counts


def test_log_throttle_logs_once_per_key_and_window_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("throttle-test"), window_s=10.0, max_keys=2, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="throttle-test")
    logged = [throttle.log(logging.WARNING, "a", "refused %s", "a") for _ in range(413)]
    assert logged.count(True) == 1
    assert throttle.log(logging.WARNING, "b", "refused %s", "b")  # another key has its own window
    now[0] = 10.0
    assert throttle.log(logging.WARNING, "a", "refused %s", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a",
        "refused b",
        "refused a (412 more in the last 10 s)",
    ]
    throttle.log(logging.WARNING, "c", "x")
    assert len(throttle._windows) == 2  # bounded: the oldest key went


async def test_refusal_floods_are_counted_but_logged_throttled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_gateway() as gateway, ClientSession() as http:
        for _ in range(50):
            async with http.post(f"{gateway.url}/offer", data=b"{}", headers={"Authorization": "Bearer no"}) as r:
                assert r.status == 401
            async with http.get(f"{gateway.url}/api/drones") as r:
                assert r.status == 401
        drone = TestDrone(photo())
        try:
            await drone.connect(gateway.url, camera=camera_for())
            for focal in range(301, 331):
                drone.send(protocol.encode(camera_for(focal=float(focal))))
            await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="keypoints")
        finally:
            await drone.close()
        refusals = gateway.metrics.http_refusals
        assert refusals.value(endpoint="offer", reason="unauthorized") == 50
        assert refusals.value(endpoint="api", reason="unauthorized") == 50
        assert gateway.metrics.offers.value(outcome="unauthorized") == 50
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert 1 <= len(warnings) <= 4, [r.getMessage() for r in warnings]
    cameras = [r for r in caplog.records if ": camera " in r.getMessage()]
    assert 1 <= len(cameras) <= 2, [r.getMessage() for r in cameras]
