"""Depth clients and the shared DepthService: in-process fakes, ONNX Runtime, and a real embedded Triton."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
import serving_fixtures
from gateway_fixtures import FakeDepthClient

from dronedepth.contract import DEFAULT_DEPTH_STRIDE, MODEL_NAME, PARAM_DEPTH_KIND, PARAM_DEPTH_STRIDE
from dronedepth.errors import (
    ConfigError,
    InferenceError,
    InferenceOverloaded,
    InferenceTimeout,
    InferenceUnavailable,
)
from dronedepth.gateway.inference import (
    DepthClient,
    DepthService,
    OnnxRuntimeDepthClient,
    TritonDepthClient,
    check_frame,
    server_concurrency,
)
from dronedepth.serving import EmbeddedTriton, find_free_port
from dronedepth.serving.synthetic import tiny_depth_model

triton_repository = serving_fixtures.triton_repository
triton_server = serving_fixtures.triton_server


def _frame(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _tiny_depth(rgb: np.ndarray, stride: int = DEFAULT_DEPTH_STRIDE) -> np.ndarray:
    """What the tiny contract model computes: 0.5 + 4 × luma / 255, at every ``stride``-th pixel."""
    luma = rgb[::stride, ::stride].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return 0.5 + 4.0 * luma / 255.0


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    model = tiny_depth_model()
    onnx.helper.set_model_props(model, {PARAM_DEPTH_KIND: "metric", PARAM_DEPTH_STRIDE: str(DEFAULT_DEPTH_STRIDE)})
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


# ---------------------------------------------------------------- frame checks


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((48, 64, 3), np.float32), "uint8"),
        (np.zeros((48, 64), np.uint8), "H×W×3"),
        (np.zeros((48, 64, 4), np.uint8), "H×W×3"),
        (np.zeros((8, 64, 3), np.uint8), "smaller than 14 pixels"),
    ],
)
def test_check_frame_names_the_problem(frame: np.ndarray, message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        check_frame(frame)


# ---------------------------------------------------------------- ONNX Runtime


async def test_onnxruntime_client_runs_the_model_and_reads_depth_kind(onnx_file: Path) -> None:
    client = OnnxRuntimeDepthClient(onnx_file)
    assert isinstance(client, DepthClient)
    try:
        assert await client.ready()
        assert client.depth_kind == "metric"
        assert client.depth_stride == 2
        rgb = _frame()
        depth = await client.infer(rgb)
        assert depth.dtype == np.float32 and depth.shape == (24, 32)
        np.testing.assert_allclose(depth, _tiny_depth(rgb), rtol=1e-5)
    finally:
        await client.close()
    assert not await client.ready()
    with pytest.raises(InferenceUnavailable, match="closed"):
        await client.infer(rgb)


async def test_depth_of_another_grid_than_the_declared_stride_is_an_error(tmp_path: Path) -> None:
    """A model that returns stride-2 depth but declares none (stride 1): every frame fails clearly."""
    model = tiny_depth_model(2)
    onnx.helper.set_model_props(model, {PARAM_DEPTH_KIND: "metric"})
    onnx.save(model, tmp_path / "model.onnx")
    client = OnnxRuntimeDepthClient(tmp_path / "model.onnx")
    try:
        assert client.depth_stride == 1
        with pytest.raises(InferenceError, match=r"shape \(24, 32\) for a 64x48 frame; its depth stride 1 makes"):
            await client.infer(_frame())
    finally:
        await client.close()


def test_onnxruntime_client_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        OnnxRuntimeDepthClient(tmp_path / "nothing.onnx")


# ---------------------------------------------------------------- DepthService


async def test_service_times_out_a_slow_client() -> None:
    reasons: list[str] = []
    service = DepthService(FakeDepthClient(delay=5.0), timeout=0.05, outage_after=0.2, on_error=reasons.append)
    with pytest.raises(InferenceTimeout, match=r"timed out after 0\.05 s"):
        await service.infer(_frame())
    assert service.available  # one slow request is not an outage
    await asyncio.sleep(0.2)
    with pytest.raises(InferenceTimeout):
        await service.infer(_frame())
    assert not service.available  # nothing but timeouts for outage_after: it is
    assert reasons == ["timeout", "timeout"]


async def test_service_backs_off_during_an_outage_and_recovers() -> None:
    client = FakeDepthClient()
    reasons: list[str] = []
    service = DepthService(client, min_backoff=0.2, max_backoff=0.4, on_error=reasons.append)
    client.available = False
    with pytest.raises(InferenceUnavailable):
        await service.infer(_frame())
    assert not service.available and service.outages == 1
    # Within the backoff interval requests fail at once, without reaching the server.
    calls = client.calls
    for _ in range(5):
        with pytest.raises(InferenceUnavailable, match="next attempt"):
            await service.infer(_frame())
    assert client.calls == calls
    await asyncio.sleep(0.25)
    with pytest.raises(InferenceUnavailable):  # one probe per interval; the server is still down
        await service.infer(_frame())
    assert client.calls == calls + 1
    client.available = True
    await asyncio.sleep(0.45)  # the interval doubled to its ceiling
    depth = await service.infer(_frame())
    assert depth.shape == (48, 64)
    assert service.available and service.outages == 1
    assert reasons.count("unavailable") == 2 and reasons.count("backoff") == 5


async def test_service_passes_request_errors_without_an_outage() -> None:
    class Broken(FakeDepthClient):
        async def infer(self, rgb: np.ndarray) -> np.ndarray:
            raise InferenceError("bad frame")

    reasons: list[str] = []
    service = DepthService(Broken(), on_error=reasons.append)
    with pytest.raises(InferenceError, match="bad frame"):
        await service.infer(_frame())
    assert service.available and reasons == ["error"]


# ---------------------------------------------------------------- Triton


def test_triton_client_validates_its_url() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        TritonDepthClient("grpc://localhost:8001")
    with pytest.raises(ConfigError, match="timeout"):
        TritonDepthClient("localhost:8001", timeout=0)


async def test_triton_client_gets_depth_from_the_embedded_server(triton_server: EmbeddedTriton) -> None:
    client = TritonDepthClient(triton_server.url, MODEL_NAME, timeout=30)
    try:
        assert await client.ready()
        assert client.depth_kind == "relative"  # from config.pbtxt parameters
        assert client.server_concurrency == triton_server.settings.instances  # CPU: one request per instance
        assert client.depth_stride == DEFAULT_DEPTH_STRIDE  # from config.pbtxt parameters, as the export's default
        for height, width, grid in ((48, 64, (24, 32)), (240, 320, (120, 160)), (47, 63, (24, 32))):
            rgb = _frame(height, width)
            depth = await client.infer(rgb)
            assert depth.dtype == np.float32 and depth.shape == grid
            np.testing.assert_allclose(depth, _tiny_depth(rgb), rtol=1e-4)
        # Several requests in flight at once (what several drones do).
        frames = [_frame(seed=i) for i in range(6)]
        results = await asyncio.gather(*(client.infer(f) for f in frames))
        for rgb, depth in zip(frames, results, strict=True):
            np.testing.assert_allclose(depth, _tiny_depth(rgb), rtol=1e-4)
    finally:
        await client.close()


async def test_triton_client_unknown_model_is_unavailable(triton_server: EmbeddedTriton) -> None:
    client = TritonDepthClient(triton_server.url, "no_such_model", timeout=10)
    try:
        assert not await client.ready()
        with pytest.raises(InferenceUnavailable, match="no_such_model"):
            await client.infer(_frame())
    finally:
        await client.close()


async def test_triton_client_unreachable_server_is_unavailable() -> None:
    url = f"127.0.0.1:{find_free_port()}"
    client = TritonDepthClient(url, timeout=5)
    try:
        assert not await client.ready()
        with pytest.raises(InferenceUnavailable, match=url):
            await client.infer(_frame())
    finally:
        await client.close()


async def test_overload_is_not_an_outage_while_some_requests_succeed() -> None:
    class Busy(FakeDepthClient):
        reject = False

        async def infer(self, rgb: np.ndarray) -> np.ndarray:
            if self.reject:
                raise InferenceOverloaded("queue full")
            return await super().infer(rgb)

    client = Busy()
    reasons: list[str] = []
    service = DepthService(client, outage_after=0.3, min_backoff=0.05, on_error=reasons.append)
    await service.infer(_frame())
    client.reject = True
    with pytest.raises(InferenceOverloaded):
        await service.infer(_frame())
    assert service.available and service.outages == 0  # a success was recent: only this frame is lost
    await asyncio.sleep(0.35)
    with pytest.raises(InferenceOverloaded):
        await service.infer(_frame())
    assert not service.available and service.outages == 1  # nothing but rejections for outage_after
    client.reject = False
    await asyncio.sleep(0.1)
    await service.infer(_frame())
    assert service.available
    assert reasons == ["overloaded", "overloaded"]


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("StatusCode.UNAVAILABLE", "Request timeout expired", InferenceOverloaded),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", InferenceOverloaded),
        ("StatusCode.RESOURCE_EXHAUSTED", "too many requests", InferenceOverloaded),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", InferenceTimeout),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", InferenceUnavailable),
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'IMAGE'", InferenceError),
    ],
)
def test_triton_errors_are_converted(status: str, message: str, kind: type) -> None:
    from tritonclient.utils import InferenceServerException

    client = TritonDepthClient("triton:8001", timeout=3)
    error = client._convert(InferenceServerException(msg=message, status=status), "depth request")
    assert type(error) is kind
    assert message in str(error) or "timed out after 3 s" in str(error)
    assert "triton:8001" in str(error)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_batch_size": 8, "instance_group": [{"count": 2, "kind": "KIND_CPU"}], "dynamic_batching": {}}, 2),
        ({"max_batch_size": 8, "instance_group": [{"count": 1, "kind": "KIND_GPU"}], "dynamic_batching": {}}, 8),
        ({"max_batch_size": 4, "instance_group": [{"count": 2, "kind": "KIND_GPU"}]}, 2),
        ({"max_batch_size": 0}, 1),
    ],
)
def test_server_concurrency_from_the_model_config(config: dict, expected: int) -> None:
    assert server_concurrency(config) == expected


async def test_service_auto_cap_follows_the_server_once_known() -> None:
    class Client:
        depth_kind = "metric"
        server_concurrency: int | None = None

    client = Client()
    service = DepthService(client)  # type: ignore[arg-type]
    assert service.max_in_flight is None  # unknown server: one request per drone
    client.server_concurrency = 3
    assert service.max_in_flight == 3
    assert DepthService(client, max_in_flight=None).max_in_flight is None
    assert DepthService(client, max_in_flight=5).max_in_flight == 5
