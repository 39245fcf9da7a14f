"""Bounded parsing of what peers send: nesting, number ranges, physical intrinsics, finite output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dronedepth import protocol
from dronedepth.errors import ProtocolError
from dronedepth.protocol import CameraMessage, KeypointsMessage, SessionDescription

CAMERA = {"type": "camera", "width": 640, "height": 480, "fx": 500.0, "fy": 500.0, "cx": 319.5, "cy": 239.5}


def camera_text(**changes: object) -> str:
    """A camera message with ``changes`` spliced in as raw JSON text (so huge literals stay literals)."""
    fields = {k: json.dumps(v) for k, v in CAMERA.items()} | {k: str(v) for k, v in changes.items()}
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 20_000 + "]" * 20_000, "nested deeper than 32 levels"),
        ('{"type":"camera","a":' + "{" * 40 + "}" * 40 + "}", "nested deeper than 32 levels"),
        (camera_text(fx="1" + "0" * 400), "has more than 20 digits"),
        (camera_text(fx="1e400"), "number 1e400 is out of range"),
        (camera_text(fx="NaN"), "NaN is not a JSON number"),
        (camera_text(distortion="[0.1, 1e400, 0, 0]"), "out of range"),
    ],
)
def test_unbounded_json_is_refused_as_invalid_json(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(text)
    assert info.value.code == protocol.INVALID_JSON
    assert reason in info.value.message


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    payload = protocol.parse_json(json.dumps({"note": "[" * 100 + '\\"{' * 50, "deep": [[[1]]]}), "message")
    assert payload["deep"] == [[[1]]]


def test_the_offer_body_uses_the_same_bounds() -> None:
    body = '{"type":"offer","sdp":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(ProtocolError) as info:
        SessionDescription.from_json(body.encode())
    assert info.value.code == protocol.INVALID_JSON
    assert "body is not valid JSON: nested deeper than 32 levels" in info.value.message


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"fx": 1e-300, "fy": 1e-300}, "focal lengths must be between 2.0 and 64000 pixels"),
        ({"fy": 1.0}, "focal lengths must be between"),
        ({"fx": 64_001.0}, "focal lengths must be between"),
        ({"distortion": [0.1, 5000.0, 0.0, 0.0]}, "distortion[1] = 5000 is outside ±1000"),
        ({"width": 20_000, "cx": 100.0}, "has a side longer than 16384 pixels"),
        ({"fx": 10**400}, "'fx' must be a finite number"),
    ],
)
def test_intrinsics_outside_physical_ranges_are_invalid_cameras(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        CameraMessage.from_dict(CAMERA | changes)
    assert info.value.code == protocol.INVALID_CAMERA
    assert reason in info.value.message


def test_encoding_never_writes_a_non_finite_number() -> None:
    points = np.array([[0.0, 0.0, -np.inf]], dtype=np.float32)
    message = KeypointsMessage(
        pts=0,
        points=points,
        pixels=np.zeros((1, 2), np.float32),
        scores=np.ones(1, np.float32),
        depth_kind="metric",
        width=4,
        height=4,
    )
    with pytest.raises(ValueError, match="not JSON compliant"):
        protocol.encode(message)
