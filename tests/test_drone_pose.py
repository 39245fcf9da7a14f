"""The drone's pose sources (TUM files, the synthetic scene) and the ``pose`` messages the client sends."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from drone_fixtures import FakeGateway

from dronedepth.drone.client import DroneClient, DroneConfig
from dronedepth.drone.sources import ImageFolderSource, SyntheticSource
from dronedepth.drone.trajectory import TumPoseSource, read_tum
from dronedepth.errors import ConfigError
from dronedepth.frames import rpy_from_quaternion
from dronedepth.protocol import CameraMessage
from dronedepth.samples import sample_photos


def write_tum(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tum_time_is_relative_to_the_first_line_and_interpolated(tmp_path: Path) -> None:
    s = math.sqrt(0.5)
    file = write_tum(
        tmp_path / "t.txt",
        [
            "# timestamp tx ty tz qx qy qz qw",
            "1700000000.00 0 0 10 0 0 0 1",
            "",
            f"1700000000.10 1 0 10 0 0 {s} {s}",
        ],
    )
    source = TumPoseSource(file, fps=20.0)
    (mid,) = source.poses_for_frame(1, capture_time=123.4)  # frame 1 at 20 fps: 0.05 s after the first line
    assert mid.capture_time == 123.4 and mid.convention == "enu_flu"
    np.testing.assert_allclose(mid.world_from_body.translation, [0.5, 0, 10], atol=1e-5)  # epoch t: µs precision
    assert rpy_from_quaternion(mid.world_from_body.rotation)[2] == pytest.approx(math.pi / 4, abs=1e-5)
    (ahead,) = source.poses_for_frame(3, 0.0)  # 0.15 s: 0.05 s past the last pose, within the 0.1 s gap
    np.testing.assert_allclose(ahead.world_from_body.translation, [1.5, 0, 10], atol=1e-5)
    assert source.poses_for_frame(5, 0.0) == ()  # 0.25 s: 0.15 s past the last pose, beyond the gap


def test_a_ned_tum_file_is_converted_to_enu(tmp_path: Path) -> None:
    s = math.sqrt(0.5)
    file = write_tum(tmp_path / "ned.txt", [f"0 3 4 -20 0 0 {s} {s}", f"0.05 3 4 -20 0 0 {s} {s}"])
    trajectory = read_tum(file, ned=True)
    pose = trajectory.lookup(0.0).pose
    assert pose is not None
    np.testing.assert_allclose(pose.world_from_body.translation, [4, 3, 20])
    np.testing.assert_allclose(pose.world_from_body.rotate([1, 0, 0]), [1, 0, 0], atol=1e-12)  # facing east


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["0 0 0 0 0 0 0"], r"t\.txt:1: a TUM line has 8 numbers"),
        (["0 0 0 0 0 0 0 x"], r"t\.txt:1: could not convert"),
        (["0 0 nan 0 0 0 0 1"], r"t\.txt:1: every value must be finite"),
        (["0 0 0 0 0 0 0 1", "# c", "1 0 0 0 0 0 0 2"], r"t\.txt:3: .*norm 2"),
        (["1 0 0 0 0 0 0 1", "0.5 0 0 0 0 0 0 1"], r"t\.txt:2: .*goes backwards"),
        (["# only a comment"], "holds no poses"),
    ],
)
def test_a_bad_tum_file_names_its_line(tmp_path: Path, lines: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_tum(write_tum(tmp_path / "t.txt", lines))


def test_synthetic_poses_agree_with_the_rendered_geometry() -> None:
    source = SyntheticSource(320, 240, fps=10.0)
    index = 37
    world_from_camera = source.world_from_body(index) @ source.intrinsics.body_from_camera  # type: ignore[union-attr]
    # The renderer puts a ground pixel with ray x/z = r at forward distance d on the checker cell
    # (floor(d·r + right), floor(d + forward)) of the ground 1.6 m below: the pose must map it to that spot.
    right, forward = source._camera_offset(index)
    d, r = 7.3, 0.21
    ground = world_from_camera.apply([d * r, source.CAMERA_HEIGHT_M, d])
    np.testing.assert_allclose(ground, [forward + d, -(right + d * r), 0.0], atol=1e-12)
    (pose,) = source.poses_for_frame(index, 5.0)
    assert pose.height_above_ground_m == source.CAMERA_HEIGHT_M and pose.capture_time == 5.0
    assert pose.velocity_m_s is not None and pose.velocity_m_s[0] == source.SPEED_M_S
    fronts = source.box_fronts(0.0, 2 * source.PERIOD_M)
    assert len(fronts) == 14 and fronts == sorted(fronts)
    assert all(f.y_min < f.y_max and f.top > 0 for f in fronts)


async def test_the_client_sends_each_frames_exact_synthetic_pose_at_its_pts() -> None:
    async with FakeGateway() as gw:
        source = SyntheticSource(320, 240, fps=10.0)
        config = DroneConfig(gateway=gw.url, token=gw.token, fps=10.0, max_frames=8, pose="synthetic")
        client = DroneClient(config, source=source)
        summary = await client.run()
    # One pose per frame, and one for the end-of-stream repeat of the last frame (1 ms later, same pose).
    assert summary.frames_sent == 8 and client.poses_sent == 9
    assert len(gw.poses) == 9
    stamps = [pose.pts for pose in gw.poses]
    assert stamps == sorted(stamps) and stamps[0] == 0 and all(s % 90 == 0 for s in stamps)
    assert stamps[-1] == stamps[-2] + 90
    received = set(gw.received_pts[0])
    assert all(min(abs(s - p) for p in received) <= 1 for s in stamps[:-2])  # the last frame may still be buffered
    for index, pose in enumerate(gw.poses):
        np.testing.assert_allclose(pose.position, source.world_from_body(min(index, 7)).translation, atol=1e-9)
        assert pose.orientation == (0.0, 0.0, 0.0, 1.0) and pose.frame_id == "map"


async def test_the_client_sends_tum_poses_for_an_image_folder(tmp_path: Path) -> None:
    fps = 10.0
    lines = [f"{100 + k * 0.05:.2f} {k * 0.05:.2f} 0 0 0 0 0 1" for k in range(9)]  # 0.4 s: frames 0..4
    file = write_tum(tmp_path / "flight.txt", lines)
    photo = sample_photos()[0]
    source = ImageFolderSource([photo], width=320)
    w, h = source.native_width, source.native_height
    camera = CameraMessage(w, h, float(w), float(w), w / 2, h / 2)
    async with FakeGateway() as gw:
        config = DroneConfig(
            gateway=gw.url, token=gw.token, source=str(photo), camera=camera, fps=fps, max_frames=8, pose=str(file)
        )
        client = DroneClient(config, source=source)
        await client.run()
    # Frame n is at n / fps = 0.1·n s of the trajectory: frames 0..4 are inside it (0..0.4 s), frame 5 is
    # 0.1 s past its end (extrapolated, within the gap), frames 6 and 7 are further: no pose.
    xs = [pose.position[0] for pose in gw.poses]
    assert xs == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(p.pts % 90 == 0 for p in gw.poses) and gw.poses[0].pts == 0
    assert [p.pts for p in gw.poses] == sorted(p.pts for p in gw.poses)


def test_pose_synthetic_needs_the_synthetic_source() -> None:
    with pytest.raises(ConfigError, match="--pose synthetic needs --source synthetic"):
        DroneConfig(gateway="http://127.0.0.1:1", token="t", source="photos/", pose="synthetic")
