"""``dronedepth demo``: the whole pipeline end to end on this machine.

1. export a model (real weights when given or reachable, else a clearly
   labelled random-init model of the real architecture),
2. start the embedded Triton and the gateway on free ports,
3. stream simulated drones (the package's sample photos and the synthetic scene),
4. write keypoints, point clouds, rosbags, depth previews, point-cloud renders
   and a latency summary to the output folder,
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dronedepth.contract import MODEL_NAME
from dronedepth.errors import ConfigError, DroneDepthError
from dronedepth.protocol import CameraMessage
from dronedepth.samples import SAMPLE_DIR
from dronedepth.shutdown import run_until_signalled

log = logging.getLogger("dronedepth.cli.demo")

DEFAULT_HUB_MODEL = "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf"
PHOTO_HFOV_DEG = 60.0
"""The sample photos come without calibration: the demo assumes this horizontal field of view."""
DEFAULT_PHOTOS = SAMPLE_DIR


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


def _drone_plans(args: argparse.Namespace) -> list[tuple[str, str, CameraMessage | None]]:
    """(drone id, source, camera) per simulated drone, alternating photos and the synthetic scene."""
    have_photos = args.photos.is_dir() and any(args.photos.glob("*.jpg"))
    if not have_photos:
        log.warning("no photos in %s: every drone flies the synthetic scene", args.photos)
    plans: list[tuple[str, str, CameraMessage | None]] = []
    for i in range(args.drones):
        if have_photos and i % 2 == 0:
            plans.append((f"photos-{i + 1}", str(args.photos), photo_camera(args.photos)))
        else:
            plans.append((f"synthetic-{i + 1}", "synthetic", None))
    return plans


async def stream(args: argparse.Namespace, triton_url: str, out: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """Run the gateway and the drones until every drone has sent its frames; returns the summary."""
    from dronedepth.drone.client import DroneClient, DroneConfig
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.inference import TritonDepthClient
    from dronedepth.gateway.keypoints import KeypointConfig
    from dronedepth.gateway.pipeline import ProcessingConfig
    from dronedepth.gateway.server import Gateway

    token = secrets.token_urlsafe(24)
    latest = LatestFrames()
    config = GatewayConfig(
        token=token,
        host="127.0.0.1",
        port=0,
        max_drones=max(args.drones, 1),
        record_dir=out / "recordings",
        record_every=4,
        record_bag_dir=out / "bags",
        processing=ProcessingConfig(keypoints=KeypointConfig(method=args.keypoints), build_cloud=False),
    )
    gateway = Gateway(config, TritonDepthClient(triton_url, MODEL_NAME), sink=latest)
    await gateway.start()
    summaries: dict[str, Any] = {}
    try:
        clients = {}
        for drone_id, source, camera in _drone_plans(args):
            (out / drone_id).mkdir(parents=True, exist_ok=True)
            clients[drone_id] = DroneClient(
                DroneConfig(
                    gateway=gateway.url,
                    token=token,
                    source=source,
                    camera=camera,
                    fps=args.fps,
                    width=args.width,
                    max_frames=args.frames,
                    drone_id=drone_id,
                    results_path=out / drone_id / "results.jsonl",
                    waypoints=True,
                    result_timeout=60.0,
                    drain_timeout=30.0,
                )
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
        metrics_text = gateway.metrics.render()
    finally:
        await gateway.stop()
    (out / "gateway_metrics.txt").write_text(metrics_text)
    _render_pictures(latest, out, facts)
    return summaries


def _summary_dict(summary: Any) -> dict[str, Any]:
    return {k: getattr(summary, k) for k in summary.__dataclass_fields__}


def _render_pictures(latest: LatestFrames, out: Path, facts: dict[str, Any]) -> None:
    import cv2
    from dronedepth.gateway.outputs.render import depth_preview, render_point_cloud

    note = "RANDOM-INIT MODEL: depth is meaningless" if facts.get("random_init") else None
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
        header += ["", "**Random-init weights: the pipeline ran for real, but the depth is meaningless.**"]
    return "\n".join([*header, "", *rows, ""])


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
        summaries = asyncio.run(stream(args, triton.grpc_url, out, facts))
    elapsed = time.monotonic() - started
    stages = _stage_medians(out, list(summaries))
    summary = {"model": facts, "drones": summaries, "gateway_stage_median_ms": stages, "elapsed_s": elapsed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table = _latency_table(summaries, facts, elapsed)
    if stages:
        table += "\nGateway per-stage median (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + "\n"
    (out / "summary.md").write_text(table)
    print(table)
    print(f"Outputs in {out}:")
    for path in sorted(p for p in out.rglob("*") if p.is_file() and "model_repository" not in p.parts)[:40]:
        print(f"  {path.relative_to(out)}")
    results = sum(s.get("results", 0) for s in summaries.values())
    if results == 0:
        raise DroneDepthError("no drone received any result: see the log above and triton.log")
    return 0
