"""benchmarks/receiver.py: both receivers measured through a real gateway, the lossy link really drops RTP."""

from __future__ import annotations

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
