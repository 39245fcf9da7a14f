"""``dronedepth triton``: its errors, and a clean stop on SIGINT/SIGTERM in a real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_fixtures import make_test_repository

from dronedepth.cli import main
from dronedepth.contract import MODEL_NAME
from dronedepth.serving import find_free_port
from dronedepth.serving.embedded import group_members

ROOT = Path(__file__).resolve().parents[1]


def _triton_args(repo: Path, grpc: int | None = None) -> list[str]:
    grpc = grpc or find_free_port()
    return [
        "triton",
        "--model-repository",
        str(repo),
        "--grpc-port",
        str(grpc),
        "--http-port",
        str(find_free_port()),
        "--metrics-port",
        str(find_free_port()),
    ]


def _error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "dronedepth triton: error: " in err
    return err


def test_an_empty_repository_says_to_export_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error_of(_triton_args(tmp_path), capsys)
    assert f"model repository {tmp_path} has no models: run 'dronedepth export'" in err


def test_a_taken_port_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_test_repository(tmp_path / "repo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _error_of(_triton_args(repo, grpc=port), capsys)
    assert f"port {port} on 127.0.0.1, asked for gRPC (--grpc-port), is already in use" in err


def test_a_missing_server_env_says_to_run_make_setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_test_repository(tmp_path / "repo")
    err = _error_of([*_triton_args(repo), "--server-env", str(tmp_path / "no-env")], capsys)
    assert "no Triton server environment at" in err and "make setup" in err


def test_a_model_that_fails_to_load_is_named_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_test_repository(tmp_path / "repo")
    (repo / MODEL_NAME / "1" / "model.onnx").write_bytes(b"not an onnx file")
    err = _error_of(_triton_args(repo), capsys)
    assert f"model '{MODEL_NAME}' failed to load: " in err
    assert "INVALID_PROTOBUF" in err


class _Cli:
    """``dronedepth triton`` in a subprocess, with its log lines collected as they come."""

    def __init__(self, repo: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dronedepth.cli", *_triton_args(repo)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                self._reader.join(5)
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    def triton_pid(self) -> int:
        return int(self.wait_for(r"starting Triton \(pid (\d+)\)").group(1))

    def output(self) -> str:
        self._reader.join(5)
        return "".join(self.lines)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[_Cli]:
    running = _Cli(make_test_repository(tmp_path / "repo"))
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_triton_and_its_stubs(cli: _Cli, signum: int) -> None:
    cli.wait_for(r"Triton ready: gRPC 127\.0\.0\.1:\d+, HTTP http://127\.0\.0\.1:\d+, metrics http://.*/metrics")
    pid = cli.triton_pid()
    assert len(group_members(pid)) >= 2  # tritonserver and the model's backend stub
    cli.process.send_signal(signum)
    assert cli.process.wait(timeout=60) == 128 + signum, cli.output()  # 143 after SIGTERM, 130 after SIGINT
    assert group_members(pid) == []
    assert "stopped" in cli.output()


def test_a_crashed_server_is_reported_and_its_stubs_reaped(cli: _Cli) -> None:
    cli.wait_for("Triton ready")
    pid = cli.triton_pid()
    os.kill(pid, signal.SIGKILL)
    assert cli.process.wait(timeout=60) == 2
    assert "Triton exited unexpectedly with code -9" in cli.output()
    assert group_members(pid) == []  # the orphaned stub was killed too
