"""The gateway with a real embedded Triton: results from the served model, and an outage mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from aiohttp import ClientSession
from gateway_fixtures import TOKEN, camera_for, check_projection, drones, photo, running_gateway, wait_until
from serving_fixtures import make_test_repository

from dronedepth.contract import MODEL_NAME
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.serving import EmbeddedTriton, find_free_port


@pytest.fixture
def triton(tmp_path: Path) -> Iterator[EmbeddedTriton]:
    """A Triton of this test's own (it gets stopped), on fixed ports so it can come back on them."""
    repository = make_test_repository(tmp_path / "repository")
    server = EmbeddedTriton(
        repository,
        grpc_port=find_free_port(),
        http_port=find_free_port(),
        metrics_port=find_free_port(),
        log_file=tmp_path / "tritonserver.log",
    )
    with server:
        yield server


OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
"""/ready names the depth server only to the operator token."""


async def test_triton_outage_is_reported_once_and_results_resume(triton: EmbeddedTriton) -> None:
    client = TritonDepthClient(triton.url, MODEL_NAME, timeout=10)
    camera = camera_for()
    # Blurred: the tiny model's depth is the frame's luma, and a real model's depth is smooth (sharp texture
    # read as depth is rough, and then few keypoints get a trustworthy depth).
    smooth = cv2.GaussianBlur(photo(), (0, 0), 2.0)
    async with running_gateway(client) as gateway, drones(2, smooth) as fleet, ClientSession() as http:
        async with http.get(f"{gateway.url}/ready", headers=OPERATOR) as reply:
            assert reply.status == 200 and (await reply.json())["depth_kind"] == "relative"
        await asyncio.gather(*(d.connect(gateway.url, camera=camera) for d in fleet))
        await asyncio.gather(*(d.wait_for(lambda d: len(d.keypoints) >= 2, what="results") for d in fleet))
        for drone in fleet:
            assert drone.keypoints[0]["depth_kind"] == "relative"
            check_projection(drone.keypoints[-1], camera)

        await asyncio.to_thread(triton.stop)
        await asyncio.gather(
            *(d.wait_for(lambda d: "inference_unavailable" in d.error_codes(), what="outage error") for d in fleet)
        )
        sessions = list(gateway.sessions.values())
        await wait_until(
            lambda: all(s.dropped["inference_unavailable"] >= 5 for s in sessions), what="frames dropped in the outage"
        )
        async with http.get(f"{gateway.url}/ready", headers=OPERATOR) as reply:
            assert reply.status == 503
        counts = [len(d.keypoints) for d in fleet]

        await asyncio.to_thread(triton.start)
        await asyncio.to_thread(triton.wait_ready)
        await asyncio.gather(
            *(
                d.wait_for(lambda d, n=n: len(d.keypoints) >= n + 2, what="results after the restart")
                for d, n in zip(fleet, counts, strict=True)
            )
        )
        for drone in fleet:
            assert drone.error_codes().count("inference_unavailable") == 1
            assert drone.error_codes() == ["inference_unavailable", "inference_resumed"]
            check_projection(drone.keypoints[-1], camera)
        assert gateway.metrics.triton_errors.value(reason="unavailable") >= 1
        assert len(gateway.sessions) == 2
