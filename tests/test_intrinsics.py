"""Intrinsics: OpenCV and ROS calibration files, flags, refusal without them (scaling: test_protocol.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dronedepth.cli import main
from dronedepth.drone.intrinsics import (
    intrinsics_from_values,
    load_intrinsics,
    missing_intrinsics_error,
)
from dronedepth.errors import ConfigError
from dronedepth.protocol import CameraMessage

K = np.array([[900.0, 0.0, 640.5], [0.0, 905.0, 360.25], [0.0, 0.0, 1.0]])


def _opencv_yaml(path: Path, *, dist=(-0.1, 0.01, 0.001, 0.002, 0.0005), size=(1280, 720), model=None) -> Path:
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    storage.write("image_width", size[0])
    storage.write("image_height", size[1])
    storage.write("camera_matrix", K)
    storage.write("distortion_coefficients", np.array([dist], dtype=np.float64))
    if model is not None:
        storage.write("distortion_model", model)
    storage.release()
    return path


ROS_PLUMB_BOB = """\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [520.5, 0.0, 319.5, 0.0, 521.25, 239.5, 0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.1, -0.2, 0.001, -0.002, 0.03]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [520.5, 0, 319.5, 0, 0, 521.25, 239.5, 0, 0, 0, 1, 0]
"""


def test_opencv_yaml_written_by_filestorage(tmp_path):
    path = _opencv_yaml(tmp_path / "calib.yaml")
    assert "!!opencv-matrix" in path.read_text()
    camera = load_intrinsics(path)
    assert camera == CameraMessage(
        width=1280, height=720, fx=900.0, fy=905.0, cx=640.5, cy=360.25, distortion=(-0.1, 0.01, 0.001, 0.002, 0.0005)
    )


def test_opencv_yaml_with_the_old_yaml_1_0_header(tmp_path):
    path = tmp_path / "old.yml"
    path.write_text(
        "%YAML:1.0\n---\nimage_width: 640\nimage_height: 480\n"
        "camera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n"
        "   data: [ 500., 0., 320., 0., 500., 240., 0., 0., 1. ]\n"
        "distortion_coefficients: !!opencv-matrix\n   rows: 5\n   cols: 1\n   dt: d\n"
        "   data: [ 0., 0., 0., 0., 0. ]\n"
    )
    camera = load_intrinsics(path)
    assert (camera.width, camera.height, camera.fx, camera.cx, camera.cy) == (640, 480, 500.0, 320.0, 240.0)
    assert camera.distortion == ()  # all zeros: no distortion


def test_opencv_fisheye_by_model_name_or_override(tmp_path):
    path = _opencv_yaml(tmp_path / "fish.yaml", dist=(0.01, -0.002, 0.0003, -0.00004), model="fisheye")
    assert load_intrinsics(path).model == "fisheye"
    plain = _opencv_yaml(tmp_path / "plain.yaml", dist=(0.01, -0.002, 0.0003, -0.00004))
    assert load_intrinsics(plain).model == "pinhole"
    assert load_intrinsics(plain, model="fisheye").model == "fisheye"


def test_opencv_xml_is_read_too(tmp_path):
    path = tmp_path / "calib.xml"
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    storage.write("image_width", 320)
    storage.write("image_height", 240)
    storage.write("camera_matrix", np.array([[250.0, 0, 160], [0, 250.0, 120], [0, 0, 1]]))
    storage.release()
    camera = load_intrinsics(path)
    assert (camera.width, camera.fx, camera.distortion) == (320, 250.0, ())


def test_ros_camera_info_plumb_bob(tmp_path):
    path = tmp_path / "camera_info.yaml"
    path.write_text(ROS_PLUMB_BOB)
    camera = load_intrinsics(path)
    assert camera == CameraMessage(
        width=640, height=480, fx=520.5, fy=521.25, cx=319.5, cy=239.5, distortion=(0.1, -0.2, 0.001, -0.002, 0.03)
    )


def test_ros_camera_info_equidistant_is_fisheye(tmp_path):
    path = tmp_path / "fisheye.yaml"
    text = ROS_PLUMB_BOB.replace("plumb_bob", "equidistant").replace(
        "[0.1, -0.2, 0.001, -0.002, 0.03]", "[0.05, -0.01, 0.002, -0.0005]"
    )
    path.write_text(text)
    camera = load_intrinsics(path)
    assert camera.model == "fisheye"
    assert camera.distortion == (0.05, -0.01, 0.002, -0.0005)


def test_ros_rational_polynomial_and_dumped_camera_info_message(tmp_path):
    rational = tmp_path / "rational.yaml"
    rational.write_text(
        ROS_PLUMB_BOB.replace("plumb_bob", "rational_polynomial").replace(
            "[0.1, -0.2, 0.001, -0.002, 0.03]", "[0.1, -0.2, 0.001, -0.002, 0.03, 0.1, 0.01, 0.001]"
        )
    )
    assert len(load_intrinsics(rational).distortion) == 8
    message = tmp_path / "message.yaml"
    message.write_text(
        "header: {frame_id: camera}\nheight: 480\nwidth: 640\ndistortion_model: plumb_bob\n"
        "d: [0.0, 0.0, 0.0, 0.0, 0.0]\nk: [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]\n"
    )
    camera = load_intrinsics(message)
    assert (camera.width, camera.height, camera.fx, camera.distortion) == (640, 480, 500.0, ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ROS_PLUMB_BOB.replace("image_width: 640\n", ""), "image_width must be a positive integer, got None"),
        (ROS_PLUMB_BOB.replace("distortion_model: plumb_bob", "distortion_model: mystery"), "mystery"),
        (
            ROS_PLUMB_BOB.replace("520.5, 0.0, 319.5", "-520.5, 0.0, 319.5"),
            "focal lengths must be between 2.0 and 64000 pixels",
        ),
        (ROS_PLUMB_BOB.replace("319.5, 0.0, 521.25, 239.5", "919.5, 0.0, 521.25, 239.5"), "principal point"),
        (ROS_PLUMB_BOB.replace("0.0, 0.0, 1.0]", "0.0, 0.0, 2.0]"), "is not a camera matrix"),
        ("just: text\n", "neither a ROS camera_info YAML nor an OpenCV|no camera_matrix"),
    ],
)
def test_bad_ros_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_intrinsics(path)
    assert str(path) in str(info.value)


def test_too_many_distortion_coefficients_are_refused_unless_zero(tmp_path):
    fourteen = (0.1, -0.2, 0.001, -0.002, 0.03, 0.1, 0.01, 0.001, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert len(load_intrinsics(_opencv_yaml(tmp_path / "a.yaml", dist=fourteen)).distortion) == 8
    tilted = (*fourteen[:12], 0.01, 0.02)
    with pytest.raises(ConfigError, match="at most 8 distortion coefficients"):
        load_intrinsics(_opencv_yaml(tmp_path / "b.yaml", dist=tilted))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_intrinsics(tmp_path / "nope.yaml")


def test_opencv_file_without_image_size_is_refused(tmp_path):
    path = tmp_path / "nosize.yaml"
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    storage.write("camera_matrix", K)
    storage.release()
    with pytest.raises(ConfigError, match="image_width and image_height are required"):
        load_intrinsics(path)


def test_values_are_validated_and_short_distortion_padded():
    camera = intrinsics_from_values(width=640, height=480, fx=500, fy=500, cx=320, cy=240, distortion=(0.1, 0.01))
    assert camera.distortion == (0.1, 0.01, 0.0, 0.0)
    with pytest.raises(
        ConfigError, match=r"--fx/--fy/--cx/--cy: focal lengths must be between 2.0 and 64000 pixels .* got fx=0"
    ):
        intrinsics_from_values(width=640, height=480, fx=0, fy=500, cx=320, cy=240, where="--fx/--fy/--cx/--cy")
    with pytest.raises(ConfigError, match="fisheye camera takes at most 4"):
        intrinsics_from_values(
            width=640, height=480, fx=500, fy=500, cx=320, cy=240, distortion=(0.1,) * 5, model="fisheye"
        )


def test_refusal_text_says_how_to_give_intrinsics():
    error = missing_intrinsics_error("/dev/video0", 1280, 720)
    text = str(error)
    for needle in ("no camera intrinsics", "wrong geometry", "--intrinsics FILE", "--fx FX --fy FY --cx CX --cy CY"):
        assert needle in text
    assert "1280x720" in text


def test_cli_refuses_to_start_without_intrinsics_with_exit_code_2(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((48, 64, 3), np.uint8))
    code = main(["drone", "--gateway", "http://127.0.0.1:9", "--token", "t", "--source", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "no camera intrinsics" in err and "--intrinsics FILE" in err
