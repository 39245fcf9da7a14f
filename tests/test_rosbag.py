"""rosbag2 (MCAP) recording, read back with an independent reader: the ``mcap`` + ``mcap_ros2`` packages."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from mcap.exceptions import EndOfFile
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap_ros2.decoder import DecoderFactory
from output_fixtures import make_record

from dronedepth.gateway.outputs.rosbag import BagSink, RosEncoder, camera_info_fields, ros_name
from dronedepth.protocol import CameraMessage, Scale, ScaleCheck

REPO = Path(__file__).resolve().parents[1]
NS = "drone_7"  # ros_name("drone-7")
TOPICS = {
    f"/{NS}/camera_info": "sensor_msgs/msg/CameraInfo",
    f"/{NS}/image/compressed": "sensor_msgs/msg/CompressedImage",
    f"/{NS}/depth/camera_info": "sensor_msgs/msg/CameraInfo",
    f"/{NS}/depth/image": "sensor_msgs/msg/Image",
    f"/{NS}/points": "sensor_msgs/msg/PointCloud2",
    f"/{NS}/keypoints": "sensor_msgs/msg/PointCloud2",
}
_FORMATS = {7: "<f4"}  # PointField.FLOAT32


def read_bag(bag: Path) -> dict[str, list[tuple[int, str, Any]]]:
    """topic → [(log_time, schema name, decoded message)] from the bag's one MCAP file."""
    (mcap_path,) = bag.glob("*.mcap")
    out: dict[str, list[tuple[int, str, Any]]] = defaultdict(list)
    with mcap_path.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            assert channel.message_encoding == "cdr" and schema is not None and schema.encoding == "ros2msg"
            out[channel.topic].append((message.log_time, schema.name, decoded))
    return dict(out)


def read_prefix(mcap_path: Path) -> dict[str, list[Any]]:
    """A recovering reader for a file whose writer was killed: every message up to where it ends.

    Streams records (no index, no footer needed); stops at the first record or
    chunk that the end of the file cuts short.
    """
    factory = DecoderFactory()
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    out: dict[str, list[Any]] = defaultdict(list)
    with mcap_path.open("rb") as f:
        try:
            for record in StreamReader(f, emit_chunks=True).records:
                if isinstance(record, Chunk):
                    try:
                        inner = breakup_chunk(record)  # zstd-compressed chunks
                    except Exception:
                        break  # the writer died while writing this chunk
                else:
                    inner = [record]
                for item in inner:
                    if isinstance(item, Schema):
                        schemas[item.id] = item
                    elif isinstance(item, Channel):
                        channels[item.id] = item
                    elif isinstance(item, Message):
                        channel = channels[item.channel_id]
                        decoder = factory.decoder_for(channel.message_encoding, schemas[channel.schema_id])
                        assert decoder is not None
                        out[channel.topic].append(decoder(item.data))
        except (EndOfFile, struct.error):
            pass  # the file ends inside a record
    return dict(out)


def cloud_array(msg: Any) -> np.ndarray:
    """A PointCloud2 as a numpy structured array, its dtype built from the message's own fields."""
    dtype = np.dtype(
        {
            "names": [f.name for f in msg.fields],
            "formats": [_FORMATS[f.datatype] for f in msg.fields],
            "offsets": [f.offset for f in msg.fields],
            "itemsize": msg.point_step,
        }
    )
    assert not msg.is_bigendian and msg.height == 1 and msg.row_step == msg.point_step * msg.width
    return np.frombuffer(bytes(msg.data), dtype=dtype, count=msg.width)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    value = packed.view(np.uint32)
    return np.column_stack([(value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF]).astype(np.uint8)


def stamp_of(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture
def metric_bag(tmp_path: Path) -> tuple[Path, list[Any]]:
    # Depth at stride 2, as the default export serves it: a 32x24 grid of the 64x48 frames.
    records = [make_record("drone-7", frame_index=i, seed=i, axes="seed", depth_stride=2) for i in range(3)]
    sink = BagSink(tmp_path)
    for record in records:
        sink.write(record)
    bag = sink.bag_path("drone-7")
    assert bag is not None
    sink.close()
    sink.close()  # idempotent
    return bag, records


def test_every_topic_has_its_type_frame_and_capture_stamp(metric_bag: tuple[Path, list[Any]]) -> None:
    bag, records = metric_bag
    assert bag.name.startswith("drone-7_") and (bag / "metadata.yaml").exists()
    topics = read_bag(bag)
    (mount,) = topics.pop("/tf_static")  # the camera mount, once: its contents are checked in test_rosbag_tf.py
    assert mount[:2] == (records[0].stamp_ns, "tf2_msgs/msg/TFMessage")
    assert {t: v[0][1] for t, v in topics.items()} == TOPICS
    for topic, messages in topics.items():
        assert len(messages) == 3, topic
        for (log_time, _, msg), record in zip(messages, records, strict=True):
            assert msg.header.frame_id == f"{NS}/camera_optical_frame"
            assert stamp_of(msg) == record.stamp_ns == log_time
    metadata = (bag / "metadata.yaml").read_text()
    assert "dronedepth.depth_kind: metric" in metadata and "storage_identifier: mcap" in metadata


def test_points_are_the_frames_points_in_the_optical_frame(metric_bag: tuple[Path, list[Any]]) -> None:
    bag, records = metric_bag
    for (_, _, msg), record in zip(read_bag(bag)[f"/{NS}/points"], records, strict=True):
        assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
            ("x", 0, 7, 1),
            ("y", 4, 7, 1),
            ("z", 8, 7, 1),
            ("rgb", 12, 7, 1),
        ]
        assert msg.point_step == 16 and msg.is_dense
        cloud = cloud_array(msg)
        xyz = np.column_stack([cloud["x"], cloud["y"], cloud["z"]])
        # The gateway ran with --axes seed (y up on the wire): the bag holds the optical points (y down).
        np.testing.assert_array_equal(xyz, record.result.points)
        assert (xyz[:, 2] > 0).all(), "optical z is forward"
        np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), record.result.colors)
        assert not (cloud["rgb"].view(np.uint32) >> 24).any(), "the top byte of packed rgb is 0"


def test_keypoints_carry_xyz_score_and_pixel(metric_bag: tuple[Path, list[Any]]) -> None:
    bag, records = metric_bag
    for (_, _, msg), record in zip(read_bag(bag)[f"/{NS}/keypoints"], records, strict=True):
        assert [f.name for f in msg.fields] == ["x", "y", "z", "score", "u", "v"] and msg.point_step == 24
        cloud = cloud_array(msg)
        np.testing.assert_array_equal(np.column_stack([cloud["x"], cloud["y"], cloud["z"]]), record.message.points)
        np.testing.assert_array_equal(cloud["score"], record.message.scores)
        np.testing.assert_array_equal(np.column_stack([cloud["u"], cloud["v"]]), record.message.pixels)


def test_depth_image_is_32fc1_metres(metric_bag: tuple[Path, list[Any]]) -> None:
    bag, records = metric_bag
    for (_, _, msg), record in zip(read_bag(bag)[f"/{NS}/depth/image"], records, strict=True):
        assert (msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian) == ("32FC1", 32, 24, 128, 0)
        depth = np.frombuffer(bytes(msg.data), "<f4").reshape(24, 32)
        np.testing.assert_array_equal(depth, record.result.depth)


@pytest.mark.parametrize("depth_kind", ["metric", "relative"])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_each_image_has_the_camera_info_of_its_size(tmp_path: Path, stride: int, depth_kind: str) -> None:
    """The frame and the depth grid each beside their own camera_info: sizes equal, K the grid's (strided) one."""
    record = make_record("drone-7", width=66, height=50, depth_stride=stride, depth_kind=depth_kind)
    sink = BagSink(tmp_path)
    sink.write(record)
    bag = sink.bag_path("drone-7")
    sink.close()
    assert bag is not None
    topics = read_bag(bag)
    depth_ns = "depth" if depth_kind == "metric" else "depth_relative"
    (_, _, info) = topics[f"/{NS}/camera_info"][0]
    (_, _, jpeg) = topics[f"/{NS}/image/compressed"][0]
    (_, _, depth_info) = topics[f"/{NS}/{depth_ns}/camera_info"][0]
    (_, _, depth) = topics[f"/{NS}/{depth_ns}/image"][0]
    image = cv2.imdecode(np.frombuffer(bytes(jpeg.data), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (info.height, info.width) == (50, 66)
    grid = (-(-50 // stride), -(-66 // stride))  # every stride-th row and column from 0
    assert (depth.height, depth.width) == (depth_info.height, depth_info.width) == grid
    assert np.frombuffer(bytes(depth.data), "<f4").size == grid[0] * grid[1]
    camera = record.camera
    expected = np.array(
        [[camera.fx / stride, 0, camera.cx / stride], [0, camera.fy / stride, camera.cy / stride], [0, 0, 1]]
    )
    np.testing.assert_allclose(np.reshape(depth_info.k, (3, 3)), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.reshape(depth_info.p, (3, 4))[:, :3], expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.reshape(info.k, (3, 3)), camera.matrix)
    assert depth_info.distortion_model == info.distortion_model and list(depth_info.d) == list(info.d)
    assert depth_info.header.frame_id == depth.header.frame_id == info.header.frame_id == f"{NS}/camera_optical_frame"


def test_depth_that_does_not_fit_its_camera_is_refused() -> None:
    record = make_record(depth_stride=2)
    mismatched = dataclasses.replace(record.result, depth=np.ones((48, 64), np.float32))  # full size, grid camera
    record = dataclasses.replace(record, result=mismatched)
    with pytest.raises(ValueError, match=r"depth of shape \(48, 64\) does not fit its 32x24 camera"):
        RosEncoder().encode(record, "depth")


def test_camera_info_matches_the_camera(metric_bag: tuple[Path, list[Any]]) -> None:
    bag, records = metric_bag
    (_, _, msg) = read_bag(bag)[f"/{NS}/camera_info"][0]
    camera = records[0].camera
    assert (msg.width, msg.height, msg.distortion_model) == (64, 48, "plumb_bob")
    np.testing.assert_array_equal(np.reshape(msg.k, (3, 3)), camera.matrix)
    np.testing.assert_array_equal(np.reshape(msg.p, (3, 4))[:, :3], camera.matrix)
    np.testing.assert_array_equal(np.reshape(msg.r, (3, 3)), np.eye(3))
    np.testing.assert_array_equal(msg.d, camera.distortion)


def test_compressed_image_is_the_frame_as_jpeg(metric_bag: tuple[Path, list[Any]]) -> None:
    bag, records = metric_bag
    (_, _, msg) = read_bag(bag)[f"/{NS}/image/compressed"][0]
    assert msg.format == "jpeg"
    bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    difference = np.abs(bgr[..., ::-1].astype(int) - records[0].rgb.astype(int))
    assert difference.mean() < 3, "a smooth test image survives JPEG nearly unchanged"


def test_relative_depth_goes_to_its_own_topic(tmp_path: Path) -> None:
    record = make_record("7", depth_kind="relative")
    sink = BagSink(tmp_path)
    sink.write(record)
    bag = sink.bag_path("7")
    sink.close()
    assert bag is not None
    topics = read_bag(bag)
    assert not {"/d7/depth/image", "/d7/depth/camera_info"} & set(topics), "relative depth is not metres"
    (_, name, msg) = topics["/d7/depth_relative/image"][0]
    assert name == "sensor_msgs/msg/Image" and msg.encoding == "32FC1"
    depth = np.frombuffer(bytes(msg.data), "<f4").reshape(48, 64)
    np.testing.assert_array_equal(depth, record.result.depth)  # NaN where invalid, as the pipeline gave it
    assert "dronedepth.depth_kind: relative" in (bag / "metadata.yaml").read_text()


def test_scale_is_recorded_as_the_drone_received_it(tmp_path: Path) -> None:
    """``/<ns>/scale``: the result's ``scale`` and ``scale_check`` as JSON at the capture time; none without one."""
    scale = Scale(source="ground", a=0.4376, b=0.0012, residual=0.0041, confidence=0.87, anchors_used=250)
    check = ScaleCheck(ratio=0.71, residual=0.02, anchors_used=120)
    unscaled = make_record("drone-7", frame_index=0)  # --scale off: no scale on the result, no message
    scaled = make_record("drone-7", frame_index=1, seed=1)
    message = dataclasses.replace(scaled.message, scale=scale, scale_check=check)
    scaled = dataclasses.replace(scaled, result=dataclasses.replace(scaled.result, message=message))
    sink = BagSink(tmp_path)
    sink.write(unscaled)
    sink.write(scaled)
    bag = sink.bag_path("drone-7")
    sink.close()
    assert bag is not None
    ((log_time, name, msg),) = read_bag(bag)[f"/{NS}/scale"]
    assert name == "std_msgs/msg/String" and log_time == scaled.stamp_ns
    wire = json.loads(json.dumps(message.to_dict()))  # what the drone reads off the data channel
    assert json.loads(msg.data) == {
        "pts": wire["pts"],
        "depth_kind": "metric",
        "scale": wire["scale"],
        "scale_check": wire["scale_check"],
    }
    assert Scale.from_dict(json.loads(msg.data)["scale"]) == scale


def test_invalid_metric_depth_becomes_nan(tmp_path: Path) -> None:
    record = make_record()
    record.result.depth[0, 0] = 0.0
    record.result.depth[0, 1] = -1.0
    msg = RosEncoder().typestore.deserialize_cdr(RosEncoder().encode(record, "depth").data, "sensor_msgs/msg/Image")
    depth = np.frombuffer(bytes(msg.data), "<f4").reshape(48, 64)
    assert np.isnan(depth[0, :2]).all() and np.isfinite(depth[0, 2:]).all()
    assert record.result.depth[0, 0] == 0.0, "the frame's own depth is not modified"


@pytest.mark.parametrize(
    ("camera", "model", "d"),
    [
        (CameraMessage(64, 48, 50, 50, 32, 24), "plumb_bob", [0, 0, 0, 0, 0]),
        (CameraMessage(64, 48, 50, 50, 32, 24, (0.1, 0.2, 0.01, 0.02)), "plumb_bob", [0.1, 0.2, 0.01, 0.02, 0]),
        (CameraMessage(64, 48, 50, 50, 32, 24, tuple(range(1, 9))), "rational_polynomial", list(range(1, 9))),
        (CameraMessage(64, 48, 50, 50, 32, 24, (0.1, 0.2, 0.3, 0.4), "fisheye"), "equidistant", [0.1, 0.2, 0.3, 0.4]),
        (CameraMessage(64, 48, 50, 50, 32, 24, (), "fisheye"), "equidistant", [0, 0, 0, 0]),
    ],
)
def test_distortion_models(camera: CameraMessage, model: str, d: list[float]) -> None:
    fields = camera_info_fields(camera)
    assert fields["distortion_model"] == model
    np.testing.assert_array_equal(fields["d"], d)
    assert fields["p"][3] == fields["p"][7] == fields["p"][11] == 0


def test_camera_info_follows_a_resized_frame() -> None:
    record = make_record()
    small = dict(record.__dict__)
    del small["_memo"]
    small["camera"] = CameraMessage(128, 96, 100, 104, 63.5, 48.5)  # intrinsics given for 2x the frame size
    from dronedepth.gateway.outputs.sinks import FrameRecord

    encoder = RosEncoder()
    msg = encoder.typestore.deserialize_cdr(
        encoder.encode(FrameRecord(**small), "camera_info").data, "sensor_msgs/msg/CameraInfo"
    )
    assert (msg.width, msg.height) == (64, 48)
    np.testing.assert_allclose(np.reshape(msg.k, (3, 3)), small["camera"].scaled(64, 48).matrix)


def test_max_points_thins_the_cloud() -> None:
    record = make_record(n=1000)
    encoder = RosEncoder(max_points=300)
    msg = encoder.typestore.deserialize_cdr(encoder.encode(record, "points").data, "sensor_msgs/msg/PointCloud2")
    assert msg.width == 250
    np.testing.assert_array_equal(cloud_array(msg)["x"], record.result.points[::4, 0])


@pytest.mark.parametrize(
    ("drone_id", "name"),
    [("drone-1a2b3c4d", "drone_1a2b3c4d"), ("uav_7", "uav_7"), ("7", "d7"), ("a--b__", "a_b"), ("-_-", "drone")],
)
def test_ros_names_are_valid_ros_2_names(drone_id: str, name: str) -> None:
    assert ros_name(drone_id) == name


def test_a_drone_that_leaves_and_returns_gets_a_new_bag(tmp_path: Path) -> None:
    sink = BagSink(tmp_path)
    sink.write(make_record("drone-7"))
    first = sink.bag_path("drone-7")
    sink.close_drone("drone-7")
    assert sink.bag_path("drone-7") is None
    sink.write(make_record("drone-7", frame_index=1))
    second = sink.bag_path("drone-7")
    sink.close()
    assert first is not None and second is not None and first != second
    assert len(read_bag(first)[f"/{NS}/points"]) == len(read_bag(second)[f"/{NS}/points"]) == 1
    with pytest.raises(ValueError, match="closed"):
        sink.write(make_record("drone-7"))


_WRITER = """
import sys, time
from dronedepth.gateway.outputs.rosbag import BagSink
from output_fixtures import make_record
sink = BagSink(sys.argv[1])
i = 0
while True:
    sink.write(make_record("drone-7", n=20000, frame_index=i, seed=i))
    print(i, sink.bag_path("drone-7"), flush=True)
    i += 1
    time.sleep(0.02)
"""


def test_a_killed_writer_leaves_every_written_frame_readable(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO / "tests", stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            index, bag = line.split()
            if int(index) >= 3:
                break
        else:
            pytest.fail(f"the writer stopped early (exit code {process.wait()})")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
    written = int(index) + 1  # frames whose write() returned before the kill
    bag_path = Path(bag)
    assert not (bag_path / "metadata.yaml").exists(), "killed: rosbags never wrote the metadata"
    topics = read_prefix(bag_path / f"{bag_path.name}.mcap")
    assert set(topics) == set(TOPICS) | {"/tf_static"}
    for topic in TOPICS:
        assert len(topics[topic]) >= written, topic
    for i, msg in enumerate(topics[f"/{NS}/points"][:written]):
        expected = make_record("drone-7", n=20000, frame_index=i, seed=i)
        assert stamp_of(msg) == expected.stamp_ns
        cloud = cloud_array(msg)
        np.testing.assert_array_equal(cloud["z"], expected.result.points[:, 2])
