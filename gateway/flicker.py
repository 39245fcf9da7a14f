"""Temporal flicker of a depth sequence: the temporal alignment error (TAE). Pure numpy, no I/O.

The measure of Video Depth Anything's evaluation (``eval_tae``), written
afresh: each frame's depth is back-projected, moved into the next frame's
camera with the known motion, projected with the intrinsics and compared with
the next frame's own depth at the pixels it lands on (the nearest surface
wins where several land on one pixel), as the mean absolute relative error;
both directions (t → t+1 and t+1 → t), averaged over all pairs. For a static
scene a perfectly consistent sequence scores 0, whatever its accuracy.

Depths of unknown scale (a relative model's) are first put on the reference's
scale by **one** scale and shift fitted in inverse depth over the whole
sequence, as the evaluation does; so per-frame scale changes count as flicker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from dronedepth.frames import Transform
from dronedepth.gateway.projection import points_from_depth, project_points, ray_grid
from dronedepth.protocol import CameraMessage

__all__ = ["align_inverse_depth", "temporal_alignment_error"]


def align_inverse_depth(
    depths: Sequence[NDArray[np.floating]], references: Sequence[NDArray[np.floating]]
) -> list[NDArray[np.float32]]:
    """``depths`` with one scale and shift fitted, in inverse depth, to ``references`` over all frames.

    Least squares of ``1 / reference ≈ s / depth + t`` over pixels where both
    are finite and positive; aligned inverse depths that are not positive
    become NaN.
    """
    inverse = [1.0 / np.asarray(d, dtype=np.float64) for d in depths]
    target = [1.0 / np.asarray(r, dtype=np.float64) for r in references]
    masks = [np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0) for x, y in zip(inverse, target, strict=True)]
    x = np.concatenate([i[m] for i, m in zip(inverse, masks, strict=True)])
    y = np.concatenate([t[m] for t, m in zip(target, masks, strict=True)])
    if len(x) < 2:
        raise ValueError("fewer than 2 pixels with a valid depth and reference: nothing to align")
    (s, t), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
    out = []
    for i in inverse:
        aligned = s * i + t
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(aligned > 0, 1.0 / aligned, np.nan).astype(np.float32))
    return out


def _transfer_error(
    depth_from: NDArray[np.floating],
    depth_to: NDArray[np.floating],
    to_from_from: Transform,
    camera: CameraMessage,
) -> float | None:
    """Mean |Z_to − Z_moved| / Z_to of ``depth_from`` moved into the ``to`` camera; None if nothing overlaps."""
    points = points_from_depth(np.asarray(depth_from, dtype=np.float32), ray_grid(camera))
    moved = to_from_from.apply(points)
    moved = moved[moved[:, 2] > 1e-6]
    if len(moved) == 0:
        return None
    uv = np.rint(project_points(moved, camera)).astype(np.intp)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
    flat = uv[inside, 1] * camera.width + uv[inside, 0]
    z = moved[inside, 2]
    # Nearest surface per pixel: write far to near, so the nearest write lands last.
    order = np.argsort(-z, kind="stable")
    projected = np.full(camera.width * camera.height, np.nan)
    projected[flat[order]] = z[order]
    target = np.asarray(depth_to, dtype=np.float64).reshape(-1)
    valid = np.isfinite(projected) & np.isfinite(target) & (target > 0)
    if not valid.any():
        return None
    return float(np.mean(np.abs(target[valid] - projected[valid]) / target[valid]))


def temporal_alignment_error(
    depths: Sequence[NDArray[np.floating]],
    world_from_cameras: Sequence[Transform],
    camera: CameraMessage,
    references: Sequence[NDArray[np.floating]] | None = None,
) -> float:
    """TAE of a static scene's depth sequence: mean absolute relative error between consecutive frames.

    ``depths`` are z-depth maps (metres, or any unit if ``references`` are
    given: they are then aligned to them first with
    :func:`align_inverse_depth`), NaN or non-positive where unknown;
    ``world_from_cameras`` the optical-frame camera poses of the frames;
    ``camera`` the intrinsics of every frame. Returns a fraction (VDA reports
    it ×100).
    """
    if len(depths) != len(world_from_cameras) or len(depths) < 2:
        raise ValueError(
            f"need one pose per depth map and at least 2 frames, got {len(depths)} depths "
            f"and {len(world_from_cameras)} poses"
        )
    if references is not None:
        depths = align_inverse_depth(depths, references)
    errors = []
    for t in range(len(depths) - 1):
        next_from_this = world_from_cameras[t + 1].inverse() @ world_from_cameras[t]
        for error in (
            _transfer_error(depths[t], depths[t + 1], next_from_this, camera),
            _transfer_error(depths[t + 1], depths[t], next_from_this.inverse(), camera),
        ):
            if error is not None:
                errors.append(error)
    if not errors:
        raise ValueError("no two consecutive frames overlap: the flicker is undefined")
    return float(np.mean(errors))
