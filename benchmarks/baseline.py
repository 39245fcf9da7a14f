"""Section 3: the naive loop a user would write from the original Depth Anything V2 repository.

Per frame, in one thread, as the official ``infer_image`` and
``metric_depth/depth_to_pointcloud.py`` do it:

1. preprocessing: RGB / 255, cv2 bicubic resize by the lower-bound rule, ImageNet
   normalisation (:func:`export.reference.preprocess_official`);
2. PyTorch eager forward (position embeddings resized with ``F.interpolate``), then
   bilinear ``align_corners=True`` back to H×W;
3. a fresh ``np.meshgrid`` projection with the intrinsics;
4. ``o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))`` plus colours.

Same weights as the served model (random init: the same seed through
:func:`export.load_random_init`; checked against ONNX Runtime on one frame),
same input size, same frames, same thread count. It has no network and no
keypoints: it does less than our pipeline.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dronedepth.benchmarks.stats import summarize
from dronedepth.contract import INPUT_NAME, OUTPUT_NAME
from dronedepth.protocol import CameraMessage

__all__ = ["load_same_weights", "naive_baseline"]

log = logging.getLogger("dronedepth.benchmarks.baseline")

_STEPS = ("preprocess", "model", "upsample", "projection", "pointcloud")


def load_same_weights(facts: dict[str, Any]) -> Any:
    """The PyTorch model with the served model's weights, or raise ``LookupError`` saying why not."""
    from dronedepth.export.architecture import PosEmbedInterp
    from dronedepth.export.weights import load_hf, load_random_init

    source = str(facts.get("weight_source", ""))
    recorded_pos = facts.get("pos_embed_interp") or "official"
    if recorded_pos not in ("official", "transformers"):
        raise LookupError(f"the model facts name an unknown pos_embed_interp {recorded_pos!r}")
    pos: PosEmbedInterp = "transformers" if recorded_pos == "transformers" else "official"
    if facts.get("random_init"):
        seed_match = re.search(r"seed (\d+)", source)
        metric_match = re.search(r"metric (indoor|outdoor)", source)
        seed = int(seed_match.group(1)) if seed_match else 0
        return load_random_init(facts["encoder"], metric_match.group(1) if metric_match else None, seed, pos).model
    if source.startswith("huggingface ") and not source.startswith("huggingface directory"):
        try:
            return load_hf(source.split(" ", 1)[1], None, pos).model
        except Exception as exc:
            raise LookupError(f"cannot load {source} here ({exc}); the baseline needs the same weights") from exc
    raise LookupError(f"the served weights come from {source!r}, which the benchmark cannot reload by itself")


def naive_baseline(
    facts: dict[str, Any],
    onnx_path: Path,
    frames: list[NDArray[np.uint8]],
    camera: CameraMessage,
    *,
    threads: int,
    warmup: int,
    count: int,
) -> dict[str, Any]:
    """Per-frame latency (total and per step) and frame rate of the naive loop."""
    import open3d as o3d
    import torch
    import torch.nn.functional as F

    from dronedepth.export.reference import eager_pos_embed, nrmse, preprocess_official

    torch.set_num_threads(threads)
    input_size = int(facts["input_size"])
    started = time.perf_counter()
    model = load_same_weights(facts).eval()
    load_s = time.perf_counter() - started

    def infer_image(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.float32], dict[str, float]]:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        x = torch.from_numpy(preprocess_official(rgb, input_size)).unsqueeze(0)
        t1 = time.perf_counter()
        with torch.no_grad():
            depth = model(x)
            t2 = time.perf_counter()
            depth = F.interpolate(depth[:, None], rgb.shape[:2], mode="bilinear", align_corners=True)[0, 0]
        out = depth.numpy()
        t3 = time.perf_counter()
        times.update(preprocess=(t1 - t0) * 1e3, model=(t2 - t1) * 1e3, upsample=(t3 - t2) * 1e3)
        return out, times

    def naive_frame(rgb: NDArray[np.uint8]) -> dict[str, float]:
        depth, times = infer_image(rgb)
        t0 = time.perf_counter()
        height, width = depth.shape
        u, v = np.meshgrid(np.arange(width), np.arange(height))
        x = (u - camera.cx) / camera.fx
        y = (v - camera.cy) / camera.fy
        points = np.stack((np.multiply(x, depth), np.multiply(y, depth), depth), axis=-1).reshape(-1, 3)
        colors = rgb.reshape(-1, 3) / 255.0
        t1 = time.perf_counter()
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
        cloud.colors = o3d.utility.Vector3dVector(colors)
        t2 = time.perf_counter()
        times.update(projection=(t1 - t0) * 1e3, pointcloud=(t2 - t1) * 1e3)
        return times

    with eager_pos_embed(model):
        # Same weights? Compare with the served ONNX model on the first frame.
        import onnxruntime as ort

        reference = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        served = reference.run([OUTPUT_NAME], {INPUT_NAME: frames[0][None]})[0][0]
        del reference
        parity = nrmse(infer_image(frames[0])[0], served)
        for i in range(warmup):
            naive_frame(frames[i % len(frames)])
        samples: dict[str, list[float]] = {step: [] for step in (*_STEPS, "total")}
        begin = time.perf_counter()
        for i in range(count):
            start = time.perf_counter()
            times = naive_frame(frames[i % len(frames)])
            samples["total"].append((time.perf_counter() - start) * 1e3)
            for step in _STEPS:
                samples[step].append(times[step])
        elapsed = time.perf_counter() - begin
    return {
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "warmup_frames": warmup,
        "frames": count,
        "fps": count / elapsed,
        "steps_ms": {step: s.to_dict() for step, values in samples.items() if (s := summarize(values)) is not None},
        "parity_nrmse_vs_onnx": parity,
        "model_load_s": round(load_s, 2),
    }
