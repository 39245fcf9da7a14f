"""The model contract: what the exported graph, Triton and the gateway agree on.

The exporter writes these names into the ONNX graph and ``config.pbtxt``; the
gateway reads the actual names and types from Triton's model metadata and only
uses these as defaults and for validation.
"""

from typing import Final, Literal, get_args

DepthKind = Literal["metric", "relative"]
"""What a model's output means: ``metric`` is depth in metres, ``relative`` affine-invariant disparity (no scale)."""
DEPTH_KINDS: Final[tuple[DepthKind, ...]] = get_args(DepthKind)
"""Every :data:`DepthKind`, in this order: the binary stream format encodes a kind as its index here."""

MODEL_NAME: Final = "depth_anything_v2"
INPUT_NAME: Final = "IMAGE"
"""UINT8 ``[batch, H, W, 3]``, RGB, any H and W of at least ``MIN_SIDE``."""
OUTPUT_NAME: Final = "DEPTH"
"""FP32 ``[batch, ceil(H / s), ceil(W / s)]`` for the model's depth stride ``s``: metres for metric models,
disparity for relative ones."""
MIN_SIDE: Final = 14
PATCH_SIZE: Final = 14
DEFAULT_INPUT_SIZE: Final = 518

GRPC_PORT: Final = 8001
HTTP_PORT: Final = 8000
METRICS_PORT: Final = 8002
GATEWAY_PORT: Final = 8080

# Keys of the ``parameters`` block in config.pbtxt and of the ONNX metadata.
PARAM_ENCODER: Final = "encoder"
PARAM_DEPTH_KIND: Final = "depth_kind"
PARAM_MAX_DEPTH: Final = "max_depth"
PARAM_INPUT_SIZE: Final = "input_size"
PARAM_PRECISION: Final = "precision"
PARAM_WEIGHT_SOURCE: Final = "weight_source"
PARAM_RANDOM_INIT: Final = "random_init"
PARAM_DEPTH_STRIDE: Final = "depth_stride"
"""Absent: 1 (models exported before the stride existed return full-resolution depth)."""

DEPTH_STRIDES: Final = (1, 2, 4)
"""The depth strides a model may declare (see :func:`depth_grid_shape`)."""
DEFAULT_DEPTH_STRIDE: Final = 2
"""What an export serves unless told otherwise: a quarter of the pixels (and of the gRPC payload and the
gateway's per-pixel work) while every default output keeps its resolution (5° obstacle sectors, 5×5 keypoint
depth windows, 0.2 m map voxels)."""


def check_depth_stride(stride: object) -> int:
    """``stride`` as an int, or ValueError naming it when it is not one of :data:`DEPTH_STRIDES`."""
    if isinstance(stride, int) and not isinstance(stride, bool) and stride in DEPTH_STRIDES:
        return stride
    raise ValueError(f"depth stride must be one of {', '.join(map(str, DEPTH_STRIDES))}, got {stride!r}")


def depth_grid_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    """The ``(rows, columns)`` of depth a model of depth stride ``stride`` returns for an ``H × W`` frame.

    Depth at stride ``s`` is the full-resolution depth sampled at every
    ``s``-th row and column starting at 0 (``depth_full[::s, ::s]``): depth
    pixel ``(j, i)`` is image pixel ``(s·j, s·i)``, so the shape is
    ``(ceil(H / s), ceil(W / s))``.
    """
    return -(-height // stride), -(-width // stride)


def depth_stride_of(height: int, width: int, depth_shape: tuple[int, ...]) -> int:
    """The stride whose :func:`depth_grid_shape` for an ``H × W`` frame is ``depth_shape``; ValueError if none.

    Unambiguous for frames of at least :data:`MIN_SIDE` pixels a side.
    """
    for stride in DEPTH_STRIDES:
        if tuple(depth_shape) == depth_grid_shape(height, width, stride):
            return stride
    raise ValueError(
        f"depth of shape {tuple(depth_shape)} fits no depth stride ({', '.join(map(str, DEPTH_STRIDES))}) "
        f"of a {width}x{height} frame"
    )
