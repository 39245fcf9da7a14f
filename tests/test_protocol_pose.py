"""The ``pose`` message and the camera ``mount``: round trips, NED conversion on decode, clear refusals."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from dronedepth import protocol
from dronedepth.errors import ProtocolError
from dronedepth.frames import quaternion_from_rpy, rpy_from_quaternion
from dronedepth.protocol import CameraMessage, CameraMount, PoseMessage


def yaw_quaternion(deg: float) -> tuple[float, float, float, float]:
    return tuple(quaternion_from_rpy(0.0, 0.0, math.radians(deg)).tolist())  # type: ignore[return-value]


def test_an_enu_pose_round_trips_exactly() -> None:
    message = PoseMessage(
        pts=27_000,
        position=(1.5, -2.0, 30.25),
        orientation=yaw_quaternion(30.0),
        frame_id="odom",
        height_above_ground=29.8,
        velocity=(0.5, 0.0, -0.1),
    )
    decoded = protocol.decode(protocol.encode(message), accept=("camera", "pose"))
    assert decoded == message
    assert decoded.time_s == pytest.approx(0.3)  # type: ignore[union-attr]
    minimal = PoseMessage(pts=0, position=(0.0, 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0))
    assert set(minimal.to_dict()) == {"type", "pts", "frame_id", "convention", "position", "orientation"}
    assert protocol.decode(protocol.encode(minimal)) == minimal


def test_a_ned_pose_is_converted_to_enu_on_decode() -> None:
    # 20 m up, 3 m north, 4 m east, heading east (NED yaw 90°), flying north at 2 m/s, climbing 1 m/s
    sent = PoseMessage(
        pts=9000,
        position=(3.0, 4.0, -20.0),
        orientation=yaw_quaternion(90.0),
        convention="ned_frd",
        height_above_ground=19.5,
        velocity=(2.0, 0.0, -1.0),
    )
    received = protocol.decode(protocol.encode(sent))
    assert isinstance(received, PoseMessage)
    assert received.convention == "enu_flu"
    assert received.position == pytest.approx((4.0, 3.0, 20.0))
    assert received.velocity == pytest.approx((0.0, 2.0, 1.0))
    assert received.height_above_ground == 19.5 and received.pts == 9000
    roll, pitch, heading = rpy_from_quaternion(np.array(received.orientation))
    assert (roll, pitch, heading) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)  # facing east = ENU yaw 0
    # the body's forward axis points east in both conventions
    np.testing.assert_allclose(received.world_from_body.rotate([1, 0, 0]), [1, 0, 0], atol=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"orientation": [0, 0, 0, 1.2]}, r"orientation: .*norm 1\.2"),
        ({"orientation": [0, 0, 1]}, "'orientation' must be a list of 4 numbers"),
        ({"position": [0, "x", 0]}, "'position' must be a number"),
        ({"pts": 1.5}, "'pts' must be an integer"),
        ({"pts": 2**60}, r"within ±2\*\*47"),
        ({"frame_id": "world"}, "frame_id must be one of map, odom"),
        ({"convention": "nwu"}, "convention must be one of enu_flu, ned_frd"),
        ({"height_above_ground": -2.0}, "height_above_ground must be finite and ≥ 0"),
        ({"velocity": [1, 2]}, "'velocity' must be a list of 3 numbers"),
    ],
)
def test_a_bad_pose_is_refused_with_invalid_pose(change: dict[str, object], message: str) -> None:
    payload = PoseMessage(pts=0, position=(0.0, 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0)).to_dict() | change
    text = json.dumps(payload, allow_nan=True)
    with pytest.raises(ProtocolError, match=message) as caught:
        protocol.decode(text)
    assert caught.value.code == protocol.INVALID_POSE


def test_a_nearly_unit_quaternion_is_accepted_and_normalised() -> None:
    message = PoseMessage(pts=0, position=(0.0, 0.0, 0.0), orientation=(0.0, 0.0, 0.0, 1.0004))
    assert np.linalg.norm(message.world_from_body.rotation) == pytest.approx(1.0)


def test_camera_mount_round_trips_and_defaults_to_forward_looking() -> None:
    camera = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5)
    assert "mount" not in camera.to_dict()
    np.testing.assert_allclose(camera.body_from_camera.rotate([0, 0, 1]), [1, 0, 0], atol=1e-12)
    mounted = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5, mount=CameraMount(x=0.1, z=-0.05, pitch_deg=30.0))
    decoded = protocol.decode(protocol.encode(mounted))
    assert decoded == mounted
    assert mounted.scaled(320, 240).mount == mounted.mount
    axis = mounted.body_from_camera.rotate([0, 0, 1])
    np.testing.assert_allclose(axis, [math.cos(math.pi / 6), 0, -math.sin(math.pi / 6)], atol=1e-12)
    np.testing.assert_allclose(mounted.body_from_camera.translation, [0.1, 0, -0.05])
    partial = protocol.decode(
        '{"type":"camera","width":4,"height":4,"fx":2,"fy":2,"cx":2,"cy":2,"mount":{"yaw_deg":90}}'
    )
    assert isinstance(partial, CameraMessage) and partial.mount == CameraMount(yaw_deg=90.0)


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ({"pitch": 30}, r"unknown keys \['pitch'\]"),
        ({"x": 50}, "more than 10.0 m from the body"),
        ({"roll_deg": "up"}, "'roll_deg' must be a number"),
        ([0, 0, 0], "'mount' must be an object"),
    ],
)
def test_a_bad_mount_is_an_invalid_camera(mount: object, message: str) -> None:
    payload = CameraMessage(4, 4, 2.0, 2.0, 2.0, 2.0).to_dict() | {"mount": mount}
    with pytest.raises(ProtocolError, match=message) as caught:
        protocol.decode(json.dumps(payload))
    assert caught.value.code == protocol.INVALID_CAMERA


def test_docs_describe_every_pose_and_mount_field_and_the_example_decodes() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")

    def in_a_table_row(name: str) -> bool:
        return re.search(rf"^\| [^|\n]*`{re.escape(name)}`[^\n]*\|", doc, re.MULTILINE) is not None

    pose = PoseMessage(0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), height_above_ground=1.0, velocity=(0.0, 0.0, 0.0))
    for name in pose.to_dict():
        assert in_a_table_row(name), name
    for name in CameraMount.FIELDS:
        assert in_a_table_row(f"mount.{name}"), name
    assert in_a_table_row("mount")
    assert re.search(rf"^\| `{protocol.INVALID_POSE}` \|", doc, re.MULTILINE)
    examples = [text for text in re.findall(r"```json\n(.*?)```", doc, re.DOTALL) if '"type": "pose"' in text]
    assert len(examples) == 1
    decoded = protocol.decode(examples[0])
    assert isinstance(decoded, PoseMessage) and decoded.position == pytest.approx((4.0, 3.0, 20.0))
