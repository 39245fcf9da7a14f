"""Triton system shared memory (``--triton-shm``) against the real embedded Triton: same depth as over gRPC,
one region pair per request in flight, growth, fallback on refusal, nothing left in /dev/shm."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import serving_fixtures
from gateway_fixtures import photo
from tritonclient.grpc.aio import InferenceServerClient

from dronedepth.contract import MODEL_NAME
from dronedepth.errors import ConfigError, InferenceUnavailable
from dronedepth.gateway.inference import TritonDepthClient
from dronedepth.gateway.triton_shm import is_loopback_url
from dronedepth.serving import EmbeddedTriton, find_free_port

triton_repository = serving_fixtures.triton_repository
triton_server = serving_fixtures.triton_server

_SHM_DIR = Path("/dev/shm")


def _frame(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _our_files() -> set[str]:
    """This process's region files in /dev/shm."""
    return {path.name for path in _SHM_DIR.glob(f"dronedepth-{os.getpid()}-*")}


async def _registered(url: str) -> dict[str, int]:
    """Regions Triton holds, by name: their byte sizes."""
    status = InferenceServerClient(url)
    try:
        answer = await status.get_system_shared_memory_status(as_json=True)
    finally:
        await status.close()
    return {name: int(region["byte_size"]) for name, region in answer.get("regions", {}).items()}


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("127.0.0.1:8001", True),
        ("127.0.0.53:8001", True),
        ("localhost:8001", True),
        ("[::1]:8001", True),
        ("10.0.0.5:8001", False),
        ("triton:8001", False),
        ("[2001:db8::1]:8001", False),
    ],
)
def test_auto_uses_shared_memory_only_for_a_loopback_host(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_shared_memory_mode_is_validated() -> None:
    with pytest.raises(ConfigError, match="shared_memory must be one of auto, on, off, got 'yes'"):
        TritonDepthClient("127.0.0.1:8001", shared_memory="yes")  # type: ignore[arg-type]


@pytest.fixture
async def clients(triton_server: EmbeddedTriton) -> AsyncIterator[tuple[TritonDepthClient, TritonDepthClient]]:
    """A client through shared memory (``auto``: Triton is on 127.0.0.1) and one through gRPC payloads."""
    shm = TritonDepthClient(triton_server.url, MODEL_NAME, timeout=30)
    grpc = TritonDepthClient(triton_server.url, MODEL_NAME, timeout=30, shared_memory="off")
    try:
        yield shm, grpc
    finally:
        await shm.close()
        await grpc.close()


async def test_shared_memory_gives_the_grpc_depth_bit_for_bit(
    clients: tuple[TritonDepthClient, TritonDepthClient],
) -> None:
    shm, grpc = clients
    assert await shm.ready() and await grpc.ready()
    assert shm.transport == "shared memory" and "via shared memory" in str(shm)
    assert grpc.transport == "gRPC" and "via gRPC" in str(grpc)
    frame = photo(640, 480)
    through_shm, through_grpc = await shm.infer(frame), await grpc.infer(frame)
    assert through_shm.dtype == through_grpc.dtype == np.float32
    assert through_shm.shape == through_grpc.shape
    assert np.array_equal(through_shm, through_grpc)
    assert _our_files()  # it really went through /dev/shm


async def test_concurrent_requests_each_get_their_own_depth(
    clients: tuple[TritonDepthClient, TritonDepthClient], triton_server: EmbeddedTriton
) -> None:
    shm, grpc = clients
    frames = [_frame(120, 160, seed) for seed in range(6)]
    assert await shm.ready()
    expected = [await grpc.infer(frame) for frame in frames]
    # All six are written to their regions before the first answer comes: a shared region would mix them up.
    got = await asyncio.gather(*(shm.infer(frame) for frame in frames))
    for depth, reference in zip(got, expected, strict=True):
        assert np.array_equal(depth, reference)
    assert shm.transport == "shared memory"
    regions = [name for name in await _registered(triton_server.url) if name.startswith(f"dronedepth-{os.getpid()}")]
    assert len(regions) == 2 * len(frames)  # one input and one output region per request in flight


async def test_a_larger_frame_gets_larger_regions(
    clients: tuple[TritonDepthClient, TritonDepthClient], triton_server: EmbeddedTriton
) -> None:
    shm, grpc = clients
    small, large = _frame(240, 320, 1), _frame(720, 1280, 2)
    assert np.array_equal(await shm.infer(small), await grpc.infer(small))
    before = set(await _registered(triton_server.url))
    assert np.array_equal(await shm.infer(large), await grpc.infer(large))
    after = {
        name: size
        for name, size in (await _registered(triton_server.url)).items()
        if name.startswith(f"dronedepth-{os.getpid()}")
    }
    assert len(after) == 2 and not before & set(after)  # the small pair was replaced, not kept
    assert sorted(after.values()) == [1280 * 720 * 3, 1280 * 720 * 4]
    assert _our_files() == set(after)


async def test_regions_are_gone_after_close(triton_server: EmbeddedTriton) -> None:
    shm = TritonDepthClient(triton_server.url, MODEL_NAME, timeout=30)
    await shm.infer(_frame(120, 160, 3))
    names = _our_files()
    assert names and names <= set(await _registered(triton_server.url))
    await shm.close()
    assert not _our_files()
    assert not names & set(await _registered(triton_server.url))


async def test_a_cancelled_request_never_lends_its_regions_again(
    clients: tuple[TritonDepthClient, TritonDepthClient], triton_server: EmbeddedTriton
) -> None:
    shm, grpc = clients
    assert await shm.ready()
    first = _our_files()
    assert len(first) == 2
    request = asyncio.create_task(shm.infer(_frame(120, 160, 4)))
    await asyncio.sleep(0)  # the request takes the free pair and waits for Triton's answer
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    # Triton may still write that pair's output region: its files are gone and the next request gets new ones.
    assert not first & _our_files()
    frame = _frame(120, 160, 5)
    assert np.array_equal(await shm.infer(frame), await grpc.infer(frame))
    second = _our_files()
    assert len(second) == 2 and not first & second
    assert not first & set(await _registered(triton_server.url))  # unregistered before the new pair
    await shm.close()  # and again by the fixture: closing is idempotent
    assert not _our_files()


async def test_regions_triton_forgot_are_registered_again(
    clients: tuple[TritonDepthClient, TritonDepthClient], triton_server: EmbeddedTriton
) -> None:
    shm, grpc = clients
    frame = _frame(120, 160, 7)
    assert await shm.ready()
    admin = InferenceServerClient(triton_server.url)  # what a Triton restart does to the registrations
    try:
        for name in _our_files():
            await admin.unregister_system_shared_memory(name)
    finally:
        await admin.close()
    # Triton answers NOT_FOUND: unavailable, so the next request reads the metadata and registers anew.
    with pytest.raises(InferenceUnavailable, match="Unable to find shared memory region"):
        await shm.infer(frame)
    assert np.array_equal(await shm.infer(frame), await grpc.infer(frame))
    assert shm.transport == "shared memory"


def _private_shm_supported() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def triton_without_our_shm(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Triton on 127.0.0.1 that does not see this host's /dev/shm (its own, in a mount namespace):
    what a remote Triton, or a sidecar without the shared volume, is to the gateway. Yields its gRPC URL."""
    if not _private_shm_supported():
        pytest.skip("needs unshare and a mount namespace (root) to give Triton a /dev/shm of its own")
    port = find_free_port()
    log_file = tmp_path_factory.mktemp("private_shm_triton") / "triton.log"
    serve = (
        f"mount -t tmpfs tmpfs /dev/shm && exec {sys.executable} -m dronedepth.cli triton "
        f"--model-repository {triton_repository} --grpc-port {port} --http-port 0 --metrics-port 0 --instances 1"
    )
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", serve], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"127.0.0.1:{port}"
        asyncio.run(_wait_ready(url, process, log_file))
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


async def _wait_ready(url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    client = InferenceServerClient(url)
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"Triton exited with {process.returncode}: {log_file.read_text()[-2000:]}")
            try:
                if await client.is_model_ready(MODEL_NAME, client_timeout=1):
                    return
            except Exception:  # not listening yet
                await asyncio.sleep(0.1)
        raise RuntimeError(f"Triton not ready: {log_file.read_text()[-2000:]}")
    finally:
        await client.close()


@pytest.mark.parametrize(("mode", "level"), [("on", logging.WARNING), ("auto", logging.INFO)])
async def test_a_refused_registration_falls_back_to_grpc(
    triton_without_our_shm: str,
    triton_repository: Path,
    mode: str,
    level: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dronedepth.gateway.inference")
    client = TritonDepthClient(triton_without_our_shm, MODEL_NAME, timeout=30, shared_memory=mode)  # type: ignore[arg-type]
    try:
        assert await client.ready()
        assert client.transport == "gRPC"
        refusals = [r for r in caplog.records if "shared memory" in r.getMessage() and "refused" in r.getMessage()]
        assert [r.levelno for r in refusals] == [level]
        assert "Unable to open shared memory region" in refusals[0].getMessage()
        frame = _frame(120, 160, 6)
        reference = serving_fixtures.reference_depth(triton_repository, frame[None])[0]
        np.testing.assert_allclose(await client.infer(frame), reference, rtol=1e-6)
        assert not _our_files()  # the refused pair was unlinked at once
    finally:
        await client.close()


_HOLDER = """
import asyncio, os, sys
from dronedepth.gateway.inference import TritonDepthClient

async def main() -> None:
    client = TritonDepthClient(sys.argv[1])
    assert await client.ready() and client.transport == "shared memory"
    print(flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_killed_gateway_leaves_no_region_behind(triton_server: EmbeddedTriton) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, triton_server.url, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"\n"  # its regions are registered
        pattern = f"dronedepth-{holder.pid}-*"
        assert len(list(_SHM_DIR.glob(pattern))) == 2
    finally:
        holder.kill()  # SIGKILL: no close, no finally
        await holder.wait()
    # multiprocessing's resource tracker, which outlives it, unlinks what it left.
    async with asyncio.timeout(30):
        while list(_SHM_DIR.glob(pattern)):
            await asyncio.sleep(0.05)
