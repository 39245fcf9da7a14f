"""Where the weights come from: Hugging Face (hub id or saved directory), official .pth, or random.

Every loader returns a ``LoadedModel``: our ``DepthAnythingV2`` with the weights
in, plus ``ModelInfo`` (the facts that go into the ONNX metadata and
config.pbtxt). The head is chosen here, never guessed downstream: relative
models get the ReLU head (disparity), metric ones sigmoid × max_depth (metres).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from dronedepth.contract import DepthKind
from dronedepth.errors import CheckpointError, ConfigError
from dronedepth.export.architecture import ENCODERS, DepthAnythingV2, PosEmbedInterp

log = logging.getLogger(__name__)

Metric = Literal["indoor", "outdoor"]
MAX_DEPTH: dict[str, float] = {"indoor": 20.0, "outdoor": 80.0}
"""max_depth of the official metric models: Hypersim (indoor) 20 m, Virtual KITTI 2 (outdoor) 80 m."""

_HUB_SIZES = {"vits": "Small", "vitb": "Base", "vitl": "Large", "vitg": "Giant"}
HUB_IDS: dict[tuple[str, str], str] = {}
"""(encoder, "relative" | "indoor" | "outdoor") -> Hugging Face model id."""
for _enc, _size in _HUB_SIZES.items():
    HUB_IDS[(_enc, "relative")] = f"depth-anything/Depth-Anything-V2-{_size}-hf"
    if _enc != "vitg":  # no Giant metric models (and the Giant relative one is not published either)
        HUB_IDS[(_enc, "indoor")] = f"depth-anything/Depth-Anything-V2-Metric-Indoor-{_size}-hf"
        HUB_IDS[(_enc, "outdoor")] = f"depth-anything/Depth-Anything-V2-Metric-Outdoor-{_size}-hf"
_DATASET_OF: dict[Literal["indoor", "outdoor"], str] = {"indoor": "hypersim", "outdoor": "vkitti"}
_METRIC_OF_DATASET = {v: k for k, v in _DATASET_OF.items()}


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is; recorded in the ONNX metadata and config.pbtxt."""

    encoder: str
    depth_kind: DepthKind
    max_depth: float | None
    weight_source: str
    random_init: bool
    pos_embed_interp: PosEmbedInterp

    @property
    def description(self) -> str:
        kind = f"metric, max {self.max_depth:g} m" if self.depth_kind == "metric" else "relative disparity"
        rnd = " [RANDOM WEIGHTS]" if self.random_init else ""
        return f"Depth Anything V2 {self.encoder} ({kind}) from {self.weight_source}{rnd}"


@dataclass
class LoadedModel:
    model: DepthAnythingV2
    info: ModelInfo


@dataclass(frozen=True)
class NameHints:
    """What a hub id or official file name says about the model (None: it does not say)."""

    encoder: str | None = None
    metric: Metric | None = None
    relative: bool = False


def check_encoder(encoder: str | None) -> str:
    if encoder is None:
        raise ConfigError(f"--encoder is required here: one of {', '.join(ENCODERS)}")
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder {encoder!r}: use one of {', '.join(ENCODERS)} (ViT-S/B/L/G)")
    return encoder


def check_metric(metric: str | None) -> Metric | None:
    if metric is None:
        return None
    if metric not in MAX_DEPTH:
        raise ConfigError(f"unknown --metric {metric!r}: use 'indoor' (max 20 m) or 'outdoor' (max 80 m)")
    return metric  # type: ignore[return-value]


def hints_from_hub_id(name: str) -> NameHints:
    """Encoder and kind from a hub id or directory name such as ``Depth-Anything-V2-Metric-Outdoor-Small-hf``."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    encoder = next((e for e, size in _HUB_SIZES.items() if re.search(rf"(^|[-_]){size.lower()}([-_]|$)", base)), None)
    metric: Metric | None = None
    if "metric" in base:
        metric = "indoor" if "indoor" in base else "outdoor" if "outdoor" in base else None
    relative = "depth-anything-v2" in base and "metric" not in base
    return NameHints(encoder, metric, relative)


_OFFICIAL_NAME = re.compile(r"depth_anything_v2_(?:metric_(hypersim|vkitti)_)?(vits|vitb|vitl|vitg)\.pth$")


def hints_from_checkpoint_name(path: str | Path) -> NameHints:
    """Encoder and kind from an official file name (``depth_anything_v2_metric_vkitti_vits.pth``)."""
    match = _OFFICIAL_NAME.search(Path(path).name.lower())
    if not match:
        return NameHints()
    dataset, encoder = match.groups()
    if dataset:
        return NameHints(encoder, _METRIC_OF_DATASET[dataset])
    return NameHints(encoder, None, relative=True)


def _max_depth_for(metric: Metric | None) -> float | None:
    return MAX_DEPTH[metric] if metric else None


# ---------------------------------------------------------------- random init


def init_random(model: DepthAnythingV2, seed: int = 0) -> None:
    """DINOv2-style random init (as the official ``init_weights``), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                p.copy_(torch.randn(p.shape, generator=gen).clamp_(-2, 2) * 0.02)
            elif name.endswith(("cls_token", "mask_token")):
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-6)
            elif name.endswith(".gamma"):
                p.fill_(1.0)
            elif "norm" in name.split(".")[-2]:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("weight"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def load_random_init(
    encoder: str, metric: str | None = None, seed: int = 0, pos_embed_interp: PosEmbedInterp = "official"
) -> LoadedModel:
    """The real architecture with random weights: for tests and offline smoke runs only."""
    encoder = check_encoder(encoder)
    m = check_metric(metric)
    kind: DepthKind = "metric" if m else "relative"
    model = DepthAnythingV2(encoder, kind, _max_depth_for(m), pos_embed_interp).eval()
    init_random(model, seed)
    source = f"random-init (seed {seed}){f', metric {m}' if m else ''}"
    log.warning("using RANDOM weights for %s: the output is not depth, only the graph is real", encoder)
    return LoadedModel(model, ModelInfo(encoder, kind, model.max_depth if m else None, source, True, pos_embed_interp))


# ---------------------------------------------------------------- state dicts


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        # DataParallel / DDP training wraps every key in "module."
        out[key.removeprefix("module.")] = value
    return out


def unwrap_checkpoint(obj: object) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint (bare, or under 'model' / 'state_dict')."""
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict", "module"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return _strip_prefixes(obj)
    raise CheckpointError("the checkpoint holds no state dict of tensors: is it a Depth Anything V2 .pth file?")


_HF_FUSION = {0: 4, 1: 3, 2: 2, 3: 1}  # transformers fuses deepest first: layers.0 is refinenet4


def hf_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a transformers ``DepthAnythingForDepthEstimation`` state dict to official keys.

    Accepts both the on-disk names (``attention.attention.query``, ``mlp.weights_in``)
    and transformers 5's in-memory ones (``attention.q_proj``, ``mlp.gate_proj``).
    Unknown keys are kept, so that strict loading reports them.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    swiglu: dict[str, dict[str, Tensor]] = {}
    simple = [
        (r"^backbone\.embeddings\.cls_token$", "pretrained.cls_token"),
        (r"^backbone\.embeddings\.mask_token$", "pretrained.mask_token"),
        (r"^backbone\.embeddings\.position_embeddings$", "pretrained.pos_embed"),
        (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
        (r"^backbone\.layernorm\.", "pretrained.norm."),
        (r"^backbone\.encoder\.layer\.(\d+)\.norm([12])\.", r"pretrained.blocks.\1.norm\2."),
        (r"^backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"pretrained.blocks.\1.ls\2.gamma"),
        (
            r"^backbone\.encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.",
            r"pretrained.blocks.\1.attn.proj.",
        ),
        (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"pretrained.blocks.\1.mlp.\2."),
        (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(?:weights_in|w12)\.", r"pretrained.blocks.\1.mlp.w12."),
        (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.", r"pretrained.blocks.\1.mlp.w3."),
        (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
        (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
        (r"^head\.conv1\.", "depth_head.scratch.output_conv1."),
        (r"^head\.conv2\.", "depth_head.scratch.output_conv2.0."),
        (r"^head\.conv3\.", "depth_head.scratch.output_conv2.2."),
    ]
    for key, value in state.items():
        m = re.match(
            r"^backbone\.encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$",
            key,
        )
        if m:
            part = {"query": "q", "key": "k", "value": "v"}.get(m[2], m[2][0])
            qkv.setdefault(f"pretrained.blocks.{m[1]}.attn.qkv.{m[3]}", {})[part] = value
            continue
        m = re.match(r"^backbone\.encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)$", key)
        if m:
            swiglu.setdefault(f"pretrained.blocks.{m[1]}.mlp.w12.{m[3]}", {})[m[2]] = value
            continue
        m = re.match(r"^neck\.convs\.(\d)\.weight$", key)
        if m:
            out[f"depth_head.scratch.layer{int(m[1]) + 1}_rn.weight"] = value
            continue
        m = re.match(
            r"^neck\.fusion_stage\.layers\.(\d)\.(projection|residual_layer([12])\.convolution([12]))\.(weight|bias)$",
            key,
        )
        if m:
            block = f"depth_head.scratch.refinenet{_HF_FUSION[int(m[1])]}"
            if m[2] == "projection":
                out[f"{block}.out_conv.{m[5]}"] = value
            else:
                out[f"{block}.resConfUnit{m[3]}.conv{m[4]}.{m[5]}"] = value
            continue
        for pattern, repl in simple:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            out[key] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"incomplete attention weights for {key}: found only {sorted(parts)}")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    for key, parts in swiglu.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise CheckpointError(f"incomplete SwiGLU weights for {key}: found only {sorted(parts)}")
        out[key] = torch.cat([parts["gate_proj"], parts["up_proj"]], dim=0)
    return out


def encoder_of_state(state: Mapping[str, Tensor]) -> str | None:
    """The encoder a state dict (official keys) was trained as, from its embedding width."""
    pos = state.get("pretrained.pos_embed")
    if pos is None:
        return None
    dim = int(pos.shape[-1])
    return next((name for name, spec in ENCODERS.items() if spec.embed_dim == dim), None)


def load_official_state(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Strict load that fails with a CheckpointError naming a few missing/unexpected keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{what} does not match the Depth Anything V2 architecture"]
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
        parts.append("check --encoder and that the file is a Depth Anything V2 checkpoint")
        raise CheckpointError("; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(
            f"{what}: {len(bad)} tensors have the wrong shape (e.g. {'; '.join(bad[:3])}); check --encoder"
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


# ---------------------------------------------------------------- official .pth


def load_checkpoint(
    path: str | Path, encoder: str | None, metric: str | None = None, pos_embed_interp: PosEmbedInterp = "official"
) -> LoadedModel:
    """An official checkpoint (``depth_anything_v2_vits.pth``, ``depth_anything_v2_metric_vkitti_vits.pth``...).

    Without ``metric`` it is a relative model. A file with an official name must
    agree with ``encoder`` and ``metric``.
    """
    path = Path(path)
    encoder = check_encoder(encoder)
    m = check_metric(metric)
    if not path.is_file():
        raise ConfigError(
            f"checkpoint file not found: {path} (download e.g. depth_anything_v2_{encoder}.pth from the "
            "Depth Anything V2 model pages on Hugging Face, or use --model with a hub id)"
        )
    hints = hints_from_checkpoint_name(path)
    if hints.encoder and hints.encoder != encoder:
        raise CheckpointError(
            f"{path.name} is a {hints.encoder} checkpoint but --encoder is {encoder}: use --encoder {hints.encoder}"
        )
    if hints.metric and m is None:
        raise CheckpointError(
            f"{path.name} is a metric checkpoint ({_DATASET_OF[hints.metric]}): add --metric {hints.metric}, "
            "otherwise its sigmoid head would be replaced by the relative ReLU head"
        )
    if hints.metric and m and hints.metric != m:
        raise CheckpointError(
            f"{path.name} is the {hints.metric} metric model but --metric is {m}: use --metric {hints.metric}"
        )
    if hints.relative and m:
        raise CheckpointError(
            f"{path.name} is a relative (disparity) checkpoint: drop --metric {m}, or use "
            f"depth_anything_v2_metric_{_DATASET_OF[m]}_{encoder}.pth for metric depth"
        )
    if not hints.encoder:
        log.warning("%s has no official file name: trusting --encoder %s and --metric %s", path.name, encoder, m)
    log.info("loading weights from %s", path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        raise CheckpointError(f"could not read {path} as a PyTorch checkpoint: {exc}") from exc
    state = unwrap_checkpoint(raw)
    if any(k.startswith("backbone.") for k in state):
        state = hf_to_official(state)  # a transformers state dict saved with torch.save
    found = encoder_of_state(state)
    if found and found != encoder:
        raise CheckpointError(
            f"{path.name} holds a {found} model (embedding width) but --encoder is {encoder}: use --encoder {found}"
        )
    kind: DepthKind = "metric" if m else "relative"
    model = DepthAnythingV2(encoder, kind, _max_depth_for(m), pos_embed_interp).eval()
    load_official_state(model, state, path.name)
    return LoadedModel(
        model, ModelInfo(encoder, kind, _max_depth_for(m), f"checkpoint {path.name}", False, pos_embed_interp)
    )


# ---------------------------------------------------------------- Hugging Face


def _hf_kind(raw: Mapping[str, object], name: str, metric: Metric | None) -> tuple[DepthKind, float | None]:
    """Relative or metric, and max_depth, from a raw config.json, the id and ``--metric``.

    Old hub configs of the metric models lacked ``depth_estimation_type``: loaded
    as they are, transformers gives them the relative ReLU head. The id then decides.
    """
    hints = hints_from_hub_id(name)
    declared = raw.get("depth_estimation_type")
    cfg_max = raw.get("max_depth")
    cfg_max = float(cfg_max) if isinstance(cfg_max, int | float) and cfg_max > 1 else None
    if declared is not None and declared not in ("relative", "metric"):
        raise CheckpointError(f"{name}: unknown depth_estimation_type {declared!r} in config.json")
    if declared == "relative" and metric:
        raise ConfigError(f"{name} declares a relative model in config.json: drop --metric {metric}")
    if declared == "metric" or metric or (declared is None and hints.metric):
        if declared is None:
            log.warning("%s: config.json has no depth_estimation_type (old hub config); using the metric head", name)
        wanted = MAX_DEPTH[metric] if metric else None
        if cfg_max is not None and wanted is not None and cfg_max != wanted:
            raise ConfigError(f"{name}: config.json says max_depth {cfg_max:g} but --metric {metric} means {wanted:g}")
        from_name = MAX_DEPTH[hints.metric] if hints.metric else None
        if cfg_max is not None and from_name is not None and cfg_max != from_name:
            log.warning(
                "%s: the name says %s but config.json max_depth is %g; using the config", name, hints.metric, cfg_max
            )
        max_depth = cfg_max or wanted or from_name
        if max_depth is None:
            raise ConfigError(f"{name} is metric but gives no max_depth: add --metric indoor (20 m) or outdoor (80 m)")
        return "metric", max_depth
    if declared is None and "metric" in name.lower():
        raise ConfigError(
            f"{name} looks metric but its config does not say indoor or outdoor: add --metric indoor|outdoor"
        )
    return "relative", None


def load_hf(
    model_id: str | Path, metric: str | None = None, pos_embed_interp: PosEmbedInterp = "transformers"
) -> LoadedModel:
    """A Hugging Face hub id or a directory written by ``save_pretrained``."""
    m = check_metric(metric)
    name = str(model_id)
    try:
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    except ImportError as exc:
        raise ConfigError("--model needs transformers: pip install 'dronedepth[export]'") from exc
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ConfigError(f"{name} has no config.json: pass a directory written by save_pretrained, or a hub id")
    log.info("loading %s with transformers", name)
    try:
        raw, _ = DepthAnythingConfig.get_config_dict(name)
    except OSError as exc:
        raise ConfigError(
            f"could not load {name!r}: {str(exc).splitlines()[0]} (check the id, the network or HF_HUB_OFFLINE; "
            "a local directory from save_pretrained or --checkpoint FILE.pth work offline)"
        ) from exc
    if raw.get("model_type") != "depth_anything":
        raise CheckpointError(f"{name} is a {raw.get('model_type')!r} model, not depth_anything (Depth Anything V2)")
    kind, max_depth = _hf_kind(raw, name, m)
    backbone = raw.get("backbone_config") or {}
    dim = int(backbone.get("hidden_size", 0)) if isinstance(backbone, dict) else 0
    encoder = next((e for e, s in ENCODERS.items() if s.embed_dim == dim), None)
    if encoder is None:
        raise CheckpointError(f"{name}: backbone hidden_size {dim} is not a Depth Anything V2 encoder")
    spec = ENCODERS[encoder]
    mismatch = []
    if (
        isinstance(backbone, dict)
        and backbone.get("out_indices")
        and list(backbone["out_indices"]) != spec.hf_out_indices
    ):
        mismatch.append(f"out_indices {backbone['out_indices']} (expected {spec.hf_out_indices})")
    if raw.get("neck_hidden_sizes") and list(raw["neck_hidden_sizes"]) != list(spec.out_channels):
        mismatch.append(f"neck_hidden_sizes {raw['neck_hidden_sizes']} (expected {list(spec.out_channels)})")
    if raw.get("fusion_hidden_size") and raw["fusion_hidden_size"] != spec.features:
        mismatch.append(f"fusion_hidden_size {raw['fusion_hidden_size']} (expected {spec.features})")
    if mismatch:
        raise CheckpointError(f"{name} is not a standard Depth Anything V2 {encoder}: " + "; ".join(mismatch))
    try:
        hf_model = DepthAnythingForDepthEstimation.from_pretrained(name)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"could not load the weights of {name}: {str(exc).splitlines()[0]}") from exc
    state = hf_to_official(hf_model.state_dict())
    del hf_model
    model = DepthAnythingV2(encoder, kind, max_depth, pos_embed_interp).eval()
    load_official_state(model, state, name)
    source = f"huggingface {name}" if not Path(name).exists() else f"huggingface directory {Path(name).name}"
    return LoadedModel(model, ModelInfo(encoder, kind, max_depth, source, False, pos_embed_interp))


def load_model(
    *,
    model: str | None = None,
    checkpoint: str | None = None,
    random_init: bool = False,
    encoder: str | None = None,
    metric: str | None = None,
    seed: int = 0,
    pos_embed_interp: PosEmbedInterp | None = None,
) -> LoadedModel:
    """Load from exactly one of the three sources."""
    chosen = [
        name for name, on in (("--model", model), ("--checkpoint", checkpoint), ("--random-init", random_init)) if on
    ]
    if len(chosen) != 1:
        raise ConfigError(
            "give exactly one weight source: --model ID_OR_DIR, --checkpoint FILE.pth --encoder E, "
            "or --random-init --encoder E" + (f" (got {' and '.join(chosen)})" if chosen else "")
        )
    if model:
        if encoder:
            log.info("--encoder is ignored with --model: the encoder comes from the model's config")
        return load_hf(model, metric, pos_embed_interp or "transformers")
    if checkpoint:
        return load_checkpoint(checkpoint, encoder, metric, pos_embed_interp or "official")
    return load_random_init(check_encoder(encoder), metric, seed, pos_embed_interp or "official")
