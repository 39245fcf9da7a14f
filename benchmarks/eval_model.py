"""A real model's depth on the evaluation's rendered frames: export, the embedded Triton, the gateway's client.

The model is exported with ``dronedepth export`` in a subprocess (torch stays
out of this process), served by :class:`~dronedepth.serving.EmbeddedTriton`
on 127.0.0.1 and queried through the gateway's own
:class:`~dronedepth.gateway.inference.TritonDepthClient`, frame by frame, on
:meth:`~dronedepth.benchmarks.scenes.Flight.render` frames of every flight.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dronedepth.benchmarks.evaluation import EvalGrid, ModelOutputs, flight_key
from dronedepth.contract import MODEL_NAME
from dronedepth.errors import DroneDepthError

__all__ = ["ModelSpec", "model_outputs"]

log = logging.getLogger("dronedepth.benchmarks.eval")


@dataclass(frozen=True)
class ModelSpec:
    """Which weights: ``export_args`` are the ``dronedepth export`` weight flags (``--model ID``, ...)."""

    export_args: tuple[str, ...]
    label: str
    random_init: bool
    input_size: int


def _export(spec: ModelSpec, repository: Path) -> None:
    command = [
        sys.executable, "-m", "dronedepth.cli", "export", *spec.export_args,
        "--input-size", str(spec.input_size), "--skip-parity", "--out", str(repository),
    ]  # fmt: skip
    log.info("exporting %s at input size %d", spec.label, spec.input_size)
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise DroneDepthError(f"the export failed ({' '.join(command)}):\n{done.stderr[-3000:]}")


def model_outputs(spec: ModelSpec, grid: EvalGrid, out: Path) -> ModelOutputs:
    """The model's output on every rendered frame of ``grid`` (exported under ``out/model_repository``)."""
    from dronedepth.gateway.inference import TritonDepthClient
    from dronedepth.serving import EmbeddedTriton

    repository = out / "model_repository"
    _export(spec, repository)
    flights = grid.flights()
    times = grid.times_s

    async def infer_all(url: str) -> tuple[dict[str, list[NDArray[np.float32]]], str]:
        client = TritonDepthClient(url, MODEL_NAME, timeout=120.0)
        try:
            outputs: dict[str, list[NDArray[np.float32]]] = {}
            for n, flight in enumerate(flights, 1):
                outputs[flight_key(flight)] = [await client.infer(flight.render(t)) for t in times]
                log.info("[%d/%d] model depth for %s", n, len(flights), flight_key(flight))
            return outputs, client.depth_kind
        finally:
            await client.close()

    log.info("starting the embedded Triton on 127.0.0.1")
    with EmbeddedTriton(repository, grpc_port=0, http_port=0, metrics_port=0, log_file=out / "triton.log") as triton:
        outputs, depth_kind = asyncio.run(infer_all(triton.grpc_url))
    return ModelOutputs(
        label=spec.label + (" (RANDOM-INIT weights: meaningless depth)" if spec.random_init else ""),
        depth_kind="metric" if depth_kind == "metric" else "relative",
        meaningless=spec.random_init,
        outputs=outputs,
    )
