"""Camera intrinsics for the ``camera`` message: from a calibration file or from numbers.

Two file formats are read, told apart by content:

- **OpenCV** calibration files written by ``cv2.FileStorage`` (YAML with
  ``%YAML:1.0``/``%YAML 1.2`` headers and ``!!opencv-matrix`` tags, or the XML
  and JSON variants): ``camera_matrix`` and ``distortion_coefficients``
  matrices plus ``image_width``/``image_height``; an optional
  ``distortion_model`` string (``fisheye``/``equidistant`` selects the fisheye
  model). PyYAML cannot parse these, so they are read with ``cv2.FileStorage``.
- **ROS** ``camera_info`` YAML as written by ``camera_calibration``:
  ``image_width``, ``image_height``, ``camera_name``, ``camera_matrix: {rows,
  cols, data}``, ``distortion_model`` (``plumb_bob``, ``rational_polynomial``
  or ``equidistant`` → fisheye) and ``distortion_coefficients: {data}``. A
  dumped ``sensor_msgs/CameraInfo`` message (``width``, ``height``, ``k``,
  ``d``, ``distortion_model``) is read too.

Every loader returns a :class:`~dronedepth.protocol.CameraMessage` at the
calibration's resolution; :meth:`~dronedepth.protocol.CameraMessage.scaled`
scales it to the frames actually sent (or refuses another aspect ratio).
There is deliberately no default: guessed intrinsics give metric 3D points
that look plausible and are wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import yaml

from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.protocol import CameraMessage, CameraModel

__all__ = [
    "intrinsics_from_values",
    "load_intrinsics",
    "missing_intrinsics_error",
]

log = logging.getLogger(__name__)

_FISHEYE_NAMES: Final = frozenset({"equidistant", "fisheye", "kannala_brandt"})
_PINHOLE_NAMES: Final = frozenset({"plumb_bob", "rational_polynomial", "radtan", "pinhole", ""})


def _model_from_name(name: str, where: str) -> CameraModel:
    key = name.strip().lower()
    if key in _FISHEYE_NAMES:
        return "fisheye"
    if key in _PINHOLE_NAMES:
        return "pinhole"
    raise ConfigError(
        f"{where}: unsupported distortion_model {name!r}; "
        "use plumb_bob, rational_polynomial (pinhole) or equidistant (fisheye)"
    )


def _normalise_distortion(coefficients: Sequence[float], model: CameraModel, where: str) -> tuple[float, ...]:
    """Coefficients in the lengths the protocol takes: pinhole 4/5/8, fisheye 4; all zeros → none.

    Shorter pinhole lists are zero-padded (the coefficients are positional);
    longer lists are cut only where the extra coefficients are zero.
    """
    values = [float(c) for c in coefficients]
    if not any(values):
        return ()
    allowed = (4, 5, 8) if model == "pinhole" else (4,)
    target = next((n for n in allowed if n >= len(values)), None)
    if target is None:
        target = allowed[-1]
        if any(values[target:]):
            raise ConfigError(
                f"{where}: a {model} camera takes at most {target} distortion coefficients, got {len(values)} "
                f"with non-zero values beyond the first {target} (thin-prism/tilt models are not supported)"
            )
        return tuple(values[:target])
    return tuple(values + [0.0] * (target - len(values)))


def intrinsics_from_values(
    *,
    width: int,
    height: int,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    distortion: Sequence[float] = (),
    model: CameraModel = "pinhole",
    where: str = "intrinsics",
) -> CameraMessage:
    """A validated camera at ``width`` × ``height``; bad values raise :class:`ConfigError` naming them."""
    try:
        return CameraMessage(
            width=int(width),
            height=int(height),
            fx=float(fx),
            fy=float(fy),
            cx=float(cx),
            cy=float(cy),
            distortion=_normalise_distortion(distortion, model, where),
            model=model,
        )
    except ProtocolError as exc:
        raise ConfigError(f"{where}: {exc.message.removeprefix('camera: ')}") from None


def _from_matrix(
    matrix: Any, distortion: Sequence[float], width: Any, height: Any, model: CameraModel, where: str
) -> CameraMessage:
    k = np.asarray(matrix, dtype=np.float64)
    if k.size != 9:
        raise ConfigError(f"{where}: camera_matrix must have 9 values (3×3), got {k.size}")
    k = k.reshape(3, 3)
    if not np.allclose(k[2], [0.0, 0.0, 1.0]) or k[1, 0] != 0.0:
        raise ConfigError(f"{where}: camera_matrix is not a camera matrix [[fx 0 cx] [0 fy cy] [0 0 1]]: {k.tolist()}")
    if abs(k[0, 1]) > 1e-9 * abs(k[0, 0]):
        log.warning("%s: camera_matrix has skew %.4g, which the protocol does not carry; ignoring it", where, k[0, 1])
    for name, value in (("image_width", width), ("image_height", height)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
            raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}")
    return intrinsics_from_values(
        width=int(width),
        height=int(height),
        fx=k[0, 0],
        fy=k[1, 1],
        cx=k[0, 2],
        cy=k[1, 2],
        distortion=distortion,
        model=model,
        where=where,
    )


def _from_ros(data: Mapping[str, Any], model: CameraModel | None, where: str) -> CameraMessage:
    """ROS ``camera_info`` YAML, or a dumped CameraInfo message (``k``, ``d``, ``width``, ``height``)."""
    if "camera_matrix" in data:
        cm = data["camera_matrix"]
        matrix = cm.get("data") if isinstance(cm, Mapping) else cm
        dist = data.get("distortion_coefficients") or {}
        coefficients = dist.get("data", []) if isinstance(dist, Mapping) else dist
        width, height = data.get("image_width"), data.get("image_height")
    else:
        matrix, coefficients = data.get("k"), data.get("d") or []
        width, height = data.get("width"), data.get("height")
    if matrix is None:
        raise ConfigError(f"{where}: no camera_matrix")
    if not isinstance(coefficients, list):
        raise ConfigError(f"{where}: distortion_coefficients must be a list of numbers")
    file_model = _model_from_name(str(data.get("distortion_model") or ""), where)
    return _from_matrix(matrix, coefficients, width, height, model or file_model, where)


def _from_opencv(path: Path, model: CameraModel | None, where: str) -> CameraMessage:
    try:
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as exc:
        raise ConfigError(f"{where}: neither a ROS camera_info YAML nor an OpenCV calibration file: {exc}") from None
    try:
        if not storage.isOpened():
            raise ConfigError(f"{where}: OpenCV could not open it as a calibration file")

        def node(*names: str) -> Any:
            for name in names:
                n = storage.getNode(name)
                if not n.empty():
                    return n
            return None

        matrix_node = node("camera_matrix", "cameraMatrix", "K")
        if matrix_node is None:
            raise ConfigError(f"{where}: no camera_matrix in this OpenCV calibration file")
        dist_node = node("distortion_coefficients", "dist_coeffs", "distCoeffs", "D")
        distortion = [] if dist_node is None else np.asarray(dist_node.mat(), dtype=np.float64).ravel().tolist()
        width_node, height_node = node("image_width", "width"), node("image_height", "height")
        if width_node is None or height_node is None:
            raise ConfigError(
                f"{where}: image_width and image_height are required (the resolution the calibration is for)"
            )
        model_node = node("distortion_model", "camera_model")
        file_model = _model_from_name(model_node.string() if model_node is not None else "", where)
        return _from_matrix(
            matrix_node.mat(), distortion, width_node.real(), height_node.real(), model or file_model, where
        )
    finally:
        storage.release()


def load_intrinsics(path: str | Path, *, model: CameraModel | None = None) -> CameraMessage:
    """Read an OpenCV or ROS calibration file; ``model`` overrides the file's distortion model."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"intrinsics file {where!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # OpenCV's YAML dialect (!!opencv-matrix, %YAML:1.0) or XML
    if isinstance(data, Mapping) and ("camera_matrix" in data or "k" in data):
        camera = _from_ros(data, model, where)
    else:
        camera = _from_opencv(path, model, where)
    log.info(
        "intrinsics from %s: %dx%d fx=%.2f fy=%.2f cx=%.2f cy=%.2f %s distortion=%s",
        where,
        camera.width,
        camera.height,
        camera.fx,
        camera.fy,
        camera.cx,
        camera.cy,
        camera.model,
        list(camera.distortion) or "none",
    )
    return camera


def missing_intrinsics_error(source: str, width: int, height: int) -> ConfigError:
    """The refusal when no intrinsics were given, saying how to give them."""
    return ConfigError(
        f"no camera intrinsics for source {source!r} ({width}x{height}). The gateway turns depth into metric 3D "
        "points with them, and guessed intrinsics give wrong geometry, so the drone will not start without them. "
        "Give one of:\n"
        "  --intrinsics FILE    an OpenCV calibration YAML (cv2.FileStorage: camera_matrix, "
        "distortion_coefficients, image_width, image_height) or a ROS camera_info YAML\n"
        f"  --fx FX --fy FY --cx CX --cy CY [--distortion K1 K2 P1 P2 [K3 ...]]    in pixels of the source's "
        f"{width}x{height} frames (or of --calibration-size WxH)\n"
        "Calibrate with OpenCV's calibrateCamera or ROS camera_calibration. Only the 'synthetic' source has "
        "built-in intrinsics."
    )
