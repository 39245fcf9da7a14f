"""``gateway/metrics.py``: the gateway's metrics on a per-gateway prometheus-client registry."""

import re

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from dronedepth.benchmarks.stats import parse_prometheus
from dronedepth.gateway.metrics import CONTENT_TYPE, Counter, GatewayMetrics, Gauge, Histogram

# One sample line of the text exposition format 0.0.4.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')

# What /metrics exposed before prometheus-client, as `# TYPE` lines: docs, benchmarks and the operator page use them.
EXPOSED = {
    "dronedepth_recordings_stopped_total": "counter",
    "dronedepth_messages_refused_total": "counter",
    "dronedepth_camera_changes_refused_total": "counter",
    "dronedepth_errors_sent_total": "counter",
    "dronedepth_frames_dropped_total": "counter",
    "dronedepth_frames_processed_total": "counter",
    "dronedepth_frames_received_total": "counter",
    "dronedepth_http_connections_dropped_total": "counter",
    "dronedepth_http_refusals_total": "counter",
    "dronedepth_inference_available": "gauge",
    "dronedepth_messages_received_total": "counter",
    "dronedepth_media_ports_exhausted_total": "counter",
    "dronedepth_offers_total": "counter",
    "dronedepth_peer_connections_total": "counter",
    "dronedepth_pending_offers_expired_total": "counter",
    "dronedepth_sessions_active": "gauge",
    "dronedepth_sessions_closed_total": "counter",
    "dronedepth_stage_duration_seconds": "histogram",
    "dronedepth_triton_errors_total": "counter",
    "dronedepth_uptime_seconds": "gauge",
}


def parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample; asserts every line is well formed."""
    samples = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return samples


def test_exposed_names_and_types_are_the_ones_consumers_read() -> None:
    text = GatewayMetrics().render()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    assert {name: kind for name, kind in types.items() if name.startswith("dronedepth_")} == EXPOSED
    assert "_created" not in text, "prometheus-client's *_created series are not part of the exposition"
    assert types["process_cpu_seconds_total"] == "counter" and "process_resident_memory_bytes" in types
    assert "python_info" in types


def test_counters_keep_their_names_and_read_back_by_label() -> None:
    metrics = GatewayMetrics()
    metrics.frames_dropped.inc(reason="superseded")
    metrics.frames_dropped.inc(2, reason="superseded")
    metrics.offers.inc(outcome="accepted")
    metrics.stage_seconds.observe(0.02, stage="inference")
    metrics.stage_seconds.observe(3.0, stage="inference")
    samples = parse(metrics.render())
    assert samples['dronedepth_frames_dropped_total{reason="superseded"}'] == 3
    assert samples['dronedepth_offers_total{outcome="accepted"}'] == 1
    assert samples["dronedepth_sessions_active"] == 0
    assert samples["dronedepth_inference_available"] == 1
    assert samples['dronedepth_stage_duration_seconds_bucket{le="0.025",stage="inference"}'] == 1
    assert samples['dronedepth_stage_duration_seconds_bucket{le="+Inf",stage="inference"}'] == 2
    assert samples['dronedepth_stage_duration_seconds_count{stage="inference"}'] == 2
    assert metrics.frames_dropped.value(reason="superseded") == 3
    assert metrics.frames_dropped.value(reason="never_seen") == 0
    assert metrics.stage_seconds.count(stage="inference") == 2
    assert metrics.stage_seconds.total(stage="inference") == pytest.approx(3.02)
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_benchmark_parser_reads_the_exposition() -> None:
    metrics = GatewayMetrics()
    metrics.frames_received.inc(12)
    metrics.triton_errors.inc(reason="timeout")
    samples = parse_prometheus(metrics.render())
    assert samples[("dronedepth_frames_received_total", ())] == 12
    assert samples[("dronedepth_triton_errors_total", (("reason", "timeout"),))] == 1


def test_two_gateways_in_one_process_keep_separate_counts() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.peer_connections.inc()
    assert (first.peer_connections.value(), second.peer_connections.value()) == (1, 0)


def test_wrong_labels_and_decrements_are_refused() -> None:
    registry = CollectorRegistry()
    counter = Counter("x_total", "Things.", ["reason"], registry=registry)
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, reason="a")
    with pytest.raises(ValueError, match=r"takes labels \('reason',\)"):
        counter.inc(drone="d")
    with pytest.raises(ValueError, match="ends in _total"):
        Counter("x", "X.", registry=registry)
    with pytest.raises(ValueError, match="has labels"):
        Gauge("g", "G.", ["drone"], registry=registry).set_function(lambda: 1.0)


def test_gauge_function_is_read_at_scrape_time() -> None:
    value = [3.0]
    gauge = Gauge("g", "G.", registry=CollectorRegistry())
    gauge.set_function(lambda: value[0])
    value[0] = 7.0
    assert gauge.value() == 7.0


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram("h_seconds", "H.", ["stage"], registry=CollectorRegistry(), buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(value, stage="inference")
    assert histogram.count(stage="inference") == 4
    assert histogram.total(stage="inference") == pytest.approx(4.05)


def test_scrape_time_collectors_add_series_that_come_and_go() -> None:
    metrics = GatewayMetrics()
    drones = {"a": 0.25}

    def collect() -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily("dronedepth_drone_last_latency_seconds", "Latency.", labels=["drone"])
        for drone, seconds in drones.items():
            family.add_metric([drone], seconds)
        return [family]

    metrics.add_collector(collect)
    assert parse(metrics.render())['dronedepth_drone_last_latency_seconds{drone="a"}'] == 0.25
    drones.clear()
    assert "dronedepth_drone_last_latency_seconds{" not in metrics.render()
