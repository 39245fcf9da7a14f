"""Percentiles, computed one way everywhere: the drone, the gateway's web statistics and the benchmarks.

Pure Python (no numpy) so the drone and the ground floor can use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolating linearly between closest ranks.

    This is numpy's default (``method="linear"``, type 7 of Hyndman and Fan):
    rank ``(n - 1) * q / 100`` in the sorted values, interpolated between its
    two neighbours. Raises ``ValueError`` for no values or ``q`` outside 0..100.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
