"""Sparse 2D keypoints spread over the image, lifted to 3D with robust depth.

:class:`KeypointDetector` wraps one OpenCV detector (created once per session)
and buckets its output on a grid so keypoints cover the whole frame instead of
piling up on the most textured object. :func:`lift_keypoints` gives each
keypoint a depth that survives noise and rejects keypoints on depth edges,
where a corner detector likes to fire and where monocular depth is least
reliable. Pixel coordinates follow :mod:`gateway.projection` (pixel centres at
integer coordinates, as in OpenCV).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Final, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ConfigError
from dronedepth.gateway.projection import RayGrid, pixel_rays

__all__ = [
    "KeypointConfig",
    "KeypointDetector",
    "KeypointMethod",
    "Keypoints",
    "bucket",
    "lift_keypoints",
    "suppress_twins",
]

KeypointMethod = Literal["orb", "sift", "fast", "gftt", "grid"]
_METHODS: Final = ("orb", "sift", "fast", "gftt", "grid")
_CANDIDATES_PER_KEYPOINT: Final = 10
_MIN_CANDIDATES: Final = 5000
TWIN_RADIUS_PX: Final = 2
"""Keypoints within this many pixels of a stronger one are the same corner (ORB finds one on several pyramid
levels): only the strongest is kept, so landmark ids are not split between twins."""
"""Candidates the detector keeps before bucketing. ORB and SIFT keep only their strongest
responses, which pile up on the most textured objects; with 1000 candidates ORB left half the
cells of a street scene empty, with 5000 about a quarter (detection 3.4 → 5 ms at 640×480)."""
_RESPONSE: Final = operator.attrgetter("response")
_MIN_DETECT_SIDE: Final = 64
"""Below this many pixels on a side a shrunk image loses most keypoints: detect at full resolution."""


@dataclass(frozen=True, slots=True)
class KeypointConfig:
    """How keypoints are detected and lifted.

    ``window`` is the side, in image pixels, of the square of depth pixels
    whose median gives a keypoint's depth (odd, ≥ 1; see :func:`lift_keypoints`
    for a strided depth grid). The image is split into ``grid_cols`` ×
    ``grid_rows`` cells and no cell keeps more than
    ``ceil(max_keypoints / (grid_cols * grid_rows))`` keypoints.

    ``detect_scale`` is the pyramid level the detector runs on: the image is
    shrunk by this factor (area averaging) first and the keypoints' pixels
    mapped back to full resolution, where they are bucketed and lifted. ORB
    on 640×480 photos costs about 12 ms per frame at full resolution and 3 ms
    at 0.5 (``dronedepth bench --only gateway-cost``); descriptors then
    describe the half-resolution patch, alike for every frame of a session.
    The default stays 1: at 0.5 the landmark tracker keeps more ids on the
    synthetic flight (0.72 vs 0.64) but assigns more wrong ones (7.9 % vs its 6 % bound).
    """

    method: KeypointMethod = "orb"
    max_keypoints: int = 200
    window: int = 5
    grid_cols: int = 8
    grid_rows: int = 6
    detect_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ConfigError(f"keypoint method must be one of {', '.join(_METHODS)}; got {self.method!r}")
        if not isinstance(self.max_keypoints, int) or self.max_keypoints < 1:
            raise ConfigError(f"max_keypoints must be a positive integer, got {self.max_keypoints!r}")
        if not isinstance(self.window, int) or self.window < 1 or self.window % 2 == 0:
            raise ConfigError(f"window must be a positive odd integer, got {self.window!r}")
        if not 0.1 <= self.detect_scale <= 1.0:
            raise ConfigError(f"detect_scale must be within [0.1, 1], got {self.detect_scale!r}")
        for name in ("grid_cols", "grid_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    @property
    def per_cell(self) -> int:
        """The most keypoints one grid cell may keep."""
        return math.ceil(self.max_keypoints / (self.grid_cols * self.grid_rows))


@dataclass(frozen=True, eq=False)
class Keypoints:
    """2D keypoints of one frame, best first.

    ``pixels`` are (u, v) sub-pixel coordinates, ``scores`` the detector
    response (1 for ``grid``), ``descriptors`` one row per keypoint (ORB:
    uint8 × 32, SIFT: uint8 × 128) or None for detectors without one.
    """

    pixels: NDArray[np.float32]
    scores: NDArray[np.float32]
    descriptors: NDArray[Any] | None = None
    descriptor_type: str | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def subset(self, indices: NDArray[np.intp]) -> Keypoints:
        return Keypoints(
            pixels=self.pixels[indices],
            scores=self.scores[indices],
            descriptors=None if self.descriptors is None else self.descriptors[indices],
            descriptor_type=self.descriptor_type,
        )


def suppress_twins(
    pixels: NDArray[np.floating],
    scores: NDArray[np.floating],
    width: int,
    height: int,
    radius_px: int = TWIN_RADIUS_PX,
) -> NDArray[np.intp]:
    """Indices (ascending) of the keypoints that no stronger keypoint lies within ``radius_px`` of.

    A non-maximum suppression on the rounded pixels: the scores are drawn into
    an image (with a margin of ``radius_px``) and each keypoint reads the
    strongest score in the disc of offsets around its pixel, one gather for all
    keypoints (0.24 ms for ~1000 ORB candidates at 640×480, against 0.47 ms
    for dilating the whole image and far more for a pairwise test); a keypoint
    survives where its own score is that maximum. Of keypoints with equal
    scores within the radius, all survive but those sharing a rounded pixel,
    of which the first is kept.
    """
    n = len(pixels)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    u = np.clip(np.rint(pixels[:, 0]), 0, width - 1).astype(np.intp)
    v = np.clip(np.rint(pixels[:, 1]), 0, height - 1).astype(np.intp)
    values = scores.astype(np.float32)
    stride = width + 2 * radius_px
    drawn = np.zeros((height + 2 * radius_px) * stride, dtype=np.float32)
    at = (v + radius_px) * stride + (u + radius_px)
    np.maximum.at(drawn, at, values)
    # The disc of offsets within radius + 1/2 (OpenCV's 5x5 ellipse is not symmetric in x and y).
    offsets = np.arange(-radius_px, radius_px + 1)
    dy, dx = np.nonzero(offsets[:, None] ** 2 + offsets[None, :] ** 2 <= (radius_px + 0.5) ** 2)
    disc = (dy - radius_px) * stride + (dx - radius_px)
    strongest = drawn[at[:, None] + disc[None, :]].max(axis=1)
    survivors = np.flatnonzero(values >= strongest)
    _, first = np.unique(v[survivors] * width + u[survivors], return_index=True)
    return np.sort(survivors[first])


def bucket(
    pixels: NDArray[np.floating],
    scores: NDArray[np.floating],
    width: int,
    height: int,
    config: KeypointConfig,
) -> NDArray[np.intp]:
    """Indices of the keypoints kept by grid bucketing, best first.

    Each cell keeps its ``config.per_cell`` highest scores; if that is more
    than ``max_keypoints`` overall, every cell's best goes before any cell's
    second best (then by score), so the cut never empties a cell.
    """
    n = len(pixels)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    col = np.clip((pixels[:, 0] + 0.5) * (config.grid_cols / width), 0, config.grid_cols - 1).astype(np.intp)
    row = np.clip((pixels[:, 1] + 0.5) * (config.grid_rows / height), 0, config.grid_rows - 1).astype(np.intp)
    cell = row * config.grid_cols + col
    order = np.lexsort((-scores, cell))  # by cell, then best score first
    sorted_cells = cell[order]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    keep = rank < config.per_cell
    order, rank = order[keep], rank[keep]
    by_rank = np.lexsort((-scores[order], rank))[: config.max_keypoints]
    chosen = order[by_rank]
    return chosen[np.argsort(-scores[chosen], kind="stable")]


class KeypointDetector:
    """Detects bucketed keypoints; make one per session and reuse it for every frame."""

    def __init__(self, config: KeypointConfig) -> None:
        self.config = config
        candidates = max(_MIN_CANDIDATES, _CANDIDATES_PER_KEYPOINT * config.max_keypoints)
        self._detector: Any
        self._descriptor_type: str | None = None
        if config.method == "orb":
            self._detector = cv2.ORB.create(nfeatures=candidates)
            self._descriptor_type = "orb"
        elif config.method == "sift":
            self._detector = cv2.SIFT.create(nfeatures=candidates)
            self._descriptor_type = "sift"
        elif config.method == "fast":
            self._detector = cv2.FastFeatureDetector.create(threshold=20, nonmaxSuppression=True)
        elif config.method == "gftt":
            self._detector = cv2.GFTTDetector.create(maxCorners=candidates, qualityLevel=0.01, minDistance=3)
        else:
            self._detector = None
        self._grid_cache: dict[tuple[int, int], Keypoints] = {}

    def detect(self, gray: NDArray[np.uint8]) -> Keypoints:
        """Keypoints of a grayscale uint8 ``(H, W)`` image, at most ``max_keypoints``, best first."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError(f"detect needs a grayscale uint8 (H, W) image, got {gray.dtype} {gray.shape}")
        height, width = gray.shape
        if self._detector is None:
            return self._grid(width, height)
        image = self._pyramid_level(gray)
        found = self._detector.detect(image, None)
        if not found:
            return _empty(self._descriptor_type)
        pixels = np.asarray(cv2.KeyPoint.convert(found), dtype=np.float32).reshape(-1, 2)
        # attrgetter in C: a third of a generator's cost for ORB's ~5000 candidates (0.17 vs 0.46 ms).
        scores = np.fromiter(map(_RESPONSE, found), dtype=np.float32, count=len(found))
        # One corner found several times (ORB's pyramid levels, SIFT's orientations): keep the strongest copy.
        # On the detection level's pixels: the detector's localisation is in those.
        index = suppress_twins(pixels, scores, image.shape[1], image.shape[0])
        if image is not gray:
            # Pixel centres are at integer coordinates: a pixel's edge is at -0.5 on both levels.
            factors = np.array([width / image.shape[1], height / image.shape[0]], dtype=np.float32)
            pixels = (pixels + 0.5) * factors - 0.5
        chosen = index[bucket(pixels[index], scores[index], width, height, self.config)]
        if self._descriptor_type is None:
            return Keypoints(pixels=pixels[chosen], scores=scores[chosen])
        return self._describe(image, found, chosen, pixels, scores)

    def _pyramid_level(self, gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """``gray`` shrunk by ``detect_scale`` (itself at 1, or when the image would get too small to detect in)."""
        scale = self.config.detect_scale
        height, width = gray.shape
        size = (round(width * scale), round(height * scale))
        if scale >= 1.0 or min(size) < _MIN_DETECT_SIDE:
            return gray
        return np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)  # uint8 in, out

    def _describe(
        self,
        gray: NDArray[np.uint8],
        found: Any,
        chosen: NDArray[np.intp],
        pixels: NDArray[np.float32],
        scores: NDArray[np.float32],
    ) -> Keypoints:
        selected = []
        for i in chosen:
            kp = found[int(i)]
            kp.class_id = int(i)  # survives compute(), which may drop keypoints it cannot describe
            selected.append(kp)
        described, descriptors = self._detector.compute(gray, selected)
        if descriptors is None or not described:
            return _empty(self._descriptor_type)
        ids = np.fromiter((k.class_id for k in described), dtype=np.intp, count=len(described))
        best_first = np.argsort(-scores[ids], kind="stable")  # compute() may regroup by pyramid level
        ids = ids[best_first]
        return Keypoints(
            pixels=pixels[ids],
            scores=scores[ids],
            # SIFT's float values are whole numbers in 0..255: uint8 is lossless and 4x smaller on the wire.
            descriptors=np.ascontiguousarray(descriptors[best_first], dtype=np.uint8),
            descriptor_type=self._descriptor_type,
        )

    def _grid(self, width: int, height: int) -> Keypoints:
        cached = self._grid_cache.get((width, height))
        if cached is not None:
            return cached
        n = self.config.max_keypoints
        cols = max(1, min(n, round(math.sqrt(n * width / height))))
        rows = max(1, n // cols)
        u = (np.arange(cols) + 0.5) * (width / cols) - 0.5
        v = (np.arange(rows) + 0.5) * (height / rows) - 0.5
        uu, vv = np.meshgrid(u, v)
        pixels = np.stack([uu.ravel(), vv.ravel()], axis=1).astype(np.float32)
        scores = np.ones(len(pixels), dtype=np.float32)
        chosen = np.sort(bucket(pixels, scores, width, height, self.config))  # keep row-major order
        result = Keypoints(pixels=pixels[chosen], scores=scores[chosen])
        for array in (result.pixels, result.scores):
            array.flags.writeable = False
        self._grid_cache[(width, height)] = result
        return result


def _empty(descriptor_type: str | None) -> Keypoints:
    size, dtype = {"orb": (32, np.uint8), "sift": (128, np.uint8)}.get(descriptor_type or "", (0, np.uint8))
    return Keypoints(
        pixels=np.empty((0, 2), dtype=np.float32),
        scores=np.empty(0, dtype=np.float32),
        descriptors=None if descriptor_type is None else np.empty((0, size), dtype=dtype),
        descriptor_type=descriptor_type,
    )


def lift_keypoints(
    keypoints: Keypoints,
    depth: NDArray[np.float32],
    rays: RayGrid,
    valid: NDArray[np.bool_],
    window: int = 5,
    *,
    min_valid_fraction: float = 0.5,
    max_spread: float = 0.1,
    min_inlier_fraction: float = 0.8,
    depth_stride: int = 1,
) -> tuple[NDArray[np.float32], NDArray[np.intp]]:
    """3D points ``(M, 3)`` (optical frame) of the keypoints that have a reliable depth.

    ``depth``, ``rays`` and ``valid`` are on the model's depth grid of stride
    ``depth_stride`` (grid pixel ``(i, j)`` is image pixel ``(s·i, s·j)``), the
    keypoints' pixels on the full-resolution image: a keypoint at image pixel
    ``(u, v)`` sits at grid position ``(u / s, v / s)``, whose ray is exactly
    the image pixel's. ``window`` is in image pixels: on a grid the window is
    the widest odd run of grid pixels that spans no more image pixels (but at
    least 3 when ``window`` is), so a strided model does not widen the patch a
    keypoint's depth comes from (a wider patch straddles more depth edges and
    rejects more keypoints: 5 × 5 grid pixels at stride 2 kept half as many).

    Returns the points and the indices into ``keypoints`` that were kept.

    For each keypoint, the window × window depths around its rounded
    pixel (clipped at the image border) are gathered, and only those marked in
    ``valid`` count:

    - fewer than ``min_valid_fraction`` of the window's in-image pixels valid → rejected;
    - depth = median of the valid depths (a few outlier pixels do not move it);
    - fewer than ``min_inlier_fraction`` of the valid depths within
      ``max_spread × median`` of the median → the window straddles a depth
      discontinuity → rejected.

    The point is the keypoint's exact sub-pixel ray (undistorted with the
    grid's camera, or bilinearly interpolated from the grid if it has none)
    times that depth, so it projects back onto the keypoint's pixel.
    """
    n = len(keypoints)
    if depth.shape != (rays.height, rays.width) or valid.shape != depth.shape:
        raise ValueError(
            f"depth {depth.shape} and valid {valid.shape} must match the ray grid ({rays.height}, {rays.width})"
        )
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    if n == 0:
        return np.empty((0, 3), dtype=np.float32), np.empty(0, dtype=np.intp)
    height, width = depth.shape
    pixels = keypoints.pixels.astype(np.float64)
    if depth_stride != 1:
        pixels /= depth_stride
    centre_u = np.clip(np.rint(pixels[:, 0]).astype(np.intp), 0, width - 1)
    centre_v = np.clip(np.rint(pixels[:, 1]).astype(np.intp), 0, height - 1)
    half = window // 2 // depth_stride
    if window > 1:
        half = max(half, 1)
    offsets = np.arange(-half, half + 1)
    du, dv = np.meshgrid(offsets, offsets)
    uu = centre_u[:, None] + du.ravel()[None, :]
    vv = centre_v[:, None] + dv.ravel()[None, :]
    inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
    np.clip(uu, 0, width - 1, out=uu)
    np.clip(vv, 0, height - 1, out=vv)
    flat = vv * width + uu
    values = depth.reshape(-1)[flat].astype(np.float64)
    ok = inside & valid.reshape(-1)[flat] & np.isfinite(values)
    values[~ok] = np.inf

    count = ok.sum(axis=1)
    enough = count >= np.maximum(1, np.ceil(min_valid_fraction * inside.sum(axis=1)))
    values.sort(axis=1)  # invalid (inf) last
    rows = np.arange(n)
    safe = np.maximum(count, 1)
    median = 0.5 * (values[rows, (safe - 1) // 2] + values[rows, safe // 2])
    with np.errstate(invalid="ignore"):
        inliers = (np.abs(values - median[:, None]) <= max_spread * median[:, None]).sum(axis=1)
    kept = np.flatnonzero(enough & (inliers >= min_inlier_fraction * count))
    if len(kept) == 0:
        return np.empty((0, 3), dtype=np.float32), kept
    rays_kept = _subpixel_rays(pixels[kept], rays)
    finite = np.isfinite(rays_kept).all(axis=1)
    kept, rays_kept = kept[finite], rays_kept[finite]
    points = (rays_kept * median[kept, None]).astype(np.float32)
    return points, kept


def _subpixel_rays(pixels: NDArray[np.float64], rays: RayGrid) -> NDArray[np.float64]:
    if rays.camera is not None:
        return pixel_rays(pixels, rays.camera)
    # Bilinear interpolation of the grid (exact for a pinhole camera, close otherwise).
    u = np.clip(pixels[:, 0], 0, rays.width - 1)
    v = np.clip(pixels[:, 1], 0, rays.height - 1)
    u0 = np.minimum(np.floor(u).astype(np.intp), max(rays.width - 2, 0))
    v0 = np.minimum(np.floor(v).astype(np.intp), max(rays.height - 2, 0))
    u1 = np.minimum(u0 + 1, rays.width - 1)
    v1 = np.minimum(v0 + 1, rays.height - 1)
    a = (u - u0)[:, None]
    b = (v - v0)[:, None]
    grid = rays.rays.astype(np.float64, copy=False)
    top = grid[v0, u0] * (1 - a) + grid[v0, u1] * a
    bottom = grid[v1, u0] * (1 - a) + grid[v1, u1] * a
    return top * (1 - b) + bottom * b
