"""Triton Python-backend model that runs an exported ONNX depth model with ONNX Runtime.

The bundled CPU Triton has no ONNX Runtime backend, so the embedded server
copies this file as ``NAME/1/model.py`` of a derived repository and lets the
Python backend run it. It executes inside the *server* environment
(``.venv-triton``): it imports only the standard library, numpy (<2),
onnxruntime and Triton's ``triton_python_backend_utils``, never ``dronedepth``.

Settings come from the model configuration's ``parameters`` (written by
``dronedepth.serving.repository``):

- ``embedded.onnx_file``: file name of the ONNX model in the version directory;
- ``embedded.intra_op_threads``: ONNX Runtime intra-op threads of this instance;
- ``embedded.max_pixels``: largest H×W accepted per frame;
- ``embedded.min_side``: smallest H or W accepted;
- ``depth_stride`` (the export's, absent: 1): the model returns depth of
  ``ceil(H / s)`` × ``ceil(W / s)`` for an H×W frame, which each answer is checked against.

``execute`` runs the requests of one shape as one ONNX Runtime batch and
answers every request with its own response; a bad request gets an error
response of its own and never fails the others.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

PARAM_ONNX_FILE = "embedded.onnx_file"
PARAM_INTRA_OP_THREADS = "embedded.intra_op_threads"
PARAM_MAX_PIXELS = "embedded.max_pixels"
PARAM_MIN_SIDE = "embedded.min_side"
PARAM_DEPTH_STRIDE = "depth_stride"


class BadRequest(ValueError):
    """A request this model refuses: it is answered with INVALID_ARG."""


class TritonPythonModel:
    """One instance per Triton model instance: one ONNX Runtime session."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.model_name = args.get("model_name", config.get("name", "?"))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])
        self.max_pixels = int(params.get(PARAM_MAX_PIXELS, "0")) or None
        self.min_side = int(params.get(PARAM_MIN_SIDE, "1"))
        self.depth_stride = int(params.get(PARAM_DEPTH_STRIDE, "1"))

        path = os.path.join(args["model_repository"], args["model_version"], params.get(PARAM_ONNX_FILE, "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get(PARAM_INTRA_OP_THREADS, "0"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No busy-waiting between runs: the gateway usually shares these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.onnx_input = _match(self.input_name, [i.name for i in inputs], "input", path)
        self.onnx_output = _match(self.output_name, [o.name for o in outputs], "output", path)
        onnx_shape = next(i.shape for i in inputs if i.name == self.onnx_input)
        # Static H or W of the graph (an int) or None where the axis is dynamic.
        self.static_hw = tuple(d if isinstance(d, int) and d > 0 else None for d in onnx_shape[1:3])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
        for index, request in enumerate(requests):
            try:
                image = self._read(request)
            except BadRequest as exc:
                responses[index] = _error(str(exc), "INVALID_ARG")
            else:
                groups.setdefault(image.shape[1:], []).append((index, image))
        for items in groups.values():
            for index, response in self._run(items):
                responses[index] = response
        return responses

    def finalize(self) -> None:
        self.session = None

    def _read(self, request: Any) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise BadRequest(f"missing input '{self.input_name}'")
        image = tensor.as_numpy()
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[3] != 3:
            raise BadRequest(
                f"'{self.input_name}' must be UINT8 [batch, H, W, 3] (RGB), got {image.dtype} {list(image.shape)}"
            )
        height, width = image.shape[1:3]
        if min(height, width) < self.min_side:
            raise BadRequest(f"frame {width}x{height} is too small: both sides must be at least {self.min_side} pixels")
        if self.max_pixels and height * width > self.max_pixels:
            raise BadRequest(
                f"frame {width}x{height} has {height * width} pixels, more than the {self.max_pixels} "
                "this server accepts: downscale the frame (or raise the server's --max-pixels)"
            )
        for axis, (size, static) in enumerate(zip((height, width), self.static_hw, strict=True)):
            if static is not None and size != static:
                raise BadRequest(
                    f"model '{self.model_name}' was exported for a fixed {'HW'[axis]} of {static}, got {size}"
                )
        return image

    def _run(self, items: list[tuple[int, np.ndarray]]) -> list[tuple[int, Any]]:
        """Answer ``items`` (requests of one shape) with one ONNX Runtime call."""
        batch = items[0][1] if len(items) == 1 else np.concatenate([image for _, image in items])
        try:
            depth = self.session.run([self.onnx_output], {self.onnx_input: batch})[0]
            stride = self.depth_stride
            expected = (batch.shape[0], -(-batch.shape[1] // stride), -(-batch.shape[2] // stride))
            if depth.shape != expected:
                raise RuntimeError(
                    f"the ONNX model returned {list(depth.shape)}, expected {list(expected)} (depth stride {stride})"
                )
        except Exception as exc:
            if len(items) > 1:  # find the culprit: run each request alone
                return [answer for item in items for answer in self._run([item])]
            return [(items[0][0], _error(f"model '{self.model_name}' failed on this frame: {exc}", "INTERNAL"))]
        depth = np.ascontiguousarray(depth, dtype=self.output_dtype)
        answers, start = [], 0
        for index, image in items:
            stop = start + image.shape[0]
            answers.append((index, pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, depth[start:stop])])))
            start = stop
        return answers


def _match(wanted: str, available: list[str], kind: str, path: str) -> str:
    if wanted in available:
        return wanted
    if len(available) == 1:
        return available[0]
    raise ValueError(f"{path} has no {kind} named '{wanted}' (it has {available})")


def _error(message: str, code: str) -> Any:
    error_type = pb_utils.TritonError
    return pb_utils.InferenceResponse(error=error_type(message, getattr(error_type, code, error_type.INTERNAL)))
