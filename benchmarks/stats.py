"""The statistics every benchmark reports: summaries, latency trends, Prometheus text.

Percentiles are :func:`dronedepth.stats.percentile` (linear interpolation, numpy's default).

Pure functions, no I/O: what they compute is pinned by ``tests/test_benchmarks.py``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dronedepth.stats import percentile

__all__ = [
    "Summary",
    "Trend",
    "parse_prometheus",
    "prometheus_total",
    "summarize",
    "trend",
]


@dataclass(frozen=True, slots=True)
class Summary:
    """Count, mean and percentiles of a sample (milliseconds unless said otherwise)."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(values: Iterable[float]) -> Summary | None:
    """Summary of ``values``; None when there are none."""
    data = [float(v) for v in values]
    if not data:
        return None
    return Summary(
        n=len(data),
        mean=statistics.fmean(data),
        p50=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        min=min(data),
        max=max(data),
    )


@dataclass(frozen=True, slots=True)
class Trend:
    """Whether a latency series grows over a run.

    ``slope_ms_per_min`` is the least-squares slope of latency against time;
    ``first_p50``/``last_p50`` are the medians of the first and last third of
    the samples (by time).
    """

    n: int
    slope_ms_per_min: float
    first_p50: float
    last_p50: float
    span_s: float

    @property
    def growth(self) -> float:
        """``last_p50 / first_p50`` (1.0: flat)."""
        return self.last_p50 / self.first_p50 if self.first_p50 > 0 else math.inf

    def flat(self, tolerance: float = 0.25) -> bool:
        """True when the last third's median is within ``tolerance`` (relative) of the first third's."""
        return self.growth <= 1 + tolerance

    def to_dict(self) -> dict[str, Any]:
        out = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        out["growth"] = round(self.growth, 3)
        out["flat"] = self.flat()
        return out


def trend(times_s: Sequence[float], values: Sequence[float]) -> Trend | None:
    """The :class:`Trend` of ``values`` sampled at ``times_s`` (seconds); None with fewer than 3 samples."""
    if len(times_s) != len(values):
        raise ValueError(f"{len(times_s)} times but {len(values)} values")
    pairs = sorted(zip(times_s, values, strict=True))
    n = len(pairs)
    if n < 3:
        return None
    ts = [t for t, _ in pairs]
    vs = [v for _, v in pairs]
    t_mean, v_mean = statistics.fmean(ts), statistics.fmean(vs)
    spread = sum((t - t_mean) ** 2 for t in ts)
    slope = 0.0 if spread == 0 else sum((t - t_mean) * (v - v_mean) for t, v in pairs) / spread
    third = max(1, n // 3)
    return Trend(
        n=n,
        slope_ms_per_min=slope * 60.0,
        first_p50=percentile(vs[:third], 50),
        last_p50=percentile(vs[-third:], 50),
        span_s=ts[-1] - ts[0],
    )


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_prometheus(text: str) -> dict[MetricKey, float]:
    """Samples of a Prometheus text exposition: ``(name, sorted label pairs) -> value``; comments skipped."""
    samples: dict[MetricKey, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        try:
            samples[(name, pairs)] = float(value)
        except ValueError:
            continue
    return samples


def prometheus_total(samples: dict[MetricKey, float], name: str, by: str | None = None) -> dict[str, float]:
    """Sum of metric ``name`` over its series, grouped by label ``by`` (key ``""`` when ``by`` is None)."""
    out: dict[str, float] = {}
    for (metric, labels), value in samples.items():
        if metric != name:
            continue
        key = dict(labels).get(by, "") if by else ""
        out[key] = out.get(key, 0.0) + value
    return out
