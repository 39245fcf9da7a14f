"""The facts about an exported model that its consumers need, as one typed record.

The same string key/values go into the ONNX ``metadata_props`` and into the
``parameters`` block of ``config.pbtxt`` (keys from ``dronedepth.contract``),
so the Triton adapter and the gateway can tell metres from disparity without
guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from dronedepth.contract import (
    DEPTH_KINDS,
    PARAM_DEPTH_KIND,
    PARAM_DEPTH_STRIDE,
    PARAM_ENCODER,
    PARAM_INPUT_SIZE,
    PARAM_MAX_DEPTH,
    PARAM_PRECISION,
    PARAM_RANDOM_INIT,
    PARAM_WEIGHT_SOURCE,
    DepthKind,
    check_depth_stride,
)
from dronedepth.errors import ConfigError

Precision = Literal["fp32", "fp16"]
PARAM_POS_EMBED = "pos_embed_interp"
PARAM_EXPORTER = "exporter"


@dataclass(frozen=True)
class ModelFacts:
    """What a served depth model is. ``max_depth`` is None for relative (disparity) models.

    ``depth_stride`` ``s``: the model returns its depth at every ``s``-th row and column of the frame
    (:func:`dronedepth.contract.depth_grid_shape`).
    """

    encoder: str
    depth_kind: DepthKind
    max_depth: float | None
    input_size: int
    precision: Precision
    weight_source: str
    random_init: bool
    pos_embed_interp: str = "official"
    exporter: str = ""
    depth_stride: int = 1

    @property
    def is_metric(self) -> bool:
        return self.depth_kind == "metric"

    def to_params(self) -> dict[str, str]:
        """String key/values for ONNX metadata and config.pbtxt ``parameters``."""
        params = {
            PARAM_ENCODER: self.encoder,
            PARAM_DEPTH_KIND: self.depth_kind,
            PARAM_MAX_DEPTH: "" if self.max_depth is None else f"{self.max_depth:g}",
            PARAM_INPUT_SIZE: str(self.input_size),
            PARAM_PRECISION: self.precision,
            PARAM_WEIGHT_SOURCE: self.weight_source,
            PARAM_RANDOM_INIT: "true" if self.random_init else "false",
            PARAM_POS_EMBED: self.pos_embed_interp,
            PARAM_DEPTH_STRIDE: str(self.depth_stride),
        }
        if self.exporter:
            params[PARAM_EXPORTER] = self.exporter
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, str], where: str = "model") -> ModelFacts:
        """Parse what ``to_params`` wrote; a missing or bad value raises ConfigError naming it."""

        def need(key: str) -> str:
            if key not in params:
                raise ConfigError(f"{where} lacks the '{key}' parameter: re-export it with 'dronedepth export'")
            return params[key]

        kind = need(PARAM_DEPTH_KIND)
        if kind not in DEPTH_KINDS:
            raise ConfigError(f"{where}: depth_kind must be one of {DEPTH_KINDS}, not {kind!r}")
        raw_max = need(PARAM_MAX_DEPTH).strip()
        try:
            max_depth = float(raw_max) if raw_max else None
            input_size = int(need(PARAM_INPUT_SIZE))
        except ValueError as exc:
            raise ConfigError(f"{where}: bad max_depth or input_size ({exc})") from exc
        if kind == "metric" and (max_depth is None or max_depth <= 0):
            raise ConfigError(f"{where}: a metric model needs a positive max_depth, got {raw_max!r}")
        raw_stride = params.get(PARAM_DEPTH_STRIDE, "1")  # exported before the stride existed: full resolution
        try:
            depth_stride = check_depth_stride(int(raw_stride))
        except ValueError as exc:
            raise ConfigError(f"{where}: bad depth_stride {raw_stride!r} ({exc})") from exc
        precision = need(PARAM_PRECISION)
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"{where}: precision must be fp32 or fp16, not {precision!r}")
        return cls(
            encoder=need(PARAM_ENCODER),
            depth_kind=kind,
            max_depth=max_depth if kind == "metric" else None,
            input_size=input_size,
            precision=precision,  # type: ignore[arg-type]
            weight_source=need(PARAM_WEIGHT_SOURCE),
            random_init=need(PARAM_RANDOM_INIT).strip().lower() == "true",
            pos_embed_interp=params.get(PARAM_POS_EMBED, "official"),
            exporter=params.get(PARAM_EXPORTER, ""),
            depth_stride=depth_stride,
        )
