"""Coordinate frames and rigid transforms: the one place conversions between conventions live.

Conventions (ROS REP-103 / REP-105), used everywhere inside dronedepth:

- world frames ``map`` / ``odom``: **ENU** (x east, y north, z up);
- the body ``base_link``: **FLU** (x forward, y left, z up);
- the camera ``camera_optical``: x right, y down, z forward.

Autopilots (PX4, ArduPilot) speak **NED** worlds and **FRD** bodies; they are
converted once, at the edge, with :func:`enu_from_ned_pose`. Quaternions are
``(x, y, z, w)`` numpy arrays (the ROS order), unit length. A
:class:`Transform` named ``a_from_b`` maps coordinates in frame ``b`` to
frame ``a``; ``a_from_b @ b_from_c`` is ``a_from_c``. Angles are radians;
roll, pitch and yaw are the ROS fixed-axis RPY (``R = Rz(yaw) Ry(pitch)
Rx(roll)``), so in FLU a positive pitch points the nose **down**.

numpy only, so the drone imports it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ENU_FROM_NED",
    "FLU_FROM_FRD",
    "QUATERNION_TOLERANCE",
    "Transform",
    "body_from_camera",
    "enu_from_ned_pose",
    "enu_from_ned_vector",
    "interpolate",
    "matrix_from_quaternion",
    "normalised_quaternion",
    "quaternion_from_matrix",
    "quaternion_from_rpy",
    "quaternion_multiply",
    "rpy_from_quaternion",
    "slerp",
]

Vector = NDArray[np.float64]
Quaternion = NDArray[np.float64]

QUATERNION_TOLERANCE: Final = 1e-3
"""A quaternion whose norm is within this of 1 is normalised; further off, it is refused."""


def normalised_quaternion(q: ArrayLike, tolerance: float = QUATERNION_TOLERANCE) -> Quaternion:
    """``q`` as a unit ``(x, y, z, w)`` quaternion; ``ValueError`` if it is not finite or not near unit length."""
    array = np.asarray(q, dtype=np.float64)
    if array.shape != (4,):
        raise ValueError(f"a quaternion has 4 components (x, y, z, w), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"quaternion {array.tolist()} is not finite")
    norm = float(np.linalg.norm(array))
    if abs(norm - 1.0) > tolerance:
        raise ValueError(f"quaternion {array.tolist()} has norm {norm:.6g}, not 1 (tolerance {tolerance})")
    return array / norm


def quaternion_multiply(a: Quaternion, b: Quaternion) -> Quaternion:
    """The Hamilton product ``a ⊗ b`` (rotate by ``b``, then by ``a``)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def matrix_from_quaternion(q: Quaternion) -> NDArray[np.float64]:
    """The 3×3 rotation matrix of a unit quaternion."""
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def quaternion_from_matrix(matrix: ArrayLike) -> Quaternion:
    """The unit quaternion (``w ≥ 0``) of a 3×3 rotation matrix (Shepperd's method, stable for every angle)."""
    m = np.asarray(matrix, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    out = np.array(q)
    out /= np.linalg.norm(out)
    return -out if out[3] < 0 else out


def quaternion_from_rpy(roll: float, pitch: float, yaw: float) -> Quaternion:
    """The rotation ``Rz(yaw) Ry(pitch) Rx(roll)`` (ROS fixed-axis roll, pitch, yaw; radians)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return np.array(
        [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ]
    )


def rpy_from_quaternion(q: Quaternion) -> tuple[float, float, float]:
    """Roll, pitch, yaw (radians) of a unit quaternion; the inverse of :func:`quaternion_from_rpy`."""
    x, y, z, w = q
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def slerp(a: Quaternion, b: Quaternion, fraction: float) -> Quaternion:
    """Spherical linear interpolation from ``a`` (``fraction`` 0) to ``b`` (1) along the shorter arc.

    A ``fraction`` outside [0, 1] continues the same rotation (extrapolation).
    """
    dot = float(np.dot(a, b))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        b, dot = -b, -dot
    if dot > 0.9995:  # nearly equal: the linear blend is exact to float precision and avoids 0/0
        out = a + fraction * (b - a)
        return out / np.linalg.norm(out)
    angle = math.acos(dot)
    s = math.sin(angle)
    return (math.sin((1 - fraction) * angle) / s) * a + (math.sin(fraction * angle) / s) * b


@dataclass(frozen=True, slots=True, eq=False)
class Transform:
    """A rigid transform ``a_from_b``: ``p_a = R p_b + t`` with ``rotation`` a unit xyzw quaternion.

    Build it with a checked ``rotation`` (:func:`normalised_quaternion`); the
    constructor does not normalise, so the per-frame path stays cheap.
    """

    rotation: Quaternion
    translation: Vector

    @classmethod
    def identity(cls) -> Transform:
        return cls(np.array([0.0, 0.0, 0.0, 1.0]), np.zeros(3))

    @classmethod
    def from_matrix(cls, rotation: ArrayLike, translation: ArrayLike = (0.0, 0.0, 0.0)) -> Transform:
        return cls(quaternion_from_matrix(rotation), np.asarray(translation, dtype=np.float64))

    @property
    def matrix(self) -> NDArray[np.float64]:
        """The 4×4 homogeneous matrix."""
        out = np.eye(4)
        out[:3, :3] = matrix_from_quaternion(self.rotation)
        out[:3, 3] = self.translation
        return out

    def inverse(self) -> Transform:
        """``b_from_a`` for this ``a_from_b``."""
        conjugate = self.rotation * np.array([-1.0, -1.0, -1.0, 1.0])
        return Transform(conjugate, -(matrix_from_quaternion(conjugate) @ self.translation))

    def __matmul__(self, other: Transform) -> Transform:
        """``a_from_b @ b_from_c`` → ``a_from_c``."""
        rotation = quaternion_multiply(self.rotation, other.rotation)
        rotation /= np.linalg.norm(rotation)
        return Transform(rotation, matrix_from_quaternion(self.rotation) @ other.translation + self.translation)

    def apply(self, points: ArrayLike) -> NDArray[np.float64]:
        """Map points (3 or N×3) from frame ``b`` to frame ``a``."""
        p = np.asarray(points, dtype=np.float64)
        return p @ matrix_from_quaternion(self.rotation).T + self.translation

    def rotate(self, vectors: ArrayLike) -> NDArray[np.float64]:
        """Map directions or velocities (3 or N×3): rotation only."""
        return np.asarray(vectors, dtype=np.float64) @ matrix_from_quaternion(self.rotation).T

    def is_close(self, other: Transform, atol: float = 1e-9) -> bool:
        """The same transform within ``atol`` (``q`` and ``-q`` are the same rotation)."""
        same_rotation = abs(abs(float(np.dot(self.rotation, other.rotation))) - 1.0) <= atol
        return same_rotation and bool(np.allclose(self.translation, other.translation, atol=atol))

    def __repr__(self) -> str:
        return (
            f"Transform(rotation={self.rotation.round(6).tolist()}, translation={self.translation.round(6).tolist()})"
        )


def interpolate(a: Transform, b: Transform, fraction: float) -> Transform:
    """The pose ``fraction`` of the way from ``a`` to ``b``: linear in position, slerp in orientation."""
    return Transform(
        slerp(a.rotation, b.rotation, fraction), a.translation + fraction * (b.translation - a.translation)
    )


ENU_FROM_NED: Final = Transform.from_matrix([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
"""World axes: east = NED y, north = NED x, up = −down. Its own inverse."""
FLU_FROM_FRD: Final = Transform.from_matrix([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
"""Body axes: forward = forward, left = −right, up = −down. Its own inverse."""


def enu_from_ned_pose(world_ned_from_body_frd: Transform) -> Transform:
    """An autopilot pose (NED world, FRD body) as the REP-103 pose ``world_enu_from_body_flu``."""
    return ENU_FROM_NED @ world_ned_from_body_frd @ FLU_FROM_FRD


def enu_from_ned_vector(vector: ArrayLike) -> Vector:
    """A position or velocity in NED expressed in ENU: ``(n, e, d)`` → ``(e, n, −d)``."""
    n, e, d = np.asarray(vector, dtype=np.float64)
    return np.array([e, n, -d])


_LINK_FROM_OPTICAL: Final = Transform.from_matrix([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
"""A camera's FLU link frame from its optical frame: optical z (forward) is link x, optical x (right) is −link y."""


def body_from_camera(
    x: float = 0.0, y: float = 0.0, z: float = 0.0, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0
) -> Transform:
    """``body_from_camera_optical`` for a camera mounted at ``(x, y, z)`` metres in ``base_link`` (FLU).

    ``roll``, ``pitch``, ``yaw`` (radians) turn the camera away from looking
    straight forward with its image upright: ``pitch`` > 0 tilts it down, ``yaw``
    > 0 turns it left. All zero is a forward-looking camera at the body's origin.
    """
    body_from_link = Transform(quaternion_from_rpy(roll, pitch, yaw), np.array([x, y, z], dtype=np.float64))
    return body_from_link @ _LINK_FROM_OPTICAL
