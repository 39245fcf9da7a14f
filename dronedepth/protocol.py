"""The dronedepth wire protocol, defined once and imported by both ends.

Signalling is one HTTP request, ``POST /offer`` with :class:`SessionDescription`
as JSON, ``Authorization: Bearer <token>`` and optionally the drone's id in
:data:`DRONE_ID_HEADER`; the answer comes back in the reply, a refusal as JSON
``{"error": CODE, "message": TEXT}`` with one of the codes below. After that
the drone sends video on a WebRTC video track and talks on a data channel
labelled :data:`DATA_CHANNEL_LABEL` carrying JSON text messages, each with a
``type`` field:

- drone → gateway: :class:`CameraMessage` (``camera``)
- gateway → drone: :class:`KeypointsMessage` (``keypoints``), :class:`ErrorMessage` (``error``)

``docs/protocol.md`` is the prose version of this module. The module needs
only numpy and the standard library, so a drone can import it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ProtocolError

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
DepthKind = Literal["metric", "relative"]

# Error codes carried by ``error`` messages.
INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
MESSAGE_TOO_LARGE: Final = "message_too_large"
INVALID_CAMERA: Final = "invalid_camera"
NO_CAMERA: Final = "no_camera"
CAMERA_MISMATCH: Final = "camera_mismatch"
FRAME_TOO_LARGE: Final = "frame_too_large"
INFERENCE_UNAVAILABLE: Final = "inference_unavailable"
INFERENCE_RESUMED: Final = "inference_resumed"
INTERNAL: Final = "internal"

# ``error`` codes of refused signalling requests (JSON ``{"error", "message"}``; HTTP status in brackets).
# ``invalid_json``, ``invalid_message`` (400) and ``message_too_large`` (413) above refuse offers too.
UNAUTHORIZED: Final = "unauthorized"  # 401
INVALID_DRONE_ID: Final = "invalid_drone_id"  # 400
INVALID_SDP: Final = "invalid_sdp"  # 400
BODY_TOO_LARGE: Final = "body_too_large"  # 413
DRONE_BUSY: Final = "drone_busy"  # 409
GATEWAY_FULL: Final = "gateway_full"  # 503
SIGNALLING_ERROR_CODES: Final = frozenset(
    {UNAUTHORIZED, INVALID_DRONE_ID, INVALID_SDP, BODY_TOO_LARGE, DRONE_BUSY, GATEWAY_FULL}
)
"""The codes only ``POST /offer`` refusals carry (never an ``error`` message on the data channel)."""

_PINHOLE_DISTORTION_LENGTHS: Final = (0, 4, 5, 8)
_FISHEYE_DISTORTION_LENGTHS: Final = (0, 4)


def _number(payload: Mapping[str, Any], key: str, where: str) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(INVALID_MESSAGE, f"{where}: '{key}' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ProtocolError(INVALID_MESSAGE, f"{where}: '{key}' must be finite, got {value!r}")
    return float(value)


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
        try:
            payload = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(INVALID_JSON, f"body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise ProtocolError(INVALID_MESSAGE, "body must be a JSON object with 'sdp' and 'type'")
        return cls(sdp=payload.get("sdp"), type=payload.get("type"))  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps({"sdp": self.sdp, "type": self.type})


@dataclass(frozen=True, slots=True)
class CameraMessage:
    """Drone → gateway: the intrinsics of the frames that follow.

    ``distortion`` follows OpenCV's order: k1, k2, p1, p2[, k3[, k4, k5, k6]]
    for ``pinhole``; k1..k4 for ``fisheye`` (OpenCV's fisheye model).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()
    model: CameraModel = "pinhole"

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
        if self.fx <= 0 or self.fy <= 0:
            raise ProtocolError(
                INVALID_CAMERA, f"{where}: focal lengths must be positive, got fx={self.fx}, fy={self.fy}"
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

    def scaled(self, width: int, height: int) -> CameraMessage:
        """The same camera for frames resized to ``width`` × ``height``.

        Uses the pixel-centre convention (a pixel's centre is at integer + 0.5
        before and after resizing), as OpenCV's ``resize`` does.
        """
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
            return cls(
                width=_integer(payload, "width", where),
                height=_integer(payload, "height", where),
                fx=_number(payload, "fx", where),
                fy=_number(payload, "fy", where),
                cx=_number(payload, "cx", where),
                cy=_number(payload, "cy", where),
                distortion=distortion,
                model=model,
            )
        except ProtocolError as exc:
            # Every problem with a camera message is an invalid camera for the peer.
            raise ProtocolError(INVALID_CAMERA, exc.message) from None


@dataclass(frozen=True, slots=True)
class KeypointsMessage:
    """Gateway → drone: the sparse 3D keypoints of one processed frame.

    ``points`` are in the frame named by ``axes`` (default ``optical``: x right,
    y down, z forward), in metres when ``depth_kind`` is ``metric``; when it is
    ``relative`` the third coordinate is scaled by an unknown factor and the
    numbers are not metres. ``pixels`` are (u, v) in the frame's pixel grid.
    """

    pts: int
    points: NDArray[np.float32]
    pixels: NDArray[np.float32]
    scores: NDArray[np.float32]
    depth_kind: DepthKind
    width: int
    height: int
    frame_index: int = 0
    axes: str = "optical"
    timing: Mapping[str, float] = field(default_factory=dict)
    descriptor_type: str | None = None
    descriptors: NDArray[Any] | None = None

    type: ClassVar[str] = "keypoints"

    def __post_init__(self) -> None:
        n = len(self.points)
        if self.points.shape != (n, 3) or self.pixels.shape != (n, 2) or self.scores.shape != (n,):
            raise ProtocolError(
                INVALID_MESSAGE,
                f"keypoints: inconsistent shapes points {self.points.shape}, "
                f"pixels {self.pixels.shape}, scores {self.scores.shape}",
            )
        if self.descriptors is not None and len(self.descriptors) != n:
            raise ProtocolError(INVALID_MESSAGE, "keypoints: one descriptor per point is required")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "pts": self.pts,
            "frame_index": self.frame_index,
            "width": self.width,
            "height": self.height,
            "depth_kind": self.depth_kind,
            "axes": self.axes,
            "points": np.round(self.points.astype(np.float64), 4).tolist(),
            "pixels": np.round(self.pixels.astype(np.float64), 2).tolist(),
            "scores": np.round(self.scores.astype(np.float64), 4).tolist(),
            "timing": {k: round(v, 2) for k, v in self.timing.items()},
        }
        if self.descriptors is not None and self.descriptor_type:
            out["descriptor_type"] = self.descriptor_type
            out["descriptor_dtype"] = str(self.descriptors.dtype)
            out["descriptor_size"] = int(self.descriptors.shape[1]) if self.descriptors.ndim == 2 else 0
            out["descriptors"] = base64.b64encode(np.ascontiguousarray(self.descriptors).tobytes()).decode()
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
        if kind not in ("metric", "relative"):
            raise ProtocolError(INVALID_MESSAGE, f"{where}: depth_kind must be 'metric' or 'relative'")
        return cls(
            pts=_integer(payload, "pts", where),
            points=points,
            pixels=pixels,
            scores=scores,
            depth_kind=kind,
            width=_integer(payload, "width", where),
            height=_integer(payload, "height", where),
            frame_index=int(payload.get("frame_index", 0)),
            axes=str(payload.get("axes", "optical")),
            timing=dict(payload.get("timing", {})),
            descriptor_type=payload.get("descriptor_type"),
            descriptors=descriptors,
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


Message = CameraMessage | KeypointsMessage | ErrorMessage
_MESSAGE_TYPES: Final[dict[str, type[CameraMessage] | type[KeypointsMessage] | type[ErrorMessage]]] = {
    CameraMessage.type: CameraMessage,
    KeypointsMessage.type: KeypointsMessage,
    ErrorMessage.type: ErrorMessage,
}


def encode(message: Message) -> str:
    """Serialise a message for the data channel."""
    return json.dumps(message.to_dict(), separators=(",", ":"))


def decode(text: str | bytes, accept: Sequence[str] | None = None) -> Message:
    """Parse one data-channel message; ``accept`` limits the types this end takes.

    Raises :class:`ProtocolError` with the code to send back to the peer.
    """
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            MESSAGE_TOO_LARGE, f"message of {len(text)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes"
        )
    try:
        payload = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(INVALID_JSON, f"message is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ProtocolError(INVALID_MESSAGE, "message must be a JSON object with a 'type' field")
    kind = payload.get("type")
    message_type = _MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None or (accept is not None and kind not in accept):
        expected = ", ".join(accept if accept is not None else _MESSAGE_TYPES)
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r}; expected one of: {expected}")
    return message_type.from_dict(payload)
