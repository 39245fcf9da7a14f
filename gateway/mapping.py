"""The gateway's world-map service: fusion off the frame path, and what the map gives back to the drones.

:class:`MapService` owns the :class:`~dronedepth.gateway.fusion.MapRegistry`
(one TSDF map per world frame) and **one dedicated thread** that fuses frames
into it, so fusion never takes a worker from the shared frame executor and
never delays a drone's keypoints. Sessions hand frames over with
:meth:`MapService.submit` after their keypoints are sent; the handoff keeps
one slot per drone: a frame arriving while that drone's previous one still
waits replaces it, and the replaced frame is counted ``behind``. Frames
without a pose or without metric depth are counted (``no_pose``,
``not_metric``) and never reach the thread.

What the map gives back, never waiting on the thread:

- :meth:`MapService.surround`: a drone's camera obstacle profile merged with
  the 360° profile of the map around its pose (sectors outside the camera's
  view come from the map, marked ``map``), from the latest published
  snapshot of the occupied voxels (refreshed by the thread at most every
  ``snapshot_period_s``);
- :meth:`MapService.take_local_map`: the newest ``local_map`` message of a
  drone, made by the thread at most every ``local_map_period_s`` per drone;
- :meth:`MapService.ply_bytes` / :meth:`MapService.occupancy_png` for the
  HTTP routes and :meth:`MapService.save` on shutdown.

Frames and units: the maps are ENU (``map`` or ``odom``), metres; depth is
z-depth in metres in the camera optical frame.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import cv2
import numpy as np
import open3d as o3d
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dronedepth import protocol
from dronedepth.errors import ConfigError
from dronedepth.frames import Transform
from dronedepth.gateway.fusion import (
    FUSED,
    SKIP_BEHIND,
    SKIP_NO_POSE,
    SKIP_NOT_METRIC,
    SKIP_NOT_SELECTED,
    SKIP_REASONS,
    MapConfig,
    MapRegistry,
    OccupiedVoxels,
    local_height_map,
    map_profile,
    occupancy_image,
)
from dronedepth.gateway.obstacles import ObstacleConfig, ObstacleProfile, merge_profiles
from dronedepth.pose_buffer import TimedPose
from dronedepth.protocol import LOCAL_MAP_NO_DATA, MAX_LOCAL_MAP_CELLS, WORLD_FRAMES, CameraMessage, CameraPose

__all__ = ["MAP_KINDS", "MapService", "MapSettings"]

log = logging.getLogger(__name__)

MapKind = Literal["cloud", "mesh"]
MAP_KINDS: Final[tuple[MapKind, ...]] = ("cloud", "mesh")
MESH_MAX_TRIANGLES: Final = 2_000_000
"""A mesh larger than this is refused (HTTP 413) rather than built: ~100 MB of PLY."""
_OUTCOMES: Final = (FUSED, *SKIP_REASONS)


@dataclass(frozen=True, slots=True)
class MapSettings:
    """The gateway's ``--map*`` settings.

    ``drones``: the drones whose frames are fused and who get map sectors and
    ``local_map`` (``None``: every drone). The ``local_map`` box spans
    ``local_map_half_width_m`` east/west and north/south of the drone's camera
    and ``[z - local_map_below_m, z + local_map_above_m]``; it is sent at most
    every ``local_map_period_s`` seconds per drone.
    """

    fusion: MapConfig = field(default_factory=MapConfig)
    drones: frozenset[str] | None = None
    local_map_half_width_m: float = 10.0
    local_map_below_m: float = 10.0
    local_map_above_m: float = 10.0
    local_map_period_s: float = 0.5
    snapshot_period_s: float = 0.5
    """The occupied-voxel snapshot the obstacle sectors and ``local_map`` read is at most this old (seconds)."""

    def __post_init__(self) -> None:
        for name in ("local_map_half_width_m", "local_map_below_m", "local_map_above_m"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"map: {name} must be a finite number > 0, got {value!r}")
        for name in ("local_map_period_s", "snapshot_period_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"map: {name} must be >= 0 seconds, got {getattr(self, name)!r}")
        cell = self.fusion.voxel_size_m
        cells = math.ceil(2 * self.local_map_half_width_m / cell)
        if cells * cells > MAX_LOCAL_MAP_CELLS:
            largest = math.floor(math.isqrt(MAX_LOCAL_MAP_CELLS) * cell / 2 * 100) / 100
            raise ConfigError(
                f"map: a local_map box of ±{self.local_map_half_width_m} m at {cell} m voxels has {cells}x{cells} "
                f"cells, more than {MAX_LOCAL_MAP_CELLS}; use a half-width of at most {largest} m or larger voxels"
            )
        if math.floor((self.local_map_below_m + self.local_map_above_m) / cell) >= LOCAL_MAP_NO_DATA:
            raise ConfigError(
                f"map: a local_map {self.local_map_below_m + self.local_map_above_m} m tall at {cell} m voxels "
                f"needs {LOCAL_MAP_NO_DATA} or more height levels; make it shorter or the voxels larger"
            )

    def selects(self, drone_id: str) -> bool:
        return self.drones is None or drone_id in self.drones


@dataclass(frozen=True, slots=True)
class _Job:
    drone_id: str
    depth_m: NDArray[np.float32]
    camera: CameraMessage
    frame_id: str
    world_from_camera: Transform
    stamp: float
    """Capture time of the frame (Unix seconds)."""


class MapService:
    """The world maps of every drone, fused in one dedicated thread (see the module docstring).

    :meth:`start` and :meth:`close` run the thread; every other method is
    thread-safe and never waits for a frame being fused, except
    :meth:`ply_bytes` and :meth:`save` (call them in an executor).
    """

    def __init__(self, settings: MapSettings) -> None:
        self.settings = settings
        self.registry = MapRegistry(settings.fusion, settings.drones)
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, _Job] = OrderedDict()
        """One waiting frame per drone, oldest first: the thread takes the drones in turn."""
        self._handoff_counts: Counter[str] = Counter()
        self._snapshots: dict[str, OccupiedVoxels] = {}
        self._snapshot_at: dict[str, float] = {}
        self._local_maps: dict[str, str] = {}
        self._local_map_at: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the map service is already started")
        self._thread = threading.Thread(target=self._run, name="gateway-map", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop the thread after the frame it is fusing (waiting frames are dropped); blocks up to ``timeout``."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("map: the fusion thread did not stop within %.0f s", timeout)

    def forget(self, drone_id: str) -> None:
        """A drone left: drop its waiting frame and its unsent ``local_map`` (its map content stays)."""
        with self._cond:
            self._pending.pop(drone_id, None)
        self._local_maps.pop(drone_id, None)
        self._local_map_at.pop(drone_id, None)

    # ------------------------------------------------------------------ handoff (event loop)

    def submit(
        self,
        drone_id: str,
        depth_m: NDArray[np.float32],
        camera: CameraMessage,
        camera_pose: CameraPose | None,
        *,
        metric: bool,
        stamp: float,
    ) -> str | None:
        """Hand one processed frame to the fusion thread; never waits.

        ``depth_m`` is the frame's z-depth (metres when ``metric``), read
        later by the thread: the caller must not change it. Returns the
        outcome when it is known now (``not_selected``, ``not_metric``,
        ``no_pose``, or ``behind`` for the waiting frame this one replaced),
        None when the frame waits for the thread.
        """
        outcome: str | None = None
        if not self.settings.selects(drone_id):
            outcome = SKIP_NOT_SELECTED
        elif not metric:
            outcome = SKIP_NOT_METRIC
        elif camera_pose is None:
            outcome = SKIP_NO_POSE
        if outcome is not None:
            with self._cond:
                self._handoff_counts[outcome] += 1
            return outcome
        assert camera_pose is not None
        job = _Job(drone_id, depth_m, camera, camera_pose.frame_id, camera_pose.world_from_camera, stamp)
        with self._cond:
            replaced = self._pending.pop(drone_id, None) is not None
            self._pending[drone_id] = job
            if replaced:
                self._handoff_counts[SKIP_BEHIND] += 1
            self._cond.notify()
        return SKIP_BEHIND if replaced else None

    # ------------------------------------------------------------------ the fusion thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                _, job = self._pending.popitem(last=False)
            try:
                self._fuse(job)
            except Exception:  # one bad frame must not end the map
                log.exception("map: fusing a frame of drone %s failed", job.drone_id)

    def _fuse(self, job: _Job) -> None:
        outcome = self.registry.offer(
            job.drone_id,
            job.depth_m,
            job.camera,
            metric=True,
            frame_id=job.frame_id,
            world_from_camera=job.world_from_camera,
        )
        now = time.monotonic()
        if outcome == FUSED and now - self._snapshot_at.get(job.frame_id, -math.inf) >= self.settings.snapshot_period_s:
            self._snapshots[job.frame_id] = self.registry.map_for(job.frame_id).occupied()
            self._snapshot_at[job.frame_id] = now
        snapshot = self._snapshots.get(job.frame_id)
        due = now - self._local_map_at.get(job.drone_id, -math.inf) >= self.settings.local_map_period_s
        if snapshot is not None and due:
            settings = self.settings
            message = local_height_map(
                snapshot,
                job.world_from_camera.translation,
                settings.local_map_half_width_m,
                settings.local_map_below_m,
                settings.local_map_above_m,
                time.time(),  # when the map was read: cells may hold what any drone saw before
            )
            self._local_maps[job.drone_id] = protocol.encode(message)
            self._local_map_at[job.drone_id] = now

    # ------------------------------------------------------------------ back to the drones

    def take_local_map(self, drone_id: str) -> str | None:
        """The drone's newest encoded ``local_map`` not yet taken, or None (cheap: call it on the loop)."""
        return self._local_maps.pop(drone_id, None)

    def surround(
        self,
        drone_id: str,
        camera_profile: ObstacleProfile,
        pose: TimedPose | None,
        frame_id: str | None,
        config: ObstacleConfig,
    ) -> ObstacleProfile:
        """The camera's profile completed to 360° from the map around ``pose`` (body FLU in ENU ``frame_id``).

        Unchanged without a pose, for a drone the map does not select, or
        before the map of ``frame_id`` has a snapshot. Reads the latest
        snapshot only: never waits for fusion.
        """
        if pose is None or frame_id is None or not self.settings.selects(drone_id):
            return camera_profile
        snapshot = self._snapshots.get(frame_id)
        if snapshot is None:
            return camera_profile
        around = map_profile(
            snapshot,
            pose.world_from_body,
            config,
            camera_profile.layout.sector_width_deg,
            pose.height_above_ground_m,
        )
        return merge_profiles(camera_profile, around)

    # ------------------------------------------------------------------ operator outputs

    def snapshot(self, frame_id: str) -> OccupiedVoxels | None:
        """The latest published occupied voxels of the map of ``frame_id`` (None: nothing fused yet)."""
        return self._snapshots.get(frame_id)

    def ply_bytes(self, frame_id: str, kind: MapKind) -> bytes | None:
        """The map of ``frame_id`` as a binary PLY (cloud of occupied voxels, or mesh); None when empty.

        Reads the map under its lock (the thread then skips frames, counted
        ``behind``): call it in an executor. Raises ``ValueError`` for a mesh
        over :data:`MESH_MAX_TRIANGLES`.
        """
        world_map = self.registry.maps.get(frame_id)
        if world_map is None or world_map.frames_fused == 0:
            return None
        if kind == "cloud":
            if len(world_map.occupied().points) == 0:
                return None
            return world_map.to_ply_bytes()
        mesh = world_map.triangle_mesh(MESH_MAX_TRIANGLES)
        if "indices" not in mesh.triangle or int(mesh.triangle.indices.shape[0]) == 0:
            return None
        return _write_via_file(lambda path: o3d.t.io.write_triangle_mesh(Path(path), mesh, write_ascii=False))

    def occupancy_png(self, frame_id: str) -> tuple[bytes, float, float, float] | None:
        """The top-down occupancy PNG of the latest snapshot with the ENU x of column 0, y of row 0 and cell size.

        Brightness is the highest occupied z in ``[-10, 40]`` m; row 0 is north. None when nothing is fused.
        """
        snapshot = self._snapshots.get(frame_id)
        if snapshot is None or len(snapshot.points) == 0:
            return None
        image, west, north = occupancy_image(snapshot, -10.0, 40.0)
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError("map: cv2 could not encode the occupancy PNG")
        return png.tobytes(), west, north, snapshot.voxel_size_m

    def save(self, directory: Path) -> list[Path]:
        """Write each non-empty map as ``directory/map_<frame>.ply`` (cloud), atomically; returns the paths."""
        written = []
        for frame_id in WORLD_FRAMES:
            data = self.ply_bytes(frame_id, "cloud")
            if data is None:
                continue
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / f"map_{frame_id}.ply"
            fd, temporary = tempfile.mkstemp(prefix=f".map_{frame_id}.", suffix=".ply", dir=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written.append(target)
        return written

    # ------------------------------------------------------------------ metrics

    def counts(self) -> dict[str, int]:
        """Frames by outcome since the start: fused, and each skip reason."""
        with self._cond:
            handoff = dict(self._handoff_counts)
        fused = self.registry.counts.copy()
        return {outcome: fused[outcome] + handoff.get(outcome, 0) for outcome in _OUTCOMES}

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """``dronedepth_map_frames_total{outcome}``, ``dronedepth_map_blocks{frame}``, ``..._bytes{frame}``."""
        frames = CounterMetricFamily(
            "dronedepth_map_frames",
            "Frames offered to the world map, by outcome (fused or why not).",
            labels=["outcome"],
        )
        for outcome, count in self.counts().items():
            frames.add_metric([outcome], count)
        blocks = GaugeMetricFamily("dronedepth_map_blocks", "Voxel blocks held by each world map.", labels=["frame"])
        memory = GaugeMetricFamily(
            "dronedepth_map_bytes", "Bytes of voxel storage allocated by each world map.", labels=["frame"]
        )
        for frame_id, world_map in sorted(self.registry.maps.items()):
            blocks.add_metric([frame_id], world_map.block_count)
            memory.add_metric([frame_id], world_map.memory_bytes)
        return [frames, blocks, memory]


def _write_via_file(write: Callable[[str], bool]) -> bytes:
    """Bytes of what ``write(path) -> bool`` writes to a temporary file (Open3D writes files, not buffers)."""
    fd, path = tempfile.mkstemp(suffix=".ply")
    os.close(fd)
    try:
        if not write(path):
            raise OSError(f"map: Open3D could not write {path}")
        return Path(path).read_bytes()
    finally:
        os.unlink(path)
