import dataclasses

import cv2
import numpy as np
import pytest

from dronedepth.errors import ConfigError
from dronedepth.gateway.keypoints import (
    KeypointConfig,
    KeypointDetector,
    Keypoints,
    bucket,
    lift_keypoints,
    suppress_twins,
)
from dronedepth.gateway.projection import RayGrid, project_points, ray_grid, valid_depth_mask
from dronedepth.protocol import CameraMessage
from dronedepth.samples import sample_photos

PHOTOS = sample_photos()
METHODS = ["orb", "sift", "fast", "gftt", "grid"]
PINHOLE = CameraMessage(width=160, height=120, fx=120.0, fy=118.0, cx=80.2, cy=59.7)
DISTORTED = CameraMessage(
    width=160, height=120, fx=120.0, fy=118.0, cx=80.2, cy=59.7, distortion=(-0.25, 0.07, 0.001, -0.002, -0.01)
)
FISHEYE = CameraMessage(
    width=160, height=120, fx=70.0, fy=70.0, cx=79.5, cy=59.5, distortion=(0.03, -0.01, 0.0, 0.0), model="fisheye"
)


@pytest.fixture(scope="module", params=PHOTOS, ids=lambda p: p.name)
def photo_gray(request) -> np.ndarray:
    image = cv2.imread(str(request.param), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA)


def cells_of(pixels: np.ndarray, config: KeypointConfig, width: int, height: int) -> np.ndarray:
    col = np.floor((pixels[:, 0] + 0.5) * config.grid_cols / width).astype(int)
    row = np.floor((pixels[:, 1] + 0.5) * config.grid_rows / height).astype(int)
    return np.bincount(row * config.grid_cols + col, minlength=config.grid_cols * config.grid_rows)


# --- detection and bucketing ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_detector_on_a_photo_spreads_at_most_max_keypoints_over_the_grid(photo_gray, method):
    config = KeypointConfig(method=method, max_keypoints=200)
    keypoints = KeypointDetector(config).detect(photo_gray)
    n = len(keypoints)
    assert 0 < n <= 200
    assert keypoints.pixels.shape == (n, 2) and keypoints.pixels.dtype == np.float32
    assert keypoints.scores.shape == (n,) and keypoints.scores.dtype == np.float32
    per_cell = cells_of(keypoints.pixels, config, 640, 480)
    assert per_cell.max() <= config.per_cell == 5  # no cell holds more than its share
    assert (per_cell > 0).mean() >= 0.5  # and at least half the cells have some (real photos have sky)
    assert np.all(np.diff(keypoints.scores) <= 0)  # best first
    assert np.all((keypoints.pixels >= -0.5) & (keypoints.pixels < [639.5, 479.5]))


@pytest.mark.parametrize(
    ("method", "size", "dtype"),
    [
        ("orb", 32, np.uint8),
        ("sift", 128, np.uint8),
        ("fast", None, None),
        ("gftt", None, None),
        ("grid", None, None),
    ],
)
def test_descriptors(photo_gray, method, size, dtype):
    keypoints = KeypointDetector(KeypointConfig(method=method)).detect(photo_gray)
    if size is None:
        assert keypoints.descriptors is None and keypoints.descriptor_type is None
    else:
        assert keypoints.descriptor_type == method
        assert keypoints.descriptors.shape == (len(keypoints), size) and keypoints.descriptors.dtype == dtype


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_orb_descriptors_belong_to_their_keypoints(photo_gray, scale):
    """Descriptors must stay aligned with pixels even though compute() regroups keypoints (on either level)."""
    detector = KeypointDetector(KeypointConfig(method="orb", detect_scale=scale))
    keypoints = detector.detect(photo_gray)
    height, width = photo_gray.shape
    level = photo_gray
    if scale < 1:
        level = cv2.resize(photo_gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    factors = np.array([width / level.shape[1], height / level.shape[0]], dtype=np.float32)
    orb = cv2.ORB_create(nfeatures=5000)
    reference: dict[tuple[float, float], list[np.ndarray]] = {}
    for k, d in zip(*orb.detectAndCompute(level, None), strict=True):
        full = (np.array(k.pt, dtype=np.float32) + 0.5) * factors - 0.5  # the detector's mapping, in float32
        reference.setdefault(tuple(np.round(full.astype(np.float64), 3)), []).append(d)  # repeats across octaves
    matched = [
        any(np.array_equal(r, d) for r in reference[tuple(np.round(p, 3))])
        for p, d in zip(keypoints.pixels.astype(np.float64), keypoints.descriptors, strict=True)
        if tuple(np.round(p, 3)) in reference
    ]
    assert len(matched) > 0.8 * len(keypoints) and all(matched)


@pytest.mark.parametrize("method", ["orb", "fast", "gftt"])
def test_half_resolution_keypoints_map_back_to_full_resolution_pixels(method):
    """A 2× nearest-upsampled image shrinks back to the original exactly: the same corners, mapped pixel-exactly."""
    small = np.zeros((240, 320), np.uint8)
    rng = np.random.default_rng(3)
    for _ in range(60):
        x, y = int(rng.integers(10, 290)), int(rng.integers(10, 210))
        small[y : y + int(rng.integers(8, 25)), x : x + int(rng.integers(8, 25))] = int(rng.integers(60, 255))
    big = cv2.resize(small, (640, 480), interpolation=cv2.INTER_NEAREST)
    config = KeypointConfig(method=method, max_keypoints=2000, grid_cols=1, grid_rows=1)
    on_small = KeypointDetector(dataclasses.replace(config, detect_scale=1.0)).detect(small)
    on_big = KeypointDetector(dataclasses.replace(config, detect_scale=0.5)).detect(big)
    assert len(on_small) >= 5 and len(on_big) == len(on_small)
    expected = (on_small.pixels + 0.5) * 2 - 0.5
    order_small = np.lexsort(expected.T)
    order_big = np.lexsort(on_big.pixels.T)
    np.testing.assert_allclose(on_big.pixels[order_big], expected[order_small], atol=1e-4)


def test_detect_scale_is_validated():
    with pytest.raises(ConfigError, match="detect_scale must be within"):
        KeypointConfig(detect_scale=0.0)


def test_grid_method_is_uniform_and_cached():
    config = KeypointConfig(method="grid", max_keypoints=192)
    detector = KeypointDetector(config)
    keypoints = detector.detect(np.zeros((480, 640), np.uint8))
    assert len(keypoints) == 192 and np.all(keypoints.scores == 1)
    assert np.all(cells_of(keypoints.pixels, config, 640, 480) == 4)
    np.testing.assert_allclose(keypoints.pixels[0], [640 / 16 / 2 - 0.5, 480 / 12 / 2 - 0.5])
    assert detector.detect(np.zeros((480, 640), np.uint8)) is keypoints


def test_blank_image_gives_no_keypoints_with_well_formed_arrays():
    keypoints = KeypointDetector(KeypointConfig(method="orb")).detect(np.full((120, 160), 128, np.uint8))
    assert len(keypoints) == 0 and keypoints.pixels.shape == (0, 2) and keypoints.descriptors.shape == (0, 32)


def test_bucket_caps_crowded_cells_and_keeps_every_cell_when_cutting():
    config = KeypointConfig(max_keypoints=8, grid_cols=4, grid_rows=2)  # 8 cells, 1 per cell
    rng = np.random.default_rng(0)
    crowded = rng.uniform([0, 0], [20, 20], size=(100, 2))  # all in cell 0
    others = np.array([[30.0 + 40 * c, 10.0 + 40 * r] for r in range(2) for c in range(4)])[1:]  # cells 1..7
    pixels = np.concatenate([crowded, others]).astype(np.float32)
    scores = np.concatenate([rng.uniform(10, 20, 100), np.full(7, 0.1)]).astype(np.float32)
    chosen = bucket(pixels, scores, 160, 80, config)
    assert len(chosen) == 8
    assert np.all(cells_of(pixels[chosen], config, 160, 80) == 1)
    assert chosen[0] == int(np.argmax(scores))

    config = KeypointConfig(max_keypoints=10, grid_cols=2, grid_rows=1)  # 5 per cell
    pixels = np.array([[10.0, 5.0]] * 20 + [[150.0, 5.0]] * 20, np.float32)
    scores = np.r_[np.full(20, 10.0), np.full(20, 1.0)].astype(np.float32)
    chosen = bucket(pixels, scores, 160, 80, config)
    assert np.array_equal(cells_of(pixels[chosen], config, 160, 80), [5, 5])


def test_config_is_validated():
    with pytest.raises(ConfigError, match="window must be a positive odd integer, got 4"):
        KeypointConfig(window=4)
    with pytest.raises(ConfigError, match="keypoint method must be one of"):
        KeypointConfig(method="akaze")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_keypoints"):
        KeypointConfig(max_keypoints=0)
    with pytest.raises(ConfigError, match="grid_rows"):
        KeypointConfig(grid_rows=0)
    with pytest.raises(ValueError, match="grayscale"):
        KeypointDetector(KeypointConfig()).detect(np.zeros((4, 4, 3), np.uint8))


# --- lifting to 3D ---------------------------------------------------------------------------------


def random_keypoints(n: int, width: int, height: int, margin: int = 4, seed: int = 0) -> Keypoints:
    rng = np.random.default_rng(seed)
    pixels = rng.uniform([margin, margin], [width - 1 - margin, height - 1 - margin], size=(n, 2))
    return Keypoints(pixels=pixels.astype(np.float32), scores=np.ones(n, np.float32))


def plane_depth(camera: CameraMessage) -> np.ndarray:
    rays = ray_grid(camera).rays
    return (2.5 / (rays @ np.array([0.05, 0.15, 1.0]))).astype(np.float32)


@pytest.mark.parametrize("camera", [PINHOLE, DISTORTED, FISHEYE], ids=["pinhole", "distorted", "fisheye"])
def test_lifted_points_project_back_onto_their_pixels(camera):
    depth = plane_depth(camera)
    grid = ray_grid(camera)
    valid = valid_depth_mask(depth) & (grid.valid if grid.valid is not None else True)
    keypoints = random_keypoints(200, camera.width, camera.height)
    points, kept = lift_keypoints(keypoints, depth, grid, valid)
    assert points.dtype == np.float32 and kept.dtype == np.intp
    assert len(kept) > 150
    projected = project_points(points, camera)
    error = np.linalg.norm(projected - keypoints.pixels[kept], axis=1)
    assert error.max() < 1e-3


def test_bilinear_fallback_is_exact_for_pinhole_grids():
    grid = ray_grid(PINHOLE)
    bare = RayGrid(width=grid.width, height=grid.height, rays=grid.rays)  # no camera attached
    depth = plane_depth(PINHOLE)
    keypoints = random_keypoints(100, 160, 120)
    points, kept = lift_keypoints(keypoints, depth, bare, np.ones(depth.shape, bool))
    error = np.linalg.norm(project_points(points, PINHOLE) - keypoints.pixels[kept], axis=1)
    assert len(kept) == 100 and error.max() < 1e-3


def test_keypoints_on_a_depth_discontinuity_are_rejected():
    depth = np.full((120, 160), 2.0, np.float32)
    depth[:, 80:] = 6.0  # edge between columns 79 and 80
    columns = np.arange(70, 91, dtype=np.float32)
    keypoints = Keypoints(pixels=np.stack([columns, np.full_like(columns, 60.0)], 1), scores=np.ones(21, np.float32))
    for edge_threshold in (0.05, None):  # with and without flying-pixel removal in the mask
        valid = valid_depth_mask(depth, edge_threshold=edge_threshold)
        points, kept = lift_keypoints(keypoints, depth, ray_grid(PINHOLE), valid, window=5)
        kept_columns = columns[kept]
        assert not np.any((kept_columns >= 79) & (kept_columns <= 80)), kept_columns
        # Wherever a keypoint is kept its depth is that of its own side of the edge.
        np.testing.assert_array_equal(points[:, 2], np.where(kept_columns < 80, 2.0, 6.0))
        assert {70, 71, 72, 73, 74, 75, 76, 77, 86, 87, 88, 89, 90} <= set(kept_columns.astype(int).tolist())


def test_a_strided_depth_grid_keeps_about_as_many_keypoints_as_full_resolution(photo_gray):
    """Depth on every 2nd pixel (the export's default) must not cost most keypoints: the flying-pixel
    threshold and the median window are per image pixel, not per grid pixel (per grid pixel, a
    smooth depth's slope doubles and 4 of 42 keypoints survived on demo01)."""
    camera = CameraMessage(width=640, height=480, fx=500.0, fy=500.0, cx=319.5, cy=239.5)
    depth = 1.0 + 10.0 * cv2.GaussianBlur(photo_gray, (0, 0), 3).astype(np.float32) / 255  # smooth, 1–11 m
    keypoints = KeypointDetector(KeypointConfig()).detect(photo_gray)
    kept_counts = []
    for stride in (1, 2):
        grid = np.ascontiguousarray(depth[::stride, ::stride])
        valid = valid_depth_mask(grid, depth_stride=stride)
        points, kept = lift_keypoints(
            keypoints, grid, ray_grid(camera.strided(stride)), valid, window=5, depth_stride=stride
        )
        error = np.linalg.norm(project_points(points, camera) - keypoints.pixels[kept], axis=1)
        assert error.max() < 1e-3  # the full-resolution pixel's own ray, whatever the grid
        kept_counts.append(len(kept))
    full, strided = kept_counts
    assert full >= 20 and strided >= 0.6 * full, kept_counts


def test_median_ignores_a_single_outlier_pixel():
    depth = np.full((120, 160), 3.0, np.float32)
    depth[50, 40] = 40.0  # the keypoint's own pixel is the outlier
    depth[52, 42] = 0.3
    keypoints = Keypoints(pixels=np.array([[40.2, 49.9]], np.float32), scores=np.ones(1, np.float32))
    for valid in (np.ones(depth.shape, bool), valid_depth_mask(depth)):
        points, kept = lift_keypoints(keypoints, depth, ray_grid(PINHOLE), valid)
        assert kept.tolist() == [0] and points[0, 2] == pytest.approx(3.0)


def test_too_few_valid_neighbours_rejects():
    depth = np.full((120, 160), 3.0, np.float32)
    valid = np.ones(depth.shape, bool)
    valid[58:63, 38:43] = False
    valid[60, 40] = valid[58, 38] = True  # 2 of 25 valid
    keypoints = Keypoints(pixels=np.array([[40.0, 60.0], [100.0, 60.0]], np.float32), scores=np.ones(2, np.float32))
    _points, kept = lift_keypoints(keypoints, depth, ray_grid(PINHOLE), valid)
    assert kept.tolist() == [1]


def test_window_is_clipped_at_the_image_border():
    depth = np.full((120, 160), 3.0, np.float32)
    keypoints = Keypoints(pixels=np.array([[0.0, 0.0], [159.0, 119.0]], np.float32), scores=np.ones(2, np.float32))
    _, kept = lift_keypoints(keypoints, depth, ray_grid(PINHOLE), np.ones(depth.shape, bool), window=3)
    assert kept.tolist() == [0, 1]  # only 4 of the 9 window pixels lie inside the image at a corner


def test_twins_within_two_pixels_keep_only_the_strongest():
    pixels = np.array([[10.0, 10.0], [11.4, 10.9], [13.1, 10.0], [50.2, 40.0], [50.2, 40.0], [0.0, 0.0]], np.float32)
    scores = np.array([0.5, 0.9, 0.2, 0.3, 0.3, 0.1], np.float32)
    # 0 is 1.8 px from the stronger 1; 2 is 1.7 px from 1; 3 and 4 are one place (the first is kept); 5 is alone.
    np.testing.assert_array_equal(suppress_twins(pixels, scores, 64, 48), [1, 3, 5])
    assert len(suppress_twins(np.empty((0, 2), np.float32), np.empty(0, np.float32), 64, 48)) == 0


def test_twin_suppression_matches_a_pairwise_reference_up_to_the_image_border():
    rng = np.random.default_rng(7)
    pixels = np.concatenate([rng.uniform(-0.4, [63.4, 47.4], (300, 2)), [[0, 0], [1, 1], [63, 47], [62, 46]]])
    pixels = pixels.astype(np.float32)
    scores = rng.choice(np.linspace(0.1, 1.0, 12), len(pixels)).astype(np.float32)  # ties happen
    rounded = np.rint(pixels).astype(int)
    near = ((rounded[:, None, :] - rounded[None, :, :]) ** 2).sum(axis=2) <= 2.5**2
    same = (rounded[:, None, :] == rounded[None, :, :]).all(axis=2)
    earlier_twin = np.tril(same & (scores[:, None] == scores[None, :]), k=-1).any(axis=1)
    expected = [i for i in range(len(pixels)) if not (near[i] & (scores > scores[i])).any() and not earlier_twin[i]]
    np.testing.assert_array_equal(suppress_twins(pixels, scores, 64, 48), expected)


def test_orb_keeps_no_twins_on_a_photo(photo_gray):
    found = KeypointDetector(KeypointConfig(method="orb", max_keypoints=500)).detect(photo_gray)
    rounded = np.rint(found.pixels)
    gaps = np.linalg.norm(rounded[:, None, :] - rounded[None, :, :], axis=2)
    np.fill_diagonal(gaps, np.inf)
    # The 5x5 disc holds offsets up to (2, 1) (2.24 px): no two kept keypoints' rounded pixels are that close.
    assert len(found) > 100 and gaps.min() > 2.3
