"""The GPU deployment files: what can be checked without Docker.

docker-compose.yml parses, keeps Triton on an internal network without host
ports, restricts its admin APIs, uses the contract's model name and ports,
keeps secrets out of the file, and runs commands the project's CLIs accept.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from dronedepth.cli import build_parser
from dronedepth.contract import GATEWAY_PORT, GRPC_PORT, HTTP_PORT, METRICS_PORT, MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / "dronedepth.env.example"
EXPORT_SCRIPT = ROOT / "deploy" / "export.sh"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with every variable unset, and ``$$`` -> ``$``."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", value).replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    assert set(compose["services"]) == {"export", "triton", "gateway"}
    return compose["services"]


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else command


def test_triton_is_pinned_and_internal(compose: dict[str, Any], services: dict[str, Any]) -> None:
    triton = services["triton"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", triton["image"])
    assert "ports" not in triton, "Triton must not be published on the host"
    assert sorted(int(p) for p in triton["expose"]) == sorted([HTTP_PORT, GRPC_PORT, METRICS_PORT])
    assert triton["networks"] == ["backend"] and compose["networks"]["backend"]["internal"] is True
    assert "backend" in services["gateway"]["networks"]


def test_triton_runs_hardened_on_the_contract_ports(services: dict[str, Any]) -> None:
    triton = services["triton"]
    command = _command(triton)
    for flag in (
        "--model-repository=/models",
        "--model-control-mode=none",
        "--strict-readiness=true",
        f"--grpc-port={GRPC_PORT}",
        f"--http-port={HTTP_PORT}",
        f"--metrics-port={METRICS_PORT}",
    ):
        assert flag in command
    for option in ("--grpc-restricted-protocol=", "--http-restricted-api="):
        restricted = re.search(rf"{option}(\S+):(\S+)=(\S+)", command)
        assert restricted, option
        assert {"model-repository", "statistics", "shared-memory"} <= set(restricted.group(1).split(","))
        assert restricted.group(3) == "$key"  # read from the secret at start, never written in the file
    assert "triton_admin_key" in triton["secrets"]
    assert "/models:ro" in " ".join(triton["volumes"])
    health = " ".join(triton["healthcheck"]["test"])
    assert f"localhost:{HTTP_PORT}/v2/health/ready" in health


def test_start_order_and_gpus(services: dict[str, Any]) -> None:
    assert services["triton"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert services["gateway"]["depends_on"]["triton"]["condition"] == "service_healthy"
    for name in ("export", "triton"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in services["gateway"]  # the gateway needs no GPU


def test_the_gateway_command_is_one_the_gateway_accepts(services: dict[str, Any]) -> None:
    gateway = services["gateway"]
    args = build_parser(load=["gateway"]).parse_args(gateway["command"])
    assert args.triton_url == f"triton:{GRPC_PORT}"
    assert args.model == MODEL_NAME
    assert args.port == GATEWAY_PORT
    assert args.token_file.startswith("/run/secrets/") and args.token_file.endswith(gateway["secrets"][0])
    published = " ".join(gateway["ports"])
    assert f":{GATEWAY_PORT}:{GATEWAY_PORT}/tcp" in published
    assert re.search(r":(\d+)-(\d+):\1-\2/udp", published), "the WebRTC UDP range must be published"


def test_the_gateway_binds_its_media_in_exactly_the_published_udp_range(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway reads the range compose publishes (same ports inside and out) and the address to advertise."""
    from dronedepth.gateway import launch
    from dronedepth.gateway.ice import MediaPorts

    gateway = services["gateway"]
    udp = [p for p in gateway["ports"] if p.endswith("/udp")]
    assert len(udp) == 1
    published = re.fullmatch(r"[^:]*:(\d+)-(\d+):(\d+)-(\d+)/udp", udp[0])
    assert published and published.group(1, 2) == published.group(3, 4)
    environment = gateway["environment"]
    assert environment["DRONEDEPTH_RTC_PORTS"] == f"{published[1]}-{published[2]}"
    assert "DRONEDEPTH_PUBLIC_IP" in environment
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DRONEDEPTH_PUBLIC_IP", "198.51.100.7")  # what deploy/dronedepth.env sets
    monkeypatch.setenv("DRONEDEPTH_TOKEN", "t" * 32)
    args = build_parser(load=["gateway"]).parse_args(gateway["command"])
    args.token_file = None  # the secret file exists only in the container: the token comes from the environment
    config, _ = launch.build(args)
    assert config.rtc_ports == MediaPorts(int(published[1]), int(published[2]))
    assert config.public_ip == "198.51.100.7"
    assert "ports" not in services["triton"] and services["triton"]["networks"] == ["backend"]


def test_the_export_job_command_is_one_export_accepts(services: dict[str, Any]) -> None:
    export = services["export"]
    env = export["environment"]
    assert env["DRONEDEPTH_MODEL_NAME"] == MODEL_NAME
    assert env["DRONEDEPTH_MODEL"].startswith("depth-anything/")
    assert "--trt" in env["DRONEDEPTH_EXPORT_ARGS"]
    assert "model-repository:/models" in export["volumes"]
    # What deploy/export.sh runs with the compose defaults.
    argv = ["export", "--model", env["DRONEDEPTH_MODEL"], "--out", "/models", "--name", MODEL_NAME, "--device", "gpu"]
    args = build_parser(load=["export"]).parse_args([*argv, *shlex.split(env["DRONEDEPTH_EXPORT_ARGS"])])
    assert args.trt and args.device == "gpu" and args.name == MODEL_NAME
    script = EXPORT_SCRIPT.read_text()
    assert 'exec dronedepth export "$@" --out "$out" --name "$name" --device gpu' in script
    assert os.access(EXPORT_SCRIPT, os.X_OK)


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any], services: dict[str, Any]) -> None:
    raw = COMPOSE.read_text()
    for service in services.values():
        for key in service.get("environment", {}):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|KEY", key), f"{key} belongs in a secret file"
    assert "DRONEDEPTH_TOKEN" not in raw
    for secret in compose["secrets"].values():
        path = ROOT / secret["file"]
        assert path.parent == ROOT / "deploy" / "secrets"
    ignored = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored  # secret files there are never committed


def test_every_variable_is_documented_in_the_env_example() -> None:
    used = set(_VARIABLE.findall(COMPOSE.read_text()))
    documented = set(re.findall(r"^#?\s*(\w+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert {name for name, _ in used} <= documented


def test_the_dockerfile_builds_both_images_from_pinned_bases() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.MULTILINE)
    assert [name for _, name in stages] == ["export", "gateway"]  # gateway last: the default target
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert re.fullmatch(r"\d{2}\.\d{2}", args["NGC_RELEASE"])
    assert stages[0][0] == "nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3"
    # The compose file defaults to the same NGC release for Triton and for the export image.
    assert f"NGC_RELEASE:-{args['NGC_RELEASE']}" in COMPOSE.read_text()
    assert "libusb-1.0-0" in text
    assert 'pip install ".[export]"' in text and 'pip install ".[gateway]"' in text
    assert "download.pytorch.org/whl/cpu" in text  # CPU torch: no multi-GB CUDA wheels
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_the_build_context_leaves_out_environments_and_artefacts() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"  # an allow-list
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not any(name.startswith((".venv", "model_repository", "deploy/secrets")) for name in allowed)
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE.read_text(), re.MULTILINE):
        assert source.rstrip("/") in allowed | {"pyproject.toml", "README.md"}
