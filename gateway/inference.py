"""Depth inference behind one small interface.

:class:`DepthClient` is what the gateway needs from a depth model: an RGB
frame in, a depth map of the same size out. Two implementations:

- :class:`TritonDepthClient`: the production path, async gRPC to NVIDIA
  Triton (``tritonclient.grpc.aio``). Frames go as UINT8 as they are; tensor
  names and types come from Triton's model metadata and ``depth_kind`` from
  the model config, falling back to :mod:`dronedepth.contract`. With a Triton
  on the same host, frames and depth pass through system shared memory
  instead of the gRPC messages (:mod:`~dronedepth.gateway.triton_shm`).
- :class:`OnnxRuntimeDepthClient`: the same model run in-process with ONNX
  Runtime, for unit tests and for machines without Triton.

:class:`DepthService` wraps one client shared by every drone session: it turns
timeouts into :class:`~dronedepth.errors.InferenceTimeout`, tracks outages
and, while the server is down, lets one request through per backoff interval
(doubling up to a ceiling) so a dead server is not hammered and results resume
by themselves.

Every lower-level error (grpc, tritonclient, onnxruntime) leaves this module
as :class:`~dronedepth.errors.InferenceError` or
:class:`~dronedepth.errors.InferenceUnavailable` (or its subclasses
:class:`~dronedepth.errors.InferenceTimeout` and
:class:`~dronedepth.errors.InferenceOverloaded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dronedepth import contract
from dronedepth.contract import DEPTH_KINDS, DepthKind
from dronedepth.errors import (
    ConfigError,
    InferenceError,
    InferenceOverloaded,
    InferenceTimeout,
    InferenceUnavailable,
)
from dronedepth.gateway.config import TRITON_SHM_MODES, TritonShmMode
from dronedepth.gateway.triton_shm import RegionPair, SharedMemoryPool, SharedMemoryRefused, is_loopback_url

__all__ = [
    "DepthClient",
    "DepthService",
    "OnnxRuntimeDepthClient",
    "TritonDepthClient",
    "check_frame",
]

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 2.0
# gRPC's own reconnect backoff grows to 120 s by default: a Triton restart would
# then go unnoticed for minutes. Keep it short; DepthService paces the requests.
_GRPC_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
# gRPC status codes that mean "the server cannot serve now; try again later".
_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "ABORTED", "UNKNOWN", "NOT_FOUND"})
# Triton answers UNAVAILABLE with these messages when its queue policy rejects a request
# (max_queue_size reached, or default_timeout_microseconds spent waiting): the server is up but busy.
_OVERLOAD_MESSAGES = ("timeout expired", "maximum queue size")
_OVERLOAD_LOG_INTERVAL_S = 60.0
# The shared memory pair registered up front holds a 640×480 frame, what drones usually send; a larger
# frame replaces it with a pair of its own size.
_FIRST_SHM_PAIR_PIXELS = 640 * 480


@runtime_checkable
class DepthClient(Protocol):
    """What the gateway needs from a depth model.

    ``infer`` takes one RGB frame (uint8, H×W×3) and returns float32 depth of
    shape ``(ceil(H / s), ceil(W / s))`` for the model's depth stride ``s``
    (1 unless its config says otherwise: see
    :func:`dronedepth.contract.depth_grid_shape`): metres when ``depth_kind``
    is ``metric``, relative disparity otherwise. It raises :class:`InferenceUnavailable` when the server cannot
    be reached or is overloaded, :class:`InferenceError` for anything else.
    ``depth_kind`` is known once ``ready()`` or ``infer()`` has succeeded.
    """

    @property
    def depth_kind(self) -> DepthKind: ...

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def check_frame(rgb: NDArray[Any]) -> None:
    """Raise :class:`InferenceError` unless ``rgb`` is a uint8 H×W×3 frame the model accepts."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise InferenceError(f"a frame must be a uint8 H×W×3 RGB array, got {dtype} of shape {shape}")
    if min(rgb.shape[:2]) < contract.MIN_SIDE:
        raise InferenceError(
            f"frame of {rgb.shape[1]}x{rgb.shape[0]} is smaller than {contract.MIN_SIDE} pixels a side"
        )


def _check_depth(depth: NDArray[Any], height: int, width: int, stride: int, source: str) -> NDArray[np.float32]:
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    expected = contract.depth_grid_shape(height, width, stride)
    if depth.shape != expected:
        raise InferenceError(
            f"{source} returned depth of shape {depth.shape} for a {width}x{height} frame; "
            f"its depth stride {stride} makes that {expected}"
        )
    return depth.astype(np.float32, copy=False)


def _depth_stride(value: object, source: str) -> int:
    """A model's declared depth stride (a config or metadata string); absent means 1 (full resolution)."""
    if value in (None, ""):
        return 1
    try:
        return contract.check_depth_stride(int(str(value)))
    except ValueError as exc:
        raise InferenceError(f"{source} declares an unusable depth_stride {value!r}: {exc}") from exc


def server_concurrency(config: dict[str, Any]) -> int:
    """How many requests a Triton model runs at once, from its config (JSON form).

    On CPU each instance runs one request at a time (batching only slows the
    others down there); on GPU an instance runs a whole dynamic batch at once.
    """
    groups = config.get("instance_group") or [{}]
    batch = max(1, int(config.get("max_batch_size", 1) or 1))
    total = 0
    for group in groups:
        count = max(1, int(group.get("count", 1) or 1))
        on_gpu = group.get("kind", "KIND_AUTO") in ("KIND_GPU", "KIND_AUTO") and "dynamic_batching" in config
        total += count * (batch if on_gpu else 1)
    return total


def _depth_kind(value: object, source: str) -> DepthKind:
    if value in DEPTH_KINDS:
        return value
    if value not in (None, ""):
        log.warning("%s declares depth_kind %r; treating the output as relative", source, value)
    return "relative"


class TritonDepthClient:
    """Depth from a model served by NVIDIA Triton over async gRPC.

    ``url`` is ``HOST:PORT`` of Triton's gRPC endpoint. The channel is opened
    lazily in the running event loop and reconnects by itself when Triton
    restarts; model metadata is (re)read after every outage.

    ``shared_memory`` (``--triton-shm``): ``auto`` passes frames and depth
    through system shared memory when ``url``'s host is a loopback address,
    ``on`` always, ``off`` never. The regions are (re)registered whenever the
    metadata is (re)read; a refused registration falls back to gRPC payloads
    (logged once: info under ``auto``, a warning under ``on``). :attr:`transport`
    says which is in use.
    """

    def __init__(
        self,
        url: str,
        model: str = contract.MODEL_NAME,
        timeout: float = 5.0,
        *,
        version: str = "",
        shared_memory: TritonShmMode = "auto",
    ) -> None:
        if not url or "://" in url:
            raise ConfigError(f"Triton URL must be HOST:PORT of its gRPC endpoint (no scheme), got {url!r}")
        if timeout <= 0:
            raise ConfigError(f"inference timeout must be positive, got {timeout}")
        if shared_memory not in TRITON_SHM_MODES:
            raise ConfigError(f"shared_memory must be one of {', '.join(TRITON_SHM_MODES)}, got {shared_memory!r}")
        self.url = url
        self.model = model
        self.version = version
        self.timeout = timeout
        self._client: Any = None
        self._input_name = contract.INPUT_NAME
        self._output_name = contract.OUTPUT_NAME
        self._depth_kind: DepthKind = "relative"
        self.depth_stride = 1
        """The model's depth stride (from its config), known once ``ready()`` or ``infer()`` has succeeded."""
        self.server_concurrency: int | None = None
        """Requests the model runs at once (from its config), known once ``ready()`` succeeded."""
        self._metadata_loaded = False
        self._closed = False
        self.shared_memory = shared_memory
        wanted = shared_memory == "on" or (shared_memory == "auto" and is_loopback_url(url))
        self._shm_pool = SharedMemoryPool(self._grpc) if wanted else None
        self._shm_active = False  # regions registered; False until the first metadata load, and after a refusal
        self._shm_refusal_logged = False

    def __repr__(self) -> str:
        return (
            f"TritonDepthClient(url={self.url!r}, model={self.model!r}, timeout={self.timeout}, "
            f"shared_memory={self.shared_memory!r})"
        )

    def __str__(self) -> str:
        return f"Triton {self.url} model {self.model} via {self.transport}"

    @property
    def transport(self) -> Literal["shared memory", "gRPC"]:
        """How frames and depth travel now: ``shared memory`` once regions are registered, else ``gRPC``."""
        return "shared memory" if self._shm_active else "gRPC"

    @property
    def depth_kind(self) -> DepthKind:
        return self._depth_kind

    def _grpc(self) -> Any:
        if self._closed:
            raise InferenceError("the Triton client is closed")
        if self._client is None:
            from tritonclient.grpc.aio import InferenceServerClient

            self._client = InferenceServerClient(self.url, channel_args=list(_GRPC_CHANNEL_ARGS))
        return self._client

    def _convert(self, exc: Exception, what: str) -> InferenceError:
        """Map a tritonclient/grpc error to ours, with a message that says what to do."""
        status = ""
        status_fn = getattr(exc, "status", None)
        if callable(status_fn):
            status = str(status_fn() or "")
        code = status.rsplit(".", 1)[-1]
        detail = getattr(exc, "message", None)
        detail = detail() if callable(detail) else str(exc)
        where = f"Triton at {self.url} (model {self.model!r})"
        if code == "RESOURCE_EXHAUSTED" or (
            code == "UNAVAILABLE" and any(m in str(detail).lower() for m in _OVERLOAD_MESSAGES)
        ):
            return InferenceOverloaded(f"{what} rejected by {where}, which is overloaded: {detail}")
        if code == "DEADLINE_EXCEEDED" or isinstance(exc, TimeoutError):
            return InferenceTimeout(
                f"{what} timed out after {self.timeout:g} s on {where}: the server is slow or overloaded"
            )
        if code in _UNAVAILABLE_CODES:
            self._metadata_loaded = False  # the model may come back changed
            return InferenceUnavailable(f"{what} failed: {where} is unavailable ({code}): {detail}")
        return InferenceError(f"{what} failed on {where} ({code or type(exc).__name__}): {detail}")

    async def _load_metadata(self) -> None:
        client = self._grpc()
        timeout = min(self.timeout, _READY_TIMEOUT_S * 2)
        try:
            metadata = await client.get_model_metadata(self.model, self.version, as_json=True, client_timeout=timeout)
            config = await client.get_model_config(self.model, self.version, as_json=True, client_timeout=timeout)
        except Exception as exc:
            raise self._convert(exc, "reading model metadata") from exc
        inputs, outputs = metadata.get("inputs", []), metadata.get("outputs", [])
        if len(inputs) != 1 or len(outputs) < 1:
            raise InferenceError(
                f"model {self.model!r} on {self.url} has {len(inputs)} inputs and {len(outputs)} outputs; "
                f"the contract is one {contract.INPUT_NAME} input and a {contract.OUTPUT_NAME} output"
            )
        image = inputs[0]
        if image.get("datatype") != "UINT8" or len(image.get("shape", [])) != 4:
            raise InferenceError(
                f"model {self.model!r} input {image.get('name')!r} is {image.get('datatype')} "
                f"{image.get('shape')}; the contract is UINT8 [batch, H, W, 3]"
            )
        names = [o.get("name") for o in outputs]
        output = next((o for o in outputs if o.get("name") == contract.OUTPUT_NAME), outputs[0])
        if output.get("datatype") != "FP32":
            raise InferenceError(
                f"model {self.model!r} output {output.get('name')!r} is {output.get('datatype')}, not FP32"
            )
        parameters = config.get("config", config).get("parameters", {})
        kind = parameters.get(contract.PARAM_DEPTH_KIND, {}).get("string_value")
        stride = _depth_stride(
            parameters.get(contract.PARAM_DEPTH_STRIDE, {}).get("string_value"), f"model {self.model!r}"
        )
        self._input_name, self._output_name = image["name"], output["name"]
        self.depth_stride = stride
        self._depth_kind = _depth_kind(kind, f"model {self.model!r}")
        self.server_concurrency = server_concurrency(config.get("config", config))
        if not self._metadata_loaded:
            log.debug("model %s: input %s, outputs %s, depth_kind %s", self.model, self._input_name, names, kind)
        self._metadata_loaded = True
        await self._open_shared_memory()

    async def _open_shared_memory(self) -> None:
        """(Re)register one region pair, or fall back to gRPC payloads when Triton refuses it.

        Run after every metadata (re)load: a restarted Triton has forgotten the registrations.
        """
        pool = self._shm_pool
        if pool is None:
            return
        pool.reset()
        try:
            pair = await pool.acquire(_FIRST_SHM_PAIR_PIXELS)
        except SharedMemoryRefused as exc:
            self._shared_memory_refused(exc)
            return
        if pair is not None:
            pool.release(pair, reusable=True)
        if not self._shm_active:
            log.info("depth requests to %s pass frames and depth through system shared memory", self.url)
        self._shm_active = True

    def _shared_memory_refused(self, exc: SharedMemoryRefused) -> None:
        """Send payloads over gRPC until the next metadata load tries again; say so once."""
        self._shm_active = False
        if not self._shm_refusal_logged:
            self._shm_refusal_logged = True
            level = logging.WARNING if self.shared_memory == "on" else logging.INFO
            log.log(level, "system shared memory with %s refused, frames go over gRPC: %s", self.url, exc)

    async def ready(self) -> bool:
        """Whether Triton answers and the model is ready; never raises."""
        try:
            client = self._grpc()
            if not await client.is_server_ready(client_timeout=_READY_TIMEOUT_S):
                return False
            if not await client.is_model_ready(self.model, self.version, client_timeout=_READY_TIMEOUT_S):
                return False
            if not self._metadata_loaded:
                await self._load_metadata()
        except Exception as exc:
            log.debug("readiness check of %s failed: %s", self.url, exc)
            return False
        return True

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        check_frame(rgb)
        if not self._metadata_loaded:
            await self._load_metadata()
        height, width = rgb.shape[:2]
        image = InferInput(self._input_name, [1, height, width, 3], "UINT8")
        output = InferRequestedOutput(self._output_name)
        pair = await self._shm_pair(height * width)
        # Only a request Triton has answered frees its regions for reuse: after a timeout, a cancellation
        # or a lost connection Triton may still read the frame or write the depth. Regions Triton forgot
        # (a restart) come back NOT_FOUND: unavailable, so the metadata reload registers new ones.
        answered = False
        try:
            if pair is None:
                image.set_data_from_numpy(np.ascontiguousarray(rgb)[None])
            else:
                pair.input.write(rgb)
                image.set_shared_memory(pair.input.name, rgb.nbytes)
                output.set_shared_memory(pair.output.name, pair.output.byte_size)
            try:
                result = await self._grpc().infer(
                    self.model,
                    [image],
                    model_version=self.version,
                    outputs=[output],
                    client_timeout=self.timeout,
                )
            except Exception as exc:
                error = self._convert(exc, "depth request")
                answered = not isinstance(error, (InferenceTimeout, InferenceUnavailable)) or isinstance(
                    error, InferenceOverloaded
                )
                raise error from exc
            depth = result.as_numpy(self._output_name) if pair is None else self._read_shm_output(result, pair)
            answered = True
        finally:
            if pair is not None and self._shm_pool is not None:
                self._shm_pool.release(pair, reusable=answered)
        if depth is None:
            raise InferenceError(f"Triton at {self.url} returned no {self._output_name!r} output")
        return _check_depth(depth, height, width, self.depth_stride, f"model {self.model!r}")

    async def _shm_pair(self, pixels: int) -> RegionPair | None:
        """A region pair of its own for this request, or None: payloads over gRPC."""
        if not self._shm_active or self._shm_pool is None:
            return None
        try:
            return await self._shm_pool.acquire(pixels)
        except SharedMemoryRefused as exc:
            self._shared_memory_refused(exc)
            return None

    def _read_shm_output(self, result: Any, pair: RegionPair) -> NDArray[Any] | None:
        """The output copied out of ``pair``'s region, typed and shaped as the response says."""
        from tritonclient.utils import triton_to_np_dtype

        tensor = result.get_output(self._output_name)
        if tensor is None:
            return None
        dtype = triton_to_np_dtype(tensor.datatype)
        if dtype is None or dtype == np.object_:
            raise InferenceError(f"model {self.model!r} output {self._output_name!r} is {tensor.datatype}, not FP32")
        try:
            return pair.output.read(np.dtype(dtype), tuple(int(d) for d in tensor.shape))
        except ValueError as exc:
            raise InferenceError(f"Triton at {self.url} returned an output larger than its region: {exc}") from exc

    async def close(self) -> None:
        if self._shm_pool is not None:
            try:
                await self._shm_pool.close()  # unregisters over the channel still open, then unlinks
            finally:
                self._shm_active = False
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # closing must not fail shutdown
                log.debug("closing the Triton client: %s", exc)


class OnnxRuntimeDepthClient:
    """The exported ONNX model run in-process with ONNX Runtime (CPU).

    For unit tests and Triton-less machines. ``depth_kind`` comes from the ONNX
    metadata (key ``depth_kind``), else ``relative``. Runs one request at a
    time on its own thread so the event loop never blocks.
    """

    def __init__(self, model_path: str | Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError("OnnxRuntimeDepthClient needs onnxruntime: pip install onnxruntime") from exc
        path = Path(model_path)
        if not path.is_file():
            raise ConfigError(f"ONNX model {str(path)!r} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ConfigError(f"ONNX Runtime cannot load {str(path)!r}: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        self._input_name = inputs[0].name
        names = [o.name for o in outputs]
        self._output_name = contract.OUTPUT_NAME if contract.OUTPUT_NAME in names else names[0]
        meta = self._session.get_modelmeta().custom_metadata_map
        self._depth_kind = _depth_kind(meta.get(contract.PARAM_DEPTH_KIND), f"ONNX model {path.name}")
        try:
            self.depth_stride = _depth_stride(meta.get(contract.PARAM_DEPTH_STRIDE), f"ONNX model {path.name}")
        except InferenceError as exc:
            raise ConfigError(str(exc)) from exc
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")
        self.path = path

    def __str__(self) -> str:
        return f"ONNX Runtime {self.path.name}"

    @property
    def depth_kind(self) -> DepthKind:
        return self._depth_kind

    async def ready(self) -> bool:
        return self._executor is not None

    def _run(self, batch: NDArray[np.uint8]) -> NDArray[Any]:
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        check_frame(rgb)
        if self._executor is None:
            raise InferenceUnavailable("the ONNX Runtime client is closed")
        batch = np.ascontiguousarray(rgb)[None]
        try:
            depth = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, batch)
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on a {rgb.shape[1]}x{rgb.shape[0]} frame: {exc}") from exc
        return _check_depth(depth, rgb.shape[0], rgb.shape[1], self.depth_stride, f"ONNX model {self.path.name}")

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


class DepthService:
    """One :class:`DepthClient` shared by every session, with outage tracking.

    - Every request is bounded by ``timeout`` seconds (:class:`~dronedepth.errors.InferenceTimeout`).
    - An unreachable server (:class:`InferenceUnavailable`) starts an outage at
      once. Overload rejections and timeouts start one only when nothing has
      succeeded for ``outage_after`` seconds: a busy server that still answers
      some requests is not down, its rejected frames are just dropped.
    - While the server is unreachable, one request is let through per backoff
      interval (``min_backoff`` doubling to ``max_backoff``); the others fail
      at once without touching the server. A server that is up but busy is
      not gated: each session keeps at most one request in flight anyway.
    - The first success ends the outage.
    - ``on_error(reason)`` is called for every failed or refused request, with
      reason ``unavailable``, ``overloaded``, ``timeout``, ``error`` or ``backoff``.
    """

    def __init__(
        self,
        client: DepthClient,
        *,
        timeout: float = 5.0,
        min_backoff: float = 0.25,
        max_backoff: float = 4.0,
        outage_after: float = 2.0,
        max_in_flight: int | Literal["auto"] | None = "auto",
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        # Frames beyond this wait in their drone's newest-frame slot (where newer frames replace them)
        # instead of queueing inside the server; FIFO, so drones take turns. "auto": what the server
        # runs at once, once the client has read it from the model config.
        self._auto_in_flight = max_in_flight == "auto"
        self._cap = max_in_flight if isinstance(max_in_flight, int) else None
        self._admission = asyncio.Semaphore(self._cap) if self._cap is not None else None
        self.timeout = timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.outage_after = outage_after
        self._on_error = on_error
        self._available = True
        self._last_success = time.monotonic()
        self._outage_started = 0.0
        self._backoff = min_backoff
        self._next_attempt = 0.0
        self._probing = False
        self._gated = False
        self._overload_logged = -math.inf
        self.outages = 0
        """How many outages began since start."""

    @property
    def available(self) -> bool:
        """False during an outage: from the error that started it to the next success."""
        return self._available

    @property
    def depth_kind(self) -> DepthKind:
        return self.client.depth_kind

    @property
    def max_in_flight(self) -> int | None:
        """The request cap in force; None: one request per drone (no cap, or "auto" not resolved yet)."""
        if self._auto_in_flight and self._cap is None:
            known = getattr(self.client, "server_concurrency", None)
            if known is not None:
                self._cap = known
                self._admission = asyncio.Semaphore(known)
                log.info("depth requests capped at %d in flight: what %s runs at once", known, self.client)
        return self._cap

    def admission(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Hold one of the ``max_in_flight`` request slots (no cap: a no-op)."""
        if self.max_in_flight is None or self._admission is None:
            return contextlib.nullcontext()
        return self._admission

    def _failed(self, reason: str) -> None:
        if self._on_error is not None:
            self._on_error(reason)

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Depth for ``rgb``; raises like :meth:`DepthClient.infer` (check :attr:`available` after a failure)."""
        probe = False
        if self._gated:
            now = time.monotonic()
            if self._probing or now < self._next_attempt:
                self._failed("backoff")
                wait = max(0.0, self._next_attempt - now)
                raise InferenceUnavailable(f"depth server unavailable; next attempt in {wait:.1f} s")
            self._probing = probe = True
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    depth = await self.client.infer(rgb)
            except TimeoutError as exc:
                raise InferenceTimeout(f"depth request timed out after {self.timeout:g} s") from exc
        except (InferenceTimeout, InferenceOverloaded) as exc:
            self._failed("timeout" if isinstance(exc, InferenceTimeout) else "overloaded")
            self._gated = False  # the server answers: it is up, only busy
            if self._available and time.monotonic() - self._last_success < self.outage_after:
                self._log_overload(exc)
            else:
                self._mark_unavailable(exc)
            raise
        except InferenceUnavailable as exc:
            self._failed("unavailable")
            self._mark_unavailable(exc)
            self._gate()
            raise
        except InferenceError:
            self._failed("error")
            raise
        finally:
            if probe:
                self._probing = False
        now = time.monotonic()
        self._last_success = now
        self._gated = False
        if not self._available:
            log.info("depth inference is back after %.1f s (%s)", now - self._outage_started, self.client)
            self._available = True
        return depth

    def _log_overload(self, exc: InferenceError) -> None:
        now = time.monotonic()
        if now - self._overload_logged >= _OVERLOAD_LOG_INTERVAL_S:
            self._overload_logged = now
            log.warning("depth server is overloaded, some frames are dropped (logged once a minute): %s", exc)

    def _mark_unavailable(self, exc: InferenceError) -> None:
        if self._available:
            self._available = False
            self.outages += 1
            self._outage_started = time.monotonic()
            log.warning("depth inference unavailable, dropping frames until it is back: %s", exc)

    def _gate(self) -> None:
        """Hold requests back for the next backoff interval (doubling while the server stays unreachable)."""
        self._backoff = min(self._backoff * 2, self.max_backoff) if self._gated else self.min_backoff
        self._gated = True
        self._next_attempt = time.monotonic() + self._backoff

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(_READY_TIMEOUT_S * 2):
                return await self.client.ready()
        except TimeoutError:
            return False

    async def close(self) -> None:
        await self.client.close()
