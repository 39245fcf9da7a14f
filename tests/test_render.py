import numpy as np
import pytest

from dronedepth.gateway.outputs.render import colorize_depth, depth_preview, render_point_cloud


def test_colorize_depth_near_is_warm_far_is_cool_invalid_is_black() -> None:
    depth = np.array([[1.0, 10.0, np.nan, 0.0]], np.float32)
    depth = np.repeat(depth, 4, axis=0)
    rgb = colorize_depth(depth, "metric")
    near, far = rgb[0, 0].astype(int), rgb[0, 1].astype(int)
    assert near[0] > near[2], "near pixels should be red-ish"
    assert far[2] > far[0], "far pixels should be blue-ish"
    assert (rgb[:, 2:] == 0).all(), "non-finite and zero depth must be black"


def test_colorize_depth_all_invalid_gives_black_image() -> None:
    assert not colorize_depth(np.full((3, 3), np.nan, np.float32), "metric").any()


def test_depth_preview_is_frame_and_depth_side_by_side() -> None:
    rgb = np.zeros((48, 64, 3), np.uint8)
    depth = np.linspace(1, 5, 48 * 64, dtype=np.float32).reshape(48, 64)
    panel = depth_preview(rgb, depth, "relative", note="random-init")
    assert panel.shape == (48, 128, 3)
    assert panel[:, 64:].any()


@pytest.mark.parametrize("stride", [2, 4])
def test_depth_preview_draws_a_strided_depth_grid_at_the_frame_size(stride: int) -> None:
    """A 65x49 frame's depth grid (every stride-th pixel from 0): each grid pixel fills the block it starts."""
    rgb = np.zeros((49, 65, 3), np.uint8)
    grid = (-(-49 // stride), -(-65 // stride))
    depth = np.linspace(1, 5, grid[0] * grid[1], dtype=np.float32).reshape(grid)
    depth[-1, -1] = np.nan  # the last grid pixel: its block is cut by the frame's edge
    panel = depth_preview(rgb, depth, "metric")
    assert panel.shape == (49, 130, 3)
    coloured = panel[:, 65:]
    expected = colorize_depth(depth, "metric")
    label_rows = 22  # the range label's band darkens the top int(32 × 0.5) + 6 rows
    for j in range(-(-label_rows // stride), grid[0]):
        for i in range(grid[1]):
            block = coloured[j * stride : (j + 1) * stride, i * stride : (i + 1) * stride]
            assert (block == expected[j, i]).all(), (j, i)
    assert not coloured[-1, -1].any(), "the invalid grid pixel stays black up to the frame's edge"


def test_depth_preview_refuses_depth_of_another_size() -> None:
    with pytest.raises(ValueError, match=r"depth of shape \(20, 20\) fits no depth stride"):
        depth_preview(np.zeros((48, 64, 3), np.uint8), np.ones((20, 20), np.float32), "metric")


@pytest.fixture
def plane() -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:60, 0:80]
    z = np.full(u.shape, 4.0)
    points = np.stack([(u - 40) / 50 * z, (v - 30) / 50 * z, z], -1).reshape(-1, 3).astype(np.float32)
    colors = np.zeros((len(points), 3), np.uint8)
    colors[:, 1] = 255
    return points, colors


def test_render_point_cloud_draws_the_plane_head_on_unmirrored(plane: tuple[np.ndarray, np.ndarray]) -> None:
    # Seen from straight behind the original camera, the 80x60 frontal plane is a centred 4:3 rectangle
    # (2x2 splats of points ~2.5 px apart: ~60 % of its pixels) with its (u=0, v=0) corner at the top left.
    points, colors = plane
    image = render_point_cloud(points, colors, size=(320, 240), yaw_deg=0.0, pitch_deg=0.0, highlight=points[:1])
    green = (image[..., 1] == 255) & (image[..., 0] == 0)
    rows, cols = np.nonzero(green)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    assert abs((left + right) / 2 - 160) <= 2 and abs((top + bottom) / 2 - 120) <= 2
    assert (right - left) / (bottom - top) == pytest.approx(80 / 60, rel=0.03)
    assert green[top : bottom + 1, left : right + 1].mean() > 0.4, "points, not a sparse scatter"
    red_rows, red_cols = np.nonzero((image[..., 0] > 200) & (image[..., 1] < 100))
    assert red_rows.size, "the highlight is drawn"
    assert red_cols.mean() < left + 10 and red_rows.mean() < top + 10, "the first point's corner is top-left"


def test_render_point_cloud_nearest_point_wins(plane: tuple[np.ndarray, np.ndarray]) -> None:
    points, _ = plane
    behind = points + np.array([0, 0, 1.0], np.float32)
    colors = np.concatenate([np.full((len(points), 3), 255, np.uint8), np.zeros((len(points), 3), np.uint8)])
    image = render_point_cloud(
        np.concatenate([points, behind]), colors, size=(64, 48), yaw_deg=0, pitch_deg=0, background=(9, 9, 9)
    )
    drawn = image[(image != 9).any(-1)]
    assert (drawn == 255).all(axis=-1).mean() > 0.95


def test_render_point_cloud_empty_gives_background() -> None:
    image = render_point_cloud(np.zeros((0, 3), np.float32), None, size=(32, 24), background=(1, 2, 3))
    assert (image == [1, 2, 3]).all()
