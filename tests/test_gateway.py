"""The gateway end to end with real aiortc drones over HTTP and WebRTC on this machine (fake depth)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import subprocess
import sys
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
from gateway_fixtures import (
    TOKEN,
    WAIT_S,
    FakeDepthClient,
    TestDrone,
    camera_for,
    check_projection,
    drones,
    gateway_config,
    photo,
    running_gateway,
    session_tasks,
    wait_until,
)

from dronedepth import gateway, protocol
from dronedepth.errors import DroneDepthError
from dronedepth.gateway.outputs.recording import session_folders
from dronedepth.gateway.server import Gateway
from dronedepth.protocol import KeypointsMessage

FRAME_TICKS = protocol.VIDEO_CLOCK_RATE // 10  # pts step of a 10 fps test drone


async def test_three_drones_get_keypoints_that_project_onto_their_pixels() -> None:
    client = FakeDepthClient(delay=0.2)
    rgb = photo()
    cameras = [camera_for(focal=f) for f in (250.0, 300.0, 420.0)]
    async with running_gateway(client) as gateway, drones(3, rgb) as fleet:
        await asyncio.gather(*(d.connect(gateway.url, camera=c) for d, c in zip(fleet, cameras, strict=True)))
        await asyncio.gather(*(d.wait_for(lambda d: len(d.keypoints) >= 3, what="3 results") for d in fleet))
        for drone, camera in zip(fleet, cameras, strict=True):
            previous = -1
            for message in drone.keypoints:
                check_projection(message, camera)
                decoded = protocol.decode(json.dumps(message))
                assert isinstance(decoded, KeypointsMessage)
                assert (message["width"], message["height"]) == (320, 240)
                assert message["depth_kind"] == "metric" and message["axes"] == "optical"
                # pts as the gateway received them: the drone's own 90 kHz pts, starting at 0.
                assert message["pts"] % FRAME_TICKS == 0 and message["pts"] > previous
                assert message["pts"] == message["frame_index"] * FRAME_TICKS
                previous = message["pts"]
                timing = message["timing"]
                for stage in ("queue", "convert", "inference", "projection", "keypoints", "total"):
                    assert timing[stage] >= 0
                assert timing["total"] >= timing["inference"]
                assert len(message["points"]) > 20
            assert drone.errors == []
        # Frames of different drones were in Triton's hands together (what dynamic batching needs).
        assert client.max_in_flight >= 2
        assert len(gateway.sessions) == 3
        assert gateway.metrics.frames_processed.value() >= 9
        # Parallelism comes from the workers, each OpenCV call runs on the worker's own thread.
        assert cv2.getNumThreads() == 1


async def test_bad_messages_get_errors_and_the_previous_camera_stays() -> None:
    rgb = photo()
    good = camera_for(focal=300.0)
    async with running_gateway() as gateway, drones(1, rgb) as (drone,):
        await drone.connect(gateway.url, camera=good)
        await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="first result")
        drone.send("{nope")
        drone.send(json.dumps({"type": "hello"}))
        drone.send(json.dumps({**good.to_dict(), "fx": -5}))
        drone.send(json.dumps({**good.to_dict(), "distortion": [0.1, 0.2, 0.3]}))
        drone.send(json.dumps({"type": "camera", "pad": "x" * (protocol.MAX_MESSAGE_BYTES + 10)}))
        expected = ["invalid_json", "unknown_type", "invalid_camera", "invalid_camera", "message_too_large"]
        await drone.wait_for(lambda d: len(d.errors) >= 5, what="five errors")
        assert drone.error_codes() == expected
        assert "fx=-5" in drone.errors[2]["message"] or "focal" in drone.errors[2]["message"]
        seen = len(drone.keypoints)
        await drone.wait_for(lambda d: len(d.keypoints) >= seen + 2, what="results after the bad messages")
        for message in drone.keypoints:
            check_projection(message, good)
        # A new valid camera applies to the frames that follow.
        wide = camera_for(focal=150.0)
        drone.send(protocol.encode(wide))
        await drone.wait_for(
            lambda d: any(_projects(m, wide) for m in d.keypoints[seen + 2 :]), what="results with the new camera"
        )
        assert drone.error_codes() == expected
        assert gateway.sessions[drone.drone_id].camera == wide


def _projects(message: dict, camera: protocol.CameraMessage) -> bool:
    try:
        check_projection(message, camera)
    except AssertionError:
        return False
    return True


async def test_frames_before_camera_get_a_single_no_camera_error() -> None:
    async with running_gateway() as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url)
        session = gateway.sessions[drone.drone_id]
        await wait_until(lambda: session.frames_received >= 8, what="8 frames")
        await drone.wait_for(lambda d: len(d.errors) >= 1, what="the no_camera error")
        assert drone.error_codes() == ["no_camera"] and drone.keypoints == []
        assert session.dropped["no_camera"] >= 1
        drone.send(protocol.encode(camera_for()))
        await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="results once the camera is known")
        assert drone.error_codes() == ["no_camera"]


async def test_frames_over_the_pixel_limit_are_dropped_with_one_error() -> None:
    async with running_gateway(max_frame_pixels=320 * 240 - 1) as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url, camera=camera_for())
        session = gateway.sessions[drone.drone_id]
        await wait_until(lambda: session.dropped["frame_too_large"] >= 5, what="5 dropped frames")
        assert drone.error_codes() == ["frame_too_large"] and drone.keypoints == []
        assert gateway.metrics.frames_dropped.value(reason="frame_too_large") >= 5


async def test_slow_inference_keeps_only_the_newest_frame() -> None:
    client = FakeDepthClient(delay=0.5)
    async with running_gateway(client) as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url, camera=camera_for())
        await drone.wait_for(lambda d: len(d.keypoints) >= 4, what="4 results")
        session = gateway.sessions[drone.drone_id]
        assert session.dropped["superseded"] >= 4
        assert gateway.metrics.frames_dropped.value(reason="superseded") == session.dropped["superseded"]
        # Results skip the frames that arrived while inference ran, instead of falling behind.
        indices = [m["frame_index"] for m in drone.keypoints]
        gaps = [b - a for a, b in itertools.pairwise(indices)]
        assert all(gap >= 1 for gap in gaps) and sum(gap >= 2 for gap in gaps) >= len(gaps) / 2
        received = session.frames_received
        processed = session.frames_processed
        pending = 1 if session._slot._item is not None else 0
        in_progress = received - processed - sum(session.dropped.values()) - pending
        assert in_progress in (0, 1)  # every frame is accounted for


async def test_max_in_flight_bounds_requests_and_drones_take_turns() -> None:
    client = FakeDepthClient(delay=0.2)
    async with running_gateway(client, max_in_flight=1) as gateway, drones(3, photo()) as fleet:
        for drone in fleet:
            await drone.connect(gateway.url, camera=camera_for())
        for drone in fleet:
            await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="2 results per drone")
        assert client.max_in_flight == 1
        # Waiting for a request slot happens in the newest-frame slot, so frames keep being superseded.
        assert sum(s.dropped["superseded"] for s in gateway.sessions.values()) >= 3


async def test_without_a_limit_every_drone_has_a_request_in_flight() -> None:
    client = FakeDepthClient(delay=0.3)
    async with running_gateway(client, max_in_flight=None) as gateway, drones(3, photo()) as fleet:
        for drone in fleet:
            await drone.connect(gateway.url, camera=camera_for())
        for drone in fleet:
            await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="2 results per drone")
        assert client.max_in_flight >= 2


async def test_auto_caps_requests_at_what_the_server_runs_at_once() -> None:
    client = FakeDepthClient(delay=0.2)
    client.server_concurrency = 1  # as TritonDepthClient reads it from the model config
    async with running_gateway(client) as gateway, drones(3, photo()) as fleet:
        for drone in fleet:
            await drone.connect(gateway.url, camera=camera_for())
        for drone in fleet:
            await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="2 results per drone")
        assert client.max_in_flight == 1 and gateway.depth.max_in_flight == 1


async def test_disconnects_leave_nothing_behind() -> None:
    rgb = photo()
    async with running_gateway() as gateway:
        refs = []
        for _ in range(3):
            drone = TestDrone(rgb)
            await drone.connect(gateway.url, camera=camera_for())
            await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="a result")
            refs.append(weakref.ref(gateway.sessions[drone.drone_id]))
            await drone.close()
            await wait_until(lambda: not gateway.sessions, what="the session to close")
        assert gateway.metrics.sessions_active.value() == 0
        assert gateway.metrics.sessions_closed.value(reason="connection closed") == 3
        await wait_until(lambda: not session_tasks(), what="session tasks to end")
        gc.collect()
        assert [r() for r in refs] == [None, None, None]


async def test_a_quiet_drone_is_closed_after_the_idle_timeout() -> None:
    async with running_gateway(idle_timeout=1.0) as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url, camera=camera_for())
        await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="a result")
        assert drone.track is not None
        drone.track.pause()
        await wait_until(lambda: not gateway.sessions, what="the idle session to close")
        assert gateway.metrics.sessions_closed.value(reason="idle") == 1


async def test_stop_closes_sessions_and_flushes_recordings_and_bags(tmp_path: Path) -> None:
    from test_rosbag import read_bag

    from dronedepth.gateway.outputs.rosbag import BagSink, ros_name
    from dronedepth.gateway.outputs.sinks import RecorderSink

    records, bags = tmp_path / "records", tmp_path / "bags"
    async with (
        running_gateway(
            FakeDepthClient(depth_stride=2), record_dir=records, record_every=2, record_bag_dir=bags
        ) as gateway,
        drones(2, photo()) as fleet,
    ):
        assert gateway.sinks is not None
        kinds = [type(sink) for sink in gateway.sinks.sinks]
        assert RecorderSink in kinds and BagSink in kinds
        # A leading '_' or '-' is a valid drone id, so every output must take it.
        ids = ["scout_1-a", None]
        connecting = (d.connect(gateway.url, camera=camera_for(), drone_id=i) for d, i in zip(fleet, ids, strict=True))
        await asyncio.gather(*connecting)
        await asyncio.gather(*(d.wait_for(lambda d: len(d.keypoints) >= 3, what="3 results") for d in fleet))
        await asyncio.wait_for(gateway.stop(), 30)
        assert gateway.sessions == {}
        assert not session_tasks()
        assert {p.name for p in records.iterdir()} == {str(d.drone_id) for d in fleet}
        for drone in fleet:
            (folder,) = session_folders(records, str(drone.drone_id))
            lines = (folder / "keypoints.jsonl").read_text().splitlines()
            assert len(lines) >= 3
            recorded = [protocol.decode(line) for line in lines]
            assert all(isinstance(m, KeypointsMessage) for m in recorded)
            sent = {m["pts"] for m in drone.keypoints}
            assert {m.pts for m in recorded} >= sent  # everything sent was recorded
            assert list(folder.glob("cloud_*.ply"))
            first = recorded[0]
            assert isinstance(first, KeypointsMessage)
            assert np.isfinite(first.points).all()

            # One bag per drone session, closed cleanly (metadata.yaml is written on close only).
            (bag,) = bags.glob(f"{drone.drone_id}_*")
            assert (bag / "metadata.yaml").is_file()
            topics = read_bag(bag)
            ns = ros_name(str(drone.drone_id))
            keypoints = topics[f"/{ns}/keypoints"]
            assert len(keypoints) == len(recorded), "the bag and the recording got the same frames"
            assert len(topics[f"/{ns}/points"]) == len(topics[f"/{ns}/depth/image"]) == len(recorded)
            # Depth at stride 2: the depth image and its camera_info are the grid's.
            (_, _, info), (_, _, depth_info), (_, _, depth) = (
                topics[f"/{ns}/{kind}"][0] for kind in ("camera_info", "depth/camera_info", "depth/image")
            )
            assert (depth.width, depth.height) == (depth_info.width, depth_info.height)
            assert (depth_info.width, depth_info.height) == (-(-info.width // 2), -(-info.height // 2))
            np.testing.assert_allclose(np.reshape(depth_info.k, (3, 3))[:2], np.reshape(info.k, (3, 3))[:2] / 2)
            assert all(schema == "sensor_msgs/msg/PointCloud2" for _, schema, _ in keypoints)
            assert [msg.width for _, _, msg in keypoints] == [len(m.points) for m in recorded]
        # The context's exit stops the gateway again: stop() is idempotent.


def test_public_surface_is_pinned() -> None:

    assert gateway.__all__ == [
        "DepthClient",
        "DepthService",
        "DroneSession",
        "Gateway",
        "GatewayConfig",
        "GatewayMetrics",
        "OnnxRuntimeDepthClient",
        "TritonDepthClient",
    ]
    for name in gateway.__all__:
        assert getattr(gateway, name).__name__ == name


def test_numeric_modules_do_not_pull_in_webrtc_or_triton() -> None:
    code = (
        "import sys, gateway, gateway.projection, gateway.config, gateway.metrics\n"
        "heavy = [m for m in ('aiortc', 'tritonclient', 'aiohttp') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


async def test_a_busy_port_is_a_clear_error() -> None:
    async with running_gateway() as first:
        with pytest.raises(DroneDepthError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            async with running_gateway(port=first.port):
                pass


async def test_a_result_sink_gets_every_frame_and_the_goodbyes() -> None:
    from dronedepth.gateway.outputs.sinks import FrameRecord

    class ListSink:
        def __init__(self) -> None:
            self.records: list[FrameRecord] = []
            self.closed_drones: list[str] = []
            self.closed = 0

        def write(self, record: FrameRecord) -> None:
            self.records.append(record)

        def close_drone(self, drone_id: str) -> None:
            self.closed_drones.append(drone_id)

        def close(self) -> None:
            self.closed += 1

    sink = ListSink()
    camera = camera_for()
    async with running_gateway(sink=sink) as gateway, drones(1, photo()) as (drone,):
        await drone.connect(gateway.url, camera=camera)
        await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="2 results")
        await drone.close()
        await wait_until(lambda: not gateway.sessions, what="the session to close")
    assert sink.closed_drones == [drone.drone_id] and sink.closed == 1
    assert len(sink.records) >= 2
    record = sink.records[0]
    assert record.drone_id == drone.drone_id and record.camera == camera
    assert record.rgb.shape == (240, 320, 3) and record.stamp_ns > 0
    assert record.message.pts == drone.keypoints[0]["pts"]


async def test_routes_can_be_added_to_the_app_before_start() -> None:
    from aiohttp import ClientSession, web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    gateway = Gateway(gateway_config(), FakeDepthClient())
    gateway.app.router.add_get("/hello", hello)
    await gateway.start()
    try:
        async with ClientSession() as http, http.get(f"{gateway.url}/hello") as reply:
            assert await reply.text() == "hello"
    finally:
        await gateway.stop()


async def test_every_gateway_serves_the_stream_and_the_web_pages() -> None:
    from aiohttp import ClientSession, WSMsgType

    from dronedepth.stream_format import decode_frame

    camera = camera_for()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_gateway() as gateway, drones(1, photo()) as (drone,), ClientSession() as http:
        # A viewer may connect before its drone does.
        async with http.ws_connect(f"{gateway.url}/stream/scout-9?token={TOKEN}") as ws:
            await drone.connect(gateway.url, drone_id="scout-9", camera=camera)
            message = await ws.receive(timeout=WAIT_S)
            assert message.type == WSMsgType.BINARY, message
            frame = decode_frame(message.data)
            assert (frame.width, frame.height, frame.depth_kind, frame.axes) == (320, 240, "metric", "optical")
            assert len(frame.cloud_xyz) > 1000 and len(frame.keypoints_xyz) > 0
            assert frame.stamp > 0
            await drone.wait_for(
                lambda d: any(m["frame_index"] == frame.frame_index for m in d.keypoints), what="the same frame"
            )
            sent = next(m for m in drone.keypoints if m["frame_index"] == frame.frame_index)
            assert sent["pts"] == frame.pts
            np.testing.assert_allclose(frame.keypoints_xyz, sent["points"], atol=1e-4)
            assert gateway.stream_hub.subscriber_count("scout-9") == 1

        async with http.get(f"{gateway.url}/api/drones", headers=auth) as reply:
            assert reply.status == 200
            listed = await reply.json()
        assert list(listed["drones"]) == ["scout-9"] and listed["gateway"]["previews"] is True
        entry = listed["drones"]["scout-9"]
        assert entry["state"] == "connected" and entry["camera"]["width"] == 320
        assert entry["frames"]["processed"] >= 1
        for path in ("/", "/drone"):
            async with http.get(f"{gateway.url}{path}?token={TOKEN}") as reply:
                assert reply.status == 200 and reply.content_type == "text/html"
        async with http.get(f"{gateway.url}/api/drones") as reply:
            assert reply.status == 401
        async with http.get(f"{gateway.url}/stream/scout-9") as reply:
            assert reply.status == 401


async def test_foxglove_server_publishes_a_connected_drone() -> None:
    from aiohttp import ClientSession, WSMsgType

    from dronedepth.gateway.outputs.foxglove import FoxgloveSink
    from dronedepth.gateway.outputs.rosbag import BagSink

    async with (
        running_gateway(foxglove_port=0, record_bag_dir=None) as gateway,
        drones(1, photo()) as (drone,),
        ClientSession() as http,
    ):
        assert gateway.sinks is not None
        (foxglove,) = [s for s in gateway.sinks.sinks if isinstance(s, FoxgloveSink)]
        assert not [s for s in gateway.sinks.sinks if isinstance(s, BagSink)]
        assert foxglove.host == "127.0.0.1" and foxglove.port > 0
        async with http.ws_connect(f"ws://127.0.0.1:{foxglove.port}/", protocols=["foxglove.sdk.v1"]) as ws:
            await drone.connect(gateway.url, drone_id="fox-1", camera=camera_for())
            topics: set[str] = set()
            async with asyncio.timeout(WAIT_S):
                while "/fox_1/keypoints" not in topics:
                    message = await ws.receive()
                    assert message.type == WSMsgType.TEXT, message
                    payload = json.loads(message.data)
                    if payload["op"] == "advertise":
                        topics.update(c["topic"] for c in payload["channels"])
            assert {"/fox_1/points", "/fox_1/depth/image", "/fox_1/depth/camera_info", "/fox_1/camera_info"} <= topics
    assert foxglove._closed


async def test_outputs_share_one_ros_encoder_and_the_extra_sink_comes_last(tmp_path: Path) -> None:
    from dronedepth.gateway.outputs.foxglove import FoxgloveSink
    from dronedepth.gateway.outputs.previews import PreviewHub
    from dronedepth.gateway.outputs.rosbag import BagSink
    from dronedepth.gateway.outputs.sinks import SinkSet
    from dronedepth.gateway.outputs.stream import StreamHub

    extra = SinkSet()
    async with running_gateway(record_bag_dir=tmp_path / "bags", foxglove_port=0, sink=extra) as gateway:
        assert gateway.sinks is not None
        sinks = gateway.sinks.sinks
        assert [type(s) for s in sinks] == [StreamHub, PreviewHub, BagSink, FoxgloveSink, SinkSet]
        assert sinks[0] is gateway.stream_hub and sinks[1] is gateway.preview_hub and sinks[-1] is extra
        assert sinks[2].encoder is sinks[3].encoder  # type: ignore[attr-defined]
    assert extra._closed, "the caller's sink is closed by stop() too"


async def test_an_output_that_cannot_open_stops_the_start_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    gateway = Gateway(gateway_config(record_bag_dir=blocker / "bags", foxglove_port=0), FakeDepthClient())
    with pytest.raises(DroneDepthError, match="cannot create the bag directory"):
        await gateway.start()
    assert gateway.sinks is None and gateway._runner is None and gateway._executor is None
    await gateway.stop()  # harmless


def _self_signed(tmp_path: Path, *, password: bytes | None = None) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), made with ``cryptography``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dronedepth test gateway")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path


async def test_tls_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    import ssl

    from aiohttp import ClientConnectorCertificateError, ClientSession

    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    async with running_gateway(tls_cert=cert, tls_key=key) as gateway, ClientSession() as http:
        assert gateway.url == f"https://127.0.0.1:{gateway.port}"
        async with http.get(f"{gateway.url}/health", ssl=trust) as reply:
            assert reply.status == 200 and (await reply.json())["status"] == "ok"
        with pytest.raises(ClientConnectorCertificateError):  # verified, not merely encrypted
            async with http.get(f"{gateway.url}/health"):
                pass
        async with drones(1, photo()) as (drone,):  # signalling over HTTPS, the media as always
            await drone.connect(gateway.url, camera=camera_for(), ssl_context=trust)
            await drone.wait_for(lambda d: len(d.keypoints) >= 1, what="a result")


@pytest.mark.parametrize("problem", ["missing", "garbage", "encrypted", "mismatch"])
async def test_unusable_tls_files_are_a_clear_error(tmp_path: Path, problem: str) -> None:
    cert, key = _self_signed(tmp_path, password=b"secret" if problem == "encrypted" else None)
    if problem == "missing":
        key = tmp_path / "nowhere.pem"
    elif problem == "garbage":
        key.write_text("not a key")
    elif problem == "mismatch":
        (tmp_path / "other").mkdir()
        _, key = _self_signed(tmp_path / "other")
    message = {"missing": "cannot read the TLS", "encrypted": "is encrypted"}.get(problem, "cannot use")
    gateway = Gateway(gateway_config(tls_cert=cert, tls_key=key), FakeDepthClient())
    with pytest.raises(DroneDepthError, match=message):
        await gateway.start()
    assert gateway._runner is None and gateway._executor is None
