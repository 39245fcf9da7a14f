import math
import re

import pytest
from dronedepth.gateway.metrics import CONTENT_TYPE, Counter, GatewayMetrics, Gauge, Histogram, Registry

# One sample line of the text exposition format 0.0.4.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


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


def test_counter_with_labels_renders_help_type_and_samples() -> None:
    counter = Counter("x_total", "Things.", ["reason"])
    counter.inc(reason="a")
    counter.inc(2, reason="b")
    counter.inc(reason="a")
    assert counter.render() == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        'x_total{reason="a"} 2',
        'x_total{reason="b"} 2',
    ]
    assert counter.value(reason="a") == 2


def test_counter_refuses_decrease_and_wrong_labels() -> None:
    counter = Counter("x_total", "Things.", ["reason"])
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, reason="a")
    with pytest.raises(ValueError, match=r"takes labels \('reason',\)"):
        counter.inc(drone="d")


def test_unlabelled_counter_starts_at_zero() -> None:
    assert Counter("y_total", "Y.").render()[-1] == "y_total 0"


def test_label_values_are_escaped() -> None:
    gauge = Gauge("g", "G.", ["drone"])
    gauge.set(1.5, drone='a"b\\c\nd')
    assert gauge.render()[-1] == 'g{drone="a\\"b\\\\c\\nd"} 1.5'
    parse("\n".join(gauge.render()) + "\n")


def test_gauge_function_is_read_at_scrape_time() -> None:
    value = [3.0]
    gauge = Gauge("g", "G.")
    gauge.set_function(lambda: value[0])
    value[0] = 7.0
    assert gauge.render()[-1] == "g 7"


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram("h_seconds", "H.", ["stage"], buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(value, stage="inference")
    samples = parse("\n".join(histogram.render()) + "\n")
    assert samples['h_seconds_bucket{stage="inference",le="0.1"}'] == 1
    assert samples['h_seconds_bucket{stage="inference",le="1"}'] == 3
    assert samples['h_seconds_bucket{stage="inference",le="+Inf"}'] == 4
    assert samples['h_seconds_count{stage="inference"}'] == 4
    assert math.isclose(samples['h_seconds_sum{stage="inference"}'], 4.05)
    assert histogram.count(stage="inference") == 4


def test_registry_refuses_duplicates_and_calls_collectors() -> None:
    registry = Registry()
    registry.register(Counter("a_total", "A."))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Counter("a_total", "A."))
    registry.collectors.append(lambda: [Gauge("b", "B.")])
    assert parse(registry.render()) == {"a_total": 0, "b": 0}


def test_gateway_metrics_render_valid_exposition() -> None:
    metrics = GatewayMetrics()
    metrics.frames_dropped.inc(reason="superseded")
    metrics.stage_seconds.observe(0.02, stage="inference")
    samples = parse(metrics.render())
    assert samples['dronedepth_frames_dropped_total{reason="superseded"}'] == 1
    assert samples["dronedepth_sessions_active"] == 0
    assert samples['dronedepth_stage_duration_seconds_count{stage="inference"}'] == 1
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
