"""config.pbtxt writing and reading, the checked-in default config, the ORT-TensorRT accelerator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dronedepth.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, PARAM_DEPTH_KIND, PARAM_MAX_DEPTH
from dronedepth.errors import ConfigError
from dronedepth.export.facts import ModelFacts
from dronedepth.export.repository import (
    OrtTensorRT,
    TritonModelConfig,
    default_config,
    parse_parameters,
    read_model_facts,
    write_repository,
)
from dronedepth.export.tensorrt import default_profile

REPO = Path(__file__).resolve().parents[1] / "model_repository"
FACTS = ModelFacts("vitb", "metric", 20.0, 518, "fp16", 'checkpoint "odd" name.pth', False, "official")


def parse_with_protobuf(text: str) -> object:
    text_format = pytest.importorskip("google.protobuf.text_format")
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(text, mc.ModelConfig())


def test_config_is_valid_triton_protobuf() -> None:
    config = TritonModelConfig(
        FACTS, max_batch_size=4, instances=2, device="gpu", max_queue_size=8, queue_timeout_us=250_000
    )
    parsed = parse_with_protobuf(config.render())
    assert parsed.name == MODEL_NAME and parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 4
    (inp,), (out,) = parsed.input, parsed.output
    assert (inp.name, list(inp.dims)) == (INPUT_NAME, [-1, -1, 3]) and inp.data_type == 2  # TYPE_UINT8
    assert (out.name, list(out.dims)) == (OUTPUT_NAME, [-1, -1]) and out.data_type == 11  # TYPE_FP32
    policy = parsed.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 8 and policy.default_timeout_microseconds == 250_000
    assert policy.timeout_action == 0  # REJECT
    (group,) = parsed.instance_group
    assert group.count == 2 and group.kind == 1  # KIND_GPU
    (warmup,) = parsed.model_warmup
    assert list(warmup.inputs[INPUT_NAME].dims) == [480, 640, 3] and warmup.inputs[INPUT_NAME].random_data
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params == FACTS.to_params()


def test_ort_tensorrt_accelerator_block() -> None:
    accel = OrtTensorRT(profile=default_profile(8))
    config = TritonModelConfig(FACTS, device="gpu", ort_tensorrt=accel)
    text = config.render()
    assert "gpu_execution_accelerator" in text and 'name: "tensorrt"' in text
    parsed = parse_with_protobuf(text)
    (acc,) = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_engine_cache_enable"] == "true"
    assert acc.parameters["trt_profile_opt_shapes"] == f"{INPUT_NAME}:1x480x640x3"
    assert acc.parameters["trt_profile_max_shapes"] == f"{INPUT_NAME}:8x720x1280x3"


def test_tensorrt_plan_config() -> None:
    config = TritonModelConfig(FACTS, platform="tensorrt_plan", device="gpu")
    assert config.model_file == "model.plan"
    assert parse_with_protobuf(config.render()).platform == "tensorrt_plan"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"platform": "tensorrt_plan", "device": "cpu"}, "GPU only"),
        ({"ort_tensorrt": OrtTensorRT(), "device": "cpu"}, "--ort-trt"),
        ({"max_batch_size": 0}, "--max-batch-size"),
        ({"instances": 0}, "--instances"),
        ({"name": "bad name"}, "bad model name"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TritonModelConfig(FACTS, **kwargs)  # type: ignore[arg-type]


def test_parameters_round_trip_with_quotes() -> None:
    text = TritonModelConfig(FACTS).render()
    assert parse_parameters(text) == FACTS.to_params()
    assert ModelFacts.from_params(parse_parameters(text)) == FACTS


def test_write_and_read_back(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx")
    model_dir = write_repository(TritonModelConfig(FACTS, name="da"), tmp_path / "repo", model)
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"not really onnx"
    assert read_model_facts(model_dir) == FACTS
    assert read_model_facts(model_dir / "config.pbtxt") == FACTS
    with pytest.raises(ConfigError, match=r"no config\.pbtxt"):
        read_model_facts(tmp_path)


def test_facts_validate_themselves() -> None:
    params = FACTS.to_params()
    with pytest.raises(ConfigError, match="lacks the 'depth_kind'"):
        ModelFacts.from_params({k: v for k, v in params.items() if k != PARAM_DEPTH_KIND})
    with pytest.raises(ConfigError, match="positive max_depth"):
        ModelFacts.from_params({**params, PARAM_MAX_DEPTH: ""})
    relative = dataclasses.replace(FACTS, depth_kind="relative", max_depth=None)
    assert ModelFacts.from_params(relative.to_params()).max_depth is None
    assert ModelFacts.from_params({**relative.to_params(), PARAM_MAX_DEPTH: "0"}).max_depth is None


def test_checked_in_default_config_is_current() -> None:
    """model_repository/ holds the config of the default model, as the exporter renders it, and no weights."""
    text = (REPO / MODEL_NAME / "config.pbtxt").read_text()
    assert text == default_config().render()
    facts = read_model_facts(REPO / MODEL_NAME)
    assert (facts.encoder, facts.depth_kind, facts.max_depth, facts.random_init) == ("vits", "metric", 80.0, False)
    assert "Metric-Outdoor-Small-hf" in facts.weight_source
    assert (REPO / "README.md").is_file()
