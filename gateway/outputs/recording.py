"""Per-drone recording of what the gateway computed: keypoints and point clouds.

Layout, one folder per drone under the recording directory::

    <directory>/<drone_id>/keypoints.jsonl        one protocol message per line
    <directory>/<drone_id>/cloud_<frame:06d>.ply  binary PLY, every Nth frame

Each line of ``keypoints.jsonl`` is exactly what was sent to the drone
(:func:`dronedepth.protocol.encode`), so :func:`dronedepth.protocol.decode`
reads it back. Writing blocks: call :meth:`Recorder.write` from an executor,
not the event loop.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, TextIO

import open3d as o3d

from dronedepth.errors import ConfigError
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE, encode
from dronedepth.gateway.pointcloud import make_point_cloud

if TYPE_CHECKING:
    from dronedepth.gateway.pipeline import FrameResult

__all__ = ["KEYPOINTS_FILE", "Recorder", "cloud_filename"]

KEYPOINTS_FILE: Final = "keypoints.jsonl"


def cloud_filename(frame_index: int) -> str:
    return f"cloud_{frame_index:06d}.ply"


class Recorder:
    """Appends one drone's keypoints messages and periodic point clouds to disk.

    ``cloud_every`` = N writes the cloud of the first frame and of every Nth
    frame recorded after it (0 disables clouds). A frame without a cloud (cloud
    building off) gets one made from its points and colours. Re-opening the
    same drone's folder appends to its ``keypoints.jsonl``. Thread-safe;
    ``close()`` is idempotent, and the recorder is a context manager.
    """

    def __init__(self, directory: Path, drone_id: str, *, cloud_every: int = 10) -> None:
        # Every id signalling accepts; none holds '.' or '/', so none can leave ``directory``.
        if not isinstance(drone_id, str) or not DRONE_ID_PATTERN.fullmatch(drone_id):
            raise ConfigError(f"drone id {drone_id!r} cannot name a recording folder: use {DRONE_ID_RULE}")
        if not isinstance(cloud_every, int) or cloud_every < 0:
            raise ConfigError(f"cloud_every must be a non-negative integer, got {cloud_every!r}")
        self.path = Path(directory) / drone_id
        self.cloud_every = cloud_every
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._file: TextIO | None = open(  # noqa: SIM115 - closed by close()
                self.path / KEYPOINTS_FILE, "a", encoding="utf-8", buffering=1
            )
        except OSError as exc:
            raise ConfigError(f"cannot record to {self.path}: {exc.strerror or exc}") from exc
        self._lock = threading.Lock()
        self._frames = 0

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, result: FrameResult) -> None:
        """Record one frame: its message as a JSON line and, when due, its cloud as PLY."""
        line = encode(result.message)
        with self._lock:
            if self._file is None:
                raise ValueError(f"recorder for {self.path} is closed")
            self._file.write(line + "\n")
            self._file.flush()
            due = self.cloud_every > 0 and self._frames % self.cloud_every == 0
            self._frames += 1
        if due:
            self._write_cloud(result)

    def _write_cloud(self, result: FrameResult) -> None:
        cloud = result.cloud
        if cloud is None:
            cloud = make_point_cloud(result.points, result.colors)
        if not cloud.has_points():
            return  # nothing to write (and Open3D refuses empty clouds)
        target = self.path / cloud_filename(result.message.frame_index)
        # Write then rename, so a reader never sees half a file; the suffix tells Open3D the format.
        partial = target.with_name(f".{target.stem}.partial.ply")
        if not o3d.io.write_point_cloud(str(partial), cloud, write_ascii=False, compressed=False):
            partial.unlink(missing_ok=True)
            raise OSError(f"Open3D could not write the point cloud {target}")
        os.replace(partial, target)

    def close(self) -> None:
        """Flush and close the keypoints file; safe to call more than once."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
