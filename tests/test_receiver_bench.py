"""benchmarks/receiver.py: both receivers measured through a real gateway, the lossy link really drops RTP;
the section in ``dronedepth bench``."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_benchmarks import run_quick_bench

from dronedepth.benchmarks.harness import load_frames
from dronedepth.benchmarks.receiver import receiver_run, table
from dronedepth.gateway.receiver import MarkerJitterBuffer


async def test_each_receiver_is_measured_on_a_lossy_link() -> None:
    frames = load_frames(count=2)
    runs = [
        await receiver_run(frames, receiver=name, loss=0.05, fps=15.0, duration_s=2.0, warmup_s=0.5)
        for name in ("aiortc", "marker")
    ]
    assert MarkerJitterBuffer.release_at_marker is True  # restored after the aiortc run
    for run in runs:
        assert run["latency_ms"] is not None and run["latency_ms"]["n"] >= 5
        assert 0 < run["rtp_packets_dropped"] < run["rtp_packets_sent"]
        assert run["frames_corrupted"] == 0
    assert "marker" in table({"runs": runs})


@pytest.mark.slow
def test_quick_bench_runs_the_receiver_section(tmp_path: Path) -> None:
    """``dronedepth bench --quick --only receiver``, short: both receivers, clean and lossy, in JSON and Markdown."""
    out = tmp_path / "results"
    doc = run_quick_bench(out, "receiver", "--duration", "3", "--warmup", "1")
    assert not doc["skipped"] and set(doc["sections"]) == {"receiver"}
    assert "model" not in doc  # no export, no Triton: the section brings its own zero-cost depth
    runs = doc["sections"]["receiver"]["runs"]
    assert [(r["receiver"], r["loss"]) for r in runs] == [
        ("aiortc", 0.0),
        ("marker", 0.0),
        ("aiortc", 0.01),
        ("marker", 0.01),
    ]
    for run in runs:
        assert run["latency_ms"]["n"] > 0 and run["frames_answered"] > 0
        assert (run["rtp_packets_dropped"] > 0) == (run["loss"] > 0)
    report = (out / "benchmark.md").read_text()
    assert "## 8. Receiver" in report and "| marker | 1% |" in report
