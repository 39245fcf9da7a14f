"""The exported graph: exact I/O contract, truly dynamic sizes, parity with the official path, FP16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from export_fixtures import SMALL_INPUT, exported, hf_model, hf_model_dir

from dronedepth.contract import INPUT_NAME, OUTPUT_NAME
from dronedepth.export.facts import ModelFacts
from dronedepth.export.onnx_export import read_onnx_facts
from dronedepth.export.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    PARITY_CASES,
    ParityCase,
    check_parity,
    onnx_session,
    run_onnx,
)
from dronedepth.export.reference import nrmse, preprocess_official, reference_depth, synthetic_frames


def test_graph_contract() -> None:
    _, out = exported("random")
    model = onnx.load(str(out.path), load_external_data=False)
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert outp.name == OUTPUT_NAME and outp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert in_dims == ["batch", "height", "width", 3]
    assert out_dims == ["batch", "height", "width"]


def test_metadata_holds_the_facts() -> None:
    loaded, out = exported("random")
    facts = read_onnx_facts(out.path)
    assert facts == out.facts
    assert facts == ModelFacts(
        encoder="vits",
        depth_kind="relative",
        max_depth=None,
        input_size=SMALL_INPUT,
        precision="fp32",
        weight_source=loaded.info.weight_source,
        random_init=True,
        pos_embed_interp="official",
        exporter=facts.exporter,
    )
    doc = onnx.load(str(out.path), load_external_data=False).doc_string
    assert "RANDOM WEIGHTS" in doc and "not metres" in doc


def test_parity_at_every_size_and_batch() -> None:
    """640×480, 480×640, 320×240, 1280×720 and a batch of two, at a small input size."""
    loaded, out = exported("random")
    results = check_parity(out.path, loaded.model, SMALL_INPUT, PARITY_CASES)
    assert [r.case for r in results] == list(PARITY_CASES)
    for r in results:
        assert r.nrmse <= FP32_TOLERANCE, (r.case.label, r.nrmse)


@pytest.mark.parametrize(("h", "w"), [(14, 14), (100, 57), (33, 400), (518, 518)])
def test_unusual_sizes_work(h: int, w: int) -> None:
    """Sizes and aspect ratios far from the traced 320×240: nothing is baked in."""
    loaded, out = exported("random")
    frames = synthetic_frames(h, w, 1, seed=h * w)
    got = run_onnx(onnx_session(out.path), frames)
    assert got.shape == (1, h, w) and got.dtype == np.float32
    assert nrmse(got, reference_depth(loaded.model, frames, SMALL_INPUT)) <= FP32_TOLERANCE


@pytest.mark.parametrize("stride", [2, 4])
def test_a_strided_export_is_the_full_resolution_export_sliced(stride: int) -> None:
    """Real ONNX Runtime: depth stride s returns the stride-1 graph's depth at every s-th row and column from 0.

    Odd sizes and a batch of two, so the grid's last row and column (ceil) and the batch axis are covered.
    """
    _, full = exported("random")
    _, strided = exported("random", depth_stride=stride)
    model = onnx.load(str(strided.path), load_external_data=False)
    out_dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", "depth_rows", "depth_columns"]
    assert read_onnx_facts(strided.path).depth_stride == stride
    for h, w in [(97, 130), (480, 640)]:
        frames = synthetic_frames(h, w, 2, seed=h + stride)
        reference = run_onnx(onnx_session(full.path), frames)
        got = run_onnx(onnx_session(strided.path), frames)
        assert got.shape == (2, -(-h // stride), -(-w // stride)) and got.dtype == np.float32
        np.testing.assert_allclose(got, reference[:, ::stride, ::stride], rtol=1e-4, atol=1e-5 * reference.max())


def test_batch_items_are_independent() -> None:
    _, out = exported("random")
    frames = synthetic_frames(96, 128, 3, seed=4)
    session = onnx_session(out.path)
    together = run_onnx(session, frames)
    alone = np.concatenate([run_onnx(session, frames[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_parity_at_the_default_input_size() -> None:
    """The real 518 input size (686×518 network input for 640×480), metric head."""
    loaded, out = exported("random-metric", input_size=518)
    (result,) = check_parity(out.path, loaded.model, 518, [ParityCase(480, 640)])
    assert result.nrmse <= FP32_TOLERANCE
    depth = run_onnx(onnx_session(out.path), synthetic_frames(480, 640, 1, seed=9))
    assert depth.min() > 0 and depth.max() < 80.0


def test_onnx_of_hf_weights_matches_transformers_itself() -> None:
    """End to end: ONNX of a saved transformers model vs transformers' own forward, official preprocessing."""
    _, out = exported("hf-metric")
    hf = hf_model(hf_model_dir("outdoor"))
    session = onnx_session(out.path)
    for case in (ParityCase(480, 640), ParityCase(240, 320)):
        frames = synthetic_frames(case.height, case.width, 1, seed=case.height)
        x = torch.from_numpy(preprocess_official(frames[0], SMALL_INPUT)).unsqueeze(0)
        with torch.no_grad():
            depth = hf(pixel_values=x).predicted_depth
            expected = F.interpolate(depth[:, None], (case.height, case.width), mode="bilinear", align_corners=True)[
                :, 0
            ]
        assert nrmse(run_onnx(session, frames), expected.numpy()) <= FP32_TOLERANCE


def test_fp16_model() -> None:
    loaded, fp32 = exported("random")
    _, fp16 = exported("random", precision="fp16")
    model = onnx.load(str(fp16.path), load_external_data=False)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    half = sum(int(np.prod(t.dims)) for t in weights if t.data_type == onnx.TensorProto.FLOAT16)
    assert half / sum(int(np.prod(t.dims)) for t in weights) > 0.95
    assert fp16.path.stat().st_size < 0.6 * fp32.path.stat().st_size
    assert read_onnx_facts(fp16.path).precision == "fp16"
    # Against the FP32 reference with the original (not rounded) weights.
    results = check_parity(fp16.path, loaded.model, SMALL_INPUT, [ParityCase(480, 640), ParityCase(720, 1280)])
    for r in results:
        assert 0 < r.nrmse <= FP16_TOLERANCE, (r.case.label, r.nrmse)
    # The caller's model is untouched by the FP16 export.
    assert next(loaded.model.parameters()).dtype == torch.float32
