"""Export ``DepthGraph`` to ONNX (FP32 or FP16) and stamp the model facts into its metadata.

Exporter choice, measured with torch 2.13: the TorchScript exporter
(``dynamo=False``) records the tensor-valued size arithmetic of ``graph.py`` as
ONNX shape ops, and the result matches the reference at every size tried. The
dynamo exporter rejects the same code (sizes derived from tensor values are
"data-dependent" for ``torch.export``), and on transformers' module it
specialises the traced sizes. Every export is checked by ``parity.py``.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from dronedepth import __version__
from dronedepth.contract import DEFAULT_INPUT_SIZE, INPUT_NAME, OUTPUT_NAME
from dronedepth.errors import ExportError
from dronedepth.export.facts import ModelFacts, Precision
from dronedepth.export.graph import DepthGraph
from dronedepth.export.reference import synthetic_frames
from dronedepth.export.weights import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17; TensorRT >= 8.6 and Triton's ORT parse it
EXPORTER = f"torch {torch.__version__} torchscript onnx exporter"
# Batch 2 and a non-square frame while tracing: nothing may depend on batch 1 or on H == W.
EXAMPLE_SHAPE = (2, 240, 320)


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    facts: ModelFacts
    seconds: float


def model_facts(loaded: LoadedModel, input_size: int, precision: Precision, depth_stride: int = 1) -> ModelFacts:
    info = loaded.info
    return ModelFacts(
        encoder=info.encoder,
        depth_kind=info.depth_kind,
        max_depth=info.max_depth,
        input_size=input_size,
        precision=precision,
        weight_source=info.weight_source,
        random_init=info.random_init,
        pos_embed_interp=info.pos_embed_interp,
        exporter=EXPORTER,
        depth_stride=depth_stride,
    )


def export_onnx(
    loaded: LoadedModel,
    path: str | Path,
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    opset: int = DEFAULT_OPSET,
    precision: Precision = "fp32",
    depth_stride: int = 1,
) -> OnnxExport:
    """Write ``path``: uint8 ``IMAGE [B, H, W, 3]`` -> float32 ``DEPTH [B, H, W]``, dynamic B, H, W.

    With ``depth_stride`` ``s`` the output is ``[B, ceil(H/s), ceil(W/s)]``: that depth at every ``s``-th
    row and column (the command's default is :data:`~dronedepth.contract.DEFAULT_DEPTH_STRIDE`; 1 here is
    the reference graph).

    FP16 keeps the frame preprocessing, LayerNorm, softmax and the final
    upsample in float32; inputs and outputs keep their types.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"unknown precision {precision!r}: use fp32 or fp16")
    half = precision == "fp16"
    # The FP16 graph gets its own copy so that the caller's FP32 model stays the reference.
    model = copy.deepcopy(loaded.model).half() if half else loaded.model
    try:
        graph = DepthGraph(model, input_size, half=half, depth_stride=depth_stride).eval()
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    batch, height, width = EXAMPLE_SHAPE
    example = torch.from_numpy(synthetic_frames(height, width, batch))
    dynamic = {0: "batch", 1: "height", 2: "width"}
    # The output's rows and columns are ceil(H/s) and ceil(W/s): their own names at a stride.
    out_dynamic = dynamic if depth_stride == 1 else {0: "batch", 1: "depth_rows", 2: "depth_columns"}
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter is deprecated and the tracer warns about the size tensors it records;
            # both are expected here, and the parity check is what proves the graph.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: out_dynamic},
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"ONNX export failed (opset {opset}): {exc}") from exc
    finally:
        loaded.model.set_traceable(False)
    seconds = time.perf_counter() - start
    facts = model_facts(loaded, input_size, precision, depth_stride)
    write_metadata(path, facts)
    return OnnxExport(path, facts, seconds)


def write_metadata(path: str | Path, facts: ModelFacts) -> None:
    """Replace the model's ``metadata_props`` with the facts (external weights stay where they are)."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    del proto.metadata_props[:]
    for key, value in facts.to_params().items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "dronedepth"
    proto.producer_version = __version__
    kind = f"metric depth in metres (max {facts.max_depth:g})" if facts.is_metric else "relative disparity (not metres)"
    stride = facts.depth_stride
    grid = (
        "H,W"
        if stride == 1
        else f"ceil(H/{stride}),ceil(W/{stride})] (depth stride {stride}: [H,W][::{stride},::{stride}]"
    )
    proto.doc_string = (
        f"Depth Anything V2 {facts.encoder}: {INPUT_NAME} uint8 [B,H,W,3] RGB -> {OUTPUT_NAME} float32 [B,{grid}], "
        f"{kind}." + (" RANDOM WEIGHTS: for tests only." if facts.random_init else "")
    )
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported model is not valid ONNX: {exc}") from exc


def read_onnx_facts(path: str | Path) -> ModelFacts:
    """The facts stored in an exported model's metadata."""
    proto = onnx.load(str(path), load_external_data=False)
    return ModelFacts.from_params({p.key: p.value for p in proto.metadata_props}, where=str(path))
