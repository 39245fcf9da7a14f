"""The world map over HTTP (operator token): ``GET /map.ply`` and the operator page's ``GET /api/map.png``.

- ``GET /map.ply?frame=map|odom&kind=cloud|mesh``: a binary PLY snapshot of
  the map of that world frame (ENU metres): its occupied voxels as a point
  cloud (default) or the fused surface as a triangle mesh;
- ``GET /api/map.png?frame=map|odom``: the top-down occupancy image (row 0
  north, brightness the highest occupied height); the ENU position of its
  first pixel and the cell size come in ``X-Map-*`` headers.

Both answer 404 (``map_off`` or ``map_empty``) when the gateway has no map
or nothing has been fused into that frame yet. The PLY is built in the
gateway's executor: it reads the map under its lock, so the fusion thread
skips the frames that arrive meanwhile (counted ``behind``), never the
drones' keypoints.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from dronedepth.gateway.app_keys import ACCESS_TOKEN, GATEWAY
from dronedepth.gateway.auth import CHALLENGE, presented_token, token_matches
from dronedepth.gateway.refusals import refuse
from dronedepth.gateway.responses import json_error
from dronedepth.protocol import INVALID_MESSAGE, UNAUTHORIZED, WORLD_FRAMES

if TYPE_CHECKING:
    from dronedepth.gateway.mapping import MapKind, MapService

__all__ = ["MAP_EMPTY", "MAP_OFF", "MAP_TOO_LARGE", "add_map_routes"]

MAP_OFF = "map_off"
MAP_EMPTY = "map_empty"
MAP_TOO_LARGE = "map_too_large"
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _refused(request: web.Request) -> web.Response | None:
    if token_matches(presented_token(request, allow_query=False), request.app[ACCESS_TOKEN]):
        return None
    return refuse(
        request, "map", 401, UNAUTHORIZED, "missing or wrong token: send 'Authorization: Bearer <token>'", CHALLENGE
    )


def _map_and_frame(request: web.Request) -> tuple[MapService, str] | web.Response:
    """The gateway's world map and the requested world frame, or the refusal: token, frame, then no map."""
    refused = _refused(request)
    if refused is not None:
        return refused
    frame = request.query.get("frame", "map")
    if frame not in WORLD_FRAMES:
        return json_error(400, INVALID_MESSAGE, f"frame must be one of {', '.join(WORLD_FRAMES)}, got {frame!r}")
    world_map = request.app[GATEWAY].world_map
    if world_map is None:
        return json_error(404, MAP_OFF, "this gateway fuses no world map (start it with --map)")
    return world_map, frame


async def map_ply(request: web.Request) -> web.StreamResponse:
    found_map = _map_and_frame(request)
    if isinstance(found_map, web.Response):
        return found_map
    world_map, frame = found_map
    # Imported here: a gateway without --map never loads Open3D for its routes.
    from dronedepth.gateway.mapping import MAP_KINDS

    kind = request.query.get("kind", "cloud")
    if kind not in MAP_KINDS:
        return json_error(400, INVALID_MESSAGE, f"kind must be one of {', '.join(MAP_KINDS)}, got {kind!r}")
    map_kind: MapKind = "mesh" if kind == "mesh" else "cloud"
    try:
        body = await asyncio.get_running_loop().run_in_executor(None, world_map.ply_bytes, frame, map_kind)
    except ValueError as exc:  # a mesh over the cap
        return json_error(413, MAP_TOO_LARGE, f"{exc}; fetch kind=cloud instead")
    if body is None:
        return json_error(404, MAP_EMPTY, f"nothing has been fused into the {frame!r} map yet")
    headers = {**_HEADERS, "Content-Disposition": f'attachment; filename="map_{frame}_{kind}.ply"'}
    return web.Response(body=body, content_type="application/octet-stream", headers=headers)


async def map_png(request: web.Request) -> web.StreamResponse:
    found_map = _map_and_frame(request)
    if isinstance(found_map, web.Response):
        return found_map
    world_map, frame = found_map
    found = await asyncio.get_running_loop().run_in_executor(None, world_map.occupancy_png, frame)
    if found is None:
        return json_error(404, MAP_EMPTY, f"nothing has been fused into the {frame!r} map yet")
    png, west, north, cell = found
    headers = {
        **_HEADERS,
        "X-Map-Frame": frame,
        "X-Map-West-M": f"{west:.3f}",
        "X-Map-North-M": f"{north:.3f}",
        "X-Map-Cell-M": f"{cell:g}",
    }
    return web.Response(body=png, content_type="image/png", headers=headers)


def add_map_routes(app: web.Application) -> None:
    """Mount ``/map.ply`` and ``/api/map.png``; the gateway's ``world_map`` is looked up per request."""
    app.router.add_get("/map.ply", map_ply)
    app.router.add_get("/api/map.png", map_png)
