"""Shared pytest fixtures: a real embedded Triton serving a tiny model with the export contract.

Import the fixtures into a test module (or list this module in a conftest's
``pytest_plugins``)::

    from serving_fixtures import triton_repository, triton_server  # noqa: F401  (pytest fixtures)

    def test_depth(triton_server):
        client = tritonclient.grpc.InferenceServerClient(triton_server.url)

``triton_server`` is one session-wide ``tritonserver`` process on free ports,
serving :data:`~dronedepth.contract.MODEL_NAME` (``IMAGE`` UINT8
``[batch, H, W, 3]`` -> ``DEPTH`` FP32 ``[batch, H, W]``, depth = 0.5 + 4 ×
luma / 255, ``max_batch_size`` 8, dynamic batching). It needs the server
environment (``make setup``); its output goes to ``tritonserver.log`` in the
session's temporary directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dronedepth.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, PARAM_DEPTH_KIND, PARAM_MAX_DEPTH
from dronedepth.serving import EmbeddedTriton
from dronedepth.serving.synthetic import tiny_depth_model, write_model

TEST_MAX_BATCH_SIZE = 8


def make_test_repository(
    path: str | Path,
    *,
    name: str = MODEL_NAME,
    max_batch_size: int = TEST_MAX_BATCH_SIZE,
    max_queue_size: int = 32,
    max_queue_delay_us: int = 2000,
) -> Path:
    """Write a model repository like the exporter's, with a tiny ONNX depth model; return ``path``.

    ``path/name/config.pbtxt`` (platform ``onnxruntime_onnx``, dynamic batching with
    a bounded REJECT queue, exporter-style ``parameters``) and ``path/name/1/model.onnx``.
    """
    repository = Path(path)
    write_model(
        repository,
        tiny_depth_model(),
        name=name,
        max_batch_size=max_batch_size,
        max_queue_size=max_queue_size,
        max_queue_delay_us=max_queue_delay_us,
        warmup_hw=(48, 64),
    )
    return repository


def reference_depth(repository: str | Path, image: np.ndarray, name: str = MODEL_NAME) -> np.ndarray:
    """``DEPTH`` for ``image`` (UINT8 ``[batch, H, W, 3]``) from ONNX Runtime on the repository's model file."""
    session = ort.InferenceSession(
        str(Path(repository) / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: image})[0])


def normalised_rmse(actual: np.ndarray, expected: np.ndarray) -> float:
    """RMSE of ``actual`` against ``expected``, divided by the RMS of ``expected``."""
    expected = expected.astype(np.float64)
    error = np.sqrt(np.mean((actual.astype(np.float64) - expected) ** 2))
    return float(error / max(np.sqrt(np.mean(expected**2)), 1e-12))


def metric_tiny_repository(tmp_path_factory: pytest.TempPathFactory, max_depth_m: float) -> Path:
    """A repository serving the tiny model declared metric: its depth (0.5 + 4 × luma / 255) read as metres,
    with ``max_depth_m`` as the model's maximum depth."""
    repository = tmp_path_factory.mktemp("metric_repository")
    write_model(
        repository,
        tiny_depth_model(),
        parameters={PARAM_DEPTH_KIND: "metric", PARAM_MAX_DEPTH: f"{max_depth_m:g}"},
        warmup_hw=(48, 64),
    )
    return repository


@contextlib.contextmanager
def serve(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """An embedded Triton on free ports serving ``repository``, logging to a fresh ``tritonserver.log``."""
    log_file = tmp_path_factory.mktemp("triton_logs") / "tritonserver.log"
    with EmbeddedTriton(repository, grpc_port=0, http_port=0, metrics_port=0, log_file=log_file) as server:
        yield server


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported-style model repository holding the tiny contract model."""
    return make_test_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def triton_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """A running embedded Triton (free ports) serving ``triton_repository``; ``.url`` is its gRPC ``host:port``."""
    with serve(triton_repository, tmp_path_factory) as server:
        yield server
