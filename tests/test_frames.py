"""dronedepth.frames against hand-computed cases: every conversion, both directions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dronedepth.frames import (
    ENU_FROM_NED,
    FLU_FROM_FRD,
    Transform,
    body_from_camera,
    enu_from_ned_pose,
    enu_from_ned_vector,
    interpolate,
    matrix_from_quaternion,
    normalised_quaternion,
    quaternion_from_matrix,
    quaternion_from_rpy,
    rpy_from_quaternion,
    slerp,
)

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def yaw(angle: float, translation: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Transform:
    return Transform(quaternion_from_rpy(0.0, 0.0, angle), np.array(translation, dtype=np.float64))


def test_quaternion_order_is_xyzw_and_rpy_is_ros_fixed_axis() -> None:
    q = quaternion_from_rpy(0.0, 0.0, math.pi / 2)
    np.testing.assert_allclose(q, [0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)
    # yaw 90° turns x onto y (counter-clockwise seen from above)
    np.testing.assert_allclose(matrix_from_quaternion(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    # pitch +90° turns x onto -z (nose down in FLU), roll +90° turns y onto z
    np.testing.assert_allclose(
        matrix_from_quaternion(quaternion_from_rpy(0, math.pi / 2, 0)) @ [1, 0, 0], [0, 0, -1], atol=1e-12
    )
    np.testing.assert_allclose(
        matrix_from_quaternion(quaternion_from_rpy(math.pi / 2, 0, 0)) @ [0, 1, 0], [0, 0, 1], atol=1e-12
    )
    # R = Rz(yaw) Ry(pitch) Rx(roll)
    r, p, y = 0.3, -0.4, 2.0
    rz = matrix_from_quaternion(quaternion_from_rpy(0, 0, y))
    ry = matrix_from_quaternion(quaternion_from_rpy(0, p, 0))
    rx = matrix_from_quaternion(quaternion_from_rpy(r, 0, 0))
    np.testing.assert_allclose(matrix_from_quaternion(quaternion_from_rpy(r, p, y)), rz @ ry @ rx, atol=1e-12)
    assert rpy_from_quaternion(quaternion_from_rpy(r, p, y)) == pytest.approx((r, p, y))


@pytest.mark.parametrize("rpy", [(0.0, 0.0, 0.0), (0.1, 0.2, 0.3), (3.0, 0.1, -3.0), (0.0, 0.0, math.pi)])
def test_matrix_and_quaternion_round_trip(rpy: tuple[float, float, float]) -> None:
    q = quaternion_from_rpy(*rpy)
    back = quaternion_from_matrix(matrix_from_quaternion(q))
    assert abs(abs(float(np.dot(q, back))) - 1.0) < 1e-12


def test_normalised_quaternion_normalises_within_tolerance_and_refuses_beyond() -> None:
    np.testing.assert_allclose(normalised_quaternion([0, 0, 0, 1.0005]), IDENTITY)
    with pytest.raises(ValueError, match=r"norm 1\.1.*not 1"):
        normalised_quaternion([0, 0, 0, 1.1])
    with pytest.raises(ValueError, match="not finite"):
        normalised_quaternion([0, 0, math.nan, 1])
    with pytest.raises(ValueError, match="4 components"):
        normalised_quaternion([0, 0, 1])


def test_transforms_compose_and_invert_by_their_names() -> None:
    world_from_body = yaw(math.pi / 2, (10.0, 0.0, 2.0))
    body_from_sensor = Transform(IDENTITY, np.array([1.0, 0.0, 0.0]))
    world_from_sensor = world_from_body @ body_from_sensor
    # 1 m ahead of a body facing +y at (10, 0, 2) is (10, 1, 2)
    np.testing.assert_allclose(world_from_sensor.apply([0, 0, 0]), [10, 1, 2], atol=1e-12)
    np.testing.assert_allclose(world_from_body.inverse().apply([10, 1, 2]), [1, 0, 0], atol=1e-12)
    assert (world_from_body @ world_from_body.inverse()).is_close(Transform.identity())
    np.testing.assert_allclose(world_from_body.matrix @ [1, 0, 0, 1], [10, 1, 2, 1], atol=1e-12)
    np.testing.assert_allclose(world_from_body.rotate([1, 0, 0]), [0, 1, 0], atol=1e-12)


def test_ned_to_enu_axes() -> None:
    # north 1, east 2, down 3 → east 2, north 1, up -3
    np.testing.assert_allclose(enu_from_ned_vector([1, 2, 3]), [2, 1, -3])
    np.testing.assert_allclose(ENU_FROM_NED.apply([1, 2, 3]), [2, 1, -3])
    np.testing.assert_allclose(FLU_FROM_FRD.apply([1, 2, 3]), [1, -2, -3])
    assert (ENU_FROM_NED @ ENU_FROM_NED).is_close(Transform.identity())
    assert (FLU_FROM_FRD @ FLU_FROM_FRD).is_close(Transform.identity())


@pytest.mark.parametrize(
    ("ned_yaw_deg", "enu_yaw_deg"),
    [(0.0, 90.0), (90.0, 0.0), (180.0, -90.0), (-90.0, 180.0), (45.0, 45.0)],
)
def test_a_heading_in_ned_is_its_complement_in_enu(ned_yaw_deg: float, enu_yaw_deg: float) -> None:
    # NED yaw is clockwise from north; ENU yaw counter-clockwise from east: yaw_enu = 90° − yaw_ned.
    ned = yaw(math.radians(ned_yaw_deg), (1.0, 2.0, -3.0))  # 3 m above the origin, north 1, east 2
    enu = enu_from_ned_pose(ned)
    roll, pitch, heading = rpy_from_quaternion(enu.rotation)
    assert (roll, pitch) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert math.cos(heading - math.radians(enu_yaw_deg)) == pytest.approx(1.0)
    np.testing.assert_allclose(enu.translation, [2.0, 1.0, 3.0], atol=1e-12)


def test_a_body_pitched_up_in_ned_is_pitched_up_in_enu() -> None:
    # FRD pitch +10° raises the nose (rotation about the right axis); in FLU nose-up is pitch −10°.
    ned = Transform(quaternion_from_rpy(0.0, math.radians(10.0), 0.0), np.zeros(3))  # facing north
    enu = enu_from_ned_pose(ned)
    nose = enu.rotate([1, 0, 0])  # FLU forward axis in ENU
    np.testing.assert_allclose(nose, [0.0, math.cos(math.radians(10)), math.sin(math.radians(10))], atol=1e-12)


def test_default_mount_looks_forward_with_the_image_upright() -> None:
    mount = body_from_camera()
    np.testing.assert_allclose(mount.rotate([0, 0, 1]), [1, 0, 0], atol=1e-12)  # optical z → forward
    np.testing.assert_allclose(mount.rotate([1, 0, 0]), [0, -1, 0], atol=1e-12)  # image right → body right
    np.testing.assert_allclose(mount.rotate([0, 1, 0]), [0, 0, -1], atol=1e-12)  # image down → body down


def test_a_camera_pitched_30_degrees_down_sees_the_ground_where_trigonometry_says() -> None:
    height = 10.0
    world_from_body = Transform(IDENTITY, np.array([0.0, 0.0, height]))  # level, facing east, 10 m up
    mount = body_from_camera(x=0.2, z=-0.1, pitch=math.radians(30.0))
    world_from_camera = world_from_body @ mount
    centre = world_from_camera.apply([0, 0, 0])
    axis = world_from_camera.rotate([0, 0, 1])
    hit = centre + axis * (centre[2] / -axis[2])
    np.testing.assert_allclose(hit, [0.2 + (height - 0.1) / math.tan(math.radians(30.0)), 0.0, 0.0], atol=1e-9)
    # and a point the camera sees 5 m straight ahead (optical z) is 30° below the horizon
    seen = world_from_camera.apply([0, 0, 5.0])
    np.testing.assert_allclose(seen, centre + 5.0 * np.array([math.cos(math.pi / 6), 0, -math.sin(math.pi / 6)]))


def test_a_camera_yawed_left_looks_left() -> None:
    mount = body_from_camera(yaw=math.pi / 2)
    np.testing.assert_allclose(mount.rotate([0, 0, 1]), [0, 1, 0], atol=1e-12)


def test_slerp_halfway_and_the_short_arc() -> None:
    a = quaternion_from_rpy(0, 0, 0.0)
    b = quaternion_from_rpy(0, 0, math.pi / 2)
    assert rpy_from_quaternion(slerp(a, b, 0.5))[2] == pytest.approx(math.pi / 4)
    assert rpy_from_quaternion(slerp(a, -b, 0.5))[2] == pytest.approx(math.pi / 4)  # -b is the same rotation
    assert rpy_from_quaternion(slerp(a, b, 1.5))[2] == pytest.approx(3 * math.pi / 4)  # continues beyond b
    np.testing.assert_allclose(slerp(a, a, 0.3), a)
    c = quaternion_from_rpy(0, 0, 1e-6)  # nearly equal: no 0/0
    assert np.isfinite(slerp(a, c, 0.5)).all()


def test_interpolate_is_linear_in_position() -> None:
    a = yaw(0.0, (0.0, 0.0, 0.0))
    b = yaw(math.pi / 2, (2.0, 4.0, 6.0))
    mid = interpolate(a, b, 0.25)
    np.testing.assert_allclose(mid.translation, [0.5, 1.0, 1.5])
    assert rpy_from_quaternion(mid.rotation)[2] == pytest.approx(math.pi / 8)
