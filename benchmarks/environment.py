"""What a benchmark ran on: machine, accelerator and package versions (recorded with every result)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "cpu_model", "gpu_info", "machine_info", "package_versions"]

PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "aiortc",
    "av",
    "numpy",
    "opencv-python-headless",
    "open3d",
    "tritonclient",
    "tensorrt",
)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (None: not installed), read from metadata without importing the packages."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> dict[str, Any]:
    """NVIDIA GPUs seen by ``nvidia-smi`` and the execution providers of the installed ONNX Runtime."""
    info: dict[str, Any] = {"gpus": [], "nvidia_smi": shutil.which("nvidia-smi"), "onnxruntime_providers": []}
    if info["nvidia_smi"]:
        try:
            out = subprocess.run(
                [info["nvidia_smi"], "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi_error"] = str(exc)
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        pass
    return info


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS and Python; versions are recorded separately."""
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores_usable": _usable_cpus(),
        "cores_total": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


def server_env_versions() -> dict[str, str | None]:
    """Versions in the embedded Triton's own virtualenv (it runs the model's ONNX Runtime there)."""
    wanted: dict[str, str | None] = {"onnxruntime": None, "numpy": None, "nvidia_pytriton": None}
    try:
        from dronedepth.serving.environment import locate_server_env

        root = locate_server_env().root
    except Exception:
        return wanted
    for dist in root.glob("lib/python*/site-packages/*.dist-info"):
        name, _, version = dist.name[: -len(".dist-info")].partition("-")
        if name.lower() in wanted:
            wanted[name.lower()] = version
    return wanted
