"""Pictures people would rather look at: depth previews and point-cloud renders.

Both work headless with numpy and OpenCV only (Open3D's offscreen renderer needs
a GPU driver that servers and CI often lack), so the demo, the viewer's
``--snapshot`` and the operator page can use them anywhere.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

from dronedepth.contract import DepthKind, depth_stride_of


def colorize_depth(depth: NDArray[np.float32], depth_kind: DepthKind) -> NDArray[np.uint8]:
    """Depth (metres or relative) → RGB image, near = warm, far = cool.

    Colours follow inverse depth, robustly normalised (2nd–98th percentile), so
    near structure stays readable in outdoor scenes. Invalid pixels are black.
    """
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros((*depth.shape, 3), np.uint8)
    if not valid.any():
        return out
    inverse = np.zeros(depth.shape, np.float32)
    np.divide(1.0, depth, out=inverse, where=valid)
    lo, hi = np.percentile(inverse[valid], [2, 98])
    scaled = np.clip((inverse - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[valid] = bgr[valid][:, ::-1]
    return out


def depth_preview(
    rgb: NDArray[np.uint8],
    depth: NDArray[np.float32],
    depth_kind: DepthKind,
    *,
    note: str | None = None,
) -> NDArray[np.uint8]:
    """The frame and its colourised depth side by side, labelled with range and units.

    ``depth`` is the model's output for ``rgb``: full resolution or on a strided
    depth grid (:func:`~dronedepth.contract.depth_grid_shape`; ValueError for any
    other shape). A grid is coloured, then each of its pixels drawn over the
    ``s × s`` block of the frame it starts, so both halves have the frame's size.
    """
    height, width = rgb.shape[:2]
    stride = depth_stride_of(height, width, depth.shape)
    coloured = colorize_depth(depth, depth_kind)
    if stride > 1:
        coloured = np.repeat(np.repeat(coloured, stride, axis=0), stride, axis=1)[:height, :width]
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if depth_kind == "metric" and valid.size:
        label = f"depth {np.percentile(valid, 2):.1f}-{np.percentile(valid, 98):.1f} m"
    else:
        label = "relative depth (not metres)"
    panel = np.concatenate([rgb, coloured], axis=1)
    lines = [label] + ([note] if note else [])
    scale = max(panel.shape[1] / 1600, 0.5)
    # One plain white text on a dark band: OpenCV 5 draws bold text with other glyph widths, so outlines smear.
    line_height = int(32 * scale) + 6
    for i, line in enumerate(lines):
        (text_width, _), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = i * line_height
        band = panel[top : top + line_height, : text_width + 16]
        band[:] = band // 3
        origin = (8, top + line_height - int(8 * scale) - 2)
        cv2.putText(panel, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def _look_at(eye: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rotation whose rows are the virtual camera's axes (x right, y down, z forward) in cloud coordinates."""
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, -1.0, 0.0]))  # world "up" is -y in the optical frame
    if np.linalg.norm(right) < 1e-9:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def render_point_cloud(
    points: NDArray[np.float32],
    colors: NDArray[np.uint8] | None,
    *,
    size: tuple[int, int] = (960, 720),
    yaw_deg: float = 25.0,
    pitch_deg: float = 15.0,
    highlight: NDArray[np.float32] | None = None,
    background: tuple[int, int, int] = (24, 24, 28),
) -> NDArray[np.uint8]:
    """Render points (camera optical frame) from a virtual camera orbiting the cloud.

    A z-buffered splat renderer: each point covers a 2×2 pixel square and the
    nearest point wins. ``highlight`` points (e.g. keypoints) are drawn on top
    as red discs. Returns an RGB image.
    """
    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    if len(points) == 0:
        return image
    pts = points.astype(np.float64)
    centre = np.median(pts, axis=0)
    radius = float(np.percentile(np.linalg.norm(pts - centre, axis=1), 90)) or 1.0
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    # Orbit: start behind the original camera (-z from the centre), rotate about the vertical axis and lift.
    offset = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), -math.cos(yaw) * math.cos(pitch)])
    eye = centre + offset * radius * 2.8
    rotation = _look_at(eye, centre)
    focal = 0.9 * width

    def project(p: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        cam = (p - eye) @ rotation.T
        z = cam[:, 2]
        keep = z > 1e-6
        u = np.full(len(p), -1, np.int64)
        v = np.full(len(p), -1, np.int64)
        u[keep] = np.round(focal * cam[keep, 0] / z[keep] + width / 2).astype(np.int64)
        v[keep] = np.round(focal * cam[keep, 1] / z[keep] + height / 2).astype(np.int64)
        return u, v, z

    u, v, z = project(pts)
    rgb = np.full((len(pts), 3), 200, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    depth = np.full((height, width), np.inf)
    for du in (0, 1):
        for dv in (0, 1):
            uu, vv = u + du, v + dv
            inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height) & (z > 0)
            flat = vv[inside] * width + uu[inside]
            zz, cc = z[inside], rgb[inside]
            # Nearest point per pixel: sort by (pixel, depth) and keep each pixel's first entry.
            order = np.lexsort((zz, flat))
            flat, zz, cc = flat[order], zz[order], cc[order]
            first = np.ones(len(flat), bool)
            first[1:] = flat[1:] != flat[:-1]
            flat, zz, cc = flat[first], zz[first], cc[first]
            nearer = zz < depth.reshape(-1)[flat]
            depth.reshape(-1)[flat[nearer]] = zz[nearer]
            image.reshape(-1, 3)[flat[nearer]] = cc[nearer]
    if highlight is not None and len(highlight):
        hu, hv, hz = project(highlight.astype(np.float64))
        for x, y, zz in zip(hu, hv, hz, strict=True):
            if zz > 0 and 0 <= x < width and 0 <= y < height:
                cv2.circle(image, (int(x), int(y)), 4, (255, 40, 40), -1, cv2.LINE_AA)
    return image
