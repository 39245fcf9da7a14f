"""Helpers for the web-page tests: a gateway serving the pages, a fake camera video, headless Chromium.

- :func:`web_gateway`: a started :class:`~gateway.server.Gateway` on 127.0.0.1,
  which serves the pages and keeps previews itself (``gateway.preview_hub``).
- :func:`write_y4m`: a Y4M video made from the test photographs (a slow pan
  and zoom across each), for Chromium's ``--use-file-for-fake-video-capture``.
- :func:`chromium`: Debian's ``/usr/bin/chromium`` driven by Playwright (never a
  downloaded browser), with the fake camera; skips when either is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from gateway_fixtures import running_gateway

from dronedepth.gateway.inference import DepthClient
from dronedepth.gateway.outputs.previews import PreviewHub
from dronedepth.gateway.server import Gateway
from dronedepth.samples import sample_photos

__test__ = False  # not a test module

CHROMIUM = Path(os.environ.get("DRONEDEPTH_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
"""Screenshots land here (gitignored)."""
BROWSER_TIMEOUT_MS = 90_000
"""Generous: two CPU cores are shared with other test runs, and Chromium encodes VP8 in software."""


def chromium_args(video: Path) -> list[str]:
    """The flags of docs/web.md's test set-up (see NOTES: "WebRTC with aiortc")."""
    return [
        "--headless=new",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video.resolve()}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        # Host candidates as IP addresses (not mDNS names), which aiortc can use.
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


def photo_paths() -> list[Path]:
    return sample_photos()


def write_y4m(
    path: Path, photos: list[Path], *, width: int = 640, height: int = 480, frames: int = 200, fps: int = 15
) -> Path:
    """A 4:2:0 Y4M video of ``frames`` frames: a slow pan and zoom across each photo in turn."""
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even sizes, got {width}x{height}")
    images = []
    for photo in photos:
        bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if bgr is None:
            pytest.skip(f"cannot read {photo}")
        scale = 1.6 * width / bgr.shape[1]
        images.append(cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    per_photo = max(1, frames // len(images))
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for index in range(frames):
            image = images[(index // per_photo) % len(images)]
            t = (index % per_photo) / per_photo
            # A 4:3 window shrinking from 95 % to 75 % of the image while it drifts right.
            ih, iw = image.shape[:2]
            crop_w = min(iw, ih * width / height) * (0.95 - 0.2 * t)
            crop_h = crop_w * height / width
            x0 = (iw - crop_w) * (0.2 + 0.6 * t)
            y0 = (ih - crop_h) * 0.5
            matrix = np.array([[width / crop_w, 0, -x0 * width / crop_w], [0, height / crop_h, -y0 * height / crop_h]])
            frame = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR)
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@contextlib.asynccontextmanager
async def web_gateway(
    client: DepthClient | None = None, *, sink: Any = None, **overrides: Any
) -> AsyncIterator[tuple[Gateway, PreviewHub]]:
    """A started gateway on 127.0.0.1 (port 0), as every gateway serving the pages, and its PreviewHub."""
    async with running_gateway(client, sink=sink, **overrides) as gw:
        assert gw.preview_hub is not None
        yield gw, gw.preview_hub


@contextlib.asynccontextmanager
async def chromium(video: Path) -> AsyncIterator[Any]:
    """A headless Debian Chromium (Playwright's async API) whose camera plays ``video``."""
    if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}")
    async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(video), timeout=BROWSER_TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def page_context(browser: Any) -> tuple[Any, list[str]]:
    """A 1280×860 browser context with the tests' timeout, and the list its uncaught page errors go to."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    page_errors: list[str] = []
    context.on("weberror", lambda error: page_errors.append(str(error.error)))
    return context, page_errors
