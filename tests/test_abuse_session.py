"""A drone cannot starve the others, and numbers it sends cannot kill its session.

Real gateway (FakeDepthClient), real aiortc drones over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from aiohttp import ClientSession
from gateway_fixtures import TOKEN, TestDrone, camera_for, drones, photo, running_gateway

from dronedepth import protocol
from dronedepth.gateway.session import MAX_CAMERA_CHANGES
from dronedepth.protocol import CameraMessage

WINDOW_S = 4.0
"""Seconds of each rate measurement."""


async def _results_in_window(drone: TestDrone, seconds: float = WINDOW_S) -> int:
    before = len(drone.keypoints)
    await asyncio.sleep(seconds)
    return len(drone.keypoints) - before


def _distorted(index: int) -> CameraMessage:
    """A different distorted 640x480 camera for every ``index``: each one needs a new undistortion grid."""
    return CameraMessage(
        width=640,
        height=480,
        fx=500.0 + 0.01 * index,
        fy=500.0,
        cx=319.5,
        cy=239.5,
        distortion=(-0.3, 0.1, 0.001, 0.001, -0.02),
    )


async def _churn(drone: TestDrone) -> None:
    """Send a new camera about every frame, for ever."""
    index = 1
    while True:
        drone.send(protocol.encode(_distorted(index)))
        index += 1
        await asyncio.sleep(0.1)


async def test_a_drone_churning_cameras_does_not_starve_another() -> None:
    async with (
        running_gateway(max_in_flight=1, workers=2) as gateway,
        drones(1, photo()) as (bystander,),
        drones(1, photo(640, 480)) as (churner,),
    ):
        await bystander.connect(gateway.url, camera=camera_for())
        await bystander.wait_for(lambda d: len(d.keypoints) >= 3, what="the bystander's first results")
        solo = await _results_in_window(bystander)

        await churner.connect(gateway.url, camera=_distorted(0))
        churning = asyncio.create_task(_churn(churner))
        try:
            shared = await _results_in_window(bystander)
        finally:
            churning.cancel()
        print(f"bystander results per {WINDOW_S:.0f} s: solo {solo}, beside a camera-churning drone {shared}")
        assert shared >= 0.8 * solo, f"the bystander fell from {solo} to {shared} results per {WINDOW_S:.0f} s"

        # The churner was refused (once per burst) and kept its last accepted camera, which still works.
        session = gateway.sessions[churner.drone_id]
        assert churner.error_codes() == [protocol.CAMERA_RATE_LIMITED]
        assert session.camera == _distorted(MAX_CAMERA_CHANGES - 1)
        assert gateway.metrics.camera_changes_refused.value() >= 10
        seen = len(churner.keypoints)
        await churner.wait_for(lambda d: len(d.keypoints) >= seen + 2, what="the churner's results go on")
        assert bystander.errors == []


def _camera_text(**raw: str) -> str:
    """A camera message with ``raw`` values spliced in as JSON text (huge literals stay literal)."""
    fields = {k: json.dumps(v) for k, v in camera_for().to_dict().items()} | raw
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


async def test_numbers_that_break_parsers_get_errors_and_the_session_goes_on() -> None:
    good = camera_for()
    bad_messages = [
        (_camera_text(fx="1" + "0" * 400), protocol.INVALID_JSON),
        (_camera_text(distortion="[0.1, 1" + "0" * 400 + ", 0, 0]"), protocol.INVALID_JSON),
        (_camera_text(fx="1e400"), protocol.INVALID_JSON),
        ("[" * 20_000 + "]" * 20_000, protocol.INVALID_JSON),
        (_camera_text(fx="1e-300", fy="1e-300"), protocol.INVALID_CAMERA),
        (_camera_text(distortion="[0.1, 1e300, 0, 0]"), protocol.INVALID_CAMERA),
    ]
    async with running_gateway() as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url, camera=good)
        await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="the first result")
        for text, _ in bad_messages:
            drone.send(text)
        expected = [code for _, code in bad_messages]
        await drone.wait_for(lambda d: len(d.errors) >= len(expected), what="an error for each bad message")
        assert drone.error_codes() == expected
        seen = len(drone.keypoints)
        await drone.wait_for(lambda d: len(d.keypoints) >= seen + 3, what="results after the bad messages")
        session = gateway.sessions[drone.drone_id]
        assert session.camera == good and not session.closed
        for message in drone.keypoints:
            assert all(math.isfinite(v) for point in message["points"] for v in point)
        assert gateway.metrics.messages_refused.value(reason=protocol.INVALID_JSON) == 4
        assert gateway.metrics.messages_refused.value(reason=protocol.INVALID_CAMERA) == 2


async def test_a_deeply_nested_offer_body_is_refused_with_400() -> None:
    body = '{"type": "offer", "sdp": ' + "[" * 20_000 + "]" * 20_000 + "}"
    async with (
        running_gateway() as gateway,
        ClientSession() as http,
        http.post(f"{gateway.url}/offer", data=body, headers={"Authorization": f"Bearer {TOKEN}"}) as reply,
    ):
        answer: dict[str, Any] = await reply.json()
    assert reply.status == 400
    assert answer["error"] == protocol.INVALID_JSON
    assert "nested deeper than" in answer["message"]
