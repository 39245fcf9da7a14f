"""Synthetic depth models with the export contract, for tests and benchmarks without weights.

They take ``IMAGE`` UINT8 ``[batch, H, W, 3]`` and return ``DEPTH`` FP32
``[batch, H, W]`` for any batch, H and W, like the real exported model, and
:func:`write_model` lays them out in a model repository with a
``config.pbtxt`` in the exporter's format. :func:`tiny_depth_model` has a
depth stride like an export (by default the exporter's): its output is that
depth at every ``s``-th row and column, and the stride it records in the ONNX
metadata is what :func:`write_model` declares. Needs ``onnx`` (the export extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from dronedepth.contract import (
    DEFAULT_DEPTH_STRIDE,
    DEFAULT_INPUT_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    PARAM_DEPTH_KIND,
    PARAM_DEPTH_STRIDE,
    PARAM_ENCODER,
    PARAM_INPUT_SIZE,
    PARAM_MAX_DEPTH,
    PARAM_PRECISION,
    PARAM_RANDOM_INIT,
    PARAM_WEIGHT_SOURCE,
    check_depth_stride,
)

OPSET = 18
IR_VERSION = 9  # readable by onnxruntime >= 1.16


def _io(depth_stride: int = 1) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 3])
    grid = ["height", "width"] if depth_stride == 1 else ["depth_rows", "depth_columns"]
    depth = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", *grid])
    return image, depth


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dronedepth")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_depth_model(depth_stride: int = DEFAULT_DEPTH_STRIDE) -> onnx.ModelProto:
    """Depth = 0.5 + 4 × luma / 255 at every ``depth_stride``-th pixel: a few element-wise ops, microseconds."""
    depth_stride = check_depth_stride(depth_stride)
    image, depth = _io(depth_stride)
    nodes = [
        # image[:, ::s, ::s]: the pixels a model of this depth stride returns depth for.
        helper.make_node("Slice", [INPUT_NAME, "starts", "ends", "axes", "steps"], ["sampled"]),
        helper.make_node("Cast", ["sampled"], ["rgb"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["rgb", "luma_weights"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "channel_axis"], ["luma"], keepdims=0),
        helper.make_node("Mul", ["luma", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], [OUTPUT_NAME]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0.299, 0.587, 0.114], np.float32), "luma_weights"),
        numpy_helper.from_array(np.array([3], np.int64), "channel_axis"),
        numpy_helper.from_array(np.array(4.0 / 255.0, np.float32), "scale"),
        numpy_helper.from_array(np.array(0.5, np.float32), "offset"),
        numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max] * 2, np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array([depth_stride] * 2, np.int64), "steps"),
    ]
    model = _finish(helper.make_graph(nodes, "tiny_depth", [image], [depth], initializers))
    model.metadata_props.add(key=PARAM_DEPTH_STRIDE, value=str(depth_stride))
    return model


def conv_depth_model(channels: int = 64, layers: int = 3, stride: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A small conv net shaped like a depth model: patchify, ``layers`` 3×3 convs, upsample to H×W.

    Compute grows with H×W×channels²×layers: 64 channels, 3 layers at 480×640
    cost about 4.5 GFLOP, tens of milliseconds on a laptop CPU.
    """
    rng = np.random.default_rng(seed)
    image, depth = _io()

    def weights(name: str, out_c: int, in_c: int, k: int) -> onnx.TensorProto:
        scale = np.sqrt(2.0 / (in_c * k * k))
        return numpy_helper.from_array((rng.standard_normal((out_c, in_c, k, k)) * scale).astype(np.float32), name)

    initializers = [
        numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), "inv255"),
        weights("w_patch", channels, 3, stride),
        weights("w_head", 1, channels, 1),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([3], np.int64), "three"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["rgb"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["rgb", "inv255"], ["unit"]),
        helper.make_node("Transpose", ["unit"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["nchw", "w_patch"], ["patch"], kernel_shape=[stride, stride], strides=[stride, stride]
        ),
        helper.make_node("Relu", ["patch"], ["h0"]),
    ]
    for i in range(layers):
        initializers.append(weights(f"w{i}", channels, channels, 3))
        nodes += [
            helper.make_node("Conv", [f"h{i}", f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"]),
        ]
    nodes += [
        helper.make_node("Conv", [f"h{layers}", "w_head"], ["coarse"], kernel_shape=[1, 1]),
        # sizes = [batch, 1, H, W] taken from the input image
        helper.make_node("Shape", ["coarse"], ["coarse_shape"]),
        helper.make_node("Slice", ["coarse_shape", "zero", "two"], ["batch_and_channel"]),
        helper.make_node("Shape", [INPUT_NAME], ["image_shape"]),
        helper.make_node("Slice", ["image_shape", "one", "three"], ["height_width"]),
        helper.make_node("Concat", ["batch_and_channel", "height_width"], ["sizes"], axis=0),
        helper.make_node("Resize", ["coarse", "", "", "sizes"], ["fine"], mode="linear"),
        helper.make_node("Squeeze", ["fine", "one"], ["squeezed"]),
        helper.make_node("Softplus", ["squeezed"], [OUTPUT_NAME]),
    ]
    return _finish(helper.make_graph(nodes, "conv_depth", [image], [depth], initializers))


def ground_disparity_model(gain: float = 1.0) -> onnx.ModelProto:
    """A relative model that sees flat ground: disparity ``gain · max(0, (v + ½ − H/2) / (W/2))`` at row ``v``.

    For a level camera with its principal point at the image centre
    (``cy = H/2 − ½``) and ``fy = (W/2) / tan(hfov/2)`` over flat ground
    ``h`` metres below (the drone's synthetic scene), the true inverse depth of
    row ``v`` is ``(v − cy) / (fy · h)``: this output is that times
    ``gain · h / tan(hfov/2)``, an unknown scale as a relative model's
    disparity has, and 0 (no depth) above the horizon. It ignores the image:
    whatever stands on the ground is seen as ground.
    """
    image, depth = _io()
    initializers = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array([3], np.int64), "three"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
    ]
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], ["image_shape"]),
        helper.make_node("Slice", ["image_shape", "zero", "three"], ["out_shape"]),  # [batch, H, W]
        helper.make_node("Slice", ["image_shape", "one", "two"], ["h_int"]),
        helper.make_node("Slice", ["image_shape", "two", "three"], ["w_int"]),
        helper.make_node("Cast", ["h_int"], ["h"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w_int"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("Squeeze", ["h", "zero"], ["h_scalar"]),
        helper.make_node("Range", ["zero_f", "h_scalar", "one_f"], ["rows"]),  # 0, 1, ..., H − 1
        helper.make_node("Mul", ["h", "half"], ["half_h"]),
        helper.make_node("Mul", ["w", "half"], ["half_w"]),
        helper.make_node("Add", ["rows", "half"], ["row_centres"]),
        helper.make_node("Sub", ["row_centres", "half_h"], ["below_centre"]),
        helper.make_node("Div", ["below_centre", "half_w"], ["slope"]),
        helper.make_node("Relu", ["slope"], ["ground"]),
        helper.make_node("Mul", ["ground", "gain"], ["disparity"]),
        helper.make_node("Reshape", ["disparity", "column"], ["disparity_column"]),  # [H, 1]
        helper.make_node("Expand", ["disparity_column", "out_shape"], [OUTPUT_NAME]),
    ]
    return _finish(helper.make_graph(nodes, "ground_disparity", [image], [depth], initializers))


def write_model(
    repository: str | Path,
    model: onnx.ModelProto,
    *,
    name: str = MODEL_NAME,
    max_batch_size: int = 8,
    max_queue_size: int = 32,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    warmup_hw: tuple[int, int] | None = None,
    parameters: dict[str, str] | None = None,
) -> Path:
    """Write ``repository/name/config.pbtxt`` and ``repository/name/1/model.onnx``; return the model directory.

    The config declares the depth stride the model records in its metadata (none: 1).
    """
    model_dir = Path(repository) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")

    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    config.input.add(name=INPUT_NAME, data_type=mc.TYPE_UINT8, dims=[-1, -1, 3])
    config.output.add(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[-1, -1])
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.max_queue_size = max_queue_size
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    if warmup_hw is not None:
        warmup = config.model_warmup.add(name=f"frame_{warmup_hw[0]}x{warmup_hw[1]}", batch_size=1)
        sample = warmup.inputs[INPUT_NAME]
        sample.data_type = mc.TYPE_UINT8
        sample.dims.extend([*warmup_hw, 3])
        sample.zero_data = True
    values = {
        PARAM_ENCODER: "synthetic",
        PARAM_DEPTH_KIND: "relative",
        PARAM_MAX_DEPTH: "0",
        PARAM_INPUT_SIZE: str(DEFAULT_INPUT_SIZE),
        PARAM_PRECISION: "fp32",
        PARAM_WEIGHT_SOURCE: "synthetic",
        PARAM_RANDOM_INIT: "true",
        PARAM_DEPTH_STRIDE: next((p.value for p in model.metadata_props if p.key == PARAM_DEPTH_STRIDE), "1"),
        **(parameters or {}),
    }
    for key, value in values.items():
        config.parameters[key].string_value = value
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
    return model_dir
