"""Prometheus metrics of the gateway, in the text exposition format (version 0.0.4).

Hand-written to keep the dependency list short: :class:`Counter`,
:class:`Gauge` and :class:`Histogram` with labels, and :class:`GatewayMetrics`
holding every metric the gateway exports. Per-drone series come from the live
sessions at scrape time (``collectors``), so they disappear with the session
and the number of series stays bounded however many drones come and go.
Updated from the event loop only; no locking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

__all__ = ["CONTENT_TYPE", "Counter", "GatewayMetrics", "Gauge", "Histogram", "Registry", "Sample"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]
Sample = tuple[str, dict[str, str], float]
"""``(metric name, labels, value)``, one line of the exposition."""

# Seconds: from a millisecond of keypoint work to a many-second CPU inference.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _format_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def samples(self) -> Iterable[Sample]:
        raise NotImplementedError

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{name}{_format_labels(labels)} {_format_value(value)}" for name, labels, value in self.samples()]
        return lines


class Counter(_Metric):
    """A monotonically increasing count; its name ends in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount {amount})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[Sample]:
        for key, value in sorted(self._values.items()):
            yield self.name, dict(zip(self.labelnames, key, strict=True)), value


class Gauge(_Metric):
    """A value that goes up and down, or one read from ``function`` at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        function: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {} if labelnames else {(): 0.0}
        self._function = function

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Read the (unlabelled) value from ``function`` at scrape time instead."""
        if function is not None and self.labelnames:
            raise ValueError(f"gauge {self.name} has labels; a function gives one value")
        self._function = function

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def value(self, **labels: str) -> float:
        if self._function is not None:
            return float(self._function())
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[Sample]:
        if self._function is not None:
            yield self.name, {}, float(self._function())
            return
        for key, value in sorted(self._values.items()):
            yield self.name, dict(zip(self.labelnames, key, strict=True)), value


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        if "le" in self.labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        self.buckets = tuple(sorted(buckets))
        # label values -> (per-bucket counts, sum, count); counts are not cumulative here.
        self._data: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        counts, totals = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0, 0.0]))
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        counts[index] += 1
        totals[0] += value
        totals[1] += 1

    def count(self, **labels: str) -> int:
        data = self._data.get(self._key(labels))
        return int(data[1][1]) if data else 0

    def total(self, **labels: str) -> float:
        data = self._data.get(self._key(labels))
        return data[1][0] if data else 0.0

    def samples(self) -> Iterable[Sample]:
        for key, (counts, (total, count)) in sorted(self._data.items()):
            labels = dict(zip(self.labelnames, key, strict=True))
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                yield f"{self.name}_bucket", {**labels, "le": _format_value(bound)}, cumulative
            yield f"{self.name}_sum", labels, total
            yield f"{self.name}_count", labels, count


M = TypeVar("M", bound=_Metric)


class Registry:
    """Metrics in registration order, plus collectors called at scrape time."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self.collectors: list[Callable[[], Iterable[_Metric]]] = []

    def register(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.render()
        for collect in self.collectors:
            for metric in collect():
                lines += metric.render()
        return "\n".join(lines) + "\n"


class GatewayMetrics:
    """Every metric the gateway exports, in one registry."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.offers = r.register(Counter("dronedepth_offers_total", "Signalling requests by outcome.", ["outcome"]))
        self.peer_connections = r.register(
            Counter("dronedepth_peer_connections_total", "WebRTC peer connections created.")
        )
        self.sessions_active = r.register(Gauge("dronedepth_sessions_active", "Drone sessions open now."))
        self.sessions_closed = r.register(
            Counter("dronedepth_sessions_closed_total", "Drone sessions closed, by reason.", ["reason"])
        )
        self.frames_received = r.register(
            Counter("dronedepth_frames_received_total", "Video frames decoded from all drones.")
        )
        self.frames_processed = r.register(
            Counter("dronedepth_frames_processed_total", "Frames turned into a keypoints message.")
        )
        self.frames_dropped = r.register(
            Counter("dronedepth_frames_dropped_total", "Frames not processed, by reason.", ["reason"])
        )
        self.stage_seconds = r.register(
            Histogram("dronedepth_stage_duration_seconds", "Time per frame spent in each stage.", ["stage"])
        )
        self.inference_available = r.register(
            Gauge("dronedepth_inference_available", "1 while depth inference works, 0 during an outage.")
        )
        self.inference_available.set(1)
        self.uptime = r.register(Gauge("dronedepth_uptime_seconds", "Seconds since the gateway started."))
        self.triton_errors = r.register(
            Counter("dronedepth_triton_errors_total", "Failed depth requests, by reason.", ["reason"])
        )
        self.messages_received = r.register(
            Counter("dronedepth_messages_received_total", "Data-channel messages received from drones.")
        )
        self.errors_sent = r.register(
            Counter("dronedepth_errors_sent_total", "Error messages sent to drones, by code.", ["code"])
        )

    def render(self) -> str:
        return self.registry.render()
