"""Serving the exported model: an embedded CPU Triton server for development, tests and demos.

The GPU deployment uses the official Triton image on the same model repository
(``docker-compose.yml``); this package runs the ``tritonserver`` bundled with
nvidia-pytriton on CPU, with each exported ONNX model behind a small
Python-backend adapter, under the same names, tensors and batching.
"""

from dronedepth.serving.embedded import EmbeddedTriton, find_free_port, port_in_use
from dronedepth.serving.environment import ServerEnvironment, locate_server_env
from dronedepth.serving.repository import AdapterSettings, ExportedModel, read_repository

__all__ = [
    "AdapterSettings",
    "EmbeddedTriton",
    "ExportedModel",
    "ServerEnvironment",
    "find_free_port",
    "locate_server_env",
    "port_in_use",
    "read_repository",
]
