"""The DDSF stream format, the /stream/<drone> WebSocket hub, and the sink fan-out (gateway/outputs/sinks.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from gateway_fixtures import wait_until
from output_fixtures import STAMP, make_record, serve_stream_hub

from dronedepth import stream_format
from dronedepth.axes import AXES
from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.gateway.outputs.sinks import FrameRecord, RecorderSink, SinkSet
from dronedepth.gateway.outputs.stream import StreamHub, stream_frame
from dronedepth.stream_format import StreamFrame, decode_frame, encode_frame, encoded_size

TOKEN = "s3cret-token"


# ---------------------------------------------------------------------------- format


def sample_frame(n: int = 7, k: int = 3, axes: str = "opengl") -> StreamFrame:
    rng = np.random.default_rng(1)
    return StreamFrame(
        frame_index=41,
        pts=-123_456_789_012,
        stamp=STAMP,
        depth_kind="relative",
        axes=axes,
        width=640,
        height=480,
        cloud_xyz=rng.normal(size=(n, 3)).astype(np.float32),
        cloud_rgb=rng.integers(0, 256, (n, 3), dtype=np.uint8),
        keypoints_xyz=rng.normal(size=(k, 3)).astype(np.float32),
        keypoints_uv=rng.uniform(0, 640, (k, 2)).astype(np.float32),
        keypoints_score=rng.uniform(size=k).astype(np.float32),
    )


def assert_frames_equal(a: StreamFrame, b: StreamFrame) -> None:
    for name in ("frame_index", "pts", "stamp", "depth_kind", "axes", "width", "height"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("cloud_xyz", "cloud_rgb", "keypoints_xyz", "keypoints_uv", "keypoints_score"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_round_trip_keeps_every_field() -> None:
    frame = sample_frame()
    data = encode_frame(frame)
    assert len(data) == encoded_size(7, 3)
    decoded = decode_frame(data)
    assert_frames_equal(decoded, frame)
    assert decoded.cloud_xyz.dtype == np.float32 and decoded.cloud_rgb.dtype == np.uint8
    assert not decoded.cloud_rgb.flags.writeable, "decoded arrays are views of the message"
    optical = decode_frame(encode_frame(sample_frame(axes="optical")))
    assert not optical.cloud_xyz.flags.writeable, "optical points need no conversion: views too"


def test_layout_matches_the_documented_bytes() -> None:
    frame = sample_frame(n=7, k=3)  # opengl on the wire: y and z negated
    sign = np.array([1, -1, -1], np.float32)
    data = encode_frame(frame)
    assert data[:4] == b"DDSF"
    version, header_size, frame_index, flags = struct.unpack_from("<HHII", data, 4)
    assert (version, header_size, frame_index, flags) == (1, 48, 41, 0)
    pts, stamp = struct.unpack_from("<qd", data, 16)
    assert (pts, stamp) == (frame.pts, frame.stamp)
    kind, axes, width, height, reserved, n, k = struct.unpack_from("<BBHHHII", data, 32)
    assert (kind, axes, width, height, reserved, n, k) == (1, 1, 640, 480, 0, 7, 3)
    offset = 48
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 21, offset).reshape(7, 3), frame.cloud_xyz * sign)
    offset += 84
    np.testing.assert_array_equal(np.frombuffer(data, "u1", 21, offset).reshape(7, 3), frame.cloud_rgb)
    offset += 21
    assert data[offset : offset + 3] == b"\0\0\0" and (offset + 3) % 4 == 0, "padding aligns the float arrays"
    offset += 3
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 9, offset).reshape(3, 3), frame.keypoints_xyz * sign)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 6, offset + 36).reshape(3, 2), frame.keypoints_uv)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 3, offset + 60), frame.keypoints_score)
    assert len(data) == offset + 72


def test_empty_frame_round_trips() -> None:
    frame = sample_frame(n=0, k=0, axes="optical")
    data = encode_frame(frame)
    assert len(data) == 48
    assert_frames_equal(decode_frame(data), frame)


@pytest.mark.parametrize(
    ("mutate", "text"),
    [
        (lambda d: d[:20], "shorter than the 48-byte header"),
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: d[:4] + struct.pack("<H", 9) + d[6:], "version 9 is not supported"),
        (lambda d: d[:-1], "expected"),
        (lambda d: d + b"\0", "expected"),
        (lambda d: d[:32] + b"\x07" + d[33:], "unknown depth_kind code 7"),
        (lambda d: d[:40] + struct.pack("<I", 1 << 30) + d[44:], "exceed"),
    ],
)
def test_decode_names_what_is_wrong(mutate, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError, match=text):
        decode_frame(mutate(encode_frame(sample_frame())))


def test_frame_with_inconsistent_arrays_is_refused() -> None:
    frame = sample_frame()
    with pytest.raises(ProtocolError, match=r"cloud_rgb has shape \(6, 3\), expected \(7, 3\)"):
        StreamFrame(**{**{f: getattr(frame, f) for f in frame.__dataclass_fields__}, "cloud_rgb": frame.cloud_rgb[:6]})
    with pytest.raises(ProtocolError, match="axes must be one of"):
        StreamFrame(**{**{f: getattr(frame, f) for f in frame.__dataclass_fields__}, "axes": "enu"})


@pytest.mark.parametrize("axes", AXES)
def test_points_are_optical_in_memory_and_in_axes_on_the_wire(axes: str) -> None:
    """A point 1 m right, 2 m below, 3 m ahead, as a web page (wire) and a Python reader (decode) get it."""
    optical = np.array([[1.0, 2.0, 3.0]], np.float32)
    on_the_wire = {"optical": [1.0, 2.0, 3.0], "opengl": [1.0, -2.0, -3.0], "seed": [1.0, -2.0, 3.0]}[axes]
    frame = dataclasses.replace(sample_frame(n=1, k=1, axes=axes), cloud_xyz=optical, keypoints_xyz=optical)
    data = encode_frame(frame)
    assert data[33] == stream_format.AXES.index(axes)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 3, 48), on_the_wire)  # the cloud
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 3, 48 + 12 + 3 + 1), on_the_wire)  # the keypoint
    decoded = decode_frame(data)
    np.testing.assert_array_equal(decoded.cloud_xyz, optical)
    np.testing.assert_array_equal(decoded.keypoints_xyz, optical)


def test_stream_frame_thins_the_cloud_by_stride() -> None:
    record = make_record(n=50_001)
    frame = stream_frame(record, max_points=20_000)
    assert len(frame.cloud_xyz) <= 20_000
    np.testing.assert_array_equal(frame.cloud_xyz, record.result.points[::3])
    np.testing.assert_array_equal(frame.cloud_rgb, record.result.colors[::3])
    assert len(frame.keypoints_xyz) == 12, "keypoints are never thinned"
    assert frame.stamp == pytest.approx(STAMP)


# ---------------------------------------------------------------------------- hub + endpoint


@pytest.fixture
async def served_hub() -> AsyncIterator[tuple[str, StreamHub]]:
    async with serve_stream_hub(TOKEN) as served:
        yield served


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"), ({"Authorization": TOKEN}, "")],
)
async def test_stream_refuses_missing_or_wrong_token(served_hub, headers, query) -> None:  # type: ignore[no-untyped-def]
    url, hub = served_hub
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"{url}/stream/drone-1{query}", headers=headers)
        assert info.value.status == 401
        async with session.get(f"{url}/stream/drone-1", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["error"] == "unauthorized"
    assert hub.subscriber_count() == 0


async def test_stream_rejects_bad_drone_id_and_plain_http(served_hub) -> None:  # type: ignore[no-untyped-def]
    url, _ = served_hub
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/stream/bad.id", headers=AUTH) as response:
            assert response.status == 400
            body = await response.json()
            assert body["error"] == "invalid_drone_id" and "drone id 'bad.id'" in body["message"]
        async with session.get(f"{url}/stream/drone-1", headers=AUTH) as response:
            assert response.status == 400
            body = await response.json()
            assert body["error"] == "not_websocket" and "WebSocket endpoint" in body["message"]


async def test_published_frames_arrive_decoded_and_equal(served_hub) -> None:  # type: ignore[no-untyped-def]
    url, hub = served_hub
    records = [make_record(frame_index=i, axes="opengl", seed=i) for i in range(3)]
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream/drone-1?token={TOKEN}") as ws:
        assert hub.subscriber_count("drone-1") == 1
        # Another drone's frames are not this subscriber's business.
        await asyncio.to_thread(hub.write, make_record("drone-2"))
        for record in records:
            await asyncio.to_thread(hub.write, record)
            message = await ws.receive(timeout=30)
            assert message.type == aiohttp.WSMsgType.BINARY
            got = decode_frame(message.data)
            assert_frames_equal(got, stream_frame(record))
            assert got.frame_index == record.message.frame_index and got.axes == "opengl"
            np.testing.assert_array_equal(got.cloud_xyz, record.result.points)
            np.testing.assert_array_equal(got.keypoints_score, record.message.scores)
    await wait_until(lambda: hub.subscriber_count() == 0, what="the hub to forget the subscriber")
    assert hub.frames_encoded == 3, "drone-2 had no viewer and was never encoded"


async def test_slow_viewer_gets_the_newest_frames_and_drops_the_rest(served_hub) -> None:  # type: ignore[no-untyped-def]
    url, hub = served_hub
    total = 120  # ~300 kB each: far more than the socket buffers hold
    base = make_record(n=20_000)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/stream/drone-1", headers=AUTH, max_msg_size=0) as ws,
    ):
        for i in range(total):
            result = dataclasses.replace(base.result, message=dataclasses.replace(base.message, frame_index=i))
            record = FrameRecord("drone-1", base.stamp_ns + i, base.camera, base.rgb, result)
            await asyncio.to_thread(hub.write, record)
        await asyncio.sleep(0.2)
        received = []
        while not received or received[-1] != total - 1:
            message = await ws.receive(timeout=30)
            assert message.type == aiohttp.WSMsgType.BINARY
            received.append(decode_frame(message.data).frame_index)
    assert received == sorted(received), "frames never arrive out of order"
    assert len(received) < total, "a viewer that does not read must lose frames, not queue them"
    await wait_until(lambda: hub.subscriber_count() == 0, what="the subscriber to leave")
    assert hub.frames_dropped == total - len(received)
    assert hub.frames_sent == len(received)


async def test_shutdown_closes_viewers_with_going_away(served_hub) -> None:  # type: ignore[no-untyped-def]
    url, hub = served_hub
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/stream/drone-1", headers=AUTH) as ws:
        await asyncio.to_thread(hub.close)
        message = await ws.receive(timeout=30)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
    # After close, new viewers are turned away and writes are ignored.
    await asyncio.to_thread(hub.write, make_record())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"{url}/stream/drone-1", headers=AUTH)
        assert info.value.status == 503


async def test_too_many_viewers_get_503() -> None:
    # No token: anyone may watch.
    async with (
        serve_stream_hub(None, StreamHub(max_subscribers=1)) as (url, _),
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/stream/a"),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"{url}/stream/b")
        assert info.value.status == 503


# ---------------------------------------------------------------------------- sinks


class _Collecting:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def write(self, record: FrameRecord) -> None:
        self.calls.append(("write", record.message.frame_index))

    def close_drone(self, drone_id: str) -> None:
        self.calls.append(("close_drone", drone_id))

    def close(self) -> None:
        self.calls.append(("close", None))


class _Broken:
    def write(self, record: FrameRecord) -> None:
        raise OSError("disk full")

    def close_drone(self, drone_id: str) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        raise OSError("disk full")


def test_sink_set_isolates_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    broken, good = _Broken(), _Collecting()
    sinks = SinkSet([broken, good])
    for i in range(3):
        sinks.write(make_record(frame_index=i))
    sinks.close_drone("drone-1")
    sinks.close()
    sinks.close()  # idempotent
    sinks.write(make_record(frame_index=9))  # ignored after close
    assert good.calls == [("write", 0), ("write", 1), ("write", 2), ("close_drone", "drone-1"), ("close", None)]
    assert sinks.failures(broken) == 5
    assert sum("_Broken.write failed" in r.getMessage() for r in caplog.records) == 1, "traceback logged once"


def test_frame_record_validates_and_stamps() -> None:
    record = make_record()
    assert record.stamp_ns == 1_700_000_000_250_000_000
    with pytest.raises(ConfigError, match="drone id 'a/b'"):
        FrameRecord("a/b", 0, record.camera, record.rgb, record.result)
    assert record.memo("x", lambda: [1]) is record.memo("x", lambda: [2])


def test_recorder_sink_writes_the_recorders_files(tmp_path: Path) -> None:
    from dronedepth.gateway.outputs.recording import session_folders

    sink = RecorderSink(tmp_path, cloud_every=2)
    records = [make_record(frame_index=i) for i in range(3)]
    for record in records:
        sink.write(record)
    sink.write(make_record("drone-2"))
    sink.close_drone("drone-1")
    sink.close()
    (folder,) = session_folders(tmp_path, "drone-1")
    lines = [json.loads(line) for line in (folder / "keypoints.jsonl").read_text().splitlines()]
    assert [line["frame_index"] for line in lines] == [0, 1, 2]
    assert [line["stamp_ns"] for line in lines] == [r.stamp_ns for r in records], "stamped with the capture time"
    assert sorted(p.name for p in folder.glob("*.ply")) == ["cloud_000000.ply", "cloud_000002.ply"]
    (other,) = session_folders(tmp_path, "drone-2")
    assert (other / "keypoints.jsonl").exists()
