"""``dronedepth map export``: download a snapshot of a gateway's world map as a PLY file.

The client side is light (aiohttp only): the gateway builds the PLY (``GET
/map.ply``, operator token) and this writes it atomically to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.protocol import WORLD_FRAMES

__all__ = ["add_arguments", "export_map", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="map_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write the gateway's world map to a PLY file (cloud or mesh)")
    export.add_argument("--gateway", required=True, metavar="URL", help="the gateway, e.g. http://127.0.0.1:8080")
    export.add_argument("--token-file", type=Path, metavar="FILE", help="the operator token (else $DRONEDEPTH_TOKEN)")
    export.add_argument("--out", type=Path, required=True, metavar="FILE.ply", help="where to write the PLY")
    export.add_argument(
        "--kind",
        choices=("cloud", "mesh"),
        default="cloud",
        help="occupied voxels as points, or the fused surface as triangles (default: %(default)s)",
    )
    export.add_argument("--frame", choices=WORLD_FRAMES, default="map", help="world frame (default: %(default)s)")
    export.add_argument("--timeout", type=float, default=60.0, metavar="S", help="default: %(default)s")


async def export_map(gateway: str, token: str | None, out: Path, *, kind: str, frame: str, timeout: float) -> int:
    """Fetch ``GET /map.ply`` and write it to ``out`` (atomically); returns the bytes written."""
    import aiohttp

    url = gateway.rstrip("/") + "/map.ply"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, params={"kind": kind, "frame": frame}, headers=headers) as response,
        ):
            body = await response.read()
            if response.status != 200:
                raise DroneDepthError(f"{url} answered {response.status}: {body.decode('utf-8', 'replace')[:300]}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DroneDepthError(f"cannot fetch {url}: {exc!r}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return len(body)


def run(args: argparse.Namespace) -> int:
    from dronedepth.gateway.config import read_token

    token = read_token(args.token_file)
    if not args.gateway.startswith(("http://", "https://")):
        raise ConfigError(f"--gateway must be an http:// or https:// URL, got {args.gateway!r}")
    size = asyncio.run(
        export_map(args.gateway, token, args.out, kind=args.kind, frame=args.frame, timeout=args.timeout)
    )
    print(f"wrote {args.out} ({size} bytes, {args.kind} of the {args.frame!r} map, ENU metres)")
    return 0
