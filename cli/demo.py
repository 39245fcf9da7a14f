"""``dronedepth demo``: the whole pipeline end to end on this machine.

1. export a model (real weights when given or reachable, else a clearly
   labelled random-init model of the real architecture),
2. start the embedded Triton and the gateway on free ports,
3. stream simulated drones: the package's sample photos without a pose, and the
   synthetic scene with its exact pose (``--pose synthetic``), whose obstacle
   profiles go over MAVLink to a pymavlink stand-in for the autopilot
   (:class:`AutopilotStandIn`); the gateway fuses a world map (``--map``),
4. write keypoints, point clouds, rosbags, depth previews, point-cloud renders,
   the world map (``map.ply``, ``map_topdown.png``), each drone's last obstacle
   profile (``obstacles.png``) and a summary (latency, poses, landmarks, scale,
   obstacles, OBSTACLE_DISTANCE, map) to the output folder,
5. stop everything it started, also on failure, Ctrl-C or SIGTERM (exit status
   130 after SIGINT, 143 after SIGTERM; what the gateway recorded so far is
   flushed, the summary is not written).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from dronedepth.contract import MODEL_NAME
from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.protocol import (
    OBSTACLE_FREE,
    OBSTACLE_NO_DATA,
    OBSTACLE_SOURCES,
    CameraMessage,
    KeypointsMessage,
    ObstaclesMessage,
)
from dronedepth.samples import SAMPLE_DIR
from dronedepth.shutdown import run_until_signalled

log = logging.getLogger("dronedepth.cli.demo")

DEFAULT_HUB_MODEL = "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf"
PHOTO_HFOV_DEG = 60.0
"""The sample photos come without calibration: the demo assumes this horizontal field of view."""
DEFAULT_PHOTOS = SAMPLE_DIR
MAP_FRAME: Final = "map"
"""The world frame of the synthetic scene's poses (ENU), the map the demo fuses and fetches."""
MAP_VOXEL_M: Final = 0.25
"""The synthetic scene's boxes are 1 m and more across and the flight spans tens of metres: 0.25 m voxels
resolve them at a fraction of the 0.1 m default's cost."""
DEMO_OBSTACLE_MAX_AGE_S: Final = 10.0
"""How old (s after capture) a profile may be and still go to the autopilot stand-in. A real aircraft keeps
the 0.5 s default (PX4 drops older data); on 2 CPU cores two drones share ViT-S inference and each result
comes 3–5 s after capture, and the stand-in is there to show the MAVLink path end to end."""
MAVLINK_READ_TIMEOUT_S: Final = 0.2
"""How often the stand-in's reader thread looks at its stop flag."""

if TYPE_CHECKING:
    from dronedepth.drone.client import DroneSummary
    from dronedepth.gateway.server import Gateway


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  dronedepth demo                                   # offline: random-init model, clearly labelled\n"
        f"  dronedepth demo --model {DEFAULT_HUB_MODEL}\n"
        "  dronedepth demo --checkpoint depth_anything_v2_metric_vkitti_vits.pth --encoder vits --metric outdoor\n\n"
        "SIGINT (Ctrl-C) or SIGTERM stops everything the demo started, closes the recordings and exits\n"
        "130 (SIGINT) or 143 (SIGTERM)."
    )
    src = parser.add_argument_group("model (default: the hub model when reachable, else random init)")
    src.add_argument("--model", metavar="ID_OR_DIR", help="Hugging Face hub id or save_pretrained directory")
    src.add_argument("--checkpoint", metavar="FILE.pth", help="official Depth Anything V2 checkpoint")
    src.add_argument("--encoder", default="vits", help="encoder of --checkpoint / random init (default vits)")
    src.add_argument("--metric", choices=("indoor", "outdoor"), default="outdoor", help="metric head (default outdoor)")
    src.add_argument("--random-init", action="store_true", help="skip real weights: random-init model")
    src.add_argument("--input-size", type=int, default=518, help="short side the network sees (default 518)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    run.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="image folder for the photo drone")
    run.add_argument("--drones", type=int, default=2, help="simulated drones: photos, synthetic, ... (default 2)")
    run.add_argument("--frames", type=int, default=24, help="frames each drone sends (default 24)")
    run.add_argument("--fps", type=float, default=4.0, help="frame rate of each drone (default 4)")
    run.add_argument("--width", type=int, default=640, help="frame width sent by the drones (default 640)")
    run.add_argument("--keypoints", default="orb", help="keypoint detector (default orb)")


@dataclass
class LatestFrames:
    """A result sink that keeps each drone's newest frame, for the pictures at the end."""

    frames: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, record: Any) -> None:
        with self.lock:
            self.frames[record.drone_id] = record

    def close_drone(self, drone_id: str) -> None:
        """Keep the drone's last frame: the demo renders it after the drone left."""

    def close(self) -> None:
        """Nothing to flush."""


@dataclass
class NavigationWatch:
    """What one drone received that navigation needs: poses, landmark ids, depth kind, scale, the last profile.

    Fed by the drone client's ``on_result`` / ``on_obstacles`` callbacks in the event loop: a few counter
    updates per message.
    """

    pose_matches: Counter[str] = field(default_factory=Counter)
    """Results by how their frame's pose was found (``exact``, ``interpolated``, ``extrapolated``) or ``no_pose``."""
    depth_kinds: Counter[str] = field(default_factory=Counter)
    scale_sources: Counter[str] = field(default_factory=Counter)
    """Results by where their depth's scale came from (``model``, ``ground``, ``anchors``) or ``none``."""
    landmark_sightings: Counter[int] = field(default_factory=Counter)
    """Landmark id → results that carried it."""
    gravity_aligned_profiles: int = 0
    """Profiles whose ranges are horizontal (the frame had a pose); the others took the body as level."""
    last_profile: ObstaclesMessage | None = None
    """The newest profile, gravity-aligned if the drone ever sent one: a frame that lost its pose says less
    (no map sectors, body taken as level)."""
    camera_path: list[tuple[float, float]] = field(default_factory=list)
    """The camera's ENU (x east, y north) in metres, one per result with a pose in the ``map`` frame."""

    def on_result(self, message: KeypointsMessage, latency_ms: float | None) -> None:
        self.pose_matches["no_pose" if message.camera_pose is None else message.camera_pose.match] += 1
        self.depth_kinds[message.depth_kind] += 1
        self.scale_sources["none" if message.scale is None else message.scale.source] += 1
        if message.camera_pose is not None and message.camera_pose.frame_id == MAP_FRAME:
            x, y, _ = message.camera_pose.world_from_camera.translation.tolist()
            self.camera_path.append((x, y))
        if message.ids is not None:
            self.landmark_sightings.update(np.unique(message.ids[message.ids >= 0]).tolist())

    def on_obstacles(self, message: ObstaclesMessage, capture_time: float | None, waypoints: object) -> None:
        self.gravity_aligned_profiles += message.gravity_aligned
        if message.gravity_aligned or not self.gravity_aligned_profiles:
            self.last_profile = message

    def to_dict(self, obstacle_messages: int) -> dict[str, Any]:
        return {
            "pose_matches": dict(self.pose_matches),
            "results_with_pose": sum(n for match, n in self.pose_matches.items() if match != "no_pose"),
            "depth_kinds": dict(self.depth_kinds),
            "scale_sources": dict(self.scale_sources),
            "landmark_ids": {
                "distinct": len(self.landmark_sightings),
                "reobserved": sum(1 for n in self.landmark_sightings.values() if n > 1),
            },
            "obstacle_messages": obstacle_messages,
            "gravity_aligned_obstacle_messages": self.gravity_aligned_profiles,
            "last_profile": None if self.last_profile is None else _profile_facts(self.last_profile),
        }


def _sector_sources(profile: ObstaclesMessage) -> list[str]:
    """Each sector's source; a profile without ``sources`` (no map) is the camera's wherever it has data."""
    if profile.sources is not None:
        return list(profile.sources)
    return ["none" if d == OBSTACLE_NO_DATA else "camera" for d in profile.distances_m]


def _profile_facts(profile: ObstaclesMessage) -> dict[str, Any]:
    """The last profile in a few numbers: sectors by source and state, and its nearest obstacle."""
    from dronedepth.drone.waypoints import nearest_obstacle

    sources = _sector_sources(profile)
    distances = profile.distances_m
    nearest = nearest_obstacle(profile)
    nearest_facts = None
    if nearest is not None:
        sector = round((nearest.azimuth_deg - profile.angle_offset_deg) / profile.sector_width_deg) % len(distances)
        nearest_facts = {
            "distance_m": nearest.distance_m,
            "azimuth_deg": nearest.azimuth_deg,
            "source": sources[sector],
        }
    return {
        "frame": ObstaclesMessage.frame,
        "stamp": profile.stamp,
        "gravity_aligned": profile.gravity_aligned,
        "sectors": len(distances),
        "sector_width_deg": profile.sector_width_deg,
        "max_range_m": profile.max_range_m,
        "sources": dict(Counter(sources)),
        "obstacle_sectors": sum(1 for d in distances if d >= 0),
        "free_sectors": sum(1 for d in distances if d == OBSTACLE_FREE),
        "no_data_sectors": sum(1 for d in distances if d == OBSTACLE_NO_DATA),
        "nearest_obstacle": nearest_facts,
    }


class AutopilotStandIn:
    """A pymavlink listener on 127.0.0.1 standing in for the flight controller: counts OBSTACLE_DISTANCE.

    A reader thread keeps the count, the first and last arrival times and the last message; :meth:`close`
    stops it. The drone connects with ``udpout:`` to :attr:`connection`'s port.
    """

    def __init__(self) -> None:
        from dronedepth.drone.mavlink import mavutil  # sets MAVLINK20 before pymavlink loads

        self._mav = mavutil.mavlink_connection("udpin:127.0.0.1:0", source_system=1, source_component=1)
        self.port: int = self._mav.port.getsockname()[1]
        self._lock = threading.Lock()
        self._count = 0
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._last: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="demo-autopilot", daemon=True)
        self._thread.start()

    @property
    def drone_connection(self) -> str:
        """The drone's ``--mavlink`` connection string to this stand-in."""
        return f"udpout:127.0.0.1:{self.port}"

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._mav.recv_match(type="OBSTACLE_DISTANCE", blocking=True, timeout=MAVLINK_READ_TIMEOUT_S)
            if message is None:
                continue
            now = time.monotonic()
            with self._lock:
                self._count += 1
                self._first_at = now if self._first_at is None else self._first_at
                self._last_at, self._last = now, message

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * MAVLINK_READ_TIMEOUT_S + 1.0)
        self._mav.close()

    def to_dict(self) -> dict[str, Any]:
        """The count, the mean rate between the first and last message (Hz) and the last message's fields."""
        with self._lock:
            count, first, last_at, last = self._count, self._first_at, self._last_at, self._last
        rate = None
        if count > 1 and first is not None and last_at is not None and last_at > first:
            rate = round((count - 1) / (last_at - first), 2)
        last_fields = None
        if last is not None:
            from dronedepth.drone.mavlink import UNKNOWN_CM, mavutil

            distances = list(last.distances)
            body_frd = last.frame == mavutil.mavlink.MAV_FRAME_BODY_FRD
            last_fields = {
                "frame": "MAV_FRAME_BODY_FRD" if body_frd else int(last.frame),
                "increment_deg": round(float(last.increment_f), 3),
                "angle_offset_deg": round(float(last.angle_offset), 3),
                "min_distance_cm": int(last.min_distance),
                "max_distance_cm": int(last.max_distance),
                "distances_cm": distances,
                "unknown_sectors": sum(1 for d in distances if d == UNKNOWN_CM),
                "free_sectors": sum(1 for d in distances if d == last.max_distance + 1),
            }
        return {"obstacle_distance_messages": count, "rate_hz": rate, "last": last_fields}


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _export_arguments(args: argparse.Namespace) -> tuple[list[str], str]:
    """The ``dronedepth export`` arguments for the weights asked for, and a label of the source."""
    if args.model:
        return ["--model", args.model], args.model
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise ConfigError(f"checkpoint {args.checkpoint!r} does not exist")
        return ["--checkpoint", args.checkpoint, "--encoder", args.encoder, "--metric", args.metric], args.checkpoint
    if not args.random_init and _hub_reachable():
        return ["--model", DEFAULT_HUB_MODEL], DEFAULT_HUB_MODEL
    return ["--random-init", "--encoder", args.encoder, "--metric", args.metric], f"random-init {args.encoder}"


def export_model(args: argparse.Namespace, repository: Path) -> dict[str, Any]:
    """Export into ``repository`` unless an export of the same weights is already there; returns its facts."""
    from dronedepth.export.repository import read_model_facts

    weights, label = _export_arguments(args)
    stamp = repository / ".demo-source.json"
    wanted = {"weights": weights, "input_size": args.input_size}
    model_dir = repository / MODEL_NAME
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and (model_dir / "1" / "model.onnx").is_file():
        log.info("reusing the model exported earlier from %s (%s)", label, model_dir)
    else:
        log.info("exporting Depth Anything V2 from %s (a few minutes on a CPU)", label)
        command = [
            sys.executable,
            "-m",
            "dronedepth.cli",
            "export",
            *weights,
            "--out",
            str(repository),
            "--input-size",
            str(args.input_size),
            "--max-batch-size",
            "4",
        ]
        if subprocess.run(command, check=False).returncode != 0:
            raise DroneDepthError(f"the export failed (command: {' '.join(command)})")
        stamp.write_text(json.dumps(wanted))
    facts = read_model_facts(model_dir)
    return {k: getattr(facts, k) for k in facts.__dataclass_fields__}


def photo_camera(photos: Path) -> CameraMessage:
    """Intrinsics for the photo drone: the sample photos have none, so assume a 60° horizontal field of view."""
    import cv2

    first = next(p for p in sorted(photos.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    image = cv2.imread(str(first))
    if image is None:
        raise DroneDepthError(f"cannot read the photo {str(first)!r} (not an image OpenCV can decode)")
    height, width = image.shape[:2]
    fx = width / 2 / math.tan(math.radians(PHOTO_HFOV_DEG) / 2)
    return CameraMessage(width, height, fx, fx, (width - 1) / 2, (height - 1) / 2)


@dataclass(frozen=True, slots=True)
class DronePlan:
    """One simulated drone: the photo drone flies without a pose, the synthetic one with its exact pose."""

    drone_id: str
    source: str
    camera: CameraMessage | None
    pose: str | None


def _drone_plans(args: argparse.Namespace) -> list[DronePlan]:
    """One plan per simulated drone, alternating photos and the synthetic scene."""
    have_photos = args.photos.is_dir() and any(args.photos.glob("*.jpg"))
    if not have_photos:
        log.warning("no photos in %s: every drone flies the synthetic scene", args.photos)
    plans: list[DronePlan] = []
    for i in range(args.drones):
        if have_photos and i % 2 == 0:
            plans.append(DronePlan(f"photos-{i + 1}", str(args.photos), photo_camera(args.photos), None))
        else:
            plans.append(DronePlan(f"synthetic-{i + 1}", "synthetic", None, "synthetic"))
    return plans


async def stream(
    args: argparse.Namespace, triton_url: str, out: Path, facts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the gateway and the drones until every drone has sent its frames; returns the drones' and map's summary."""
    from dronedepth.drone.client import DroneClient, DroneConfig
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.fusion import MapConfig
    from dronedepth.gateway.inference import TritonDepthClient
    from dronedepth.gateway.keypoints import KeypointConfig
    from dronedepth.gateway.mapping import MapSettings
    from dronedepth.gateway.pipeline import ProcessingConfig
    from dronedepth.gateway.server import Gateway

    token = secrets.token_urlsafe(24)
    latest = LatestFrames()
    # The map fuses what the model can see: up to its max depth (a random-init model's lies at 30-70 m).
    map_range_m = float(facts.get("max_depth") or MapConfig().max_depth_m)
    config = GatewayConfig(
        token=token,
        host="127.0.0.1",
        port=0,
        max_drones=max(args.drones, 1),
        # A CPU ViT-S at 518 takes ~0.6 s a frame on 2 idle cores, several seconds on a busy machine or for the
        # first request (ONNX Runtime builds its session): the gateway's 5 s default would call Triton down.
        inference_timeout=30.0,
        record_dir=out / "recordings",
        record_every=4,
        record_bag_dir=out / "bags",
        processing=ProcessingConfig(keypoints=KeypointConfig(method=args.keypoints), build_cloud=False),
        world_map=MapSettings(fusion=MapConfig(voxel_size_m=MAP_VOXEL_M, max_depth_m=map_range_m)),
    )
    gateway = Gateway(config, TritonDepthClient(triton_url, MODEL_NAME), sink=latest)
    await gateway.start()
    summaries: dict[str, Any] = {}
    watches: dict[str, NavigationWatch] = {}
    autopilots: dict[str, AutopilotStandIn] = {}
    try:
        clients = {}
        for plan in _drone_plans(args):
            (out / plan.drone_id).mkdir(parents=True, exist_ok=True)
            watch = watches[plan.drone_id] = NavigationWatch()
            if plan.pose is not None:
                autopilots[plan.drone_id] = AutopilotStandIn()
            autopilot = autopilots.get(plan.drone_id)
            clients[plan.drone_id] = DroneClient(
                DroneConfig(
                    gateway=gateway.url,
                    token=token,
                    source=plan.source,
                    camera=plan.camera,
                    fps=args.fps,
                    width=args.width,
                    max_frames=args.frames,
                    drone_id=plan.drone_id,
                    results_path=out / plan.drone_id / "results.jsonl",
                    waypoints=True,
                    result_timeout=60.0,
                    drain_timeout=30.0,
                    pose=plan.pose,
                    mavlink=None if autopilot is None else autopilot.drone_connection,
                    obstacle_max_age=DEMO_OBSTACLE_MAX_AGE_S,
                ),
                on_result=watch.on_result,
                on_obstacles=watch.on_obstacles,
            )
        log.info("streaming %d drone(s), %d frames each at %.0f fps", len(clients), args.frames, args.fps)
        done = await asyncio.gather(*(c.run() for c in clients.values()), return_exceptions=True)
        for (drone_id, client), outcome in zip(clients.items(), done, strict=True):
            if isinstance(outcome, BaseException):
                log.error("drone %s failed: %s", drone_id, outcome)
                summaries[drone_id] = {"error": str(outcome), **_summary_dict(client.summary())}
            else:
                summaries[drone_id] = _summary_dict(outcome)
                log.info("drone %s: %s", drone_id, outcome.line())
        world_map = await _fetch_map(gateway, token, out)
        world_map["range_m"] = map_range_m
        metrics_text = gateway.metrics.render()
    finally:
        for autopilot in autopilots.values():
            autopilot.close()
        await gateway.stop()
    for drone_id, watch in watches.items():
        summaries[drone_id]["navigation"] = watch.to_dict(summaries[drone_id]["obstacle_profiles"])
        if drone_id in autopilots:
            summaries[drone_id]["autopilot"] = autopilots[drone_id].to_dict()
    (out / "gateway_metrics.txt").write_text(metrics_text)
    _render_pictures(latest, out, facts)
    note = _random_init_note(facts)
    occupancy = world_map.pop("topdown_png", None)
    if occupancy is not None:
        paths = {drone_id: watch.camera_path for drone_id, watch in watches.items()}
        (out / "map_topdown.png").write_bytes(_plot_topdown(occupancy, world_map["topdown_placement"], paths, note))
    for drone_id, watch in watches.items():
        if watch.last_profile is not None:
            _plot_obstacles(watch.last_profile, f"{drone_id}: last obstacle profile", note, out / drone_id)
    return summaries, world_map


async def _fetch_map(gateway: Gateway, token: str, out: Path) -> dict[str, Any]:
    """Save the map as the operator gets it (``/map.ply``, ``/api/map.png``) and count its frames and blocks."""
    import aiohttp

    assert gateway.world_map is not None
    facts: dict[str, Any] = {
        "frame": MAP_FRAME,
        "voxel_m": MAP_VOXEL_M,
        "frames": gateway.world_map.counts(),
        "blocks": {frame: m.block_count for frame, m in gateway.world_map.registry.maps.items()},
    }
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as http:
        for route, name in (("/map.ply", "map.ply"), ("/api/map.png", "map_topdown.png")):
            async with http.get(f"{gateway.url}{route}", params={"frame": MAP_FRAME}) as response:
                body = await response.read()
                if response.status != 200:
                    log.warning("no %s: GET %s answered %d %s", name, route, response.status, body[:200])
                    (out / name).unlink(missing_ok=True)  # not an earlier run's map
                    facts[name] = None
                    continue
            facts[name] = name
            if name == "map.ply":
                (out / name).write_bytes(body)
            else:
                facts["topdown_placement"] = {
                    "west_m": float(response.headers["X-Map-West-M"]),
                    "north_m": float(response.headers["X-Map-North-M"]),
                    "cell_m": float(response.headers["X-Map-Cell-M"]),
                }
                facts["topdown_png"] = body
    return facts


def _plot_topdown(
    occupancy_png: bytes, placement: dict[str, float], paths: dict[str, list[tuple[float, float]]], note: str | None
) -> bytes:
    """The gateway's top-down occupancy image (``/api/map.png``) in metres, with the posed drones' camera paths.

    The raw image is one pixel per voxel column and dark; this draws it to scale (x east, y north) with a
    colour scale, so the paths line up with what was fused.
    """
    import io

    import cv2
    from matplotlib.figure import Figure

    levels = cv2.imdecode(np.frombuffer(occupancy_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if levels is None:
        raise DroneDepthError("the gateway's /api/map.png is not a PNG")
    cell, west, north = placement["cell_m"], placement["west_m"], placement["north_m"]
    rows, cols = levels.shape[:2]
    extent = (west - cell / 2, west + (cols - 0.5) * cell, north - (rows - 0.5) * cell, north + cell / 2)
    figure = Figure(figsize=(7.0, 7.0), dpi=100)
    axes = figure.add_subplot()
    shown = np.ma.masked_equal(levels, 0)  # 0: nothing occupied
    image = axes.imshow(shown, extent=extent, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.7, label="highest occupied height (brighter = higher)")
    for drone_id, path in paths.items():
        if path:
            xy = np.asarray(path)
            axes.plot(xy[:, 0], xy[:, 1], "r.-", markersize=3, label=f"{drone_id} camera path (its pose)")
    if any(paths.values()):
        axes.legend(loc="upper left", fontsize=8)
    axes.set_aspect("equal")
    axes.set_xlabel(f"x east (m), map frame, {cell:g} m cells")
    axes.set_ylabel("y north (m)")
    axes.set_title("\n".join(filter(None, ["World map, top down (/api/map.png)", note])), fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _summary_dict(summary: DroneSummary) -> dict[str, Any]:
    return {k: getattr(summary, k) for k in summary.__dataclass_fields__}


def _random_init_note(facts: dict[str, Any]) -> str | None:
    return "RANDOM-INIT MODEL: depth is meaningless" if facts.get("random_init") else None


_SOURCE_COLOURS: Final = {"camera": "tab:blue", "map": "tab:orange", "none": "lightgrey"}


def _plot_obstacles(profile: ObstaclesMessage, title: str, note: str | None, folder: Path) -> None:
    """``folder/obstacles.png``: the profile seen from above, body FRD (0° forward, clockwise), sources coloured.

    Solid bars end at the nearest obstacle of their sector; faint ones are free up to the max range
    (or, grey, no data).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.patches import Patch
    from matplotlib.projections.polar import PolarAxes

    sources = _sector_sources(profile)
    count = len(profile.distances_m)
    centres = np.radians(profile.angle_offset_deg + profile.sector_width_deg * np.arange(count))
    distances = np.asarray(profile.distances_m)
    measured = distances >= 0
    heights = np.where(measured, distances, profile.max_range_m)
    colours = [_SOURCE_COLOURS[source] for source in sources]
    figure = Figure(figsize=(6.4, 7.0), dpi=100)
    axes = figure.add_subplot(projection="polar")
    assert isinstance(axes, PolarAxes)
    axes.set_theta_zero_location("N")
    axes.set_theta_direction(-1)
    width = np.radians(profile.sector_width_deg)
    for solid in (False, True):
        pick = measured == solid
        if pick.any():
            axes.bar(
                centres[pick],
                heights[pick],
                width=width,
                color=[c for c, p in zip(colours, pick, strict=True) if p],
                alpha=0.9 if solid else 0.25,
                edgecolor="none",
            )
    axes.set_rlim(0, profile.max_range_m)
    legend = [Patch(color=_SOURCE_COLOURS[s], label=s) for s in OBSTACLE_SOURCES if s in sources]
    legend.append(Patch(color="black", alpha=0.25, label="faint: free to max range"))
    figure.legend(handles=legend, loc="lower center", ncols=len(legend), bbox_to_anchor=(0.5, 0.05), fontsize=8)
    figure.text(0.5, 0.02, "distance (m); body FRD: 0° forward, clockwise seen from above", ha="center", fontsize=8)
    aligned = "gravity-aligned" if profile.gravity_aligned else "body taken as level (no pose)"
    figure.suptitle("\n".join(filter(None, [f"{title} ({aligned})", note])), fontsize=10)
    figure.savefig(folder / "obstacles.png")


def _render_pictures(latest: LatestFrames, out: Path, facts: dict[str, Any]) -> None:
    import cv2

    from dronedepth.gateway.outputs.render import depth_preview, render_point_cloud

    note = _random_init_note(facts)
    for drone_id, record in latest.frames.items():
        result = record.result
        preview = depth_preview(record.rgb, result.depth, result.message.depth_kind, note=note)
        cv2.imwrite(str(out / drone_id / "depth_preview.png"), preview[:, :, ::-1])
        render = render_point_cloud(result.points, result.colors, highlight=result.message.points)
        cv2.imwrite(str(out / drone_id / "pointcloud.png"), render[:, :, ::-1])


def _latency_table(summaries: dict[str, Any], facts: dict[str, Any], elapsed: float) -> str:
    rows = [
        "| drone | frames sent | results | glass-to-result p50 (ms) | p95 (ms) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for drone_id, s in summaries.items():
        p50 = "-" if s.get("latency_p50_ms") is None else f"{s['latency_p50_ms']:.0f}"
        p95 = "-" if s.get("latency_p95_ms") is None else f"{s['latency_p95_ms']:.0f}"
        rows.append(f"| {drone_id} | {s['frames_sent']} | {s['results']} | {p50} | {p95} | {s['errors']} |")
    kind = facts.get("depth_kind")
    header = [
        "# dronedepth demo",
        "",
        f"Model: {facts.get('encoder')} {kind} (max depth {facts.get('max_depth')}), input size "
        f"{facts.get('input_size')}, weights: {facts.get('weight_source')}. Run time {elapsed:.0f} s.",
    ]
    if facts.get("random_init"):
        header += [
            "",
            "**Random-init weights: the pipeline ran for real, but the depth is meaningless, and so are the "
            "obstacles, the landmarks' positions and the map: they only show the pipeline working.**",
        ]
    return "\n".join([*header, "", *rows, ""])


def _navigation_table(summaries: dict[str, Any]) -> str:
    """Per drone: poses, landmarks, depth kind, scale, obstacles and what reached the autopilot stand-in."""
    rows = [
        "| drone | results with pose | landmark ids (distinct / re-observed) | depth kind | scale source "
        "| obstacle messages (gravity-aligned) | nearest obstacle (last profile) "
        "| OBSTACLE_DISTANCE to the autopilot |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for drone_id, s in summaries.items():
        nav = s.get("navigation")
        if nav is None:
            continue
        matches = ", ".join(f"{k} {v}" for k, v in sorted(nav["pose_matches"].items())) or "-"
        ids = nav["landmark_ids"]
        profile = nav["last_profile"]
        if profile is None:
            nearest = "-"
        elif profile["nearest_obstacle"] is None:
            nearest = f"none within {profile['max_range_m']:g} m"
        else:
            o = profile["nearest_obstacle"]
            nearest = f"{o['distance_m']:.1f} m @ {o['azimuth_deg']:+.0f}° ({o['source']})"
        autopilot = s.get("autopilot")
        if autopilot is None:
            mavlink = "- (no link)"
        else:
            rate = "-" if autopilot["rate_hz"] is None else f"{autopilot['rate_hz']:.1f} Hz"
            mavlink = f"{autopilot['obstacle_distance_messages']} messages, {rate}"
        rows.append(
            f"| {drone_id} | {nav['results_with_pose']} ({matches}) | {ids['distinct']} / {ids['reobserved']} "
            f"| {_counts(nav['depth_kinds'])} | {_counts(nav['scale_sources'])} "
            f"| {nav['obstacle_messages']} ({nav['gravity_aligned_obstacle_messages']}) "
            f"| {nearest} | {mavlink} |"
        )
    return "\n".join(["## Navigation", "", *rows, ""])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def _map_paragraph(world_map: dict[str, Any]) -> str:
    frames = ", ".join(f"{k} {v}" for k, v in world_map["frames"].items() if v) or "none offered"
    blocks = ", ".join(f"{frame} {n}" for frame, n in world_map["blocks"].items()) or "none"
    files = [name for name in ("map.ply", "map_topdown.png") if world_map.get(name)]
    return (
        f"## World map\n\nFrame `{world_map['frame']}` (ENU, metres), {world_map['voxel_m']} m voxels, depth fused "
        f"up to {world_map['range_m']:g} m. Frames by outcome: {frames}. Voxel blocks: {blocks}. "
        f"Files: {', '.join(files) or 'none (nothing fused)'}.\n"
    )


def _stage_medians(out: Path, drone_ids: list[str]) -> dict[str, float]:
    """Median per-stage gateway time (ms) over every result the drones received."""
    stages: dict[str, list[float]] = {}
    for drone_id in drone_ids:
        path = out / drone_id / "results.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            for stage, ms in json.loads(line).get("timing", {}).items():
                stages.setdefault(stage, []).append(float(ms))
    return {stage: float(np.median(v)) for stage, v in stages.items()}


def run(args: argparse.Namespace) -> int:
    return run_until_signalled(lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    from dronedepth.serving.embedded import EmbeddedTriton

    if args.drones < 1 or args.frames < 1 or args.fps <= 0:
        raise ConfigError("--drones, --frames and --fps must be positive")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    facts = export_model(args, out / "model_repository")
    if facts.get("random_init"):
        log.warning("the model has RANDOM weights (no real weights given or reachable): its depth is meaningless")
    log.info("starting the embedded Triton server")
    repository = out / "model_repository"
    with EmbeddedTriton(repository, grpc_port=0, http_port=0, metrics_port=0, log_file=out / "triton.log") as triton:
        triton.wait_ready()
        summaries, world_map = asyncio.run(stream(args, triton.grpc_url, out, facts))
    elapsed = time.monotonic() - started
    stages = _stage_medians(out, list(summaries))
    summary = {
        "model": facts,
        "drones": summaries,
        "map": world_map,
        "gateway_stage_median_ms": stages,
        "elapsed_s": elapsed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table = _latency_table(summaries, facts, elapsed)
    if stages:
        table += "\nGateway per-stage median (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + "\n"
    table += "\n" + _navigation_table(summaries) + "\n" + _map_paragraph(world_map)
    (out / "summary.md").write_text(table)
    print(table)
    print(f"Outputs in {out}:")
    for path in sorted(p for p in out.rglob("*") if p.is_file() and "model_repository" not in p.parts)[:40]:
        print(f"  {path.relative_to(out)}")
    results = sum(s.get("results", 0) for s in summaries.values())
    if results == 0:
        raise DroneDepthError("no drone received any result: see the log above and triton.log")
    return 0
