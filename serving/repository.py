"""Read an exported model repository and derive the one the embedded CPU server runs.

``dronedepth export`` writes a repository for the official GPU Triton image:
``DIR/NAME/config.pbtxt`` (platform ``onnxruntime_onnx`` or ``tensorrt_plan``)
and ``DIR/NAME/<version>/model.onnx``. The Triton bundled with nvidia-pytriton
only has the Python backend, so for every exported model this module writes a
twin under a private runtime directory: the same name, inputs, outputs,
``max_batch_size``, dynamic batching, queue policy, warmup and ``parameters``,
with ``backend: "python"``, the ONNX files linked (not copied) into each
version directory and ``onnx_adapter.py`` as ``model.py``.
Clients see the model exactly as exported; the exported repository is never
written to (it may be read-only).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dronedepth.contract import MIN_SIDE, PARAM_DEPTH_STRIDE, check_depth_stride
from dronedepth.errors import ConfigError

LOG = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
DEFAULT_ONNX_FILE = "model.onnx"
DEFAULT_MAX_PIXELS = 3840 * 2160
"""Largest frame accepted by default: 4K UHD."""

ADAPTER_FILE = Path(__file__).with_name("onnx_adapter.py")
"""The Python-backend model (runs in the server environment: never imported here)."""
# Parameters the adapter reads (the same strings as in onnx_adapter.py; a test pins them).
PARAM_ONNX_FILE = "embedded.onnx_file"
PARAM_INTRA_OP_THREADS = "embedded.intra_op_threads"
PARAM_MAX_PIXELS = "embedded.max_pixels"
PARAM_MIN_SIDE = "embedded.min_side"

_EXPORT_HINT = "run 'dronedepth export' to write DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx"


@dataclass(frozen=True)
class AdapterSettings:
    """How the embedded server runs each exported model on CPU."""

    instances: int = 2
    """Model instances (each one its own stub process and ONNX Runtime session). Two by default: with
    one, Triton 2.51's dynamic batcher sometimes misses the wake-up of the instance it waits for and a
    request that arrives while the previous one finishes waits a full 500 ms (measured: 2 to 5 in
    every 120 back-to-back requests); an idle second instance takes it at once."""
    intra_op_threads: int | None = None
    """ONNX Runtime threads per instance; ``None``: every usable core. Instances mostly take turns
    (one finishes while the next starts), so each may use all cores; when several run at once they
    share them, without busy-waiting."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest H×W accepted per frame; larger frames get INVALID_ARGUMENT."""
    min_side: int = MIN_SIDE
    """Smallest H or W accepted."""
    queue_timeout_us: int | None = None
    """Replaces the exported queue timeout (0: none). A CPU is far slower than the GPU the export's
    timeout was chosen for: a frame may wait longer than one GPU inference before its turn."""

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ConfigError(f"instances must be at least 1, got {self.instances}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ConfigError(f"ONNX Runtime threads must be at least 1, got {self.intra_op_threads}")
        if self.queue_timeout_us is not None and self.queue_timeout_us < 0:
            raise ConfigError(f"the queue timeout must be 0 (none) or positive, got {self.queue_timeout_us} us")
        if self.max_pixels < self.min_side * self.min_side:
            raise ConfigError(f"max pixels must be at least {self.min_side * self.min_side}, got {self.max_pixels}")

    def threads(self) -> int:
        """The intra-op threads each instance gets."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return usable_cpus()


@dataclass(frozen=True)
class ExportedModel:
    """One model of an exported repository."""

    name: str
    directory: Path
    config: mc.ModelConfig
    onnx_files: dict[str, Path] = field(default_factory=dict)
    """Version directory name -> the ONNX file served for that version."""


def usable_cpus() -> int:
    """CPUs this process may run on (respects container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_config(path: Path) -> mc.ModelConfig:
    """Parse a text-format ``config.pbtxt``; raise :class:`ConfigError` naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{path} is not a valid Triton model configuration: {exc}") from exc


def read_repository(repository: str | os.PathLike[str]) -> list[ExportedModel]:
    """Every servable model in an exported repository, sorted by name."""
    root = Path(repository)
    if not root.is_dir():
        raise ConfigError(f"model repository {root} does not exist or is not a directory: {_EXPORT_HINT}")
    models: list[ExportedModel] = []
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or directory.name.startswith("."):
            continue
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            LOG.warning("skipping %s: it has no %s", directory, CONFIG_FILE)
            continue
        models.append(_read_model(directory, parse_config(config_path)))
    if not models:
        raise ConfigError(f"model repository {root} has no models: {_EXPORT_HINT}")
    return models


def _read_model(directory: Path, config: mc.ModelConfig) -> ExportedModel:
    name = config.name or directory.name
    config_path = directory / CONFIG_FILE
    if name != directory.name:
        raise ConfigError(
            f"{config_path} names the model '{name}' but its directory is '{directory.name}': make them equal"
        )
    platform = config.platform or {"onnxruntime": ONNX_PLATFORM, "tensorrt": TENSORRT_PLATFORM}.get(config.backend, "")
    if platform not in (ONNX_PLATFORM, TENSORRT_PLATFORM):
        kind = config.platform or config.backend or "no platform or backend"
        raise ConfigError(
            f"model '{name}' ({config_path}) is '{kind}': the embedded CPU server serves only ONNX exports "
            f"(platform {ONNX_PLATFORM}, or {TENSORRT_PLATFORM} with a model.onnx beside the plan)"
        )
    if len(config.input) != 1 or len(config.output) != 1:
        raise ConfigError(
            f"model '{name}' ({config_path}) has {len(config.input)} inputs and {len(config.output)} outputs: "
            "the depth contract is one IMAGE input and one DEPTH output"
        )
    if PARAM_DEPTH_STRIDE in config.parameters:
        raw_stride = config.parameters[PARAM_DEPTH_STRIDE].string_value
        try:
            check_depth_stride(int(raw_stride))
        except ValueError as exc:
            raise ConfigError(f"model '{name}' ({config_path}) has a bad depth_stride {raw_stride!r}: {exc}") from exc
    onnx_name = config.default_model_filename if platform == ONNX_PLATFORM and config.default_model_filename else ""
    onnx_name = onnx_name or DEFAULT_ONNX_FILE
    versions = sorted((d for d in directory.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    onnx_files = {v.name: v / onnx_name for v in versions if (v / onnx_name).is_file()}
    if not onnx_files:
        if platform == TENSORRT_PLATFORM:
            raise ConfigError(
                f"model '{name}' is a TensorRT plan with no {onnx_name} beside it: TensorRT plans need an NVIDIA GPU "
                "and the official Triton image (docker compose); to serve it on CPU, export ONNX too"
            )
        raise ConfigError(f"model '{name}' has no {directory}/<version>/{onnx_name}: {_EXPORT_HINT}")
    return ExportedModel(name=name, directory=directory, config=config, onnx_files=onnx_files)


def runtime_config(model: ExportedModel, settings: AdapterSettings) -> mc.ModelConfig:
    """The Python-backend twin of ``model``'s configuration."""
    config = mc.ModelConfig()
    config.CopyFrom(model.config)
    config.name = model.name
    config.ClearField("platform")
    config.backend = "python"
    config.ClearField("runtime")
    config.ClearField("default_model_filename")  # for the Python backend it would name model.py
    config.ClearField("cc_model_filenames")
    for accelerated in ("execution_accelerators", "cuda", "graph"):
        config.optimization.ClearField(accelerated)
    del config.instance_group[:]
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=settings.instances)
    if config.max_batch_size > 0:
        batching = config.dynamic_batching  # setting a field below turns batching on if the export had none
        if batching.default_queue_policy.max_queue_size <= 0:
            bound = max(8, 2 * config.max_batch_size * settings.instances)
            LOG.info("model '%s' has an unbounded queue: bounding it to %d requests", model.name, bound)
            batching.default_queue_policy.max_queue_size = bound
            batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
        if settings.queue_timeout_us is not None:
            batching.default_queue_policy.default_timeout_microseconds = settings.queue_timeout_us
    onnx_file = next(iter(model.onnx_files.values())).name
    for key, value in (
        (PARAM_ONNX_FILE, onnx_file),
        (PARAM_INTRA_OP_THREADS, str(settings.threads())),
        (PARAM_MAX_PIXELS, str(settings.max_pixels)),
        (PARAM_MIN_SIDE, str(settings.min_side)),
    ):
        config.parameters[key].string_value = value
    return config


def write_runtime_repository(models: list[ExportedModel], destination: Path, settings: AdapterSettings) -> Path:
    """Write the Python-backend twin of every model under ``destination`` and return it."""
    destination.mkdir(parents=True, exist_ok=True)
    for model in models:
        model_dir = destination / model.name
        model_dir.mkdir()
        config = runtime_config(model, settings)
        (model_dir / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
        for version, onnx_file in model.onnx_files.items():
            version_dir = model_dir / version
            version_dir.mkdir()
            # Link every file of the exported version (model.onnx.data holds big models' weights).
            for entry in onnx_file.parent.iterdir():
                if entry.name != "model.py":
                    (version_dir / entry.name).symlink_to(entry.resolve())
            shutil.copyfile(ADAPTER_FILE, version_dir / "model.py")
    return destination
