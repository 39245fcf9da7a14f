"""The served graph: camera frame in, depth at the frame's resolution out.

``IMAGE`` uint8 ``[B, H, W, 3]`` RGB -> official preprocessing (lower-bound
resize to multiples of 14 with cv2's bicubic kernel, /255, ImageNet
normalisation) -> network -> bilinear (align_corners=True) back to H×W ->
``DEPTH`` float32 ``[B, H, W]``. Every size is computed from the input shape
inside the graph, so any H, W (≥ 14) and batch work.

With a depth stride ``s`` > 1 the graph returns that H×W depth at every
``s``-th row and column only (``[..., ::s, ::s]``, shape ``ceil(H/s)`` ×
``ceil(W/s)``, see :func:`dronedepth.contract.depth_grid_shape`), computing
just those samples of the bilinear upsample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dronedepth.contract import DEFAULT_INPUT_SIZE, PATCH_SIZE, check_depth_stride
from dronedepth.export.architecture import DepthAnythingV2
from dronedepth.export.resample import (
    as_size,
    cubic_matrix,
    lower_bound_size,
    resize_cubic,
    strided_linear_matrix,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_input_size(input_size: int) -> int:
    """``input_size`` must be a positive multiple of the patch size (14)."""
    if input_size < PATCH_SIZE or input_size % PATCH_SIZE:
        nearest = max(PATCH_SIZE, round(input_size / PATCH_SIZE) * PATCH_SIZE)
        raise ValueError(f"input size {input_size} is not a multiple of {PATCH_SIZE}: try {nearest}")
    return input_size


class DepthGraph(nn.Module):
    """uint8 NHWC RGB frames -> float32 NHW depth (the whole Triton model)."""

    # Buffers, registered in __init__ (nn.Module's attribute lookup would type them Tensor | Module).
    mean: Tensor
    std: Tensor

    def __init__(
        self, model: DepthAnythingV2, input_size: int = DEFAULT_INPUT_SIZE, half: bool = False, depth_stride: int = 1
    ) -> None:
        super().__init__()
        self.model = model.set_traceable(True)
        self.input_size = check_input_size(input_size)
        self.fp16 = half
        self.depth_stride = check_depth_stride(depth_stride)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, image: Tensor) -> Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float32 ``[B, 3, h, w]`` (h, w multiples of 14)."""
        height, width = as_size(image.shape[1]), as_size(image.shape[2])
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        new_h, new_w = lower_bound_size(height, width, self.input_size, PATCH_SIZE)
        # cv2.resize's step is in/out (no scale factor is given to it).
        rows = cubic_matrix(height, new_h, height.to(torch.float32) / new_h.to(torch.float32))
        cols = cubic_matrix(width, new_w, width.to(torch.float32) / new_w.to(torch.float32))
        x = resize_cubic(x, rows, cols)
        return (x - self.mean) / self.std

    def forward(self, image: Tensor) -> Tensor:
        x = self.preprocess(image)
        if self.fp16:
            x = x.half()
        depth = self.model(x).float()
        if self.depth_stride > 1:
            # Only the kept samples of the bilinear upsample: two small matrix products instead of H×W outputs.
            net_h, net_w = as_size(depth.shape[1]), as_size(depth.shape[2])
            rows = strided_linear_matrix(net_h, as_size(image.shape[1]), self.depth_stride)
            cols = strided_linear_matrix(net_w, as_size(image.shape[2]), self.depth_stride)
            return torch.matmul(torch.matmul(rows, depth), cols.transpose(0, 1))
        depth = F.interpolate(
            depth.unsqueeze(1), size=(image.shape[1], image.shape[2]), mode="bilinear", align_corners=True
        )
        return depth.squeeze(1)
