"""Depth Anything V2 as an export-friendly ``nn.Module``: DINOv2 ViT encoder + DPT head.

Parameter names are those of the official repository (``pretrained.*``,
``depth_head.*``), so official checkpoints load as they are; Hugging Face
weights are renamed in ``weights.py``.

Why not transformers' module: it computes sizes with Python ints, which the ONNX
exporters freeze at the traced resolution. Here every size is derived from
tensor shapes, and the position-embedding resize is done with in-graph cubic
weights (``resample.py``) when ``traceable`` is on.

Two details decide parity with an implementation, so both are kept:

* ``pos_embed_interp="official"``: DINOv2 as vendored by Depth Anything V2
  resizes the 37×37 position grid with ``scale_factor=(n + 0.1) / 37``, which
  shifts the sampling positions slightly (and is skipped only for 37×37 patches).
* ``pos_embed_interp="transformers"``: ``Dinov2Embeddings`` resizes to
  ``size=(n_h, n_w)``, i.e. step ``37 / n`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dronedepth.contract import PATCH_SIZE, DepthKind
from dronedepth.export.resample import as_size, cubic_matrix, resize_cubic

PosEmbedInterp = Literal["official", "transformers"]
POS_EMBED_OFFSET = 0.1  # DINOv2's interpolate_offset as used by Depth Anything V2
PRETRAIN_SIZE = 518  # the position embeddings cover 518×518 pixels: 37×37 patches
HEAD_FEATURES_2 = 32


@dataclass(frozen=True)
class EncoderSpec:
    """Shape of one Depth Anything V2 variant (official ``model_configs`` + DINOv2 sizes)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    layer_idx: tuple[int, int, int, int]
    features: int
    out_channels: tuple[int, int, int, int]
    ffn: Literal["mlp", "swiglu"] = "mlp"

    @property
    def hf_out_indices(self) -> list[int]:
        """transformers counts the embedding output as stage 0."""
        return [i + 1 for i in self.layer_idx]


ENCODERS: dict[str, EncoderSpec] = {
    "vits": EncoderSpec("vits", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": EncoderSpec("vitb", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": EncoderSpec("vitl", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "vitg": EncoderSpec("vitg", 1536, 40, 24, (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536), "swiglu"),
}


# ---------------------------------------------------------------- DINOv2 encoder


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the model's dtype (FP16 exports stay stable)."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        # Softmax in float32: in FP16 exports the logits would lose precision.
        attn = (q @ k.transpose(-2, -1)).float().softmax(dim=-1).to(v.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """DINOv2's SwiGLUFFNFused (ViT-G): w12 holds the gate and value projections."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = LayerNorm32(dim, eps=1e-6)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = LayerNorm32(dim, eps=1e-6)
        self.mlp: nn.Module = SwiGLUFFN(dim) if spec.ffn == "swiglu" else Mlp(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """The DINOv2 ViT (no registers) returning the normalised patch tokens of chosen blocks."""

    def __init__(self, spec: EncoderSpec, pos_embed_interp: PosEmbedInterp = "official") -> None:
        super().__init__()
        dim = spec.embed_dim
        self.grid = PRETRAIN_SIZE // PATCH_SIZE
        self.layer_idx = spec.layer_idx
        self.pos_embed_interp: PosEmbedInterp = pos_embed_interp
        self.traceable = False
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused at inference; kept for strict loading
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = LayerNorm32(dim, eps=1e-6)

    def interpolate_pos_embed(self, patch_h: int | Tensor, patch_w: int | Tensor) -> Tensor:
        """Position embeddings ``[1, 1 + patch_h * patch_w, dim]`` for a patch grid."""
        pos = self.pos_embed.float()
        cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        if self.traceable or isinstance(patch_h, Tensor):
            resized = self._resize_traceable(grid_pos, patch_h, patch_w)
        else:
            resized = self._resize_eager(grid_pos, int(patch_h), int(patch_w))
        resized = resized.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos, resized), dim=1)

    def _resize_eager(self, grid_pos: Tensor, patch_h: int, patch_w: int) -> Tensor:
        # Literally what each implementation does (the reference for the traceable path).
        if self.pos_embed_interp == "official":
            if patch_h == self.grid and patch_w == self.grid:
                return grid_pos
            scale = ((patch_h + POS_EMBED_OFFSET) / self.grid, (patch_w + POS_EMBED_OFFSET) / self.grid)
            return F.interpolate(grid_pos, scale_factor=scale, mode="bicubic", antialias=False)
        return F.interpolate(grid_pos, size=(patch_h, patch_w), mode="bicubic", align_corners=False)

    def _resize_traceable(self, grid_pos: Tensor, patch_h: int | Tensor, patch_w: int | Tensor) -> Tensor:
        ph, pw = as_size(patch_h), as_size(patch_w)
        grid = float(self.grid)
        if self.pos_embed_interp == "official":
            step_h = grid / (ph.to(torch.float32) + POS_EMBED_OFFSET)
            step_w = grid / (pw.to(torch.float32) + POS_EMBED_OFFSET)
            # The official code returns the table untouched for a 37×37 grid: step 1 is the identity.
            native = (ph == self.grid) & (pw == self.grid)
            one = torch.ones_like(step_h)
            step_h = torch.where(native, one, step_h)
            step_w = torch.where(native, one, step_w)
        else:
            step_h = grid / ph.to(torch.float32)
            step_w = grid / pw.to(torch.float32)
        rows = cubic_matrix(self.grid, ph, step_h)
        cols = cubic_matrix(self.grid, pw, step_w)
        return resize_cubic(grid_pos, rows, cols)

    def forward(self, x: Tensor) -> list[Tensor]:
        patch_h, patch_w = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_embed(patch_h, patch_w).to(tokens.dtype)
        outputs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.layer_idx:
                outputs.append(self.norm(tokens)[:, 1:])
        return outputs


# ---------------------------------------------------------------- DPT head


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(x))
        return self.conv2(F.relu(out)) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None, like: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if like is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, spec: EncoderSpec, kind: DepthKind) -> None:
        super().__init__()
        f = spec.features
        c = spec.out_channels
        self.layer1_rn = nn.Conv2d(c[0], f, kernel_size=3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(c[1], f, kernel_size=3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(c[2], f, kernel_size=3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(c[3], f, kernel_size=3, padding=1, bias=False)
        self.refinenet1 = FeatureFusionBlock(f)
        self.refinenet2 = FeatureFusionBlock(f)
        self.refinenet3 = FeatureFusionBlock(f)
        self.refinenet4 = FeatureFusionBlock(f)
        self.output_conv1 = nn.Conv2d(f, f // 2, kernel_size=3, padding=1)
        # Relative models end in ReLU (disparity), metric ones in Sigmoid (scaled by max_depth).
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(f // 2, HEAD_FEATURES_2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_FEATURES_2, 1, kernel_size=1),
            nn.Sigmoid() if kind == "metric" else nn.ReLU(),
        )


class DPTHead(nn.Module):
    def __init__(self, spec: EncoderSpec, kind: DepthKind) -> None:
        super().__init__()
        c = spec.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(spec.embed_dim, ch, kernel_size=1) for ch in c)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = Scratch(spec, kind)

    def forward(self, features: list[Tensor], patch_h: int | Tensor, patch_w: int | Tensor) -> Tensor:
        maps = []
        # Traced with 0-d tensor sizes (dynamic H, W): torch's stubs only know int/SymInt sizes.
        for i, tokens in enumerate(features):
            x = tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], patch_h, patch_w)  # type: ignore[arg-type]
            maps.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        path = s.refinenet4(l4, like=l3)
        path = s.refinenet3(path, l3, like=l2)
        path = s.refinenet2(path, l2, like=l1)
        path = s.refinenet1(path, l1)
        out = s.output_conv1(path)
        size = (patch_h * PATCH_SIZE, patch_w * PATCH_SIZE)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)  # type: ignore[arg-type]
        return s.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """Depth Anything V2: normalised ``[B, 3, h, w]`` (h, w multiples of 14) -> ``[B, h, w]``.

    Relative models return disparity (ReLU head), metric ones metres
    (``sigmoid * max_depth``).
    """

    def __init__(
        self,
        encoder: str = "vits",
        kind: DepthKind = "relative",
        max_depth: float | None = None,
        pos_embed_interp: PosEmbedInterp = "official",
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {', '.join(ENCODERS)}")
        if kind == "metric" and (max_depth is None or not math.isfinite(max_depth) or max_depth <= 0):
            raise ValueError(f"a metric model needs a positive max_depth, got {max_depth!r}")
        self.spec = ENCODERS[encoder]
        self.kind: DepthKind = kind
        self.max_depth = float(max_depth) if kind == "metric" and max_depth is not None else 1.0
        self.pretrained = DinoV2(self.spec, pos_embed_interp)
        self.depth_head = DPTHead(self.spec, kind)

    @property
    def encoder(self) -> str:
        return self.spec.name

    @property
    def pos_embed_interp(self) -> PosEmbedInterp:
        return self.pretrained.pos_embed_interp

    def set_traceable(self, traceable: bool = True) -> DepthAnythingV2:
        """Use the in-graph position-embedding resize (needed for dynamic ONNX export)."""
        self.pretrained.traceable = traceable
        return self

    def forward(self, x: Tensor) -> Tensor:
        patch_h, patch_w = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
        features = self.pretrained(x)
        depth = self.depth_head(features, patch_h, patch_w)
        if self.kind == "metric":
            depth = depth * self.max_depth
        return depth.squeeze(1)
