"""Resampling written as tensor arithmetic, so that exported graphs stay dynamic.

``F.interpolate`` with a size or scale computed in Python is frozen into the
graph when traced. Here every size is a tensor derived from the input's shape
and each resize is two matrix products with interpolation weights built in the
graph, so the ONNX model resizes correctly at any H and W.

The cubic kernel (a = -0.75, half-pixel centres, replicated borders) is the one
of both ``cv2.resize(..., INTER_CUBIC)`` and ``torch`` bicubic without
antialiasing; the only difference between the two is how the step (source
pixels per output pixel) is given, which callers pass explicitly.
"""

from __future__ import annotations

import torch
from torch import Tensor

CUBIC_A = -0.75


def as_size(value: int | Tensor) -> Tensor:
    """A 0-d int64 tensor for a size (keeps traced sizes traced)."""
    if isinstance(value, Tensor):
        return value.to(torch.int64)
    return torch.tensor(value, dtype=torch.int64)


def cubic_matrix(in_size: int | Tensor, out_size: int | Tensor, step: Tensor) -> Tensor:
    """Weights ``[out_size, in_size]`` of 1-D cubic resampling.

    ``step`` is source pixels per output pixel: ``in/out`` for a resize to a
    given size (cv2, torch ``size=``), ``1/scale_factor`` for torch's
    ``scale_factor=``. Source position of output ``i``: ``(i + 0.5) * step - 0.5``.
    """
    in_size = as_size(in_size)
    out_size = as_size(out_size)
    # Integer Range then Cast: TensorRT's parser takes dynamic Range limits only as integers. torch's stubs
    # type arange's limit as a Python number; a 0-d tensor is what keeps the size dynamic in the traced graph.
    src = (torch.arange(out_size).to(torch.float32) + 0.5) * step.to(torch.float32) - 0.5  # type: ignore[call-overload]
    left = torch.floor(src)
    t = src - left
    a = CUBIC_A
    # The four taps at left-1 .. left+2 (same formulas as torch's upsample_bicubic2d).
    s = 1.0 - t
    weights = (
        ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a,
        ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
        ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0,
        ((a * (s + 1.0) - 5.0 * a) * (s + 1.0) + 8.0 * a) * (s + 1.0) - 4.0 * a,
    )
    columns = torch.arange(in_size).to(torch.float32).unsqueeze(0)  # type: ignore[call-overload]
    last = (in_size - 1).to(torch.float32)
    matrix: Tensor | None = None
    for k, weight in enumerate(weights):
        # Taps outside the image read the border pixel (cv2 and torch both replicate).
        tap = torch.minimum(torch.clamp(left + float(k - 1), min=0.0), last)
        term = weight.unsqueeze(1) * (tap.unsqueeze(1) == columns).to(torch.float32)
        matrix = term if matrix is None else matrix + term
    assert matrix is not None
    return matrix


def strided_linear_matrix(in_size: int | Tensor, full_size: int | Tensor, stride: int) -> Tensor:
    """Weights ``[ceil(full_size / stride), in_size]``: every ``stride``-th output of a 1-D linear resize.

    The resize is ``in_size`` -> ``full_size`` with ``align_corners=True``
    (torch's ``bilinear``, as the official inference path upsamples depth):
    output ``i`` reads source position ``i * (in - 1) / (full - 1)``. Only the
    outputs ``0, stride, 2·stride, ...`` get a row, so a separable resize
    with these weights equals the full resize sliced ``[::stride]``.
    """
    in_size = as_size(in_size)
    full_size = as_size(full_size)
    outputs = torch.arange(0, full_size, stride).to(torch.float32)  # type: ignore[call-overload]
    last_in = (in_size - 1).to(torch.float32)
    src = outputs * last_in / torch.clamp(full_size - 1, min=1).to(torch.float32)
    left = torch.minimum(torch.floor(src), torch.clamp(last_in - 1.0, min=0.0))
    t = src - left
    right = torch.minimum(left + 1.0, last_in)
    columns = torch.arange(in_size).to(torch.float32).unsqueeze(0)  # type: ignore[call-overload]
    return (1.0 - t).unsqueeze(1) * (left.unsqueeze(1) == columns).to(torch.float32) + t.unsqueeze(1) * (
        right.unsqueeze(1) == columns
    ).to(torch.float32)


def resize_cubic(images: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Resize ``[..., H, W]`` with row weights ``[h, H]`` and column weights ``[w, W]``."""
    return torch.matmul(torch.matmul(rows, images), cols.transpose(0, 1))


def lower_bound_size(
    height: int | Tensor, width: int | Tensor, input_size: int, multiple: int = 14
) -> tuple[Tensor, Tensor]:
    """Network input size for a frame, by the official "lower_bound" rule, in exact integer arithmetic.

    scale = max(S/H, S/W); each side becomes round(side * scale / multiple) * multiple
    (round half to even, as numpy), never below S. The official code computes this
    in float64; exact rationals agree with it except on exact ties, where float64
    rounding itself decides (see ``reference.lower_bound_size_numpy``).
    """
    h = as_size(height)
    w = as_size(width)
    short = torch.minimum(h, w)
    den = short * multiple
    out = []
    for side in (h, w):
        num = side * input_size
        q = torch.div(num, den, rounding_mode="floor")
        twice_rem = (num - q * den) * 2
        up = (twice_rem > den) | ((twice_rem == den) & (torch.remainder(q, 2) == 1))
        q = q + up.to(torch.int64)
        out.append(torch.clamp(q * multiple, min=input_size))
    return out[0], out[1]
