"""The benchmark scripts: their statistics and tables, and a real quick run so they never rot."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gateway_fixtures import TOKEN, running_gateway

from dronedepth.benchmarks import cli
from dronedepth.benchmarks.harness import BenchConfig, TritonStats
from dronedepth.benchmarks.report import fmt, markdown_report, markdown_table
from dronedepth.benchmarks.stats import parse_prometheus, prometheus_total, summarize, trend
from dronedepth.benchmarks.stream import Fleet, ResultSample
from dronedepth.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def run_quick_bench(out: Path, sections: str, *flags: str) -> dict[str, Any]:
    """``dronedepth bench --quick --only SECTIONS FLAGS --out OUT`` in a subprocess; its benchmark.json."""
    command = [
        sys.executable,
        "-m",
        "dronedepth.cli",
        "bench",
        "--quick",
        "--only",
        sections,
        *flags,
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "benchmark.json").read_text())


# ----------------------------------------------------------------------------------------- statistics


def test_summarize() -> None:
    assert summarize([]) is None
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s is not None
    assert (s.n, s.mean, s.p50, s.min, s.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.to_dict()["p95"] == pytest.approx(3.85)


def test_trend_measures_growth_in_ms_per_minute() -> None:
    times = [i * 0.5 for i in range(121)]  # a minute, two samples a second
    growing = trend(times, [100.0 + 20.0 * t / 60.0 for t in times])
    assert growing is not None
    assert growing.slope_ms_per_min == pytest.approx(20.0)
    assert growing.first_p50 < growing.last_p50
    flat = trend(times, [100.0 + (5.0 if i % 2 else -5.0) for i in range(121)])
    assert flat is not None
    assert abs(flat.slope_ms_per_min) < 0.5
    assert flat.flat() and flat.to_dict()["flat"] is True
    assert not trend(times, [100.0 * (1 + t / 10) for t in times]).flat()  # type: ignore[union-attr]
    assert trend([0.0, 1.0], [1.0, 2.0]) is None
    with pytest.raises(ValueError, match="3 times but 2 values"):
        trend([0.0, 1.0, 2.0], [1.0, 2.0])


def test_trend_sorts_by_time() -> None:
    shuffled = trend([2.0, 0.0, 1.0], [30.0, 10.0, 20.0])
    assert shuffled is not None
    assert shuffled.slope_ms_per_min == pytest.approx(600.0)
    assert (shuffled.first_p50, shuffled.last_p50) == (10.0, 30.0)


def test_prometheus_text_is_parsed_and_totalled() -> None:
    text = "\n".join(
        [
            "# HELP dronedepth_frames_dropped_total Frames not processed, by reason.",
            "# TYPE dronedepth_frames_dropped_total counter",
            'dronedepth_frames_dropped_total{reason="superseded"} 40',
            'dronedepth_frames_dropped_total{reason="send_backlog"} 2',
            'dronedepth_drone_frames_total{drone="a",outcome="received"} 7',
            'dronedepth_drone_frames_total{drone="b",outcome="received"} 5',
            "dronedepth_frames_received_total 12 1700000000000",
            "not a sample line",
        ]
    )
    samples = parse_prometheus(text)
    assert samples[("dronedepth_frames_received_total", ())] == 12.0
    assert prometheus_total(samples, "dronedepth_frames_dropped_total", by="reason") == {
        "superseded": 40.0,
        "send_backlog": 2.0,
    }
    assert prometheus_total(samples, "dronedepth_drone_frames_total") == {"": 12.0}
    assert prometheus_total(samples, "missing") == {}


def test_triton_statistics_delta_is_per_request() -> None:
    before = {"requests": 10, "request_ns": 10_000_000, "failures": 0, "inferences": 10, "executions": 10}
    after = {"requests": 30, "request_ns": 210_000_000, "failures": 1, "inferences": 30, "executions": 20}
    for i, part in enumerate(TritonStats.PARTS):
        before[f"{part}_ns"] = 0
        after[f"{part}_ns"] = (i + 1) * 20_000_000
    delta = TritonStats.delta(before, after)
    assert delta["requests"] == 20 and delta["failures"] == 1
    assert delta["server_request_ms"] == pytest.approx(10.0)
    assert delta["queue_ms"] == pytest.approx(1.0) and delta["compute_output_ms"] == pytest.approx(4.0)
    assert delta["frames_per_execution"] == pytest.approx(2.0)
    assert TritonStats.delta(after, after) == {"requests": 0.0, "failures": 0.0}


def test_fleet_counts_only_frames_after_the_warm_up() -> None:
    fleet = Fleet(started=1000.0, duration_s=10.0, warmup_s=2.0)
    fleet.sent["d1"] = [1000.0 + i / 10 for i in range(101)]  # 10 fps for 10 s
    fleet.results = [
        ResultSample("d1", i, 1000.0 + i / 10, 1000.3 + i / 10, 300.0, {}) for i in range(0, 101, 2)
    ]  # every other frame answered: 5 results/s
    measured = fleet.measured()
    assert measured[0].captured == pytest.approx(1002.0) and measured[-1].captured == pytest.approx(1010.0)
    assert fleet.result_rate("d1") == pytest.approx(41 / 8)
    assert fleet.aggregate_rate() == pytest.approx(41 / 8)
    assert fleet.frames_in_window("d1") == 81
    assert fleet.result_rate("nobody") is None


# ----------------------------------------------------------------------------------------- tables


def test_markdown_table_and_cells() -> None:
    table = markdown_table(["a", "b"], [[1, "x|y"], [2.5, None]], "lr")
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| 1 | x\\|y |", "| 2.5 | None |"]
    with pytest.raises(ValueError, match="as many columns"):
        markdown_table(["a", "b"], [[1]])
    assert (fmt(None), fmt(float("nan")), fmt(1.234), fmt(1.234, 2), fmt(7)) == ("-", "-", "1.2", "1.23", "7")


def test_report_of_a_skipped_gpu_section_says_why() -> None:
    doc = {
        "quick": True,
        "config": {"duration_s": 8.0, "frames": 6, "sections": ["gpu"]},
        "machine": {
            "cpu": "Test CPU",
            "cores_usable": 2,
            "cores_total": 2,
            "memory_gib": 4.0,
            "os": "Linux",
            "python": "3.11",
        },
        "versions": {"onnxruntime": "1.0", "torch": None},
        "frames": "4 photos",
        "warmup_note": "none needed",
        "created": "today",
        "elapsed_s": 1.0,
        "sections": {"gpu": {"skipped": True, "reason": "no NVIDIA GPU on this machine (nvidia-smi not found)"}},
        "skipped": {"baseline": "failed: boom"},
    }
    text = markdown_report(doc)
    assert "Quick mode" in text and "Test CPU, 2 usable cores" in text
    assert "onnxruntime 1.0" in text and "torch" not in text
    assert "**Skipped:** no NVIDIA GPU on this machine (nvidia-smi not found)." in text
    assert "## baseline\n\nSkipped: failed: boom" in text


# ----------------------------------------------------------------------------------------- CLI


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_defaults_and_explicit_flags_win(tmp_path: Path) -> None:
    quick = cli.config_from_args(_parse("--quick", "--out", str(tmp_path)))
    assert (quick.input_size, quick.duration_s, quick.drones, quick.quick) == (154, 8.0, (1, 2), True)
    assert quick.sections == cli.SECTIONS
    full = cli.config_from_args(_parse("--only", "stages,scaling", "--input-size", "196", "--duration", "20"))
    assert (full.input_size, full.duration_s, full.drones, full.sections) == (
        196,
        20.0,
        (1, 2, 4, 8),
        ("stages", "scaling"),
    )
    assert full.wants("scaling") and not full.wants("gpu")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "stages,warp"], "choose from stages"),
        (["--drones", "1,0"], "positive drone counts"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": 150}, "multiple of 14, got 150"),
        ({"duration_s": 4.0, "warmup_s": 5.0}, "longer than the warm-up"),
        ({"fps": 0.0}, "--fps must be within"),
        ({"sections": ("stages", "nope")}, "stages,nope"),
    ],
)
def test_config_names_the_bad_value(kwargs: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        BenchConfig(out=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_gpu_mode_skips_with_a_reason_without_a_gpu() -> None:
    from dronedepth.benchmarks.gpu import detect_gpu

    available, why, info = detect_gpu()
    if available:
        pytest.skip("this machine has a GPU")
    assert why.startswith("no NVIDIA GPU") and "ONNX Runtime providers" in why
    assert info["cuda_driver_gpus"] == 0


# ----------------------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    """The real thing, as small as it gets: export, embedded Triton, one drone, projection."""
    out = tmp_path / "results"
    doc = run_quick_bench(out, "stages,projection", "--duration", "6")
    assert doc["quick"] is True and not doc["skipped"]
    assert set(doc["sections"]) == {"stages", "projection"}
    assert doc["machine"]["cores_usable"] >= 1 and doc["machine"]["cpu"]
    assert doc["model"]["encoder"] == "vits" and doc["model"]["random_init"] is True
    assert doc["model"]["input_size"] == 154 and doc["model"]["precision"] == "fp32"
    for package in ("onnxruntime", "torch", "aiortc", "numpy", "tritonserver"):
        assert doc["versions"][package], package
    rows = {row["stage"].strip(): row for row in doc["sections"]["stages"]["rows"]}
    assert rows["glass-to-result (drone)"]["n"] > 0
    assert rows["capture → gateway (encode, RTP, jitter buffer, decode)"]["n"] > 0  # the arrival sink saw frames
    assert rows["send (data channel → drone)"]["n"] > 0
    assert rows["Triton request (gateway's gRPC client)"]["p50"] > 0
    assert rows["Triton compute_infer (model: Python backend + ONNX Runtime)"]["mean"] > 0
    assert doc["sections"]["projection"]["projection"]

    report = (out / "benchmark.md").read_text()
    assert "Quick mode" in report and "## 1. Per-stage latency" in report and "## 4. Projection" in report
    assert (out / "stages.png").stat().st_size > 1000


# ----------------------------------------------------------------------------------------- gateway cost


def test_profile_summary_counts_cumulative_and_own_samples_without_start_up() -> None:
    from dronedepth.benchmarks.gateway_cost import profile_summary

    raw = "\n".join(
        [
            "run (thread.py);process (pipeline.py);detect (keypoints.py) 30",
            "run (thread.py);process (pipeline.py) 10",
            "run (thread.py);to_ndarray (frame.py) 20",
            "<module> (cli.py);_find_and_load (<frozen>);<module> (open3d.py) 500",
        ]
    )
    summary = profile_summary(raw, results=6.0)
    rows = {r["function"]: r for r in summary["rows"]}
    assert summary["samples"] == 60 and "<module> (open3d.py)" not in rows  # imports at start-up left out
    assert rows["run (thread.py)"]["cumulative_pct"] == 100.0 and rows["run (thread.py)"]["own_pct"] == 0.0
    assert rows["process (pipeline.py)"]["cumulative_pct"] == pytest.approx(66.7, abs=0.1)
    assert rows["process (pipeline.py)"]["own_pct"] == pytest.approx(16.7, abs=0.1)
    assert rows["detect (keypoints.py)"]["ms_per_result"] == 50.0  # 30 samples of 10 ms over 6 results


def test_replay_clip_has_one_vp8_packet_per_frame_and_regular_keyframes() -> None:
    from dronedepth.benchmarks.gateway_cost import KEYFRAME_INTERVAL, clip_frames, encode_clip

    frames, camera = clip_frames(2 * KEYFRAME_INTERVAL + 1)
    clip = encode_clip(frames)
    keyframes = [i for i, packet in enumerate(clip) if packet[0] & 1 == 0]  # VP8 frame tag: bit 0 clear on keyframes
    assert len(clip) == len(frames) and keyframes == [0, KEYFRAME_INTERVAL, 2 * KEYFRAME_INTERVAL]
    assert (camera.width, camera.height) == (640, 480)


def test_clip_for_picks_the_fastest_clip_within_the_advice() -> None:
    from dronedepth.benchmarks.gateway_cost import Clip, clip_for

    clips = [Clip(fps, []) for fps in (30.0, 15.0, 7.5, 3.0)]
    assert clip_for(clips, None).fps == 30.0, "no limit: full rate"
    assert clip_for(clips, 100.0).fps == 30.0
    assert clip_for(clips, 15.0).fps == 15.0, "a rate equal to the advice is within it"
    assert clip_for(clips, 14.9).fps == 7.5
    assert clip_for(clips, 1.0).fps == 3.0, "below every clip: the slowest"


def test_replay_clip_ladder_steps_finer_than_the_advice_headroom_and_starts_each_clip_on_a_keyframe() -> None:
    from dronedepth.benchmarks.gateway_cost import CLIP_RATES, FPS, RATE_STEP, encode_clips
    from dronedepth.gateway.frame_rate import FrameRateConfig

    lowest_advice = FrameRateConfig().min_fps
    assert CLIP_RATES[0] == FPS and lowest_advice <= min(CLIP_RATES) <= RATE_STEP * lowest_advice
    assert np.all(np.array(CLIP_RATES[:-1]) / np.array(CLIP_RATES[1:]) <= RATE_STEP + 1e-9)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    clips = encode_clips(frames, rates=(20.0, 10.0, 4.0), source_fps=20.0)
    assert [(c.fps, len(c.packets)) for c in clips] == [(20.0, 20), (10.0, 10), (4.0, 4)], "same flight time"
    for clip in clips:  # VP8 frame tag: bit 0 clear on keyframes
        assert [i for i, p in enumerate(clip.packets) if p[0] & 1 == 0] == list(range(0, len(clip.packets), 10))


async def test_replay_track_follows_frame_rate_advice_switching_clips_at_a_keyframe() -> None:
    """The advice reaches the track through the drone's data channel handler; the track then sends the
    slower clip from its keyframe on, at that clip's period, with pts still increasing; null lifts it."""
    from dronedepth.benchmarks.gateway_cost import ReplayFleet, ReplayTrack, _on_gateway_message, encode_clips
    from dronedepth.protocol import FrameRateMessage, encode

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(40)]
    # Fast clips keep the test short; the switching does not depend on the rates.
    clips = encode_clips(frames, rates=(1000.0, 500.0, 250.0, 125.0), source_fps=1000.0)
    fast, quarter = clips[0], clips[2]
    sent: dict[int, float] = {}
    fleet = ReplayFleet(started=0.0, duration_s=0.0, warmup_s=0.0)
    fleet.sent["d"] = []
    track = ReplayTrack(clips, sent, fleet.sent["d"])

    async def packets(count: int) -> list[tuple[bytes, int]]:
        return [(bytes(p), int(p.pts)) for p in [await track.recv() for _ in range(count)]]

    first = await packets(5)  # a few frames in: a switch lands mid-GOP of the clip being sent
    _on_gateway_message(encode(FrameRateMessage(max_fps=300.0)), "d", track, sent, fleet)
    advised = await packets(12)  # past the end of that clip's 10 packets: it loops
    _on_gateway_message(encode(FrameRateMessage(max_fps=None)), "d", track, sent, fleet)
    lifted = await packets(3)

    assert fleet.advised == {"d": None} and fleet.advice_messages == 2
    assert [data for data, _ in first] == fast.packets[:5]
    assert [data for data, _ in advised] == quarter.packets + quarter.packets[:2], "the fastest within 300 fps"
    assert advised[0][0][0] & 1 == 0 and lifted[0][0][0] & 1 == 0, "each switch starts on a keyframe"
    assert [data for data, _ in lifted] == fast.packets[:3], "null: back to the full rate"
    pts = [p for _, p in first + advised + lifted]
    assert np.diff(pts).tolist() == [90] * 4 + [360] * 12 + [90] * 3, (
        "pts step by the sending clip's period, in whole ms"
    )
    assert sorted(sent) == pts and len(fleet.sent["d"]) == len(pts)


async def test_replayed_drones_retry_until_the_gateway_admits_every_one() -> None:
    """The gateway answers offers beyond its ICE set-up budget 503: a replayed fleet larger than the budget
    must still stream whole, or a step's "N drones" would measure fewer (it did: 16 meant 4)."""
    from dronedepth.benchmarks.gateway_cost import all_streaming, encode_clips, replay_drones
    from dronedepth.protocol import CameraMessage

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(4)]
    camera = CameraMessage(width=128, height=96, fx=100.0, fy=100.0, cx=63.5, cy=47.5)
    async with running_gateway(max_pending_offers=1, max_pending_per_remote=1) as gateway:
        stop = asyncio.Event()
        fleet, running = await replay_drones(gateway.url, TOKEN, 3, encode_clips(frames), camera, stop)
        try:
            await asyncio.wait_for(all_streaming(fleet, running), 60)
        finally:
            stop.set()
            outcomes = await running
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert sorted(fleet.latest) == ["replay-1", "replay-2", "replay-3"], "every drone got a result"


@pytest.mark.slow
def test_quick_gateway_cost_run_measures_cpu_per_result_stages_levers_and_a_profile(tmp_path: Path) -> None:
    """Replayed drones → gateway subprocess → embedded Triton with the zero-cost model, as small as it gets."""
    out = tmp_path / "results"
    section = run_quick_bench(out, "gateway-cost", "--duration", "3", "--warmup", "1")["sections"]["gateway-cost"]
    assert section["triton_alone"]["latency_ms"]["p50"] > 0
    (step,) = section["steps"]
    assert step["drones"] == step["connected"] == 2 and step["results"] > 0 and not step["failures"]
    assert step["gateway_cpu_ms_per_result"] > 0 and step["cores_busy"]["gateway"] > 0
    assert all(step["per_drone_latency_ms"].values()), "every replayed drone got results"
    assert step["frames_sent_per_s"] == pytest.approx(sum(step["per_drone_sent_fps"].values()), abs=0.1)
    assert step["frames_sent_per_s"] > 0 and sorted(step["advised_fps"]) == ["replay-1", "replay-2"]
    assert [r["fps"] for r in section["clip"]["rates"]][:2] == [30.0, 24.0]
    for stage in ("queue", "convert", "inference", "detection", "projection", "keypoints", "processing"):
        assert step["stages_ms"][stage] >= 0, stage
    half, processes, budget, floor = section["levers"]
    assert half["gateway_args"] == ["--keypoint-scale", "0.5"] and half["results"] > 0
    assert processes["gateway_args"] == ["--processes", "2"] and processes["results"] > 0
    assert all(processes["per_drone_latency_ms"].values()), "drones on both processes got results"
    assert budget["gateway_args"] == ["--latency-budget", "40"] and budget["results"] > 0
    assert floor["gateway_args"] == ["--keypoints", "grid"] and floor["results"] > 0
    assert floor["stages_ms"]["detection"] < half["stages_ms"]["detection"], "the floor detects nothing"
    profile = section["profile"]
    assert profile.get("skipped") or (profile["rows"] and (out / "gateway_cost_profile.txt").is_file())
    report = (out / "benchmark.md").read_text()
    assert "## gateway cost" in report and "frames sent/s" in report


# ----------------------------------------------------------------------------------------- fleet


def test_fleet_splits_drones_round_robin_each_to_one_gateway() -> None:
    from dronedepth.benchmarks.fleet import split_round_robin

    assert split_round_robin(5, 2) == [[1, 3, 5], [2, 4]]
    assert split_round_robin(2, 1) == [[1, 2]]
    assert split_round_robin(1, 3) == [[1], [], []], "more gateways than drones: some idle"
    split = split_round_robin(16, 3)
    assert sorted(d for drones in split for d in drones) == list(range(1, 17)), "every drone once"
    assert max(map(len, split)) - min(map(len, split)) == 1


def test_fleet_layout_refuses_a_triton_no_gateway_asks() -> None:
    from dronedepth.benchmarks.fleet import Layout

    assert [Layout(2, 2, 4).triton_of(m) for m in range(2)] == [0, 1]
    assert [Layout(2, 1, 4).triton_of(m) for m in range(2)] == [0, 0]
    with pytest.raises(ConfigError, match="2 Tritons for 1 gateway"):
        Layout(1, 2, 4)
    with pytest.raises(ConfigError, match="at least one gateway"):
        Layout(1, 1, 0)


def _fleet_step(gateways: int, tritons: int, drones: int, slowest: float, worst_p95: float | None) -> dict[str, object]:
    return {
        "gateways": gateways,
        "tritons": tritons,
        "drones": drones,
        "streamed": drones,
        "failures": {},
        "gateway_cpu_ms_per_result": 25.0,
        "per_drone_results_per_s": {"mean": slowest + 1.0, "min": slowest},
        "worst_drone_p95_ms": worst_p95,
    }


def test_fleet_sizing_carries_the_largest_n_up_to_which_every_step_meets_the_rule() -> None:
    from dronedepth.benchmarks.fleet import LATENCY_LIMIT_MS, MIN_RESULTS_PER_S, sizing

    lost_one = {**_fleet_step(1, 1, 2, 30.0, 40.0), "gateways": 3, "tritons": 3, "streamed": 1}
    failed = {**_fleet_step(1, 1, 2, 30.0, 40.0), "gateways": 4, "tritons": 4, "failures": {"drone-2": "boom"}}
    grid = [
        _fleet_step(1, 1, 2, 30.0, 40.0),
        _fleet_step(1, 1, 4, MIN_RESULTS_PER_S, LATENCY_LIMIT_MS),  # both bounds exactly: still carried
        _fleet_step(1, 1, 8, 12.0, LATENCY_LIMIT_MS + 0.1),
        _fleet_step(1, 1, 16, 11.0, 90.0),  # passes after a failed step: noise, not capacity
        _fleet_step(2, 1, 2, MIN_RESULTS_PER_S - 0.1, 30.0),
        _fleet_step(2, 1, 4, 20.0, 30.0),
        _fleet_step(2, 2, 2, 30.0, 30.0),
        _fleet_step(2, 2, 4, 20.0, None),  # no latency measured: not carried
        lost_one,
        failed,
    ]
    block = sizing(grid)
    carried = {(c["gateways"], c["tritons"]): (c["drones"], c["drones_per_gateway"]) for c in block["carried"]}
    assert carried == {(1, 1): (4, 4.0), (2, 1): (0, 0.0), (2, 2): (2, 1.0), (3, 3): (0, 0.0), (4, 4): (0, 0.0)}
    meets = [c["meets_rule"] for c in block["per_configuration"]]
    assert meets == [True, True, False, True, False, True, True, False, False, False]
    assert {c["results_per_s_per_gateway_core"] for c in block["per_configuration"]} == {40.0}
    assert "every smaller N" in block["rule"] and block["latency_limit_ms"] == LATENCY_LIMIT_MS


def test_fleet_report_renders_the_grid_and_the_sizing_lines() -> None:
    from dronedepth.benchmarks.fleet import sizing

    steps = [_fleet_step(1, 1, 2, 30.0, 40.0), _fleet_step(2, 1, 2, 30.0, 50.0)]
    for step in steps:
        step |= {
            "results_per_s": 60.0,
            "frames_sent_per_s": 60.0,
            "frames_decoded_per_s": 59.0,
            "advised_fps": {"min": 24.0, "max": 30.0},
            "latency_ms": {"p50": 20.0, "p95": 40.0},
            "cores_busy": {"gateways": 1.1, "tritons": 0.4, "drones (bench process)": 0.3},
        }
    section = {
        "frame": "640×480",
        "fps_per_drone": 30.0,
        "model": "tiny",
        "split": "round-robin",
        "duration_s": 14.0,
        "warmup_s": 4.0,
        "configurations": steps,
        "sizing": sizing(steps),
    }
    doc = {
        "quick": False,
        "config": {"duration_s": 14.0, "frames": 6, "sections": ["fleet"]},
        "machine": {"cpu": "CPU", "cores_usable": 2, "cores_total": 2, "memory_gib": 4.0, "os": "Linux", "python": "3"},
        "versions": {},
        "frames": "4 photos",
        "warmup_note": "none",
        "created": "today",
        "elapsed_s": 1.0,
        "sections": {"fleet": section},
        "skipped": {},
    }
    text = markdown_report(doc)
    assert "## fleet" in text and "| 2 | 1 | 2/2 | 60.0 | 31.0 / 30.0 |" in text
    assert "1 gateway(s), 1 Triton(s): carries 2 drones (2.00 per gateway)" in text
    assert "2 gateway(s), 1 Triton(s): carries 2 drones (1.00 per gateway)" in text
    assert "1×1×2: 40.0" in text and "Sizing rule: the largest N" in text


@pytest.mark.slow
def test_quick_fleet_run_streams_every_drone_through_every_gateway(tmp_path: Path) -> None:
    """Replayed drones → 1 and 2 gateway subprocesses → one embedded Triton, as small as it gets."""
    out = tmp_path / "results"
    section = run_quick_bench(out, "fleet", "--duration", "3", "--warmup", "1")["sections"]["fleet"]
    one, two = section["configurations"]
    assert (one["gateways"], one["tritons"], two["gateways"], two["tritons"]) == (1, 1, 2, 1)
    for step in (one, two):
        assert step["drones"] == step["streamed"] == 2 and step["results"] > 0 and not step["failures"], step
        assert all(d["results_per_s"] > 0 for d in step["per_drone"].values()), "every drone got results"
        assert step["gateway_cpu_ms_per_result"] > 0 and step["cores_busy"]["gateways"] > 0
    assert [g["drones"] for g in two["per_gateway"]] == [1, 1] and all(
        g["results_per_s"] > 0 for g in two["per_gateway"]
    )
    assert {d["gateway"] for d in two["per_drone"].values()} == {1, 2}, "one drone on each gateway"
    assert len(section["sizing"]["carried"]) == 2
    report = (out / "benchmark.md").read_text()
    assert "## fleet" in report and "Sizing rule" in report
    assert (out / "fleet_curve.png").stat().st_size > 1000
