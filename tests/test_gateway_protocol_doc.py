"""docs/protocol.md names every code, field and limit the code uses."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dronedepth import protocol
from dronedepth.frames import Transform
from dronedepth.gateway.metrics import GatewayMetrics
from dronedepth.gateway.session import DroneSession

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
CODES = [
    value
    for name, value in vars(protocol).items()
    if name.isupper() and isinstance(value, str) and re.fullmatch(r"[a-z_]+", value) and name != "DATA_CHANNEL_LABEL"
]
ERROR_CODES = [code for code in CODES if code not in protocol.SIGNALLING_ERROR_CODES]
"""The codes of ``error`` messages on the data channel."""


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_error_code_is_in_the_table(doc: str) -> None:
    assert len(ERROR_CODES) >= 11
    for code in ERROR_CODES:
        assert re.search(rf"^\| `{code}` \|", doc, re.MULTILINE), code


def test_every_signalling_refusal_is_documented(doc: str) -> None:
    assert set(protocol.SIGNALLING_ERROR_CODES) <= set(CODES)
    assert len(protocol.SIGNALLING_ERROR_CODES) >= 6
    refusals = protocol.SIGNALLING_ERROR_CODES | {
        protocol.INVALID_JSON,
        protocol.INVALID_MESSAGE,
        protocol.MESSAGE_TOO_LARGE,
    }
    for code in refusals:  # a row of the refusals table: | status | `code` |
        assert re.search(rf"^\| \d{{3}} \| `{code}` \|", doc, re.MULTILINE), code
    assert protocol.DRONE_ID_PATTERN.pattern in doc
    assert f"`{protocol.DRONE_ID_HEADER}`" in doc


def test_the_gateway_and_the_drone_use_the_protocol_constants() -> None:
    from dronedepth.drone import signaling as drone_signaling
    from dronedepth.gateway import signaling, stream_route, web
    from dronedepth.gateway.outputs import recording, sinks

    for module in (signaling, sinks, stream_route, web, recording, drone_signaling):
        assert module.DRONE_ID_PATTERN is protocol.DRONE_ID_PATTERN, module.__name__  # type: ignore[attr-defined]
    assert signaling.DRONE_ID_HEADER is protocol.DRONE_ID_HEADER


def test_limits_and_names_match_the_code(doc: str) -> None:
    assert f"`{protocol.DATA_CHANNEL_LABEL}`" in doc
    assert f"{protocol.MAX_MESSAGE_BYTES:,}".replace(",", " ") + " bytes" in doc
    assert f"{protocol.SessionDescription.MAX_SDP_CHARS:,}".replace(",", " ") + " characters" in doc
    assert f"{protocol.VIDEO_CLOCK_RATE // 1000} kHz" in doc


def _in_a_table_row(doc: str, field: str) -> bool:
    return re.search(rf"^\| [^|\n]*`{field}`[^|\n]*\|", doc, re.MULTILINE) is not None


def test_every_message_field_is_documented(doc: str) -> None:
    camera = protocol.CameraMessage(640, 480, 500.0, 500.0, 320.0, 240.0, distortion=(0.1, 0.0, 0.0, 0.0))
    keypoints = protocol.KeypointsMessage(
        pts=0,
        points=np.zeros((1, 3), np.float32),
        pixels=np.zeros((1, 2), np.float32),
        scores=np.zeros(1, np.float32),
        depth_kind="metric",
        width=4,
        height=4,
        descriptor_type="orb",
        descriptors=np.zeros((1, 32), np.uint8),
        camera_pose=protocol.CameraPose("map", Transform.identity(), "interpolated"),
        world_points=True,
        ids=np.zeros(1, np.int64),
    )
    error = protocol.ErrorMessage("x", "y")
    obstacles = protocol.ObstaclesMessage(
        pts=0,
        stamp=0.0,
        gravity_aligned=True,
        sector_width_deg=5.0,
        angle_offset_deg=0.0,
        min_range_m=0.3,
        max_range_m=20.0,
        distances_m=(1.0,),
    )
    assert f"`{protocol.OBSTACLE_FREE:g}` (`protocol.OBSTACLE_FREE`)" in doc
    assert f"`{protocol.OBSTACLE_NO_DATA:g}` (`protocol.OBSTACLE_NO_DATA`)" in doc
    for message in (camera, keypoints, obstacles, error):
        for field in message.to_dict():
            assert _in_a_table_row(doc, field), (message.type, field)


def test_documented_json_examples_decode(doc: str) -> None:
    examples = re.findall(r"```json\n(.*?)```", doc, re.DOTALL)
    decoded = []
    for text in examples:
        if '"type": "' in text and '"error": ' not in text:
            text = text.replace('"descriptors": "eNue7CsMFb2qPKwpL/NCU6L17UJIa5oR..."', '"descriptors": ""')
            decoded.append(protocol.decode(text.replace('"descriptor_type": "orb", ', "")))
    assert {type(m) for m in decoded} == {
        protocol.CameraMessage,
        protocol.PoseMessage,
        protocol.AnchorsMessage,
        protocol.KeypointsMessage,
        protocol.ObstaclesMessage,
        protocol.FrameRateMessage,
        protocol.ErrorMessage,
    }


def test_metrics_and_drop_reasons_are_documented(doc: str) -> None:
    text = GatewayMetrics().render()
    for name in re.findall(r"^# TYPE (dronedepth_\S+)", text, re.MULTILINE):
        assert f"`{name}" in doc, name
    assert "`process_cpu_seconds_total`" in doc and "`python_info`" in doc
    import dronedepth.gateway.session as session_module

    reasons = [v for k, v in vars(session_module).items() if k.isupper() and isinstance(v, str)]
    for reason in reasons:
        assert f"`{reason}`" in doc, reason
    assert DroneSession  # the module the reasons come from
