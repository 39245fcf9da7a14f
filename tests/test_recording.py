import json

import numpy as np
import open3d as o3d
import pytest
from dronedepth.gateway.outputs.recording import KEYPOINTS_FILE, Recorder, cloud_filename
from dronedepth.gateway.pipeline import FrameProcessor, FrameResult, ProcessingConfig
from dronedepth.gateway.pointcloud import make_point_cloud

from dronedepth.errors import ConfigError
from dronedepth.protocol import DRONE_ID_PATTERN, CameraMessage, KeypointsMessage, decode

CAMERA = CameraMessage(width=160, height=120, fx=120.0, fy=120.0, cx=79.5, cy=59.5)


@pytest.fixture(scope="module")
def results() -> list[FrameResult]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    depth = np.full((120, 160), 2.0, np.float32) + np.linspace(0, 1, 160, dtype=np.float32)
    processor = FrameProcessor(ProcessingConfig(voxel_size=0.05), "metric")
    return [processor.process(rgb, depth, CAMERA, pts=3000 * i, frame_index=10 + i) for i in range(5)]


def test_keypoints_jsonl_and_binary_ply_every_nth_frame(tmp_path, results):
    with Recorder(tmp_path, "drone-7", cloud_every=2) as recorder:
        for result in results:
            recorder.write(result)
        lines = (tmp_path / "drone-7" / KEYPOINTS_FILE).read_text().splitlines()  # readable before close
        assert len(lines) == 5
    decoded = [decode(line) for line in lines]
    assert all(isinstance(m, KeypointsMessage) for m in decoded)
    assert [m.frame_index for m in decoded] == [10, 11, 12, 13, 14]
    np.testing.assert_allclose(decoded[2].points, results[2].message.points, atol=1e-4)
    np.testing.assert_array_equal(decoded[2].descriptors, results[2].message.descriptors)

    plys = sorted(p.name for p in (tmp_path / "drone-7").glob("*.ply"))
    assert (
        plys
        == [cloud_filename(10), cloud_filename(12), cloud_filename(14)]
        == ["cloud_000010.ply", "cloud_000012.ply", "cloud_000014.ply"]
    )
    path = tmp_path / "drone-7" / "cloud_000012.ply"
    assert b"format binary_little_endian" in path.read_bytes()[:200]
    cloud = o3d.io.read_point_cloud(str(path))
    expected = results[2].cloud
    assert len(cloud.points) == len(expected.points) > 0
    np.testing.assert_allclose(np.asarray(cloud.points), np.asarray(expected.points), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors), np.asarray(expected.colors), atol=1 / 255)
    assert not list((tmp_path / "drone-7").glob(".*"))  # no partial files left behind


def test_frames_without_a_cloud_get_one_from_their_points(tmp_path, results):
    result = results[0]
    bare = FrameResult(
        message=result.message, cloud=None, points=result.points, colors=result.colors, depth=result.depth
    )
    with Recorder(tmp_path, "d1", cloud_every=1) as recorder:
        recorder.write(bare)
    cloud = o3d.io.read_point_cloud(str(tmp_path / "d1" / "cloud_000010.ply"))
    assert len(cloud.points) == len(result.points)


def test_cloud_every_zero_writes_no_clouds_and_empty_clouds_are_skipped(tmp_path, results):
    with Recorder(tmp_path, "d2", cloud_every=0) as recorder:
        recorder.write(results[0])
    assert not list((tmp_path / "d2").glob("*.ply"))
    empty = FrameResult(
        message=results[0].message,
        cloud=make_point_cloud(np.empty((0, 3), np.float32), None),
        points=np.empty((0, 3), np.float32),
        colors=np.empty((0, 3), np.uint8),
        depth=results[0].depth,
    )
    with Recorder(tmp_path, "d3") as recorder:
        recorder.write(empty)
    assert not list((tmp_path / "d3").glob("*.ply"))


def test_close_flushes_is_idempotent_and_refuses_later_writes(tmp_path, results):
    recorder = Recorder(tmp_path, "d4", cloud_every=0)
    recorder.write(results[0])
    recorder.close()
    recorder.close()
    assert recorder.closed
    assert json.loads((tmp_path / "d4" / KEYPOINTS_FILE).read_text())["type"] == "keypoints"
    with pytest.raises(ValueError, match="closed"):
        recorder.write(results[1])


def test_reopening_appends(tmp_path, results):
    for result in results[:2]:
        with Recorder(tmp_path, "d5", cloud_every=0) as recorder:
            recorder.write(result)
    assert len((tmp_path / "d5" / KEYPOINTS_FILE).read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "drone_id", ["", ".", "..", "../etc", "a/b", ".hidden", "a.b", "x" * 65, "a b", "a\\b", "-rf", "--", "_x", "-x"]
)
def test_drone_ids_that_are_not_safe_folder_names_are_refused(tmp_path, drone_id):
    with pytest.raises(ConfigError, match="cannot name a recording folder"):
        Recorder(tmp_path, drone_id)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("drone_id", ["x_", "rf-", "7", "0--", "drone-1a2b3c4d", "x" * 64])
def test_every_id_signalling_accepts_can_be_recorded(tmp_path, results, drone_id):
    assert DRONE_ID_PATTERN.fullmatch(drone_id)
    with Recorder(tmp_path, drone_id, cloud_every=0) as recorder:
        recorder.write(results[0])
    assert recorder.path == tmp_path / drone_id
    assert [p.name for p in tmp_path.iterdir()] == [drone_id]
    assert (tmp_path / drone_id / KEYPOINTS_FILE).read_text().count("\n") == 1


def test_bad_cloud_every_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cloud_every must be a non-negative integer, got -1"):
        Recorder(tmp_path, "d6", cloud_every=-1)
