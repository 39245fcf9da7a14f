"""The embedded Triton for real: a ``tritonserver`` process on free ports, queried over gRPC."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serving_fixtures
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from serving_fixtures import TEST_MAX_BATCH_SIZE, make_test_repository, normalised_rmse, reference_depth
from tritonclient.utils import InferenceServerException

from dronedepth.contract import (
    DEFAULT_DEPTH_STRIDE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    PARAM_DEPTH_KIND,
    PARAM_DEPTH_STRIDE,
    depth_grid_shape,
)
from dronedepth.errors import ServingError
from dronedepth.serving import AdapterSettings, EmbeddedTriton
from dronedepth.serving.embedded import group_members
from dronedepth.serving.synthetic import conv_depth_model, write_model

# The shared session fixtures (a tests/conftest.py with pytest_plugins = ["serving_fixtures"] would do the same).
triton_repository = serving_fixtures.triton_repository
triton_server = serving_fixtures.triton_server

SLOW_MODEL = "slow_depth"
LIMIT_PIXELS = 256 * 256


def _input(image: np.ndarray, datatype: str = "UINT8", module=grpcclient) -> grpcclient.InferInput:  # type: ignore[no-untyped-def]
    tensor = module.InferInput(INPUT_NAME, list(image.shape), datatype)
    tensor.set_data_from_numpy(image)
    return tensor


def _frames(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _stub_processes_under(path: Path) -> list[int]:
    """Pids of backend stubs whose command line mentions ``path``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "triton_python_backend_stub" in cmdline and str(path) in cmdline:
                pids.append(int(entry))
    return pids


@pytest.fixture
def client(triton_server: EmbeddedTriton) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton_server.url) as c:
        yield c


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """A server with a small frame limit and a slow model with a one-request queue."""
    repo = make_test_repository(tmp_path_factory.mktemp("limited"))
    write_model(
        repo,
        conv_depth_model(channels=128, layers=4),
        name=SLOW_MODEL,
        max_batch_size=1,
        max_queue_size=1,
        max_queue_delay_us=0,
    )
    settings = AdapterSettings(max_pixels=LIMIT_PIXELS)
    log = tmp_path_factory.mktemp("limited_logs") / "tritonserver.log"
    with EmbeddedTriton(repo, grpc_port=0, http_port=0, metrics_port=0, settings=settings, log_file=log) as server:
        yield server


def test_serves_the_export_under_the_same_name_and_tensors(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(MODEL_NAME)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [(INPUT_NAME, "UINT8", [-1, -1, -1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [(OUTPUT_NAME, "FP32", [-1, -1, -1])]
    config = client.get_model_config(MODEL_NAME).config
    assert config.max_batch_size == TEST_MAX_BATCH_SIZE
    assert config.parameters[PARAM_DEPTH_KIND].string_value == "relative"
    assert config.parameters[PARAM_DEPTH_STRIDE].string_value == str(DEFAULT_DEPTH_STRIDE)
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 480, 640), (3, 50, 70)])
def test_depth_matches_onnx_runtime(
    client: grpcclient.InferenceServerClient, triton_repository: Path, batch: int, height: int, width: int
) -> None:
    image = _frames(batch, height, width)
    depth = client.infer(MODEL_NAME, [_input(image)]).as_numpy(OUTPUT_NAME)
    # The tiny model serves the default depth stride: every second row and column (ceil for odd sides).
    grid = depth_grid_shape(height, width, DEFAULT_DEPTH_STRIDE)
    assert depth.dtype == np.float32 and depth.shape == (batch, *grid)
    assert normalised_rmse(depth, reference_depth(triton_repository, image)) <= 1e-5


async def test_concurrent_frames_are_batched(triton_server: EmbeddedTriton, triton_repository: Path) -> None:
    async with aioclient.InferenceServerClient(triton_server.url) as client:
        before = (await client.get_inference_statistics(MODEL_NAME)).model_stats[0]
        images = [_frames(1, 120, 160, seed=i) for i in range(16)]
        results = await asyncio.gather(*(client.infer(MODEL_NAME, [_input(im, module=aioclient)]) for im in images))
        after = (await client.get_inference_statistics(MODEL_NAME)).model_stats[0]

    for image, result in zip(images, results, strict=True):
        assert normalised_rmse(result.as_numpy(OUTPUT_NAME), reference_depth(triton_repository, image)) <= 1e-5
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 16
    assert executions < inferences, f"16 concurrent frames took {executions} executions: nothing was batched"
    assert any(s.batch_size > 1 and s.compute_infer.count > 0 for s in after.batch_stats)


@pytest.mark.parametrize(
    ("bad", "datatype", "message"),
    [
        (
            np.zeros((1, 48, 64, 3), np.float32),
            "FP32",
            "data-type is 'FP32', but model 'depth_anything_v2' expects 'UINT8'",
        ),
        (np.zeros((1, 48, 64, 2), np.uint8), "UINT8", "unexpected shape for input 'IMAGE'"),
        (np.zeros((1, 8, 64, 3), np.uint8), "UINT8", "frame 64x8 is too small"),
    ],
    ids=["fp32", "two-channels", "too-small"],
)
async def test_a_bad_request_fails_alone(
    triton_server: EmbeddedTriton, triton_repository: Path, bad: np.ndarray, datatype: str, message: str
) -> None:
    good = _frames(1, 48, 64)
    async with aioclient.InferenceServerClient(triton_server.url) as client:
        results = await asyncio.gather(
            client.infer(MODEL_NAME, [_input(good, module=aioclient)]),
            client.infer(MODEL_NAME, [_input(bad, datatype, module=aioclient)]),
            client.infer(MODEL_NAME, [_input(good, module=aioclient)]),
            return_exceptions=True,
        )
    assert isinstance(results[1], InferenceServerException)
    assert results[1].status() == "StatusCode.INVALID_ARGUMENT"
    assert message in results[1].message()
    for result in (results[0], results[2]):
        assert not isinstance(result, BaseException), result
        assert normalised_rmse(result.as_numpy(OUTPUT_NAME), reference_depth(triton_repository, good)) <= 1e-5


def test_a_batch_over_max_batch_size_is_refused(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=f"batch-size must be <= {TEST_MAX_BATCH_SIZE}") as info:
        client.infer(MODEL_NAME, [_input(_frames(TEST_MAX_BATCH_SIZE + 1, 16, 16))], client_timeout=30)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_an_oversized_frame_is_refused_clearly(limited_server: EmbeddedTriton) -> None:
    with grpcclient.InferenceServerClient(limited_server.url) as client:
        with pytest.raises(InferenceServerException, match="has 76800 pixels, more than the 65536") as info:
            client.infer(MODEL_NAME, [_input(_frames(1, 240, 320))], client_timeout=30)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "downscale the frame" in info.value.message()
        client.infer(MODEL_NAME, [_input(_frames(1, 240, 270))], client_timeout=30)  # just under the limit


async def test_a_full_queue_answers_unavailable_at_once(limited_server: EmbeddedTriton) -> None:
    image = _frames(1, 240, 256)  # about 30 ms per frame on two cores; under the frame limit
    async with aioclient.InferenceServerClient(limited_server.url) as client:
        results = await asyncio.gather(
            *(client.infer(SLOW_MODEL, [_input(image, module=aioclient)], client_timeout=60) for _ in range(8)),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert refused and served, results
    assert len(refused) + len(served) == 8
    for error in refused:
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert "maximum queue size" in error.message()


def test_stop_leaves_no_backend_process(tmp_path: Path) -> None:
    repo = make_test_repository(tmp_path / "repo")
    server = EmbeddedTriton(repo, grpc_port=0, http_port=0, metrics_port=0, runtime_dir=tmp_path / "runtime")
    with server:
        pid = server.pid
        assert pid is not None
        stubs = _stub_processes_under(tmp_path / "runtime")
        assert len(stubs) == server.settings.instances and set(stubs) < set(group_members(pid))
    assert group_members(pid) == []
    assert _stub_processes_under(tmp_path / "runtime") == []
    assert list((tmp_path / "runtime").iterdir()) == []  # the runtime directory is gone
    assert not server.is_running()
    server.stop()  # idempotent


def test_start_twice_is_refused(triton_server: EmbeddedTriton) -> None:
    with pytest.raises(ServingError, match="already running"):
        triton_server.start()


def test_the_public_api_is_pinned() -> None:
    import dronedepth.serving

    assert sorted(dronedepth.serving.__all__) == [
        "AdapterSettings",
        "EmbeddedTriton",
        "ExportedModel",
        "ServerEnvironment",
        "find_free_port",
        "locate_server_env",
        "port_in_use",
        "read_repository",
    ]


def test_a_free_port_taken_meanwhile_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dronedepth.serving import embedded

    real_find_free_port = embedded.find_free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])  # the first "free" port is someone else's by the time Triton binds
        monkeypatch.setattr(embedded, "find_free_port", lambda host: next(picks, None) or real_find_free_port(host))
        server = EmbeddedTriton(make_test_repository(tmp_path / "repo"), grpc_port=0, http_port=0, metrics_port=0)
        with caplog.at_level("INFO", logger="dronedepth.serving.embedded"), server:
            assert server.grpc_port != port
    # Triton's own words, parsed from its output.
    assert f"the GRPC endpoint could not start: Unavailable - Socket '127.0.0.1:{port}'" in caplog.text
    assert "already in use" in caplog.text
