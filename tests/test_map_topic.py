"""The world map on ``/map``: the publisher thread, the gateway-level ``fleet_<UTC>`` bag (once per change) and
Foxglove (every period), read back with independent readers (mcap + mcap_ros2, a raw Foxglove WebSocket)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import aiohttp
import numpy as np
from gateway_fixtures import wait_until
from map_fixtures import SETTINGS, CountingRegistry, fuse
from mcap.records import Schema
from mcap_ros2.decoder import DecoderFactory
from test_foxglove import MESSAGE_DATA, SUBPROTOCOL, next_json
from test_fusion import FLIGHT_A, FLIGHT_B
from test_rosbag import cloud_array, read_bag, stamp_of

from dronedepth.gateway.fusion import OccupiedVoxels
from dronedepth.gateway.mapping import MapService
from dronedepth.gateway.outputs.foxglove import FoxgloveSink
from dronedepth.gateway.outputs.map_topic import MapPublisher
from dronedepth.gateway.outputs.rosbag import BagSink


def xyz(msg: object) -> np.ndarray:
    cloud = cloud_array(msg)
    assert cloud.dtype.names == ("x", "y", "z") and cloud.dtype.itemsize == 12
    return np.column_stack([cloud["x"], cloud["y"], cloud["z"]])


def assert_is_snapshot(msg: object, snapshot: OccupiedVoxels) -> None:
    assert msg.header.frame_id == "map"  # type: ignore[attr-defined]
    assert stamp_of(msg) == round(snapshot.stamp * 1e9)
    np.testing.assert_array_equal(xyz(msg), snapshot.points)  # float32 both: bit-equal coordinates


async def test_the_map_is_recorded_once_per_change_and_sent_live_every_period(tmp_path: Path) -> None:
    service = MapService(SETTINGS)
    service.registry = registry = CountingRegistry(SETTINGS.fusion)
    service.start()
    bags = await asyncio.to_thread(BagSink, tmp_path)
    live = await asyncio.to_thread(FoxgloveSink, port=0)
    try:
        await asyncio.to_thread(fuse, service, registry, "a", FLIGHT_A)
        first = service.snapshot("map")  # A's final map: fuse() returns once it is published
        assert first is not None and len(first.points) > 1000
        publisher = MapPublisher(service, MapPublisher.targets_in([object(), bags, live]), period_s=0.05)
        assert publisher.targets == (bags, live)
        publisher.start()
        # The client connects once /map exists (a late subscriber). foxglove-sdk 0.30 advertises a channel
        # created while a client is connected before it records it for that client, so a subscription sent
        # at once may be refused ("Unknown channel ID"); channels existing at connection have no such race.
        await wait_until(lambda: publisher.published >= 2, what="the first /map to the bag and Foxglove")

        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{live.port}/", protocols=[SUBPROTOCOL]) as ws,
        ):
            assert (await next_json(ws))["op"] == "serverInfo"
            channel = None
            while channel is None:
                advertise = await next_json(ws)
                channel = next((c for c in advertise.get("channels", ()) if c["topic"] == "/map"), None)
            assert channel["schemaName"] == "sensor_msgs/msg/PointCloud2"
            await ws.send_str(json.dumps({"op": "subscribe", "subscriptions": [{"id": 5, "channelId": channel["id"]}]}))
            # Unchanged, the map is still re-sent every period: a client subscribing late gets it.
            received = await ws.receive(timeout=30)
            while received.type != aiohttp.WSMsgType.BINARY:
                received = await ws.receive(timeout=30)
        opcode, subscription, log_time = struct.unpack_from("<BIQ", received.data, 0)
        assert (opcode, subscription, log_time) == (MESSAGE_DATA, 5, round(first.stamp * 1e9))
        decode = DecoderFactory().decoder_for(
            "cdr", Schema(id=1, name=channel["schemaName"], encoding="ros2msg", data=channel["schema"].encode())
        )
        assert decode is not None
        assert_is_snapshot(decode(received.data[13:]), first)

        await asyncio.to_thread(fuse, service, registry, "b", FLIGHT_B)  # the map changes
        second = service.snapshot("map")  # the final map: nothing is fused after it
        assert second is not None and second is not first and len(second.points) > len(first.points)
        await asyncio.to_thread(publisher.close, 5.0)  # the final map is published on close
        bag = bags.fleet_bag_path()
        assert bag is not None and bag.name.startswith("fleet_")
    finally:
        service.close(timeout=5.0)
        await asyncio.to_thread(bags.close)
        await asyncio.to_thread(live.close)

    topics = read_bag(bag)
    assert set(topics) == {"/map"}  # no drone's topics in the fleet bag
    maps = topics["/map"]
    assert {schema for _, schema, _ in maps} == {"sensor_msgs/msg/PointCloud2"}
    # Once per change: every recorded map is a newer snapshot (the thread ran while B's frames were fused),
    # starting with the map it found and ending with the final one, published on close.
    log_times = [log_time for log_time, _, _ in maps]
    assert 2 <= len(maps) <= 1 + len(FLIGHT_B) and log_times == sorted(set(log_times))
    for (log_time, _, msg), snapshot in ((maps[0], first), (maps[-1], second)):
        assert log_time == round(snapshot.stamp * 1e9)
        assert_is_snapshot(msg, snapshot)
