import json
import time

import numpy as np
import open3d as o3d
import pytest
from gateway_fixtures import PhotoTrack, camera_for, drones, photo, running_gateway

from dronedepth.errors import ConfigError
from dronedepth.gateway.outputs.recording import KEYPOINTS_FILE, Recorder, cloud_filename, session_folders
from dronedepth.gateway.outputs.sinks import CaptureClock
from dronedepth.gateway.pipeline import DensePoints, FrameProcessor, FrameResult, ProcessingConfig
from dronedepth.gateway.pointcloud import make_point_cloud
from dronedepth.protocol import DRONE_ID_PATTERN, VIDEO_CLOCK_RATE, CameraMessage, KeypointsMessage, decode

CAMERA = CameraMessage(width=160, height=120, fx=120.0, fy=120.0, cx=79.5, cy=59.5)
STAMP_NS = 1_700_000_000_123_456_789


@pytest.fixture(scope="module")
def results() -> list[FrameResult]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    depth = np.full((120, 160), 2.0, np.float32) + np.linspace(0, 1, 160, dtype=np.float32)
    processor = FrameProcessor(ProcessingConfig(voxel_size=0.05), "metric")
    return [processor.process(rgb, depth, CAMERA, pts=3000 * i, frame_index=10 + i) for i in range(5)]


def test_keypoints_jsonl_and_binary_ply_every_nth_frame(tmp_path, results):
    with Recorder(tmp_path, "drone-7", cloud_every=2) as recorder:
        for i, result in enumerate(results):
            recorder.write(result, stamp_ns=STAMP_NS + i * 100_000_000)
        lines = (recorder.path / KEYPOINTS_FILE).read_text().splitlines()  # readable before close
        assert len(lines) == 5
    assert [json.loads(line)["stamp_ns"] for line in lines] == [STAMP_NS + i * 100_000_000 for i in range(5)]
    decoded = [decode(line) for line in lines]
    assert all(isinstance(m, KeypointsMessage) for m in decoded)
    assert [m.frame_index for m in decoded] == [10, 11, 12, 13, 14]
    np.testing.assert_allclose(decoded[2].points, results[2].message.points, atol=1e-4)
    np.testing.assert_array_equal(decoded[2].descriptors, results[2].message.descriptors)

    assert recorder.path.parent == tmp_path / "drone-7"
    plys = sorted(p.name for p in recorder.path.glob("*.ply"))
    assert (
        plys
        == [cloud_filename(10), cloud_filename(12), cloud_filename(14)]
        == ["cloud_000010.ply", "cloud_000012.ply", "cloud_000014.ply"]
    )
    path = recorder.path / "cloud_000012.ply"
    header = path.read_bytes()[:400]
    assert b"format binary_little_endian" in header
    assert f"comment stamp_ns {STAMP_NS + 200_000_000}\n".encode() in header, "the PLY carries its capture time"
    assert b"comment frame camera_optical" in header
    cloud = o3d.io.read_point_cloud(str(path))
    expected = results[2].cloud
    assert len(cloud.points) == len(expected.points) > 0
    np.testing.assert_allclose(np.asarray(cloud.points), np.asarray(expected.points), atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors), np.asarray(expected.colors), atol=1 / 255)
    assert not list(recorder.path.glob(".*"))  # no partial files left behind


def test_frames_without_a_cloud_get_one_from_their_points(tmp_path, results):
    result = results[0]
    bare = FrameResult(message=result.message, cloud=None, dense=result.dense, depth=result.depth)
    with Recorder(tmp_path, "d1", cloud_every=1) as recorder:
        recorder.write(bare, stamp_ns=STAMP_NS)
    cloud = o3d.io.read_point_cloud(str(recorder.path / "cloud_000010.ply"))
    assert len(cloud.points) == len(result.points)


def test_cloud_every_zero_writes_no_clouds_and_empty_clouds_are_skipped(tmp_path, results):
    with Recorder(tmp_path, "d2", cloud_every=0) as recorder:
        recorder.write(results[0], stamp_ns=STAMP_NS)
    assert not list(recorder.path.glob("*.ply"))
    empty = FrameResult(
        message=results[0].message,
        cloud=make_point_cloud(np.empty((0, 3), np.float32), None),
        dense=DensePoints.of(np.empty((0, 3), np.float32), np.empty((0, 3), np.uint8)),
        depth=results[0].depth,
    )
    with Recorder(tmp_path, "d3") as recorder:
        recorder.write(empty, stamp_ns=STAMP_NS)
    assert not list(recorder.path.glob("*.ply"))


def test_close_flushes_is_idempotent_and_refuses_later_writes(tmp_path, results):
    recorder = Recorder(tmp_path, "d4", cloud_every=0)
    recorder.write(results[0], stamp_ns=STAMP_NS)
    recorder.close()
    recorder.close()
    assert recorder.closed
    assert json.loads((recorder.path / KEYPOINTS_FILE).read_text())["type"] == "keypoints"
    with pytest.raises(ValueError, match="closed"):
        recorder.write(results[1], stamp_ns=STAMP_NS)


def test_every_session_gets_its_own_folder_and_nothing_is_overwritten(tmp_path, results):
    # A reconnect restarts frame numbering: the same frame index must not overwrite the first session's cloud.
    paths = []
    for result in results[:2]:
        with Recorder(tmp_path, "d5", cloud_every=1) as recorder:
            recorder.write(result, stamp_ns=STAMP_NS)
            recorder.write(results[0], stamp_ns=STAMP_NS)
        paths.append(recorder.path)
    assert paths[0] != paths[1]
    assert session_folders(tmp_path, "d5") == sorted(paths)
    for path in paths:
        assert len((path / KEYPOINTS_FILE).read_text().splitlines()) == 2
        assert (path / cloud_filename(results[0].message.frame_index)).exists()


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
        recorder.write(results[0], stamp_ns=STAMP_NS)
    assert recorder.path.parent == tmp_path / drone_id
    assert [p.name for p in tmp_path.iterdir()] == [drone_id]
    assert (recorder.path / KEYPOINTS_FILE).read_text().count("\n") == 1


def test_bad_cloud_every_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cloud_every must be a non-negative integer, got -1"):
        Recorder(tmp_path, "d6", cloud_every=-1)


# --- capture-time stamps ----------------------------------------------------------------------------


def test_capture_clock_keeps_the_drones_spacing_and_never_stamps_after_arrival():
    clock = CaptureClock()
    ticks_per_s = VIDEO_CLOCK_RATE
    # Frames captured 1 s apart on the drone; they arrive 0.30, 0.10 and 0.25 s after capture.
    assert clock.capture_time(0, 100.30) == pytest.approx(100.30)
    assert clock.capture_time(1 * ticks_per_s, 101.10) == pytest.approx(101.10)  # faster: a better epoch
    assert clock.capture_time(2 * ticks_per_s, 102.25) == pytest.approx(102.10)  # not the arrival time
    assert clock.capture_time(0, 100.30) == pytest.approx(100.10), "every stamp uses the best epoch"


class _BackedUpLinkTrack(PhotoTrack):
    """Frames captured 10 ms apart (their pts) that reach the gateway ``1 / fps`` apart, as over a backed-up link."""

    async def recv(self):  # type: ignore[no-untyped-def]
        frame = await super().recv()
        frame.pts = (self.sent - 1) * VIDEO_CLOCK_RATE // 100
        return frame


async def test_recorded_frames_are_stamped_with_the_capture_clock_not_the_arrival(tmp_path):
    records = tmp_path / "records"
    started = time.time()
    async with running_gateway(record_dir=records, record_every=1) as gateway, drones(1, photo(), video=False) as fleet:
        (drone,) = fleet
        drone.track = _BackedUpLinkTrack(photo(), fps=2.0)
        drone.pc.addTrack(drone.track)
        await drone.connect(gateway.url, camera=camera_for())
        await drone.wait_for(lambda d: len(d.keypoints) >= 3, what="3 results")
        await gateway.stop()
    (folder,) = session_folders(records, str(drone.drone_id))
    lines = [json.loads(line) for line in (folder / KEYPOINTS_FILE).read_text().splitlines()]
    assert len(lines) >= 3
    first = lines[0]
    for line in lines[1:]:
        captured_apart = (line["pts"] - first["pts"]) / VIDEO_CLOCK_RATE  # 10 ms per frame
        # Arrivals were 0.5 s per frame apart: stamps that followed them would be off by ~0.49 s per frame.
        assert (line["stamp_ns"] - first["stamp_ns"]) / 1e9 == pytest.approx(captured_apart, abs=0.05)
    assert started <= first["stamp_ns"] / 1e9 <= time.time()
    ply = sorted(folder.glob("cloud_*.ply"))[1]
    stamp_comment = next(x for x in ply.read_bytes()[:400].split(b"\n") if x.startswith(b"comment stamp_ns "))
    frame_index = int(ply.stem.removeprefix("cloud_"))
    assert int(stamp_comment.split()[-1]) == next(x["stamp_ns"] for x in lines if x["frame_index"] == frame_index)
