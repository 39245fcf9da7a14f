"""The Triton model repository: ``DIR/NAME/config.pbtxt`` and ``DIR/NAME/1/model.{onnx,plan}``.

``config.pbtxt`` is the contract the server and the gateway read: tensor names
and types, ``-1`` dims for any H and W, a bounded queue, warm-up, and the model
facts in ``parameters`` (read back with ``read_model_facts``).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dronedepth.contract import DEFAULT_DEPTH_STRIDE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from dronedepth.errors import ConfigError
from dronedepth.export.facts import ModelFacts
from dronedepth.export.tensorrt import TrtProfile

log = logging.getLogger(__name__)

Platform = Literal["onnxruntime_onnx", "tensorrt_plan"]
Device = Literal["cpu", "gpu"]
MODEL_FILES: dict[str, str] = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
VERSION = "1"
DEFAULT_REPOSITORY = "model_repository"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class OrtTensorRT:
    """Triton's ONNX Runtime backend building TensorRT engines itself (``gpu_execution_accelerator``)."""

    precision: Literal["FP16", "FP32"] = "FP16"
    workspace_bytes: int = 4 << 30
    engine_cache_path: str = "/tmp/dronedepth_trt_cache"
    profile: TrtProfile | None = None

    def parameters(self) -> dict[str, str]:
        params = {
            "precision_mode": self.precision,
            "max_workspace_size_bytes": str(self.workspace_bytes),
            # Engines take minutes to build: cache them across server restarts.
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": self.engine_cache_path,
            "trt_layer_norm_fp32_fallback": "true",
        }
        if self.profile is not None:
            params.update(self.profile.ort_options())
        return params


@dataclass(frozen=True)
class TritonModelConfig:
    """Everything ``config.pbtxt`` says; validates itself."""

    facts: ModelFacts
    name: str = MODEL_NAME
    platform: Platform = "onnxruntime_onnx"
    max_batch_size: int = 8
    instances: int = 1
    device: Device = "cpu"
    max_queue_size: int = 16
    queue_timeout_us: int | None = None
    """Queued requests older than this are rejected. ``None``: 0.5 s on GPU (a frame older than that is
    useless to a flying drone), 5 s on CPU (where one ViT-S frame alone takes about 0.5 s)."""
    max_queue_delay_us: int = 2_000
    warmup_hw: tuple[int, int] | None = (480, 640)
    ort_tensorrt: OrtTensorRT | None = None
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.queue_timeout_us is None:
            object.__setattr__(self, "queue_timeout_us", 500_000 if self.device == "gpu" else 5_000_000)
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"bad model name {self.name!r}: use letters, digits, '_', '-' or '.'")
        if self.platform not in MODEL_FILES:
            raise ConfigError(f"unknown platform {self.platform!r}: use {' or '.join(MODEL_FILES)}")
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"unknown device {self.device!r}: use cpu or gpu")
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be ≥ 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise ConfigError(f"--instances must be ≥ 1, got {self.instances}")
        if self.max_queue_size < 1 or self.queue_timeout_us < 1:  # type: ignore[operator]
            raise ConfigError("the queue needs a positive max size and timeout")
        if self.platform == "tensorrt_plan" and self.device != "gpu":
            raise ConfigError("a TensorRT plan runs on GPU only: use --device gpu with --trt")
        if self.ort_tensorrt is not None and (self.platform != "onnxruntime_onnx" or self.device != "gpu"):
            raise ConfigError("--ort-trt is an ONNX Runtime option on GPU: use it with --device gpu and without --trt")

    @property
    def model_file(self) -> str:
        return MODEL_FILES[self.platform]

    def render(self) -> str:
        """The config.pbtxt text."""
        kind = "KIND_GPU" if self.device == "gpu" else "KIND_CPU"
        lines = [
            f"# Written by 'dronedepth export': {describe(self.facts)}.",
            "# Weights live in 1/ (never committed); see README.md next to this folder.",
            f'name: "{self.name}"',
            f'platform: "{self.platform}"',
            f"max_batch_size: {self.max_batch_size}",
            "input [",
            "  {",
            f'    name: "{INPUT_NAME}"',
            "    data_type: TYPE_UINT8",
            "    dims: [ -1, -1, 3 ]",
            "  }",
            "]",
            "output [",
            "  {",
            f'    name: "{OUTPUT_NAME}"',
            "    data_type: TYPE_FP32",
            "    dims: [ -1, -1 ]",
            "  }",
            "]",
            "# Only requests of the same frame size are batched together.",
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {self.max_queue_delay_us}",
            "  default_queue_policy {",
            "    timeout_action: REJECT",
            f"    default_timeout_microseconds: {self.queue_timeout_us}",
            "    allow_timeout_override: true",
            f"    max_queue_size: {self.max_queue_size}",
            "  }",
            "}",
            "instance_group [",
            "  {",
            f"    count: {self.instances}",
            f"    kind: {kind}",
            "  }",
            "]",
        ]
        if self.ort_tensorrt is not None:
            lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [", "      {"]
            lines.append('        name: "tensorrt"')
            for key, value in self.ort_tensorrt.parameters().items():
                lines.append(f'        parameters {{ key: "{key}" value: "{_escape(value)}" }}')
            lines += ["      }", "    ]", "  }", "}"]
        if self.warmup_hw is not None:
            h, w = self.warmup_hw
            lines += [
                "model_warmup [",
                "  {",
                f'    name: "random_frame_{w}x{h}"',
                "    batch_size: 1",
                "    inputs {",
                f'      key: "{INPUT_NAME}"',
                "      value: {",
                "        data_type: TYPE_UINT8",
                f"        dims: [ {h}, {w}, 3 ]",
                "        random_data: true",
                "      }",
                "    }",
                "  }",
                "]",
            ]
        params = {**self.facts.to_params(), **self.extra_parameters}
        for key, value in params.items():
            lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{_escape(value)}" }} }}')
        return "\n".join(lines) + "\n"


DEFAULT_HUB_MODEL = "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf"


def default_config() -> TritonModelConfig:
    """The config checked into ``model_repository/`` for the default model (metric outdoor ViT-S, Apache-2.0).

    It is what ``dronedepth export --model DEFAULT_HUB_MODEL`` writes, less the
    exporter version; the weights (``1/model.onnx``) are never committed.
    """
    facts = ModelFacts(
        encoder="vits",
        depth_kind="metric",
        max_depth=80.0,
        input_size=518,
        precision="fp32",
        weight_source=f"huggingface {DEFAULT_HUB_MODEL}",
        random_init=False,
        pos_embed_interp="transformers",
        depth_stride=DEFAULT_DEPTH_STRIDE,
    )
    return TritonModelConfig(facts=facts)


def describe(facts: ModelFacts) -> str:
    kind = f"metric depth in metres (max {facts.max_depth:g})" if facts.is_metric else "relative disparity, NOT metres"
    rnd = "; RANDOM WEIGHTS (tests only)" if facts.random_init else ""
    stride = f", depth stride {facts.depth_stride}" if facts.depth_stride > 1 else ""
    return f"Depth Anything V2 {facts.encoder}, {kind}{stride}, {facts.precision}, from {facts.weight_source}{rnd}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


_PARAM = re.compile(
    r'parameters\s*(?::\s*)?\{\s*key\s*:\s*"((?:[^"\\]|\\.)*)"\s*value\s*:?\s*\{\s*string_value\s*:\s*"((?:[^"\\]|\\.)*)"\s*\}\s*\}'
)


def parse_parameters(text: str) -> dict[str, str]:
    """The ``parameters`` map of a config.pbtxt (string values)."""
    return {_unescape(k): _unescape(v) for k, v in _PARAM.findall(text)}


def write_repository(
    config: TritonModelConfig, out_dir: str | Path, model_file: str | Path, extra_files: list[Path] | None = None
) -> Path:
    """Write ``out_dir/NAME/config.pbtxt`` and move ``model_file`` to ``out_dir/NAME/1/``; returns the model dir."""
    model_dir = Path(out_dir) / config.name
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / config.model_file
    if target.exists():
        log.info("replacing %s", target)
    shutil.move(str(model_file), target)
    for extra in extra_files or []:  # external ONNX weights, if the model was too big for one file
        shutil.move(str(extra), version_dir / extra.name)
    (model_dir / "config.pbtxt").write_text(config.render())
    return model_dir


def read_model_facts(path: str | Path) -> ModelFacts:
    """The facts of an exported model, from a model dir, its config.pbtxt, or a model.onnx.

    config.pbtxt ``parameters`` are used when present, else the ONNX metadata
    of ``1/model.onnx``.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        from dronedepth.export.onnx_export import read_onnx_facts

        return read_onnx_facts(path)
    config = path if path.name == "config.pbtxt" else path / "config.pbtxt"
    if not config.is_file():
        raise ConfigError(f"no config.pbtxt at {config}: export a model with 'dronedepth export --out DIR'")
    params = parse_parameters(config.read_text())
    if params:
        return ModelFacts.from_params(params, where=str(config))
    onnx_file = config.parent / VERSION / MODEL_FILES["onnxruntime_onnx"]
    if onnx_file.is_file():
        from dronedepth.export.onnx_export import read_onnx_facts

        return read_onnx_facts(onnx_file)
    raise ConfigError(f"{config} has no model parameters and there is no {onnx_file}: re-export the model")
