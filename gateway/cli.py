"""``dronedepth gateway``: receive drone video over WebRTC, get depth from Triton, send back 3D keypoints.

Only the standard library is imported at module level so ``dronedepth gateway
--help`` stays fast; aiortc, tritonclient and Open3D load when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from dronedepth.axes import AXES
from dronedepth.contract import GATEWAY_PORT, MODEL_NAME
from dronedepth.gateway.config import SCALE_MODES, TRITON_SHM_MODES
from dronedepth.gateway.launch import build, quiet_media_logs, serve
from dronedepth.shutdown import exit_status, run_until_signalled

if TYPE_CHECKING:
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.inference import DepthClient

__all__ = ["add_arguments", "run"]

log = logging.getLogger("dronedepth.gateway")

_KEYPOINT_METHODS = ("orb", "sift", "fast", "gftt", "grid")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _byte_size(text: str) -> int:
    """``512M``, ``2G``, ``1048576``: bytes (binary multiples)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.rstrip("KMGTkmgt"), text[len(text.rstrip("KMGTkmgt")) :].upper()
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"must be a size such as 512M or 2G, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {text}")
    return value


def _in_flight(text: str) -> int | str | None:
    if text in ("auto", "drones"):
        return None if text == "drones" else text
    return _positive_int(text)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "The token drones must present (Authorization: Bearer TOKEN) comes from --token-file or the "
        "DRONEDEPTH_TOKEN environment variable. SIGTERM or Ctrl-C closes every drone session, flushes the "
        "recordings and exits 143 (SIGTERM) or 130 (SIGINT)."
    )
    source = parser.add_argument_group("depth server").add_mutually_exclusive_group(required=True)
    source.add_argument("--triton-url", metavar="HOST:PORT", help="Triton's gRPC endpoint, e.g. localhost:8001")
    source.add_argument(
        "--onnx-model", metavar="FILE", type=Path, help="run an exported model.onnx in-process instead (no Triton)"
    )
    model = parser.add_argument_group("depth server options")
    model.add_argument("--model", default=MODEL_NAME, help="model name on Triton (default: %(default)s)")
    model.add_argument(
        "--inference-timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds before a depth request counts as failed (default: %(default)s)",
    )
    model.add_argument(
        "--max-in-flight",
        type=_in_flight,
        default="auto",
        metavar="N|auto|drones",
        help="depth requests in flight across all drones: auto (default) = what the model runs at once "
        "(CPU instances, or GPU instances x max batch), so frames wait in the drones' newest-frame slots "
        "rather than inside Triton; drones = one per drone; or a number",
    )
    model.add_argument(
        "--triton-shm",
        choices=TRITON_SHM_MODES,
        default="auto",
        help="pass frames and depth to Triton through system shared memory (/dev/shm) instead of gRPC messages: "
        "auto (default) = when --triton-url is a loopback address, on = always (a Triton sharing this host's "
        "/dev/shm, e.g. a sidecar), off = never; a refused registration falls back to gRPC",
    )

    net = parser.add_argument_group("signalling and security")
    net.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    net.add_argument(
        "--port", type=_port, default=GATEWAY_PORT, help="HTTP(S) port; 0 picks a free one (default: %(default)s)"
    )
    net.add_argument(
        "--token-file",
        metavar="FILE",
        help="file whose first line is the operator token (pages, API, /stream); without "
        "--drone-tokens-file also the fleet token every drone presents",
    )
    net.add_argument(
        "--drone-tokens-file",
        metavar="FILE",
        help="per-drone credentials, lines 'DRONE_ID SHA256HEX' (hash of the drone's token): each drone "
        "can open only its own session; see docs/security.md",
    )
    net.add_argument(
        "--pending-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="close an answered offer whose ICE/DTLS has not completed after S seconds (default: %(default)s)",
    )
    net.add_argument(
        "--max-pending-offers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="answered offers still connecting, all drones together (default: %(default)s; 2 per address)",
    )
    net.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds a client may take to send a request's headers (or the /offer body), or stay idle "
        "between requests (default: %(default)s)",
    )
    net.add_argument(
        "--insecure-no-auth", action="store_true", help="accept drones without a token (only on a trusted network)"
    )
    net.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS with this PEM certificate (chain); needs --tls-key. Browsers open the camera on "
        "/drone only over HTTPS (or on localhost)",
    )
    net.add_argument("--tls-key", type=Path, metavar="FILE", help="the unencrypted PEM private key of --tls-cert")
    net.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server (stun:HOST:PORT, turn:HOST:PORT[?transport=tcp], turns:HOST:PORT); repeatable; "
        "none by default",
    )
    net.add_argument("--ice-username", metavar="NAME", help="TURN username (with --ice-credential-file)")
    net.add_argument(
        "--ice-credential-file",
        metavar="FILE",
        help="file whose first line is the TURN password (or set DRONEDEPTH_ICE_CREDENTIAL); kept off the command line",
    )
    net.add_argument(
        "--ice-relay-only",
        action="store_true",
        help="media only through the TURN server (relay candidates; iceTransportPolicy relay)",
    )
    net.add_argument(
        "--rtc-ports",
        metavar="LO-HI",
        help="UDP ports for WebRTC media (or DRONEDEPTH_RTC_PORTS): each connected drone takes one port, so the "
        "range bounds the drones served at once; publish exactly these ports from a container (default: "
        "random ephemeral ports)",
    )
    net.add_argument(
        "--public-ip",
        metavar="ADDR",
        help="address drones reach the media ports at, advertised as the only host candidate (or "
        "DRONEDEPTH_PUBLIC_IP): the Docker host's address behind published ports (default: every interface's)",
    )

    proc = parser.add_argument_group("processing")
    proc.add_argument("--keypoints", choices=_KEYPOINT_METHODS, default="orb", help="detector (default: %(default)s)")
    proc.add_argument(
        "--max-keypoints", type=_positive_int, default=200, metavar="N", help="per frame (default: %(default)s)"
    )
    proc.add_argument(
        "--keypoint-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="detect keypoints on the image shrunk by F (0.1-1; 0.5: ORB about 4x cheaper), lifted at full "
        "resolution (default: %(default)s)",
    )
    proc.add_argument(
        "--axes",
        choices=AXES,
        default="optical",
        help="frame of the returned points: optical (x right, y down, z forward), opengl (y up, z back), "
        "seed (y up, z forward, left-handed) (default: %(default)s)",
    )
    proc.add_argument(
        "--output-frame",
        choices=("camera", "world"),
        default="camera",
        help="frame of the returned points: camera (as --axes says) or world (the drone's map/odom, ENU, for "
        "frames that have a pose; --axes must stay optical) (default: %(default)s)",
    )
    proc.add_argument(
        "--pose-max-gap",
        type=float,
        default=0.1,
        metavar="S",
        help="seconds a frame may lie from the drone's poses and still get one (default: %(default)s)",
    )
    proc.add_argument(
        "--scale",
        choices=SCALE_MODES,
        default="auto",
        help="metric scale: auto (metric models keep theirs, relative ones get it from the drone's height above "
        "ground + attitude or its anchors), model (every model keeps its own), off (no estimation) "
        "(default: %(default)s)",
    )
    proc.add_argument(
        "--scale-correct",
        action="store_true",
        help="apply the scale recovered from anchors to metric models too (--scale auto; docs/scale.md)",
    )
    proc.add_argument("--max-range", type=_positive_float, metavar="M", help="ignore depth beyond this (metres)")
    proc.add_argument("--voxel-size", type=_positive_float, metavar="M", help="voxel-downsample the clouds of --record")
    proc.add_argument("--remove-outliers", action="store_true", help="remove outliers from the clouds of --record")

    rec = parser.add_argument_group(
        "outputs", "Every gateway also serves GET /stream/<drone> and the web pages (/, /drone, /api/drones)."
    )
    rec.add_argument(
        "--record", type=Path, metavar="DIR", help="record each drone's keypoints (JSONL) and point clouds (PLY) in DIR"
    )
    rec.add_argument(
        "--record-every",
        type=_positive_int,
        default=10,
        metavar="N",
        help="with --record: a point cloud every N results (default: %(default)s)",
    )
    rec.add_argument(
        "--record-bag",
        type=Path,
        metavar="DIR",
        help="record each drone session as a rosbag2 (MCAP) in DIR: camera_info, image, depth, points, keypoints",
    )
    rec.add_argument(
        "--record-max-bytes",
        type=_byte_size,
        metavar="SIZE",
        help="stop recording a drone session after SIZE (e.g. 2G) in --record or --record-bag (default: no limit)",
    )
    rec.add_argument(
        "--record-min-free",
        type=_byte_size,
        default=512 * 1024 * 1024,
        metavar="SIZE",
        help="stop recording (once, with an error and a metric) below SIZE free on the disk (default: 512M)",
    )
    rec.add_argument(
        "--foxglove",
        type=_port,
        nargs="?",
        const=8765,
        metavar="PORT",
        help="serve the same ROS 2 topics live to Foxglove over WebSocket on PORT (default 8765 when the flag "
        "is given without one)",
    )
    rec.add_argument(
        "--foxglove-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address of the Foxglove server; it has NO authentication (default: %(default)s)",
    )

    world = parser.add_argument_group(
        "world map", "Fuse the drones' metric depth and poses into one map per world frame (docs/outputs.md)."
    )
    world.add_argument("--map", action="store_true", help="fuse a world map; serve it on /map.ply and the / page")
    world.add_argument(
        "--map-voxel", type=_positive_float, default=0.1, metavar="M", help="voxel size (default: %(default)s m)"
    )
    world.add_argument(
        "--map-range", type=_positive_float, default=20.0, metavar="M", help="depth fused (default: %(default)s m)"
    )
    world.add_argument(
        "--map-drones",
        default="all",
        metavar="IDS",
        help="comma-separated drones whose frames are fused and who get map data, or 'all' (default); only "
        "drones whose poses share one world frame may share a map",
    )
    world.add_argument(
        "--map-blocks",
        type=_positive_int,
        default=20_000,
        metavar="N",
        help="voxel blocks held (8x8x8 voxels, 4 KiB each); the farthest from every drone go first "
        "(default: %(default)s = 80 MiB)",
    )
    world.add_argument(
        "--map-local-box",
        type=_positive_float,
        metavar="M",
        help="half-width of the local_map box sent to each drone at 2 Hz (default: 10 m, at most 100 voxels)",
    )
    world.add_argument(
        "--map-pose-gate",
        choices=("on", "off"),
        default="on",
        help="reject frames whose pose disagrees with the map (default: %(default)s; blind to x, y, yaw errors "
        "over flat ground and to errors under about 3 voxels + 5 %% of the depth; see docs/outputs.md)",
    )

    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-drones", type=_positive_int, default=8, metavar="N", help="default: %(default)s")
    lim.add_argument(
        "--max-frame-pixels",
        type=_positive_int,
        default=1920 * 1080,
        metavar="N",
        help="larger frames are dropped (default: %(default)s = 1920x1080)",
    )
    lim.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=15.0,
        metavar="S",
        help="close a session after this long without video (default: %(default)s)",
    )
    lim.add_argument(
        "--no-frame-rate-advice",
        dest="frame_rate_advice",
        action="store_false",
        help="do not ask drones to send fewer frames when the gateway cannot process them all (by default each "
        "drone gets 'frame_rate' messages: about 1.25x the rate its frames are processed, never below the "
        "drones' fair share; docs/protocol.md)",
    )
    lim.add_argument(
        "--latency-budget",
        type=_positive_float,
        metavar="MS",
        help="keep frames' mean time in the gateway (decoded -> result ready) under MS: past it, the frame-rate "
        "advice asks drones for fewer frames until the gateway runs below saturation (fewer, fresher results); "
        "set it above a frame's latency on an idle gateway with your model (default: none, throughput first)",
    )
    lim.add_argument("--workers", type=_positive_int, metavar="N", help="processing threads (default: one per core)")
    lim.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="gateway processes behind the one port: a front process places each drone on the least-loaded of N "
        "workers (each with --workers threads); 1 (default) = one process, no front (docs/deployment.md)",
    )


def run(args: argparse.Namespace) -> int:
    if args.processes > 1:
        from dronedepth.gateway.cluster import run_front

        return run_front(args)
    quiet_media_logs(args)
    config, client = build(args)
    return run_until_signalled(lambda: _serve_until_signalled(config, client))


def _serve_until_signalled(config: GatewayConfig, client: DepthClient) -> int:
    signum = asyncio.run(serve(config, client))
    return 0 if signum is None else exit_status(signum)
