"""Frame sources: synthetic, video file, image folder, camera (refusal without a device), and open_source."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from dronedepth.drone.sources import (
    CameraSource,
    ImageFolderSource,
    SyntheticSource,
    VideoFileSource,
    open_source,
    output_size,
)
from dronedepth.errors import ConfigError
from dronedepth.samples import SAMPLE_DIR, sample_photos

DATA = SAMPLE_DIR


def _check_frame(frame, width: int, height: int) -> None:
    assert frame is not None
    assert frame.rgb.dtype == np.uint8
    assert frame.rgb.shape == (height, width, 3)
    assert frame.rgb.flags.c_contiguous


def _write_video(path: Path, frames: int = 6, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    """An MJPG .avi whose frame i is a flat colour (i*40, 255-i*40, 128) in BGR."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    written = []
    for i in range(frames):
        bgr = np.zeros((size[1], size[0], 3), np.uint8)
        bgr[:] = (i * 40, 255 - i * 40, 128)
        writer.write(bgr)
        written.append(bgr)
    writer.release()
    return written


# -- output_size ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("native", "requested", "expected"),
    [
        ((640, 480), (None, None), (640, 480)),
        ((640, 480), (320, 240), (320, 240)),
        ((640, 480), (320, None), (320, 240)),
        ((1280, 720), (None, 240), (426, 240)),
        ((2048, 1362), (640, None), (640, 426)),
        ((640, 480), (100, 300), (100, 300)),
    ],
)
def test_output_size(native, requested, expected):
    assert output_size(*native, *requested) == expected


# -- synthetic -----------------------------------------------------------------------------------------------


def test_synthetic_frames_have_the_requested_size_and_known_intrinsics():
    with SyntheticSource(320, 240, fps=10) as source:
        assert (source.width, source.height) == (320, 240)
        camera = source.intrinsics
        assert camera is not None and (camera.width, camera.height) == (320, 240)
        assert camera.fx == camera.fy > 0 and camera.distortion == ()
        assert (camera.cx, camera.cy) == (159.5, 119.5)
        first, second = source.read(), source.read()
        _check_frame(first, 320, 240)
        assert second.capture_time >= first.capture_time
        assert not np.array_equal(first.rgb, second.rgb), "the scene must move"


def test_synthetic_is_deterministic_and_textured():
    a, b = SyntheticSource(320, 240, fps=10), SyntheticSource(320, 240, fps=10)
    frames_a = [a.read().rgb for _ in range(3)]
    frames_b = [b.read().rgb for _ in range(3)]
    for x, y in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(SyntheticSource(320, 240, seed=1).render(0), frames_a[0])
    gray = cv2.cvtColor(frames_a[0], cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=500, qualityLevel=0.01, minDistance=5)
    assert corners is not None and len(corners) >= 100, "keypoint detectors must find features"
    orb = cv2.ORB_create(500).detect(gray, None)
    assert len(orb) >= 100


def test_synthetic_depth_cues_are_consistent_with_its_intrinsics():
    source = SyntheticSource(320, 240)
    rgb = source.render(0)
    # Sky above the horizon (bluish, bright), ground below it (darker, less blue).
    sky, ground = rgb[5].astype(float).mean(axis=0), rgb[-5].astype(float).mean(axis=0)
    assert sky[2] > sky[0] and sky.mean() > ground.mean()
    # The horizon is the row of the principal point: ground pixels only below it.
    assert source.intrinsics is not None
    assert source._ground[: int(source.intrinsics.cy)].sum() == 0


def test_synthetic_resized_output_keeps_native_intrinsics():
    source = SyntheticSource(640, 480)
    source.set_output_size(320, None)
    _check_frame(source.read(), 320, 240)
    assert source.intrinsics is not None and source.intrinsics.width == 640


@pytest.mark.parametrize("kwargs", [{"fps": 0}, {"hfov_deg": 5}])
def test_synthetic_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        SyntheticSource(320, 240, **kwargs)


# -- video file ----------------------------------------------------------------------------------------------


def test_video_file_plays_frames_in_order_then_ends(tmp_path):
    path = tmp_path / "clip.avi"
    written = _write_video(path, frames=5)
    with VideoFileSource(path) as source:
        assert (source.native_width, source.native_height) == (160, 120)
        assert source.fps == pytest.approx(10.0)
        frames = list(source)
    assert len(frames) == 5
    for frame, bgr in zip(frames, written, strict=True):
        _check_frame(frame, 160, 120)
        expected_rgb = bgr[0, 0, ::-1].astype(int)
        assert np.abs(frame.rgb.reshape(-1, 3).mean(axis=0) - expected_rgb).max() < 12  # MJPG is lossy


def test_video_file_resizes_and_loops(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, frames=3)
    with VideoFileSource(path, width=80, loop=True) as source:
        assert (source.width, source.height) == (80, 60)
        frames = [source.read() for _ in range(7)]
    for frame in frames:
        _check_frame(frame, 80, 60)
    np.testing.assert_array_equal(frames[0].rgb, frames[3].rgb)


def test_video_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        VideoFileSource(tmp_path / "missing.avi")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ConfigError, match=r"could not decode .*junk\.avi"):
        VideoFileSource(junk)


# -- image folder --------------------------------------------------------------------------------------------


def test_image_folder_of_test_photos_loops_at_the_requested_size():
    photos = sample_photos()
    with ImageFolderSource(DATA, width=320, height=240) as source:
        assert source.files == photos
        frames = [source.read() for _ in range(len(photos) + 1)]
    for frame in frames:
        _check_frame(frame, 320, 240)
    np.testing.assert_array_equal(frames[0].rgb, frames[len(photos)].rgb)
    assert not np.array_equal(frames[0].rgb, frames[1].rgb)


def test_image_folder_is_sorted_by_name_and_sends_one_size(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "b.png"), np.full((100, 200, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((60, 80, 3), 50, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = ImageFolderSource(tmp_path, width=40)
    assert [p.name for p in source.files] == ["a.png", "b.png"]
    assert (source.native_width, source.native_height, source.width, source.height) == (80, 60, 40, 30)
    with caplog.at_level(logging.WARNING, logger="dronedepth.drone.sources"):
        a, b, _, b_again = source.read(), source.read(), source.read(), source.read()
    for frame in (a, b, b_again):
        _check_frame(frame, 40, 30)
    assert a.rgb.mean() == pytest.approx(50, abs=1) and b.rgb.mean() == pytest.approx(200, abs=1)
    assert caplog.text.count("another aspect ratio") == 1, "warned once per image"


def test_image_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no images"):
        ImageFolderSource(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderSource(tmp_path / "nope")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="could not read image"):
        ImageFolderSource(tmp_path)


# -- camera --------------------------------------------------------------------------------------------------


def test_camera_that_does_not_exist_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"could not open camera 97: no such device.*--source /dev/videoN"):
        CameraSource(97)
    with pytest.raises(ConfigError, match="could not open camera '/dev/video97'"):
        open_source("/dev/video97")


# -- open_source ---------------------------------------------------------------------------------------------


def test_open_source_picks_the_kind(tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(video, frames=2)
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.zeros((30, 40, 3), np.uint8))
    assert isinstance(open_source("synthetic", width=64, height=48), SyntheticSource)
    assert isinstance(open_source(str(video)), VideoFileSource)
    assert isinstance(open_source(str(tmp_path)), ImageFolderSource)
    single = open_source(str(image))
    assert isinstance(single, ImageFolderSource) and (single.width, single.height) == (40, 30)
    with pytest.raises(ConfigError, match=r"--source 'nowhere' is not 'synthetic', a camera index"):
        open_source("nowhere")


def test_sizes_are_validated():
    with pytest.raises(ConfigError, match="--width must be between 2 and 8192"):
        SyntheticSource(1, 240)
    source = SyntheticSource(64, 48)
    with pytest.raises(ConfigError, match="--height"):
        source.set_output_size(64, 0)
