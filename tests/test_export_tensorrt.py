"""TensorRT: profiles and GPU checks everywhere; the engine itself only on a GPU with tensorrt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import exported

from dronedepth.contract import INPUT_NAME
from dronedepth.errors import ConfigError
from dronedepth.export.parity import onnx_session, run_onnx
from dronedepth.export.reference import nrmse, synthetic_frames
from dronedepth.export.tensorrt import (
    TrtProfile,
    build_engine,
    default_profile,
    gpu_count,
    require_tensorrt,
    run_engine,
)


def test_default_profile_covers_640x480_class_frames() -> None:
    profile = default_profile(8)
    assert profile.min == (1, 240, 320) and profile.opt == (1, 480, 640) and profile.max == (8, 720, 1280)
    assert profile.input_shapes()[1] == (1, 480, 640, 3)
    assert profile.ort_options()["trt_profile_min_shapes"] == f"{INPUT_NAME}:1x240x320x3"


def test_profile_parse_and_validation() -> None:
    profile = TrtProfile.parse("1x14x14:2x480x640:4x1080x1920")
    assert profile.max == (4, 1080, 1920) and str(profile) == "1x14x14:2x480x640:4x1080x1920"
    with pytest.raises(ConfigError, match="min:opt:max"):
        TrtProfile.parse("1x480x640")
    with pytest.raises(ConfigError, match="min ≤ opt ≤ max"):
        TrtProfile.parse("1x480x640:1x240x320:8x720x1280")
    with pytest.raises(ConfigError, match="H, W ≥ 14"):
        TrtProfile.parse("1x8x8:1x240x320:8x720x1280")


@pytest.mark.skipif(gpu_count() > 0, reason="this machine has a GPU")
def test_trt_without_gpu_says_so() -> None:
    with pytest.raises(ConfigError, match="needs an NVIDIA GPU"):
        require_tensorrt()


def _gpu_ready() -> bool:
    if gpu_count() == 0 or importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs an NVIDIA GPU, tensorrt and CUDA torch")
def test_engine_matches_onnx(tmp_path: Path) -> None:
    _, out = exported("random", input_size=518)
    plan = build_engine(
        out.path, tmp_path / "model.plan", TrtProfile((1, 240, 320), (1, 480, 640), (2, 720, 1280)), fp16=False
    )
    session = onnx_session(out.path)
    for h, w, b in [(480, 640, 1), (720, 1280, 1), (240, 320, 2)]:
        frames = synthetic_frames(h, w, b, seed=h)
        got = np.asarray(run_engine(plan, frames))
        assert got.shape == (b, h, w)
        assert nrmse(got, run_onnx(session, frames)) < 1e-3
    fp16_plan = build_engine(out.path, tmp_path / "fp16.plan", default_profile(2), fp16=True)
    frames = synthetic_frames(480, 640, 1, seed=1)
    assert nrmse(np.asarray(run_engine(fp16_plan, frames)), run_onnx(session, frames)) < 2e-2
