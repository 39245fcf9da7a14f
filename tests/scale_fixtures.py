"""The simulated flights of the scale and flicker tests: the package's scenes and metrics, one implementation.

:class:`~dronedepth.benchmarks.scenes.Flight` ray-casts ground truth over a
ground plane with boxes and gives the relative and metric oracles;
``dronedepth eval`` flies the same scenes.
"""

from __future__ import annotations

from dronedepth.benchmarks.evaluation import abs_rel
from dronedepth.benchmarks.scenes import CAMERA, FPS, Flight

__all__ = ["CAMERA", "FPS", "Flight", "abs_rel"]
