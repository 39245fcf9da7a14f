"""Prometheus metrics of the gateway: a thin typed layer over a per-gateway prometheus-client registry.

:class:`GatewayMetrics` holds every metric the gateway exports in its own
:class:`~prometheus_client.CollectorRegistry` (never the process-global one,
so several gateways in one process keep separate counts), with the process
and platform collectors (``process_*``, ``python_info``). :class:`Counter`,
:class:`Gauge` and :class:`Histogram` wrap prometheus-client's metrics so
labels are keyword arguments (``offers.inc(outcome="accepted")``) and values
can be read back (``offers.value(outcome="accepted")``). Per-drone series come
from the live sessions at scrape time (:meth:`GatewayMetrics.add_collector`),
so they disappear with the session and the number of series stays bounded.

:meth:`GatewayMetrics.render` is the text exposition format 0.0.4 without the
``*_created`` samples prometheus-client adds to counters and histograms: the
exposed series are the gateway's own, named as they always were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import prometheus_client
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Counter", "GatewayMetrics", "Gauge", "Histogram"]

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

LATENCY_BUCKETS: Final[tuple[float, ...]] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds: from a millisecond of keypoint work to a many-second CPU inference."""

_CREATED_SUFFIX: Final = "_created"


class _Labelled:
    """A prometheus-client metric whose label values are given as keywords, all of them every time."""

    def __init__(self, metric: MetricWrapperBase, name: str, labelnames: Sequence[str]) -> None:
        self._metric = metric
        self.name = name
        """The exposed name (a counter's ends in ``_total``)."""
        self.labelnames = tuple(labelnames)

    def _child(self, labels: Mapping[str, str]) -> MetricWrapperBase:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return self._metric.labels(**labels) if self.labelnames else self._metric

    def _sample(self, sample_name: str, labels: Mapping[str, str]) -> float:
        """The current value of one series (0 when it has no sample yet), read through the public ``collect``."""
        self._child(labels)  # checks the label names
        wanted = {name: str(value) for name, value in labels.items()}
        for family in self._metric.collect():
            for sample in family.samples:
                if sample.name == sample_name and sample.labels == wanted:
                    return float(sample.value)
        return 0.0


class Counter(_Labelled):
    """A monotonically increasing count; ``name`` ends in ``_total`` and is exposed as is."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry):
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total, got {name!r}")
        super().__init__(prometheus_client.Counter(name, help_text, labelnames, registry=registry), name, labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount {amount})")
        self._child(labels).inc(amount)  # type: ignore[attr-defined]

    def value(self, **labels: str) -> float:
        return self._sample(self.name, labels)


class Gauge(_Labelled):
    """A value that goes up and down, or one read from a function at scrape time (:meth:`set_function`)."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry):
        super().__init__(prometheus_client.Gauge(name, help_text, labelnames, registry=registry), name, labelnames)

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)  # type: ignore[attr-defined]

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)  # type: ignore[attr-defined]

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).dec(amount)  # type: ignore[attr-defined]

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the (unlabelled) value from ``function`` at every scrape."""
        if self.labelnames:
            raise ValueError(f"gauge {self.name} has labels; a function gives one value")
        self._metric.set_function(function)  # type: ignore[attr-defined]

    def value(self, **labels: str) -> float:
        return self._sample(self.name, labels)


class Histogram(_Labelled):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        metric = prometheus_client.Histogram(name, help_text, labelnames, registry=registry, buckets=buckets)
        super().__init__(metric, name, labelnames)

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)  # type: ignore[attr-defined]

    def count(self, **labels: str) -> int:
        return int(self._sample(f"{self.name}_count", labels))

    def total(self, **labels: str) -> float:
        return self._sample(f"{self.name}_sum", labels)


class _ScrapeTimeCollector:
    """Adapts a function returning metric families to prometheus-client's collector interface."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> Iterable[Metric]:
        return ()  # series come and go with the sessions: nothing to declare up front


class _WithoutCreated:
    """A registry's families minus the ``*_created`` samples (not part of the gateway's exposition)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():  # fresh family objects on every scrape
            family.samples = [s for s in family.samples if not s.name.endswith(_CREATED_SUFFIX)]
            yield family


class GatewayMetrics:
    """Every metric the gateway exports, in one registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._detail_registry = CollectorRegistry()
        self.offers = Counter("dronedepth_offers_total", "Signalling requests by outcome.", ["outcome"], registry=r)
        self.peer_connections = Counter(
            "dronedepth_peer_connections_total", "WebRTC peer connections created.", registry=r
        )
        self.sessions_active = Gauge("dronedepth_sessions_active", "Drone sessions open now.", registry=r)
        self.sessions_closed = Counter(
            "dronedepth_sessions_closed_total", "Drone sessions closed, by reason.", ["reason"], registry=r
        )
        self.frames_received = Counter(
            "dronedepth_frames_received_total", "Video frames decoded from all drones.", registry=r
        )
        self.frames_processed = Counter(
            "dronedepth_frames_processed_total", "Frames turned into a keypoints message.", registry=r
        )
        self.frames_dropped = Counter(
            "dronedepth_frames_dropped_total", "Frames not processed, by reason.", ["reason"], registry=r
        )
        self.stage_seconds = Histogram(
            "dronedepth_stage_duration_seconds", "Time per frame spent in each stage.", ["stage"], registry=r
        )
        self.inference_available = Gauge(
            "dronedepth_inference_available", "1 while depth inference works, 0 during an outage.", registry=r
        )
        self.inference_available.set(1)
        self.uptime = Gauge("dronedepth_uptime_seconds", "Seconds since the gateway started.", registry=r)
        self.triton_errors = Counter(
            "dronedepth_triton_errors_total", "Failed depth requests, by reason.", ["reason"], registry=r
        )
        self.messages_received = Counter(
            "dronedepth_messages_received_total", "Data-channel messages received from drones.", registry=r
        )
        self.errors_sent = Counter(
            "dronedepth_errors_sent_total", "Error messages sent to drones, by code.", ["code"], registry=r
        )
        self.messages_refused = Counter(
            "dronedepth_messages_refused_total",
            "Data-channel messages from drones refused, by reason (the error code sent back).",
            ["reason"],
            registry=r,
        )
        self.camera_changes_refused = Counter(
            "dronedepth_camera_changes_refused_total",
            "Camera messages refused because their drone changed cameras too often.",
            registry=r,
        )
        self.recordings_stopped = Counter(
            "dronedepth_recordings_stopped_total",
            "Drone session recordings stopped early, by reason (write_failed, low_disk, size_limit).",
            ["reason"],
            registry=r,
        )
        self.http_refusals = Counter(
            "dronedepth_http_refusals_total",
            "HTTP requests refused, by endpoint and reason (error code).",
            ["endpoint", "reason"],
            registry=r,
        )
        self.pending_offers_expired = Counter(
            "dronedepth_pending_offers_expired_total",
            "Answered offers closed because ICE/DTLS did not complete in time.",
            registry=r,
        )
        self.media_ports_exhausted = Counter(
            "dronedepth_media_ports_exhausted_total",
            "Offers refused because every UDP port of --rtc-ports was taken.",
            registry=r,
        )
        self.connections_dropped = Counter(
            "dronedepth_http_connections_dropped_total",
            "HTTP connections closed before a handler ran, by reason (slow headers, idle, too many waiting).",
            ["reason"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info

    def add_collector(self, collect: Callable[[], Iterable[Metric]], *, detail: bool = False) -> None:
        """Also expose the families ``collect`` returns at each scrape (e.g. per-drone series of live sessions).

        ``detail``: the families name drones (or other things an anonymous client must not learn):
        they are rendered only by ``render(detail=True)``.
        """
        (self._detail_registry if detail else self.registry).register(_ScrapeTimeCollector(collect))

    def render(self, *, detail: bool = True) -> str:
        """The text exposition (:data:`CONTENT_TYPE`) of every metric, process metrics included.

        ``detail=False`` leaves out the collectors added with ``detail=True`` (per-drone series).
        """
        text = generate_latest(_WithoutCreated(self.registry)).decode("utf-8")
        if detail:
            text += generate_latest(self._detail_registry).decode("utf-8")
        return text
