"""The ``anchors`` message (drone → gateway) and the ``scale`` object: round trips, refusals, documentation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dronedepth import protocol
from dronedepth.errors import ProtocolError
from dronedepth.protocol import AnchorsMessage, Scale

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
GOOD: dict[str, Any] = {
    "type": "anchors",
    "pts": 9000,
    "width": 640,
    "height": 480,
    "pixels": [[319.5, 239.5], [-0.5, 479.5]],
    "depths": [18.7, 3.0],
    "points": [[-2.1, 3.4, 22.0]],
}


def test_round_trip_through_the_wire() -> None:
    message = protocol.decode(json.dumps(GOOD))
    assert isinstance(message, AnchorsMessage)
    assert message.pixels == ((319.5, 239.5), (-0.5, 479.5)) and message.depths == (18.7, 3.0)
    assert message.points == ((-2.1, 3.4, 22.0),) and message.time_s == pytest.approx(0.1)
    assert protocol.decode(protocol.encode(message)) == message
    points_only = AnchorsMessage(pts=-90, width=4, height=4, points=((0.0, 0.0, 1.0),))
    assert "pixels" not in points_only.to_dict() and protocol.decode(protocol.encode(points_only)) == points_only


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"depths": [0, 3.0]}, r"depths\[0\] = 0.0 m is not a depth between 0.05 and 1000 m \(a reading of 0"),
        ({"depths": [-4.0, 3.0]}, r"depths\[0\] = -4.0 m"),
        ({"depths": [1500.0, 3.0]}, r"depths\[0\] = 1500.0 m"),
        ({"points": [[0.0, 0.0, float("nan")]]}, r"anchors: points\[0\]: 'points' must be .*finite.*nan"),
        ({"points": [[0.0, 0.0, 0.01]]}, r"points\[0\] z = 0.01 m"),
        ({"points": [[5000.0, 0.0, 10.0]]}, r"points\[0\] = \(5000.0, 0.0, 10.0\) must be finite, within ±1000 m"),
        ({"pixels": [[319.5, 239.5], [700.0, 10.0]]}, r"pixels\[1\] = \(700.0, 10.0\) lies outside the 640x480 image"),
        ({"pixels": [[319.5, 239.5]]}, r"one depth per pixel expected, got 1 pixels and 2 depths"),
        ({"pixels": [[1.0]]}, r"pixels\[0\] must be a list of 2 numbers"),
        ({"pixels": [], "depths": [], "points": []}, r"1 to 512 anchors expected, got 0"),
        ({"points": [[0.0, 0.0, 5.0]] * 511}, r"1 to 512 anchors expected, got 513"),
        ({"width": 0}, r"width must be a positive integer, got 0"),
        ({"pts": 1.5}, r"'pts' must be an integer"),
        ({"depths": "far"}, r"'depths' must be a list of numbers"),
    ],
)
def test_bad_anchors_are_refused_naming_the_value(change: dict[str, Any], text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        AnchorsMessage.from_dict({**GOOD, **change})  # not through JSON text, which cannot carry NaN
    assert caught.value.code == protocol.INVALID_ANCHORS
    assert re.search(text, caught.value.message), caught.value.message


def test_a_rangefinder_reading_zero_is_refused_on_the_wire() -> None:
    with pytest.raises(ProtocolError, match=r"depths\[0\] = 0.0 m") as caught:
        protocol.decode(json.dumps({**GOOD, "depths": [0.0, 3.0]}))
    assert caught.value.code == protocol.INVALID_ANCHORS


def test_scale_round_trip_and_validation() -> None:
    scale = Scale(source="ground", a=0.0051, b=-0.0097, residual=0.021, confidence=0.78, anchors_used=1656)
    assert Scale.from_dict(json.loads(json.dumps(scale.to_dict()))) == scale
    assert Scale.unscaled() == Scale("model", 1.0, 0.0, 0.0, 0.0, 0)
    bad = [
        ({"source": "guess"}, "source must be one of model, ground, anchors"),
        ({"a": 0.0}, "need a finite a > 0"),
        ({"confidence": 1.5}, r"confidence must be in \[0, 1\]"),
        ({"residual": -1.0}, "residual must be finite and ≥ 0"),
        ({"anchors_used": -1}, "anchors_used must be an integer ≥ 0"),
    ]
    for change, text in bad:
        with pytest.raises(ProtocolError, match=text):
            Scale.from_dict({**scale.to_dict(), **change})


def test_anchors_and_scale_are_documented() -> None:
    doc = DOC.read_text(encoding="utf-8")
    section = doc[doc.index("### `anchors` (drone → gateway)") : doc.index("### `keypoints` (gateway → drone)")]
    for field in [*GOOD, *Scale.unscaled().to_dict()]:
        assert re.search(rf"^\| `{field}`", section, re.MULTILINE) or re.search(
            rf"^\| [^|\n]*`{field}`", section, re.MULTILINE
        ), field
    assert f"at most {protocol.MAX_ANCHORS} anchors" in section
    assert f"between {protocol.MIN_ANCHOR_DEPTH_M:g} and {protocol.MAX_ANCHOR_DEPTH_M:g} m" in section
    assert all(f"`{source}`" in section for source in protocol.SCALE_SOURCES)
