"""``dronedepth.stats``: the one percentile every part reports, and the drone's latency statistics built on it."""

from __future__ import annotations

import numpy as np
import pytest

from dronedepth.drone.results import LatencyStats
from dronedepth.stats import percentile


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = np.random.default_rng(3).exponential(50.0, 37)
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_of_a_generator() -> None:
    assert percentile([7.0], 95) == 7.0
    assert percentile((float(v) for v in range(11)), 50) == 5.0


def test_percentile_refuses_nothing_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"within 0\.\.100, got 101"):
        percentile([1.0], 101)


def test_drone_latency_stats_report_none_before_the_first_sample_then_numpy_percentiles() -> None:
    stats = LatencyStats(window=3)
    assert stats.overall(50) is None and stats.recent(95) is None
    for ms in (10.0, 40.0, 20.0, 30.0, 90.0):
        stats.add(ms)
    assert stats.overall(50) == pytest.approx(float(np.percentile([10, 40, 20, 30, 90], 50)))
    assert stats.recent(95) == pytest.approx(float(np.percentile([20, 30, 90], 95)))
    assert stats.maximum == 90.0 and len(stats) == 5
