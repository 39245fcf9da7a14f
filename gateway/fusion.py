"""One volumetric world map per world frame, fused from every drone's metric depth and pose.

Frames and units. A :class:`WorldMap` lives in one world frame (``map`` or
``odom``, ENU: x east, y north, z up; metres). Drones share a map only when
their poses are in the same world frame (:class:`MapRegistry` keys maps by
``frame_id``): two drones' ``odom`` frames are unrelated, so the registry
takes the shared frame id as given and the operator picks which drones share
(``drones``). Depth is z-depth in metres in the camera optical frame (x right,
y down, z forward); ``world_from_camera`` maps it into the world.

Core. Open3D's tensor ``VoxelBlockGrid`` (TSDF + weight, blocks of 8³
voxels) on CUDA:0 when Open3D sees one, CPU:0 otherwise. Depth farther than
``max_depth_m`` is not fused. The camera must be an undistorted pinhole
(TSDF integration projects with ``K`` alone): undistort depth first.

Bounded memory. The hash map holds at most ``block_budget`` blocks
(``block_budget · 8³ · 8`` bytes of voxels). Before each integration the
blocks farthest from every drone's last camera position are erased so that
the frame's own blocks fit: a long flight keeps the surroundings of the
drones and forgets what is far behind.

Pose gate. A frame whose pose is wildly wrong would paint walls into free
space for every drone. Before integrating, about ``gate_samples`` of the
frame's pixels (a regular grid, whatever the resolution) are placed in the
world with the claimed pose and looked up in the TSDF itself (hash-map
lookups of their voxels: the cost does not grow with the map). Two checks,
where the map is observed (voxel weight > 0): the point's signed distance to
the fused surface is within the tolerance (``gate_tolerance_voxels`` plus
``gate_relative_tolerance`` of the depth), and the ray to it crosses no known
surface (probes along the ray, in front of the point by more than the
tolerance, find no voxel that the map puts behind a surface). Samples whose
ray meets the frame's own surface at less than ``gate_min_incidence_deg`` are
not checked: along a grazing ray a projective TSDF's distance is unreliable,
and a depth edge looks grazing too. Level surfaces
(ground, roofs) and upright ones are judged apart, so that ground cannot
outvote the faces that test x, y and yaw: a group with at least
``gate_min_observed`` checked samples agreeing below ``gate_min_agreement``
rejects the frame (``pose_rejected``).
Blind spot: over flat ground alone an error in x, y or yaw agrees with the
map (a plane matches itself shifted along it); only height, roll and pitch
errors show there. After ``distrust_after`` rejections in a row a
drone is distrusted: its frames are fused only when they overlap the map and
agree (positive evidence), until one does. A map is seeded by whichever
drone comes first; the gate checks every later frame, the seeding drone's
included (its own pose jumps too).

Threads. Every map method may run in an executor thread; one lock per map.
:meth:`WorldMap.try_integrate` never waits: when another frame is being
fused into the same map it returns ``behind`` and the frame is skipped.
Queries read an immutable :class:`OccupiedVoxels` snapshot (rebuilt lazily
after integration), so the pure functions :func:`map_profile` and
:func:`local_height_map` never hold the lock.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar

import numpy as np
import open3d as o3d
import open3d.core as o3c
from numpy.typing import NDArray

from dronedepth.frames import Transform, matrix_from_quaternion
from dronedepth.gateway.obstacles import (
    ObstacleConfig,
    ObstacleProfile,
    full_circle_layout,
    obstacle_profile_from_level_points,
)
from dronedepth.protocol import LOCAL_MAP_NO_DATA, MAX_LOCAL_MAP_CELLS, WORLD_FRAMES, CameraMessage, LocalMapMessage

__all__ = [
    "FUSED",
    "SKIP_BEHIND",
    "SKIP_NOT_METRIC",
    "SKIP_NOT_SELECTED",
    "SKIP_NO_POSE",
    "SKIP_POSE_REJECTED",
    "SKIP_REASONS",
    "MapConfig",
    "MapRegistry",
    "OccupiedVoxels",
    "WorldMap",
    "local_height_map",
    "map_profile",
    "occupancy_image",
]

FUSED: Final = "fused"
SKIP_NO_POSE: Final = "no_pose"
SKIP_NOT_METRIC: Final = "not_metric"
SKIP_BEHIND: Final = "behind"
SKIP_POSE_REJECTED: Final = "pose_rejected"
SKIP_NOT_SELECTED: Final = "not_selected"
SKIP_REASONS: Final = (SKIP_NO_POSE, SKIP_NOT_METRIC, SKIP_BEHIND, SKIP_POSE_REJECTED, SKIP_NOT_SELECTED)
Outcome = Literal["fused", "no_pose", "not_metric", "behind", "pose_rejected", "not_selected"]

BLOCK_RESOLUTION: Final = 8
"""Voxels per block side (Open3D's default)."""
BYTES_PER_VOXEL: Final = 8
"""float32 TSDF + float32 weight."""


@dataclass(frozen=True, slots=True)
class MapConfig:
    """Map settings; lengths in metres. The gateway's ``--map-voxel`` and ``--map-range`` set the first two."""

    voxel_size_m: float = 0.1
    max_depth_m: float = 20.0
    block_budget: int = 20_000
    """Most blocks held (each ``8³`` voxels, 4 KiB): 20 000 blocks ≈ 80 MiB."""
    truncation_voxels: float = 4.0
    """TSDF truncation distance, in voxels."""
    gate_samples: int = 1024
    """Pixels the pose gate checks per frame."""
    gate_min_incidence_deg: float = 15.0
    """Samples whose ray meets the surface at a shallower angle are not checked (grazing: unreliable)."""
    gate_tolerance_voxels: float = 3.0
    gate_relative_tolerance: float = 0.05
    """Added to the gate's tolerance, as a fraction of the depth (metric depth errors grow with range)."""
    gate_min_observed: int = 20
    """Checked samples needed to judge a frame, in each group (level surfaces; upright ones)."""
    gate_min_agreement: float = 0.8
    distrust_after: int = 3
    gate: bool = True

    def __post_init__(self) -> None:
        for name in ("voxel_size_m", "max_depth_m", "truncation_voxels", "gate_tolerance_voxels"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"map: {name} must be a finite number > 0, got {value!r}")
        for name in ("block_budget", "gate_samples", "gate_min_observed", "distrust_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"map: {name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.gate_min_incidence_deg < 90.0:
            raise ValueError(f"map: gate_min_incidence_deg must be in [0, 90), got {self.gate_min_incidence_deg!r}")
        if not 0.0 <= self.gate_min_agreement <= 1.0:
            raise ValueError(f"map: gate_min_agreement must be in [0, 1], got {self.gate_min_agreement!r}")

    @property
    def block_size_m(self) -> float:
        return self.voxel_size_m * BLOCK_RESOLUTION

    @property
    def budget_bytes(self) -> int:
        """Voxel memory of a full budget."""
        return self.block_budget * BLOCK_RESOLUTION**3 * BYTES_PER_VOXEL


_CPU: Final = o3c.Device("CPU:0")
_ScalarT = TypeVar("_ScalarT", bound=np.generic)


def default_device() -> o3c.Device:
    """CUDA:0 when Open3D was built with CUDA and sees a GPU, CPU:0 otherwise."""
    return o3c.Device("CUDA:0") if o3c.cuda.is_available() else _CPU


@dataclass(frozen=True, slots=True, eq=False)
class OccupiedVoxels:
    """The map's surface voxels at one instant: ``points`` ``(N, 3)`` float32, metres, ENU in ``frame_id``.

    A voxel is occupied when it has been observed and the fused surface passes
    within half a voxel of its centre.
    """

    frame_id: str
    voxel_size_m: float
    points: NDArray[np.float32]
    stamp: float
    """Unix seconds when it was read."""


@dataclass(frozen=True, slots=True)
class GateResult:
    """What the pose gate saw in one frame: samples in observed space and the fraction that agreed."""

    observed: int
    agreement: float
    accepted: bool


@dataclass(slots=True)
class _DroneState:
    position: NDArray[np.float64]
    rejections_in_a_row: int = 0

    @property
    def distrusted(self) -> bool:
        return self.rejections_in_a_row > 0


class WorldMap:
    """The TSDF map of one world frame, fed by every drone that shares it (thread-safe)."""

    def __init__(self, frame_id: str, config: MapConfig, device: o3c.Device | None = None) -> None:
        if frame_id not in WORLD_FRAMES:
            raise ValueError(f"map: frame_id must be one of {', '.join(WORLD_FRAMES)}, got {frame_id!r}")
        self.frame_id = frame_id
        self.config = config
        self.device = device if device is not None else default_device()
        self._grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=("tsdf", "weight"),
            attr_dtypes=(o3c.float32, o3c.float32),
            attr_channels=(o3c.SizeVector([1]), o3c.SizeVector([1])),
            voxel_size=config.voxel_size_m,
            block_resolution=BLOCK_RESOLUTION,
            block_count=config.block_budget,
            device=self.device,
        )
        self._lock = threading.Lock()
        self._drones: dict[str, _DroneState] = {}
        self._snapshot: OccupiedVoxels | None = None
        self.blocks_evicted = 0
        self.frames_fused = 0

    # -- integration ---------------------------------------------------------------------------------

    def integrate(
        self, drone_id: str, depth_m: NDArray[np.float32], camera: CameraMessage, world_from_camera: Transform
    ) -> Outcome:
        """Fuse one metric z-depth map ``(H, W)`` (metres) seen from ``world_from_camera``; waits for the lock."""
        with self._lock:
            return self._integrate_locked(drone_id, depth_m, camera, world_from_camera)

    def try_integrate(
        self, drone_id: str, depth_m: NDArray[np.float32], camera: CameraMessage, world_from_camera: Transform
    ) -> Outcome:
        """As :meth:`integrate`, but ``behind`` at once when another frame is being fused into this map."""
        if not self._lock.acquire(blocking=False):
            return SKIP_BEHIND
        try:
            return self._integrate_locked(drone_id, depth_m, camera, world_from_camera)
        finally:
            self._lock.release()

    def _integrate_locked(
        self, drone_id: str, depth_m: NDArray[np.float32], camera: CameraMessage, world_from_camera: Transform
    ) -> Outcome:
        depth = _checked_depth(depth_m, camera)
        # Open3D takes the intrinsic and extrinsic matrices as float64 on the CPU, whatever the grid's device.
        intrinsic = o3c.Tensor(camera.matrix, dtype=o3c.float64, device=_CPU)
        camera_from_world = o3c.Tensor(world_from_camera.inverse().matrix, dtype=o3c.float64, device=_CPU)
        state = self._drones.setdefault(drone_id, _DroneState(position=world_from_camera.translation.copy()))
        state.position = world_from_camera.translation.copy()
        if self.config.gate and self._grid.hashmap().size() > 0:
            gate = self._gate(depth, camera, world_from_camera)
            if not gate.accepted or (state.distrusted and gate.observed < self.config.gate_min_observed):
                state.rejections_in_a_row += 1
                return SKIP_POSE_REJECTED
            state.rejections_in_a_row = 0
        image = o3d.t.geometry.Image(o3c.Tensor(depth, dtype=o3c.float32, device=self.device))
        blocks = self._grid.compute_unique_block_coordinates(
            image,
            intrinsic,
            camera_from_world,
            depth_scale=1.0,
            depth_max=self.config.max_depth_m,
            trunc_voxel_multiplier=self.config.truncation_voxels,
        )
        self._evict_for(int(blocks.shape[0]))
        self._grid.integrate(
            blocks,
            image,
            intrinsic,
            camera_from_world,
            depth_scale=1.0,
            depth_max=self.config.max_depth_m,
            trunc_voxel_multiplier=self.config.truncation_voxels,
        )
        self._snapshot = None
        self.frames_fused += 1
        return FUSED

    def _gate(self, depth: NDArray[np.float32], camera: CameraMessage, world_from_camera: Transform) -> GateResult:
        """Check a bounded sample of the frame's points against the map's TSDF (see the module docstring)."""
        config = self.config
        stride = max(1, math.ceil(math.sqrt(depth.size / config.gate_samples)))
        sample = depth[::stride, ::stride].astype(np.float64)
        v, u = np.mgrid[0 : depth.shape[0] : stride, 0 : depth.shape[1] : stride]
        rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones(u.shape)], axis=-1)
        normals = _surface_normals(rays, sample, config.max_depth_m)
        checked = np.abs(np.sum(normals * rays, axis=-1)) >= math.sin(
            math.radians(config.gate_min_incidence_deg)
        ) * np.linalg.norm(rays, axis=-1)
        z = sample[checked]
        rays = rays[checked]
        tolerance = config.gate_tolerance_voxels * config.voxel_size_m + config.gate_relative_tolerance * z
        sdf, observed = self._signed_distance(world_from_camera.apply(rays * z[:, None]))
        # A saturated distance (a truncation or more from any fused surface) disagrees whatever the tolerance.
        truncation_m = config.truncation_voxels * config.voxel_size_m
        agrees = ~observed | ((np.abs(sdf) <= tolerance) & (np.abs(sdf) < 0.999 * truncation_m))
        # The other way round: probes in front of each point, a half truncation apart so that none steps over a
        # surface's band of negative distance; a probe the map puts behind a surface is a surface seen through.
        step = truncation_m / 2
        probe_depth = (z - tolerance)[:, None] - step * np.arange(math.ceil(config.max_depth_m / step))[None, :]
        in_front = probe_depth > config.voxel_size_m
        ray_index = np.nonzero(in_front)[0]
        probe_sdf, probe_observed = self._signed_distance(
            world_from_camera.apply(rays[ray_index] * probe_depth[in_front][:, None])
        )
        evidence = observed.copy()
        evidence[ray_index[probe_observed]] = True
        agrees[ray_index[probe_observed & (probe_sdf < -truncation_m / 2)]] = False
        # Level surfaces (ground, roofs) only test height, roll and pitch: x, y and yaw errors slide along them.
        # Judged apart, they cannot outvote the upright surfaces that do test x, y and yaw.
        level = np.abs(world_from_camera.rotate(normals[checked])[:, 2]) >= math.cos(math.radians(45.0))
        count = int(evidence.sum())
        agreement = 1.0
        for group in (level, ~level):
            judged = evidence & group
            if judged.sum() >= config.gate_min_observed:
                agreement = min(agreement, float(np.mean(agrees[judged])))
        return GateResult(observed=count, agreement=agreement, accepted=agreement >= config.gate_min_agreement)

    def _signed_distance(self, points_world: NDArray[np.float64]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """The fused signed distance (metres) at the voxel nearest each point, and whether it was observed."""
        voxel = np.rint(points_world / self.config.voxel_size_m).astype(np.int64)
        block = np.floor_divide(voxel, BLOCK_RESOLUTION)
        local = voxel - block * BLOCK_RESOLUTION
        keys = o3c.Tensor(block.astype(np.int32), dtype=o3c.int32, device=self.device)
        buffer_index, found = self._grid.hashmap().find(keys)
        found_np = _numpy(found, np.bool_)
        index = _numpy(buffer_index, np.int32).astype(np.int64).reshape(-1)[found_np]
        loc = local[found_np]
        # Open3D stores a block's voxels as [z][y][x]; gather just these voxels where the grid lives.
        flat = o3c.Tensor(
            index * BLOCK_RESOLUTION**3 + (loc[:, 2] * BLOCK_RESOLUTION + loc[:, 1]) * BLOCK_RESOLUTION + loc[:, 0],
            dtype=o3c.int64,
            device=self.device,
        )
        flat_shape = o3c.SizeVector([-1])
        tsdf = _numpy(self._grid.attribute("tsdf").reshape(flat_shape)[flat], np.float32)
        weight = _numpy(self._grid.attribute("weight").reshape(flat_shape)[flat], np.float32)
        sdf = np.zeros(len(points_world), dtype=np.float32)
        observed = np.zeros(len(points_world), dtype=bool)
        sdf[found_np] = tsdf * np.float32(self.config.truncation_voxels * self.config.voxel_size_m)
        observed[found_np] = weight > 0
        return sdf, observed

    def _evict_for(self, incoming: int) -> None:
        """Erase the blocks farthest from every drone until ``incoming`` more fit in the budget."""
        hashmap = self._grid.hashmap()
        keep = max(0, self.config.block_budget - incoming)
        size = int(hashmap.size())
        if size <= keep:
            return
        keys = self._active_keys()
        centres = (keys.astype(np.float64) + 0.5) * self.config.block_size_m
        positions = np.stack([state.position for state in self._drones.values()])
        nearest = np.min(np.linalg.norm(centres[:, None, :] - positions[None, :, :], axis=2), axis=1)
        farthest = o3c.Tensor(
            np.ascontiguousarray(keys[np.argsort(nearest)[keep:]], dtype=np.int32), dtype=o3c.int32, device=self.device
        )
        # Open3D reuses an erased block's buffer for the next block it activates without clearing it: unless
        # its voxels are cleared here, the old surface reappears wherever the next new block lies.
        buffer_index, _ = hashmap.find(farthest)
        buffer_index = buffer_index.to(o3c.int64)
        for name in ("tsdf", "weight"):
            self._grid.attribute(name)[buffer_index] = 0.0
        hashmap.erase(farthest)
        self.blocks_evicted += int(farthest.shape[0])

    def _active_keys(self) -> NDArray[np.int32]:
        hashmap = self._grid.hashmap()
        active = hashmap.active_buf_indices().to(o3c.int64)
        return _numpy(hashmap.key_tensor()[active], np.int32).reshape(-1, 3)

    # -- state and queries ----------------------------------------------------------------------------

    @property
    def block_count(self) -> int:
        return int(self._grid.hashmap().size())

    @property
    def memory_bytes(self) -> int:
        """Bytes of voxel storage allocated (the hash map's capacity, used or not)."""
        return int(self._grid.hashmap().capacity()) * BLOCK_RESOLUTION**3 * BYTES_PER_VOXEL

    def drone_rejections(self, drone_id: str) -> int:
        """Frames of ``drone_id`` rejected in a row by the pose gate (0: trusted)."""
        state = self._drones.get(drone_id)
        return 0 if state is None else state.rejections_in_a_row

    def occupied(self) -> OccupiedVoxels:
        """The surface voxels now (cached until the next integration; ~10 ms per 1000 blocks on CPU)."""
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        with self._lock:
            if self._snapshot is None:
                self._snapshot = self._occupied_locked()
            return self._snapshot

    def _occupied_locked(self) -> OccupiedVoxels:
        hashmap = self._grid.hashmap()
        active = _numpy(hashmap.active_buf_indices().to(o3c.int64), np.int64).reshape(-1)
        keys = _numpy(hashmap.key_tensor(), np.int32).reshape(-1, 3)[active].astype(np.int64)
        tsdf = _numpy(self._grid.attribute("tsdf"), np.float32)[active, ..., 0]
        weight = _numpy(self._grid.attribute("weight"), np.float32)[active, ..., 0]
        half_voxel = np.float32(0.5 / self.config.truncation_voxels)  # half a voxel in truncation units
        block, z, y, x = np.nonzero((weight > 0) & (np.abs(tsdf) <= half_voxel))
        voxel = keys[block] * BLOCK_RESOLUTION + np.stack([x, y, z], axis=1)
        points = (voxel * self.config.voxel_size_m).astype(np.float32)
        points.flags.writeable = False
        return OccupiedVoxels(self.frame_id, self.config.voxel_size_m, points, time.time())

    def triangle_mesh(self, max_triangles: int = 2_000_000) -> o3d.t.geometry.TriangleMesh:
        """The fused surface as a mesh (marching cubes), or ``ValueError`` past ``max_triangles``."""
        with self._lock:
            mesh = self._grid.extract_triangle_mesh(weight_threshold=0.0)
        triangles = int(mesh.triangle.indices.shape[0]) if "indices" in mesh.triangle else 0
        if triangles > max_triangles:
            raise ValueError(f"map: the mesh has {triangles} triangles, more than the cap of {max_triangles}")
        return mesh

    def to_ply_bytes(self) -> bytes:
        """The occupied voxels as a binary PLY point cloud (ENU metres, in this map's frame)."""
        cloud = o3d.t.geometry.PointCloud(o3c.Tensor(self.occupied().points, dtype=o3c.float32, device=_CPU))
        fd, path = tempfile.mkstemp(suffix=".ply")
        os.close(fd)
        try:
            if not o3d.t.io.write_point_cloud(Path(path), cloud, write_ascii=False):
                raise OSError(f"map: Open3D could not write {path}")
            with open(path, "rb") as handle:
                return handle.read()
        finally:
            os.unlink(path)


class MapRegistry:
    """One :class:`WorldMap` per world frame, with counts of what was fused and skipped (and why).

    ``drones``: the drones that share maps (``--map-drones``); ``None`` takes every drone.
    """

    def __init__(self, config: MapConfig, drones: Iterable[str] | None = None) -> None:
        self.config = config
        self.drones = None if drones is None else frozenset(drones)
        self._maps: dict[str, WorldMap] = {}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def map_for(self, frame_id: str) -> WorldMap:
        with self._lock:
            world_map = self._maps.get(frame_id)
            if world_map is None:
                world_map = self._maps[frame_id] = WorldMap(frame_id, self.config)
            return world_map

    @property
    def maps(self) -> dict[str, WorldMap]:
        with self._lock:
            return dict(self._maps)

    def offer(
        self,
        drone_id: str,
        depth_m: NDArray[np.float32],
        camera: CameraMessage,
        *,
        metric: bool,
        frame_id: str | None,
        world_from_camera: Transform | None,
    ) -> Outcome:
        """Fuse one frame if it can be (never waits on another frame); count the outcome under its reason."""
        outcome: Outcome
        if self.drones is not None and drone_id not in self.drones:
            outcome = SKIP_NOT_SELECTED
        elif not metric:
            outcome = SKIP_NOT_METRIC
        elif frame_id is None or world_from_camera is None:
            outcome = SKIP_NO_POSE
        else:
            outcome = self.map_for(frame_id).try_integrate(drone_id, depth_m, camera, world_from_camera)
        with self._lock:
            self.counts[outcome] += 1
        return outcome


def _numpy(tensor: o3c.Tensor, dtype: type[_ScalarT]) -> NDArray[_ScalarT]:
    """``tensor`` on the host as an array; ``dtype`` is the tensor's own (no conversion; no copy on the CPU)."""
    return np.asarray(
        tensor.cpu().numpy() if tensor.device.get_type() != o3c.Device.DeviceType.CPU else tensor.numpy(), dtype=dtype
    )


def _surface_normals(rays: NDArray[np.float64], depth: NDArray[np.float64], max_depth_m: float) -> NDArray[np.float64]:
    """Unit surface normals ``(H, W, 3)`` of a depth grid in its optical frame; zero where there is none.

    ``rays`` ``(H, W, 3)``: optical directions with z = 1, so ``rays · depth`` is the point. The normal is the
    cross product of central differences on the grid: border samples and those next to a missing depth (or one
    beyond ``max_depth_m``) have none. Across a depth edge it lies almost along the ray, as a grazing surface's.
    """
    valid = (depth > 0) & (depth <= max_depth_m)
    points = rays * depth[..., None]
    normal = np.cross(points[1:-1, 2:] - points[1:-1, :-2], points[2:, 1:-1] - points[:-2, 1:-1])
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    has_normal = valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1]
    normals = np.zeros((*depth.shape, 3))
    normals[1:-1, 1:-1] = np.where(has_normal[..., None], normal / np.maximum(length, 1e-12), 0.0)
    return normals


def _checked_depth(depth_m: NDArray[np.float32], camera: CameraMessage) -> NDArray[np.float32]:
    if camera.model != "pinhole" or camera.has_distortion:
        raise ValueError("map: TSDF fusion needs an undistorted pinhole camera; undistort the depth first")
    depth = np.ascontiguousarray(depth_m, dtype=np.float32)
    if depth.shape != (camera.height, camera.width):
        raise ValueError(f"map: depth has shape {depth.shape}, the camera is {camera.width}x{camera.height}")
    # Open3D treats 0 as no depth; NaN and infinity must not reach it.
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))


def _heading_from_world(world_from_body: Transform) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The yaw-only rotation from ENU world to the body's level frame, and the body position."""
    rotation = matrix_from_quaternion(world_from_body.rotation)
    yaw = math.atan2(rotation[1, 0], rotation[0, 0])
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]), world_from_body.translation


def map_profile(
    occupied: OccupiedVoxels,
    world_from_body: Transform,
    config: ObstacleConfig,
    sector_width_deg: float,
    height_above_ground_m: float | None = None,
) -> ObstacleProfile:
    """The 360° obstacle profile around a body pose (ENU world from FLU body) from the map's occupied voxels.

    Gravity-aligned by construction (the map is ENU): the vertical band is
    world z around the body's z, sectors turn with the body's heading (body
    FRD azimuths, as :mod:`~dronedepth.gateway.obstacles`). A sector without
    an occupied voxel in the band is no data, never free.
    """
    layout = full_circle_layout(sector_width_deg)
    level_from_world, position = _heading_from_world(world_from_body)
    near = np.abs(occupied.points[:, :2] - position[:2].astype(np.float32)).max(axis=1) <= config.max_range_m
    level = (occupied.points[near].astype(np.float64) - position) @ level_from_world.T
    profile = obstacle_profile_from_level_points(level.astype(np.float32), layout, config, height_above_ground_m)
    return profile


def local_height_map(
    occupied: OccupiedVoxels,
    centre: NDArray[np.float64],
    half_width_m: float,
    below_m: float,
    above_m: float,
    stamp: float,
) -> LocalMapMessage:
    """A ``local_map`` message: the highest occupied voxel per column in a box around ``centre`` (ENU metres).

    The box spans ``centre ± half_width_m`` east and north and ``[centre_z -
    below_m, centre_z + above_m]`` up; the cell size is the map's voxel size.
    2.5D (one height per column) rather than a voxel list: a ground plane
    alone is one voxel per column, which as int16 triples would exceed the
    data channel's 64 KiB for a 20 m box at 0.2 m; the height grid is one
    byte per cell and compresses well.
    """
    cell = occupied.voxel_size_m
    cells = math.ceil(2 * half_width_m / cell)
    if cells * cells > MAX_LOCAL_MAP_CELLS:
        raise ValueError(f"map: a {2 * half_width_m} m box at {cell} m cells exceeds {MAX_LOCAL_MAP_CELLS} cells")
    levels = math.floor((below_m + above_m) / cell)
    if levels >= LOCAL_MAP_NO_DATA:
        raise ValueError(f"map: {below_m + above_m} m at {cell} m cells needs more than {LOCAL_MAP_NO_DATA} levels")
    origin = np.array([centre[0] - half_width_m, centre[1] - half_width_m, centre[2] - below_m])
    index = np.floor((occupied.points - origin) / cell + np.array([0.0, 0.0, 0.5])).astype(np.int64)
    inside = (
        (index[:, 0] >= 0) & (index[:, 0] < cells) & (index[:, 1] >= 0) & (index[:, 1] < cells) & (index[:, 2] >= 0)
    )
    inside &= index[:, 2] <= levels
    index = index[inside]
    grid = np.full(cells * cells, -1, dtype=np.int64)
    np.maximum.at(grid, index[:, 1] * cells + index[:, 0], index[:, 2])
    heights = np.where(grid < 0, LOCAL_MAP_NO_DATA, grid).astype(np.uint8)
    return LocalMapMessage(
        stamp=stamp,
        frame_id=occupied.frame_id,
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        cell_size_m=cell,
        width=cells,
        height=cells,
        heights=heights.tobytes(),
    )


def occupancy_image(occupied: OccupiedVoxels, min_z_m: float, max_z_m: float) -> tuple[NDArray[np.uint8], float, float]:
    """A top-down image of the whole map for the operator page: brightness = highest occupied z.

    Returns the ``(rows, cols)`` uint8 image (row 0 is the **north** edge, so it
    reads like a map; 0 = nothing occupied, 1–255 = ``min_z_m`` to ``max_z_m``)
    and the ENU x of column 0 and y of row 0 (metres, cell centres).
    """
    cell = occupied.voxel_size_m
    points = occupied.points[(occupied.points[:, 2] >= min_z_m) & (occupied.points[:, 2] <= max_z_m)]
    if len(points) == 0:
        return np.zeros((1, 1), dtype=np.uint8), 0.0, 0.0
    west = float(points[:, 0].min())
    north = float(points[:, 1].max())
    col = np.rint((points[:, 0] - west) / cell).astype(np.int64)
    row = np.rint((north - points[:, 1]) / cell).astype(np.int64)
    shape = (int(row.max()) + 1, int(col.max()) + 1)
    level = 1 + np.rint(254 * (points[:, 2] - min_z_m) / max(max_z_m - min_z_m, 1e-9)).astype(np.int64)
    image = np.zeros(shape[0] * shape[1], dtype=np.int64)
    np.maximum.at(image, row * shape[1] + col, level)
    return image.reshape(shape).astype(np.uint8), west, north
