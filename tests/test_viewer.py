"""``dronedepth view``: the snapshot path against a real aiohttp app with a StreamHub, and its errors."""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from output_fixtures import make_record, serve_stream_hub

from dronedepth import cli
from dronedepth.cli import view as viewer
from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.gateway.outputs.stream import StreamHub

TOKEN = "viewer-token"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    viewer.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, StreamHub]]:
    async with serve_stream_hub(TOKEN) as served:
        yield served


async def run_while_publishing(hub: StreamHub, args: argparse.Namespace) -> int:
    """Run the (blocking) viewer in a thread while a fake drone publishes a frame every 50 ms."""
    task = asyncio.create_task(asyncio.to_thread(viewer.run, args))
    index = 0
    while not task.done():
        await asyncio.to_thread(hub.write, make_record("drone-3", n=5000, frame_index=index, axes="opengl"))
        index += 1
        await asyncio.wait([task], timeout=0.05)
    return await task


async def test_snapshot_renders_a_received_frame(
    gateway: tuple[str, StreamHub], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, hub = gateway
    target = tmp_path / "view.png"
    args = parse(
        "--gateway",
        url,
        "--token",
        TOKEN,
        "--drone",
        "drone-3",
        "--snapshot",
        str(target),
        "--frames",
        "2",
        "--size",
        "320x240",
    )
    assert await run_while_publishing(hub, args) == 0
    image = cv2.imread(str(target))
    assert image is not None and image.shape == (240, 320, 3)
    background = np.array([28, 24, 24])  # render.py's default, as BGR
    assert (np.abs(image.astype(int) - background).sum(axis=2) > 30).mean() > 0.02, "the cloud is drawn"
    red = (image[..., 2] > 200) & (image[..., 1] < 90) & (image[..., 0] < 90)
    assert red.sum() > 10, "keypoints are highlighted in red"
    out = capsys.readouterr().out
    assert f"wrote {target}" in out and "5000 points, 12 keypoints, metric depth" in out
    assert "frame 1 " in out or "frame 2 " in out or "frame 3 " in out, out


def test_render_snapshot_draws_in_the_optical_frame() -> None:
    from dronedepth.gateway.outputs.render import render_point_cloud
    from dronedepth.gateway.outputs.stream import stream_frame
    from dronedepth.stream_format import decode_frame, encode_frame

    record = make_record(n=3000, axes="opengl")
    frame = decode_frame(encode_frame(stream_frame(record)))
    expected = render_point_cloud(
        record.result.points, record.result.colors, size=(200, 150), highlight=record.message.points
    )
    np.testing.assert_array_equal(viewer.render_snapshot(frame, (200, 150)), expected)


async def test_wrong_token_is_a_clear_error(gateway: tuple[str, StreamHub], tmp_path: Path) -> None:
    url, _ = gateway
    args = parse("--gateway", url, "--token", "nope", "--drone", "drone-3", "--snapshot", str(tmp_path / "x.png"))
    with pytest.raises(ConfigError, match=r"refused the token .* \(401\)"):
        await asyncio.to_thread(viewer.run, args)


async def test_no_frame_within_the_timeout(gateway: tuple[str, StreamHub], tmp_path: Path) -> None:
    url, _ = gateway
    args = parse(
        "--gateway", url, "--token", TOKEN, "--drone", "idle", "--snapshot", str(tmp_path / "x.png"), "--timeout", "0.5"
    )
    with pytest.raises(DroneDepthError, match=r"no frame from .* within 0\.5 s"):
        await asyncio.to_thread(viewer.run, args)
    assert not (tmp_path / "x.png").exists()


def test_unreachable_gateway(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parse("--gateway", f"http://127.0.0.1:{port}", "--drone", "d", "--snapshot", str(tmp_path / "x.png"))
    with pytest.raises(ConfigError, match=f"cannot connect to ws://127.0.0.1:{port}/stream/d"):
        viewer.run(args)


def test_live_view_without_a_display_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.main(["view", "--gateway", "http://127.0.0.1:9", "--drone", "d"]) == 2
    err = capsys.readouterr().err
    assert "no display" in err and "--snapshot FILE.png" in err


@pytest.mark.parametrize(
    ("gateway_url", "expected"),
    [
        ("http://10.0.0.2:8080", "ws://10.0.0.2:8080/stream/uav-1"),
        ("https://gw.example/dd/", "wss://gw.example/dd/stream/uav-1"),
        ("ws://h:1", "ws://h:1/stream/uav-1"),
        ("127.0.0.1:8080", "ws://127.0.0.1:8080/stream/uav-1"),
    ],
)
def test_stream_url(gateway_url: str, expected: str) -> None:
    assert viewer.stream_url(gateway_url, "uav-1") == expected


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (("--gateway", "ftp://x", "--drone", "d"), "must be an http"),
        (("--gateway", "http://x", "--drone", "d", "--frames", "0"), "--frames must be at least 1"),
        (("--gateway", "http://x", "--drone", "d", "--snapshot", "a.png", "--size", "big"), "--size must be"),
        (("--gateway", "http://x", "--drone", "d", "--token-file", "/nonexistent/t"), "cannot read the token file"),
    ],
)
def test_bad_arguments(argv: tuple[str, ...], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        viewer.run(parse(*argv))
