"""The camera axes a consumer may ask for on the wire: the one place points change frame.

Inside dronedepth every point is in the **optical frame** (REP-103 camera
optical frame, OpenCV, Open3D): x right, y down, z forward, right-handed. The
gateway's ``--axes`` only changes how points are written on the wire (the
``keypoints`` message and the ``/stream`` format): encoders call
:func:`axes_from_optical`, decoders :func:`optical_from_axes`, so both ends
compute in the optical frame whatever the wire carries.

- ``optical``: x right, y down, z forward. Right-handed.
- ``opengl``: x right, y up, z backward (OpenGL/three.js/Blender camera).
  Right-handed: a 180° rotation of the optical frame about x.
- ``seed``: x right, y up, z forward. **Left-handed** (a mirror image of the
  optical frame): clouds in it look mirrored in right-handed tools (ROS,
  Open3D, Foxglove, CloudCompare). Only for consumers that expect a
  left-handed frame (e.g. Unity).

Each frame is the optical one with some axes negated (``target_from_optical``
is ``diag(AXIS_SIGNS[axes])``), so the inverse is the same sign flip. Numpy
only, so the drone imports it.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["AXES", "AXIS_SIGNS", "Axes", "axes_from_optical", "optical_from_axes"]

Axes = Literal["optical", "opengl", "seed"]

AXES: Final[tuple[Axes, ...]] = ("optical", "opengl", "seed")
"""Every ``--axes`` value; the ``/stream`` format's ``axes`` code is the index in this tuple."""

AXIS_SIGNS: Final[dict[str, NDArray[np.float32]]] = {
    "optical": np.array([1.0, 1.0, 1.0], np.float32),
    "opengl": np.array([1.0, -1.0, -1.0], np.float32),
    "seed": np.array([1.0, -1.0, 1.0], np.float32),
}
"""The diagonal of ``target_from_optical`` for each :data:`AXES` value."""
for _frozen_signs in AXIS_SIGNS.values():
    _frozen_signs.flags.writeable = False


def _signs(axes: str) -> NDArray[np.float32]:
    try:
        return AXIS_SIGNS[axes]
    except KeyError:
        raise ValueError(f"axes must be one of {', '.join(AXES)}; got {axes!r}") from None


def axes_from_optical(
    points_optical: NDArray[np.floating], axes: str, out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """Optical-frame points ``(N, 3)`` expressed in ``axes``, as float32.

    Writes into ``out`` when given (e.g. straight into an encoder's buffer);
    otherwise ``optical`` float32 input is returned as is, without a copy.
    Raises ``ValueError`` for an unknown ``axes``.
    """
    signs = _signs(axes)
    if out is None:
        if axes == "optical" and points_optical.dtype == np.float32:
            return points_optical
        return np.multiply(points_optical, signs, dtype=np.float32)
    return np.multiply(points_optical, signs, out=out, dtype=np.float32)


def optical_from_axes(points: NDArray[np.floating], axes: str) -> NDArray[np.float32]:
    """Points ``(N, 3)`` given in ``axes`` back in the optical frame (the inverse of :func:`axes_from_optical`)."""
    # A sign flip is its own inverse.
    return axes_from_optical(points, axes)
