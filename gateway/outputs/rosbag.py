"""ROS 2 messages of each processed frame, and a rosbag2 (MCAP) recorder of them.

:class:`RosEncoder` turns a :class:`~gateway.sinks.FrameRecord` into CDR-
serialised ``sensor_msgs`` messages with the pure-Python ``rosbags`` package (no
ROS installation). :class:`BagSink` writes them, one rosbag2 per drone and
session, and :class:`gateway.foxglove_live.FoxgloveSink` publishes the same
bytes live. Topics, for a drone whose ROS name is ``<ns>`` (see :func:`ros_name`)::

    /<ns>/camera_info                 sensor_msgs/msg/CameraInfo        the frame's camera
    /<ns>/image/compressed            sensor_msgs/msg/CompressedImage   (jpeg)
    /<ns>/depth/camera_info           sensor_msgs/msg/CameraInfo        the depth grid's camera (metric models)
    /<ns>/depth/image                 sensor_msgs/msg/Image 32FC1, metres (metric models only)
    /<ns>/depth_relative/camera_info  sensor_msgs/msg/CameraInfo        the depth grid's camera (relative models)
    /<ns>/depth_relative/image        sensor_msgs/msg/Image 32FC1, NOT metres (relative models only)
    /<ns>/points                      sensor_msgs/msg/PointCloud2       x y z rgb
    /<ns>/keypoints                   sensor_msgs/msg/PointCloud2       x y z score u v
    /<ns>/scale                       std_msgs/msg/String               JSON: depth_kind, scale, scale_check
    /<ns>/obstacles                   sensor_msgs/msg/LaserScan         metric frames with an obstacle profile
    /tf                               tf2_msgs/msg/TFMessage            <world> → <ns>/base_link (with a pose),
                                                                        <ns>/base_link → <ns>/base_link_level
    /tf_static                        tf2_msgs/msg/TFMessage            <ns>/base_link → <ns>/camera_optical_frame
    /map, /map_odom                   sensor_msgs/msg/PointCloud2       x y z: the world map's occupied voxels

The depth image is on the model's depth grid (every ``s``-th pixel for a
model of depth stride ``s``, see :func:`dronedepth.contract.depth_grid_shape`),
so it has a camera_info of its own beside it (ROS's image/camera_info pairing:
one namespace per camera), the grid's camera
(:meth:`~dronedepth.protocol.CameraMessage.strided`); the frame's
``camera_info`` describes the full-resolution image.

Images and clouds are in frame ``<ns>/camera_optical_frame`` (REP-103: x
right, y down, z forward) whatever the gateway's ``--axes``; the obstacles in
``<ns>/base_link_level`` (FLU, the body turned by its roll and pitch so that
z is up against gravity; the body itself when no attitude is known). Every
message, transforms included, is stamped with the frame's capture time.
``<world>`` is the pose's frame (``map`` or ``odom``, ENU, REP-105), shared
by every drone so several drones' clouds land in one scene. The world map
(:meth:`RosEncoder.map_message`) belongs to no drone: :class:`BagSink` writes
it to a gateway-level ``fleet_<UTC>`` bag, stamped when the map was read.
``docs/outputs.md`` has the details and the reasons.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cv2
import numpy as np
from numpy.typing import NDArray
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.rosbag2.storage_mcap import McapWriter
from rosbags.typesys import Stores, get_typestore

from dronedepth.errors import ConfigError
from dronedepth.frames import Transform, quaternion_from_matrix
from dronedepth.gateway.obstacles import SOURCE_CAMERA, SOURCE_NONE, ObstacleProfile, level_from_body
from dronedepth.gateway.outputs.recording import FaultHandler, RecordingBudget, RecordingLimits
from dronedepth.gateway.outputs.sinks import FrameRecord
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, CameraMessage

if TYPE_CHECKING:
    from dronedepth.gateway.fusion import OccupiedVoxels
    from dronedepth.gateway.pipeline import FramePose

__all__ = [
    "BODY_FRAME",
    "FLEET_BAG",
    "GLOBAL_TOPICS",
    "LEVEL_FRAME",
    "MAP_TOPICS",
    "OPTICAL_FRAME",
    "TF_STATIC",
    "TOPIC_KINDS",
    "BagSink",
    "RosEncoder",
    "RosMessage",
    "camera_info_fields",
    "laser_scan_ranges",
    "level_frame",
    "ros_name",
]

log = logging.getLogger(__name__)

OPTICAL_FRAME: Final = "camera_optical_frame"
BODY_FRAME: Final = "base_link"
LEVEL_FRAME: Final = "base_link_level"
TOPIC_KINDS: Final = (
    "tf",
    "camera_info",
    "image",
    "depth_camera_info",
    "depth",
    "points",
    "keypoints",
    "obstacles",
    "scale",
)
"""The kinds of message a frame may have, written in this order (see :meth:`RosEncoder.kinds`)."""
TF_STATIC: Final = "tf_static"
"""The camera mount's kind: once per bag and mount (every frame on the live server, for late subscribers)."""
FLEET_BAG: Final = "fleet"
"""The gateway-level bag's name (``fleet_<UTC>``) and recorder id (metrics, its ``dronedepth.drone_id``)."""
GLOBAL_TOPICS: Final = frozenset({"/tf", "/tf_static"})
"""Topics every drone shares (its frame ids carry its namespace), as in a multi-robot ROS system."""
MAP_TOPICS: Final = {"map": "/map", "odom": "/map_odom"}
"""The world map's topic per world frame (REP-105 ``map`` or ``odom``); each message is in that frame."""

POINT_CLOUD2: Final = "sensor_msgs/msg/PointCloud2"
IMAGE: Final = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE: Final = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO: Final = "sensor_msgs/msg/CameraInfo"
LASER_SCAN: Final = "sensor_msgs/msg/LaserScan"
TF_MESSAGE: Final = "tf2_msgs/msg/TFMessage"
STRING: Final = "std_msgs/msg/String"
_TOPIC_TYPES: Final = {
    "tf": TF_MESSAGE,
    TF_STATIC: TF_MESSAGE,
    "obstacles": LASER_SCAN,
    "camera_info": CAMERA_INFO,
    "image": COMPRESSED_IMAGE,
    "depth_camera_info": CAMERA_INFO,
    "depth": IMAGE,
    "points": POINT_CLOUD2,
    "keypoints": POINT_CLOUD2,
    "scale": STRING,
}

_FLOAT32: Final = 7  # sensor_msgs/msg/PointField.FLOAT32
_CLOUD_FIELDS: Final = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))
_MAP_FIELDS: Final = (("x", 0), ("y", 4), ("z", 8))
_KEYPOINT_FIELDS: Final = (("x", 0), ("y", 4), ("z", 8), ("score", 12), ("u", 16), ("v", 20))

_ROS_INVALID: Final = re.compile(r"[^A-Za-z0-9_]+")


@functools.lru_cache(maxsize=1024)
def ros_name(drone_id: str) -> str:
    """The drone's ROS namespace: ``drone_id`` made a valid ROS 2 name token.

    ROS 2 names allow only letters, digits and single underscores, may not
    start with a digit nor end with an underscore; the gateway's default ids
    (``drone-1a2b3c4d``) break the first rule. '-' becomes '_', runs of '_'
    collapse, a trailing '_' goes and a leading digit gets a ``d`` prefix, so
    ``drone-1a2b`` → ``drone_1a2b`` and ``7`` → ``d7``. Valid names are unchanged.
    """
    name = re.sub(r"_{2,}", "_", _ROS_INVALID.sub("_", drone_id)).strip("_")
    if not name:
        name = "drone"
    if name[0].isdigit():
        name = "d" + name
    return name


def camera_info_fields(camera: CameraMessage) -> dict[str, Any]:
    """``distortion_model``, ``d``, ``k``, ``r``, ``p`` of a ``sensor_msgs/CameraInfo`` for ``camera``.

    OpenCV's coefficient order is ROS's: pinhole with 0, 4 or 5 coefficients →
    ``plumb_bob`` (k1 k2 p1 p2 k3, zero-padded to 5), 8 → ``rational_polynomial``
    (k1 k2 p1 p2 k3 k4 k5 k6), fisheye → ``equidistant`` (k1..k4, OpenCV's
    fisheye model). ``p`` is K with a zero fourth column: the images are not
    rectified, and this is what ROS drivers publish for a monocular camera
    without a rectification (its ``new camera matrix`` equals K).
    """
    coefficients = list(camera.distortion)
    if camera.model == "fisheye":
        model = "equidistant"
        coefficients = (coefficients + [0.0] * 4)[:4]
    elif len(coefficients) == 8:
        model = "rational_polynomial"
    else:
        model = "plumb_bob"
        coefficients = (coefficients + [0.0] * 5)[:5]
    k = camera.matrix
    p = np.zeros((3, 4))
    p[:, :3] = k
    return {
        "distortion_model": model,
        "d": np.asarray(coefficients, dtype=np.float64),
        "k": k.reshape(-1),
        "r": np.eye(3).reshape(-1),
        "p": p.reshape(-1),
    }


def level_frame(profile: ObstacleProfile, pose: FramePose | None) -> Transform:
    """``base_link_from_base_link_level``: the rotation that the obstacle profile removed from the body.

    The profile's level frame is the body turned by its roll and pitch (yaw
    kept, same origin); a profile that is not gravity-aligned was computed in
    the body frame itself (identity).
    """
    if not profile.gravity_aligned or pose is None:
        return Transform.identity()
    level_from_body_rotation = level_from_body(pose.body.world_from_body.rotation)
    return Transform(quaternion_from_matrix(level_from_body_rotation.T), np.zeros(3))


def laser_scan_ranges(profile: ObstacleProfile) -> tuple[NDArray[np.float32], NDArray[np.float32], float]:
    """``(ranges, intensities, angle_min)`` of a ``sensor_msgs/LaserScan`` holding ``profile``.

    The profile's sectors run clockwise (MAVLink ``BODY_FRD`` azimuths); a
    LaserScan's angles run counter-clockwise about z up (REP-103), so the
    sectors are written last to first and ``angle_min`` (radians) is minus the
    last sector's azimuth. REP-117: a sector with nothing within range is
    ``+inf``, one without data ``NaN``. Intensities say each sector's source
    (0 none, 1 this frame's camera, 2 the world map).
    """
    distances = profile.distances_m[::-1]
    ranges = distances.astype(np.float32)
    ranges[distances == OBSTACLE_FREE] = np.inf
    ranges[distances == OBSTACLE_NO_DATA] = np.nan
    if profile.sources is None:
        sources = np.where(distances == OBSTACLE_NO_DATA, SOURCE_NONE, SOURCE_CAMERA).astype(np.float32)
    else:
        sources = profile.sources[::-1].astype(np.float32)
    layout = profile.layout
    last_azimuth_deg = layout.angle_offset_deg + (layout.count - 1) * layout.sector_width_deg
    return ranges, sources, -math.radians(last_azimuth_deg)


@dataclass(frozen=True, slots=True)
class RosMessage:
    """One serialised (CDR, little-endian) message of one topic."""

    topic: str
    msgtype: str
    data: memoryview | bytes


class RosEncoder:
    """Serialises frames to ROS 2 messages; one instance can serve several sinks.

    ``max_points`` thins the ``points`` cloud by a regular stride (None: every
    valid depth pixel's point, 16 bytes each: ~1.2 MB per 640×480 frame at depth stride 2, ~5 MB at 1).
    ``jpeg_quality`` is OpenCV's 0-100. Thread-safe: it keeps no per-frame state.
    """

    def __init__(self, *, max_points: int | None = None, jpeg_quality: int = 90) -> None:
        if max_points is not None and max_points < 1:
            raise ConfigError(f"max_points must be positive, got {max_points}")
        if not 0 <= jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 0..100, got {jpeg_quality}")
        self.max_points = max_points
        self.jpeg_quality = jpeg_quality
        # Jazzy's definitions; these messages are unchanged from Humble to Kilted.
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        types = self.typestore.types
        self._header = types["std_msgs/msg/Header"]
        self._time = types["builtin_interfaces/msg/Time"]
        self._point_cloud2 = types[POINT_CLOUD2]
        self._image = types[IMAGE]
        self._compressed = types[COMPRESSED_IMAGE]
        self._camera_info = types[CAMERA_INFO]
        self._laser_scan = types[LASER_SCAN]
        self._tf_message = types[TF_MESSAGE]
        self._string = types[STRING]
        self._transform_stamped = types["geometry_msgs/msg/TransformStamped"]
        self._transform = types["geometry_msgs/msg/Transform"]
        self._vector3 = types["geometry_msgs/msg/Vector3"]
        self._quaternion = types["geometry_msgs/msg/Quaternion"]
        self._roi = types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        field_type = types["sensor_msgs/msg/PointField"]
        # Field layouts are the same for every frame: build them once.
        self._cloud_fields = [field_type(name=n, offset=o, datatype=_FLOAT32, count=1) for n, o in _CLOUD_FIELDS]
        self._keypoint_fields = [field_type(name=n, offset=o, datatype=_FLOAT32, count=1) for n, o in _KEYPOINT_FIELDS]
        self._map_fields = [field_type(name=n, offset=o, datatype=_FLOAT32, count=1) for n, o in _MAP_FIELDS]
        self._definitions: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._memo_key = object()

    # ------------------------------------------------------------------ names

    def kinds(self, record: FrameRecord) -> tuple[str, ...]:
        """The kinds of message ``record`` has, in writing order (``tf_static`` aside)."""
        result = record.result
        has_obstacles = result.obstacles is not None
        has_scale = result.message.scale is not None  # None with --scale off
        return tuple(
            kind
            for kind in TOPIC_KINDS
            if (kind != "obstacles" or has_obstacles)
            and (kind != "tf" or has_obstacles or result.pose is not None)
            and (kind != "scale" or has_scale)
        )

    def topic(self, record: FrameRecord, kind: str) -> str:
        if kind in ("tf", TF_STATIC):
            return f"/{kind}"
        ns = ros_name(record.drone_id)
        if kind in ("depth", "depth_camera_info"):
            # Relative depth is not metres: never on the topics ROS tools read as metres (docs/outputs.md).
            depth_ns = "depth" if record.message.depth_kind == "metric" else "depth_relative"
            return f"/{ns}/{depth_ns}/{'image' if kind == 'depth' else 'camera_info'}"
        if kind == "image":
            return f"/{ns}/image/compressed"
        return f"/{ns}/{kind}"

    @staticmethod
    def frame_id(drone_id: str) -> str:
        return f"{ros_name(drone_id)}/{OPTICAL_FRAME}"

    @staticmethod
    def msgtype(kind: str) -> str:
        return _TOPIC_TYPES[kind]

    def definition(self, msgtype: str) -> tuple[str, str]:
        """``(ros2msg text, RIHS01 hash)`` of ``msgtype``, for bag connections and Foxglove schemas."""
        with self._lock:
            found = self._definitions.get(msgtype)
            if found is None:
                text, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
                found = self._definitions[msgtype] = (text, self.typestore.hash_rihs01(msgtype))
            return found

    # ------------------------------------------------------------------ messages

    def encode(self, record: FrameRecord, kind: str) -> RosMessage:
        """The ``kind`` message of ``record`` (one of :data:`TOPIC_KINDS`), serialised once per record."""
        return record.memo((self._memo_key, kind), lambda: self._encode(record, kind))

    def encode_all(self, record: FrameRecord, *, with_mount: bool = False) -> list[RosMessage]:
        """Every message of ``record``; ``with_mount`` puts the ``/tf_static`` mount first."""
        kinds = ((TF_STATIC,) if with_mount else ()) + self.kinds(record)
        return [self.encode(record, kind) for kind in kinds]

    def _stamped_header(self, record: FrameRecord, frame_id: str) -> Any:
        return self._header(
            stamp=self._time(sec=record.stamp_ns // 1_000_000_000, nanosec=record.stamp_ns % 1_000_000_000),
            frame_id=frame_id,
        )

    def _encode(self, record: FrameRecord, kind: str) -> RosMessage:
        header = self._stamped_header(record, self.frame_id(record.drone_id))
        builder = getattr(self, f"_build_{kind}")
        message = builder(record, header)
        msgtype = _TOPIC_TYPES[kind]
        return RosMessage(self.topic(record, kind), msgtype, self.typestore.serialize_cdr(message, msgtype))

    def map_message(self, snapshot: OccupiedVoxels) -> RosMessage:
        """The world map's occupied voxels as a ``PointCloud2`` (x y z float32, metres, ENU) on :data:`MAP_TOPICS`.

        In the map's own world frame, stamped when the snapshot was read (its
        voxels hold what every drone saw up to then).
        """
        points = np.ascontiguousarray(snapshot.points, dtype="<f4")
        stamp_ns = round(snapshot.stamp * 1e9)
        header = self._header(
            stamp=self._time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
            frame_id=snapshot.frame_id,
        )
        cloud = self._cloud(header, points.view(np.uint8).reshape(-1), len(points), 12, self._map_fields)
        return RosMessage(
            MAP_TOPICS[snapshot.frame_id], POINT_CLOUD2, self.typestore.serialize_cdr(cloud, POINT_CLOUD2)
        )

    # ------------------------------------------------------------------ transforms and obstacles

    def _transform_msg(self, record: FrameRecord, parent: str, child: str, parent_from_child: Transform) -> Any:
        x, y, z, w = (float(v) for v in parent_from_child.rotation)
        tx, ty, tz = (float(v) for v in parent_from_child.translation)
        return self._transform_stamped(
            header=self._stamped_header(record, parent),
            child_frame_id=child,
            transform=self._transform(
                translation=self._vector3(x=tx, y=ty, z=tz), rotation=self._quaternion(x=x, y=y, z=z, w=w)
            ),
        )

    def _build_tf_static(self, record: FrameRecord, header: Any) -> Any:
        ns = ros_name(record.drone_id)
        mount = record.camera.body_from_camera
        return self._tf_message(
            transforms=[self._transform_msg(record, f"{ns}/{BODY_FRAME}", f"{ns}/{OPTICAL_FRAME}", mount)]
        )

    def _build_tf(self, record: FrameRecord, header: Any) -> Any:
        ns = ros_name(record.drone_id)
        body = f"{ns}/{BODY_FRAME}"
        pose = record.result.pose
        transforms = []
        if pose is not None:  # the body pose: REP-105 map|odom → base_link
            transforms.append(self._transform_msg(record, pose.frame_id, body, pose.body.world_from_body))
        if record.result.obstacles is not None:
            transforms.append(
                self._transform_msg(record, body, f"{ns}/{LEVEL_FRAME}", level_frame(record.result.obstacles, pose))
            )
        return self._tf_message(transforms=transforms)

    def _build_obstacles(self, record: FrameRecord, header: Any) -> Any:
        profile = record.result.obstacles
        assert profile is not None  # kinds() lists obstacles only for frames that have them
        ranges, sources, angle_min = laser_scan_ranges(profile)
        increment = math.radians(profile.layout.sector_width_deg)
        return self._laser_scan(
            header=self._stamped_header(record, f"{ros_name(record.drone_id)}/{LEVEL_FRAME}"),
            angle_min=angle_min,
            angle_max=angle_min + increment * (len(ranges) - 1),
            angle_increment=increment,
            time_increment=0.0,  # one instant: every sector comes from the same frame
            scan_time=0.0,
            range_min=profile.min_range_m,
            range_max=profile.max_range_m,
            ranges=ranges,
            intensities=sources,
        )

    # ------------------------------------------------------------------ clouds and images

    def _build_points(self, record: FrameRecord, header: Any) -> Any:
        points = record.result.points
        colors = record.result.colors
        if self.max_points is not None and len(points) > self.max_points:
            step = -(-len(points) // self.max_points)
            points, colors = points[::step], colors[::step]
        n = len(points)
        packed = np.empty((n, 4), np.float32)
        packed[:, :3] = points
        # rgb is a FLOAT32 field whose 4 bytes hold 0x00RRGGBB (PCL's convention):
        # little-endian, byte 12 = B, 13 = G, 14 = R, 15 = 0. Write the bytes
        # through a uint8 view instead of building uint32s.
        raw = packed.view(np.uint8)
        raw[:, 12] = colors[:, 2]
        raw[:, 13] = colors[:, 1]
        raw[:, 14] = colors[:, 0]
        raw[:, 15] = 0
        return self._cloud(header, raw.reshape(-1), n, 16, self._cloud_fields)

    def _build_scale(self, record: FrameRecord, header: Any) -> Any:
        """The result's scale as the drone received it (its ``to_dict`` JSON), with its ``pts`` and ``depth_kind``.

        ``std_msgs/String`` has no header: the bag's log time is the frame's capture time.
        """
        message = record.message
        assert message.scale is not None  # kinds() lists scale only for results that have one
        payload: dict[str, Any] = {
            "pts": message.pts,
            "depth_kind": message.depth_kind,
            "scale": message.scale.to_dict(),
        }
        if message.scale_check is not None:
            payload["scale_check"] = message.scale_check.to_dict()
        return self._string(data=json.dumps(payload, separators=(",", ":"), allow_nan=False))

    def _build_keypoints(self, record: FrameRecord, header: Any) -> Any:
        message = record.message
        packed = np.empty((len(message.points), 6), np.float32)
        packed[:, 0:3] = message.points
        packed[:, 3] = message.scores
        packed[:, 4:6] = message.pixels
        return self._cloud(header, packed.view(np.uint8).reshape(-1), len(packed), 24, self._keypoint_fields)

    def _cloud(self, header: Any, data: NDArray[np.uint8], n: int, step: int, fields: list[Any]) -> Any:
        return self._point_cloud2(
            header=header,
            height=1,
            width=n,
            fields=fields,
            is_bigendian=False,
            point_step=step,
            row_step=step * n,
            data=data,
            is_dense=True,  # only valid (finite) points are ever sent
        )

    def _build_depth(self, record: FrameRecord, header: Any) -> Any:
        depth = np.ascontiguousarray(record.result.depth, dtype="<f4")
        _depth_camera(record)  # a depth image goes out only with a camera_info that fits it
        # REP-118: NaN marks "no measurement". The pipeline already uses NaN for
        # relative depth; zeros or negatives from a metric model would read as
        # real (if absurd) depths, so mark them too (a copy only when needed).
        bad = ~(depth > 0) & ~np.isnan(depth)
        if bad.any():
            depth = depth.copy()
            depth[bad] = np.nan
        height, width = depth.shape
        return self._image(
            header=header,
            height=height,
            width=width,
            encoding="32FC1",
            is_bigendian=0,
            step=4 * width,
            data=depth.view(np.uint8).reshape(-1),
        )

    def _build_image(self, record: FrameRecord, header: Any) -> Any:
        bgr = cv2.cvtColor(record.rgb, cv2.COLOR_RGB2BGR)
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError(f"OpenCV could not JPEG-encode a {record.rgb.shape} frame")
        return self._compressed(header=header, format="jpeg", data=jpeg.reshape(-1))

    def _build_camera_info(self, record: FrameRecord, header: Any) -> Any:
        return self._camera_info_message(header, _frame_camera(record))

    def _build_depth_camera_info(self, record: FrameRecord, header: Any) -> Any:
        return self._camera_info_message(header, _depth_camera(record))

    def _camera_info_message(self, header: Any, camera: CameraMessage) -> Any:
        return self._camera_info(
            header=header,
            height=camera.height,
            width=camera.width,
            binning_x=0,
            binning_y=0,
            roi=self._roi,
            **camera_info_fields(camera),
        )


def _frame_camera(record: FrameRecord) -> CameraMessage:
    """The camera of the record's image: its ``camera`` rescaled if that describes another frame size."""
    camera = record.camera
    height, width = record.rgb.shape[:2]
    return camera if (camera.width, camera.height) == (width, height) else camera.scaled(width, height)


def _depth_camera(record: FrameRecord) -> CameraMessage:
    """The camera of the record's depth grid (the result's ``depth_camera``; None: the frame's own).

    ValueError when the depth's shape is not that camera's size: a depth image
    must never go out beside a camera_info that does not describe it.
    """
    camera = record.result.depth_camera or _frame_camera(record)
    if record.result.depth.shape != (camera.height, camera.width):
        raise ValueError(
            f"depth of shape {record.result.depth.shape} does not fit its {camera.width}x{camera.height} camera"
        )
    return camera


class _DroneBag:
    """One rosbag2 (MCAP storage, zstd-compressed chunks) being written."""

    def __init__(
        self, path: Path, encoder: RosEncoder, drone_id: str, limits: RecordingLimits, on_fault: FaultHandler | None
    ) -> None:
        self.path = path
        self.encoder = encoder
        self.drone_id = drone_id
        self.depth_kinds: set[str] = set()
        self.frames = 0
        self.budget = RecordingBudget(path, drone_id, limits, on_fault)
        self._writer: Writer | None = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        # Chunk compression: a QVGA drone writes ~15 MB/s uncompressed, mostly depth and points.
        self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self._mount: Transform | None = None
        """The camera mount last written to ``/tf_static`` (written again when the drone's camera changes)."""
        self._lock = threading.Lock()
        self._can_flush = _supports_flush(self._writer)
        self._size = self._file_size()
        if not self._can_flush:
            log.warning("this rosbags version hides its MCAP chunks: bag %s is only readable after a clean close", path)

    def write(self, record: FrameRecord) -> None:
        mount = record.camera.body_from_camera
        new_mount = self._mount is None or not (
            np.array_equal(mount.rotation, self._mount.rotation)
            and np.array_equal(mount.translation, self._mount.translation)
        )
        messages = self.encoder.encode_all(record, with_mount=new_mount)
        with self._lock:
            # Log time = capture time, so `ros2 bag play` replays at the drone's pace.
            if not self._write_locked(messages, record.stamp_ns):
                return
            self.depth_kinds.add(record.message.depth_kind)
            self._mount = mount
            self.frames += 1

    def write_messages(self, messages: list[RosMessage], log_time_ns: int) -> None:
        """Write messages that belong to no frame (the world map), logged at ``log_time_ns``."""
        with self._lock:
            if self._write_locked(messages, log_time_ns):
                self.frames += 1

    def _write_locked(self, messages: list[RosMessage], log_time_ns: int) -> bool:
        """Write ``messages`` within the budget and flush them (under the lock); False when not written."""
        if self._writer is None:
            if self.budget.stopped is not None:
                return False
            raise ValueError(f"bag {self.path} is closed")
        # Uncompressed size: an upper bound of what the messages add to the bag.
        if not self.budget.admit(sum(len(message.data) for message in messages)):
            self._finish()  # a size or disk limit: close the bag properly, so it stays readable
            return False
        try:
            for message in messages:
                connection = self._connections.get(message.topic)
                if connection is None:
                    text, rihs01 = self.encoder.definition(message.msgtype)
                    connection = self._connections[message.topic] = self._writer.add_connection(
                        message.topic, message.msgtype, msgdef=text, rihs01=rihs01
                    )
                self._writer.write(connection, log_time_ns, message.data)
            if self._can_flush:
                self._flush()
        except OSError as exc:
            self._abort()
            self.budget.stop("write_failed", f"{exc.strerror or exc}")
            return False
        size = self._file_size()
        self.budget.spent(size - self._size)
        self._size = size
        return True

    def _file_size(self) -> int:
        storage = getattr(self._writer, "storage", None)
        bio = getattr(storage, "bio", None)
        return bio.tell() if bio is not None else 0

    def _flush(self) -> None:
        """End the MCAP chunk and push it to the OS, so a killed process leaves every written frame readable.

        rosbags' MCAP writer keeps messages in an in-memory chunk until it
        passes 1 MiB and writes the index only on close: a killed gateway would
        lose the tail (or, for small messages, everything). One chunk per frame
        costs a few hundred bytes of index.
        """
        storage = None if self._writer is None else self._writer.storage
        if not isinstance(storage, McapWriter):  # only MCAP storage keeps a pending chunk
            return
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()

    def _abort(self) -> None:
        """Release the bag's file after a failed write or close (its descriptor would pin the disk space)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.abort()
            except OSError as exc:  # the buffered tail cannot be written; the descriptor is closed all the same
                log.debug("aborting bag %s: %s", self.path, exc)

    def _finish(self) -> None:
        """Write the index and metadata and close the file (under the lock); on failure release it anyway."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.set_custom_data("dronedepth.drone_id", self.drone_id)
            writer.set_custom_data("dronedepth.depth_kind", ",".join(sorted(self.depth_kinds)) or "none")
            writer.close()
        except OSError as exc:
            self._writer = writer
            self._abort()
            self.budget.stop("write_failed", f"closing the bag: {exc.strerror or exc}")
            return
        log.info("bag %s closed: %d frames", self.path, self.frames)

    def close(self) -> None:
        with self._lock:
            self._finish()


def _supports_flush(writer: Writer) -> bool:
    storage = writer.storage
    chunk = getattr(storage, "chunk", None)
    return (
        callable(getattr(storage, "close_chunk", None))
        and hasattr(getattr(storage, "bio", None), "flush")
        and hasattr(getattr(chunk, "bio", None), "tell")
    )


class BagSink:
    """Records each drone's frames into ``<directory>/<drone_id>_<UTC time>/``, a rosbag2 with MCAP storage.

    A bag starts with the drone's first frame and ends with
    :meth:`close_drone` (a reconnecting drone gets a new bag) or
    :meth:`close`, or stops early within ``limits`` (see
    :mod:`gateway.outputs.recording`: a size or disk limit closes it properly,
    a failed write abandons it, releasing its file). Every frame is flushed as it is written, so the bag of a
    killed gateway is readable up to its last frame (see ``docs/outputs.md``).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        encoder: RosEncoder | None = None,
        limits: RecordingLimits | None = None,
        on_fault: FaultHandler | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.limits = limits or RecordingLimits()
        self.on_fault = on_fault
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the bag directory {self.directory}: {exc.strerror or exc}") from exc
        self.encoder = encoder or RosEncoder()
        self._bags: dict[str, _DroneBag] = {}
        self._fleet_bag: _DroneBag | None = None
        """The gateway-level bag of what belongs to no drone (the world map), opened by the first such message."""
        self._lock = threading.Lock()
        self._closed = False

    def bag_path(self, drone_id: str) -> Path | None:
        """The bag being written for ``drone_id``, if any."""
        with self._lock:
            bag = self._bags.get(drone_id)
            return bag.path if bag else None

    def _new_path(self, drone_id: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.directory / f"{drone_id}_{stamp}"
        suffix = 1
        while path.exists():  # a drone reconnecting within the same second
            suffix += 1
            path = self.directory / f"{drone_id}_{stamp}_{suffix}"
        return path

    def write(self, record: FrameRecord) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("the bag sink is closed")
            bag = self._bags.get(record.drone_id)
            if bag is None:
                path = self._new_path(record.drone_id)
                bag = self._bags[record.drone_id] = _DroneBag(
                    path, self.encoder, record.drone_id, self.limits, self.on_fault
                )
                log.info("drone %s: recording rosbag2 %s", record.drone_id, path)
        bag.write(record)

    repeat_map: Final = False
    """A bag records each map once (a new one when it changed)."""

    def write_map(self, message: RosMessage, stamp_ns: int) -> None:
        """Record one world-map message in ``<directory>/fleet_<UTC time>/``, one bag for the gateway's life."""
        with self._lock:
            if self._closed:
                raise ValueError("the bag sink is closed")
            bag = self._fleet_bag
            if bag is None:
                path = self._new_path(FLEET_BAG)
                bag = self._fleet_bag = _DroneBag(path, self.encoder, FLEET_BAG, self.limits, self.on_fault)
                log.info("recording the world map in rosbag2 %s", path)
        bag.write_messages([message], stamp_ns)

    def fleet_bag_path(self) -> Path | None:
        """The gateway-level bag (the world map), if one was opened."""
        with self._lock:
            return self._fleet_bag.path if self._fleet_bag is not None else None

    def close_drone(self, drone_id: str) -> None:
        with self._lock:
            bag = self._bags.pop(drone_id, None)
        if bag is not None:
            bag.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            bags, self._bags = list(self._bags.values()), {}
            if self._fleet_bag is not None:
                bags.append(self._fleet_bag)
        for bag in bags:
            bag.close()
