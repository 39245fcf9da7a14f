"""dronedepth.pose_buffer: matching poses to frame instants, and refusing bad poses with clear reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dronedepth.errors import ProtocolError
from dronedepth.frames import Transform, quaternion_from_rpy, rpy_from_quaternion
from dronedepth.pose_buffer import PoseBuffer, TimedPose
from dronedepth.protocol import INVALID_POSE


def pose(t: float, x: float, yaw_rad: float = 0.0, **extra: object) -> TimedPose:
    return TimedPose(t, Transform(quaternion_from_rpy(0, 0, yaw_rad), np.array([x, 0.0, 0.0])), **extra)  # type: ignore[arg-type]


def test_interpolates_position_linearly_and_orientation_by_slerp() -> None:
    buffer = PoseBuffer()
    buffer.add(pose(1.00, 0.0, 0.0, height_above_ground_m=2.0, velocity_m_s=np.array([1.0, 0, 0])))
    buffer.add(pose(1.08, 0.8, math.pi / 2, height_above_ground_m=4.0, velocity_m_s=np.array([3.0, 0, 0])))
    match = buffer.lookup(1.02)
    assert match.status == "interpolated" and match.pose is not None
    assert match.nearest_s == pytest.approx(0.02)
    np.testing.assert_allclose(match.pose.world_from_body.translation, [0.2, 0, 0])
    assert rpy_from_quaternion(match.pose.world_from_body.rotation)[2] == pytest.approx(math.pi / 8)
    assert match.pose.height_above_ground_m == pytest.approx(2.5)
    np.testing.assert_allclose(match.pose.velocity_m_s, [1.5, 0, 0])  # type: ignore[arg-type]
    exact = buffer.lookup(1.08)
    assert exact.status == "exact" and exact.pose is not None and exact.pose.time_s == 1.08


def test_refuses_to_bridge_or_extrapolate_beyond_the_gap() -> None:
    buffer = PoseBuffer(max_gap_s=0.1)
    assert buffer.lookup(0.0).status == "empty"
    buffer.add(pose(0.0, 0.0))
    assert buffer.lookup(0.05).status == "ahead"  # one sample: nothing to extrapolate from
    buffer.add(pose(0.05, 0.5))
    ahead = buffer.lookup(0.09)
    assert ahead.status == "extrapolated" and ahead.pose is not None
    np.testing.assert_allclose(ahead.pose.world_from_body.translation, [0.9, 0, 0])
    assert buffer.lookup(0.16).status == "ahead"
    assert buffer.lookup(-0.11).status == "behind"
    assert buffer.lookup(-0.02).status == "extrapolated"
    buffer.add(pose(0.30, 1.0))  # 0.25 s after the previous one
    gap = buffer.lookup(0.2)
    assert gap.status == "gap" and gap.pose is None and gap.nearest_s == pytest.approx(0.1)
    assert buffer.lookup(0.32).status == "ahead"  # the last two are too far apart to extrapolate
    assert buffer.lookup(0.06).status == "gap"  # 0.01 after a sample but 0.24 before the next


def test_keeps_only_the_newest_poses() -> None:
    buffer = PoseBuffer(capacity=3)
    for i in range(5):
        buffer.add(pose(i * 0.06, float(i)))
    assert len(buffer) == 3
    assert buffer.lookup(0.0).status == "behind"
    assert buffer.newest is not None and buffer.newest.time_s == pytest.approx(0.24)
    buffer.clear()
    assert buffer.lookup(0.24).status == "empty"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (pose(math.nan, 0.0), "time must be finite"),
        (pose(1.0, math.nan), "position must be 3 finite numbers"),
        (TimedPose(1.0, Transform(np.array([0, 0, 0, 1.2]), np.zeros(3))), r"norm 1\.2"),
        (TimedPose(1.0, Transform(np.array([0, 0, math.inf, 1]), np.zeros(3))), "not finite"),
        (pose(1.0, 0.0, height_above_ground_m=-1.0), "height above ground"),
        (pose(1.0, 0.0, velocity_m_s=np.array([math.nan, 0, 0])), "velocity"),
    ],
)
def test_refuses_bad_values_and_keeps_what_it_had(bad: TimedPose, message: str) -> None:
    buffer = PoseBuffer()
    buffer.add(pose(0.5, 1.0))
    with pytest.raises(ProtocolError, match=message) as caught:
        buffer.add(bad)
    assert caught.value.code == INVALID_POSE
    assert len(buffer) == 1


def test_normalises_a_nearly_unit_quaternion() -> None:
    stored = PoseBuffer().add(TimedPose(0.0, Transform(np.array([0, 0, 0, 1.0008]), np.zeros(3))))
    assert np.linalg.norm(stored.world_from_body.rotation) == pytest.approx(1.0)


def test_refuses_time_going_backwards_repeating_or_far_in_the_future() -> None:
    buffer = PoseBuffer(max_future_s=2.0)
    buffer.add(pose(1.0, 0.0))
    with pytest.raises(ProtocolError, match="goes backwards"):
        buffer.add(pose(0.9, 0.0))
    with pytest.raises(ProtocolError, match="repeats"):
        buffer.add(pose(1.0, 0.0))
    with pytest.raises(ProtocolError, match=r"more than 2\.0 s after the newest frame"):
        buffer.add(pose(5.0, 0.0), reference_s=1.5)
    buffer.add(pose(3.0, 0.0), reference_s=1.5)
    assert len(buffer) == 2
