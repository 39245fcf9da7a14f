"""The architecture port: same outputs as transformers on identical weights, both heads, exact resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from export_fixtures import hf_model, hf_model_dir, random_model

from dronedepth.export.architecture import ENCODERS, DepthAnythingV2
from dronedepth.export.reference import lower_bound_size_numpy, nrmse
from dronedepth.export.resample import cubic_matrix, lower_bound_size, resize_cubic
from dronedepth.export.weights import load_hf

SIZES = [(518, 518), (266, 378), (140, 182), (252, 126)]


@pytest.mark.parametrize("metric", [None, "outdoor"])
def test_matches_transformers_forward(metric: str | None) -> None:
    """Our module with HF weights (transformers' pos-embed resize) == DepthAnythingForDepthEstimation."""
    path = hf_model_dir(metric)
    ours = load_hf(path).model
    theirs = hf_model(path)
    gen = torch.Generator().manual_seed(3)
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=gen)
        with torch.no_grad():
            expected = theirs(pixel_values=x).predicted_depth
            eager = ours(x)
            traced_path = ours.set_traceable(True)(x)
            ours.set_traceable(False)
        assert eager.shape == expected.shape == (2, h, w)
        assert expected.std() > 0
        assert nrmse(eager.numpy(), expected.numpy()) < 1e-4, (h, w)
        assert nrmse(traced_path.numpy(), expected.numpy()) < 1e-4, (h, w)


@pytest.mark.parametrize("grid", [(37, 37), (49, 37), (37, 49), (10, 13), (66, 37), (1, 5)])
@pytest.mark.parametrize("mode", ["official", "transformers"])
def test_in_graph_pos_embed_matches_interpolate(grid: tuple[int, int], mode: str) -> None:
    """The in-graph cubic weights reproduce each implementation's own F.interpolate call."""
    model = DepthAnythingV2("vits", pos_embed_interp=mode)  # type: ignore[arg-type]
    with torch.no_grad():
        model.pretrained.pos_embed.normal_()
        eager = model.pretrained.interpolate_pos_embed(*grid)
        model.set_traceable(True)
        graph = model.pretrained.interpolate_pos_embed(torch.tensor(grid[0]), torch.tensor(grid[1]))
    assert eager.shape == (1, 1 + grid[0] * grid[1], 384)
    assert torch.allclose(eager, graph, atol=1e-4), (eager - graph).abs().max()


def test_official_pos_embed_is_the_dinov2_formula() -> None:
    """Official DINOv2: scale_factor (n + 0.1) / 37, untouched table for 37×37 patches."""
    model = DepthAnythingV2("vits", pos_embed_interp="official")
    with torch.no_grad():
        model.pretrained.pos_embed.normal_()
        table = model.pretrained.pos_embed[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
        expected = F.interpolate(table, scale_factor=(49.1 / 37, 37.1 / 37), mode="bicubic", antialias=False)
        got = model.pretrained.interpolate_pos_embed(49, 37)[:, 1:]
        assert torch.allclose(got, expected.permute(0, 2, 3, 1).reshape(1, -1, 384))
        native = model.pretrained.interpolate_pos_embed(37, 37)
        assert torch.equal(native, model.pretrained.pos_embed)
        # The two implementations really differ off the native grid: the mode matters.
        hf = DepthAnythingV2("vits", pos_embed_interp="transformers")
        hf.pretrained.pos_embed.copy_(model.pretrained.pos_embed)
        assert not torch.allclose(
            hf.pretrained.interpolate_pos_embed(49, 37), model.pretrained.interpolate_pos_embed(49, 37)
        )


def test_cubic_resize_matches_cv2() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for (h, w), (nh, nw) in [
        ((480, 640), (518, 686)),
        ((720, 1280), (518, 924)),
        ((17, 40), (518, 1218)),
        ((9, 7), (4, 3)),
    ]:
        img = rng.random((h, w, 3))
        expected = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
        x = torch.from_numpy(img).float().permute(2, 0, 1)
        rows = cubic_matrix(h, nh, torch.tensor(h / nh))
        cols = cubic_matrix(w, nw, torch.tensor(w / nw))
        got = resize_cubic(x, rows, cols).permute(1, 2, 0).numpy()
        # float32 source positions vs cv2's float64: differences stay below 2e-4 on [0, 1] noise
        assert np.abs(got - expected).max() < 2e-4


def test_lower_bound_size_matches_official_rule() -> None:
    for input_size in (518, 140):
        for h in range(14, 1300, 13):
            for w in range(14, 1300, 29):
                expected = lower_bound_size_numpy(h, w, input_size)
                got = tuple(int(v) for v in lower_bound_size(h, w, input_size))
                exact_tie = (input_size * max(h, w)) % (14 * min(h, w)) * 2 == 14 * min(h, w)
                if not exact_tie:  # on exact .5 ties float64 rounding decides in the official code
                    assert got == expected, (h, w, input_size)
    assert lower_bound_size_numpy(480, 640) == (518, 686)  # NOTES: 640×480 -> 686×518
    assert lower_bound_size_numpy(240, 320) == (518, 686)
    assert lower_bound_size_numpy(720, 1280) == (518, 924)


def test_relative_head_outputs_non_negative_disparity() -> None:
    model = random_model().model
    assert isinstance(model.depth_head.scratch.output_conv2[-1], torch.nn.ReLU)
    with torch.no_grad():
        depth = model(torch.randn(1, 3, 140, 182, generator=torch.Generator().manual_seed(0)))
    assert depth.min() >= 0
    assert (depth > 0).any() and (depth == 0).any()


@pytest.mark.parametrize(("metric", "max_depth"), [("indoor", 20.0), ("outdoor", 80.0)])
def test_metric_head_outputs_metres_below_max_depth(metric: str, max_depth: float) -> None:
    loaded = random_model(metric)
    model = loaded.model
    assert isinstance(model.depth_head.scratch.output_conv2[-1], torch.nn.Sigmoid)
    assert model.max_depth == max_depth == loaded.info.max_depth
    with torch.no_grad():
        depth = model(torch.randn(1, 3, 140, 182, generator=torch.Generator().manual_seed(0)))
    assert depth.min() > 0 and depth.max() < max_depth
    assert depth.std() > 0


def test_encoder_table_matches_official_configs() -> None:
    assert ENCODERS["vits"].layer_idx == ENCODERS["vitb"].layer_idx == (2, 5, 8, 11)
    assert ENCODERS["vitl"].layer_idx == (4, 11, 17, 23)
    assert ENCODERS["vitg"].layer_idx == (9, 19, 29, 39)
    assert {e: s.features for e, s in ENCODERS.items()} == {"vits": 64, "vitb": 128, "vitl": 256, "vitg": 384}
    assert ENCODERS["vitl"].out_channels == (256, 512, 1024, 1024)
    params = sum(p.numel() for p in DepthAnythingV2("vits").parameters())
    assert 24.0e6 < params < 25.5e6  # NOTES: ViT-S Depth Anything V2 has 24.8M parameters
