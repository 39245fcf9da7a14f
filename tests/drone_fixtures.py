"""A stand-in gateway for the drone client's tests: a real aiortc answering peer.

:class:`FakeGateway` speaks the real signalling and data-channel protocol
(``POST /offer`` with a bearer token, ``camera`` and ``pose`` in,
``keypoints``/``obstacles``/``error`` out) and answers each received frame
with a small deterministic set of keypoints echoing the frame's ``pts``, then,
while :attr:`FakeGateway.profile` is set, that obstacle profile with the same
``pts``, so the client's WebRTC logic is tested for real without Triton. It
can refuse offers (``reject_status``), go silent (``silent``) and restart on
the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from dronedepth.drone.client import DroneConfig
from dronedepth.errors import ProtocolError
from dronedepth.protocol import (
    CAMERA_MISMATCH,
    DATA_CHANNEL_LABEL,
    CameraMessage,
    ErrorMessage,
    KeypointsMessage,
    LocalMapMessage,
    ObstaclesMessage,
    PoseMessage,
    SessionDescription,
    decode,
    encode,
)

WAIT_S = 90.0
"""How long a drone test waits for a condition: generous, two CPU cores are shared with other test runs."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port of 127.0.0.1 nothing listens on yet (TCP, or ``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drone_config(gw: FakeGateway, **overrides: Any) -> DroneConfig:
    """The client's settings for ``gw``: the synthetic source at 320×240 and 10 fps, quick reconnections;
    ``overrides`` win."""
    settings: dict[str, Any] = {
        "gateway": gw.url,
        "token": gw.token,
        "source": "synthetic",
        "width": 320,
        "height": 240,
        "fps": 10.0,
        "reconnect_delay": 0.1,
        "reconnect_max_delay": 0.5,
        "connect_timeout": 30.0,
        "result_timeout": 30.0,
    }
    return DroneConfig(**(settings | overrides))


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` until it holds; an AssertionError naming ``what`` after ``timeout`` seconds."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def fake_keypoints(camera: CameraMessage, pts: int, frame_index: int, depth_kind: str = "metric") -> KeypointsMessage:
    """Nine keypoints on a 3×3 pixel grid, 2–10 m away, projected with ``camera``."""
    u, v = np.meshgrid(np.linspace(0.2, 0.8, 3) * camera.width, np.linspace(0.3, 0.7, 3) * camera.height)
    pixels = np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float32)
    z = np.linspace(2.0, 10.0, len(pixels)).astype(np.float32)
    x = (pixels[:, 0] - camera.cx) / camera.fx * z
    y = (pixels[:, 1] - camera.cy) / camera.fy * z
    return KeypointsMessage(
        pts=pts,
        points=np.stack([x, y, z], axis=1).astype(np.float32),
        pixels=pixels,
        scores=np.ones(len(pixels), np.float32),
        depth_kind=depth_kind,  # type: ignore[arg-type]
        width=camera.width,
        height=camera.height,
        frame_index=frame_index,
        timing={"fake_ms": 0.0},
    )


@dataclass
class _Peer:
    pc: RTCPeerConnection
    drone_id: str
    camera: CameraMessage | None = None
    channel: object | None = None
    frames: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FakeGateway:
    """A minimal gateway: one aiohttp server, one aiortc peer per offer."""

    def __init__(self, token: str = "test-token", port: int | None = None, *, depth_kind: str = "metric") -> None:
        self.token = token
        self.port = port or free_port()
        self.depth_kind = depth_kind
        self.reject_status: int | None = None
        self.silent = False
        self.answer_delay = 0.0
        self.greeting: list[str] = []
        """Raw texts sent to each drone right after its first ``camera`` message."""
        self.offers = 0
        self.offer_times: list[float] = []
        """The event loop's clock (seconds) at each offer's arrival."""
        self.drone_ids: list[str | None] = []
        self.cameras: list[CameraMessage] = []
        self.poses: list[PoseMessage] = []
        """Every ``pose`` received, as decoded (ENU/FLU)."""
        self.received_pts: list[list[int]] = []
        self.frames_before_camera = 0
        self.keypoints_sent = 0
        self.profile: ObstaclesMessage | None = None
        """Sent after each frame's keypoints with that frame's ``pts`` and index; ``None``: no ``obstacles``."""
        self.obstacles_sent: list[ObstaclesMessage] = []
        self.local_map: LocalMapMessage | None = None
        """Sent after each frame's keypoints (like a gateway with ``--map``); ``None``: no ``local_map``."""
        self._peers: list[_Peer] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/offer", self._offer)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        """Close every peer (as a gateway shutting down does) and the HTTP server."""
        peers, self._peers = self._peers, []
        for peer in peers:
            for task in peer.tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await peer.pc.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, down_s: float = 0.5) -> None:
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> FakeGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _offer(self, request: web.Request) -> web.Response:
        self.offers += 1
        self.offer_times.append(asyncio.get_running_loop().time())
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized", "message": "bad token"}, status=401)
        if self.reject_status is not None:
            return web.json_response({"error": "rejected", "message": "gateway full"}, status=self.reject_status)
        try:
            offer = SessionDescription.from_json(await request.text())
        except ProtocolError as exc:
            return web.json_response({"error": exc.code, "message": exc.message}, status=400)
        drone_id = request.headers.get("X-Drone-Id") or f"drone-{self.offers}"
        self.drone_ids.append(request.headers.get("X-Drone-Id"))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer = _Peer(pc, drone_id)
        self._peers.append(peer)
        pts_log: list[int] = []
        self.received_pts.append(pts_log)

        @pc.on("datachannel")
        def on_datachannel(channel: object) -> None:
            if getattr(channel, "label", None) != DATA_CHANNEL_LABEL:
                return
            peer.channel = channel

            @channel.on("message")  # type: ignore[attr-defined]
            def on_message(text: str | bytes) -> None:
                message = decode(text, accept=(CameraMessage.type, PoseMessage.type))
                if isinstance(message, PoseMessage):
                    self.poses.append(message)
                    return
                assert isinstance(message, CameraMessage)
                if peer.camera is None:
                    for greeting in self.greeting:
                        channel.send(greeting)  # type: ignore[attr-defined]
                peer.camera = message
                self.cameras.append(message)

        @pc.on("track")
        def on_track(track: object) -> None:
            if getattr(track, "kind", None) == "video":
                peer.tasks.append(asyncio.ensure_future(self._consume(peer, track, pts_log)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer", "drone_id": drone_id})

    async def _consume(self, peer: _Peer, track: object, pts_log: list[int]) -> None:
        while True:
            try:
                frame = await track.recv()  # type: ignore[attr-defined]
            except MediaStreamError:
                return
            pts_log.append(int(frame.pts))
            camera, channel = peer.camera, peer.channel
            if camera is None or channel is None:
                self.frames_before_camera += 1
                continue
            peer.frames += 1
            if self.silent or getattr(channel, "readyState", "") != "open":
                continue
            if (frame.width, frame.height) != (camera.width, camera.height):
                message: KeypointsMessage | ErrorMessage = ErrorMessage(
                    CAMERA_MISMATCH, f"frame {frame.width}x{frame.height}, camera {camera.width}x{camera.height}"
                )
            else:
                message = fake_keypoints(camera, int(frame.pts), peer.frames - 1, self.depth_kind)
                self.keypoints_sent += 1
            channel.send(encode(message))  # type: ignore[attr-defined]
            if self.profile is not None and isinstance(message, KeypointsMessage):
                profile = dataclasses.replace(self.profile, pts=message.pts, frame_index=message.frame_index)
                channel.send(encode(profile))  # type: ignore[attr-defined]
                self.obstacles_sent.append(profile)
            if self.local_map is not None and isinstance(message, KeypointsMessage):
                channel.send(encode(self.local_map))  # type: ignore[attr-defined]
