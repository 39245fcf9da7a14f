"""The official inference path in numpy/cv2 + PyTorch, the yardstick for the exported graph.

Mirrors Depth Anything V2's ``infer_image``: RGB / 255 (float64), cv2 resize
with INTER_CUBIC by the lower-bound rule, ImageNet normalisation, the network
(eager, position embeddings resized with ``F.interpolate`` as the
implementation does), then bilinear ``align_corners=True`` back to H×W.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from dronedepth.contract import DEFAULT_INPUT_SIZE, PATCH_SIZE
from dronedepth.export.architecture import DepthAnythingV2
from dronedepth.export.graph import IMAGENET_MEAN, IMAGENET_STD


def lower_bound_size_numpy(
    height: int, width: int, input_size: int = DEFAULT_INPUT_SIZE, multiple: int = PATCH_SIZE
) -> tuple[int, int]:
    """The official ``Resize.get_size`` (keep_aspect_ratio, lower_bound), float64 as written there."""
    scale_h = input_size / height
    scale_w = input_size / width
    if scale_w > scale_h:
        scale_h = scale_w
    else:
        scale_w = scale_h

    def constrain(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        if y < input_size:
            y = int(np.ceil(x / multiple) * multiple)
        return y

    return constrain(scale_h * height), constrain(scale_w * width)


def preprocess_official(rgb: NDArray[np.uint8], input_size: int = DEFAULT_INPUT_SIZE) -> NDArray[np.float32]:
    """One RGB uint8 frame ``[H, W, 3]`` -> float32 ``[3, h, w]`` as the official transform."""
    import cv2  # only the reference needs OpenCV

    height, width = rgb.shape[:2]
    new_h, new_w = lower_bound_size_numpy(height, width, input_size)
    resized = cv2.resize(rgb / 255.0, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    image = (resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)


@contextmanager
def eager_pos_embed(model: DepthAnythingV2) -> Iterator[DepthAnythingV2]:
    """Temporarily use the implementation's own ``F.interpolate`` for position embeddings."""
    before = model.pretrained.traceable
    model.set_traceable(False)
    try:
        yield model
    finally:
        model.set_traceable(before)


@torch.no_grad()
def reference_depth(
    model: DepthAnythingV2, frames: NDArray[np.uint8], input_size: int = DEFAULT_INPUT_SIZE
) -> NDArray[np.float32]:
    """Depth ``[B, H, W]`` for RGB uint8 frames ``[B, H, W, 3]`` (or one ``[H, W, 3]``) the official way."""
    batch = frames[None] if frames.ndim == 3 else frames
    out = []
    with eager_pos_embed(model):
        for rgb in batch:
            x = torch.from_numpy(preprocess_official(rgb, input_size)).unsqueeze(0)
            depth = model(x.to(next(model.parameters()).dtype)).float()
            depth = F.interpolate(depth[:, None], rgb.shape[:2], mode="bilinear", align_corners=True)[0, 0]
            out.append(depth.numpy())
    return np.stack(out)


def nrmse(pred: NDArray[np.floating], ref: NDArray[np.floating]) -> float:
    """RMS error normalised by the reference's standard deviation."""
    pred64, ref64 = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if pred64.shape != ref64.shape:
        raise ValueError(f"shape mismatch: {pred64.shape} vs {ref64.shape}")
    spread = float(ref64.std())
    err = float(np.sqrt(np.mean((pred64 - ref64) ** 2)))
    return err / spread if spread > 0 else (0.0 if err == 0 else float("inf"))


def synthetic_frames(height: int, width: int, batch: int = 1, seed: int = 0) -> NDArray[np.uint8]:
    """Deterministic camera-like RGB frames: smooth gradients and blobs plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for _ in range(batch):
        img = np.zeros((height, width, 3))
        for c in range(3):
            fy, fx = rng.uniform(0.5, 4.0, 2)
            img[..., c] = 0.5 + 0.25 * np.sin(2 * np.pi * (fy * yy / height + fx * xx / width) + rng.uniform(0, 6))
        for _ in range(6):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(0.05, 0.3) * min(height, width)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-0.4, 0.4, 3)
        img += rng.normal(0, 0.02, img.shape)
        frames.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(frames)
