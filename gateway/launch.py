"""Build a gateway from the parsed ``dronedepth gateway`` arguments and serve it until a stop signal.

What the command line (:mod:`dronedepth.gateway.cli`), the multi-process front
(:mod:`dronedepth.gateway.cluster`) and its workers share, so none of them
imports another's entry point. Only the standard library at module level, like
the CLI: aiortc, tritonclient and Open3D load when a gateway is built.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from dronedepth.errors import ConfigError
from dronedepth.shutdown import STOP_SIGNALS, exit_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.inference import DepthClient
    from dronedepth.gateway.mapping import MapSettings
    from dronedepth.gateway.server import Gateway

__all__ = ["build", "build_config", "quiet_media_logs", "serve"]

log = logging.getLogger("dronedepth.gateway")


def build(args: argparse.Namespace) -> tuple[GatewayConfig, DepthClient]:
    """The gateway's config and depth client from parsed arguments; raises ConfigError."""
    config = build_config(args)
    from dronedepth.gateway.inference import OnnxRuntimeDepthClient, TritonDepthClient

    client: DepthClient
    if args.onnx_model is not None:
        client = OnnxRuntimeDepthClient(args.onnx_model)
    else:
        client = TritonDepthClient(args.triton_url, args.model, args.inference_timeout, shared_memory=args.triton_shm)
    return config, client


def build_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's config from parsed arguments; raises ConfigError."""
    from dronedepth.gateway.config import GatewayConfig, read_drone_tokens, read_ice_credential, read_token
    from dronedepth.gateway.frame_rate import FrameRateConfig
    from dronedepth.gateway.ice import MediaPorts, parse_public_ip
    from dronedepth.gateway.keypoints import KeypointConfig
    from dronedepth.gateway.pipeline import ProcessingConfig

    token = read_token(args.token_file)
    # Containers set the media options in the environment (docker-compose.yml); an empty value means unset.
    rtc_ports = args.rtc_ports or os.environ.get("DRONEDEPTH_RTC_PORTS", "").strip()
    public_ip = args.public_ip or os.environ.get("DRONEDEPTH_PUBLIC_IP", "").strip()
    if token is None and not args.insecure_no_auth:
        raise ConfigError(
            "no token: give --token-file FILE or set DRONEDEPTH_TOKEN "
            "(or --insecure-no-auth to accept any client on a trusted network)"
        )
    if token is not None and args.insecure_no_auth:
        log.warning("--insecure-no-auth is ignored: a token is configured")
    if args.latency_budget is not None and not args.frame_rate_advice:
        raise ConfigError("--latency-budget works through the frame-rate advice: drop --no-frame-rate-advice")
    try:
        processing = ProcessingConfig(
            keypoints=KeypointConfig(
                method=args.keypoints, max_keypoints=args.max_keypoints, detect_scale=args.keypoint_scale
            ),
            max_range=args.max_range,
            axes=args.axes,
            output_frame=args.output_frame,
            # The recorder makes the clouds it writes from points and colours; a cloud per frame is
            # only worth it when recorded clouds should be voxel-filtered or cleaned of outliers.
            build_cloud=args.record is not None and (args.voxel_size is not None or args.remove_outliers),
            voxel_size=args.voxel_size,
            remove_outliers=args.remove_outliers,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    config = GatewayConfig(
        token=token,
        allow_no_auth=args.insecure_no_auth,
        host=args.host,
        port=args.port,
        processing=processing,
        max_drones=args.max_drones,
        max_frame_pixels=args.max_frame_pixels,
        inference_timeout=args.inference_timeout,
        max_in_flight=args.max_in_flight,
        ice_servers=tuple(args.ice_server),
        ice_username=args.ice_username,
        ice_credential=read_ice_credential(args.ice_credential_file),
        ice_relay_only=args.ice_relay_only,
        rtc_ports=MediaPorts.parse(rtc_ports) if rtc_ports else None,
        public_ip=parse_public_ip(public_ip) if public_ip else None,
        idle_timeout=args.idle_timeout,
        pose_max_gap=args.pose_max_gap,
        world_map=_map_settings(args) if args.map else None,
        scale=args.scale,
        scale_correct=args.scale_correct,
        frame_rate_advice=FrameRateConfig(latency_budget_ms=args.latency_budget) if args.frame_rate_advice else None,
        record_dir=args.record,
        record_every=args.record_every,
        record_bag_dir=args.record_bag,
        record_max_bytes=args.record_max_bytes,
        record_min_free=args.record_min_free,
        foxglove_port=args.foxglove,
        foxglove_host=args.foxglove_host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        workers=args.workers,
        drone_tokens=read_drone_tokens(args.drone_tokens_file) if args.drone_tokens_file is not None else None,
        pending_timeout=args.pending_timeout,
        max_pending_offers=args.max_pending_offers,
        header_timeout=args.header_timeout,
        body_timeout=args.header_timeout,
    )
    if args.foxglove is None and args.foxglove_host != "127.0.0.1":
        log.warning("--foxglove-host is ignored without --foxglove")
    return config


def _map_settings(args: argparse.Namespace) -> MapSettings:
    from dronedepth.gateway.fusion import MapConfig
    from dronedepth.gateway.mapping import MapSettings

    drones = None if args.map_drones.strip() == "all" else frozenset(filter(None, args.map_drones.split(",")))
    if drones is not None and not drones:
        raise ConfigError("--map-drones: give drone ids separated by commas, or 'all'")
    try:
        fusion = MapConfig(
            voxel_size_m=args.map_voxel,
            max_depth_m=args.map_range,
            block_budget=args.map_blocks,
            gate=args.map_pose_gate == "on",
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    # local_map holds at most 200x200 cells and 254 height levels: the default box shrinks with small voxels.
    half_width = args.map_local_box if args.map_local_box is not None else min(10.0, 100 * args.map_voxel)
    vertical = min(10.0, 120 * args.map_voxel)
    return MapSettings(
        fusion=fusion,
        drones=drones,
        local_map_half_width_m=half_width,
        local_map_below_m=vertical,
        local_map_above_m=vertical,
    )


async def serve(
    config: GatewayConfig,
    client: DepthClient,
    stop: asyncio.Event | None = None,
    prepare: Callable[[Gateway], None] | None = None,
) -> int | None:
    """Run a gateway until ``stop`` is set or SIGTERM/SIGINT arrives, then shut it down; returns that signal.

    While serving, the signals set ``stop`` from the event loop, so the gateway closes its sessions the
    ordinary way; before and after, :func:`~dronedepth.shutdown.run_until_signalled` (in :func:`run`) covers them.
    ``prepare`` may adjust the gateway before it starts (a cluster worker adds its front's trust middleware).
    """
    from dronedepth.gateway.server import Gateway

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without waiting", signal.Signals(signum).name)
            raise SystemExit(exit_status(signum))
        log.info("%s received: shutting down", signal.Signals(signum).name)
        received.append(signum)
        stop.set()

    installed = []
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or not POSIX
            pass
    gateway = Gateway(config, client)
    if prepare is not None:
        prepare(gateway)
    try:
        await gateway.start()
        if config.token is None:
            log.warning("authentication is OFF (--insecure-no-auth): anyone reaching port %d can connect", gateway.port)
        await stop.wait()
    finally:
        await gateway.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
    return received[0] if received else None


def quiet_media_logs(args: argparse.Namespace) -> None:
    """Unless ``--verbose``: aioice logs every ICE candidate pair at INFO; keep one line per session event."""
    if not getattr(args, "verbose", False):
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)
