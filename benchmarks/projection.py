"""Depth → points: our precomputed-ray projection against Open3D, plus the per-frame stages.

    python -m benchmarks.projection [--runs 50] [--output benchmarks/results/projection.json]

Times, on the same depth map and intrinsics at 640×480 and 1280×720:

- Open3D ``PointCloud.create_from_depth_image`` (depth_scale 1, depth_trunc),
  alone and with the copy of its points into NumPy;
- ours with the same validity rules (finite, > 0, <= range): ``valid_depth_mask``
  without the edge rule + ``points_from_depth``;
- ours with the default flying-pixel rule, and ``points_from_depth`` alone;
- building a ray grid once per camera (pinhole and distorted, cold cache);

then ``FrameProcessor.process`` at 640×480 (ORB, 200 keypoints, cloud on) per
stage. Prints Markdown tables and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import open3d as o3d

from dronedepth.gateway.pipeline import FrameProcessor, ProcessingConfig
from dronedepth.gateway.projection import points_from_depth, ray_grid, valid_depth_mask
from dronedepth.protocol import CameraMessage
from dronedepth.samples import sample_photo

SIZES = ((640, 480), (1280, 720))
TRUNC = 50.0
PHOTO = sample_photo("demo01.jpg")


def measure(fn: Callable[[], object], runs: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return summary(samples)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "runs": len(ordered),
    }


def camera_for(width: int, height: int, distortion: tuple[float, ...] = ()) -> CameraMessage:
    return CameraMessage(
        width=width,
        height=height,
        fx=0.8 * width,
        fy=0.8 * width,
        cx=(width - 1) / 2 + 3.3,
        cy=(height - 1) / 2 - 2.1,
        distortion=distortion,
    )


def scene_depth(camera: CameraMessage, seed: int = 0) -> np.ndarray:
    """A tilted floor with a box in front of it and 1 % noise: realistic validity and edges."""
    rays = ray_grid(camera).rays
    depth = 3.0 / (rays @ np.array([0.1, 0.5, 0.8], dtype=np.float32))
    h, w = depth.shape
    depth[h // 3 : 2 * h // 3, w // 3 : w // 2] = 1.2
    depth *= 1 + 0.01 * np.random.default_rng(seed).standard_normal(depth.shape, dtype=np.float32)
    return np.ascontiguousarray(depth, dtype=np.float32)


def projection_rows(runs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for width, height in SIZES:
        camera = camera_for(width, height)
        grid = ray_grid(camera)
        depth = scene_depth(camera)
        intrinsic = o3d.camera.PinholeCameraIntrinsic(width, height, camera.fx, camera.fy, camera.cx, camera.cy)
        extrinsic = np.eye(4)

        def open3d_call(depth: np.ndarray = depth, intrinsic: Any = intrinsic, extrinsic: Any = extrinsic) -> Any:
            return o3d.geometry.PointCloud.create_from_depth_image(
                # numpy arrays are buffers, but numpy's stubs say so only from Python 3.12 on.
                o3d.geometry.Image(depth),  # type: ignore[call-overload]
                intrinsic,
                extrinsic,
                depth_scale=1.0,
                depth_trunc=TRUNC,
            )

        def open3d_numpy() -> np.ndarray:
            return np.asarray(open3d_call().points)

        def ours_same_rules(depth: np.ndarray = depth, grid: Any = grid) -> np.ndarray:
            return points_from_depth(depth, grid, valid_depth_mask(depth, max_range=TRUNC, edge_threshold=None))

        def ours_edges(depth: np.ndarray = depth, grid: Any = grid) -> np.ndarray:
            return points_from_depth(depth, grid, valid_depth_mask(depth, max_range=TRUNC))

        mask = valid_depth_mask(depth, max_range=TRUNC, edge_threshold=None)

        def ours_points_only(depth: np.ndarray = depth, grid: Any = grid, mask: np.ndarray = mask) -> np.ndarray:
            return points_from_depth(depth, grid, mask)

        reference, ours = open3d_numpy(), ours_same_rules()
        assert reference.shape == ours.shape and np.allclose(reference, ours, rtol=1e-5, atol=1e-5), "results differ"
        cases = {
            "Open3D create_from_depth_image": open3d_call,
            "Open3D create_from_depth_image + np.asarray(points)": open3d_numpy,
            "ours: valid_depth_mask (no edge rule) + points_from_depth": ours_same_rules,
            "ours: valid_depth_mask (edge rule 0.05) + points_from_depth": ours_edges,
            "ours: points_from_depth only (mask given)": ours_points_only,
        }
        for name, fn in cases.items():
            rows.append({"size": f"{width}x{height}", "case": name, "points": len(ours), **measure(fn, runs)})
        for label, distortion in (("pinhole", ()), ("5-coefficient distortion", (-0.28, 0.09, 0.001, -0.001, 0.0))):
            cold = camera_for(width, height, distortion)

            def build(cold: CameraMessage = cold) -> None:
                ray_grid.cache_clear()
                ray_grid(cold)

            rows.append(
                {
                    "size": f"{width}x{height}",
                    "case": f"ray_grid, cold cache ({label}, once per camera)",
                    "points": width * height,
                    **measure(build, runs=5, warmup=1),
                }
            )
    return rows


def pipeline_rows(runs: int) -> list[dict[str, Any]]:
    camera = camera_for(640, 480)
    photo = cv2.imread(str(PHOTO))
    if photo is None:
        raise FileNotFoundError(f"cannot decode the sample photo {PHOTO}")
    bgr = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    depth = scene_depth(camera)
    processor = FrameProcessor(ProcessingConfig(), "metric")  # ORB, 200 keypoints, cloud on, no voxel
    stages: dict[str, list[float]] = {"projection": [], "detection": [], "keypoints": [], "pointcloud": [], "total": []}
    keypoints = []
    for i in range(runs + 5):
        timing: dict[str, float] = {}
        start = time.perf_counter()
        result = processor.process(rgb, depth, camera, pts=i, frame_index=i, timing=timing)
        total = (time.perf_counter() - start) * 1e3
        if i >= 5:
            for stage in ("projection", "detection", "keypoints", "pointcloud"):
                stages[stage].append(timing[stage])
            stages["total"].append(total)
            keypoints.append(len(result.message.points))
    points = len(result.points)
    return [
        {
            "size": "640x480",
            "case": f"FrameProcessor stage: {stage}",
            "points": points,
            "keypoints": statistics.median(keypoints),
            **summary(samples),
        }
        for stage, samples in stages.items()
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | case | points | median ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['size']} | {row['case']} | {row['points']} | {row['median_ms']:.2f} | {row['p95_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "projection.json")
    args = parser.parse_args()

    projection = projection_rows(args.runs)
    pipeline = pipeline_rows(args.runs)
    print("## Depth → points\n")
    print(markdown(projection))
    print("\n## FrameProcessor at 640×480 (ORB, 200 keypoints, cloud on)\n")
    print(markdown(pipeline))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "open3d": o3d.__version__,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }
    args.output.write_text(
        json.dumps({"environment": environment, "projection": projection, "pipeline": pipeline}, indent=2) + "\n"
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
