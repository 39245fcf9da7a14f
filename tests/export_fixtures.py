"""Shared, process-wide cached artefacts for the export tests.

Exports and transformers models are slow on CPU, so each is built once per
test session (``functools.cache``) in a temporary folder removed at exit; the
test modules wrap them in fixtures.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from dronedepth.export.architecture import ENCODERS
from dronedepth.export.onnx_export import OnnxExport, export_onnx
from dronedepth.export.weights import LoadedModel, load_hf, load_random_init

SMALL_INPUT = 140  # 10 patches on the short side: fast, and still resizes the position grid
_ROOT = Path(tempfile.mkdtemp(prefix="dronedepth-export-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def workdir(name: str) -> Path:
    path = _ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random weights of a useful scale (transformers' init gives a near-constant output)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p[0].numel()) ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "lambda1" in name:
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        embeddings = model.backbone.embeddings  # type: ignore[union-attr]
        embeddings.position_embeddings.copy_(torch.randn(embeddings.position_embeddings.shape, generator=gen) * 0.5)
        embeddings.cls_token.copy_(torch.randn(embeddings.cls_token.shape, generator=gen) * 0.5)


def hf_config(encoder: str = "vits", metric: str | None = None) -> object:
    """The real transformers config of a Depth Anything V2 variant (as on the hub)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    spec = ENCODERS[encoder]
    backbone = Dinov2Config(
        image_size=518,
        patch_size=14,
        hidden_size=spec.embed_dim,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.num_heads,
        out_indices=spec.hf_out_indices,
        reshape_hidden_states=False,
        apply_layernorm=True,
        use_swiglu_ffn=spec.ffn == "swiglu",
    )
    kwargs: dict[str, object] = {}
    if metric:
        kwargs = {"depth_estimation_type": "metric", "max_depth": 20 if metric == "indoor" else 80}
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=spec.embed_dim,
        neck_hidden_sizes=list(spec.out_channels),
        fusion_hidden_size=spec.features,
        **kwargs,
    )


@functools.cache
def hf_model_dir(metric: str | None = None, seed: int = 1) -> Path:
    """A random-init transformers DepthAnythingForDepthEstimation (real Small config) saved with save_pretrained."""
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(hf_config("vits", metric)).eval()
    randomize_(model, seed)
    name = f"Depth-Anything-V2-Metric-{metric.title()}-Small-hf" if metric else "Depth-Anything-V2-Small-hf"
    path = workdir(f"hf-{seed}") / name
    model.save_pretrained(path)
    return path


def hf_model(path: Path) -> torch.nn.Module:
    from transformers import DepthAnythingForDepthEstimation

    return DepthAnythingForDepthEstimation.from_pretrained(path).eval()


@functools.cache
def random_model(metric: str | None = None, seed: int = 0) -> LoadedModel:
    return load_random_init("vits", metric, seed=seed)


@functools.cache
def exported(
    source: str, input_size: int = SMALL_INPUT, precision: str = "fp32", depth_stride: int = 1
) -> tuple[LoadedModel, OnnxExport]:
    """Export once per session. ``source``: "random", "random-metric" or "hf-metric"; stride 1 is the reference."""
    if source == "random":
        loaded = random_model()
    elif source == "random-metric":
        loaded = random_model("outdoor")
    elif source == "hf-metric":
        loaded = load_hf(hf_model_dir("outdoor"))
    else:
        raise ValueError(source)
    out = export_onnx(
        loaded,
        workdir(f"onnx-{source}-{input_size}-{precision}-s{depth_stride}") / "model.onnx",
        input_size=input_size,
        precision=precision,  # type: ignore[arg-type]
        depth_stride=depth_stride,
    )
    return loaded, out
