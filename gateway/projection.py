"""Pixels ↔ rays ↔ 3D points for one camera: the geometric core of the gateway.

Conventions, shared with OpenCV, Open3D and :class:`dronedepth.protocol.CameraMessage`:

- **Pixel coordinates:** the centre of the pixel in column ``u``, row ``v`` is at
  ``(u, v)`` (OpenCV's convention; Open3D's ``create_from_depth_image`` also uses
  the integer index). ``cx``, ``cy`` and the ``pixels`` of a keypoints message
  are in these coordinates.
- **Depth is z-depth**, not range along the ray: a pixel with depth ``z`` and
  undistorted ray ``r = (x, y, 1)`` is the point ``z * r``.
- **Optical frame** (REP-103 camera optical frame, OpenCV, Open3D): x right,
  y down, z forward. Every point here is in it; other frames exist only on
  the wire (:mod:`dronedepth.axes`).

Lens distortion is paid once per camera and resolution: :func:`ray_grid`
undistorts every pixel centre with OpenCV and caches the result, so turning a
depth map into points costs the same for distorted and pinhole cameras.
Nothing here does I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Final

import cv2
import numpy as np
from numpy.typing import NDArray

from dronedepth.protocol import CameraMessage

__all__ = [
    "RayGrid",
    "pixel_rays",
    "points_from_depth",
    "project_points",
    "ray_grid",
    "valid_depth_mask",
]

_UNDISTORT_CRITERIA: Final = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)
"""OpenCV's default (5 iterations) leaves errors of ~0.1 px with strong distortion."""
_RAY_TOLERANCE_PX: Final = 1e-3
"""A ray whose re-projection misses its pixel by more than this is marked invalid."""


@dataclass(frozen=True, eq=False)
class RayGrid:
    """The undistorted ray of every pixel centre of one camera at one resolution.

    ``rays[v, u] = (x, y, 1)`` with ``(x, y)`` the undistorted normalised
    coordinates of pixel ``(u, v)``; for a pinhole camera ``x = (u - cx) / fx``.
    ``valid`` is False where the lens model cannot be inverted (beyond the fold
    of a strong radial distortion, or more than 90° off-axis for a fisheye);
    those pixels never give points. Build it with :func:`ray_grid`, which caches.
    The arrays are read-only.
    """

    width: int
    height: int
    rays: NDArray[np.float32]
    camera: CameraMessage | None = None
    valid: NDArray[np.bool_] | None = None
    # Contiguous x and y planes, flattened: the per-frame hot path reads these.
    _x: NDArray[np.float32] = field(init=False, repr=False)
    _y: NDArray[np.float32] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rays.shape != (self.height, self.width, 3):
            raise ValueError(f"rays must have shape ({self.height}, {self.width}, 3), got {self.rays.shape}")
        if self.valid is not None and self.valid.shape != (self.height, self.width):
            raise ValueError(f"valid must have shape ({self.height}, {self.width}), got {self.valid.shape}")
        x = np.ascontiguousarray(self.rays[..., 0], dtype=np.float32).reshape(-1)
        y = np.ascontiguousarray(self.rays[..., 1], dtype=np.float32).reshape(-1)
        for array in (self.rays, x, y, self.valid):
            if array is not None:
                array.flags.writeable = False
        object.__setattr__(self, "_x", x)
        object.__setattr__(self, "_y", y)

    @property
    def all_valid(self) -> bool:
        return self.valid is None


def _camera_arrays(camera: CameraMessage) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    d = np.asarray(camera.distortion, dtype=np.float64)
    if camera.model == "fisheye" and d.size == 0:
        d = np.zeros(4)
    return camera.matrix, d


def _is_linear(camera: CameraMessage) -> bool:
    """True for an undistorted pinhole camera (a fisheye with k = 0 is still equidistant, not linear)."""
    return camera.model == "pinhole" and not camera.has_distortion


def _undistort(pixels: NDArray[np.float64], camera: CameraMessage) -> NDArray[np.float64]:
    """Undistorted normalised (x, y) of pixel coordinates ``(N, 2)``."""
    if _is_linear(camera):
        x = (pixels[:, 0] - camera.cx) / camera.fx
        y = (pixels[:, 1] - camera.cy) / camera.fy
        return np.stack([x, y], axis=1)
    k, d = _camera_arrays(camera)
    src = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
    if camera.model == "fisheye":
        out = cv2.fisheye.undistortPoints(src, k, d, criteria=_UNDISTORT_CRITERIA)
    else:
        out = cv2.undistortPoints(src, k, d, criteria=_UNDISTORT_CRITERIA)
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _distort(xy: NDArray[np.float64], camera: CameraMessage) -> NDArray[np.float64]:
    """Pixels of undistorted normalised coordinates ``(N, 2)``: OpenCV's lens models in NumPy.

    Same formulas as ``cv2.projectPoints`` / ``cv2.fisheye.projectPoints``
    (which :func:`project_points` uses) but ~20× faster on a whole grid, since
    OpenCV's Python binding always computes the Jacobians too.
    """
    _, c = _camera_arrays(camera)
    x, y = xy[:, 0], xy[:, 1]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if camera.model == "fisheye":
            r = np.hypot(x, y)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))
            scale = np.where(r > 1e-12, theta_d / np.where(r > 1e-12, r, 1.0), 1.0)
            xd, yd = x * scale, y * scale
        else:
            k = np.zeros(8)
            k[: len(c)] = c
            k1, k2, p1, p2, k3, k4, k5, k6 = k
            r2 = x * x + y * y
            radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
            xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([camera.fx * xd + camera.cx, camera.fy * yd + camera.cy], axis=1)


def _radial_fold(camera: CameraMessage) -> float:
    """The largest monotonic input of the radial distortion function (∞ if none).

    Beyond its first turning point a radial model maps two different rays to
    the same pixel, so inverting it there gives a wrong but self-consistent ray.
    The input is the undistorted radius for pinhole models and the incidence
    angle θ for fisheye ones; tangential terms are ignored (they are small).
    """
    _, c = _camera_arrays(camera)
    if camera.model == "fisheye":
        # θd = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸), meaningful for θ < π/2.
        t = np.linspace(0.0, np.pi / 2, 20_001)
        t2 = t * t
        f = t * (1 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))
    else:
        k1, k2 = c[0], c[1]
        k3 = c[4] if len(c) > 4 else 0.0
        k4, k5, k6 = (c[5], c[6], c[7]) if len(c) > 7 else (0.0, 0.0, 0.0)
        t = np.linspace(0.0, 10.0, 100_001)  # radius up to ~84° off-axis
        r2 = t * t
        f = t * (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    rising = np.diff(f) > 0
    if rising.all():
        return float("inf")
    return float(t[int(np.argmin(rising))])


def pixel_rays(pixels: NDArray[np.floating], camera: CameraMessage) -> NDArray[np.float64]:
    """Undistorted rays ``(N, 3)`` with ``z == 1`` of sub-pixel coordinates ``(N, 2)``.

    Exact inverse of :func:`project_points` (to ~1e-10 px) wherever the lens
    model is invertible; cheap for a few hundred keypoints.
    """
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    xy = _undistort(pixels, camera)
    return np.concatenate([xy, np.ones((len(xy), 1))], axis=1)


@functools.lru_cache(maxsize=8)
def ray_grid(camera: CameraMessage) -> RayGrid:
    """The :class:`RayGrid` of ``camera`` at its ``width`` × ``height`` (cached).

    The cache is shared by every session's worker threads (``lru_cache`` is
    thread-safe; two threads may build the same grid once each) and holds the
    8 most recently used grids (a 1080p grid takes ~40 MB); sessions build
    grids in the executor only, and each drone may change cameras only a few
    times per window (:data:`gateway.session.MAX_CAMERA_CHANGES`).

    Pinhole cameras without distortion get the closed form. Distorted ones are
    undistorted with ``cv2.undistortPoints`` / ``cv2.fisheye.undistortPoints``
    (iterated to convergence, not OpenCV's default 5 steps), every ray is
    re-projected to check it lands within 1e-3 px of its pixel, and rays past
    the fold of the radial model are marked invalid.
    """
    w, h = camera.width, camera.height
    if _is_linear(camera):
        x = (np.arange(w, dtype=np.float64) - camera.cx) / camera.fx
        y = (np.arange(h, dtype=np.float64) - camera.cy) / camera.fy
        rays = np.empty((h, w, 3), dtype=np.float32)
        rays[..., 0] = x[None, :]
        rays[..., 1] = y[:, None]
        rays[..., 2] = 1.0
        return RayGrid(width=w, height=h, rays=rays, camera=camera, valid=None)

    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pixels = np.stack([u.ravel(), v.ravel()], axis=1)
    xy = _undistort(pixels, camera)
    xyz = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
    ok = np.isfinite(xy).all(axis=1)
    reprojected = _distort(xy, camera)
    ok &= np.hypot(*(reprojected - pixels).T) <= _RAY_TOLERANCE_PX
    fold = _radial_fold(camera)
    if np.isfinite(fold):
        radius = np.hypot(xy[:, 0], xy[:, 1])
        ok &= (np.arctan(radius) if camera.model == "fisheye" else radius) < fold
    rays = xyz.astype(np.float32).reshape(h, w, 3)
    valid = ok.reshape(h, w)
    rays[~valid] = np.nan
    return RayGrid(width=w, height=h, rays=rays, camera=camera, valid=None if valid.all() else valid)


def valid_depth_mask(
    depth: NDArray[np.float32],
    *,
    min_depth: float = 1e-3,
    max_range: float | None = None,
    edge_threshold: float | None = 0.05,
    depth_stride: int = 1,
) -> NDArray[np.bool_]:
    """Pixels whose depth can be trusted, as an ``(H, W)`` boolean mask.

    A pixel is excluded when its depth is not finite, is ``<= min_depth``, is
    ``> max_range`` (if given), or when it touches a depth discontinuity.

    Discontinuity rule (removes the "flying pixels" that depth networks smear
    across object boundaries): for every pair of 4-neighbours that both pass
    the tests above, the pair is a jump when
    ``|z_a - z_b| > edge_threshold * min(z_a, z_b)``, and **both** pixels of a
    jump are excluded. Flat and gently sloped surfaces are kept: a plane's
    depth changes by a relative ``1 / (pixels from its horizon line)`` per
    pixel, so with the default 0.05 a plane is kept except in the 20 pixel rows
    next to its vanishing line, where it is seen at a grazing angle anyway.
    ``edge_threshold=None`` disables the rule.

    ``edge_threshold`` is per image pixel. On a strided model's depth grid
    (``depth_stride`` s, grid pixel ``(i, j)`` is image pixel ``(s·i, s·j)``)
    neighbours are s image pixels apart, so a pair is a jump when its ratio
    exceeds ``(1 + edge_threshold) ** s``: the same surfaces are kept as at
    full resolution (a plane is not cut back twice as far from its horizon
    at stride 2), and real discontinuities, far larger, are still removed.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be a 2-D (H, W) array, got shape {depth.shape}")
    with np.errstate(invalid="ignore"):
        ok = depth > min_depth  # False for NaN
        if max_range is not None:
            ok &= depth <= max_range  # also drops +inf
        else:
            ok &= depth < np.inf
    if edge_threshold is None:
        return ok
    scale = np.float32((1.0 + edge_threshold) ** depth_stride)
    with np.errstate(invalid="ignore", over="ignore"):
        # |a - b| > t * min(a, b)  <=>  max(a, b) > (1 + t) * min(a, b) for positive a, b.
        left, right = depth[:, :-1], depth[:, 1:]
        jump_h = np.maximum(left, right) > scale * np.minimum(left, right)
        jump_h &= ok[:, :-1]
        jump_h &= ok[:, 1:]
        up, down = depth[:-1, :], depth[1:, :]
        jump_v = np.maximum(up, down) > scale * np.minimum(up, down)
        jump_v &= ok[:-1, :]
        jump_v &= ok[1:, :]
    edge = np.zeros_like(ok)
    edge[:, :-1] |= jump_h
    edge[:, 1:] |= jump_h
    edge[:-1, :] |= jump_v
    edge[1:, :] |= jump_v
    ok &= ~edge
    return ok


def points_from_depth(
    depth: NDArray[np.float32], rays: RayGrid, mask: NDArray[np.bool_] | None = None
) -> NDArray[np.float32]:
    """Back-project a z-depth map into ``(N, 3)`` float32 points in the optical frame.

    ``point = rays.rays[v, u] * depth[v, u]`` for every pixel where ``mask`` is
    True (and the ray is valid), in row-major pixel order. Without a mask,
    pixels with a non-finite or non-positive depth are skipped. Use
    :func:`valid_depth_mask` for the full set of rules.
    """
    depth = np.asarray(depth)
    if depth.shape != (rays.height, rays.width):
        raise ValueError(
            f"depth is {depth.shape[1] if depth.ndim == 2 else '?'}x{depth.shape[0]} "
            f"but the ray grid is {rays.width}x{rays.height}"
        )
    if mask is None:
        with np.errstate(invalid="ignore"):
            mask = (depth > 0) & (depth < np.inf)
    elif mask.shape != depth.shape:
        raise ValueError(f"mask shape {mask.shape} differs from depth shape {depth.shape}")
    if rays.valid is not None:
        mask = mask & rays.valid
    flat = mask.reshape(-1)
    z = depth.reshape(-1)[flat]
    out = np.empty((z.size, 3), dtype=np.float32)
    np.multiply(rays._x[flat], z, out=out[:, 0])
    np.multiply(rays._y[flat], z, out=out[:, 1])
    out[:, 2] = z
    return out


def project_points(points_optical: NDArray[np.floating], camera: CameraMessage) -> NDArray[np.float32]:
    """Project optical-frame points ``(N, 3)`` to pixels ``(N, 2)`` with the lens model.

    Uses ``cv2.projectPoints`` (pinhole) or ``cv2.fisheye.projectPoints``;
    meant for verification and tests, not the per-frame path. Points need z > 0.
    """
    return _project(points_optical, camera).astype(np.float32)


def _project(points_optical: NDArray[np.floating], camera: CameraMessage) -> NDArray[np.float64]:
    pts = np.ascontiguousarray(points_optical, dtype=np.float64).reshape(-1, 1, 3)
    if len(pts) == 0:
        return np.empty((0, 2), dtype=np.float64)
    k, d = _camera_arrays(camera)
    zero = np.zeros(3)
    if camera.model == "fisheye":
        image, _ = cv2.fisheye.projectPoints(pts, zero, zero, k, d)
    else:
        image, _ = cv2.projectPoints(pts, zero, zero, k, d if d.size else None)
    return np.asarray(image, dtype=np.float64).reshape(-1, 2)
