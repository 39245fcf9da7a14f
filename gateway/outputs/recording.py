"""Per-session recording of what the gateway computed: keypoints and point clouds.

Layout, one folder per drone session under the recording directory, so a
reconnecting drone never overwrites or appends to an earlier session::

    <directory>/<drone_id>/<start UTC>-<tag>/keypoints.jsonl        one protocol message per line
    <directory>/<drone_id>/<start UTC>-<tag>/cloud_<frame:06d>.ply  binary PLY, every Nth frame

``<start UTC>`` is ``YYYYmmddTHHMMSSZ`` (folders sort by start time) and
``<tag>`` 8 random hex digits. Each line of ``keypoints.jsonl`` is what was
sent to the drone (:func:`dronedepth.protocol.encode`, points in ``--axes``)
plus ``stamp_ns``, the frame's capture time; each PLY holds optical-frame
points and its capture time in a ``comment stamp_ns`` line. Lines are written whole by
one ``write`` (a failed one is cut back off), so
:func:`dronedepth.protocol.decode` reads every line back. A PLY appears under
its final name only after every byte of it was written.

A recording stops, with one error log and one call of its fault handler, when
a write fails (disk full), when the session has written ``max_bytes`` or when
the file system has less than ``min_free_bytes`` free; the gateway keeps
serving the drone. Writing blocks: call :meth:`Recorder.write` from an
executor, not the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ConfigError
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE

if TYPE_CHECKING:
    from dronedepth.gateway.pipeline import FrameResult

__all__ = [
    "DEFAULT_MIN_FREE_BYTES",
    "KEYPOINTS_FILE",
    "FaultHandler",
    "Recorder",
    "RecordingBudget",
    "RecordingLimits",
    "cloud_filename",
    "new_session_folder",
    "ply_bytes",
    "session_folders",
]

log = logging.getLogger(__name__)

KEYPOINTS_FILE: Final = "keypoints.jsonl"
DEFAULT_MIN_FREE_BYTES: Final = 512 * 1024 * 1024
FREE_SPACE_CHECK_BYTES: Final = 1024 * 1024
"""The free space is looked up (one ``statvfs``) before the first write and then after every this many bytes."""

FaultHandler = Callable[[str, str], None]
"""Called as ``handler(drone_id, reason)`` when a recording stops; reasons: ``write_failed``, ``low_disk``,
``size_limit``."""

_PLY_VERTEX: Final = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)


def cloud_filename(frame_index: int) -> str:
    return f"cloud_{frame_index:06d}.ply"


def new_session_folder(drone_folder: Path) -> Path:
    """A new, empty ``<start UTC>-<tag>`` folder under ``drone_folder``; never an existing one."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    while True:
        path = drone_folder / f"{stamp}-{secrets.token_hex(4)}"
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path


def session_folders(directory: Path | str, drone_id: str) -> list[Path]:
    """The recording folders of ``drone_id`` under ``directory``, oldest first."""
    drone_folder = Path(directory) / drone_id
    if not drone_folder.is_dir():
        return []
    return sorted(p for p in drone_folder.iterdir() if p.is_dir())


def ply_bytes(
    points: NDArray[Any], colors: NDArray[Any], comments: tuple[str, ...] = ()
) -> tuple[bytes, NDArray[np.void]]:
    """Header and vertex records of a binary little-endian PLY: float32 x y z, uint8 red green blue.

    ``colors`` are ``(N, 3)`` RGB, uint8 or float in 0..1 (Open3D's);
    ``comments`` go into the header, one line each. Written by hand rather
    than by Open3D, which reports success on a failed write.
    """
    vertices = np.empty(len(points), _PLY_VERTEX)
    for axis, name in enumerate("xyz"):
        vertices[name] = points[:, axis]
    if colors.dtype != np.uint8:
        colors = np.clip(np.rint(np.asarray(colors) * 255.0), 0, 255).astype(np.uint8)
    for channel, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[:, channel]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        + "".join(f"comment {comment}\n" for comment in comments)
        + f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    return header.encode("ascii"), vertices


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Every byte of ``data`` to ``fd``, or OSError (a short write is the disk filling up)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"wrote {written} of {len(view)} bytes")
        view = view[written:]


@dataclass(frozen=True, slots=True)
class RecordingLimits:
    """How much a session may record: ``max_bytes`` per session (None: no limit), and never below
    ``min_free_bytes`` free on the file system."""

    max_bytes: int | None = None
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES

    def __post_init__(self) -> None:
        if self.max_bytes is not None and (not isinstance(self.max_bytes, int) or self.max_bytes < 1):
            raise ConfigError(f"the recording size limit must be a positive number of bytes, got {self.max_bytes!r}")
        if not isinstance(self.min_free_bytes, int) or self.min_free_bytes < 0:
            raise ConfigError(f"the free-space watermark must be a number of bytes >= 0, got {self.min_free_bytes!r}")


class RecordingBudget:
    """Bytes one session's recording may still write; stops it once, with one log line and one fault.

    Not thread-safe: its owner (a recorder or bag) calls it under its own lock.
    """

    def __init__(
        self, path: Path, drone_id: str, limits: RecordingLimits, on_fault: FaultHandler | None = None
    ) -> None:
        self.path = path
        self.drone_id = drone_id
        self.limits = limits
        self.on_fault = on_fault
        self.written = 0
        self.stopped: str | None = None
        """The reason the recording stopped, or None while it runs."""
        self._unchecked = FREE_SPACE_CHECK_BYTES  # check before the first write

    def admit(self, size: int) -> bool:
        """True if ``size`` more bytes may be written; otherwise stops the recording and returns False."""
        if self.stopped is not None:
            return False
        limit = self.limits.max_bytes
        if limit is not None and self.written + size > limit:
            self.stop("size_limit", f"the session reached --record-max-bytes ({limit} bytes)")
            return False
        if self.limits.min_free_bytes and self._unchecked + size >= FREE_SPACE_CHECK_BYTES:
            self._unchecked = 0
            free = shutil.disk_usage(self.path).free
            if free - size < self.limits.min_free_bytes:
                self.stop(
                    "low_disk",
                    f"{free // 2**20} MiB free, under --record-min-free ({self.limits.min_free_bytes // 2**20} MiB)",
                )
                return False
        return True

    def spent(self, size: int) -> None:
        self.written += size
        self._unchecked += size

    def stop(self, reason: str, detail: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        log.error(
            "drone %s: recording %s stopped (%s): %s; what it holds so far is complete",
            self.drone_id,
            self.path,
            reason,
            detail,
        )
        if self.on_fault is not None:
            self.on_fault(self.drone_id, reason)


class Recorder:
    """Writes one drone session's keypoints messages and periodic point clouds to its own folder.

    ``cloud_every`` = N writes the cloud of the first frame and of every Nth
    frame recorded after it (0 disables clouds). A frame without a cloud (cloud
    building off) gets its points and colours written. Every :class:`Recorder`
    makes a new session folder (:attr:`path`). Once the recording has stopped
    (see the module docstring) :meth:`write` does nothing. Thread-safe;
    ``close()`` is idempotent, and the recorder is a context manager.
    """

    def __init__(
        self,
        directory: Path,
        drone_id: str,
        *,
        cloud_every: int = 10,
        limits: RecordingLimits | None = None,
        on_fault: FaultHandler | None = None,
    ) -> None:
        # Every id signalling accepts; none holds '.' or '/', so none can leave ``directory``.
        if not isinstance(drone_id, str) or not DRONE_ID_PATTERN.fullmatch(drone_id):
            raise ConfigError(f"drone id {drone_id!r} cannot name a recording folder: use {DRONE_ID_RULE}")
        if not isinstance(cloud_every, int) or cloud_every < 0:
            raise ConfigError(f"cloud_every must be a non-negative integer, got {cloud_every!r}")
        self.cloud_every = cloud_every
        try:
            self.path = new_session_folder(Path(directory) / drone_id)
            self._fd: int | None = os.open(
                self.path / KEYPOINTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise ConfigError(f"cannot record to {Path(directory) / drone_id}: {exc.strerror or exc}") from exc
        self.budget = RecordingBudget(self.path, drone_id, limits or RecordingLimits(), on_fault)
        self._keypoints_size = 0
        self._lock = threading.Lock()
        self._frames = 0

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def stopped(self) -> str | None:
        """Why the recording stopped (``write_failed``, ``low_disk``, ``size_limit``), or None."""
        return self.budget.stopped

    def write(self, result: FrameResult, *, stamp_ns: int) -> None:
        """Record one frame captured at ``stamp_ns`` (ns since the Unix epoch): a JSON line and, when due, a PLY."""
        # The message as sent to the drone plus its capture time; decode() ignores the extra field.
        line = (
            json.dumps({**result.message.to_dict(), "stamp_ns": stamp_ns}, separators=(",", ":"), allow_nan=False)
            + "\n"
        ).encode()
        with self._lock:
            if self._fd is None:
                raise ValueError(f"recorder for {self.path} is closed")
            if not self.budget.admit(len(line)):
                return
            try:
                self._append_line(self._fd, line)
            except OSError as exc:
                self.budget.stop("write_failed", f"{KEYPOINTS_FILE}: {exc.strerror or exc}")
                return
            due = self.cloud_every > 0 and self._frames % self.cloud_every == 0
            self._frames += 1
            if due:
                self._write_cloud(result, stamp_ns)

    def _append_line(self, fd: int, line: bytes) -> None:
        try:
            _write_all(fd, line)
        except OSError:
            # Cut a partly written line back off, so the file stays whole lines.
            try:
                os.ftruncate(fd, self._keypoints_size)
            except OSError as exc:
                log.error("cannot cut %s back to its last whole line: %s", self.path / KEYPOINTS_FILE, exc)
            raise
        self._keypoints_size += len(line)
        self.budget.spent(len(line))

    def _write_cloud(self, result: FrameResult, stamp_ns: int) -> None:
        cloud = result.cloud
        if cloud is None:
            points, colors = result.points, result.colors
        else:
            points, colors = np.asarray(cloud.points), np.asarray(cloud.colors)
            if len(colors) != len(points):  # a cloud made without colours
                colors = np.zeros((len(points), 3), np.uint8)
        if len(points) == 0:
            return
        message = result.message
        unit = "metres" if message.depth_kind == "metric" else "relative, NOT metres"
        comments = (
            "frame camera_optical (x right, y down, z forward)",
            f"unit {unit}",
            f"frame_index {message.frame_index}",
            f"stamp_ns {stamp_ns}",  # capture time, ns since the Unix epoch
        )
        header, vertices = ply_bytes(points, colors, comments)
        size = len(header) + vertices.nbytes
        if not self.budget.admit(size):
            return
        target = self.path / cloud_filename(result.message.frame_index)
        # Written under a hidden name and renamed once complete, so a reader never sees half a file.
        partial = target.with_name(f".{target.name}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, header)
                _write_all(fd, vertices.data)
            finally:
                os.close(fd)
            os.replace(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            self.budget.stop("write_failed", f"{target.name}: {exc.strerror or exc}")
            return
        self.budget.spent(size)

    def close(self) -> None:
        """Close the keypoints file; safe to call more than once."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
