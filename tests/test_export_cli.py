"""``dronedepth export`` end to end, its error messages, and the package's public surface."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_fixtures import hf_model_dir

from dronedepth import export
from dronedepth.cli import main
from dronedepth.export.repository import parse_parameters, read_model_facts
from dronedepth.export.tensorrt import gpu_count


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_random_init_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "--random-init", "--encoder", "vits", "--input-size", "140", "--out", str(tmp_path)
    )
    assert code == 0, err
    model_dir = tmp_path / "depth_anything_v2"
    assert (model_dir / "1" / "model.onnx").is_file() and (model_dir / "config.pbtxt").is_file()
    assert "RANDOM WEIGHTS" in out and "random weights: the output is not depth" in out
    for label in ("640x480", "480x640", "320x240", "1280x720", "640x480 x2"):
        assert label in out
    assert out.count(" ok ") == 5 and "written" in out and str(model_dir / "config.pbtxt") in out
    facts = read_model_facts(model_dir)
    assert facts.random_init and facts.input_size == 140 and facts.depth_kind == "relative"
    # The default depth stride, 2, is written into config.pbtxt and the ONNX metadata, and said.
    assert parse_parameters((model_dir / "config.pbtxt").read_text())["depth_stride"] == "2"
    assert facts.depth_stride == 2 and read_model_facts(model_dir / "1" / "model.onnx").depth_stride == 2
    assert "DEPTH float32 [B,ceil(H/2),ceil(W/2)]" in out and "depth stride 2" in out


def test_depth_stride_other_than_1_2_4_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli(capsys, "--random-init", "--encoder", "vits", "--depth-stride", "3", "--out", str(tmp_path))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "dronedepth export: error: argument --depth-stride: invalid choice: 3 (choose from 1, 2, 4)" in err
    assert "Traceback" not in err and not (tmp_path / "depth_anything_v2").exists()


def test_fp16_metric_gpu_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        *("--random-init", "--encoder", "vits", "--metric", "indoor", "--input-size", "140", "--precision", "fp16"),
        *("--skip-parity", "--device", "gpu", "--ort-trt", "--max-batch-size", "4", "--instances", "2"),
        *("--name", "da_fp16", "--out", str(tmp_path)),
    )
    assert code == 0, err
    assert "parity   skipped" in out
    text = (tmp_path / "da_fp16" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in text and "kind: KIND_GPU" in text and "count: 2" in text
    assert 'name: "tensorrt"' in text and "trt_profile_max_shapes" in text and "IMAGE:4x720x1280x3" in text
    params = parse_parameters(text)
    assert params["precision"] == "fp16" and params["depth_kind"] == "metric" and params["max_depth"] == "20"
    assert read_model_facts(tmp_path / "da_fp16" / "1" / "model.onnx").precision == "fp16"


def test_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--model with a save_pretrained directory: encoder, head and max_depth come from its config."""
    source = hf_model_dir("indoor")
    code, out, err = run_cli(
        capsys, "--model", str(source), "--input-size", "140", "--skip-parity", "--out", str(tmp_path)
    )
    assert code == 0, err
    facts = read_model_facts(tmp_path / "depth_anything_v2")
    assert (facts.encoder, facts.depth_kind, facts.max_depth) == ("vits", "metric", 20.0)
    assert facts.weight_source == f"huggingface directory {source.name}" and not facts.random_init
    assert facts.pos_embed_interp == "transformers"
    assert "metric depth in metres (max 20)" in out and "RANDOM" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random-init", "--encoder", "vitx"], "unknown encoder 'vitx'"),
        (["--checkpoint", "/nonexistent/depth_anything_v2_vits.pth", "--encoder", "vits"], "checkpoint file not found"),
        (["--random-init", "--encoder", "vits", "--input-size", "500"], "not a multiple of 14: try 504"),
        (["--random-init", "--encoder", "vits", "--opset", "11"], "--opset 11 is not supported"),
        (["--random-init", "--encoder", "vits", "--metric", "sky"], "unknown --metric 'sky'"),
        (["--encoder", "vits"], "exactly one weight source"),
        (["--random-init", "--encoder", "vits", "--trt", "--ort-trt"], "exclude each other"),
        (["--random-init", "--encoder", "vits", "--trt-profile", "1x2"], "bad --trt-profile"),
        (["--random-init", "--encoder", "vits", "--ort-trt"], "--ort-trt is an ONNX Runtime option on GPU"),
        (["--random-init", "--encoder", "vits", "--max-batch-size", "0"], "--max-batch-size must be"),
    ],
)
def test_bad_arguments_fail_clearly(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("dronedepth export: error: ")


@pytest.mark.skipif(gpu_count() > 0, reason="this machine has a GPU")
def test_trt_without_gpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--random-init", "--encoder", "vits", "--trt", "--out", str(tmp_path))
    assert code == 2 and "needs an NVIDIA GPU" in err
    assert not (tmp_path / "depth_anything_v2").exists()


def test_public_api_is_pinned() -> None:
    assert sorted(export.__all__) == [
        "DepthAnythingV2",
        "DepthGraph",
        "ENCODERS",
        "LoadedModel",
        "ModelFacts",
        "ModelInfo",
        "OrtTensorRT",
        "PARITY_CASES",
        "TritonModelConfig",
        "TrtProfile",
        "build_engine",
        "check_parity",
        "export_onnx",
        "hf_to_official",
        "load_checkpoint",
        "load_hf",
        "load_model",
        "load_random_init",
        "nrmse",
        "read_model_facts",
        "read_onnx_facts",
        "reference_depth",
        "write_repository",
    ]
    for name in export.__all__:
        assert getattr(export, name) is not None
