"""The benchmark sections, in the order a full run measures them (``dronedepth bench --only``).

A leaf module: the light command line and the heavier harness both read it.
"""

from __future__ import annotations

__all__ = ["SECTIONS"]

SECTIONS = ("stages", "efficiency", "baseline", "projection", "scaling", "gateway-cost", "fleet", "receiver", "gpu")
