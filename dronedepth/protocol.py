"""The dronedepth wire protocol, defined once and imported by both ends.

Signalling is one HTTP request, ``POST /offer`` with :class:`SessionDescription`
as JSON, ``Authorization: Bearer <token>`` and optionally the drone's id in
:data:`DRONE_ID_HEADER`; the answer comes back in the reply, a refusal as JSON
``{"error": CODE, "message": TEXT}`` with one of the codes below. After that
the drone sends video on a WebRTC video track and talks on a data channel
labelled :data:`DATA_CHANNEL_LABEL` carrying JSON text messages, each with a
``type`` field:

- drone → gateway: :class:`CameraMessage` (``camera``), :class:`PoseMessage` (``pose``),
  :class:`AnchorsMessage` (``anchors``)
- gateway → drone: :class:`KeypointsMessage` (``keypoints``), :class:`ObstaclesMessage` (``obstacles``),
  :class:`LocalMapMessage` (``local_map``), :class:`ErrorMessage` (``error``)

``docs/protocol.md`` is the prose version of this module. The module needs
only numpy and the standard library, so a drone can import it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import numpy as np
from numpy.typing import NDArray

from dronedepth.axes import AXES, Axes, axes_from_optical, optical_from_axes
from dronedepth.contract import DEPTH_KINDS, DepthKind, check_depth_stride, depth_grid_shape
from dronedepth.errors import ProtocolError
from dronedepth.frames import Transform, body_from_camera, enu_from_ned_pose, enu_from_ned_vector, normalised_quaternion

DATA_CHANNEL_LABEL: Final = "dronedepth"
MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest data-channel message the gateway accepts from a drone."""
VIDEO_CLOCK_RATE: Final = 90_000
"""``pts`` values count ticks of this clock (the RTP video clock)."""

DRONE_ID_HEADER: Final = "X-Drone-Id"
"""HTTP header of ``POST /offer`` (request and answer) carrying the drone's id."""
DRONE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""Every drone id (``fullmatch``): ids name folders, files, ROS topics and URL paths, so no '.' or '/';
the first character is a letter or digit so that no id reads as a command-line option (``-rf``)."""
DRONE_ID_RULE: Final = "1 to 64 characters among A-Z, a-z, 0-9, '_' and '-', starting with a letter or digit"
""":data:`DRONE_ID_PATTERN` in words, for error messages."""

CameraModel = Literal["pinhole", "fisheye"]

# Error codes carried by ``error`` messages.
INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
MESSAGE_TOO_LARGE: Final = "message_too_large"
INVALID_CAMERA: Final = "invalid_camera"
INVALID_POSE: Final = "invalid_pose"
INVALID_ANCHORS: Final = "invalid_anchors"
NO_CAMERA: Final = "no_camera"
CAMERA_MISMATCH: Final = "camera_mismatch"
FRAME_TOO_LARGE: Final = "frame_too_large"
INFERENCE_UNAVAILABLE: Final = "inference_unavailable"
INFERENCE_RESUMED: Final = "inference_resumed"
CAMERA_RATE_LIMITED: Final = "camera_rate_limited"
NO_POSE: Final = "no_pose"
INTERNAL: Final = "internal"

# ``error`` codes of refused signalling requests (JSON ``{"error", "message"}``; HTTP status in brackets).
# ``invalid_json``, ``invalid_message`` (400) and ``message_too_large`` (413) above refuse offers too.
UNAUTHORIZED: Final = "unauthorized"  # 401
INVALID_DRONE_ID: Final = "invalid_drone_id"  # 400
INVALID_SDP: Final = "invalid_sdp"  # 400
BODY_TOO_LARGE: Final = "body_too_large"  # 413
DRONE_BUSY: Final = "drone_busy"  # 409
GATEWAY_FULL: Final = "gateway_full"  # 503
BODY_TIMEOUT: Final = "body_timeout"  # 408
SIGNALLING_ERROR_CODES: Final = frozenset(
    {UNAUTHORIZED, INVALID_DRONE_ID, INVALID_SDP, BODY_TOO_LARGE, DRONE_BUSY, GATEWAY_FULL, BODY_TIMEOUT}
)
"""The codes only ``POST /offer`` refusals carry (never an ``error`` message on the data channel)."""

ASPECT_TOLERANCE: Final = 0.01
"""Largest relative aspect-ratio difference between frames and camera for which
:meth:`CameraMessage.scaled` rescales the intrinsics (1 %: resizing with each side
rounded to an even number of pixels changes the aspect by far less; a crop by far more)."""

MAX_IMAGE_SIDE_PX: Final = 16384
"""Longest side of a camera message's image (16K; the gateway's frame-pixel limit is far smaller)."""
MIN_FOCAL_PX: Final = 2.0
"""Shortest focal length accepted, in pixels (a lens of 2 px sees far beyond 180° across any image)."""
MAX_FOCAL_WIDTHS: Final = 100
"""Longest focal length accepted, in image widths (a 0.6° field of view)."""
MAX_DISTORTION_COEFFICIENT: Final = 1000.0
"""Largest magnitude of a distortion coefficient (OpenCV's rational-model calibrations stay far below)."""

_PINHOLE_DISTORTION_LENGTHS: Final = (0, 4, 5, 8)
_FISHEYE_DISTORTION_LENGTHS: Final = (0, 4)


MAX_JSON_DEPTH: Final = 32
"""Deepest nesting of JSON arrays and objects accepted in a message or an ``/offer`` body."""
MAX_JSON_INT_DIGITS: Final = 20
"""Longest JSON integer accepted (the largest value on the wire, a 64-bit ``pts``, has 20 digits)."""
_JSON_ESCAPE: Final = re.compile(r"\\.", re.DOTALL)
_JSON_STRING: Final = re.compile(r'"[^"]*"')
_OPENING: Final = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSING: Final = np.frombuffer(b"]}", dtype=np.uint8)


def _json_depth(text: str) -> int:
    """The deepest bracket nesting of ``text``, brackets inside strings not counted: linear time, no recursion."""
    # Escapes first, so that every '"' left opens or closes a string and both patterns run in linear time.
    outside_strings = _JSON_STRING.sub("", _JSON_ESCAPE.sub("", text))
    codes = np.frombuffer(outside_strings.encode("utf-8"), dtype=np.uint8)
    steps = np.isin(codes, _OPENING).astype(np.int32) - np.isin(codes, _CLOSING)
    return int(np.cumsum(steps).max(initial=0))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer {text[:24]}... has more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def parse_json(text: str | bytes, what: str) -> Any:
    """Parse JSON from a peer with bounds: the one parser of data-channel messages and ``/offer`` bodies.

    Nesting deeper than :data:`MAX_JSON_DEPTH` is refused before ``json.loads``
    recurses into it; ``NaN``/``Infinity``, floats that overflow and integers
    longer than :data:`MAX_JSON_INT_DIGITS` digits are refused, so every number
    that comes out is finite and fits a float. Raises
    ``ProtocolError(INVALID_JSON)`` naming ``what`` ("message", "body").
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        return json.loads(text, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(INVALID_JSON, f"{what} is not valid JSON: {exc}") from None


def _number(payload: Mapping[str, Any], key: str, where: str) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(INVALID_MESSAGE, f"{where}: '{key}' must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ProtocolError(INVALID_MESSAGE, f"{where}: '{key}' must be a finite number, got {str(value)[:24]}")
    return number


def _integer(payload: Mapping[str, Any], key: str, where: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(INVALID_MESSAGE, f"{where}: '{key}' must be an integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """The JSON body of ``POST /offer`` and of its reply."""

    sdp: str
    type: Literal["offer", "answer"]

    MAX_SDP_CHARS: ClassVar[int] = 32 * 1024

    def __post_init__(self) -> None:
        if self.type not in ("offer", "answer"):
            raise ProtocolError(INVALID_MESSAGE, f"'type' must be 'offer' or 'answer', got {self.type!r}")
        if not isinstance(self.sdp, str) or not self.sdp.startswith("v=0"):
            raise ProtocolError(INVALID_MESSAGE, "'sdp' must be an SDP text starting with 'v=0'")
        if len(self.sdp) > self.MAX_SDP_CHARS:
            raise ProtocolError(MESSAGE_TOO_LARGE, f"'sdp' is longer than {self.MAX_SDP_CHARS} characters")

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionDescription:
        payload = parse_json(text, "body")
        if not isinstance(payload, dict):
            raise ProtocolError(INVALID_MESSAGE, "body must be a JSON object with 'sdp' and 'type'")
        return cls(sdp=payload.get("sdp"), type=payload.get("type"))  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps({"sdp": self.sdp, "type": self.type}, allow_nan=False)


@dataclass(frozen=True, slots=True)
class CameraMount:
    """Where the camera sits on the body: ``base_link`` (FLU) → ``camera_optical``.

    ``x``, ``y``, ``z`` in metres in ``base_link`` (forward, left, up);
    ``roll_deg``, ``pitch_deg``, ``yaw_deg`` in degrees turn the camera away
    from looking straight forward with its image upright (ROS fixed-axis RPY
    about the body's axes): ``pitch_deg`` > 0 tilts it down, ``yaw_deg`` > 0
    turns it left. All zero (the default) is a forward-looking camera.
    """

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0

    FIELDS: ClassVar[tuple[str, ...]] = ("x", "y", "z", "roll_deg", "pitch_deg", "yaw_deg")
    MAX_OFFSET_M: ClassVar[float] = 10.0

    def __post_init__(self) -> None:
        for name in self.FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ProtocolError(INVALID_CAMERA, f"camera mount: {name} must be a finite number, got {value!r}")
        for name in ("x", "y", "z"):
            if abs(getattr(self, name)) > self.MAX_OFFSET_M:
                raise ProtocolError(
                    INVALID_CAMERA,
                    f"camera mount: {name} = {getattr(self, name)} m is more than {self.MAX_OFFSET_M} m from the body",
                )

    @property
    def body_from_camera(self) -> Transform:
        """``base_link_from_camera_optical``."""
        return body_from_camera(
            self.x,
            self.y,
            self.z,
            math.radians(self.roll_deg),
            math.radians(self.pitch_deg),
            math.radians(self.yaw_deg),
        )

    def to_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, payload: Any) -> CameraMount:
        if not isinstance(payload, dict):
            raise ProtocolError(INVALID_CAMERA, f"camera: 'mount' must be an object, got {payload!r}")
        unknown = sorted(set(payload) - set(cls.FIELDS))
        if unknown:
            raise ProtocolError(
                INVALID_CAMERA, f"camera mount: unknown keys {unknown}; expected some of {', '.join(cls.FIELDS)}"
            )
        return cls(**{name: _number(payload, name, "camera mount") for name in cls.FIELDS if name in payload})


@dataclass(frozen=True, slots=True)
class CameraMessage:
    """Drone → gateway: the intrinsics of the frames that follow.

    ``distortion`` follows OpenCV's order: k1, k2, p1, p2[, k3[, k4, k5, k6]]
    for ``pinhole``; k1..k4 for ``fisheye`` (OpenCV's fisheye model).
    ``mount`` places the camera on the body; ``None`` is a forward-looking
    camera at the body's origin (:attr:`body_from_camera` either way).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()
    model: CameraModel = "pinhole"
    mount: CameraMount | None = None

    type: ClassVar[str] = "camera"

    def __post_init__(self) -> None:
        where = "camera"
        if self.width < 1 or self.height < 1:
            raise ProtocolError(
                INVALID_CAMERA, f"{where}: width and height must be positive, got {self.width}x{self.height}"
            )
        named = {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}
        named |= {f"distortion[{i}]": c for i, c in enumerate(self.distortion)}
        for name, value in named.items():
            if not math.isfinite(value):
                raise ProtocolError(INVALID_CAMERA, f"{where}: {name} must be finite, got {value!r}")
        if self.width > MAX_IMAGE_SIDE_PX or self.height > MAX_IMAGE_SIDE_PX:
            raise ProtocolError(
                INVALID_CAMERA,
                f"{where}: {self.width}x{self.height} has a side longer than {MAX_IMAGE_SIDE_PX} pixels",
            )
        # Physical bounds keep every ray and point finite (a focal length of 1e-300 px made -Infinity points).
        longest_focal = MAX_FOCAL_WIDTHS * self.width
        if not (MIN_FOCAL_PX <= self.fx <= longest_focal and MIN_FOCAL_PX <= self.fy <= longest_focal):
            raise ProtocolError(
                INVALID_CAMERA,
                f"{where}: focal lengths must be between {MIN_FOCAL_PX} and {longest_focal:g} pixels "
                f"({MAX_FOCAL_WIDTHS}x the width), got fx={self.fx:g}, fy={self.fy:g}",
            )
        for i, c in enumerate(self.distortion):
            if abs(c) > MAX_DISTORTION_COEFFICIENT:
                raise ProtocolError(
                    INVALID_CAMERA,
                    f"{where}: distortion[{i}] = {c:g} is outside ±{MAX_DISTORTION_COEFFICIENT:g}",
                )
        if not (0 <= self.cx <= self.width and 0 <= self.cy <= self.height):
            raise ProtocolError(
                INVALID_CAMERA,
                f"{where}: principal point ({self.cx}, {self.cy}) lies outside the {self.width}x{self.height} image",
            )
        if self.model not in ("pinhole", "fisheye"):
            raise ProtocolError(INVALID_CAMERA, f"{where}: model must be 'pinhole' or 'fisheye', got {self.model!r}")
        allowed = _PINHOLE_DISTORTION_LENGTHS if self.model == "pinhole" else _FISHEYE_DISTORTION_LENGTHS
        if len(self.distortion) not in allowed:
            raise ProtocolError(
                INVALID_CAMERA,
                f"{where}: a {self.model} camera takes "
                f"{' or '.join(map(str, allowed))} distortion coefficients, "
                f"got {len(self.distortion)}",
            )

    @property
    def matrix(self) -> NDArray[np.float64]:
        """The 3×3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def has_distortion(self) -> bool:
        return any(c != 0.0 for c in self.distortion)

    @property
    def body_from_camera(self) -> Transform:
        """``base_link_from_camera_optical``: the mount, or a forward-looking camera without one."""
        return (self.mount or CameraMount()).body_from_camera

    def strided(self, stride: int) -> CameraMessage:
        """The camera of this camera's depth sampled at every ``stride``-th pixel (a model's depth grid).

        The grid keeps every ``stride``-th row and column starting at 0 (see
        :func:`dronedepth.contract.depth_grid_shape`): grid pixel ``(i, j)`` is
        image pixel ``(stride·i, stride·j)``, so ``fx, fy, cx, cy`` divide by
        ``stride`` (no half-pixel shift, unlike :meth:`scaled`'s resize), the
        size is ``ceil(W / stride)`` × ``ceil(H / stride)`` and the distortion,
        which acts on normalised coordinates, stays. Every grid pixel thus has
        exactly the ray of its image pixel. Stride 1 is the camera itself.
        """
        stride = check_depth_stride(stride)
        if stride == 1:
            return self
        height, width = depth_grid_shape(self.height, self.width, stride)
        return dataclasses.replace(
            self,
            width=width,
            height=height,
            fx=self.fx / stride,
            fy=self.fy / stride,
            cx=self.cx / stride,
            cy=self.cy / stride,
        )

    def scaled(self, width: int, height: int) -> CameraMessage:
        """The same camera for frames of ``width`` × ``height``: the one aspect policy of both ends.

        Frames of the camera's own size get the camera itself. Frames whose
        aspect ratio agrees with the camera's within :data:`ASPECT_TOLERANCE`
        are taken as the full image resized (a video encoder or the drone
        scaled it; rounding to even sizes changes the aspect slightly): fx, cx
        and fy, cy scale with the width and height, using the pixel-centre
        convention (a pixel's centre is at integer + 0.5 before and after
        resizing), as OpenCV's ``resize`` does. Any other size most likely
        crops the sensor, which scaling cannot model, so it raises
        ``ProtocolError(CAMERA_MISMATCH)`` naming both sizes rather than give
        wrong metric geometry.
        """
        if (width, height) == (self.width, self.height):
            return self
        if width < 1 or height < 1:
            raise ProtocolError(CAMERA_MISMATCH, f"frame size {width}x{height} is not a valid image size")
        frame_aspect, camera_aspect = width / height, self.width / self.height
        if abs(frame_aspect / camera_aspect - 1) > ASPECT_TOLERANCE:
            raise ProtocolError(
                CAMERA_MISMATCH,
                f"frames are {width}x{height} (aspect {frame_aspect:.4f}) but the camera describes "
                f"{self.width}x{self.height} (aspect {camera_aspect:.4f}); the aspect ratios differ by more "
                f"than {ASPECT_TOLERANCE:.0%}, so the intrinsics cannot be rescaled (the camera mode probably "
                f"crops the sensor): calibrate at {width}x{height} and send that camera",
            )
        sx, sy = width / self.width, height / self.height
        return CameraMessage(
            width=width,
            height=height,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            distortion=self.distortion,
            model=self.model,
            mount=self.mount,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "model": self.model,
        }
        if self.distortion:
            out["distortion"] = list(self.distortion)
        if self.mount is not None:
            out["mount"] = self.mount.to_dict()
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> CameraMessage:
        where = "camera"
        try:
            distortion_raw = payload.get("distortion", [])
            if distortion_raw is None:
                distortion_raw = []
            if not isinstance(distortion_raw, list):
                raise ProtocolError(INVALID_MESSAGE, f"{where}: 'distortion' must be a list of numbers")
            distortion = tuple(_number({"distortion": v}, "distortion", where) for v in distortion_raw)
            model = payload.get("model", "pinhole")
            mount = None if payload.get("mount") is None else CameraMount.from_dict(payload["mount"])
            return cls(
                width=_integer(payload, "width", where),
                height=_integer(payload, "height", where),
                fx=_number(payload, "fx", where),
                fy=_number(payload, "fy", where),
                cx=_number(payload, "cx", where),
                cy=_number(payload, "cy", where),
                distortion=distortion,
                model=model,
                mount=mount,
            )
        except ProtocolError as exc:
            # Every problem with a camera message is an invalid camera for the peer.
            raise ProtocolError(INVALID_CAMERA, exc.message) from None


POSE_MATCHES: Final = ("exact", "interpolated", "extrapolated")
"""How a frame's pose was found in the drone's poses (``dronedepth.pose_buffer``)."""


@dataclass(frozen=True, slots=True)
class CameraPose:
    """Where a frame's camera was: ``world_from_camera`` (optical frame → ENU ``frame_id``), metres.

    ``match`` says how the pose came from the drone's ``pose`` messages at the
    frame's pts: one of :data:`POSE_MATCHES`.
    """

    frame_id: str
    world_from_camera: Transform
    match: str = "exact"

    def __post_init__(self) -> None:
        if self.frame_id not in WORLD_FRAMES:
            raise ProtocolError(
                INVALID_MESSAGE, f"world_from_camera: frame_id must be one of {', '.join(WORLD_FRAMES)}"
            )
        if self.match not in POSE_MATCHES:
            raise ProtocolError(INVALID_MESSAGE, f"world_from_camera: match must be one of {', '.join(POSE_MATCHES)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "position": np.round(self.world_from_camera.translation, 4).tolist(),
            "orientation": np.round(self.world_from_camera.rotation, 6).tolist(),
            "match": self.match,
        }

    @classmethod
    def from_dict(cls, payload: Any) -> CameraPose:
        where = "world_from_camera"
        if not isinstance(payload, dict):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: must be an object, got {payload!r}")
        try:
            rotation = normalised_quaternion(_vector(payload, "orientation", 4, where))
            translation = np.array(_vector(payload, "position", 3, where))
        except (ProtocolError, ValueError) as exc:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: {exc}") from None
        return cls(
            frame_id=str(payload.get("frame_id")),
            world_from_camera=Transform(rotation, translation),
            match=str(payload.get("match", "exact")),
        )


@dataclass(frozen=True, slots=True)
class KeypointsMessage:
    """Gateway → drone: the sparse 3D keypoints of one processed frame.

    ``points`` are always in the camera optical frame (x right, y down, z
    forward), in metres when ``depth_kind`` is ``metric``; when it is
    ``relative`` they are scaled by an unknown factor and are not metres.
    ``axes`` (one of :data:`dronedepth.axes.AXES`) names the frame the points
    take **on the wire** only: :meth:`to_dict` converts them to it and
    :meth:`from_dict` back to optical (:mod:`dronedepth.axes`). ``pixels`` are
    (u, v) in the frame's pixel grid.

    ``camera_pose`` (when the frame had a pose) is where the camera was:
    ``world_from_camera`` into the ENU ``map``/``odom`` world. With
    ``world_points`` the points go on the wire in that world frame (ENU,
    metres for metric depth; ``frame`` names it) instead of the optical frame;
    ``axes`` then stays ``optical`` (it only ever names camera-frame axes).
    ``ids`` (optional) are landmark ids, one per point, stable across frames.
    ``scale`` (optional, :class:`Scale`) says where the depth's scale came
    from; ``scale_check`` (optional, metric models, :class:`ScaleCheck`) how
    far the model's own scale is from the anchors'.
    """

    pts: int
    points: NDArray[np.float32]
    pixels: NDArray[np.float32]
    scores: NDArray[np.float32]
    depth_kind: DepthKind
    width: int
    height: int
    frame_index: int = 0
    axes: Axes = "optical"
    timing: Mapping[str, float] = field(default_factory=dict)
    descriptor_type: str | None = None
    descriptors: NDArray[Any] | None = None
    camera_pose: CameraPose | None = None
    world_points: bool = False
    ids: NDArray[np.int64] | None = None
    scale: Scale | None = None
    scale_check: ScaleCheck | None = None

    type: ClassVar[str] = "keypoints"
    OPTICAL_FRAME: ClassVar[str] = "camera_optical"
    """``frame`` of points in the camera optical frame (x right, y down, z forward)."""

    def __post_init__(self) -> None:
        if self.axes not in AXES:
            raise ProtocolError(INVALID_MESSAGE, f"keypoints: axes must be one of {', '.join(AXES)}, got {self.axes!r}")
        if self.world_points and (self.camera_pose is None or self.axes != "optical"):
            raise ProtocolError(
                INVALID_MESSAGE, "keypoints: world-frame points need a camera pose and axes 'optical' (world is ENU)"
            )
        if self.ids is not None and self.ids.shape != (len(self.points),):
            raise ProtocolError(INVALID_MESSAGE, "keypoints: one landmark id per point is required")
        n = len(self.points)
        if self.points.shape != (n, 3) or self.pixels.shape != (n, 2) or self.scores.shape != (n,):
            raise ProtocolError(
                INVALID_MESSAGE,
                f"keypoints: inconsistent shapes points {self.points.shape}, "
                f"pixels {self.pixels.shape}, scores {self.scores.shape}",
            )
        if self.descriptors is not None and len(self.descriptors) != n:
            raise ProtocolError(INVALID_MESSAGE, "keypoints: one descriptor per point is required")

    @property
    def frame(self) -> str:
        """The frame of the points on the wire: ``camera_optical`` or the world's ``frame_id``."""
        if self.world_points and self.camera_pose is not None:
            return self.camera_pose.frame_id
        return self.OPTICAL_FRAME

    def _wire_points(self) -> NDArray[np.float64]:
        if self.world_points and self.camera_pose is not None:
            return self.camera_pose.world_from_camera.apply(self.points)
        return axes_from_optical(self.points, self.axes).astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "pts": self.pts,
            "frame_index": self.frame_index,
            "width": self.width,
            "height": self.height,
            "depth_kind": self.depth_kind,
            "axes": self.axes,
            "frame": self.frame,
            "points": np.round(self._wire_points(), 4).tolist(),
            "pixels": np.round(self.pixels.astype(np.float64), 2).tolist(),
            "scores": np.round(self.scores.astype(np.float64), 4).tolist(),
            "timing": {k: round(v, 2) for k, v in self.timing.items()},
        }
        if self.descriptors is not None and self.descriptor_type:
            out["descriptor_type"] = self.descriptor_type
            out["descriptor_dtype"] = str(self.descriptors.dtype)
            out["descriptor_size"] = int(self.descriptors.shape[1]) if self.descriptors.ndim == 2 else 0
            out["descriptors"] = base64.b64encode(np.ascontiguousarray(self.descriptors).tobytes()).decode()
        if self.camera_pose is not None:
            out["world_from_camera"] = self.camera_pose.to_dict()
        if self.ids is not None:
            out["ids"] = self.ids.tolist()
        if self.scale is not None:
            out["scale"] = self.scale.to_dict()
        if self.scale_check is not None:
            out["scale_check"] = self.scale_check.to_dict()
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> KeypointsMessage:
        where = "keypoints"
        try:
            points = np.asarray(payload["points"], dtype=np.float32).reshape(-1, 3)
            pixels = np.asarray(payload["pixels"], dtype=np.float32).reshape(-1, 2)
            scores = np.asarray(payload["scores"], dtype=np.float32).reshape(-1)
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: bad points/pixels/scores: {exc}") from exc
        descriptors = None
        if payload.get("descriptors"):
            raw = base64.b64decode(payload["descriptors"])
            descriptors = np.frombuffer(raw, dtype=np.dtype(payload["descriptor_dtype"])).reshape(
                len(points), int(payload["descriptor_size"])
            )
        kind = payload.get("depth_kind")
        if kind not in DEPTH_KINDS:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: depth_kind must be one of {DEPTH_KINDS}, got {kind!r}")
        axes = payload.get("axes", "optical")
        if axes not in AXES:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: axes must be one of {', '.join(AXES)}, got {axes!r}")
        raw_pose = payload.get("world_from_camera")
        camera_pose = None if raw_pose is None else CameraPose.from_dict(raw_pose)
        frame = payload.get("frame", cls.OPTICAL_FRAME)
        world_points = frame != cls.OPTICAL_FRAME
        if world_points:
            if camera_pose is None or frame != camera_pose.frame_id:
                raise ProtocolError(
                    INVALID_MESSAGE, f"{where}: points in frame {frame!r} need a world_from_camera into that frame"
                )
            optical = camera_pose.world_from_camera.inverse().apply(points).astype(np.float32)
        else:
            optical = optical_from_axes(points, axes)
        ids = payload.get("ids")
        return cls(
            pts=_integer(payload, "pts", where),
            points=optical,
            pixels=pixels,
            scores=scores,
            depth_kind=kind,
            width=_integer(payload, "width", where),
            height=_integer(payload, "height", where),
            frame_index=int(payload.get("frame_index", 0)),
            axes=axes,
            timing=dict(payload.get("timing", {})),
            descriptor_type=payload.get("descriptor_type"),
            descriptors=descriptors,
            camera_pose=camera_pose,
            world_points=world_points,
            ids=None if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1),
            scale=None if payload.get("scale") is None else Scale.from_dict(payload["scale"]),
            scale_check=None if payload.get("scale_check") is None else ScaleCheck.from_dict(payload["scale_check"]),
        )


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Gateway → drone: a message could not be used, or the service is degraded.

    The session goes on after an error; ``code`` is one of this module's error codes.
    """

    code: str
    message: str

    type: ClassVar[str] = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ErrorMessage:
        return cls(code=str(payload.get("code", INTERNAL)), message=str(payload.get("message", "")))

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> ErrorMessage:
        return cls(code=exc.code, message=exc.message)


MIN_ADVISED_FPS: Final = 0.5
MAX_ADVISED_FPS: Final = 1000.0


@dataclass(frozen=True, slots=True)
class FrameRateMessage:
    """Gateway → drone: the most frames per second worth sending now; ``max_fps`` None lifts the limit.

    The gateway processes the newest frame of each drone and drops the ones
    that arrive while it is busy; frames it would drop cost the drone's
    encoder and radio and the gateway's decoder for nothing. A drone that
    honours the advice skips frames at its source (before encoding) so that
    at most ``max_fps`` reach the gateway. Advisory: a drone may ignore it.
    """

    max_fps: float | None

    type: ClassVar[str] = "frame_rate"

    def __post_init__(self) -> None:
        if self.max_fps is not None and not (
            isinstance(self.max_fps, int | float) and MIN_ADVISED_FPS <= self.max_fps <= MAX_ADVISED_FPS
        ):
            raise ProtocolError(
                INVALID_MESSAGE,
                f"frame_rate: max_fps must be null or between {MIN_ADVISED_FPS:g} and {MAX_ADVISED_FPS:g}, "
                f"got {self.max_fps!r}",
            )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "max_fps": None if self.max_fps is None else round(self.max_fps, 2)}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FrameRateMessage:
        where = "frame_rate"
        if "max_fps" not in payload:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: max_fps is missing (null lifts the limit)")
        return cls(max_fps=None if payload["max_fps"] is None else _number(payload, "max_fps", where))


PoseConvention = Literal["enu_flu", "ned_frd"]
POSE_CONVENTIONS: Final[tuple[PoseConvention, ...]] = ("enu_flu", "ned_frd")
WORLD_FRAMES: Final = ("map", "odom")
MAX_POSE_TICKS: Final = 2**47
"""Largest ``|pts|`` of a pose: about 50 years of the 90 kHz clock, far inside float64's exact integers."""


def _vector(payload: Mapping[str, Any], key: str, length: int, where: str) -> tuple[float, ...]:
    value = payload.get(key)
    if not isinstance(value, list) or len(value) != length:
        raise ProtocolError(INVALID_POSE, f"{where}: '{key}' must be a list of {length} numbers, got {value!r}")
    return tuple(_number({key: v}, key, where) for v in value)


@dataclass(frozen=True, slots=True)
class PoseMessage:
    """Drone → gateway: the body's pose at one instant of the video clock.

    ``position`` (metres) and ``orientation`` (unit quaternion x, y, z, w) make
    ``world_from_body``: ``frame_id`` names the world (``map`` or ``odom``),
    ``convention`` its axes and the body's (``enu_flu``: ROS REP-103;
    ``ned_frd``: PX4/ArduPilot). ``pts`` counts 90 kHz ticks on the clock of
    the video ``pts`` (0 = the first frame's capture instant), so the gateway
    can interpolate a pose at each frame. Optional: ``height_above_ground``
    (metres, rangefinder) and ``velocity`` (m/s in the world's axes).
    :meth:`from_dict` converts ``ned_frd`` to ``enu_flu`` (the one edge where
    that happens), so received poses are always ENU/FLU.
    """

    pts: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    frame_id: str = "map"
    convention: PoseConvention = "enu_flu"
    height_above_ground: float | None = None
    velocity: tuple[float, float, float] | None = None

    type: ClassVar[str] = "pose"

    def __post_init__(self) -> None:
        where = "pose"
        if isinstance(self.pts, bool) or not isinstance(self.pts, int) or abs(self.pts) > MAX_POSE_TICKS:
            raise ProtocolError(INVALID_POSE, f"{where}: pts must be an integer within ±2**47, got {self.pts!r}")
        if self.frame_id not in WORLD_FRAMES:
            raise ProtocolError(
                INVALID_POSE, f"{where}: frame_id must be one of {', '.join(WORLD_FRAMES)}, got {self.frame_id!r}"
            )
        if self.convention not in POSE_CONVENTIONS:
            raise ProtocolError(
                INVALID_POSE,
                f"{where}: convention must be one of {', '.join(POSE_CONVENTIONS)}, got {self.convention!r}",
            )
        vectors = {"position": self.position, "velocity": self.velocity or (0.0, 0.0, 0.0)}
        for name, vector in vectors.items():
            if len(vector) != 3 or not all(math.isfinite(v) for v in vector):
                raise ProtocolError(INVALID_POSE, f"{where}: {name} must be 3 finite numbers, got {vector!r}")
        try:
            normalised_quaternion(self.orientation)
        except ValueError as exc:
            raise ProtocolError(INVALID_POSE, f"{where}: orientation: {exc}") from None
        height = self.height_above_ground
        if height is not None and not (math.isfinite(height) and height >= 0):
            raise ProtocolError(
                INVALID_POSE, f"{where}: height_above_ground must be finite and ≥ 0 metres, got {height!r}"
            )

    @property
    def time_s(self) -> float:
        """``pts`` in seconds of the video clock."""
        return self.pts / VIDEO_CLOCK_RATE

    @property
    def world_from_body(self) -> Transform:
        """The pose as a transform in this message's ``convention`` (quaternion normalised)."""
        return Transform(normalised_quaternion(self.orientation), np.array(self.position, dtype=np.float64))

    def to_enu_flu(self) -> PoseMessage:
        """The same pose in ENU world / FLU body axes (itself when it already is)."""
        if self.convention == "enu_flu":
            return self
        pose = enu_from_ned_pose(self.world_from_body)
        velocity = None if self.velocity is None else tuple(enu_from_ned_vector(self.velocity).tolist())
        return PoseMessage(
            pts=self.pts,
            position=tuple(pose.translation.tolist()),
            orientation=tuple(pose.rotation.tolist()),
            frame_id=self.frame_id,
            convention="enu_flu",
            height_above_ground=self.height_above_ground,
            velocity=velocity,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "pts": self.pts,
            "frame_id": self.frame_id,
            "convention": self.convention,
            "position": [float(v) for v in self.position],
            "orientation": [float(v) for v in self.orientation],
        }
        if self.height_above_ground is not None:
            out["height_above_ground"] = float(self.height_above_ground)
        if self.velocity is not None:
            out["velocity"] = [float(v) for v in self.velocity]
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> PoseMessage:
        """Parse and validate a ``pose``, converted to ``enu_flu``."""
        where = "pose"
        try:
            height = payload.get("height_above_ground")
            message = cls(
                pts=_integer(payload, "pts", where),
                position=_vector(payload, "position", 3, where),  # type: ignore[arg-type]
                orientation=_vector(payload, "orientation", 4, where),  # type: ignore[arg-type]
                frame_id=payload.get("frame_id", "map"),
                convention=payload.get("convention", "enu_flu"),
                height_above_ground=None if height is None else _number(payload, "height_above_ground", where),
                velocity=None if payload.get("velocity") is None else _vector(payload, "velocity", 3, where),  # type: ignore[arg-type]
            )
        except ProtocolError as exc:
            # Every problem with a pose message is an invalid pose for the peer.
            raise ProtocolError(INVALID_POSE, exc.message) from None
        return message.to_enu_flu()


MAX_ANCHORS: Final = 512
"""Most anchors (pixels and points together) in one ``anchors`` message."""
MIN_ANCHOR_DEPTH_M: Final = 0.05
"""Smallest anchor depth accepted: a rangefinder reading 0 (or a few cm) means no return, not a distance."""
MAX_ANCHOR_DEPTH_M: Final = 1000.0
"""Largest anchor depth accepted, metres: beyond it a drone's rangefinder or SLAM point is noise."""


def _rows(payload: Mapping[str, Any], key: str, length: int, where: str) -> list[tuple[float, ...]]:
    value = payload.get(key, [])
    if not isinstance(value, list):
        raise ProtocolError(INVALID_ANCHORS, f"{where}: '{key}' must be a list, got {value!r}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != length:
            raise ProtocolError(INVALID_ANCHORS, f"{where}: {key}[{i}] must be a list of {length} numbers, got {row!r}")
        rows.append(tuple(_number({key: v}, key, f"{where}: {key}[{i}]") for v in row))
    return rows


@dataclass(frozen=True, slots=True)
class AnchorsMessage:
    """Drone → gateway: sparse points whose metric depth the drone knows, at one instant of the video clock.

    Two kinds, either or both: ``pixels`` ``(u, v)`` of a frame of ``width`` ×
    ``height`` (pixel centres at integers) with their z-depths ``depths``
    (metres along the optical axis, not the range along the ray), e.g. a
    rangefinder's spot; and ``points`` ``(x, y, z)``, metres in the camera
    optical frame (x right, y down, z forward), e.g. SLAM or VIO landmarks.
    ``pts`` follows the ``pose`` stamp convention (90 kHz ticks on the video
    clock). The gateway uses them to put a relative model's depth on a metric
    scale and to check a metric model's scale.
    """

    pts: int
    width: int
    height: int
    pixels: tuple[tuple[float, float], ...] = ()
    depths: tuple[float, ...] = ()
    points: tuple[tuple[float, float, float], ...] = ()

    type: ClassVar[str] = "anchors"

    def __post_init__(self) -> None:
        where = "anchors"
        if isinstance(self.pts, bool) or not isinstance(self.pts, int) or abs(self.pts) > MAX_POSE_TICKS:
            raise ProtocolError(INVALID_ANCHORS, f"{where}: pts must be an integer within ±2**47, got {self.pts!r}")
        for name in ("width", "height"):
            size = getattr(self, name)
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ProtocolError(INVALID_ANCHORS, f"{where}: {name} must be a positive integer, got {size!r}")
        if len(self.pixels) != len(self.depths):
            raise ProtocolError(
                INVALID_ANCHORS,
                f"{where}: one depth per pixel expected, got {len(self.pixels)} pixels and {len(self.depths)} depths",
            )
        count = len(self.pixels) + len(self.points)
        if not 1 <= count <= MAX_ANCHORS:
            raise ProtocolError(INVALID_ANCHORS, f"{where}: 1 to {MAX_ANCHORS} anchors expected, got {count}")
        for i, (u, v) in enumerate(self.pixels):
            # The image spans [-0.5, size - 0.5]: an anchor outside it cannot be matched to the depth map.
            if not (-0.5 <= u <= self.width - 0.5 and -0.5 <= v <= self.height - 0.5):
                raise ProtocolError(
                    INVALID_ANCHORS,
                    f"{where}: pixels[{i}] = ({u}, {v}) lies outside the {self.width}x{self.height} image",
                )
        for i, depth in enumerate(self.depths):
            self._check_depth(depth, f"depths[{i}]")
        for i, (x, y, z) in enumerate(self.points):
            if not all(math.isfinite(c) for c in (x, y, z)) or max(abs(x), abs(y)) > MAX_ANCHOR_DEPTH_M:
                raise ProtocolError(
                    INVALID_ANCHORS,
                    f"{where}: points[{i}] = ({x}, {y}, {z}) must be finite, within ±{MAX_ANCHOR_DEPTH_M:g} m",
                )
            self._check_depth(z, f"points[{i}] z")

    @staticmethod
    def _check_depth(depth: float, name: str) -> None:
        if not (math.isfinite(depth) and MIN_ANCHOR_DEPTH_M <= depth <= MAX_ANCHOR_DEPTH_M):
            raise ProtocolError(
                INVALID_ANCHORS,
                f"anchors: {name} = {depth!r} m is not a depth between {MIN_ANCHOR_DEPTH_M:g} and "
                f"{MAX_ANCHOR_DEPTH_M:g} m (a reading of 0 means no return)",
            )

    @property
    def time_s(self) -> float:
        """``pts`` in seconds of the video clock."""
        return self.pts / VIDEO_CLOCK_RATE

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "pts": self.pts, "width": self.width, "height": self.height}
        if self.pixels:
            out["pixels"] = [[float(u), float(v)] for u, v in self.pixels]
            out["depths"] = [float(z) for z in self.depths]
        if self.points:
            out["points"] = [[float(c) for c in p] for p in self.points]
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> AnchorsMessage:
        where = "anchors"
        try:
            depths = payload.get("depths", [])
            if not isinstance(depths, list):
                raise ProtocolError(INVALID_ANCHORS, f"{where}: 'depths' must be a list of numbers, got {depths!r}")
            return cls(
                pts=_integer(payload, "pts", where),
                width=_integer(payload, "width", where),
                height=_integer(payload, "height", where),
                pixels=tuple(_rows(payload, "pixels", 2, where)),  # type: ignore[arg-type]
                depths=tuple(_number({"depths": z}, "depths", f"{where}: depths[{i}]") for i, z in enumerate(depths)),
                points=tuple(_rows(payload, "points", 3, where)),  # type: ignore[arg-type]
            )
        except ProtocolError as exc:
            # Every problem with an anchors message is invalid anchors for the peer.
            raise ProtocolError(INVALID_ANCHORS, exc.message) from None


ScaleSource = Literal["model", "ground", "anchors"]
SCALE_SOURCES: Final[tuple[ScaleSource, ...]] = ("model", "ground", "anchors")


@dataclass(frozen=True, slots=True)
class Scale:
    """How a frame's depth was put on a metric scale: the ``scale`` object of a result.

    The model's output ``d`` (a relative model's disparity; ``1 / depth`` of a
    metric model) maps to metric inverse depth by ``1 / Z = a · d + b`` (``a``
    unitless per unit of ``d``, ``b`` in 1/m). ``source``: ``model`` = no
    anchors, the model's output as it is (``a`` 1, ``b`` 0: a relative model's
    depth is then **not metres**); ``ground`` = fitted to the ground plane from
    height above ground and attitude; ``anchors`` = fitted to the drone's
    ``anchors`` (with the ground's when both were there). ``residual``: robust
    RMS of the inliers' relative inverse-depth residual ``(a·d + b)·Z − 1``
    (unitless, about the relative depth error). ``confidence`` in [0, 1];
    ``anchors_used``: inlier anchors of the last fit.
    """

    source: ScaleSource
    a: float
    b: float
    residual: float
    confidence: float
    anchors_used: int

    def __post_init__(self) -> None:
        where = "scale"
        if self.source not in SCALE_SOURCES:
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: source must be one of {', '.join(SCALE_SOURCES)}, got {self.source!r}"
            )
        if not (math.isfinite(self.a) and self.a > 0 and math.isfinite(self.b)):
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: need a finite a > 0 and a finite b, got {self.a!r}, {self.b!r}"
            )
        if not (math.isfinite(self.residual) and self.residual >= 0):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: residual must be finite and ≥ 0, got {self.residual!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: confidence must be in [0, 1], got {self.confidence!r}")
        if isinstance(self.anchors_used, bool) or not isinstance(self.anchors_used, int) or self.anchors_used < 0:
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: anchors_used must be an integer ≥ 0, got {self.anchors_used!r}"
            )

    @classmethod
    def unscaled(cls) -> Scale:
        """The model's output as it is: no anchors, no fit."""
        return cls(source="model", a=1.0, b=0.0, residual=0.0, confidence=0.0, anchors_used=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "a": float(self.a),
            "b": float(self.b),
            "residual": round(float(self.residual), 5),
            "confidence": round(float(self.confidence), 3),
            "anchors_used": self.anchors_used,
        }

    @classmethod
    def from_dict(cls, payload: Any) -> Scale:
        where = "scale"
        if not isinstance(payload, dict):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: must be an object, got {payload!r}")
        return cls(
            source=payload.get("source"),  # type: ignore[arg-type]
            a=_number(payload, "a", where),
            b=_number(payload, "b", where),
            residual=_number(payload, "residual", where),
            confidence=_number(payload, "confidence", where),
            anchors_used=_integer(payload, "anchors_used", where),
        )


@dataclass(frozen=True, slots=True)
class ScaleCheck:
    """A metric model's scale error on one frame's anchors: the ``scale_check`` object of a result.

    ``ratio`` = anchors' metric depth ÷ the model's depth (median over the
    inliers; 1.0 = the model's metres are right, 0.71 = the model says 1.4 m
    where there is 1 m), ``residual`` the RMS relative residual of the
    inliers (unitless), ``anchors_used`` their count.
    """

    ratio: float
    residual: float
    anchors_used: int

    def __post_init__(self) -> None:
        where = "scale_check"
        if not (math.isfinite(self.ratio) and self.ratio > 0):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: ratio must be finite and > 0, got {self.ratio!r}")
        if not (math.isfinite(self.residual) and self.residual >= 0):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: residual must be finite and ≥ 0, got {self.residual!r}")
        if isinstance(self.anchors_used, bool) or not isinstance(self.anchors_used, int) or self.anchors_used < 0:
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: anchors_used must be an integer ≥ 0, got {self.anchors_used!r}"
            )

    def to_dict(self) -> dict[str, float | int]:
        return {"ratio": round(self.ratio, 5), "residual": round(self.residual, 5), "anchors_used": self.anchors_used}

    @classmethod
    def from_dict(cls, payload: Any) -> ScaleCheck:
        where = "scale_check"
        if not isinstance(payload, dict):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: must be an object, got {payload!r}")
        return cls(
            ratio=_number(payload, "ratio", where),
            residual=_number(payload, "residual", where),
            anchors_used=_integer(payload, "anchors_used", where),
        )


OBSTACLE_NO_DATA: Final = -1.0
"""``obstacles`` distance of a sector that was not seen: unknown, never free."""
OBSTACLE_FREE: Final = -2.0
"""``obstacles`` distance of a sector seen free of obstacles up to ``max_range_m``."""
MAX_OBSTACLE_SECTORS: Final = 360
OBSTACLE_SOURCES: Final = ("none", "camera", "map")
"""Where an ``obstacles`` sector's distance comes from (``sources``), in this order of codes."""


@dataclass(frozen=True, slots=True)
class ObstaclesMessage:
    """Gateway → drone: the nearest obstacle per azimuth sector around the body, from one frame's metric depth.

    Sectors follow MAVLink's ``MAV_FRAME_BODY_FRD``: angles in degrees from the
    body's forward direction, **clockwise seen from above** (positive to the
    right); sector ``i`` is centred on ``angle_offset_deg + i *
    sector_width_deg``. ``distances_m`` are horizontal ranges in metres from
    the body origin in ``[min_range_m, max_range_m]``, or :data:`OBSTACLE_FREE`
    or :data:`OBSTACLE_NO_DATA`. ``gravity_aligned`` is True when the ranges
    are in the horizontal plane (attitude known); False when the body was
    taken as level (no pose). ``pts`` is the frame's pts (90 kHz), ``stamp``
    its capture time (Unix seconds). Sent only for metric depth. ``sources``
    (optional, with the world map on) says per sector where its distance
    comes from: one of :data:`OBSTACLE_SOURCES` (``camera``: this frame,
    ``map``: the world map, what this or another drone saw before, ``none``: no data).
    """

    pts: int
    stamp: float
    gravity_aligned: bool
    sector_width_deg: float
    angle_offset_deg: float
    min_range_m: float
    max_range_m: float
    distances_m: tuple[float, ...]
    frame_index: int = 0
    sources: tuple[str, ...] | None = None
    frame: ClassVar[str] = "body_frd"

    type: ClassVar[str] = "obstacles"

    def __post_init__(self) -> None:
        where = "obstacles"
        if not (math.isfinite(self.sector_width_deg) and 0 < self.sector_width_deg <= 360):
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: sector_width_deg must be in (0, 360], got {self.sector_width_deg!r}"
            )
        if not (math.isfinite(self.angle_offset_deg) and -360 <= self.angle_offset_deg <= 360):
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: angle_offset_deg must be in [-360, 360], got {self.angle_offset_deg!r}"
            )
        if not (math.isfinite(self.min_range_m) and math.isfinite(self.max_range_m)) or not (
            0 <= self.min_range_m < self.max_range_m
        ):
            raise ProtocolError(
                INVALID_MESSAGE,
                f"{where}: need 0 <= min_range_m < max_range_m, got {self.min_range_m!r} and {self.max_range_m!r}",
            )
        if not 1 <= len(self.distances_m) <= MAX_OBSTACLE_SECTORS:
            raise ProtocolError(
                INVALID_MESSAGE,
                f"{where}: 1 to {MAX_OBSTACLE_SECTORS} distances expected, got {len(self.distances_m)}",
            )
        for i, d in enumerate(self.distances_m):
            if d not in (OBSTACLE_FREE, OBSTACLE_NO_DATA) and not (self.min_range_m <= d <= self.max_range_m):
                raise ProtocolError(
                    INVALID_MESSAGE,
                    f"{where}: distances_m[{i}] = {d!r} is neither in [min_range_m, max_range_m] "
                    f"nor {OBSTACLE_FREE} (free) or {OBSTACLE_NO_DATA} (no data)",
                )
        if self.sources is not None:
            if len(self.sources) != len(self.distances_m):
                raise ProtocolError(
                    INVALID_MESSAGE,
                    f"{where}: {len(self.sources)} sources for {len(self.distances_m)} distances; one per sector",
                )
            unknown = sorted(set(self.sources) - set(OBSTACLE_SOURCES))
            if unknown:
                raise ProtocolError(
                    INVALID_MESSAGE, f"{where}: sources must be {', '.join(OBSTACLE_SOURCES)}, got {unknown[0]!r}"
                )

    def sector_azimuths_deg(self) -> NDArray[np.float64]:
        """Each sector's centre, ``MAV_FRAME_BODY_FRD`` degrees (clockwise from forward), wrapped into [-180, 180)."""
        centres = self.angle_offset_deg + self.sector_width_deg * np.arange(len(self.distances_m))
        return np.asarray((centres + 180.0) % 360.0 - 180.0, dtype=np.float64)

    def nearest_sector(self) -> int | None:
        """Index of the sector with the nearest measured obstacle (the first of equals); None when every sector
        is free or has no data."""
        distances = np.asarray(self.distances_m, dtype=np.float64)
        measured = np.flatnonzero(distances >= 0)  # OBSTACLE_FREE and OBSTACLE_NO_DATA are negative
        if len(measured) == 0:
            return None
        return int(measured[np.argmin(distances[measured])])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "pts": self.pts,
            "stamp": self.stamp,
            "frame_index": self.frame_index,
            "frame": self.frame,
            "gravity_aligned": self.gravity_aligned,
            "sector_width_deg": self.sector_width_deg,
            "angle_offset_deg": self.angle_offset_deg,
            "min_range_m": self.min_range_m,
            "max_range_m": self.max_range_m,
            "distances_m": [round(d, 3) for d in self.distances_m],
        }
        if self.sources is not None:
            out["sources"] = list(self.sources)
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ObstaclesMessage:
        where = "obstacles"
        if payload.get("frame", cls.frame) != cls.frame:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: frame must be {cls.frame!r}, got {payload.get('frame')!r}")
        aligned = payload.get("gravity_aligned")
        if not isinstance(aligned, bool):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: 'gravity_aligned' must be true or false, got {aligned!r}")
        distances = payload.get("distances_m")
        if not isinstance(distances, list):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: 'distances_m' must be a list of numbers")
        sources = payload.get("sources")
        if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: 'sources' must be a list of strings")
        return cls(
            pts=_integer(payload, "pts", where),
            stamp=_number(payload, "stamp", where),
            frame_index=_integer(payload, "frame_index", where),
            gravity_aligned=aligned,
            sector_width_deg=_number(payload, "sector_width_deg", where),
            angle_offset_deg=_number(payload, "angle_offset_deg", where),
            min_range_m=_number(payload, "min_range_m", where),
            max_range_m=_number(payload, "max_range_m", where),
            distances_m=tuple(_number({"distances_m": d}, "distances_m", where) for d in distances),
            sources=None if sources is None else tuple(sources),
        )


LOCAL_MAP_NO_DATA: Final = 255
"""``local_map`` cell value of a column with no occupied voxel known (unobserved, or seen free: never "free")."""
LOCAL_MAP_ENCODING: Final = "zlib_uint8_base64"
MAX_LOCAL_MAP_CELLS: Final = 40_000
"""Most cells in a ``local_map`` (200 × 200): even incompressible, its JSON stays under 64 KiB."""


@dataclass(frozen=True, slots=True)
class LocalMapMessage:
    """Gateway → drone: a 2.5D height map of the world map in a box around the drone, for onboard planners.

    ``frame_id`` is the world frame of the drone's poses (``map`` or ``odom``,
    ENU: x east, y north, z up). Cell ``(row, col)`` covers east
    ``[origin_x + col·cell_size_m, +cell_size_m)`` and north ``[origin_y +
    row·cell_size_m, +cell_size_m)``; rows run north, columns east. A cell's
    value ``h`` (0–254) says its highest occupied voxel is at ``origin_z +
    h·cell_size_m`` metres (ENU z); :data:`LOCAL_MAP_NO_DATA` (255) says no
    occupied voxel is known there. ``heights`` is the ``width`` × ``height``
    uint8 grid, row-major, zlib-compressed then base64 (``encoding``).
    ``stamp`` (Unix seconds) is when the map was read: cells may hold what any
    drone sharing the map saw before.
    """

    stamp: float
    frame_id: str
    origin: tuple[float, float, float]
    cell_size_m: float
    width: int
    height: int
    heights: bytes
    """The raw uint8 grid (``width × height`` bytes); compressed and encoded only on the wire."""

    type: ClassVar[str] = "local_map"
    encoding: ClassVar[str] = LOCAL_MAP_ENCODING

    def __post_init__(self) -> None:
        where = "local_map"
        if self.frame_id not in WORLD_FRAMES:
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: frame_id must be one of {', '.join(WORLD_FRAMES)}, got {self.frame_id!r}"
            )
        if not math.isfinite(self.stamp):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: stamp must be finite, got {self.stamp!r}")
        if len(self.origin) != 3 or not all(math.isfinite(v) for v in self.origin):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: origin must be 3 finite numbers, got {self.origin!r}")
        if not (math.isfinite(self.cell_size_m) and 0.01 <= self.cell_size_m <= 10.0):
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: cell_size_m must be in [0.01, 10] metres, got {self.cell_size_m!r}"
            )
        for name in ("width", "height"):
            size = getattr(self, name)
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ProtocolError(INVALID_MESSAGE, f"{where}: {name} must be a positive integer, got {size!r}")
        if self.width * self.height > MAX_LOCAL_MAP_CELLS:
            raise ProtocolError(
                INVALID_MESSAGE,
                f"{where}: {self.width}x{self.height} cells exceed the limit of {MAX_LOCAL_MAP_CELLS}",
            )
        if len(self.heights) != self.width * self.height:
            raise ProtocolError(
                INVALID_MESSAGE,
                f"{where}: heights hold {len(self.heights)} bytes for {self.width}x{self.height} cells",
            )

    @property
    def grid(self) -> NDArray[np.uint8]:
        """The heights as a ``(height, width)`` uint8 array (rows north, columns east)."""
        return np.frombuffer(self.heights, dtype=np.uint8).reshape(self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "stamp": self.stamp,
            "frame_id": self.frame_id,
            "origin": [float(v) for v in self.origin],
            "cell_size_m": self.cell_size_m,
            "width": self.width,
            "height": self.height,
            "encoding": self.encoding,
            "heights": base64.b64encode(zlib.compress(self.heights, 6)).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> LocalMapMessage:
        where = "local_map"
        if payload.get("encoding") != cls.encoding:
            raise ProtocolError(
                INVALID_MESSAGE, f"{where}: encoding must be {cls.encoding!r}, got {payload.get('encoding')!r}"
            )
        width, height = _integer(payload, "width", where), _integer(payload, "height", where)
        cells = width * height
        if not 1 <= cells <= MAX_LOCAL_MAP_CELLS:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: {width}x{height} cells: 1 to {MAX_LOCAL_MAP_CELLS} allowed")
        text = payload.get("heights")
        try:
            # Bounded inflate: a compressed bomb stops at one byte past the expected size.
            inflater = zlib.decompressobj()
            raw = inflater.decompress(base64.b64decode(str(text), validate=True), cells + 1)
        except (ValueError, zlib.error) as exc:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: heights are not zlib data in base64 ({exc})") from None
        frame_id = payload.get("frame_id")
        origin = payload.get("origin")
        if not isinstance(origin, list) or len(origin) != 3:
            raise ProtocolError(INVALID_MESSAGE, f"{where}: origin must be a list of 3 numbers, got {origin!r}")
        return cls(
            stamp=_number(payload, "stamp", where),
            frame_id=frame_id if isinstance(frame_id, str) else repr(frame_id),
            origin=tuple(_number({"origin": v}, "origin", where) for v in origin),  # type: ignore[arg-type]
            cell_size_m=_number(payload, "cell_size_m", where),
            width=width,
            height=height,
            heights=raw,
        )


Message = (
    CameraMessage
    | PoseMessage
    | AnchorsMessage
    | KeypointsMessage
    | ObstaclesMessage
    | LocalMapMessage
    | FrameRateMessage
    | ErrorMessage
)
_MESSAGE_TYPES: Final[
    dict[
        str,
        type[CameraMessage]
        | type[PoseMessage]
        | type[AnchorsMessage]
        | type[KeypointsMessage]
        | type[ObstaclesMessage]
        | type[LocalMapMessage]
        | type[FrameRateMessage]
        | type[ErrorMessage],
    ]
] = {
    CameraMessage.type: CameraMessage,
    PoseMessage.type: PoseMessage,
    AnchorsMessage.type: AnchorsMessage,
    KeypointsMessage.type: KeypointsMessage,
    ObstaclesMessage.type: ObstaclesMessage,
    LocalMapMessage.type: LocalMapMessage,
    FrameRateMessage.type: FrameRateMessage,
    ErrorMessage.type: ErrorMessage,
}


def encode(message: Message) -> str:
    """Serialise a message for the data channel."""
    return json.dumps(message.to_dict(), separators=(",", ":"), allow_nan=False)


def decode(text: str | bytes, accept: Sequence[str] | None = None) -> Message:
    """Parse one data-channel message; ``accept`` limits the types this end takes.

    Raises :class:`ProtocolError` with the code to send back to the peer.
    """
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            MESSAGE_TOO_LARGE, f"message of {len(text)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes"
        )
    payload = parse_json(text, "message")
    if not isinstance(payload, dict):
        raise ProtocolError(INVALID_MESSAGE, "message must be a JSON object with a 'type' field")
    kind = payload.get("type")
    message_type = _MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None or (accept is not None and kind not in accept):
        expected = ", ".join(accept if accept is not None else _MESSAGE_TYPES)
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r}; expected one of: {expected}")
    return message_type.from_dict(payload)
