"""SIGTERM to a command that starts servers stops every process it started, then exits 143.

The helper (:mod:`dronedepth.shutdown`) is tested in this process first. Then
each slow test runs a real ``python -m dronedepth.cli`` in its own session,
waits until the children that matter exist (the embedded Triton's backend
stubs, the benchmark's gateway subprocess), records every descendant, sends
SIGTERM to the command alone (as ``kill PID``, systemd or Docker would) and
checks that the command exits with 143 and that none of the recorded
descendants outlives it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from serving_fixtures import make_test_repository

from dronedepth.contract import MODEL_NAME
from dronedepth.shutdown import deferred_stop, run_until_signalled

ROOT = Path(__file__).resolve().parents[1]
START_DEADLINE_S = 240.0
"""Generous: the children appear after Triton loads its models, on 2 busy cores."""
STOP_DEADLINE_S = 30.0
"""Triton gets 10 s for in-flight requests, the gateway subprocess 20 s; a stop that needs more is a hang."""


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_unwinds_through_the_cleanup_and_sets_the_exit_status(signum: int, status: int) -> None:
    before = signal.getsignal(signum)
    steps: list[str] = []

    def work() -> int:
        try:
            signal.raise_signal(signum)
            steps.append("went on after the signal")
        finally:
            steps.append("cleaned up")
        return 0

    assert run_until_signalled(work) == status
    assert steps == ["cleaned up"]
    assert signal.getsignal(signum) is before


def test_a_second_signal_cannot_cut_the_cleanup_short() -> None:
    steps: list[str] = []

    def work() -> int:
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            signal.raise_signal(signal.SIGTERM)
            steps.append("cleaned up")
        return 0

    assert run_until_signalled(work) == 130
    assert steps == ["cleaned up"]


def test_a_stop_in_a_deferred_block_is_raised_when_the_block_ends() -> None:
    steps: list[str] = []

    def work() -> int:
        with deferred_stop():
            signal.raise_signal(signal.SIGTERM)
            steps.append("finished the block")
        steps.append("went on after the block")
        return 0

    assert run_until_signalled(work) == 143
    assert steps == ["finished the block"]


def test_without_the_runner_a_deferred_block_changes_nothing() -> None:
    with deferred_stop():
        pass
    assert run_until_signalled(lambda: 7) == 7


class Command:
    """``dronedepth ARGS`` in a subprocess of its own session, its output in ``log``."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dronedepth.cli", *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: dict[int, psutil.Process] = {}

    def output(self) -> str:
        return self.log.read_text()

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for child in found:
            self.seen.setdefault(child.pid, child)
        return found

    def wait_for_children(self, wanted: Callable[[list[str]], bool]) -> list[psutil.Process]:
        """Poll until the command lines of the live descendants satisfy ``wanted``; return them all."""
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the command exited early:\n{self.output()[-3000:]}"
            children = self.descendants()
            if wanted([" ".join(_cmdline(c)) for c in children]):
                return children
            time.sleep(0.2)
        raise AssertionError(f"the children did not appear in {START_DEADLINE_S:.0f} s:\n{self.output()[-3000:]}")

    def terminate_and_check(self, children: list[psutil.Process]) -> None:
        """SIGTERM the command; it must exit 143 and leave none of ``children`` (or any seen since) running."""
        self.descendants()  # the newest children too
        recorded = list(self.seen.values())
        assert {c.pid for c in children} <= {c.pid for c in recorded}
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the command did not exit {STOP_DEADLINE_S:.0f} s after SIGTERM:\n{self.output()[-3000:]}")
        _, alive = psutil.wait_procs(recorded, timeout=STOP_DEADLINE_S)
        survivors = [f"{p.pid} {' '.join(_cmdline(p))[:120]}" for p in alive]
        assert not survivors, f"{len(survivors)} orphan(s) left: {survivors}\n{self.output()[-3000:]}"
        assert code == 128 + signal.SIGTERM, self.output()[-3000:]
        assert "SIGTERM received" in self.output()

    def kill_leftovers(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for process in self.seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


def _has_stub(lines: list[str]) -> bool:
    return any("triton_python_backend_stub" in line for line in lines)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return make_test_repository(tmp_path / "model_repository")


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:
        command.kill_leftovers()


@pytest.mark.slow
def test_sigterm_stops_the_benchmark_with_triton_and_its_gateway(
    tmp_path: Path, repository: Path, commands: list[Command]
) -> None:
    args = ["bench", "--quick", "--only", "scaling", "--drones", "1", "--duration", "600"]
    args += ["--model-repository", str(repository), "--out", str(tmp_path / "bench")]
    bench = Command(args, tmp_path / "bench.log")
    commands.append(bench)
    children = bench.wait_for_children(lambda lines: _has_stub(lines) and any(" gateway " in x for x in lines))
    bench.terminate_and_check(children)


@pytest.mark.slow
def test_sigterm_stops_the_demo_with_triton_and_flushes_its_recordings(
    tmp_path: Path, repository: Path, commands: list[Command]
) -> None:
    out = tmp_path / "demo"
    # The demo reuses an export whose stamp names the same weights: hand it the tiny test model.
    shutil.copytree(repository, out / "model_repository")
    weights = ["--random-init", "--encoder", "vits", "--metric", "outdoor"]
    (out / "model_repository" / ".demo-source.json").write_text(json.dumps({"weights": weights, "input_size": 70}))
    args = ["demo", "--random-init", "--input-size", "70", "--drones", "1", "--frames", "100000", "--fps", "2"]
    demo = Command([*args, "--width", "160", "--out", str(out)], tmp_path / "demo.log")
    commands.append(demo)
    children = demo.wait_for_children(_has_stub)
    results = out / "photos-1" / "results.jsonl"  # the drone got a result: the gateway recorded its frame
    deadline = time.monotonic() + START_DEADLINE_S
    while not (results.is_file() and results.stat().st_size > 0):
        assert demo.process.poll() is None, demo.output()[-3000:]
        assert time.monotonic() < deadline, f"no result in {START_DEADLINE_S:.0f} s:\n{demo.output()[-3000:]}"
        time.sleep(0.2)
    demo.terminate_and_check(children)
    assert "reusing the model exported earlier" in demo.output()
    (bag,) = (out / "bags").glob("photos-1_*")
    assert (bag / "metadata.yaml").is_file(), "SIGTERM closes the bag cleanly"
    (keypoints,) = (out / "recordings" / "photos-1").rglob("keypoints.jsonl")
    assert keypoints.stat().st_size > 0
    assert (out / "model_repository" / MODEL_NAME / "1" / "model.onnx").is_file()


@pytest.mark.slow
def test_sigterm_stops_triton_and_its_stubs(tmp_path: Path, repository: Path, commands: list[Command]) -> None:
    args = ["triton", "--model-repository", str(repository), "--grpc-port", "0", "--http-port", "0"]
    triton = Command([*args, "--metrics-port", "0"], tmp_path / "triton.log")
    commands.append(triton)
    children = triton.wait_for_children(_has_stub)
    triton.terminate_and_check(children)
