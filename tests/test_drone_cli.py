"""``dronedepth drone`` end to end in a subprocess against the stand-in gateway, plus argument handling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from drone_fixtures import FakeGateway

from dronedepth.cli import main
from dronedepth.drone.cli import TOKEN_ENV
from dronedepth.protocol import OBSTACLE_FREE, ObstaclesMessage

WAIT_S = 120.0
ROOT = Path(__file__).resolve().parents[1]


async def run_cli(*args: str, env: dict[str, str] | None = None, stop_when=None) -> tuple[int, str, str]:
    """Run ``python -m dronedepth.cli drone ARGS``; ``stop_when()`` true → SIGTERM."""
    environment = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | (env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dronedepth.cli",
        "drone",
        *args,
        cwd=ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        if stop_when is not None:

            async def watch() -> None:
                while not stop_when():
                    await asyncio.sleep(0.05)
                process.send_signal(signal.SIGTERM)

            await asyncio.wait_for(watch(), WAIT_S)
        out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, out.decode(), err.decode()


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_help_shows_examples_and_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["drone", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--gateway",
        "--token-file",
        "--source",
        "--intrinsics",
        "--fx",
        "--distortion",
        "--camera-model",
        "--fps",
        "--width",
        "--max-frames",
        "--results",
        "--drone-id",
        "--waypoints",
        "--ice-server",
        "--mavlink",
        "--obstacle-max-age",
        "--pose",
    ):
        assert flag in text
    assert "examples:" in text and "dronedepth drone --gateway" in text
    assert "--mavlink udpin:0.0.0.0:14540 --pose mavlink" in text


async def test_cli_refuses_pose_mavlink_without_a_link_before_opening_anything():
    code, _, err = await run_cli(
        "--gateway", "http://127.0.0.1:9", "--token", "t", "--source", "0", "--pose", "mavlink"
    )
    assert code == 2
    assert "--pose mavlink reads the autopilot's attitude and position: give --mavlink CONNECTION too" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "synthetic"], "no token: give --token, --token-file or set DRONEDEPTH_TOKEN"),
        (["--token", "t", "--source", "nowhere"], "--source 'nowhere' is not"),
        (["--token", "t", "--source", "synthetic", "--fx", "100"], "missing --fy, --cx, --cy"),
        (["--token", "t", "--source", "synthetic", "--intrinsics", "x.yaml", "--fx", "1"], "not both"),
        (["--token", "t", "--source", "synthetic", "--distortion", "0.1"], "need --fx --fy --cx --cy"),
        (["--token-file", "/nonexistent/token", "--source", "synthetic"], "cannot read --token-file"),
        (["--token", "t", "--source", "synthetic", "--pose", "mavlink"], "--pose mavlink reads the autopilot"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args, message, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["drone", "--gateway", "http://127.0.0.1:9", *args]) == 2
    assert message in capsys.readouterr().err


async def test_cli_streams_synthetic_writes_results_and_waypoints(tmp_path):
    results = tmp_path / "results.jsonl"
    token_file = tmp_path / "token"
    async with FakeGateway() as gateway:
        gateway.profile = ObstaclesMessage(
            pts=0,
            stamp=0.0,
            gravity_aligned=True,
            sector_width_deg=10.0,
            angle_offset_deg=-10.0,
            min_range_m=0.3,
            max_range_m=20.0,
            distances_m=(3.0, OBSTACLE_FREE, 8.0),
        )
        token_file.write_text(gateway.token + "\n")
        code, out, err = await run_cli(
            "--gateway",
            gateway.url,
            "--token-file",
            str(token_file),
            "--source",
            "synthetic",
            "--width",
            "320",
            "--height",
            "240",
            "--fps",
            "10",
            "--max-frames",
            "5",
            "--results",
            str(results),
            "--waypoints",
            "--drone-id",
            "cli-drone",
        )
    assert code == 0, err
    assert "frames sent          5" in out and "glass-to-result      p50" in out
    lines = lines_of(results)
    keypoints = [line for line in lines if line["type"] == "keypoints"]
    obstacles = [line for line in lines if line["type"] == "obstacles"]
    assert len(keypoints) >= 1 and all(line["latency_ms"] > 0 for line in keypoints)
    assert len(obstacles) == len(keypoints) and all(line["waypoints"]["free"] for line in obstacles)
    assert f"obstacle profiles    {len(obstacles)}" in out
    assert gateway.drone_ids == ["cli-drone"]
    assert "waypoints (pts 0)" in err


async def test_cli_takes_intrinsics_flags_in_native_pixels_and_scales_them(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8))
    async with FakeGateway() as gateway:
        code, _, err = await run_cli(
            "--gateway",
            gateway.url,
            "--source",
            str(folder),
            "--width",
            "160",
            "--fx",
            "300",
            "--fy",
            "310",
            "--cx",
            "159.5",
            "--cy",
            "119.5",
            "--distortion",
            "0.1",
            "-0.05",
            "0",
            "0",
            "--max-frames",
            "3",
            "--fps",
            "10",
            env={TOKEN_ENV: gateway.token},
        )
    assert code == 0, err
    camera = gateway.cameras[0]
    assert (camera.width, camera.height, camera.fx, camera.fy) == (160, 120, 150.0, 155.0)
    assert (camera.cx, camera.cy, camera.distortion) == (79.5, 59.5, (0.1, -0.05, 0.0, 0.0))


async def test_sigterm_stops_cleanly_and_flushes_the_results(tmp_path):
    results = tmp_path / "results.jsonl"
    async with FakeGateway() as gateway:
        code, out, err = await run_cli(
            "--gateway",
            gateway.url,
            "--source",
            "synthetic",
            "--width",
            "320",
            "--height",
            "240",
            "--fps",
            "10",
            "--results",
            str(results),
            env={TOKEN_ENV: gateway.token},
            stop_when=lambda: results.exists() and results.read_text().count("\n") >= 3,
        )
    assert code == 0, err
    assert "stopping" in err
    lines = lines_of(results)  # every line parses: nothing half-written
    assert len(lines) >= 3
    assert f"results received     {len(lines)}" in out
