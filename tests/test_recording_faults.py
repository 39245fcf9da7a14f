"""Recordings never lie: disk full, size and free-space limits, failed bag closes, unsafe ids."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rosbags.rosbag2.storage_mcap as storage_mcap
from gateway_fixtures import camera_for, drones, photo, running_gateway
from mcap.reader import make_reader
from output_fixtures import make_record

from dronedepth.errors import ConfigError
from dronedepth.gateway.outputs import recording
from dronedepth.gateway.outputs.recording import (
    KEYPOINTS_FILE,
    Recorder,
    RecordingLimits,
    session_folders,
)
from dronedepth.gateway.outputs.rosbag import BagSink
from dronedepth.gateway.pipeline import FrameResult
from dronedepth.protocol import DRONE_ID_PATTERN, decode

NO_WATERMARK = RecordingLimits(min_free_bytes=0)
STAMP_NS = 1_700_000_000_000_000_000


def frame(frame_index: int, n: int = 2000) -> FrameResult:
    record = make_record(n=n, frame_index=frame_index, seed=frame_index)
    message = record.message
    return FrameResult(message=message, cloud=None, dense=record.result.dense, depth=record.result.depth)


class Faults:
    """Collects the fault handler's calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, drone_id: str, reason: str) -> None:
        self.calls.append((drone_id, reason))


def read_ply(path: Path) -> np.ndarray[Any, Any]:
    """The vertices of a PLY written by the recorder; fails on a truncated file."""
    data = path.read_bytes()
    header, _, body = data.partition(b"end_header\n")
    count = int(next(line for line in header.split(b"\n") if line.startswith(b"element vertex")).split()[-1])
    assert len(body) == count * recording._PLY_VERTEX.itemsize, f"{path.name} is truncated"
    return np.frombuffer(body, recording._PLY_VERTEX)


def assert_whole(folder: Path) -> int:
    """Every keypoints line decodes, every PLY is complete, no partial file is left; returns the line count."""
    text = (folder / KEYPOINTS_FILE).read_bytes().decode()
    assert text == "" or text.endswith("\n"), "half a line at the end of keypoints.jsonl"
    lines = text.splitlines()
    for line in lines:
        decode(line)
    for ply in folder.glob("cloud_*.ply"):
        assert len(read_ply(ply)) > 0
    assert not list(folder.glob(".*")), "a partial file was left behind"
    return len(lines)


def enospc_after(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Make the recorder's writes fail with ENOSPC once ``budget`` bytes went through, the last one cut short."""
    real_write = os.write
    left = [budget]

    def write(fd: int, data: Any) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        chunk = memoryview(data)[: left[0]]
        left[0] -= len(chunk)
        return real_write(fd, chunk)

    monkeypatch.setattr(recording.os, "write", write)


def test_a_keypoints_line_cut_short_by_a_full_disk_is_removed_and_recording_stops(tmp_path, monkeypatch):
    faults = Faults()
    with Recorder(tmp_path, "d1", cloud_every=0, limits=NO_WATERMARK, on_fault=faults) as recorder:
        recorder.write(frame(0), stamp_ns=STAMP_NS)
        line_bytes = (recorder.path / KEYPOINTS_FILE).stat().st_size
        enospc_after(monkeypatch, line_bytes + line_bytes // 2)  # room for one and a half more lines
        for index in range(1, 5):
            recorder.write(frame(index), stamp_ns=STAMP_NS)
        assert recorder.stopped == "write_failed"
    assert assert_whole(recorder.path) == 2
    assert faults.calls == [("d1", "write_failed")]  # once, not per frame


def test_a_ply_cut_short_by_a_full_disk_never_gets_its_final_name(tmp_path, monkeypatch):
    faults = Faults()
    with Recorder(tmp_path, "d2", cloud_every=1, limits=NO_WATERMARK, on_fault=faults) as recorder:
        recorder.write(frame(0), stamp_ns=STAMP_NS)
        assert len(list(recorder.path.glob("cloud_*.ply"))) == 1
        enospc_after(monkeypatch, 5000)  # the next line fits, its cloud (~30 kB) does not
        recorder.write(frame(1), stamp_ns=STAMP_NS)
        recorder.write(frame(2), stamp_ns=STAMP_NS)
    assert recorder.stopped == "write_failed"
    assert [p.name for p in recorder.path.glob("cloud_*.ply")] == ["cloud_000000.ply"]
    assert assert_whole(recorder.path) == 2
    assert faults.calls == [("d2", "write_failed")]


def test_a_real_full_file_system_leaves_only_whole_files(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        faults = Faults()
        with Recorder(mount, "d3", cloud_every=1, limits=NO_WATERMARK, on_fault=faults) as recorder:
            for index in range(200):  # ~30 kB per frame: far more than 2 MiB
                recorder.write(frame(index), stamp_ns=STAMP_NS)
        assert recorder.stopped == "write_failed"
        assert faults.calls == [("d3", "write_failed")]
        assert assert_whole(recorder.path) > 10
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_recording_stops_below_the_free_space_watermark(tmp_path):
    faults = Faults()
    everything = RecordingLimits(min_free_bytes=2**62)  # more than any disk has free
    with Recorder(tmp_path, "d4", cloud_every=1, limits=everything, on_fault=faults) as recorder:
        recorder.write(frame(0), stamp_ns=STAMP_NS)
        recorder.write(frame(1), stamp_ns=STAMP_NS)
    assert recorder.stopped == "low_disk"
    assert faults.calls == [("d4", "low_disk")]
    assert (recorder.path / KEYPOINTS_FILE).stat().st_size == 0


def test_a_session_stops_at_its_size_limit(tmp_path):
    faults = Faults()
    limits = RecordingLimits(max_bytes=100_000, min_free_bytes=0)
    with Recorder(tmp_path, "d5", cloud_every=1, limits=limits, on_fault=faults) as recorder:
        for index in range(20):
            recorder.write(frame(index), stamp_ns=STAMP_NS)
    assert recorder.stopped == "size_limit"
    assert faults.calls == [("d5", "size_limit")]
    written = sum(p.stat().st_size for p in recorder.path.iterdir())
    assert 50_000 < written <= 100_000
    assert assert_whole(recorder.path) >= 2
    # The next session of the drone starts afresh in its own folder.
    with Recorder(tmp_path, "d5", cloud_every=0, limits=limits) as again:
        again.write(frame(0), stamp_ns=STAMP_NS)
    assert again.stopped is None and len(session_folders(tmp_path, "d5")) == 2


def test_bad_limits_name_the_value():
    with pytest.raises(ConfigError, match="positive number of bytes, got 0"):
        RecordingLimits(max_bytes=0)
    with pytest.raises(ConfigError, match=">= 0, got -1"):
        RecordingLimits(min_free_bytes=-1)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_failed_bag_close_releases_its_file(tmp_path, monkeypatch):
    faults = Faults()
    sink = BagSink(tmp_path, limits=NO_WATERMARK, on_fault=faults)
    before = open_fds()
    sink.write(make_record("d6"))
    assert len(open_fds()) > len(before)

    def disk_full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage_mcap, "write_record", disk_full)
    sink.close_drone("d6")
    assert open_fds() == before
    assert faults.calls == [("d6", "write_failed")]
    sink.close()


def test_a_failed_bag_write_releases_its_file_and_later_frames_are_skipped(tmp_path, monkeypatch):
    faults = Faults()
    sink = BagSink(tmp_path, limits=NO_WATERMARK, on_fault=faults)
    before = open_fds()
    sink.write(make_record("d7"))

    def disk_full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage_mcap, "write_record", disk_full)
    sink.write(make_record("d7", frame_index=1))
    assert open_fds() == before
    monkeypatch.undo()
    sink.write(make_record("d7", frame_index=2))  # no exception, no new bag for this session
    assert faults.calls == [("d7", "write_failed")]
    assert open_fds() == before
    sink.close()


def test_bags_have_zstd_chunks_and_stop_cleanly_at_their_size_limit(tmp_path):
    faults = Faults()
    sink = BagSink(tmp_path, limits=RecordingLimits(max_bytes=200_000, min_free_bytes=0), on_fault=faults)
    for index in range(40):
        sink.write(make_record("d8", n=4000, frame_index=index, seed=index))
    path = sink.bag_path("d8")
    assert path is not None
    sink.close()
    assert faults.calls == [("d8", "size_limit")]
    mcap_file = path / f"{path.name}.mcap"
    assert mcap_file.stat().st_size <= 200_000
    with mcap_file.open("rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        assert {chunk.compression for chunk in summary.chunk_indexes} == {"zstd"}
        frames = sum(1 for _, channel, _ in reader.iter_messages() if channel.topic.endswith("/points"))
    assert 1 <= frames < 40


@pytest.mark.parametrize("drone_id", ["-rf", "--help", "_x", "-"])
def test_ids_that_read_as_options_are_refused(tmp_path, drone_id):
    assert not DRONE_ID_PATTERN.fullmatch(drone_id)
    with pytest.raises(ConfigError, match="starting with a letter or digit"):
        Recorder(tmp_path, drone_id)
    assert list(tmp_path.iterdir()) == []


async def test_the_gateway_stops_a_session_recording_at_its_limit_and_counts_it(tmp_path):
    """--record-max-bytes reaches the recorder and the bag; the stop is counted in /metrics, the drone still served."""
    limit = 20_000
    async with (
        running_gateway(record_dir=tmp_path / "rec", record_bag_dir=tmp_path / "bags", record_max_bytes=limit) as gw,
        drones(1, photo()) as (drone,),
    ):
        await drone.connect(gw.url, camera=camera_for())
        await drone.wait_for(lambda d: len(d.keypoints) >= 6, what="6 results")
        metrics = gw.metrics.render()
    (session,) = session_folders(tmp_path / "rec", str(drone.drone_id))
    recorded = sum(p.stat().st_size for p in session.iterdir())
    assert 0 < recorded <= limit
    assert len((session / "keypoints.jsonl").read_text().splitlines()) < len(drone.keypoints)
    (bag,) = (tmp_path / "bags").glob(f"{drone.drone_id}_*")
    assert sum(p.stat().st_size for p in bag.glob("*.mcap")) <= limit + 8192  # the footer written on close
    assert 'dronedepth_recordings_stopped_total{reason="size_limit"} 2.0' in metrics
