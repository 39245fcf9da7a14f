import numpy as np
import pytest

from dronedepth.axes import AXES, AXIS_SIGNS, axes_from_optical, optical_from_axes

# A point 1 m right, 2 m below and 3 m ahead of the camera (optical: x right, y down, z forward).
OPTICAL = np.array([[1.0, 2.0, 3.0], [-0.5, -0.25, 8.0]], dtype=np.float32)
BY_HAND = {
    "optical": [[1.0, 2.0, 3.0], [-0.5, -0.25, 8.0]],
    # x right, y up, z backward: below → negative y, ahead → negative z.
    "opengl": [[1.0, -2.0, -3.0], [-0.5, 0.25, -8.0]],
    # x right, y up, z forward: below → negative y, ahead stays positive z.
    "seed": [[1.0, -2.0, 3.0], [-0.5, 0.25, 8.0]],
}


def test_every_axes_value_has_a_hand_computed_case():
    assert set(AXES) == set(AXIS_SIGNS) == set(BY_HAND)


@pytest.mark.parametrize("axes", AXES)
def test_optical_points_in_each_axes_match_the_hand_computed_ones(axes):
    converted = axes_from_optical(OPTICAL, axes)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, BY_HAND[axes])
    np.testing.assert_array_equal(optical_from_axes(np.array(BY_HAND[axes], np.float32), axes), OPTICAL)


def test_optical_is_returned_without_a_copy():
    assert axes_from_optical(OPTICAL, "optical") is OPTICAL
    assert optical_from_axes(OPTICAL, "optical") is OPTICAL


def test_conversion_writes_into_a_given_buffer_and_casts_to_float32():
    out = np.zeros((2, 3), np.float32)
    returned = axes_from_optical(OPTICAL.astype(np.float64), "opengl", out=out)
    assert returned is out
    np.testing.assert_array_equal(out, BY_HAND["opengl"])


@pytest.mark.parametrize(("axes", "handedness"), [("optical", 1.0), ("opengl", 1.0), ("seed", -1.0)])
def test_handedness(axes, handedness):
    x, y, z = axes_from_optical(np.eye(3, dtype=np.float32), axes)
    assert np.dot(np.cross(x, y), z) == handedness  # seed is left-handed: the docs warn about it


def test_unknown_axes_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="axes must be one of optical, opengl, seed; got 'enu'"):
        axes_from_optical(OPTICAL, "enu")
    with pytest.raises(ValueError, match="got 'ENU'"):
        optical_from_axes(OPTICAL, "ENU")


def test_the_sign_tables_cannot_be_changed_by_accident():
    with pytest.raises(ValueError, match="read-only"):
        AXIS_SIGNS["opengl"][1] = 1.0
