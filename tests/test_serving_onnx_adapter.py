"""The Python-backend adapter, run in-process with a stand-in for ``triton_python_backend_utils``."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_fixtures import make_test_repository, reference_depth

from dronedepth.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from dronedepth.serving import repository
from dronedepth.serving.repository import AdapterSettings, read_repository, runtime_config


class FakeTritonError:
    INTERNAL, INVALID_ARG, UNAVAILABLE = "INTERNAL", "INVALID_ARG", "UNAVAILABLE"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: FakeTritonError | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.TritonError = FakeTritonError  # type: ignore[attr-defined]
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    module.triton_string_to_numpy = lambda t: {"TYPE_FP32": np.float32}[t]  # type: ignore[attr-defined]
    return module


@pytest.fixture
def adapter_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("onnx_adapter_under_test", repository.ADAPTER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def adapter(adapter_module: Any, tmp_path: Path) -> Any:
    """An initialised adapter on the tiny test model, as Triton would create it."""
    repo = make_test_repository(tmp_path / "exported")
    model = read_repository(repo)[0]
    config = runtime_config(model, AdapterSettings(max_pixels=200 * 200, intra_op_threads=1))
    from google.protobuf import json_format

    instance = adapter_module.TritonPythonModel()
    instance.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_repository": str(model.directory),
            "model_version": "1",
            "model_name": MODEL_NAME,
        }
    )
    instance.repo = repo
    return instance


def test_parameter_names_match_the_repository_writer(adapter_module: Any) -> None:
    for name in ("PARAM_ONNX_FILE", "PARAM_INTRA_OP_THREADS", "PARAM_MAX_PIXELS", "PARAM_MIN_SIDE"):
        assert getattr(adapter_module, name) == getattr(repository, name)


def test_execute_batches_by_shape_and_answers_each_request(adapter: Any) -> None:
    rng = np.random.default_rng(1)
    frames = [
        rng.integers(0, 256, (1, 32, 48, 3), dtype=np.uint8),
        rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8),
        rng.integers(0, 256, (1, 32, 48, 3), dtype=np.uint8),
    ]
    calls: list[tuple[int, ...]] = []
    run = adapter.session.run
    adapter.session = types.SimpleNamespace(
        run=lambda out, feed: calls.append(feed[INPUT_NAME].shape) or run(out, feed)
    )

    responses = adapter.execute([{INPUT_NAME: FakeTensor(INPUT_NAME, f)} for f in frames])

    assert sorted(calls) == [(2, 32, 48, 3), (2, 40, 40, 3)]  # the two 32x48 requests ran as one batch
    for frame, response in zip(frames, responses, strict=True):
        assert response.error is None
        np.testing.assert_allclose(response.outputs[OUTPUT_NAME], reference_depth(adapter.repo, frame), rtol=1e-6)


def test_a_bad_request_fails_alone(adapter: Any) -> None:
    good = np.full((1, 32, 48, 3), 100, np.uint8)
    requests = [
        {INPUT_NAME: FakeTensor(INPUT_NAME, good)},
        {INPUT_NAME: FakeTensor(INPUT_NAME, np.zeros((1, 32, 48, 2), np.uint8))},  # two channels
        {INPUT_NAME: FakeTensor(INPUT_NAME, np.zeros((1, 300, 300, 3), np.uint8))},  # over max_pixels
        {INPUT_NAME: FakeTensor(INPUT_NAME, np.zeros((1, 8, 48, 3), np.uint8))},  # under min_side
        {},  # no IMAGE at all
        {INPUT_NAME: FakeTensor(INPUT_NAME, good)},
    ]
    responses = adapter.execute(requests)

    assert [r.error is None for r in responses] == [True, False, False, False, False, True]
    assert all(r.error.code == "INVALID_ARG" for r in responses[1:5])
    assert "UINT8 [batch, H, W, 3]" in responses[1].error.message
    assert "300x300 has 90000 pixels, more than the 40000" in responses[2].error.message
    assert "at least 14 pixels" in responses[3].error.message
    assert f"missing input '{INPUT_NAME}'" in responses[4].error.message
    np.testing.assert_allclose(responses[5].outputs[OUTPUT_NAME], reference_depth(adapter.repo, good), rtol=1e-6)


def test_a_failing_batch_is_retried_request_by_request(adapter: Any) -> None:
    run = adapter.session.run
    poison = 7

    def flaky_run(out: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if (feed[INPUT_NAME] == poison).any():
            raise RuntimeError("kaboom")
        return run(out, feed)

    adapter.session = types.SimpleNamespace(run=flaky_run)
    frames = [np.full((1, 32, 32, 3), v, np.uint8) for v in (1, poison, 3)]
    responses = adapter.execute([{INPUT_NAME: FakeTensor(INPUT_NAME, f)} for f in frames])

    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[1].error.code == "INTERNAL"
    assert "kaboom" in responses[1].error.message
