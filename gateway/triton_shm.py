"""Triton system shared memory: frames and depth maps pass through ``/dev/shm`` instead of gRPC messages.

When the gateway and Triton share a host (the embedded Triton, a sidecar in the
same pod sharing ``/dev/shm``), a request writes its frame into an input region
and Triton writes the depth into an output region: only the request and response
headers cross gRPC, not the 921 KB of a 640×480 frame and its depth map.

- Regions come in pairs (one input, one output), one pair per request in flight:
  :meth:`SharedMemoryPool.acquire` hands out a free pair or registers a new one
  (up to ``max_pairs``; beyond, the request sends its payload over gRPC), so no
  region is ever used by two requests at once. A pair too small for a frame is
  replaced by one sized for it (Triton cannot resize a registered region).
- The depth is copied out of the output region before the pair is released
  (:meth:`Region.read`): one memcpy of at most H×W float32, after which the pair
  serves the next request while the pipeline keeps its own array.
- A pair whose request did not come back cleanly (timeout, cancellation, lost
  connection) may still be read or written by Triton: it is never reused but
  retired, its file unlinked at once (Triton keeps its own mapping) and its
  registration removed before the next pair is handed out.
- Names are ``dronedepth-<pid>-<random hex>-<n>-{in,out}``, unique per process;
  the files are created mode 0600 (:class:`multiprocessing.shared_memory.SharedMemory`).
  :meth:`SharedMemoryPool.close` unregisters and unlinks every one, whatever
  failed before. A process that dies without closing leaves its regions to
  multiprocessing's resource tracker (a helper process), which unlinks them when
  the process is gone, even after SIGKILL; only when the tracker is killed too
  (the whole process group) do they stay in ``/dev/shm`` — at most
  2 × ``max_pairs`` files, for the life of the host or container — and Triton
  holds their mappings until it restarts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Region", "RegionPair", "SharedMemoryPool", "SharedMemoryRefused", "is_loopback_url"]

log = logging.getLogger(__name__)

_REGISTRY_TIMEOUT_S = 2.0
_FLOAT32_BYTES = 4


class SharedMemoryRefused(Exception):
    """Triton (or this host) refused a shared memory region; the request can still go over gRPC."""


def is_loopback_url(url: str) -> bool:
    """Whether ``HOST:PORT`` names this very host (a loopback address or ``localhost``), so Triton shares /dev/shm."""
    host = url.rsplit(":", 1)[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to another machine


@dataclass(eq=False)
class Region:
    """One POSIX shared memory file, registered with Triton under its file name."""

    name: str
    byte_size: int
    memory: SharedMemory

    @classmethod
    def create(cls, name: str, byte_size: int) -> Region:
        try:
            memory = SharedMemory(name, create=True, size=byte_size)
        except OSError as exc:
            raise SharedMemoryRefused(f"cannot create /dev/shm/{name} ({byte_size} bytes): {exc}") from exc
        return cls(name, byte_size, memory)

    @property
    def key(self) -> str:
        """What ``shm_open`` takes: the name with a leading slash."""
        return f"/{self.name}"

    def write(self, array: NDArray[Any]) -> None:
        """Copy ``array`` (C order) to the start of the region."""
        np.copyto(np.ndarray(array.shape, array.dtype, buffer=self.memory.buf), array)

    def read(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
        """A copy of the array at the start of the region; the region is free to reuse once this returns."""
        if int(np.prod(shape)) * dtype.itemsize > self.byte_size:
            raise ValueError(f"{dtype} {list(shape)} does not fit the {self.byte_size}-byte region {self.name}")
        return np.ndarray(shape, dtype, buffer=self.memory.buf).copy()

    def destroy(self) -> None:
        """Unmap and unlink the file (Triton's own mapping, if any, stays valid until it unregisters)."""
        try:
            self.memory.close()
        except BufferError:  # a view still exported (an exception's traceback): unlinking still frees the name
            log.debug("region %s unlinked while a view of it is alive", self.name)
        with contextlib.suppress(FileNotFoundError):  # unlinked already (by hand, or a tracker)
            self.memory.unlink()


@dataclass(eq=False)
class RegionPair:
    """The input and output regions of one request in flight."""

    input: Region
    output: Region
    generation: int

    @property
    def pixels(self) -> int:
        """The largest frame (H×W) the pair holds: an H×W×3 uint8 input and an H×W float32 output."""
        return min(self.input.byte_size // 3, self.output.byte_size // _FLOAT32_BYTES)


class SharedMemoryPool:
    """Region pairs registered with one Triton, one per request in flight (see the module docstring).

    ``triton`` returns the ``tritonclient.grpc.aio`` client to (un)register with.
    Not thread-safe: used from the event loop only.
    """

    def __init__(self, triton: Callable[[], Any], *, max_pairs: int = 16) -> None:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {max_pairs}")
        self._triton = triton
        self.max_pairs = max_pairs
        self.prefix = f"dronedepth-{os.getpid()}-{secrets.token_hex(4)}"
        """Start of every region name of this pool."""
        self._serial = 0
        self._generation = 0
        self._free: list[RegionPair] = []
        self._live: set[RegionPair] = set()
        self._unregister: list[str] = []  # retired regions Triton may still have registered

    @property
    def region_names(self) -> list[str]:
        """Names of the regions this pool holds now (free or in use)."""
        return [region.name for pair in self._live for region in (pair.input, pair.output)]

    async def acquire(self, pixels: int) -> RegionPair | None:
        """A registered pair for a frame of ``pixels`` (H×W) that no other request uses; None when
        ``max_pairs`` are all in use. Raises :class:`SharedMemoryRefused` when a new pair cannot be
        registered, and the error of Triton's client when it cannot be reached."""
        await self._unregister_retired()
        while self._free:
            pair = self._free.pop()
            if pair.pixels >= pixels:
                return pair
            self._retire(pair)
        if len(self._live) >= self.max_pairs:
            return None
        await self._unregister_retired()
        return await self._create(pixels)

    def release(self, pair: RegionPair, *, reusable: bool) -> None:
        """Give ``pair`` back: to the free list when Triton is done with it (``reusable``) and no reset
        happened since it was handed out, else retire it."""
        if reusable and pair.generation == self._generation and pair in self._live:
            self._free.append(pair)
        else:
            self._retire(pair)

    def reset(self) -> None:
        """Retire every pair (now if free, on release if in use): after a Triton outage its registrations
        may be gone."""
        self._generation += 1
        while self._free:
            self._retire(self._free.pop())

    async def close(self) -> None:
        """Unregister and unlink every region, whatever failed before; pairs still in use are retired too."""
        self._generation += 1
        self._free.clear()
        for pair in list(self._live):
            self._retire(pair)
        await self._unregister_retired(final=True)

    async def _create(self, pixels: int) -> RegionPair:
        self._serial += 1
        name = f"{self.prefix}-{self._serial}"
        input_region = Region.create(f"{name}-in", pixels * 3)
        try:
            output_region = Region.create(f"{name}-out", pixels * _FLOAT32_BYTES)
        except SharedMemoryRefused:
            input_region.destroy()
            raise
        pair = RegionPair(input_region, output_region, self._generation)
        self._live.add(pair)
        try:
            for region in (input_region, output_region):
                await self._register(region)
        except BaseException:
            self._retire(pair)
            raise
        return pair

    async def _register(self, region: Region) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            await self._triton().register_system_shared_memory(
                region.name, region.key, region.byte_size, client_timeout=_REGISTRY_TIMEOUT_S
            )
        except InferenceServerException as exc:
            raise SharedMemoryRefused(f"Triton refused region {region.name}: {exc.message()}") from exc
        self._unregister.append(region.name)  # from now on Triton holds it until unregistered

    def _retire(self, pair: RegionPair) -> None:
        self._live.discard(pair)
        pair.input.destroy()
        pair.output.destroy()

    async def _unregister_retired(self, *, final: bool = False) -> None:
        live = set(self.region_names)
        pending = [name for name in self._unregister if name not in live]
        if not pending:
            return
        kept = [name for name in self._unregister if name in live]
        for name in pending:
            try:
                await self._triton().unregister_system_shared_memory(name, client_timeout=_REGISTRY_TIMEOUT_S)
            except Exception as exc:  # in use by a request Triton still runs, or Triton is gone
                if not final:
                    kept.append(name)  # try again before the next pair is handed out
                log.debug("unregistering shared memory region %s: %s", name, exc)
        self._unregister = kept
