import json

import numpy as np
import pytest

from dronedepth import protocol
from dronedepth.errors import ProtocolError
from dronedepth.protocol import CameraMessage, ErrorMessage, KeypointsMessage, SessionDescription


def camera_payload(**changes: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "type": "camera",
        "width": 640,
        "height": 480,
        "fx": 500.0,
        "fy": 510.0,
        "cx": 320.0,
        "cy": 240.0,
    }
    payload.update(changes)
    return payload


def test_camera_round_trip_keeps_every_field() -> None:
    camera = CameraMessage(640, 480, 500.0, 510.0, 321.5, 239.5, (0.1, -0.05, 0.001, 0.002, 0.01), "pinhole")
    decoded = protocol.decode(protocol.encode(camera))
    assert decoded == camera


def test_camera_defaults_to_pinhole_without_distortion() -> None:
    camera = protocol.decode(json.dumps(camera_payload()))
    assert isinstance(camera, CameraMessage)
    assert camera.model == "pinhole" and camera.distortion == () and not camera.has_distortion
    np.testing.assert_array_equal(camera.matrix, [[500, 0, 320], [0, 510, 240], [0, 0, 1]])


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"fx": -1.0}, "focal lengths must be between 2.0 and 64000 pixels"),
        ({"fy": 0}, "focal lengths must be between"),
        ({"cx": 700.0}, "principal point (700.0, 240.0) lies outside the 640x480 image"),
        ({"cy": -1.0}, "lies outside"),
        ({"width": 0}, "width and height must be positive"),
        ({"width": 640.5}, "'width' must be an integer"),
        ({"fx": "500"}, "'fx' must be a number, got '500'"),
        ({"fx": True}, "'fx' must be a number"),
        ({"distortion": [0.1, 0.2, 0.3]}, "a pinhole camera takes 0 or 4 or 5 or 8 distortion coefficients, got 3"),
        ({"distortion": [0.1] * 5, "model": "fisheye"}, "a fisheye camera takes 0 or 4 distortion coefficients"),
        ({"distortion": "none"}, "'distortion' must be a list of numbers"),
        ({"model": "orthographic"}, "model must be 'pinhole' or 'fisheye'"),
    ],
)
def test_bad_camera_is_rejected_with_a_message_naming_the_value(changes: dict[str, object], text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(json.dumps(camera_payload(**changes)))
    assert info.value.code == protocol.INVALID_CAMERA
    assert text in str(info.value)


def test_non_finite_camera_values_are_rejected() -> None:
    # JSON has no NaN literal but Python's json module accepts one; the protocol must not.
    with pytest.raises(ProtocolError, match="NaN is not a JSON number"):
        protocol.decode('{"type":"camera","width":640,"height":480,"fx":NaN,"fy":1,"cx":1,"cy":1}')


def test_camera_scaled_uses_pixel_centre_convention() -> None:
    camera = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5)
    half = camera.scaled(320, 240)
    assert (half.fx, half.fy, half.cx, half.cy) == (250.0, 250.0, 159.5, 119.5)
    assert half.scaled(640, 480) == camera


@pytest.mark.parametrize("stride", [2, 4])
@pytest.mark.parametrize(
    "camera",
    [
        CameraMessage(641, 481, 500.0, 510.0, 320.3, 240.7),
        CameraMessage(641, 481, 500.0, 510.0, 320.3, 240.7, distortion=(-0.3, 0.1, 0.001, 0.002)),
        CameraMessage(641, 481, 300.0, 300.0, 320.3, 240.7, distortion=(0.1, 0.01, 0.0, 0.0), model="fisheye"),
    ],
    ids=["pinhole", "distorted", "fisheye"],
)
def test_camera_strided_has_the_rays_of_every_strided_pixel(camera: CameraMessage, stride: int) -> None:
    """Grid pixel (i, j) of the strided camera is image pixel (s·i, s·j): same ray, odd sizes rounded up."""
    from dronedepth.gateway.projection import ray_grid

    grid = camera.strided(stride)
    assert (grid.width, grid.height) == (-(-641 // stride), -(-481 // stride))
    assert (grid.fx, grid.cx, grid.distortion, grid.model) == (
        camera.fx / stride,
        camera.cx / stride,
        camera.distortion,
        camera.model,
    )
    full, strided = ray_grid(camera).rays[::stride, ::stride], ray_grid(grid).rays
    assert strided.shape == full.shape
    np.testing.assert_allclose(strided, full, atol=1e-6, equal_nan=True)


def test_camera_strided_by_one_is_itself_and_other_strides_are_refused() -> None:
    camera = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5)
    assert camera.strided(1) is camera
    with pytest.raises(ValueError, match="depth stride must be one of 1, 2, 4, got 3"):
        camera.strided(3)


def test_camera_scaled_to_its_own_size_is_itself() -> None:
    camera = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5)
    assert camera.scaled(640, 480) is camera


def test_camera_scaled_within_the_aspect_tolerance() -> None:
    # 642x480 is 0.3 % wider in aspect than 640x480 (an encoder's rounding): rescaled, each axis on its own.
    camera = CameraMessage(640, 480, 500.0, 520.0, 319.5, 239.5, distortion=(0.1, -0.2, 0.0, 0.0))
    wide = camera.scaled(642, 480)
    assert (wide.width, wide.height, wide.fy, wide.cy) == (642, 480, 520.0, 239.5)
    assert wide.fx == pytest.approx(500.0 * 642 / 640) and wide.cx == pytest.approx((319.5 + 0.5) * 642 / 640 - 0.5)
    assert wide.distortion == camera.distortion and wide.model == camera.model


@pytest.mark.parametrize("size", [(640, 360), (480, 480), (656, 480)])
def test_camera_scaled_to_another_aspect_ratio_is_refused(size: tuple[int, int]) -> None:
    # (656, 480) is 2.5 % off: past the 1 % tolerance, as a sensor crop is.
    camera = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5)
    width, height = size
    with pytest.raises(
        ProtocolError, match=rf"frames are {width}x{height} \(aspect .*640x480 \(aspect 1.3333\)"
    ) as info:
        camera.scaled(width, height)
    assert info.value.code == protocol.CAMERA_MISMATCH
    assert f"calibrate at {width}x{height}" in info.value.message


def test_camera_scaled_to_an_empty_frame_is_refused() -> None:
    camera = CameraMessage(640, 480, 500.0, 500.0, 319.5, 239.5)
    with pytest.raises(ProtocolError, match="frame size 0x480 is not a valid image size") as info:
        camera.scaled(0, 480)
    assert info.value.code == protocol.CAMERA_MISMATCH


def test_keypoints_round_trip_with_descriptors() -> None:
    rng = np.random.default_rng(0)
    message = KeypointsMessage(
        pts=3000,
        points=rng.normal(size=(5, 3)).astype(np.float32),
        pixels=rng.uniform(0, 400, (5, 2)).astype(np.float32),
        scores=rng.uniform(size=5).astype(np.float32),
        depth_kind="metric",
        width=640,
        height=480,
        frame_index=7,
        timing={"inference": 12.345},
        descriptor_type="orb",
        descriptors=rng.integers(0, 255, (5, 32), dtype=np.uint8),
    )
    decoded = protocol.decode(protocol.encode(message))
    assert isinstance(decoded, KeypointsMessage)
    np.testing.assert_allclose(decoded.points, message.points, atol=1e-4)
    np.testing.assert_allclose(decoded.pixels, message.pixels, atol=1e-2)
    np.testing.assert_array_equal(decoded.descriptors, message.descriptors)
    assert decoded.timing == {"inference": 12.35}
    assert (decoded.pts, decoded.frame_index, decoded.depth_kind) == (3000, 7, "metric")


def _keypoints(points: list[list[float]], axes: str) -> KeypointsMessage:
    n = len(points)
    return KeypointsMessage(
        pts=0,
        points=np.array(points, np.float32).reshape(n, 3),
        pixels=np.zeros((n, 2), np.float32),
        scores=np.ones(n, np.float32),
        depth_kind="metric",
        width=64,
        height=48,
        axes=axes,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("axes", "on_the_wire"),
    [("optical", [1.5, 2.25, 4.0]), ("opengl", [1.5, -2.25, -4.0]), ("seed", [1.5, -2.25, 4.0])],
)
def test_keypoints_are_optical_in_memory_and_in_axes_on_the_wire(axes: str, on_the_wire: list[float]) -> None:
    message = _keypoints([[1.5, 2.25, 4.0]], axes)  # 1.5 m right, 2.25 m below, 4 m ahead
    payload = json.loads(protocol.encode(message))
    assert payload["axes"] == axes and payload["points"] == [on_the_wire]
    decoded = protocol.decode(protocol.encode(message))
    assert isinstance(decoded, KeypointsMessage) and decoded.axes == axes
    np.testing.assert_array_equal(decoded.points, [[1.5, 2.25, 4.0]])


def test_keypoints_with_unknown_axes_are_refused_both_ways() -> None:
    with pytest.raises(ProtocolError, match="axes must be one of optical, opengl, seed, got 'enu'"):
        _keypoints([], "enu")
    payload = json.loads(protocol.encode(_keypoints([[0.0, 0.0, 1.0]], "optical")))
    payload["axes"] = "ned"
    with pytest.raises(ProtocolError, match="got 'ned'") as info:
        protocol.decode(json.dumps(payload))
    assert info.value.code == protocol.INVALID_MESSAGE


def test_keypoints_with_inconsistent_shapes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="inconsistent shapes"):
        KeypointsMessage(
            pts=0,
            points=np.zeros((2, 3), np.float32),
            pixels=np.zeros((3, 2), np.float32),
            scores=np.zeros(2, np.float32),
            depth_kind="metric",
            width=1,
            height=1,
        )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", protocol.INVALID_JSON),
        ("[1, 2]", protocol.INVALID_MESSAGE),
        ('{"type": "teleport"}', protocol.UNKNOWN_TYPE),
        ('{"no_type": 1}', protocol.UNKNOWN_TYPE),
        ("x" * (protocol.MAX_MESSAGE_BYTES + 1), protocol.MESSAGE_TOO_LARGE),
    ],
)
def test_decode_errors_carry_the_code_to_send_back(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(text)
    assert info.value.code == code
    assert ErrorMessage.from_exception(info.value).to_dict()["code"] == code


def test_decode_accept_limits_the_types_an_end_takes() -> None:
    text = protocol.encode(ErrorMessage("x", "y"))
    with pytest.raises(ProtocolError, match="expected one of: camera"):
        protocol.decode(text, accept=["camera"])


def test_session_description_validates_type_and_sdp() -> None:
    good = SessionDescription.from_json('{"sdp": "v=0\\r\\n", "type": "offer"}')
    assert json.loads(good.to_json()) == {"sdp": "v=0\r\n", "type": "offer"}
    with pytest.raises(ProtocolError, match="'type' must be 'offer' or 'answer'"):
        SessionDescription.from_json('{"sdp": "v=0", "type": "pranswer"}')
    with pytest.raises(ProtocolError, match="'sdp' must be an SDP text"):
        SessionDescription.from_json('{"sdp": "hello", "type": "offer"}')
    with pytest.raises(ProtocolError) as info:
        SessionDescription.from_json(b"\xff\xfe")
    assert info.value.code == protocol.INVALID_JSON
