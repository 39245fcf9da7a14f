"""The gateway's web pages: the operator dashboard and a browser that acts as a drone.

- ``GET /``: the **operator page**: every connected drone with its live depth
  preview, result rate, latency percentiles and dropped frames, polled every
  second from the two JSON/JPEG endpoints below.
- ``GET /drone``: a **browser as a drone**: the device camera streams to the
  gateway over WebRTC with the same protocol as ``dronedepth drone`` and the
  keypoints that come back are drawn over the video.
- ``GET /api/drones``: per-drone statistics (JSON).
- ``GET /api/drones/{drone}/preview.jpg``: the drone's latest depth preview.
- ``GET /assets/{name}``: the pages' CSS and JavaScript (no data, no auth).

Everything is served from ``gateway/static``; nothing comes from a CDN, so the
pages work offline. Authentication is the gateway's bearer token: the API wants
``Authorization: Bearer <token>``; a browser cannot send a header when it loads
a page, so the pages take ``?token=`` (checked here, then kept in the page's
memory and sent as a header) and without one they show a form asking for it.

:class:`PreviewHub` is the :class:`~gateway.sinks.ResultSink` behind the
previews and the rate and latency figures: the session's worker thread hands it
every processed frame; it keeps a short history of result times and latencies
per drone and, at most ``max_fps`` times a second per drone, colourises the
depth (downscaled to at most ``max_width`` pixels wide) and encodes a JPEG, in
that worker thread, never in the event loop.

:func:`add_web_routes` mounts the routes; :func:`gateway.signaling.create_app`
does it for every gateway, whose ``preview_hub`` is among its sinks.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cv2
import numpy as np
from aiohttp import web
from dronedepth.gateway.outputs.render import colorize_depth
from dronedepth.gateway.outputs.sinks import FrameRecord
from numpy.typing import NDArray

from dronedepth.contract import DepthKind
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE, INVALID_DRONE_ID, UNAUTHORIZED

if TYPE_CHECKING:
    from dronedepth.gateway.server import Gateway

__all__ = [
    "DEFAULT_PREVIEW_FPS",
    "DEFAULT_PREVIEW_WIDTH",
    "PreviewHub",
    "add_web_routes",
    "encode_preview",
    "find_preview_hub",
]

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).with_name("static")
DEFAULT_PREVIEW_WIDTH: Final = 320
DEFAULT_PREVIEW_FPS: Final = 3.0
RATE_WINDOW_S: Final = 5.0
"""The result rate is the number of results in this many seconds, divided by it."""
LATENCY_WINDOW_S: Final = 10.0
"""Latency percentiles are over the results of this many seconds."""
_HISTORY: Final = 2048
"""At most this many results are remembered per drone (enough for 200 fps over the windows)."""

_MOUNTED: Final = web.AppKey("dronedepth_web_mounted", bool)
ICON_SVG: Final = """\
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32" role="img" aria-label="dronedepth">
  <defs>
    <linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
      <stop offset="0" stop-color="#e4460a"/>
      <stop offset="0.5" stop-color="#fbb938"/>
      <stop offset="1" stop-color="#4686fb"/>
    </linearGradient>
  </defs>
  <rect x="1" y="1" width="30" height="30" rx="8" fill="#121821" stroke="#263242"/>
  <path d="M7 23 L16 8 L25 23 Z" fill="none" stroke="url(#g)" stroke-width="2.4" stroke-linejoin="round"/>
  <circle cx="16" cy="8" r="2.2" fill="#fbb938"/>
  <circle cx="7" cy="23" r="2.2" fill="#e4460a"/>
  <circle cx="25" cy="23" r="2.2" fill="#4686fb"/>
  <circle cx="16" cy="18" r="1.6" fill="#e6edf3"/>
</svg>
"""
"""The pages' icon, served as ``/assets/icon.svg`` (kept here: package data is html, js and css only)."""
_ASSET_TYPES: Final = {".css": "text/css", ".js": "text/javascript"}
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
}
_API_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# ---------------------------------------------------------------------- previews and statistics


def encode_preview(
    depth: NDArray[np.float32], depth_kind: DepthKind, *, max_width: int = DEFAULT_PREVIEW_WIDTH, quality: int = 80
) -> tuple[bytes, int, int]:
    """Depth → colourised JPEG at most ``max_width`` wide: ``(jpeg bytes, width, height)``.

    The depth is downscaled *before* it is colourised (area averaging), which
    makes a preview of a 1080p frame cost about as much as one of a 320 px frame.
    """
    height, width = depth.shape[:2]
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        depth = cv2.resize(depth.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    rgb = colorize_depth(depth, depth_kind)
    ok, buffer = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV cannot fail on a uint8 BGR image
        raise RuntimeError("JPEG encoding of the depth preview failed")
    return buffer.tobytes(), rgb.shape[1], rgb.shape[0]


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of a non-empty list."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class _DroneView:
    """What the hub knows of one drone. Guarded by the hub's lock."""

    first_at: float
    results: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    """``(monotonic arrival, gateway total ms)`` of recent results."""
    depth_kind: str | None = None
    frame_size: tuple[int, int] | None = None
    keypoints: int = 0
    total_results: int = 0
    encode_due: float = -math.inf
    """Monotonic time from which the next preview may be encoded."""
    jpeg: bytes | None = None
    jpeg_size: tuple[int, int] = (0, 0)
    jpeg_at: float = 0.0
    seq: int = 0


class PreviewHub:
    """Latest depth preview and recent result statistics per drone; a :class:`~gateway.sinks.ResultSink`.

    ``write`` runs in the session's worker thread and encodes a preview at most
    ``max_fps`` times a second per drone; the routes read the hub from the
    event loop. All state is behind one lock held only for bookkeeping, never
    while encoding.
    """

    def __init__(
        self,
        *,
        max_width: int = DEFAULT_PREVIEW_WIDTH,
        max_fps: float = DEFAULT_PREVIEW_FPS,
        quality: int = 80,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_width < 16:
            raise ValueError(f"max_width must be at least 16 pixels, got {max_width}")
        if not max_fps > 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {quality}")
        self.max_width = max_width
        self.max_fps = max_fps
        self.quality = quality
        self._clock = clock
        self._lock = threading.Lock()
        self._views: dict[str, _DroneView] = {}
        self._closed = False
        self.previews_encoded = 0

    def __repr__(self) -> str:
        return f"PreviewHub(max_width={self.max_width}, max_fps={self.max_fps})"

    # ------------------------------------------------------------------ ResultSink (worker threads)

    def write(self, record: FrameRecord) -> None:
        message = record.message
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            view = self._views.get(record.drone_id)
            if view is None:
                view = self._views[record.drone_id] = _DroneView(first_at=now)
            view.results.append((now, float(message.timing.get("total", math.nan))))
            view.depth_kind = message.depth_kind
            view.frame_size = (message.width, message.height)
            view.keypoints = len(message.points)
            view.total_results += 1
            due = now >= view.encode_due
            if due:  # reserve this slot so a concurrent write of the same drone does not encode too
                view.encode_due = now + 1.0 / self.max_fps
        if not due:
            return
        jpeg, width, height = encode_preview(
            record.result.depth, message.depth_kind, max_width=self.max_width, quality=self.quality
        )
        with self._lock:
            if self._views.get(record.drone_id) is view:  # not closed meanwhile
                view.jpeg, view.jpeg_size, view.jpeg_at = jpeg, (width, height), now
                view.seq += 1
                self.previews_encoded += 1

    def close_drone(self, drone_id: str) -> None:
        """The drone left: forget it (a drone that comes back starts afresh)."""
        with self._lock:
            self._views.pop(drone_id, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._views.clear()

    def retain(self, drone_ids: Collection[str]) -> None:
        """Forget every drone not in ``drone_ids`` (the live sessions).

        A frame still in a worker thread when its session closes can reach
        :meth:`write` after :meth:`close_drone`; this drops what it left behind.
        """
        with self._lock:
            for drone_id in [d for d in self._views if d not in drone_ids]:
                del self._views[drone_id]

    # ------------------------------------------------------------------ readers (any thread)

    def preview(self, drone_id: str) -> tuple[bytes, int] | None:
        """The latest preview JPEG of ``drone_id`` and its sequence number, or None."""
        with self._lock:
            view = self._views.get(drone_id)
            if view is None or view.jpeg is None:
                return None
            return view.jpeg, view.seq

    def stats(self, drone_id: str) -> dict[str, Any] | None:
        """Result rate, latency percentiles and the latest result's shape for ``drone_id``, or None."""
        now = self._clock()
        with self._lock:
            view = self._views.get(drone_id)
            if view is None:
                return None
            results = list(view.results)
            out: dict[str, Any] = {
                "depth_kind": view.depth_kind,
                "frame": None
                if view.frame_size is None
                else {"width": view.frame_size[0], "height": view.frame_size[1]},
                "keypoints": view.keypoints,
                "results": view.total_results,
                "preview": None
                if view.jpeg is None
                else {
                    "seq": view.seq,
                    "width": view.jpeg_size[0],
                    "height": view.jpeg_size[1],
                    "age_s": round(now - view.jpeg_at, 2),
                },
            }
            first_at = view.first_at
        recent = [t for t, _ in results if t > now - RATE_WINDOW_S]
        span = min(RATE_WINDOW_S, max(now - first_at, 1.0))
        out["result_rate"] = round(len(recent) / span, 2)
        latencies = [ms for t, ms in results if t > now - LATENCY_WINDOW_S and math.isfinite(ms)]
        out["latency_ms"] = {
            "p50": round(_percentile(latencies, 50), 1) if latencies else None,
            "p95": round(_percentile(latencies, 95), 1) if latencies else None,
            "last": round(results[-1][1], 1) if results and math.isfinite(results[-1][1]) else None,
            "samples": len(latencies),
        }
        return out


def find_preview_hub(sink: object) -> PreviewHub | None:
    """The :class:`PreviewHub` that is ``sink`` or one of its ``sinks`` (a SinkSet), else None."""
    if isinstance(sink, PreviewHub):
        return sink
    for inner in getattr(sink, "sinks", ()) or ():
        if isinstance(inner, PreviewHub):
            return inner
    return None


# ---------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> _Asset:
    return _Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')


def _load_assets(directory: Path) -> dict[str, _Asset]:
    assets = {"icon.svg": _asset(ICON_SVG.encode("utf-8"), "image/svg+xml")}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in _ASSET_TYPES:
            assets[path.name] = _asset(path.read_bytes(), _ASSET_TYPES[path.suffix])
    return assets


def _presented_token(request: web.Request, *, query: bool) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") if query else None


def _token_ok(presented: str | None, expected: str | None) -> bool:
    if expected is None:
        return True
    # compare_digest: the time taken must not reveal how much of the token matched.
    return presented is not None and hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(payload, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers={**_API_HEADERS, **(headers or {})},
    )


def _refuse(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The same JSON error body as the signalling endpoints' (``{"error", "message"}``)."""
    return _json({"error": code, "message": message}, status, headers)


class _WebRoutes:
    def __init__(self, gateway: Gateway, hub: PreviewHub | None) -> None:
        self.gateway = gateway
        self._hub = hub
        self.assets = _load_assets(STATIC_DIR)
        self.templates = {
            name: (STATIC_DIR / f"{name}.html").read_text(encoding="utf-8") for name in ("operator", "drone", "login")
        }

    @property
    def hub(self) -> PreviewHub | None:
        # Looked up per request: the gateway's hub may be replaced after the routes are mounted.
        return self._hub or getattr(self.gateway, "preview_hub", None)

    @property
    def token(self) -> str | None:
        return self.gateway.config.token

    # ------------------------------------------------------------------ pages

    def _html(self, text: str, status: int = 200, extra: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            text=text,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={**_PAGE_HEADERS, **(extra or {})},
        )

    def _page(self, request: web.Request, name: str, title: str) -> web.Response:
        extra = {"Permissions-Policy": "camera=(self), microphone=()"} if name == "drone" else None
        presented = _presented_token(request, query=True)
        if _token_ok(presented, self.token):
            return self._html(self.templates[name], extra=extra)
        wrong = presented is not None
        notice = (
            "That token was not accepted. Check it and try again."
            if wrong
            else "This gateway needs its access token (the one drones use)."
        )
        text = (
            self.templates["login"]
            .replace("{{title}}", html.escape(title))
            .replace("{{notice}}", html.escape(notice))
            .replace("{{notice_class}}", "notice error" if wrong else "notice")
        )
        return self._html(text, status=401 if wrong else 200, extra=extra)

    async def operator(self, request: web.Request) -> web.Response:
        return self._page(request, "operator", "Operator")

    async def drone(self, request: web.Request) -> web.Response:
        return self._page(request, "drone", "Browser drone")

    async def asset(self, request: web.Request) -> web.Response:
        asset = self.assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound(text="no such asset")
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)

    # ------------------------------------------------------------------ API

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if _token_ok(_presented_token(request, query=False), self.token):
            return None
        return _refuse(
            401,
            UNAUTHORIZED,
            "missing or wrong token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="dronedepth"'},
        )

    async def drones(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        gateway = self.gateway
        hub = self.hub
        if hub is not None:
            hub.retain(gateway.sessions.keys())
        now_mono, now_wall = time.monotonic(), time.time()
        drones: dict[str, Any] = {}
        for drone_id, session in sorted(gateway.sessions.items()):
            connected_s = now_mono - session.created_at
            camera = session.camera
            dropped = {reason: n for reason, n in sorted(session.dropped.items()) if n}
            entry: dict[str, Any] = {
                "state": session.pc.connectionState,
                "remote": session.remote,
                "connected_since": datetime.fromtimestamp(now_wall - connected_s, UTC).isoformat(timespec="seconds"),
                "connected_s": round(connected_s, 1),
                "camera": None
                if camera is None
                else {
                    "width": camera.width,
                    "height": camera.height,
                    "fx": round(camera.fx, 2),
                    "fy": round(camera.fy, 2),
                    "cx": round(camera.cx, 2),
                    "cy": round(camera.cy, 2),
                    "model": camera.model,
                },
                "frames": {
                    "received": session.frames_received,
                    "processed": session.frames_processed,
                    "dropped": sum(dropped.values()),
                },
                "dropped": dropped,
                "depth_kind": None,
                "frame": None,
                "keypoints": None,
                "result_rate": None,
                "latency_ms": {"p50": None, "p95": None, "last": None, "samples": 0},
                "preview": None,
            }
            stats = hub.stats(drone_id) if hub is not None else None
            if stats is not None:
                stats.pop("results", None)
                entry.update(stats)
            elif "total" in session.last_timing:
                entry["latency_ms"]["last"] = round(session.last_timing["total"], 1)
            drones[drone_id] = entry
        try:
            depth_kind: str | None = gateway.depth.depth_kind
        except Exception:  # a client that does not know yet
            depth_kind = None
        payload = {
            "gateway": {
                "depth_available": gateway.depth.available,
                "depth_kind": depth_kind,
                "sessions": len(gateway.sessions),
                "max_drones": gateway.config.max_drones,
                "uptime_s": round(gateway.metrics.uptime.value(), 1),
                "previews": hub is not None,
                "latency_basis": "gateway: frame received to keypoints sent (ms)",
            },
            "drones": drones,
        }
        return _json(payload)

    async def preview(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        drone_id = request.match_info["drone"]
        if not DRONE_ID_PATTERN.fullmatch(drone_id):
            return _refuse(400, INVALID_DRONE_ID, f"a drone id is {DRONE_ID_RULE}")
        hub = self.hub
        if hub is None:
            return _refuse(404, "previews_off", "this gateway keeps no depth previews (it has no PreviewHub)")
        found = hub.preview(drone_id)
        if found is None:
            return _refuse(404, "no_preview", f"no preview of drone {drone_id!r} yet")
        jpeg, seq = found
        etag = f'"{drone_id}-{seq}"'
        headers = {**_API_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


def add_web_routes(app: web.Application, gateway: Gateway, hub: PreviewHub | None = None) -> None:
    """Mount the web pages and their API on ``app`` (before it starts). Idempotent.

    :func:`gateway.signaling.create_app` calls it for every gateway. ``hub``
    defaults to ``gateway.preview_hub`` (looked up on every request); without
    one the pages still work but show no previews and no rate or latency
    percentiles.
    """
    if app.get(_MOUNTED):
        return
    app[_MOUNTED] = True
    routes = _WebRoutes(gateway, hub)
    app.router.add_get("/", routes.operator)
    app.router.add_get("/drone", routes.drone)
    app.router.add_get("/assets/{name}", routes.asset)
    app.router.add_get("/api/drones", routes.drones)
    app.router.add_get("/api/drones/{drone}/preview.jpg", routes.preview)
