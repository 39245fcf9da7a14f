import dataclasses

import cv2
import numpy as np
import pytest

from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.gateway.keypoints import KeypointConfig
from dronedepth.gateway.pipeline import FrameProcessor, ProcessingConfig, relative_depth
from dronedepth.gateway.projection import project_points, ray_grid
from dronedepth.protocol import CAMERA_MISMATCH, CameraMessage, KeypointsMessage, decode, encode
from dronedepth.samples import sample_photos

PHOTOS = sample_photos()
CAMERA = CameraMessage(width=640, height=480, fx=520.0, fy=515.0, cx=322.4, cy=236.8)
DISTORTED = CameraMessage(
    width=640, height=480, fx=520.0, fy=515.0, cx=322.4, cy=236.8, distortion=(-0.2, 0.05, 0.001, -0.001, 0.0)
)
BOX = (slice(180, 330), slice(250, 420))  # rows, columns of a box 1.2 m away in front of the plane


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    image = cv2.imread(str(PHOTOS[0]), cv2.IMREAD_COLOR)
    return cv2.cvtColor(cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def plane_depth_at(pixels: np.ndarray, camera: CameraMessage) -> np.ndarray:
    """z of a plane tilted towards the camera's floor (depth 2.4–9 m), at sub-pixel positions."""
    from dronedepth.gateway.projection import pixel_rays

    rays = pixel_rays(pixels, camera)
    return 3.0 / (rays @ np.array([0.1, 0.5, 0.8]))


def scene_depth(camera: CameraMessage) -> np.ndarray:
    u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
    depth = plane_depth_at(np.stack([u.ravel(), v.ravel()], 1), camera).reshape(camera.height, camera.width)
    depth[BOX] = 1.2
    return depth.astype(np.float32)


def true_depth(pixels: np.ndarray, camera: CameraMessage) -> np.ndarray:
    depth = plane_depth_at(pixels, camera)
    u, v = np.rint(pixels[:, 0]).astype(int), np.rint(pixels[:, 1]).astype(int)
    in_box = (v >= BOX[0].start) & (v < BOX[0].stop) & (u >= BOX[1].start) & (u < BOX[1].stop)
    return np.where(in_box, 1.2, depth)


def test_keypoints_satisfy_the_pinhole_projection_and_have_the_right_depth(rgb):
    depth = scene_depth(CAMERA)
    assert depth[~np.isclose(depth, 1.2)].min() > 2.0 and depth.max() < 10
    processor = FrameProcessor(ProcessingConfig(), "metric")
    result = processor.process(rgb, depth, CAMERA, pts=9000, frame_index=3)
    message = result.message
    n = len(message.points)
    assert 60 < n <= 200
    x, y, z = message.points.astype(np.float64).T
    u, v = message.pixels.astype(np.float64).T
    assert np.abs(CAMERA.fx * x / z + CAMERA.cx - u).max() < 1e-3
    assert np.abs(CAMERA.fy * y / z + CAMERA.cy - v).max() < 1e-3
    # Keypoints on the box outline were rejected, so every depth is that of the surface under the pixel.
    np.testing.assert_allclose(z, true_depth(message.pixels, CAMERA), rtol=0.02)
    assert np.isclose(z, 1.2).sum() > 5 and (~np.isclose(z, 1.2)).sum() > 20  # both surfaces are represented
    assert (message.pts, message.frame_index, message.width, message.height) == (9000, 3, 640, 480)
    assert message.depth_kind == "metric" and message.axes == "optical"
    assert message.descriptor_type == "orb" and message.descriptors.shape == (n, 32)


def test_all_points_colors_and_cloud(rgb):
    depth = scene_depth(CAMERA)
    result = FrameProcessor(ProcessingConfig(), "metric").process(rgb, depth, CAMERA, pts=0, frame_index=0)
    valid = result.valid
    assert result.points.shape == (valid.sum(), 3) and result.points.dtype == np.float32
    assert 0.95 * depth.size < valid.sum() < depth.size  # only the box outline is dropped
    np.testing.assert_array_equal(result.colors, rgb[valid])
    np.testing.assert_array_equal(result.points[:, 2], depth[valid])
    assert len(result.cloud.points) == len(result.points)
    np.testing.assert_allclose(np.asarray(result.cloud.colors), rgb[valid] / 255.0)


def test_the_dense_cloud_is_made_only_when_read_and_then_once(rgb):
    depth = scene_depth(CAMERA)
    processor = FrameProcessor(ProcessingConfig(build_cloud=False), "metric")
    result = processor.process(rgb, depth, CAMERA, pts=0, frame_index=0)
    assert not result.dense.made, "no sink asked: no per-pixel arrays were gathered"
    points = result.points
    assert result.dense.made and result.points is points and result.colors is result.dense.colors
    np.testing.assert_array_equal(result.colors, rgb[result.valid])
    np.testing.assert_array_equal(points[:, 2], depth[result.valid])
    # Made after the next frame was processed, the arrays are still this frame's.
    late = processor.process(rgb, depth, CAMERA, pts=1, frame_index=1)
    processor.process(np.ascontiguousarray(rgb[::-1]), depth[::-1] * 2, CAMERA, pts=2, frame_index=2)
    np.testing.assert_array_equal(late.points, points)
    np.testing.assert_array_equal(late.colors, result.colors)


def test_distorted_camera_keypoints_project_back_with_the_lens_model(rgb):
    depth = scene_depth(DISTORTED)
    processor = FrameProcessor(ProcessingConfig(build_cloud=False), "metric")
    result = processor.process(rgb, depth, DISTORTED, pts=0, frame_index=0)
    message = result.message
    assert len(message.points) > 60 and result.cloud is None
    np.testing.assert_allclose(project_points(message.points, DISTORTED), message.pixels, atol=1e-3)
    np.testing.assert_allclose(
        project_points(result.points[::97], DISTORTED), np.argwhere(result.valid)[::97, ::-1], atol=1e-3
    )


@pytest.mark.parametrize(("axes", "sign"), [("opengl", [1, -1, -1]), ("seed", [1, -1, 1])])
def test_points_stay_optical_and_only_the_wire_takes_the_configured_axes(rgb, axes, sign):
    depth = scene_depth(CAMERA)
    optical = FrameProcessor(ProcessingConfig(), "metric").process(rgb, depth, CAMERA, pts=0, frame_index=0)
    other = FrameProcessor(ProcessingConfig(axes=axes), "metric").process(rgb, depth, CAMERA, pts=0, frame_index=0)
    assert other.message.axes == axes
    np.testing.assert_array_equal(other.message.points, optical.message.points)
    np.testing.assert_array_equal(other.points, optical.points)
    assert (other.points[:, 2] > 0).all(), "optical: every point is in front of the camera"
    np.testing.assert_allclose(np.asarray(other.cloud.points), other.points, rtol=1e-7)
    wire = other.message.to_dict()
    assert wire["axes"] == axes
    np.testing.assert_allclose(wire["points"], optical.message.points * np.float32(sign), atol=5e-5)


def test_relative_models_give_relative_depth_never_metres(rgb):
    metric_depth = scene_depth(CAMERA)
    disparity = (7.0 / metric_depth).astype(np.float32)  # affine-invariant disparity, scale 7
    disparity[:20] = 0.0  # "sky"
    disparity[20:25] = 1e-6  # near-zero disparity: beyond 1000× the nearest depth
    result = FrameProcessor(ProcessingConfig(), "relative").process(rgb, disparity, CAMERA, pts=0, frame_index=0)
    assert result.message.depth_kind == "relative"
    assert np.isnan(result.depth[:25]).all() and not result.valid[:25].any()
    np.testing.assert_allclose(result.depth[30:], metric_depth[30:] / 7.0, rtol=1e-6)
    metric = FrameProcessor(ProcessingConfig(), "metric").process(rgb, metric_depth, CAMERA, pts=0, frame_index=0)
    z_rel = result.message.points[:, 2]
    assert len(z_rel) > 60 and z_rel.max() < metric.message.points[:, 2].max() / 5  # scaled, not metres
    assert decode(encode(result.message)).depth_kind == "relative"


def test_relative_depth_handles_bad_values():
    out = relative_depth(np.array([[2.0, 0.0, -1.0, np.nan, np.inf, 0.001]], np.float32))
    np.testing.assert_array_equal(np.isnan(out), [[False, True, True, True, True, True]])
    assert out[0, 0] == 0.5
    assert np.isnan(relative_depth(np.zeros((2, 2), np.float32))).all()


def test_max_range_drops_far_points(rgb):
    depth = scene_depth(CAMERA)
    result = FrameProcessor(ProcessingConfig(max_range=4.0), "metric").process(rgb, depth, CAMERA, pts=0, frame_index=0)
    assert result.points[:, 2].max() <= 4.0 and len(result.points) < 0.8 * depth.size
    assert np.all(result.message.points[:, 2] <= 4.0)


def test_timing_is_merged_and_copied_into_the_message(rgb):
    timing = {"inference": 12.5}
    result = FrameProcessor(ProcessingConfig(), "metric").process(
        rgb, scene_depth(CAMERA), CAMERA, pts=0, frame_index=0, timing=timing
    )
    assert set(timing) == {"inference", "projection", "detection", "keypoints", "pointcloud", "obstacles"}
    assert all(value >= 0 for value in timing.values())
    assert dict(result.message.timing) == timing


def test_keypoints_detected_apart_give_the_same_message_and_count_in_the_keypoints_stage(rgb):
    depth = scene_depth(CAMERA)
    inline = FrameProcessor(ProcessingConfig(build_cloud=False), "metric").process(
        rgb, depth, CAMERA, pts=0, frame_index=0
    )
    processor = FrameProcessor(ProcessingConfig(build_cloud=False), "metric")
    detections = []
    detect = processor._detector.detect
    processor._detector.detect = lambda gray: detections.append(gray.shape) or detect(gray)  # type: ignore[method-assign]
    detected = processor.detect_keypoints(rgb)
    slow = dataclasses.replace(detected, elapsed_ms=1000.0)  # as if the detection (elsewhere) took a second
    apart = processor.process(rgb, depth, CAMERA, pts=0, frame_index=0, detected=slow)
    assert detections == [(480, 640)], "process uses the keypoints it is given"
    for name in ("points", "pixels", "scores", "descriptors"):
        np.testing.assert_array_equal(getattr(apart.message, name), getattr(inline.message, name))
    assert len(apart.message.points) > 60
    assert apart.message.timing["detection"] == 1000.0, "the detection's own time, wherever it ran"
    assert apart.message.timing["keypoints"] < 1000.0, "lifting alone"


def test_message_round_trips_through_the_protocol_and_fits_a_data_channel_message(rgb):
    result = FrameProcessor(ProcessingConfig(), "metric").process(
        rgb, scene_depth(CAMERA), CAMERA, pts=90, frame_index=1
    )
    text = encode(result.message)
    assert len(text) < 64 * 1024
    decoded = decode(text)
    assert isinstance(decoded, KeypointsMessage)
    np.testing.assert_allclose(decoded.points, result.message.points, atol=1e-4)
    np.testing.assert_array_equal(decoded.descriptors, result.message.descriptors)


def test_grid_method_without_an_image_texture():
    rgb = np.zeros((480, 640, 3), np.uint8)
    config = ProcessingConfig(keypoints=KeypointConfig(method="grid", max_keypoints=48), build_cloud=False)
    result = FrameProcessor(config, "metric").process(rgb, scene_depth(CAMERA), CAMERA, pts=0, frame_index=0)
    assert 30 < len(result.message.points) <= 48 and result.message.descriptors is None


def test_frame_size_must_match_the_camera():
    processor = FrameProcessor(ProcessingConfig(), "metric")
    rgb, depth = np.zeros((240, 320, 3), np.uint8), np.ones((240, 320), np.float32)
    with pytest.raises(ProtocolError, match="frame is 320x240 but the camera message describes 640x480") as info:
        processor.process(rgb, depth, CAMERA, pts=0, frame_index=0)
    assert info.value.code == CAMERA_MISMATCH
    result = processor.process(rgb, depth, CAMERA.scaled(320, 240), pts=0, frame_index=0)
    assert result.message.width == 320
    with pytest.raises(ValueError, match=r"depth of shape \(100, 100\) fits no depth stride"):
        processor.process(
            np.zeros((480, 640, 3), np.uint8), np.ones((100, 100), np.float32), CAMERA, pts=0, frame_index=0
        )


def test_config_and_depth_kind_are_validated():
    with pytest.raises(ConfigError, match="axes must be one of"):
        ProcessingConfig(axes="enu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_range must be positive"):
        ProcessingConfig(max_range=0.0)
    with pytest.raises(ConfigError, match="depth_kind must be 'metric' or 'relative', got 'disparity'"):
        FrameProcessor(ProcessingConfig(), "disparity")  # type: ignore[arg-type]


def test_ray_grid_is_reused_across_frames(rgb):
    processor = FrameProcessor(ProcessingConfig(build_cloud=False), "metric")
    processor.process(rgb, scene_depth(CAMERA), CAMERA, pts=0, frame_index=0)
    hits = ray_grid.cache_info().hits
    processor.process(rgb, scene_depth(CAMERA), CAMERA, pts=1, frame_index=1)
    assert ray_grid.cache_info().hits > hits


@pytest.mark.parametrize("camera", [CAMERA, DISTORTED], ids=["pinhole", "distorted"])
def test_strided_depth_gives_the_full_resolution_points_of_its_pixels(rgb, camera):
    """Depth at stride 2 (the model's [::2, ::2]) projects to exactly the stride-1 points of those pixels."""
    depth = scene_depth(camera)
    config = ProcessingConfig(build_cloud=False, landmarks=None)
    full = FrameProcessor(config, "metric").process(rgb, depth, camera, pts=0, frame_index=0)
    half = FrameProcessor(config, "metric").process(rgb, depth[::2, ::2], camera, pts=0, frame_index=0)
    assert half.depth_camera == camera.strided(2) and full.depth_camera == camera
    assert half.depth.shape == half.valid.shape == (240, 320)
    # Points come from the strided pixels with the full-resolution rays there (only the edge rule sees
    # other neighbours, so compare where both masks keep a pixel).
    rays = ray_grid(camera).rays[::2, ::2]
    np.testing.assert_allclose(half.points, rays[half.valid] * depth[::2, ::2][half.valid, None], rtol=1e-6)
    both = half.valid & full.valid[::2, ::2]
    assert both.sum() > 0.95 * half.valid.sum()
    np.testing.assert_array_equal(half.colors, rgb[::2, ::2][half.valid])
    # Obstacles: the same nearest distance in every sector within a few centimetres.
    near_full, near_half = full.obstacles.distances_m, half.obstacles.distances_m
    measured = (near_full > 0) & (near_full < full.obstacles.max_range_m)
    np.testing.assert_array_equal(near_half == near_full, ~measured | (near_half == near_full))  # same no-data/free
    assert measured.sum() >= 5
    np.testing.assert_allclose(near_half[measured], near_full[measured], rtol=0.02)


def test_keypoints_lifted_from_strided_depth_keep_their_pixels_and_depth(rgb):
    """Keypoints are detected at full resolution; their 3D points from stride-2 depth match stride 1's."""
    depth = scene_depth(CAMERA)
    config = ProcessingConfig(build_cloud=False, landmarks=None)
    full = FrameProcessor(config, "metric").process(rgb, depth, CAMERA, pts=0, frame_index=0).message
    half = FrameProcessor(config, "metric").process(rgb, depth[::2, ::2], CAMERA, pts=0, frame_index=0).message
    assert len(half.points) > 0.8 * len(full.points)
    x, y, z = half.points.astype(np.float64).T
    u, v = half.pixels.astype(np.float64).T
    assert np.abs(CAMERA.fx * x / z + CAMERA.cx - u).max() < 1e-3  # the exact full-resolution ray
    assert np.abs(CAMERA.fy * y / z + CAMERA.cy - v).max() < 1e-3
    np.testing.assert_allclose(z, true_depth(half.pixels, CAMERA), rtol=0.02)
    common = {tuple(p): i for i, p in enumerate(full.pixels.tolist())}
    pairs = [(common[tuple(p)], j) for j, p in enumerate(half.pixels.tolist()) if tuple(p) in common]
    assert len(pairs) > 0.8 * len(half.points)
    i, j = np.array(pairs).T
    np.testing.assert_allclose(half.points[j], full.points[i], rtol=0.02)
