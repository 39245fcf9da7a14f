"""The live Foxglove server, checked with a plain aiohttp WebSocket client speaking the Foxglove protocol."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from mcap.records import Schema
from mcap_ros2.decoder import DecoderFactory
from output_fixtures import make_record
from test_rosbag import TOPICS, cloud_array, stamp_of, unpack_rgb

from dronedepth.errors import ConfigError
from dronedepth.gateway.outputs.foxglove import FoxgloveSink

SUBPROTOCOL = "foxglove.sdk.v1"  # what foxglove-sdk 0.30 speaks (it refuses foxglove.websocket.v1)
MESSAGE_DATA = 0x01  # server → client binary opcode


@pytest.fixture
async def sink() -> AsyncIterator[FoxgloveSink]:
    server = await asyncio.to_thread(FoxgloveSink, port=0)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        message = await ws.receive(timeout=30)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        return json.loads(message.data)  # type: ignore[no-any-return]


async def test_publishes_every_topic_as_ros2_cdr(sink: FoxgloveSink) -> None:
    assert sink.host == "127.0.0.1" and sink.port > 0
    first = make_record("drone-7", frame_index=0, axes="opengl")
    await asyncio.to_thread(sink.write, first)
    assert not first._memo, "with no client subscribed nothing is encoded"

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{sink.port}/", protocols=[SUBPROTOCOL]) as ws,
    ):
        assert ws.protocol == SUBPROTOCOL
        info = await next_json(ws)
        assert info["op"] == "serverInfo" and info["name"] == "dronedepth"
        channels: dict[str, dict[str, Any]] = {}
        expected = TOPICS | {"/tf_static": "tf2_msgs/msg/TFMessage"}  # no pose, no obstacles: no /tf, no scan
        while len(channels) < len(expected):
            advertise = await next_json(ws)
            assert advertise["op"] == "advertise"
            channels.update({c["topic"]: c for c in advertise["channels"]})
        assert {topic: c["schemaName"] for topic, c in channels.items()} == expected
        assert {(c["encoding"], c["schemaEncoding"]) for c in channels.values()} == {("cdr", "ros2msg")}

        points = channels["/drone_7/points"]
        await ws.send_str(json.dumps({"op": "subscribe", "subscriptions": [{"id": 11, "channelId": points["id"]}]}))
        schema = Schema(id=1, name=points["schemaName"], encoding="ros2msg", data=points["schema"].encode())
        decode = DecoderFactory().decoder_for("cdr", schema)
        assert decode is not None

        # The subscription reaches the server asynchronously: publish until a frame comes back.
        index, received = 1, None
        while received is None:
            record = make_record("drone-7", frame_index=index, axes="opengl", seed=index)
            await asyncio.to_thread(sink.write, record)
            try:
                received = await ws.receive(timeout=0.5)
            except TimeoutError:
                index += 1
                assert index < 200, "no message after subscribing"
        assert received.type == aiohttp.WSMsgType.BINARY
        opcode, subscription, log_time = struct.unpack_from("<BIQ", received.data, 0)
        assert (opcode, subscription, log_time) == (MESSAGE_DATA, 11, record.stamp_ns)
        msg = decode(received.data[13:])
        assert msg.header.frame_id == "drone_7/camera_optical_frame" and stamp_of(msg) == record.stamp_ns
        cloud = cloud_array(msg)
        np.testing.assert_array_equal(np.column_stack([cloud["x"], cloud["y"], cloud["z"]]), record.result.points)
        np.testing.assert_array_equal(unpack_rgb(cloud["rgb"]), record.result.colors)
        encoded_kinds = {key[1] for key in record._memo if isinstance(key, tuple)}
        assert encoded_kinds == {"points"}, "only subscribed topics are encoded"

        # A drone that leaves withdraws its channels; the shared /tf_static stays for the other drones.
        await asyncio.to_thread(sink.close_drone, "drone-7")
        own = {c["id"] for topic, c in channels.items() if topic in TOPICS}
        withdrawn: set[int] = set()
        while len(withdrawn) < len(own):
            message = await ws.receive(timeout=30)
            if message.type == aiohttp.WSMsgType.TEXT:  # binary: a frame still in flight
                unadvertise = json.loads(message.data)
                assert unadvertise["op"] == "unadvertise"
                withdrawn.update(unadvertise["channelIds"])
        assert withdrawn == own


async def test_a_busy_port_is_a_config_error(sink: FoxgloveSink) -> None:
    with pytest.raises(ConfigError, match=f"cannot start the Foxglove server on 127.0.0.1:{sink.port}"):
        await asyncio.to_thread(FoxgloveSink, port=sink.port)


async def test_close_is_idempotent_and_stops_the_server() -> None:
    server = await asyncio.to_thread(FoxgloveSink, port=0)
    port = server.port
    await asyncio.to_thread(server.close)
    await asyncio.to_thread(server.close)
    server.write(make_record())  # ignored once closed
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.ws_connect(f"ws://127.0.0.1:{port}/", protocols=[SUBPROTOCOL])
