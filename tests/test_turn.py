"""TURN end to end: a real coturn on 127.0.0.1, the gateway and the drone client both relay-only.

coturn (Debian's ``coturn`` package, ``make deps`` installs it) runs for the module under ``timeout`` and is
killed at teardown. With the right credentials the drone gets results and both ends' selected candidate is
a relayed one; with a wrong password the drone gives up within its bounded attempts and says why.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_fixtures import TOKEN, running_gateway, wait_until
from ice_fixtures import selected_pair

from dronedepth.drone.client import DroneClient, DroneConfig
from dronedepth.drone.sources import SyntheticSource
from dronedepth.errors import InferenceUnavailable

pytestmark = pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed (make deps)")

USER, PASSWORD, REALM = "drone", "relay-secret", "dronedepth.test"
WAIT_S = 60.0


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


@pytest.fixture(scope="module")
def turn_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("coturn")
    port = _free_port()
    command = [
        "timeout", "300",  # never outlives a stuck test run
        "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
        "--lt-cred-mech", f"--user={USER}:{PASSWORD}", f"--realm={REALM}", "--no-tls", "--no-dtls", "--no-cli",
        "--allow-loopback-peers", f"--pidfile={folder / 'turnserver.pid'}", f"--log-file={folder / 'turn.log'}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):  # up within seconds: wait for its TCP listener
            if process.poll() is not None:
                raise RuntimeError(f"turnserver exited with {process.returncode}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("turnserver did not start listening")
        yield f"turn:127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drone(gateway_url: str, turn: str, password: str, results: Path, **overrides: object) -> DroneClient:
    config = DroneConfig(
        gateway=gateway_url,
        token=TOKEN,
        fps=5.0,
        max_frames=6,
        results_path=results,
        drone_id="relayed",
        ice_servers=(turn,),
        ice_username=USER,
        ice_credential=password,
        ice_relay_only=True,
        connect_timeout=20.0,
        result_timeout=20.0,
        drain_timeout=20.0,
        **overrides,  # type: ignore[arg-type]
    )
    return DroneClient(config, source=SyntheticSource(320, 240, fps=5))


async def test_relay_only_on_both_ends_through_coturn_gets_results(turn_url: str, tmp_path: Path) -> None:
    relay = {"ice_servers": (turn_url,), "ice_username": USER, "ice_credential": PASSWORD, "ice_relay_only": True}
    async with running_gateway(**relay) as gateway:
        client = _drone(gateway.url, turn_url, PASSWORD, tmp_path / "results.jsonl")
        run = asyncio.create_task(client.run())
        try:
            await wait_until(
                lambda: "relayed" in gateway.sessions and gateway.sessions["relayed"].pc.connectionState == "connected",
                timeout=WAIT_S,
                what="the relayed session to connect",
            )
            pair = selected_pair(gateway.sessions["relayed"].pc)
            summary = await asyncio.wait_for(run, WAIT_S)
        finally:
            run.cancel()
    assert (pair.local_candidate.type, pair.remote_candidate.type) == ("relay", "relay")
    assert pair.local_candidate.host == pair.remote_candidate.host == "127.0.0.1"
    assert summary.results >= 1 and summary.errors == 0


async def test_a_wrong_turn_password_fails_clearly_and_in_bounded_time(turn_url: str, tmp_path: Path) -> None:
    async with running_gateway() as gateway:
        client = _drone(gateway.url, turn_url, "wrong-password", tmp_path / "results.jsonl", max_attempts=1)
        with pytest.raises(InferenceUnavailable, match=r"no relay candidate from turn:127\.0\.0\.1") as failed:
            await asyncio.wait_for(client.run(), WAIT_S)
        assert "refused --ice-username/--ice-credential-file" in str(failed.value.__cause__ or failed.value)
        assert not gateway.sessions, "nothing reached the gateway"
    assert client.summary().results == 0
