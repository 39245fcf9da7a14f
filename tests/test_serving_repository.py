"""Reading exported repositories and deriving the Python-backend twin the embedded server runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from serving_fixtures import make_test_repository
from tritonclient.grpc import model_config_pb2 as mc

from dronedepth.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, PARAM_ENCODER
from dronedepth.errors import ConfigError
from dronedepth.serving.repository import (
    PARAM_INTRA_OP_THREADS,
    PARAM_MAX_PIXELS,
    PARAM_ONNX_FILE,
    AdapterSettings,
    parse_config,
    read_repository,
    runtime_config,
    write_runtime_repository,
)


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return make_test_repository(tmp_path / "exported")


def _edit_config(repo: Path, old: str, new: str) -> None:
    path = repo / MODEL_NAME / "config.pbtxt"
    path.write_text(path.read_text().replace(old, new))


def test_reads_the_exported_model(exported: Path) -> None:
    (model,) = read_repository(exported)
    assert model.name == MODEL_NAME
    assert model.config.platform == "onnxruntime_onnx"
    assert model.onnx_files == {"1": exported / MODEL_NAME / "1" / "model.onnx"}


def test_runtime_config_keeps_the_contract_and_runs_on_the_python_backend(exported: Path) -> None:
    (model,) = read_repository(exported)
    config = runtime_config(model, AdapterSettings(instances=2, intra_op_threads=3, max_pixels=1000))

    assert (config.backend, config.platform, config.name) == ("python", "", MODEL_NAME)
    assert config.input == model.config.input and config.output == model.config.output
    assert config.input[0].name == INPUT_NAME and list(config.input[0].dims) == [-1, -1, 3]
    assert config.output[0].name == OUTPUT_NAME and list(config.output[0].dims) == [-1, -1]
    assert config.max_batch_size == model.config.max_batch_size
    assert config.dynamic_batching == model.config.dynamic_batching
    assert config.model_warmup == model.config.model_warmup
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert config.parameters[PARAM_ENCODER].string_value == "synthetic"  # exported parameters kept
    assert config.parameters[PARAM_ONNX_FILE].string_value == "model.onnx"
    assert config.parameters[PARAM_INTRA_OP_THREADS].string_value == "3"
    assert config.parameters[PARAM_MAX_PIXELS].string_value == "1000"


def test_gpu_settings_of_the_export_are_dropped_on_cpu(exported: Path) -> None:
    path = exported / MODEL_NAME / "config.pbtxt"
    config = parse_config(path)
    config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
    config.instance_group[0].gpus.extend([0, 1])
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters["precision_mode"] = "FP16"
    path.write_text(text_format.MessageToString(config))

    cpu = runtime_config(read_repository(exported)[0], AdapterSettings())

    assert not cpu.optimization.HasField("execution_accelerators")
    assert [(g.kind, list(g.gpus)) for g in cpu.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, [])]


def test_an_unbounded_queue_gets_a_bound(exported: Path) -> None:
    path = exported / MODEL_NAME / "config.pbtxt"
    config = parse_config(path)
    config.ClearField("dynamic_batching")
    path.write_text(text_format.MessageToString(config))

    cpu = runtime_config(read_repository(exported)[0], AdapterSettings())

    assert cpu.dynamic_batching.default_queue_policy.max_queue_size == 2 * config.max_batch_size * 2
    assert cpu.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT


def test_the_queue_timeout_can_be_replaced(exported: Path) -> None:
    model = read_repository(exported)[0]
    model.config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 500_000
    kept = runtime_config(model, AdapterSettings())
    replaced = runtime_config(model, AdapterSettings(queue_timeout_us=3_000_000))
    assert kept.dynamic_batching.default_queue_policy.default_timeout_microseconds == 500_000
    assert replaced.dynamic_batching.default_queue_policy.default_timeout_microseconds == 3_000_000
    with pytest.raises(ConfigError, match=r"queue timeout must be 0 .* got -1 us"):
        AdapterSettings(queue_timeout_us=-1)


def test_a_tensorrt_export_is_served_from_its_onnx(exported: Path) -> None:
    _edit_config(exported, 'platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"')
    (exported / MODEL_NAME / "1" / "model.plan").write_bytes(b"engine")

    (model,) = read_repository(exported)
    assert model.onnx_files["1"].name == "model.onnx"

    (exported / MODEL_NAME / "1" / "model.onnx").unlink()
    with pytest.raises(
        ConfigError, match=r"TensorRT plan with no model\.onnx beside it: TensorRT plans need an NVIDIA GPU"
    ):
        read_repository(exported)


def test_writes_a_twin_with_links_and_the_adapter(exported: Path, tmp_path: Path) -> None:
    (exported / MODEL_NAME / "1" / "model.onnx.data").write_bytes(b"external weights")
    runtime = write_runtime_repository(read_repository(exported), tmp_path / "runtime", AdapterSettings())

    version = runtime / MODEL_NAME / "1"
    assert (version / "model.onnx").resolve() == (exported / MODEL_NAME / "1" / "model.onnx").resolve()
    assert (version / "model.onnx.data").is_symlink()
    assert "class TritonPythonModel" in (version / "model.py").read_text()
    assert parse_config(runtime / MODEL_NAME / "config.pbtxt").backend == "python"
    assert not (exported / MODEL_NAME / "1" / "model.py").exists()  # the export is never written to


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda repo: None, "has no models: run 'dronedepth export'"),
        (lambda repo: (repo / "stray").mkdir(), "has no models"),
        (lambda repo: make_test_repository(repo) and (repo / MODEL_NAME / "1" / "model.onnx").unlink(), "has no "),
        (
            lambda repo: make_test_repository(repo) and _edit_config(repo, "max_batch_size", "this is not protobuf"),
            "is not a valid Triton model configuration",
        ),
        (
            lambda repo: make_test_repository(repo) and (repo / MODEL_NAME).rename(repo / "renamed"),
            "names the model 'depth_anything_v2' but its directory is 'renamed'",
        ),
        (
            lambda repo: (
                make_test_repository(repo) and _edit_config(repo, 'platform: "onnxruntime_onnx"', 'backend: "pytorch"')
            ),
            "serves only ONNX exports",
        ),
    ],
    ids=["empty", "no-config", "no-onnx", "bad-pbtxt", "name-mismatch", "not-onnx"],
)
def test_bad_repositories_say_what_is_wrong(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    repo.mkdir()
    damage(repo)
    with pytest.raises(ConfigError, match=message):
        read_repository(repo)


def test_a_missing_repository_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist or is not a directory"):
        read_repository(tmp_path / "nowhere")


def test_settings_validate_themselves() -> None:
    with pytest.raises(ConfigError, match="instances must be at least 1, got 0"):
        AdapterSettings(instances=0)
    with pytest.raises(ConfigError, match="threads must be at least 1, got -2"):
        AdapterSettings(intra_op_threads=-2)
    assert AdapterSettings().instances == 2  # see AdapterSettings.instances: Triton 2.51's batcher stalls with one
    assert AdapterSettings(intra_op_threads=3).threads() == 3
