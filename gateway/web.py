"""The gateway's web pages: the operator dashboard and a browser that acts as a drone.

- ``GET /``: the **operator page**: every connected drone with its live depth
  preview, result rate, latency percentiles, dropped frames, pose status and
  nearest obstacle, polled every
  second from the two JSON/JPEG endpoints below.
- ``GET /drone``: a **browser as a drone**: the device camera streams to the
  gateway over WebRTC with the same protocol as ``dronedepth drone`` and the
  keypoints that come back are drawn over the video.
- ``GET /api/drones``: per-drone statistics (JSON), with each drone's ``scale``
  (:meth:`~dronedepth.gateway.scaling.SessionScale.snapshot`: the latest
  frame's scale, a metric model's latest scale check, the mode).
- ``GET /api/drones/{drone}/preview.jpg``: the drone's latest depth preview, encoded on this request
  (in a worker thread) when a newer depth came: nobody watching costs no previews.
- ``GET /assets/{name}``: the pages' CSS and JavaScript (no data, no auth).

Everything is served from ``gateway/static``; nothing comes from a CDN, so the
pages work offline. Authentication is the gateway's bearer token
(:mod:`dronedepth.gateway.auth`): the API wants ``Authorization: Bearer
<token>``; a browser cannot send a header when it loads a page, so the pages
take ``?token=`` (checked here, then kept in the page's memory and sent as a
header) and without one they show a form asking for it.

The previews, result rates and latency percentiles come from the gateway's
:class:`~dronedepth.gateway.outputs.previews.PreviewHub` (``gateway.preview_hub``),
one of its result sinks. :func:`add_web_routes` mounts the routes;
:func:`dronedepth.gateway.app.create_app` does it for every gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from dronedepth.gateway.app_keys import ACCESS_TOKEN, GATEWAY
from dronedepth.gateway.auth import CHALLENGE, presented_token, token_matches
from dronedepth.gateway.refusals import refuse
from dronedepth.gateway.responses import json_error
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE, INVALID_DRONE_ID, UNAUTHORIZED

if TYPE_CHECKING:
    from dronedepth.gateway.obstacles import ObstacleProfile

__all__ = ["STATIC_DIR", "add_web_routes"]


STATIC_DIR: Final = Path(__file__).with_name("static")
OBSTACLE_STALE_S: Final = 0.5
"""An obstacle profile whose frame is older than this is shown stale: the drone's default
``--obstacle-max-age``, past which it stops forwarding the profile to the autopilot."""
_POSE_MATCHED: Final = frozenset({"exact", "interpolated", "extrapolated"})
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


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(payload, separators=(",", ":"), allow_nan=False),
        status=status,
        content_type="application/json",
        headers={**_API_HEADERS, **(headers or {})},
    )


class _WebRoutes:
    """The handlers, with the assets and page templates read once; the gateway comes from ``request.app``."""

    def __init__(self) -> None:
        self.assets = _load_assets(STATIC_DIR)
        self.templates = {
            name: (STATIC_DIR / f"{name}.html").read_text(encoding="utf-8") for name in ("operator", "drone", "login")
        }

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
        presented = presented_token(request, allow_query=True)
        if token_matches(presented, request.app[ACCESS_TOKEN]):
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
        if token_matches(presented_token(request, allow_query=False), request.app[ACCESS_TOKEN]):
            return None
        return refuse(
            request, "api", 401, UNAUTHORIZED, "missing or wrong token: send 'Authorization: Bearer <token>'", CHALLENGE
        )

    async def drones(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        gateway = request.app[GATEWAY]
        hub = gateway.preview_hub
        if hub is not None:
            hub.retain(gateway.sessions.keys())
        now_mono, now_wall = time.monotonic(), time.time()
        drones: dict[str, Any] = {}
        for drone_id, session in sorted(gateway.sessions.items()):
            connected_s = now_mono - session.created_at
            snapshot = session.snapshot()
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
                "pose": _pose_status(snapshot["pose"]),
                "scale": snapshot["scale"],
                "advised_fps": snapshot["advised_fps"],
                "nearest_obstacle": _nearest_obstacle(session.last_obstacles, now_wall),
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
                "map": gateway.world_map is not None,
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
            return json_error(400, INVALID_DRONE_ID, f"a drone id is {DRONE_ID_RULE}")
        hub = request.app[GATEWAY].preview_hub
        if hub is None:
            return json_error(404, "previews_off", "this gateway keeps no depth previews (it has no PreviewHub)")
        # Encoding (a few ms) runs off the event loop, in the loop's default executor as the map's routes do.
        found = await asyncio.get_running_loop().run_in_executor(None, hub.preview, drone_id)
        if found is None:
            return json_error(404, "no_preview", f"no preview of drone {drone_id!r} yet")
        jpeg, seq = found
        etag = f'"{drone_id}-{seq}"'
        headers = {**_API_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


def _pose_status(pose: dict[str, Any]) -> dict[str, Any]:
    """The session's pose state for the operator: ``none`` (no pose received), ``matched`` (the latest frame got
    one: ``match`` says how), ``lost`` (poses came, but none matched the latest frame)."""
    if not pose["received"]:
        status = "none"
    elif pose["match"] in _POSE_MATCHED:
        status = "matched"
    else:
        status = "none" if pose["match"] == "none" else "lost"  # "none": no frame processed yet
    return {
        "status": status,
        "match": pose["match"],
        "frame_id": pose["frame_id"],
        "received": pose["received"],
        "frames_with_pose": pose["frames_with_pose"],
    }


def _nearest_obstacle(last: tuple[ObstacleProfile, float] | None, now_wall: float) -> dict[str, Any] | None:
    """The nearest obstacle of the latest profile (None before any): ``range_m`` (None: none within range),
    ``bearing_deg`` (body FRD: 0 ahead, positive to the right), ``age_s`` since its frame's capture, ``stale``."""
    if last is None:
        return None
    profile, captured = last
    nearest = profile.nearest()
    age_s = max(0.0, now_wall - captured)
    return {
        "range_m": None if nearest is None else round(nearest[0], 2),
        "bearing_deg": None if nearest is None else round(nearest[1], 1),
        "max_range_m": profile.max_range_m,
        "gravity_aligned": profile.gravity_aligned,
        "age_s": round(age_s, 2),
        "stale": age_s > OBSTACLE_STALE_S,
    }


def add_web_routes(app: web.Application) -> None:
    """Mount the web pages, their assets and the JSON API on ``app`` (before it starts).

    ``app`` holds the gateway under :data:`~dronedepth.gateway.app_keys.GATEWAY` and its token
    under :data:`~dronedepth.gateway.app_keys.ACCESS_TOKEN`. The gateway's ``preview_hub`` is
    looked up per request; without one the pages still work but show no previews and no rate or
    latency percentiles.
    """
    routes = _WebRoutes()
    app.router.add_get("/", routes.operator)
    app.router.add_get("/drone", routes.drone)
    app.router.add_get("/assets/{name}", routes.asset)
    app.router.add_get("/api/drones", routes.drones)
    app.router.add_get("/api/drones/{drone}/preview.jpg", routes.preview)
