"""Depth Anything V2 -> ONNX / TensorRT -> Triton model repository (``dronedepth export``).

Light to import: torch, onnx and transformers are loaded by the functions that
need them, so the Triton adapter and the gateway can use ``read_model_facts``
without the export stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "ENCODERS",
    "PARITY_CASES",
    "DepthAnythingV2",
    "DepthGraph",
    "LoadedModel",
    "ModelFacts",
    "ModelInfo",
    "OrtTensorRT",
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

# name -> module; resolved on first access (PEP 562) to keep ``import export`` cheap.
_WHERE = {
    "ENCODERS": "architecture",
    "DepthAnythingV2": "architecture",
    "DepthGraph": "graph",
    "LoadedModel": "weights",
    "ModelInfo": "weights",
    "hf_to_official": "weights",
    "load_checkpoint": "weights",
    "load_hf": "weights",
    "load_model": "weights",
    "load_random_init": "weights",
    "ModelFacts": "facts",
    "PARITY_CASES": "parity",
    "check_parity": "parity",
    "nrmse": "reference",
    "reference_depth": "reference",
    "export_onnx": "onnx_export",
    "read_onnx_facts": "onnx_export",
    "OrtTensorRT": "repository",
    "TritonModelConfig": "repository",
    "read_model_facts": "repository",
    "write_repository": "repository",
    "TrtProfile": "tensorrt",
    "build_engine": "tensorrt",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from dronedepth.export.architecture import ENCODERS, DepthAnythingV2
    from dronedepth.export.facts import ModelFacts
    from dronedepth.export.graph import DepthGraph
    from dronedepth.export.onnx_export import export_onnx, read_onnx_facts
    from dronedepth.export.parity import PARITY_CASES, check_parity
    from dronedepth.export.reference import nrmse, reference_depth
    from dronedepth.export.repository import OrtTensorRT, TritonModelConfig, read_model_facts, write_repository
    from dronedepth.export.tensorrt import TrtProfile, build_engine
    from dronedepth.export.weights import (
        LoadedModel,
        ModelInfo,
        hf_to_official,
        load_checkpoint,
        load_hf,
        load_model,
        load_random_init,
    )
