"""The three weight sources, the key mappings, and clear errors for bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from export_fixtures import hf_model, hf_model_dir
from safetensors.torch import load_file

from dronedepth.errors import CheckpointError, ConfigError
from dronedepth.export.reference import nrmse
from dronedepth.export.weights import (
    HUB_IDS,
    hf_to_official,
    hints_from_checkpoint_name,
    hints_from_hub_id,
    load_checkpoint,
    load_hf,
    load_model,
    load_random_init,
)

# Key names of the official repository (depth_anything_v2/dpt.py, dinov2.py), written out independently.
OFFICIAL_KEYS = [
    "pretrained.cls_token",
    "pretrained.pos_embed",
    "pretrained.mask_token",
    "pretrained.patch_embed.proj.weight",
    "pretrained.blocks.0.norm1.weight",
    "pretrained.blocks.0.attn.qkv.weight",
    "pretrained.blocks.0.attn.proj.bias",
    "pretrained.blocks.0.ls1.gamma",
    "pretrained.blocks.11.mlp.fc2.weight",
    "pretrained.blocks.11.ls2.gamma",
    "pretrained.norm.bias",
    "depth_head.projects.0.weight",
    "depth_head.resize_layers.0.weight",
    "depth_head.resize_layers.1.bias",
    "depth_head.resize_layers.3.weight",
    "depth_head.scratch.layer1_rn.weight",
    "depth_head.scratch.layer4_rn.weight",
    "depth_head.scratch.refinenet1.out_conv.weight",
    "depth_head.scratch.refinenet4.resConfUnit1.conv1.weight",
    "depth_head.scratch.refinenet2.resConfUnit2.conv2.bias",
    "depth_head.scratch.output_conv1.weight",
    "depth_head.scratch.output_conv2.0.weight",
    "depth_head.scratch.output_conv2.2.bias",
]


def official_checkpoint(tmp_path: Path, name: str, metric: str | None) -> Path:
    """An official-format .pth built from the transformers weights (on-disk HF names -> official names)."""
    state = hf_to_official(load_file(hf_model_dir(metric) / "model.safetensors"))
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_our_keys_are_the_official_keys() -> None:
    keys = set(load_random_init("vits").model.state_dict())
    assert set(OFFICIAL_KEYS) <= keys
    assert not any(k.startswith("backbone.") for k in keys)


def test_hf_mapping_covers_every_key_in_both_naming_generations() -> None:
    path = hf_model_dir("outdoor")
    on_disk = hf_to_official(load_file(path / "model.safetensors"))  # attention.attention.query, ...
    in_memory = hf_to_official(hf_model(path).state_dict())  # transformers 5: attention.q_proj, ...
    expected = set(load_random_init("vits", "outdoor").model.state_dict())
    assert set(on_disk) == set(in_memory) == expected
    for key in expected:
        assert torch.equal(on_disk[key], in_memory[key]), key


@pytest.mark.parametrize(
    ("metric", "name"), [(None, "depth_anything_v2_vits.pth"), ("outdoor", "depth_anything_v2_metric_vkitti_vits.pth")]
)
def test_official_checkpoint_matches_transformers(tmp_path: Path, metric: str | None, name: str) -> None:
    path = official_checkpoint(tmp_path, name, metric)
    loaded = load_checkpoint(path, "vits", metric, pos_embed_interp="transformers")
    assert loaded.info.depth_kind == ("metric" if metric else "relative")
    assert loaded.info.max_depth == (80.0 if metric else None)
    assert loaded.info.weight_source == f"checkpoint {name}" and not loaded.info.random_init
    expected_head = torch.nn.Sigmoid if metric else torch.nn.ReLU
    assert isinstance(loaded.model.depth_head.scratch.output_conv2[-1], expected_head)
    x = torch.randn(1, 3, 140, 196, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = loaded.model(x)
        theirs = hf_model(hf_model_dir(metric))(pixel_values=x).predicted_depth
    assert nrmse(ours.numpy(), theirs.numpy()) < 1e-4
    if metric:
        assert ours.min() > 0 and ours.max() < 80
    else:
        assert ours.min() >= 0


def test_checkpoint_in_a_training_wrapper_loads(tmp_path: Path) -> None:
    state = load_random_init("vits", seed=3).model.state_dict()
    path = tmp_path / "finetuned.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    loaded = load_checkpoint(path, "vits")
    assert torch.equal(loaded.model.state_dict()["pretrained.pos_embed"], state["pretrained.pos_embed"])


@pytest.mark.parametrize("metric", [None, "indoor", "outdoor"])
def test_hf_directory_gets_the_right_head(metric: str | None) -> None:
    loaded = load_hf(hf_model_dir(metric))
    assert loaded.info.encoder == "vits"
    assert loaded.info.depth_kind == ("metric" if metric else "relative")
    assert loaded.info.max_depth == {None: None, "indoor": 20.0, "outdoor": 80.0}[metric]
    assert loaded.info.pos_embed_interp == "transformers"
    head = loaded.model.depth_head.scratch.output_conv2[-1]
    assert isinstance(head, torch.nn.Sigmoid if metric else torch.nn.ReLU)


def test_old_hub_config_without_depth_estimation_type(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Old metric configs lacked the key: transformers would build a ReLU head; the id decides here."""
    src = hf_model_dir("outdoor")
    old = tmp_path / src.name  # "...-Metric-Outdoor-Small-hf"
    shutil.copytree(src, old)
    config = json.loads((old / "config.json").read_text())
    del config["depth_estimation_type"], config["max_depth"]
    (old / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        loaded = load_hf(old)
    assert loaded.info.depth_kind == "metric" and loaded.info.max_depth == 80.0
    assert isinstance(loaded.model.depth_head.scratch.output_conv2[-1], torch.nn.Sigmoid)
    assert "old hub config" in caplog.text
    # Without a hint in the name, --metric says it; a relative declaration contradicts --metric.
    anonymous = tmp_path / "my_model"
    shutil.copytree(old, anonymous)
    assert load_hf(anonymous).info.depth_kind == "relative"
    assert load_hf(anonymous, metric="outdoor").info.max_depth == 80.0
    with pytest.raises(ConfigError, match="drop --metric"):
        load_hf(hf_model_dir(None), metric="indoor")
    with pytest.raises(ConfigError, match=r"config\.json says max_depth 80"):
        load_hf(hf_model_dir("outdoor"), metric="indoor")


def test_random_init_is_labelled_and_reproducible(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        a = load_random_init("vits", seed=7)
    b = load_random_init("vits", seed=7)
    assert a.info.random_init and "random" in a.info.weight_source and "RANDOM" in a.info.description
    assert "RANDOM weights" in caplog.text
    assert all(
        torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )


def test_hints_from_names() -> None:
    assert hints_from_hub_id("depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf").encoder == "vits"
    assert hints_from_hub_id("depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf").metric == "indoor"
    rel = hints_from_hub_id("depth-anything/Depth-Anything-V2-Base-hf")
    assert (rel.encoder, rel.metric, rel.relative) == ("vitb", None, True)
    assert hints_from_checkpoint_name("ckpts/depth_anything_v2_metric_hypersim_vitl.pth").metric == "indoor"
    assert hints_from_checkpoint_name("depth_anything_v2_vitg.pth").relative
    assert hints_from_checkpoint_name("whatever.pth").encoder is None
    assert HUB_IDS[("vits", "outdoor")] == "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf"


# ---------------------------------------------------------------- errors


def test_unknown_encoder() -> None:
    with pytest.raises(ConfigError, match=r"unknown encoder 'vitx'.*vits, vitb, vitl, vitg"):
        load_random_init("vitx")


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "depth_anything_v2_vits.pth", "vits")


def test_metric_flag_on_a_relative_checkpoint(tmp_path: Path) -> None:
    path = official_checkpoint(tmp_path, "depth_anything_v2_vits.pth", None)
    with pytest.raises(CheckpointError, match=r"relative .*drop --metric outdoor"):
        load_checkpoint(path, "vits", "outdoor")


def test_metric_checkpoint_without_the_flag(tmp_path: Path) -> None:
    path = official_checkpoint(tmp_path, "depth_anything_v2_metric_hypersim_vits.pth", "indoor")
    with pytest.raises(CheckpointError, match="add --metric indoor"):
        load_checkpoint(path, "vits")
    with pytest.raises(CheckpointError, match="use --metric indoor"):
        load_checkpoint(path, "vits", "outdoor")


def test_wrong_encoder_for_the_checkpoint(tmp_path: Path) -> None:
    path = official_checkpoint(tmp_path, "depth_anything_v2_vits.pth", None)
    with pytest.raises(CheckpointError, match="use --encoder vits"):
        load_checkpoint(path, "vitb")
    renamed = path.rename(tmp_path / "mine.pth")  # no name hint: the tensor shapes tell
    with pytest.raises(CheckpointError, match="holds a vits model"):
        load_checkpoint(renamed, "vitl")


def test_mismatched_keys_are_reported(tmp_path: Path) -> None:
    state = load_random_init("vits").model.state_dict()
    state.pop("depth_head.scratch.output_conv1.weight")
    state["depth_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "vits")
    text = str(err.value)
    assert "1 missing keys" in text and "output_conv1.weight" in text
    assert "1 unexpected keys" in text and "depth_head.extra.weight" in text


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(path, "vits")


def test_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one weight source"):
        load_model()
    with pytest.raises(ConfigError, match="--model and --random-init"):
        load_model(model="x", random_init=True, encoder="vits")
    with pytest.raises(ConfigError, match="--encoder is required"):
        load_model(random_init=True)
    with pytest.raises(ConfigError, match="unknown --metric"):
        load_model(random_init=True, encoder="vits", metric="underwater")


def test_model_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_hf(tmp_path)


def test_swiglu_keys_of_both_generations_map_to_official_w12() -> None:
    """ViT-G's fused SwiGLU: transformers' weights_in (legacy) or gate_proj + up_proj (v5) -> w12 = [gate; up]."""
    gate, up, out = torch.randn(8, 4), torch.randn(8, 4), torch.randn(4, 8)
    prefix = "backbone.encoder.layer.3.mlp"
    legacy = hf_to_official({f"{prefix}.weights_in.weight": torch.cat([gate, up]), f"{prefix}.weights_out.weight": out})
    current = hf_to_official(
        {f"{prefix}.gate_proj.weight": gate, f"{prefix}.up_proj.weight": up, f"{prefix}.down_proj.weight": out}
    )
    for state in (legacy, current):
        assert torch.equal(state["pretrained.blocks.3.mlp.w12.weight"], torch.cat([gate, up]))
        assert torch.equal(state["pretrained.blocks.3.mlp.w3.weight"], out)
    with pytest.raises(CheckpointError, match="incomplete SwiGLU"):
        hf_to_official({f"{prefix}.gate_proj.weight": gate})


def test_base_encoder_builds_and_runs() -> None:
    loaded = load_random_init("vitb", "indoor")
    assert sum(p.numel() for p in loaded.model.parameters()) > 95e6  # NOTES: ViT-B 97.5M
    with torch.no_grad():
        depth = loaded.model(torch.randn(1, 3, 140, 154))
    assert depth.shape == (1, 140, 154) and depth.min() > 0 and depth.max() < 20
