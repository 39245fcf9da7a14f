"""``dronedepth gateway --processes N``: placement, merged metrics, and a real front with two worker processes."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import psutil
import pytest
from aiohttp import ClientSession, WSMsgType
from gateway_fixtures import TOKEN, TestDrone, camera_for, drones, photo
from prometheus_client.parser import text_string_to_metric_families

from dronedepth import cli
from dronedepth.contract import DEFAULT_DEPTH_STRIDE, PARAM_DEPTH_KIND, PARAM_DEPTH_STRIDE
from dronedepth.errors import ConfigError
from dronedepth.gateway.cluster import choose_worker, worker_args
from dronedepth.gateway.cluster_metrics import merge_expositions
from dronedepth.serving.synthetic import tiny_depth_model

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser(load=["gateway"]).parse_args(["gateway", "--onnx-model", "m.onnx", *argv])


def test_an_offer_goes_to_the_worker_holding_the_drone_else_to_the_least_loaded() -> None:
    held = [frozenset({"a", "b"}), frozenset({"c"})]
    assert choose_worker("b", held, [0, 0]) == 0, "a replacement offer stays where the drone lives"
    assert choose_worker("new", held, [0, 0]) == 1
    assert choose_worker(None, held, [0, 0]) == 1
    assert choose_worker(None, held, [0, 2]) == 0, "offers being answered count as load"
    assert choose_worker(None, [frozenset(), frozenset()], [0, 0]) == 0, "ties go to the first"


def test_merged_metrics_sum_counters_and_histograms_and_label_gauges_by_process() -> None:
    worker = """\
# HELP dronedepth_offers_total Offers.
# TYPE dronedepth_offers_total counter
dronedepth_offers_total{{outcome="accepted"}} {offers}
# HELP dronedepth_latency_seconds Latency.
# TYPE dronedepth_latency_seconds histogram
dronedepth_latency_seconds_bucket{{le="1.0"}} {fast}
dronedepth_latency_seconds_bucket{{le="+Inf"}} 3.0
dronedepth_latency_seconds_count 3.0
dronedepth_latency_seconds_sum 1.5
# HELP dronedepth_sessions Sessions.
# TYPE dronedepth_sessions gauge
dronedepth_sessions {sessions}
"""
    text = merge_expositions([worker.format(offers=2, fast=1, sessions=1), worker.format(offers=5, fast=2, sessions=4)])
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("dronedepth_offers_total", (("outcome", "accepted"),))] == 7
    assert samples[("dronedepth_latency_seconds_bucket", (("le", "1.0"),))] == 3
    assert samples[("dronedepth_latency_seconds_count", ())] == 6
    assert samples[("dronedepth_latency_seconds_sum", ())] == 3.0
    assert samples[("dronedepth_sessions", (("process", "0"),))] == 1
    assert samples[("dronedepth_sessions", (("process", "1"),))] == 4
    assert "# TYPE dronedepth_offers_total counter" in text


def test_each_worker_gets_loopback_no_tls_and_its_share_of_the_media_ports(tmp_path: Path) -> None:
    args = _args("--processes", "3", "--rtc-ports", "40000-40010", "--tls-cert", "c.pem", "--tls-key", "k.pem")
    shares = [worker_args(args, index, 3) for index in range(3)]
    assert [share.rtc_ports for share in shares] == ["40000-40002", "40003-40005", "40006-40010"]
    assert all((s.host, s.port, s.tls_cert, s.tls_key, s.processes) == ("127.0.0.1", 0, None, None, 1) for s in shares)
    assert args.host == "0.0.0.0" and args.processes == 3, "the front's own arguments are unchanged"
    with pytest.raises(ConfigError, match="fewer than the 3 processes"):
        worker_args(_args("--rtc-ports", "40000-40001"), 0, 3)
    with pytest.raises(ConfigError, match="--foxglove serves one port"):
        worker_args(_args("--foxglove"), 0, 2)
    with pytest.raises(ConfigError, match="--map fuses"):
        worker_args(_args("--map"), 0, 2)


async def _read_until(stream: asyncio.StreamReader, pattern: str, lines: list[str]) -> re.Match[str]:
    async with asyncio.timeout(180):
        while not (match := re.search(pattern, "".join(lines))):
            line = (await stream.readline()).decode()
            assert line, f"the gateway exited: {''.join(lines)}"
            lines.append(line)
    return match


async def _drone_list(http: ClientSession, url: str) -> dict[str, dict]:
    async with http.get(f"{url}/api/drones", headers=AUTH) as reply:
        assert reply.status == 200
        return (await reply.json())["drones"]


async def test_two_processes_behind_one_port(tmp_path: Path) -> None:
    model = tiny_depth_model()
    # set_model_props replaces every property: keep the depth stride the tiny model declares.
    onnx.helper.set_model_props(model, {PARAM_DEPTH_KIND: "metric", PARAM_DEPTH_STRIDE: str(DEFAULT_DEPTH_STRIDE)})
    onnx.save(model, tmp_path / "model.onnx")
    env = {**os.environ, "DRONEDEPTH_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dronedepth.cli", "gateway", "--onnx-model", str(tmp_path / "model.onnx")]
    command += ["--host", "127.0.0.1", "--port", "0", "--processes", "2", "--workers", "1"]
    front = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lines: list[str] = []
    assert front.stderr is not None
    try:
        match = await _read_until(
            front.stderr, r"gateway front listening on 127\.0\.0\.1:(\d+) .*: (\S+), (\S+)\n", lines
        )
        url, worker_urls = f"http://127.0.0.1:{match.group(1)}", [match.group(2), match.group(3)]
        children = psutil.Process(front.pid).children(recursive=True)
        assert len(children) >= 2
        drain = asyncio.create_task(_drain(front.stderr, lines))
        async with drones(2, photo()) as (alpha, bravo), ClientSession() as http:
            await alpha.connect(url, drone_id="alpha", camera=camera_for())
            await bravo.connect(url, drone_id="bravo", camera=camera_for())
            for drone in (alpha, bravo):
                await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="results through the front")
            listed = await _drone_list(http, url)
            assert {listed["alpha"]["process"], listed["bravo"]["process"]} == {0, 1}, "one drone per process"

            async with http.get(f"{url}/metrics", headers=AUTH) as reply:
                metrics = await reply.text()
            assert 'dronedepth_offers_total{outcome="accepted"} 2.0' in metrics, "summed over both processes"
            assert 'drone="alpha"' in metrics and 'drone="bravo"' in metrics
            assert 'dronedepth_uptime_seconds{process="1"}' in metrics
            async with http.get(f"{url}/ready", headers=AUTH) as reply:
                ready = await reply.json()
            assert reply.status == 200 and ready["sessions"] == 2 and ready["processes"] == ["ready", "ready"]

            second = "alpha" if listed["alpha"]["process"] == 1 else "bravo"
            async with http.ws_connect(f"{url}/stream/{second}?token={TOKEN}") as viewer:
                message = await asyncio.wait_for(viewer.receive(), 30)
                assert message.type == WSMsgType.BINARY and message.data, "a stream frame from process 1"
            async with http.get(f"{url}/stream/{second}") as reply:
                assert reply.status == 401

            async with http.get(f"{worker_urls[0]}/api/drones", headers=AUTH) as reply:
                assert reply.status == 403, "a worker answers only its front"

            replacement = TestDrone(photo())
            try:
                await replacement.connect(url, drone_id=second, camera=camera_for())
                await replacement.wait_for(lambda d: len(d.keypoints) >= 1, what="results after the replacement")
                listed = await _drone_list(http, url)
                assert listed[second]["process"] == 1, "the replacement offer went to the drone's process"
                assert len(listed) == 2
            finally:
                await replacement.close()
        front.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            code = await front.wait()
            await drain
    finally:
        if front.returncode is None:
            front.kill()
            await front.wait()
    output = "".join(lines)
    assert code == 128 + signal.SIGTERM, output
    assert "gateway front stopped" in output and output.count("gateway stopped") == 2
    assert "placed on gateway process 0" in output and "placed on gateway process 1" in output
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {alive}"


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode())
