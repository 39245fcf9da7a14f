"""TF and obstacles in the rosbag2 (MCAP) recording and on the live Foxglove server, read back independently.

The bag is read with ``mcap`` + ``mcap_ros2`` (not rosbags, which wrote it);
the transforms must equal the poses and the camera mount, the LaserScan the
obstacle profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from mcap.records import Schema
from mcap_ros2.decoder import DecoderFactory
from output_fixtures import make_record
from test_foxglove import SUBPROTOCOL, next_json
from test_rosbag import read_bag, stamp_of

from dronedepth.frames import Transform, matrix_from_quaternion, quaternion_from_rpy
from dronedepth.gateway.obstacles import ObstacleProfile, SectorLayout
from dronedepth.gateway.outputs.foxglove import FoxgloveSink
from dronedepth.gateway.outputs.rosbag import BagSink
from dronedepth.gateway.outputs.sinks import FrameRecord
from dronedepth.gateway.pipeline import FramePose
from dronedepth.pose_buffer import TimedPose
from dronedepth.protocol import OBSTACLE_FREE, OBSTACLE_NO_DATA, CameraMount

MOUNT = CameraMount(x=0.12, y=-0.03, z=0.05, pitch_deg=20.0)
DISTANCES = np.array([2.5, OBSTACLE_FREE, OBSTACLE_NO_DATA, 7.25, 0.75, OBSTACLE_FREE], np.float32)
LAYOUT = SectorLayout(sector_width_deg=5.0, angle_offset_deg=-12.5, count=len(DISTANCES))


def body_pose(index: int, drone: int) -> Transform:
    """A banked, pitched, turning body away from the origin (ENU map, FLU body)."""
    rotation = quaternion_from_rpy(0.2 + 0.01 * index, -0.15, 0.7 + 0.1 * index + drone)
    return Transform(rotation, np.array([3.0 + index, -2.0 + 5 * drone, 10.5]))


def posed_record(drone_id: str, index: int, drone: int = 0, *, pose: bool = True) -> FrameRecord:
    """A metric frame with a body pose in ``map`` (unless ``pose`` is False), a mounted camera and obstacles."""
    base = make_record(drone_id, frame_index=index, seed=index)
    frame_pose = None
    if pose:
        timed = TimedPose(time_s=index * 0.1, world_from_body=body_pose(index, drone), height_above_ground_m=10.5)
        frame_pose = FramePose(frame_id="map", match="interpolated", body=timed)
    profile = ObstacleProfile(
        layout=LAYOUT,
        distances_m=np.roll(DISTANCES, index),
        min_range_m=0.5,
        max_range_m=8.0,
        gravity_aligned=pose,
    )
    result = dataclasses.replace(base.result, pose=frame_pose, obstacles=profile)  # type: ignore[type-var]
    camera = dataclasses.replace(base.camera, mount=MOUNT)
    return FrameRecord(drone_id, base.stamp_ns, camera, base.rgb, result)


def transform_of(msg: Any) -> Transform:
    t, q = msg.transform.translation, msg.transform.rotation
    return Transform(np.array([q.x, q.y, q.z, q.w]), np.array([t.x, t.y, t.z]))


def assert_same_transform(actual: Transform, expected: Transform) -> None:
    np.testing.assert_allclose(actual.matrix, expected.matrix, atol=1e-9)


def assert_scan_is_profile(scan: Any, profile: ObstacleProfile) -> None:
    """Each sector's range at its angle: counter-clockwise angle = minus the FRD azimuth; REP-117 inf/NaN."""
    ranges = np.asarray(scan.ranges)
    assert len(ranges) == profile.layout.count
    assert scan.angle_increment == pytest.approx(math.radians(profile.layout.sector_width_deg))
    angles = scan.angle_min + scan.angle_increment * np.arange(len(ranges))
    assert scan.angle_max == pytest.approx(angles[-1])
    assert (scan.range_min, scan.range_max) == (profile.min_range_m, profile.max_range_m)
    by_angle = dict(zip(np.round(np.degrees(angles), 3), ranges, strict=True))  # float32 angles
    for centre, distance in zip(profile.layout.centres_deg, profile.distances_m, strict=True):
        value = by_angle[round(-centre, 3)]
        if distance == OBSTACLE_FREE:
            assert value == math.inf
        elif distance == OBSTACLE_NO_DATA:
            assert math.isnan(value)
        else:
            assert value == pytest.approx(distance)
    np.testing.assert_array_equal(np.asarray(scan.intensities), np.where(np.isnan(ranges), 0.0, 1.0))


@pytest.fixture
def two_drone_bags(tmp_path: Path) -> dict[str, tuple[Path, list[FrameRecord]]]:
    sink = BagSink(tmp_path)
    out: dict[str, tuple[Path, list[FrameRecord]]] = {}
    for drone, drone_id in enumerate(("drone-7", "drone-8")):
        records = [posed_record(drone_id, i, drone) for i in range(3)]
        for record in records:
            sink.write(record)
        bag = sink.bag_path(drone_id)
        assert bag is not None
        out[drone_id] = (bag, records)
    sink.close()
    return out


def test_tf_places_each_drone_in_the_shared_map(two_drone_bags: dict[str, tuple[Path, list[FrameRecord]]]) -> None:
    for drone_id, ns in (("drone-7", "drone_7"), ("drone-8", "drone_8")):
        bag, records = two_drone_bags[drone_id]
        topics = read_bag(bag)
        # The mount once per bag (the camera did not change), stamped with the first frame.
        (static,) = topics["/tf_static"]
        log_time, schema, msg = static
        assert schema == "tf2_msgs/msg/TFMessage" and log_time == records[0].stamp_ns
        (mount,) = msg.transforms
        assert (mount.header.frame_id, mount.child_frame_id) == (f"{ns}/base_link", f"{ns}/camera_optical_frame")
        assert stamp_of(mount) == records[0].stamp_ns
        assert_same_transform(transform_of(mount), MOUNT.body_from_camera)

        assert len(topics["/tf"]) == len(records)
        for (log_time, _, msg), record in zip(topics["/tf"], records, strict=True):
            assert log_time == record.stamp_ns
            body, level = msg.transforms
            assert (body.header.frame_id, body.child_frame_id) == ("map", f"{ns}/base_link")
            assert (level.header.frame_id, level.child_frame_id) == (f"{ns}/base_link", f"{ns}/base_link_level")
            assert stamp_of(body) == stamp_of(level) == record.stamp_ns
            assert record.result.pose is not None
            world_from_body = record.result.pose.body.world_from_body
            assert_same_transform(transform_of(body), world_from_body)
            # The level frame: z straight up in the map, x the body's heading on the horizontal plane.
            world_from_level = matrix_from_quaternion(world_from_body.rotation) @ transform_of(level).matrix[:3, :3]
            np.testing.assert_allclose(world_from_level[:, 2], [0, 0, 1], atol=1e-9)
            body_x = matrix_from_quaternion(world_from_body.rotation)[:, 0]
            heading = np.array([body_x[0], body_x[1], 0.0]) / np.hypot(body_x[0], body_x[1])
            np.testing.assert_allclose(world_from_level[:, 0], heading, atol=1e-9)
            np.testing.assert_allclose(transform_of(level).translation, 0.0)

        # Clouds stay in the camera frame; the scan is in the level frame, equal to the profile.
        assert {m.header.frame_id for _, _, m in topics[f"/{ns}/points"]} == {f"{ns}/camera_optical_frame"}
        for (log_time, schema, scan), record in zip(topics[f"/{ns}/obstacles"], records, strict=True):
            assert schema == "sensor_msgs/msg/LaserScan" and log_time == stamp_of(scan) == record.stamp_ns
            assert scan.header.frame_id == f"{ns}/base_link_level"
            assert record.result.obstacles is not None
            assert_scan_is_profile(scan, record.result.obstacles)


def test_without_a_pose_the_level_frame_is_the_body(tmp_path: Path) -> None:
    sink = BagSink(tmp_path)
    sink.write(posed_record("drone-7", 0, pose=False))
    bag = sink.bag_path("drone-7")
    sink.close()
    assert bag is not None
    topics = read_bag(bag)
    (_, _, msg), *_ = topics["/tf"]
    (level,) = msg.transforms  # no map → base_link without a pose
    assert level.child_frame_id == "drone_7/base_link_level"
    assert_same_transform(transform_of(level), Transform.identity())


def test_a_frame_without_pose_or_obstacles_has_no_tf_nor_scan(tmp_path: Path) -> None:
    sink = BagSink(tmp_path)
    sink.write(make_record("drone-7"))
    bag = sink.bag_path("drone-7")
    sink.close()
    assert bag is not None
    topics = read_bag(bag)
    assert "/tf" not in topics and "/drone_7/obstacles" not in topics and len(topics["/tf_static"]) == 1


def test_a_new_mount_is_written_again(tmp_path: Path) -> None:
    sink = BagSink(tmp_path)
    first = posed_record("drone-7", 0)
    sink.write(first)
    sink.write(posed_record("drone-7", 1))
    moved = dataclasses.replace(first.camera, mount=CameraMount(pitch_deg=45.0))
    second = posed_record("drone-7", 2)
    sink.write(FrameRecord("drone-7", second.stamp_ns, moved, second.rgb, second.result))
    bag = sink.bag_path("drone-7")
    sink.close()
    assert bag is not None
    statics = read_bag(bag)["/tf_static"]
    assert [log_time for log_time, _, _ in statics] == [first.stamp_ns, second.stamp_ns]
    assert_same_transform(transform_of(statics[1][2].transforms[0]), moved.body_from_camera)


async def test_foxglove_live_carries_tf_and_obstacles() -> None:
    sink = await asyncio.to_thread(FoxgloveSink, port=0)
    try:
        await asyncio.to_thread(sink.write, posed_record("drone-7", 0))
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{sink.port}/", protocols=[SUBPROTOCOL]) as ws,
        ):
            assert (await next_json(ws))["op"] == "serverInfo"
            wanted = {"/tf": "tf2_msgs/msg/TFMessage", "/tf_static": "tf2_msgs/msg/TFMessage"}
            wanted["/drone_7/obstacles"] = "sensor_msgs/msg/LaserScan"
            channels: dict[str, dict[str, Any]] = {}
            while not wanted.keys() <= channels.keys():
                advertise = await next_json(ws)
                if advertise["op"] == "advertise":
                    channels.update({c["topic"]: c for c in advertise["channels"]})
            assert {topic: channels[topic]["schemaName"] for topic in wanted} == wanted
            subscriptions = [{"id": i, "channelId": channels[topic]["id"]} for i, topic in enumerate(wanted)]
            await ws.send_str(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))
            decoders = {}
            for i, topic in enumerate(wanted):
                channel = channels[topic]
                schema = Schema(id=i, name=channel["schemaName"], encoding="ros2msg", data=channel["schema"].encode())
                decoders[i] = DecoderFactory().decoder_for("cdr", schema)

            # The subscription reaches the server asynchronously: publish until every topic came back.
            received: dict[str, tuple[FrameRecord, Any]] = {}
            index = 1
            while len(received) < len(wanted):
                record = posed_record("drone-7", index)
                await asyncio.to_thread(sink.write, record)
                try:
                    while True:
                        message = await ws.receive(timeout=0.5)
                        if message.type == aiohttp.WSMsgType.BINARY:
                            _, subscription, log_time = struct.unpack_from("<BIQ", message.data, 0)
                            if log_time == record.stamp_ns:
                                decoded = decoders[subscription](message.data[13:])
                                received[list(wanted)[subscription]] = (record, decoded)
                except TimeoutError:
                    index += 1
                    assert index < 200, f"only {sorted(received)} after subscribing"
            record, tf = received["/tf"]
            assert record.result.pose is not None
            assert tf.transforms[0].child_frame_id == "drone_7/base_link"
            assert_same_transform(transform_of(tf.transforms[0]), record.result.pose.body.world_from_body)
            _, static = received["/tf_static"]
            assert_same_transform(transform_of(static.transforms[0]), MOUNT.body_from_camera)
            record, scan = received["/drone_7/obstacles"]
            assert scan.header.frame_id == "drone_7/base_link_level"
            assert record.result.obstacles is not None
            assert_scan_is_profile(scan, record.result.obstacles)
    finally:
        await asyncio.to_thread(sink.close)
