"""Test doubles and helpers for the gateway tests: a real aiortc drone, a fake depth client.

- :class:`TestDrone`: a real ``RTCPeerConnection`` (no ICE servers) sending a
  sample photo (``dronedepth.samples``) as video with pts starting at 0, with the
  ``dronedepth`` data channel, signalling over real HTTP.
- :class:`FakeDepthClient`: an in-process :class:`~gateway.inference.DepthClient`
  (depth = 1 + 4 × luma / 255 metres) that can be made slow or unavailable.
- :func:`running_gateway`: a started :class:`~gateway.server.Gateway` on
  127.0.0.1 with port 0, stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import cv2
import numpy as np
from aiohttp import ClientSession
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from numpy.typing import NDArray

from dronedepth import protocol
from dronedepth.contract import DepthKind
from dronedepth.errors import InferenceUnavailable
from dronedepth.gateway.config import GatewayConfig
from dronedepth.gateway.inference import DepthClient
from dronedepth.gateway.server import Gateway
from dronedepth.protocol import CameraMessage
from dronedepth.samples import sample_photo

__test__ = False  # not a test module

TOKEN = "test-token-0123456789abcdef"
VIDEO_CLOCK = protocol.VIDEO_CLOCK_RATE
WAIT_S = 60.0
"""Generous: two CPU cores are shared with other test runs."""


def photo(width: int = 320, height: int = 240, name: str = "demo01.jpg") -> NDArray[np.uint8]:
    """A real photograph (a package sample) resized to ``width`` × ``height``, RGB; missing data fails."""
    path = sample_photo(name)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot decode {path}"
    bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def camera_for(width: int = 320, height: int = 240, focal: float = 300.0) -> CameraMessage:
    return CameraMessage(width=width, height=height, fx=focal, fy=focal, cx=(width - 1) / 2, cy=(height - 1) / 2)


class PhotoTrack(VideoStreamTrack):
    """A video track repeating one image at ``fps``; pts start at 0 in 90 kHz ticks."""

    def __init__(self, rgb: NDArray[np.uint8], fps: float = 10.0) -> None:
        super().__init__()
        height, width = rgb.shape[:2]
        self._yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        self.width, self.height = width, height
        self.fps = fps
        self._start: float | None = None
        self.sent = 0
        self._running = asyncio.Event()
        self._running.set()

    def pause(self) -> None:
        """Stop sending frames (the connection stays up), as a frozen camera would."""
        self._running.clear()

    async def recv(self) -> av.VideoFrame:
        await self._running.wait()
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self.sent / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = round(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame


class OfferRefused(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class TestDrone:
    """A drone client made of real aiortc parts; collects what the gateway sends back."""

    __test__ = False

    def __init__(self, rgb: NDArray[np.uint8], *, fps: float = 10.0, video: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = PhotoTrack(rgb, fps) if video else None
        if self.track is not None:
            self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel(protocol.DATA_CHANNEL_LABEL)
        self.messages: list[dict[str, Any]] = []
        self.drone_id: str | None = None
        self._opened = asyncio.Event()
        self.channel.on("open", self._opened.set)
        self.channel.on("message", self._on_message)

    def _on_message(self, data: str | bytes) -> None:
        self.messages.append(json.loads(data))

    @property
    def keypoints(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "keypoints"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "error"]

    def error_codes(self) -> list[str]:
        return [m["code"] for m in self.errors]

    async def offer(self) -> str:
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return self.pc.localDescription.sdp

    async def connect(
        self,
        base_url: str,
        token: str | None = TOKEN,
        *,
        drone_id: str | None = None,
        camera: CameraMessage | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Signal, apply the answer, wait for the data channel; then send ``camera`` if given.

        ``ssl_context`` verifies an ``https://`` gateway (default: the system's CAs).
        """
        sdp = await self.offer()
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if drone_id is not None:
            headers["X-Drone-Id"] = drone_id
        async with (
            ClientSession() as http,
            http.post(
                f"{base_url}/offer",
                json={"sdp": sdp, "type": "offer"},
                headers=headers,
                ssl=ssl_context if ssl_context is not None else True,
            ) as reply,
        ):
            body = await reply.json()
            if reply.status != 200:
                raise OfferRefused(reply.status, body)
            assert reply.headers["X-Drone-Id"] == body["drone_id"]
        self.drone_id = body["drone_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await asyncio.wait_for(self._opened.wait(), WAIT_S)
        if camera is not None:
            self.send(protocol.encode(camera))

    def send(self, text: str | bytes) -> None:
        self.channel.send(text)

    async def wait_for(
        self, predicate: Callable[[TestDrone], bool], timeout: float = WAIT_S, what: str = "condition"
    ) -> None:
        """Poll ``predicate`` (it may also watch gateway state, which sends nothing)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(
                f"drone {self.drone_id}: timed out waiting for {what}; got {len(self.keypoints)} keypoints, "
                f"errors {self.error_codes()}"
            ) from None

    async def close(self) -> None:
        await self.pc.close()


class FakeDepthClient:
    """In-process depth: ``1 + 4 × luma / 255`` of the blurred frame (metres), optionally slow or unavailable.

    The blur keeps the depth smooth, like a real model's, so most keypoints get a depth. ``output``
    replaces it: the model's output for a frame (metres for ``metric``, disparity for ``relative``).
    ``depth_stride`` returns it at every s-th row and column, as a model of that depth stride does.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        depth_kind: DepthKind = "metric",
        output: Callable[[NDArray[np.uint8]], NDArray[np.float32]] | None = None,
        depth_stride: int = 1,
    ) -> None:
        self.delay = delay
        self.depth_stride = depth_stride
        self._output = output
        self.available = True
        self._depth_kind: DepthKind = depth_kind
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self.server_concurrency: int | None = None  # unknown, like a server that has not answered yet

    @property
    def depth_kind(self) -> DepthKind:
        return self._depth_kind

    def __repr__(self) -> str:
        return "FakeDepthClient()"

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.calls += 1
        if not self.available:
            raise InferenceUnavailable("fake depth server is down")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self._output is not None:
            depth = self._output(rgb)
        else:
            luma = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 8).astype(np.float32)
            depth = (1.0 + 4.0 * luma / 255.0).astype(np.float32)
        step = self.depth_stride
        return depth if step == 1 else np.ascontiguousarray(depth[::step, ::step])

    async def ready(self) -> bool:
        return self.available

    async def close(self) -> None:
        self.closed = True


def gateway_config(**overrides: Any) -> GatewayConfig:
    settings: dict[str, Any] = {"token": TOKEN, "host": "127.0.0.1", "port": 0, "workers": 2, "idle_timeout": 30.0}
    settings.update(overrides)
    return GatewayConfig(**settings)


@contextlib.asynccontextmanager
async def running_gateway(
    client: DepthClient | None = None, *, sink: Any = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A started gateway with :func:`gateway_config` (``overrides`` are GatewayConfig fields)."""
    gateway = Gateway(gateway_config(**overrides), client or FakeDepthClient(), sink=sink)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@contextlib.asynccontextmanager
async def drones(count: int, rgb: NDArray[np.uint8], **kwargs: Any) -> AsyncIterator[list[TestDrone]]:
    fleet = [TestDrone(rgb, **kwargs) for _ in range(count)]
    try:
        yield fleet
    finally:
        await asyncio.gather(*(d.close() for d in fleet), return_exceptions=True)


def check_projection(message: dict[str, Any], camera: CameraMessage, tolerance_px: float = 0.01) -> None:
    """Every point projects onto its pixel with ``camera`` (optical axes): u = fx x/z + cx, v = fy y/z + cy.

    On top of ``tolerance_px``, each point may miss by what the message's rounding allows
    (points to 4 decimals: up to 5e-5 per coordinate; pixels to 2 decimals).
    """
    points = np.asarray(message["points"], dtype=np.float64).reshape(-1, 3)
    pixels = np.asarray(message["pixels"], dtype=np.float64).reshape(-1, 2)
    assert len(points) == len(pixels) > 0
    x, y, z = points.T
    assert (z > 0).all()
    u = camera.fx * x / z + camera.cx
    v = camera.fy * y / z + camera.cy
    rounding = 5e-5 / z
    slack_u = tolerance_px + 0.005 + camera.fx * rounding * (1 + np.abs(x / z)) * 1.01
    slack_v = tolerance_px + 0.005 + camera.fy * rounding * (1 + np.abs(y / z)) * 1.01
    bad = (np.abs(u - pixels[:, 0]) > slack_u) | (np.abs(v - pixels[:, 1]) > slack_v)
    assert not bad.any(), (
        f"{bad.sum()} of {len(points)} points miss their pixel, e.g. point {points[bad][0]} projects to "
        f"({u[bad][0]:.3f}, {v[bad][0]:.3f}) but the pixel is {pixels[bad][0]}"
    )


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def session_tasks() -> list[asyncio.Task[Any]]:
    """Gateway session tasks still alive in this loop."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("drone-") and not t.done()]
