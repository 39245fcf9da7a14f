"""TensorRT engines (``tensorrt_plan``) from the exported ONNX, and the ORT-TensorRT accelerator options.

An engine is built for one GPU model and TensorRT version, so it must be built
on (a twin of) the serving machine. ``tensorrt`` is imported only when a build
is asked for; without it or without a GPU the build fails with a clear message.
"""

from __future__ import annotations

import ctypes
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from dronedepth.contract import INPUT_NAME, MIN_SIDE
from dronedepth.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # batch, height, width


@dataclass(frozen=True)
class TrtProfile:
    """An optimisation profile over ``IMAGE [batch, H, W, 3]``: min, opt and max (batch, H, W).

    The network runs at ≥ input_size on the short side and proportionally more
    on the long side, so the widest aspect ratio in the box (min H with max W,
    or the reverse) sets the engine's activation memory.
    """

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for name, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 3 or shape[0] < 1 or shape[1] < MIN_SIDE or shape[2] < MIN_SIDE:
                raise ConfigError(f"TensorRT profile {name} {shape}: need batch ≥ 1 and H, W ≥ {MIN_SIDE}")
        for i, axis in enumerate(("batch", "height", "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise ConfigError(
                    f"TensorRT profile: {axis} must satisfy min ≤ opt ≤ max, "
                    f"got {self.min[i]}, {self.opt[i]}, {self.max[i]}"
                )

    @classmethod
    def parse(cls, text: str) -> TrtProfile:
        """``BxHxW:BxHxW:BxHxW`` (min:opt:max), e.g. ``1x240x320:1x480x640:8x720x1280``."""
        parts = text.strip().split(":")
        shapes: list[tuple[int, ...]] = []
        for part in parts:
            if not re.fullmatch(r"\d+x\d+x\d+", part.strip()):
                shapes = []
                break
            shapes.append(tuple(int(v) for v in part.strip().split("x")))
        if len(shapes) != 3:
            raise ConfigError(
                f"bad --trt-profile {text!r}: expected min:opt:max as BxHxW:BxHxW:BxHxW, "
                "e.g. 1x240x320:1x480x640:8x720x1280"
            )
        return cls(*shapes)  # type: ignore[arg-type]

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """min, opt, max shapes of the ``IMAGE`` tensor (with the channel axis)."""
        return tuple((*shape, 3) for shape in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def ort_options(self) -> dict[str, str]:
        """ONNX Runtime TensorRT EP ``trt_profile_*_shapes`` values."""
        mn, op, mx = ("x".join(str(v) for v in s) for s in self.input_shapes())
        return {
            "trt_profile_min_shapes": f"{INPUT_NAME}:{mn}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{op}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{mx}",
        }

    def __str__(self) -> str:
        return ":".join("x".join(str(v) for v in s) for s in (self.min, self.opt, self.max))


def default_profile(max_batch_size: int) -> TrtProfile:
    """For 640×480-class frames: 320×240 .. 1280×720, tuned for one 640×480 frame."""
    return TrtProfile((1, 240, 320), (1, 480, 640), (max(1, max_batch_size), 720, 1280))


def gpu_count() -> int:
    """NVIDIA GPUs visible through the CUDA driver (0 when there is no driver)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a ConfigError saying what is missing."""
    if gpu_count() == 0:
        raise ConfigError(
            "--trt builds a TensorRT engine, which needs an NVIDIA GPU (and driver) on this machine; none was found. "
            "Export ONNX here and build the engine on the serving GPU (dronedepth export ... --trt there), "
            "or use --ort-trt to let Triton's ONNX Runtime build TensorRT engines itself"
        )
    try:
        import tensorrt
    except ImportError as exc:
        raise ConfigError(
            "--trt needs the TensorRT Python package: pip install tensorrt (matching the serving Triton's TensorRT)"
        ) from exc
    return tensorrt


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: TrtProfile,
    *,
    fp16: bool = True,
    workspace_gib: float = 4.0,
) -> Path:
    """Serialise a TensorRT engine for ``onnx_path`` with one optimisation profile."""
    trt = require_tensorrt()
    plan_path = Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8; implicit in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        # LayerNorm loses accuracy in FP16 (TensorRT warns about it): keep it FP32. Softmax is left to
        # TensorRT so that its fused attention kernels (FP32 accumulation inside) stay available.
        kept = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                kept += 1
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        log.info("TensorRT FP16 build; %d LayerNorm layers kept in FP32", kept)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile.input_shapes())
    config.add_optimization_profile(opt_profile)
    log.info("building the TensorRT engine (profile %s); this takes minutes", profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine: see its log above")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def engine_parity(plan_path: str | Path, onnx_path: str | Path) -> float | None:
    """nRMSE of the engine against the ONNX model on one 640×480 frame; None when it cannot run here."""
    import importlib.util

    import numpy as np

    from dronedepth.export.parity import onnx_session, run_onnx
    from dronedepth.export.reference import nrmse, synthetic_frames

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        log.info("engine not compared with ONNX here: needs a CUDA build of torch for the buffers")
        return None
    frames = synthetic_frames(480, 640, 1, seed=11)
    return nrmse(np.asarray(run_engine(plan_path, frames)), run_onnx(onnx_session(onnx_path), frames))


def run_engine(plan_path: str | Path, frames: object) -> object:
    """Run an engine on uint8 frames ``[B, H, W, 3]`` (numpy); needs CUDA-enabled torch for buffers."""
    import numpy as np
    import torch

    trt = require_tensorrt()
    if not torch.cuda.is_available():
        raise ConfigError("running a TensorRT engine here needs a CUDA build of torch for the buffers")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    context = engine.create_execution_context()
    image = torch.from_numpy(np.ascontiguousarray(frames)).cuda()
    context.set_input_shape(INPUT_NAME, tuple(image.shape))
    out_name = next(
        engine.get_tensor_name(i) for i in range(engine.num_io_tensors) if engine.get_tensor_name(i) != INPUT_NAME
    )
    depth = torch.empty(tuple(context.get_tensor_shape(out_name)), dtype=torch.float32, device="cuda")
    context.set_tensor_address(INPUT_NAME, image.data_ptr())
    context.set_tensor_address(out_name, depth.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise ExportError("TensorRT execution failed")
    stream.synchronize()
    return depth.cpu().numpy()
