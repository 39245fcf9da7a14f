"""``dronedepth gateway``: arguments, the token rules, and a real process stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from gateway_fixtures import TOKEN, camera_for, drones, photo

from dronedepth import cli
from dronedepth.contract import DEFAULT_DEPTH_STRIDE, PARAM_DEPTH_KIND, PARAM_DEPTH_STRIDE
from dronedepth.errors import ConfigError
from dronedepth.gateway import launch
from dronedepth.gateway.inference import OnnxRuntimeDepthClient, TritonDepthClient
from dronedepth.gateway.outputs.recording import session_folders
from dronedepth.serving.synthetic import tiny_depth_model

ROOT = Path(__file__).resolve().parents[1]


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return cli.build_parser(load=["gateway"]).parse_args(["gateway", *argv])


def test_every_option_reaches_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    args = _args(
        "--triton-url", "triton:8001", "--model", "m", "--port", "0", "--keypoints", "grid",
        "--max-keypoints", "50", "--axes", "opengl", "--max-range", "30", "--voxel-size", "0.1",
        "--remove-outliers", "--record", str(tmp_path), "--record-every", "5", "--max-drones", "3",
        "--max-frame-pixels", "100000", "--inference-timeout", "2.5", "--ice-server", "stun:stun.example.org:3478",
        "--ice-server", "turn:user:pass@turn.example.org:3478", "--idle-timeout", "7", "--workers", "3",
        "--max-in-flight", "2", "--latency-budget", "40",
    )  # fmt: skip
    config, client = launch.build(args)
    assert isinstance(client, TritonDepthClient)
    assert (client.url, client.model, client.timeout) == ("triton:8001", "m", 2.5)
    assert config.token == TOKEN and config.port == 0 and config.max_drones == 3
    assert config.max_frame_pixels == 100000 and config.idle_timeout == 7 and config.workers == 3
    assert config.max_in_flight == 2
    assert config.frame_rate_advice is not None and config.frame_rate_advice.latency_budget_ms == 40
    default_advice = launch.build(_args("--triton-url", "h:1"))[0].frame_rate_advice
    assert default_advice is not None and default_advice.latency_budget_ms is None
    assert launch.build(_args("--triton-url", "h:1", "--no-frame-rate-advice"))[0].frame_rate_advice is None
    assert launch.build(_args("--triton-url", "h:1"))[0].max_in_flight == "auto"
    assert launch.build(_args("--triton-url", "h:1", "--max-in-flight", "drones"))[0].max_in_flight is None
    assert config.record_dir == tmp_path and config.record_every == 5
    processing = config.processing
    assert processing is not None
    assert processing.keypoints.method == "grid" and processing.keypoints.max_keypoints == 50
    assert processing.axes == "opengl" and processing.max_range == 30
    assert processing.voxel_size == 0.1 and processing.remove_outliers and processing.build_cloud
    servers = config.rtc_ice_servers()
    assert servers[0].urls == "stun:stun.example.org:3478"
    assert (servers[1].urls, servers[1].username, servers[1].credential) == (
        "turn:turn.example.org:3478",
        "user",
        "pass",
    )


def test_output_and_tls_options_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    config, _ = launch.build(
        _args(
            "--triton-url", "h:1", "--record-bag", str(tmp_path / "bags"), "--foxglove", "--voxel-size", "0.1",
            "--tls-cert", str(cert), "--tls-key", str(key),
        )
    )  # fmt: skip
    assert config.record_bag_dir == tmp_path / "bags" and config.record_dir is None
    assert (config.foxglove_port, config.foxglove_host) == (8765, "127.0.0.1")
    assert (config.tls_cert, config.tls_key) == (cert, key) and config.tls
    assert config.processing is not None and not config.processing.build_cloud, "bags never read the Open3D cloud"

    config, _ = launch.build(_args("--triton-url", "h:1", "--foxglove", "9000", "--foxglove-host", "0.0.0.0"))
    assert (config.foxglove_port, config.foxglove_host) == (9000, "0.0.0.0")
    config, _ = launch.build(_args("--triton-url", "h:1", "--foxglove", "0"))
    assert config.foxglove_port == 0

    config, _ = launch.build(_args("--triton-url", "h:1"))
    assert (config.record_bag_dir, config.foxglove_port, config.tls_cert, config.tls_key) == (None, None, None, None)
    assert not config.tls and config.ssl_context() is None


@pytest.mark.parametrize(("given", "missing"), [("--tls-cert", "--tls-key"), ("--tls-key", "--tls-cert")])
def test_tls_needs_both_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: str, missing: str) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match=f"{given} needs {missing}"):
        launch.build(_args("--triton-url", "h:1", given, str(tmp_path / "file.pem")))


def test_defaults_listen_on_8080_without_ice_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    config, _ = launch.build(_args("--triton-url", "localhost:8001"))
    assert (config.host, config.port, config.ice_servers) == ("0.0.0.0", 8080, ())
    assert config.processing is not None and not config.processing.build_cloud


def test_no_token_refuses_to_start(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DRONEDEPTH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="--token-file"):
        launch.build(_args("--triton-url", "localhost:8001"))
    assert cli.main(["gateway", "--triton-url", "localhost:8001"]) == 2
    assert "no token" in capsys.readouterr().err


def test_token_file_and_insecure_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DRONEDEPTH_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    config, _ = launch.build(_args("--triton-url", "h:1", "--token-file", str(token_file)))
    assert config.token == TOKEN
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        launch.build(_args("--triton-url", "h:1", "--token-file", str(token_file)))
    with pytest.raises(ConfigError, match="cannot read the token file"):
        launch.build(_args("--triton-url", "h:1", "--token-file", str(tmp_path / "missing")))
    config, _ = launch.build(_args("--triton-url", "h:1", "--insecure-no-auth"))
    assert config.token is None and config.allow_no_auth


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --triton-url --onnx-model is required"),
        (["--triton-url", "h:1", "--max-drones", "0"], "must be a positive integer"),
        (["--triton-url", "h:1", "--axes", "enu"], "invalid choice"),
        (["--triton-url", "h:1", "--foxglove", "70000"], "must be a port in 0..65535"),
        (["--triton-url", "h:1", "--foxglove", "x"], "must be a port number"),
        (["--triton-url", "h:1", "--port", "-1"], "must be a port in 0..65535"),
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_latency_budget_needs_the_frame_rate_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="drop --no-frame-rate-advice"):
        launch.build(_args("--triton-url", "h:1", "--latency-budget", "40", "--no-frame-rate-advice"))


def test_bad_ice_server_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRONEDEPTH_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="must start with one of stun:"):
        launch.build(_args("--triton-url", "h:1", "--ice-server", "http://stun.example.org"))


async def test_gateway_process_serves_a_drone_and_exits_on_sigterm(tmp_path: Path) -> None:
    model = tiny_depth_model()
    # set_model_props replaces every property: keep the depth stride the tiny model declares.
    onnx.helper.set_model_props(model, {PARAM_DEPTH_KIND: "metric", PARAM_DEPTH_STRIDE: str(DEFAULT_DEPTH_STRIDE)})
    onnx.save(model, tmp_path / "model.onnx")
    assert OnnxRuntimeDepthClient(tmp_path / "model.onnx").depth_kind == "metric"
    env = {**os.environ, "DRONEDEPTH_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dronedepth.cli", "gateway", "--onnx-model", str(tmp_path / "model.onnx")]
    command += ["--host", "127.0.0.1", "--port", "0", "--record", str(tmp_path / "rec")]
    command += ["--record-bag", str(tmp_path / "bags"), "--foxglove", "0"]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        async with asyncio.timeout(60):
            while not (match := re.search(r"gateway listening on 127\.0\.0\.1:(\d+)", "".join(lines))):
                line = (await process.stderr.readline()).decode()
                assert line, f"the gateway exited: {''.join(lines)}"
                lines.append(line)
        url = f"http://127.0.0.1:{match.group(1)}"
        async with drones(1, photo()) as (drone,):
            await drone.connect(url, camera=camera_for())
            await drone.wait_for(lambda d: len(d.keypoints) >= 2, what="results from the gateway process")
            assert drone.keypoints[0]["depth_kind"] == "metric"
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                rest = await process.stderr.read()
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines) + rest.decode()
    assert code == 128 + signal.SIGTERM, output
    assert "SIGTERM received" in output and "gateway stopped" in output
    assert re.search(r"drone \S+ disconnected \(gateway stopping\) .* \d+ frames received, \d+ processed", output)
    assert "first keypoints" in output and "camera 320x240" in output
    assert "CandidatePair" not in output  # no per-packet chatter from aioice
    assert TOKEN not in output
    (session,) = session_folders(tmp_path / "rec", str(drone.drone_id))
    assert (session / "keypoints.jsonl").stat().st_size > 0
    (bag,) = (tmp_path / "bags").glob(f"{drone.drone_id}_*")
    assert (bag / "metadata.yaml").is_file(), "SIGTERM closes the bag cleanly"
    assert "Foxglove live server on ws://127.0.0.1:" in output
    assert "outputs: StreamHub, PreviewHub, RecorderSink, BagSink, FoxgloveSink" in output


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token": "two words"}, "without whitespace"),
        ({"token": ""}, "non-empty"),
        ({"port": 70000}, "port must be in 0..65535, got 70000"),
        ({"max_drones": 0}, "max_drones must be positive, got 0"),
        ({"inference_timeout": -1.0}, "inference_timeout must be positive, got -1.0"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1, got 0"),
        ({"ice_servers": ("stun:user:pw@host",)}, "credentials must be given as turn:USER:PASSWORD@HOST"),
        ({"ice_servers": ("stun:",)}, "has no host"),
        ({"foxglove_port": 65536}, "foxglove_port must be in 0..65535, got 65536"),
        ({"tls_cert": Path("c.pem")}, "--tls-cert needs --tls-key"),
    ],
)
def test_config_names_the_bad_value(overrides: dict, message: str) -> None:
    from dronedepth.gateway.config import GatewayConfig

    settings = {"token": TOKEN, **overrides}
    with pytest.raises(ConfigError, match=re.escape(message)):
        GatewayConfig(**settings)


def test_token_from_the_environment_is_stripped() -> None:
    from dronedepth.gateway.config import read_token

    assert read_token(None, {"DRONEDEPTH_TOKEN": f" {TOKEN}\n"}) == TOKEN
    assert read_token(None, {"DRONEDEPTH_TOKEN": "  "}) is None
    assert read_token(None, {}) is None
