"""``dronedepth view``: watch a drone's live point cloud and keypoints from a gateway.

Connects to the gateway's ``/stream/<drone>`` WebSocket (:mod:`gateway.streaming`)
and either shows an Open3D window updated as frames arrive (needs a display),
or with ``--snapshot FILE.png`` renders one frame offscreen with
:func:`gateway.render.render_point_cloud` (cloud plus keypoints in red) and
exits: that works on headless servers and in CI.

The network runs in a background thread with its own event loop; the window
(Open3D wants the main thread) polls a one-frame slot, so a slow renderer
skips frames instead of queuing them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ConfigError, DroneDepthError, ProtocolError
from dronedepth.stream_format import StreamFrame, decode_frame

if TYPE_CHECKING:
    import aiohttp

__all__ = ["add_arguments", "receive_frames", "render_snapshot", "run", "stream_url"]

log = logging.getLogger(__name__)

TOKEN_ENV: Final = "DRONEDEPTH_TOKEN"
DEFAULT_SIZE: Final = (960, 720)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway",
        required=True,
        metavar="URL",
        help="the gateway's base URL, e.g. http://127.0.0.1:8080 (ws:// and https:// work too)",
    )
    parser.add_argument("--drone", required=True, metavar="ID", help="the drone to watch")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", metavar="T", help=f"the gateway's bearer token (default: ${TOKEN_ENV})")
    auth.add_argument("--token-file", metavar="FILE", help="read the token from the first line of FILE")
    parser.add_argument(
        "--snapshot",
        metavar="FILE.png",
        type=Path,
        help="render one received frame to FILE.png offscreen and exit (no display needed)",
    )
    parser.add_argument(
        "--frames", type=int, metavar="N", help="stop after N frames (with --snapshot: render the Nth; default 1)"
    )
    parser.add_argument(
        "--size",
        default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}",
        metavar="WxH",
        help="snapshot size in pixels (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up when connecting or waiting for a frame takes longer (default %(default)s s)",
    )


def stream_url(gateway: str, drone_id: str) -> str:
    """``http(s)://host:port[/prefix]`` (or ``ws(s)://``) → the WebSocket URL of ``drone_id``'s stream."""
    parts = urlsplit(gateway if "://" in gateway else f"http://{gateway}")
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"--gateway must be an http(s):// or ws(s):// URL with a host, got {gateway!r}")
    path = parts.path.rstrip("/") + "/stream/" + quote(drone_id, safe="")
    return urlunsplit((schemes[parts.scheme], parts.netloc, path, "", ""))


def _parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or not (16 <= size[0] <= 8192 and 16 <= size[1] <= 8192):
        raise ConfigError(f"--size must be WIDTHxHEIGHT between 16 and 8192, got {text!r}")
    return size


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {args.token_file!r}: {exc.strerror or exc}") from exc
        if not lines:
            raise ConfigError(f"the token file {args.token_file!r} is empty")
        return lines[0]
    return args.token or os.environ.get(TOKEN_ENV, "").strip() or None


async def receive_frames(url: str, token: str | None, *, timeout: float = 30.0) -> AsyncIterator[StreamFrame]:
    """Yield the frames of one ``/stream/<drone>`` WebSocket until the gateway closes it.

    Raises :class:`ConfigError` when the gateway cannot be reached or refuses
    the token, :class:`DroneDepthError` when no frame comes within ``timeout``.
    """
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        try:
            ws = await session.ws_connect(url, headers=headers, heartbeat=30.0, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise ConfigError(_refusal(url, exc)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot connect to {url}: {exc or type(exc).__name__}") from exc
        async with ws:
            while True:
                try:
                    message = await ws.receive(timeout=timeout)
                except TimeoutError:
                    raise DroneDepthError(
                        f"no frame from {url} within {timeout:g} s: is the drone connected and streaming?"
                    ) from None
                if message.type == aiohttp.WSMsgType.BINARY:
                    yield decode_frame(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return
                elif message.type == aiohttp.WSMsgType.ERROR:
                    raise ConfigError(f"the stream {url} failed: {ws.exception()!r}")


def _refusal(url: str, exc: aiohttp.WSServerHandshakeError) -> str:
    if exc.status == 401:
        return f"the gateway refused the token for {url} (401): give --token, --token-file or ${TOKEN_ENV}"
    if exc.status == 404:
        return f"no stream endpoint at {url} (404): is --gateway a dronedepth gateway's URL?"
    return f"the gateway refused the stream {url}: HTTP {exc.status} {exc.message}"


def render_snapshot(frame: StreamFrame, size: tuple[int, int] = DEFAULT_SIZE) -> NDArray[np.uint8]:
    """RGB picture of ``frame``: its cloud seen from an orbiting camera, keypoints as red discs."""
    from dronedepth.gateway.outputs.render import render_point_cloud

    return render_point_cloud(
        frame.cloud_xyz,
        frame.cloud_rgb,
        size=size,
        highlight=frame.keypoints_xyz,
    )


async def _nth_frame(url: str, token: str | None, n: int, timeout: float) -> StreamFrame:
    count = 0
    async for frame in receive_frames(url, token, timeout=timeout):
        count += 1
        if count >= n:
            return frame
    raise DroneDepthError(f"the gateway closed {url} after {count} of {n} frames")


def _snapshot(args: argparse.Namespace, url: str, token: str | None) -> int:
    import cv2

    size = _parse_size(args.size)
    frame = asyncio.run(_nth_frame(url, token, args.frames or 1, args.timeout))
    image = render_snapshot(frame, size)
    path: Path = args.snapshot
    if not path.parent.exists():
        raise ConfigError(f"the folder of --snapshot {str(path)!r} does not exist")
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ConfigError(f"cannot write {str(path)!r}: use a .png or .jpg name in a writable folder")
    print(
        f"wrote {path}: frame {frame.frame_index} of drone {args.drone}, {len(frame.cloud_xyz)} points, "
        f"{len(frame.keypoints_xyz)} keypoints, {frame.depth_kind} depth"
    )
    return 0


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Latest:
    """The newest frame from the network thread, or the error that ended it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: StreamFrame | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def put(self, frame: StreamFrame) -> None:
        with self._lock:
            self._frame = frame

    def take(self) -> StreamFrame | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


def _pump(url: str, token: str | None, timeout: float, latest: _Latest, stop: threading.Event) -> None:
    async def main() -> None:
        async for frame in receive_frames(url, token, timeout=timeout):
            latest.put(frame)
            if stop.is_set():
                return

    try:
        asyncio.run(main())
    except BaseException as exc:  # handed to the main thread, which reports it
        latest.error = exc
    finally:
        latest.finished.set()


def _live(args: argparse.Namespace, url: str, token: str | None) -> int:
    if not _has_display():
        raise ConfigError(
            "no display: DISPLAY and WAYLAND_DISPLAY are unset, so no window can open. "
            "Use --snapshot FILE.png to render a frame offscreen, or run with a display (ssh -X, a desktop)"
        )
    import open3d as o3d

    latest, stop = _Latest(), threading.Event()
    network = threading.Thread(
        target=_pump, args=(url, token, args.timeout, latest, stop), daemon=True, name="view-network"
    )
    network.start()
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(window_name=f"dronedepth: {args.drone}", width=1280, height=800):
        stop.set()
        raise ConfigError("Open3D could not open a window (no OpenGL?): use --snapshot FILE.png instead")
    cloud, keypoints = o3d.geometry.PointCloud(), o3d.geometry.PointCloud()
    shown = 0
    try:
        while vis.poll_events():
            frame = latest.take()
            if frame is not None:
                cloud.points = o3d.utility.Vector3dVector(frame.cloud_xyz.astype(np.float64))
                cloud.colors = o3d.utility.Vector3dVector(frame.cloud_rgb.astype(np.float64) / 255.0)
                keypoints.points = o3d.utility.Vector3dVector(frame.keypoints_xyz.astype(np.float64))
                keypoints.paint_uniform_color((1.0, 0.15, 0.15))
                if shown == 0:
                    vis.add_geometry(cloud)  # resets the view to fit the first cloud
                    vis.add_geometry(keypoints)
                    view = vis.get_view_control()
                    # Look along the camera's optical axis, image-up (−y) up.
                    view.set_front((0.0, 0.0, -1.0))
                    view.set_up((0.0, -1.0, 0.0))
                else:
                    vis.update_geometry(cloud)
                    vis.update_geometry(keypoints)
                shown += 1
                if args.frames and shown >= args.frames:
                    break
            elif latest.finished.is_set():
                break
            vis.update_renderer()
            time.sleep(0.01)
    finally:
        stop.set()
        vis.destroy_window()
    if latest.error is not None and not isinstance(latest.error, asyncio.CancelledError):
        raise latest.error
    return 0


def run(args: argparse.Namespace) -> int:
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {args.frames}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout}")
    url = stream_url(args.gateway, args.drone)
    token = _token(args)
    try:
        if args.snapshot is not None:
            return _snapshot(args, url, token)
        return _live(args, url, token)
    except ProtocolError as exc:
        raise DroneDepthError(f"the gateway sent a frame this viewer cannot read: {exc}") from exc
