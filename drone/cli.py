"""``dronedepth drone``: stream a camera, video, image folder or synthetic scene to a gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Final

from dronedepth.drone.client import DroneClient, DroneConfig, DroneSummary, check_pose_link
from dronedepth.drone.intrinsics import intrinsics_from_values, load_intrinsics
from dronedepth.drone.sources import FrameSource, open_source
from dronedepth.errors import ConfigError
from dronedepth.protocol import CameraMessage

__all__ = ["add_arguments", "run"]

log = logging.getLogger("dronedepth.drone")

TOKEN_ENV: Final = "DRONEDEPTH_TOKEN"
ICE_CREDENTIAL_ENV: Final = "DRONEDEPTH_ICE_CREDENTIAL"
DEFAULT_MAX_WIDTH: Final = 640
_STATUS_TTY_S: Final = 0.5
_STATUS_LOG_S: Final = 5.0

EXAMPLES: Final = f"""\
examples:
  # the built-in synthetic scene (it has its own intrinsics), 300 frames, results to a file
  dronedepth drone --gateway http://192.168.1.10:8080 --token-file ~/.dronedepth-token \\
      --source synthetic --max-frames 300 --results out/results.jsonl

  # the first USB camera with its OpenCV or ROS calibration, waypoints in the log
  {TOKEN_ENV}=s3cret dronedepth drone --gateway http://gateway:8080 --source /dev/video0 \\
      --intrinsics calib/camera.yaml --width 640 --height 480 --waypoints

  # obstacles to the autopilot as OBSTACLE_DISTANCE and poses from it (PX4 SITL's onboard UDP port)
  dronedepth drone --gateway http://gateway:8080 --token-file ~/.dronedepth-token --source /dev/video0 \
      --intrinsics calib/camera.yaml --mavlink udpin:0.0.0.0:14540 --pose mavlink --waypoints

  # the same on a real flight controller's TELEM2 port; ArduPilot SITL would be --mavlink tcp:127.0.0.1:5760
  dronedepth drone --gateway http://gateway:8080 --token-file ~/.dronedepth-token --source /dev/video0 \
      --intrinsics calib/camera.yaml --mavlink /dev/ttyAMA0,921600 --pose mavlink --obstacle-max-age 0.3

  # a folder of photos looped at 5 fps, intrinsics in pixels of the photos
  dronedepth drone --gateway http://gateway:8080 --token s3cret --source photos/ --fps 5 \\
      --fx 1450 --fy 1450 --cx 1024 --cy 681 --max-frames 100

sources: 'synthetic', a camera index (0) or /dev/videoN, an image folder or image file, a video file.
Frames wider than {DEFAULT_MAX_WIDTH} px are sent at {DEFAULT_MAX_WIDTH} px wide unless --width/--height say otherwise.
The token comes from --token, --token-file or ${TOKEN_ENV} (prefer the last two: command lines are visible to
other users). Ctrl-C or SIGTERM stops cleanly: the connection is closed and the results file flushed.
exit status: 0 done or stopped, 1 the stream ended without any result, 2 bad arguments, refused token, or the
gateway stayed unreachable for --max-retries attempts.
"""


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES

    g = parser.add_argument_group("gateway")
    g.add_argument("--gateway", required=True, metavar="URL", help="gateway address, e.g. http://192.168.1.10:8080")
    g.add_argument("--token", help=f"bearer token for the gateway (or --token-file, or ${TOKEN_ENV})")
    g.add_argument("--token-file", type=Path, metavar="FILE", help="read the token from this file")
    g.add_argument("--drone-id", metavar="ID", help="name this drone on the gateway ([A-Za-z0-9_-], up to 64)")
    g.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server, e.g. stun:stun.example.org:3478 (repeatable; default: none, for local networks)",
    )
    g.add_argument("--ice-username", metavar="NAME", help="username for TURN servers (with --ice-credential-file)")
    g.add_argument(
        "--ice-credential-file",
        type=Path,
        metavar="FILE",
        help=f"file whose first line is the TURN password (or set {ICE_CREDENTIAL_ENV}); kept off the command line",
    )
    g.add_argument(
        "--ice-relay-only",
        action="store_true",
        help="media only through the TURN server (relay candidates; iceTransportPolicy relay)",
    )

    s = parser.add_argument_group("source")
    s.add_argument("--source", required=True, help="synthetic | camera index | /dev/videoN | image folder | video file")
    s.add_argument("--fps", type=float, default=15.0, help="frames sent per second (default: 15)")
    s.add_argument("--width", type=int, help="send frames this wide (alone: keep the aspect ratio)")
    s.add_argument("--height", type=int, help="send frames this high (alone: keep the aspect ratio)")
    s.add_argument("--max-frames", type=int, metavar="N", help="stop after sending N frames (default: no limit)")
    s.add_argument("--loop", action="store_true", help="restart a video file at its end (folders always loop)")

    p = parser.add_argument_group("pose (optional: send the body's pose with the frames, see docs/drone.md)")
    p.add_argument(
        "--pose",
        metavar="FILE|synthetic|mavlink",
        help="a TUM trajectory 't tx ty tz qx qy qz qw' of the body (t from its first line = time since the "
        "first frame at --fps), 'synthetic' for the synthetic scene's exact pose, or 'mavlink' for the "
        "autopilot's ATTITUDE + LOCAL_POSITION_NED (or ODOMETRY) and downward DISTANCE_SENSOR (needs --mavlink)",
    )
    p.add_argument(
        "--pose-frame",
        choices=("enu", "ned"),
        default="enu",
        help="axes of the --pose file: enu (ENU world, FLU body; ROS) or ned (NED world, FRD body; PX4, ArduPilot)",
    )

    i = parser.add_argument_group(
        "intrinsics (required except for the synthetic source; scaled automatically when frames are resized)"
    )
    i.add_argument(
        "--intrinsics", type=Path, metavar="FILE", help="OpenCV calibration YAML/XML or ROS camera_info YAML"
    )
    i.add_argument("--fx", type=float, help="focal length in pixels, x")
    i.add_argument("--fy", type=float, help="focal length in pixels, y")
    i.add_argument("--cx", type=float, help="principal point in pixels, x")
    i.add_argument("--cy", type=float, help="principal point in pixels, y")
    i.add_argument(
        "--distortion", type=float, nargs="+", metavar="K", help="k1 k2 p1 p2 [k3 [k4 k5 k6]], or k1..k4 for fisheye"
    )
    i.add_argument("--camera-model", choices=("pinhole", "fisheye"), help="distortion model (default: pinhole)")
    i.add_argument(
        "--calibration-size",
        type=_size,
        metavar="WxH",
        help="the resolution --fx/--fy/--cx/--cy are for (default: the source's native frames)",
    )

    m = parser.add_argument_group("autopilot (MAVLink 2, see docs/drone.md)")
    m.add_argument(
        "--mavlink",
        metavar="CONNECTION",
        help="pymavlink connection to the flight controller: udpin:0.0.0.0:14550, udpout:HOST:PORT, "
        "tcp:HOST:PORT, /dev/ttyACM0,921600; forwards the gateway's obstacle profiles as OBSTACLE_DISTANCE "
        "(20 Hz, MAV_FRAME_BODY_FRD)",
    )
    m.add_argument(
        "--obstacle-max-age",
        type=float,
        default=0.5,
        metavar="S",
        help="stop sending a profile once its frame is S seconds old, so a stale picture never looks like "
        "free space (default: 0.5)",
    )

    o = parser.add_argument_group("output")
    o.add_argument(
        "--results", type=Path, metavar="FILE.jsonl", help="write every keypoints and obstacles message as a JSON line"
    )
    o.add_argument(
        "--waypoints",
        action="store_true",
        help="derive obstacles and free directions from each obstacle profile (metric depth only)",
    )

    r = parser.add_argument_group("connection")
    r.add_argument(
        "--result-timeout", type=float, default=15.0, metavar="S", help="reconnect after S s without any message"
    )
    r.add_argument("--connect-timeout", type=float, default=20.0, metavar="S", help="give a connection S s")
    r.add_argument("--reconnect-max-delay", type=float, default=10.0, metavar="S", help="longest wait between tries")
    r.add_argument(
        "--max-retries", type=int, metavar="N", help="give up after N failed attempts in a row (default: never)"
    )


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if args.token_file is not None:
        try:
            token = args.token_file.expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {str(args.token_file)!r}: {exc}") from exc
        if not token:
            raise ConfigError(f"--token-file {str(args.token_file)!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no token: give --token, --token-file or set {TOKEN_ENV}")
    return token


def _ice_credential(credential_file: Path | None) -> str | None:
    """The TURN password: the first line of ``credential_file``, else ``$DRONEDEPTH_ICE_CREDENTIAL``, else None."""
    if credential_file is None:
        return os.environ.get(ICE_CREDENTIAL_ENV, "").strip() or None
    try:
        lines = credential_file.expanduser().read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read --ice-credential-file {str(credential_file)!r}: {exc}") from exc
    if not lines or not lines[0].strip():
        raise ConfigError(f"--ice-credential-file {str(credential_file)!r} is empty")
    return lines[0].strip()


def camera_from_args(args: argparse.Namespace, source: FrameSource) -> CameraMessage | None:
    """The intrinsics given on the command line, or ``None`` when none were given."""
    flags = {name: getattr(args, name) for name in ("fx", "fy", "cx", "cy")}
    given = [name for name, value in flags.items() if value is not None]
    if args.intrinsics is not None:
        if given or args.distortion or args.calibration_size:
            raise ConfigError("give either --intrinsics or --fx/--fy/--cx/--cy [--distortion], not both")
        return load_intrinsics(args.intrinsics, model=args.camera_model)
    if given:
        missing = [f"--{name}" for name, value in flags.items() if value is None]
        if missing:
            raise ConfigError(f"--fx, --fy, --cx and --cy go together; missing {', '.join(missing)}")
        width, height = args.calibration_size or (source.native_width, source.native_height)
        return intrinsics_from_values(
            width=width,
            height=height,
            distortion=args.distortion or (),
            model=args.camera_model or "pinhole",
            where="--fx/--fy/--cx/--cy",
            **flags,
        )
    if args.distortion or args.calibration_size:
        raise ConfigError("--distortion and --calibration-size need --fx --fy --cx --cy")
    return None


def _open_source(args: argparse.Namespace) -> FrameSource:
    source = open_source(args.source, width=args.width, height=args.height, fps=args.fps, loop=args.loop)
    if args.width is None and args.height is None and source.native_width > DEFAULT_MAX_WIDTH:
        source.set_output_size(DEFAULT_MAX_WIDTH, None)
    return source


def config_from_args(args: argparse.Namespace, camera: CameraMessage | None) -> DroneConfig:
    return DroneConfig(
        gateway=args.gateway,
        token=_token(args),
        source=args.source,
        camera=camera,
        fps=args.fps,
        width=args.width,
        height=args.height,
        max_frames=args.max_frames,
        results_path=args.results,
        drone_id=args.drone_id,
        ice_servers=tuple(args.ice_server),
        ice_username=args.ice_username,
        ice_credential=_ice_credential(args.ice_credential_file),
        ice_relay_only=args.ice_relay_only,
        waypoints=args.waypoints,
        loop=args.loop,
        reconnect_max_delay=max(args.reconnect_max_delay, 0.5),
        max_attempts=args.max_retries,
        connect_timeout=args.connect_timeout,
        result_timeout=args.result_timeout,
        pose=args.pose,
        pose_frame=args.pose_frame,
        mavlink=args.mavlink,
        obstacle_max_age=args.obstacle_max_age,
    )


class _ClearStatusLine(logging.Filter):
    """Erase the live status line before a log record is written under it."""

    def filter(self, record: logging.LogRecord) -> bool:
        sys.stderr.write("\r\x1b[K")
        return True


async def _show_status(client: DroneClient, tty: bool) -> None:
    interval = _STATUS_TTY_S if tty else _STATUS_LOG_S
    while True:
        await asyncio.sleep(interval)
        line = client.summary(recent=True).line()
        if tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            sys.stderr.write("\r\x1b[K" + line[:width])
            sys.stderr.flush()
        else:
            log.info("%s", line)


async def _run_client(client: DroneClient) -> DroneSummary:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("stopping (again to abort)")
            client.stop()
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    tty = sys.stderr.isatty()
    clear = _ClearStatusLine()
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is sys.stderr] if tty else []
    for handler in handlers:
        handler.addFilter(clear)
    status = asyncio.ensure_future(_show_status(client, tty))
    try:
        return await client.run()
    finally:
        status.cancel()
        for handler in handlers:
            handler.removeFilter(clear)
        if tty:
            sys.stderr.write("\r\x1b[K")
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def format_summary(summary: DroneSummary, results: Path | None) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    codes = ", ".join(f"{code} {count}" for code, count in summary.error_codes.items())
    lines = [
        f"frames sent          {summary.frames_sent}",
        f"results received     {summary.results}"
        + (f" ({summary.unmatched} matched no frame sent)" if summary.unmatched else ""),
        f"glass-to-result      p50 {ms(summary.latency_p50_ms)}, p95 {ms(summary.latency_p95_ms)}, "
        f"max {ms(summary.latency_max_ms)}",
        f"gateway errors       {summary.errors}" + (f" ({codes})" if codes else ""),
        f"reconnects           {summary.reconnects}",
        f"obstacle profiles    {summary.obstacle_profiles}",
        f"local maps           {summary.local_maps}",
        f"duration             {summary.duration_s:.1f} s",
    ]
    if results is not None:
        lines.append(f"results file         {results}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        for noisy in ("aioice", "aiortc", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    _token(args)  # fail before opening a camera
    check_pose_link(args.pose, args.mavlink)
    source = _open_source(args)
    try:
        config = config_from_args(args, camera_from_args(args, source))
        client = DroneClient(config, source=source)
        try:
            summary = asyncio.run(_run_client(client))
        except asyncio.CancelledError:  # a second Ctrl-C
            return 130
    finally:
        source.close()
    print(format_summary(summary, args.results))
    if summary.results == 0 and summary.frames_sent > 0 and summary.state != "stopped":
        print("dronedepth drone: the stream ended without any result from the gateway", file=sys.stderr)
        return 1
    return 0
