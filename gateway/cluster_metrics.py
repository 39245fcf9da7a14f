"""One Prometheus exposition from the worker processes of ``dronedepth gateway --processes N``.

Each worker gateway keeps its own registry (:mod:`dronedepth.gateway.metrics`);
the front scrapes them all and merges the texts so ``/metrics`` on the public
port reads as one gateway:

- counters, histograms and summaries are **summed** per sample name and label
  set (``dronedepth_offers_total{outcome="accepted"}`` counts every worker's
  offers; a per-drone series lives in one worker, so its sum is its value);
- gauges (and untyped samples) are **not** summable in general (uptime, a
  process's memory, ``python_info``): each keeps its value with a
  ``process="<worker index>"`` label added; ``sum by (...)`` in PromQL totals
  those that are counts.

A pure function of the texts: no I/O, testable alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PROCESS_LABEL", "merge_expositions"]

PROCESS_LABEL: Final = "process"
"""The label naming the worker (0-based index) on every gauge of the merged exposition."""

_SUMMED_TYPES: Final = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class _Families:
    """Parsed families as a collector :func:`generate_latest` can render."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_expositions(texts: Sequence[str]) -> str:
    """The exposition (format 0.0.4) of worker ``i``'s text ``texts[i]``, merged as the module docstring says.

    A family keeps the type and help of the first worker that exports it.
    """
    merged: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            if target.type in _SUMMED_TYPES:
                totals = sums.setdefault(family.name, {})
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    totals[key] = totals.get(key, 0.0) + sample.value
            else:
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, PROCESS_LABEL: str(index)}, sample.value)
    for name, totals in sums.items():
        for (sample_name, labels), value in totals.items():
            merged[name].add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry).decode("utf-8")
