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
"""FP32 ``[batch, H, W]``: metres for metric models, disparity for relative ones."""
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
