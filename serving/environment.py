"""The server environment: the virtualenv holding the ``tritonserver`` binary.

The ``nvidia-pytriton`` wheel bundles a real Triton Inference Server (2.51 in
0.7.0) with its Python backend only, its shared libraries and one Python backend
stub per Python version. It lives in its own virtualenv (``.venv-triton``,
created by ``make setup``) because the stub needs numpy < 2, while the gateway's
environment uses numpy 2: with numpy 2 the Python backend silently answers with
empty outputs.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dronedepth.errors import ServingError

ENV_VAR = "DRONEDEPTH_TRITON_ENV"
"""Environment variable naming the server environment (a virtualenv directory)."""

DEFAULT_ENV_NAME = ".venv-triton"

_SETUP_HINT = (
    "run 'make setup' (it creates .venv-triton with nvidia-pytriton==0.7.0, numpy<2 and onnxruntime), "
    f"or point --server-env / {ENV_VAR} at such a virtualenv"
)


@dataclass(frozen=True)
class ServerEnvironment:
    """Where the pieces of the bundled Triton server are, in one virtualenv."""

    root: Path
    """The virtualenv directory (its ``bin/`` goes first on the server's ``PATH``)."""
    python_version: str
    """``"3.11"``: the Python of the virtualenv, which picks the backend stub."""
    tritonserver: Path
    """The ``tritonserver`` executable."""
    libraries: Path
    """The wheel's ``nvidia_pytriton.libs`` (goes on ``LD_LIBRARY_PATH``)."""
    python_backend: Path
    """The directory holding ``libtriton_python.so`` and ``triton_python_backend_utils.py``."""
    stub: Path
    """The ``triton_python_backend_stub`` built for ``python_version``."""

    def install_backends(self, destination: Path) -> Path:
        """Lay out a backend directory under ``destination`` and return it.

        Triton looks for ``triton_python_backend_stub`` next to
        ``libtriton_python.so``, so both are copied into
        ``destination/python/`` (about 3 MB). Pass the result as
        ``--backend-directory``.
        """
        python_dir = destination / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for item in self.python_backend.iterdir():
            if item.is_file():
                shutil.copy2(item, python_dir / item.name)
        shutil.copy2(self.stub, python_dir / "triton_python_backend_stub")
        return destination

    def process_environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment variables for ``tritonserver`` and its backend stubs."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.libraries), env.get("LD_LIBRARY_PATH", "")) if p)
        # The stub embeds Python and finds its site-packages from the python3 first on PATH.
        env["PATH"] = os.pathsep.join(p for p in (str(self.root / "bin"), env.get("PATH", "")) if p)
        env["VIRTUAL_ENV"] = str(self.root)
        for leaked in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(leaked, None)
        return env


def project_root() -> Path:
    """The source checkout this package runs from (where ``make setup`` puts ``.venv-triton``)."""
    return Path(__file__).resolve().parents[1]


def locate_server_env(explicit: str | os.PathLike[str] | None = None) -> ServerEnvironment:
    """Find and check the server environment.

    Order: ``explicit`` (the ``--server-env`` flag), then ``$DRONEDEPTH_TRITON_ENV``,
    then ``<project root>/.venv-triton``. Raises :class:`ServingError` naming what
    is missing and saying how to create it.
    """
    if explicit:
        root, origin = Path(explicit), "--server-env"
    elif os.environ.get(ENV_VAR):
        root, origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        root, origin = project_root() / DEFAULT_ENV_NAME, "the default location"
    root = root.expanduser().absolute()
    if not root.is_dir():
        raise ServingError(f"no Triton server environment at {root} ({origin}): {_SETUP_HINT}")
    return inspect_server_env(root)


def inspect_server_env(root: Path) -> ServerEnvironment:
    """Check that ``root`` is a usable server environment and describe it."""
    candidates = sorted(root.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not candidates:
        raise ServingError(f"{root} has no nvidia-pytriton (no pytriton/tritonserver/bin/tritonserver): {_SETUP_HINT}")
    tritonserver = candidates[-1]
    site_packages = tritonserver.parents[3]
    python_version = site_packages.parent.name.removeprefix("python")
    bundle = tritonserver.parents[1]
    environment = ServerEnvironment(
        root=root,
        python_version=python_version,
        tritonserver=tritonserver,
        libraries=site_packages / "nvidia_pytriton.libs",
        python_backend=bundle / "backends" / "python",
        stub=bundle / "python_backend_stubs" / python_version / "triton_python_backend_stub",
    )
    for required in (environment.libraries, environment.python_backend / "libtriton_python.so", environment.stub):
        if not required.exists():
            raise ServingError(
                f"the nvidia-pytriton install in {root} is incomplete ({required} is missing): {_SETUP_HINT}"
            )
    if not (root / "bin" / "python3").exists() and not (root / "bin" / "python").exists():
        raise ServingError(f"{root} is not a virtualenv (no bin/python3): {_SETUP_HINT}")
    numpy = _installed_version(site_packages, "numpy")
    if numpy is None:
        raise ServingError(f"numpy is not installed in {root}: {_SETUP_HINT}")
    if int(numpy.split(".")[0]) >= 2:
        raise ServingError(
            f"{root} has numpy {numpy}, but Triton's Python backend needs numpy<2 "
            f"(with numpy 2 it silently returns empty outputs): run '{root}/bin/pip install \"numpy<2\"' "
            "or 'make setup'"
        )
    if _installed_version(site_packages, "onnxruntime") is None:
        raise ServingError(
            f"onnxruntime is not installed in {root} (the server runs the ONNX models with it): {_SETUP_HINT}"
        )
    return environment


def _installed_version(site_packages: Path, distribution: str) -> str | None:
    """The version of ``distribution`` installed in ``site_packages``, read from its dist-info."""
    pattern = re.compile(rf"^{re.escape(distribution)}-([^-]+)\.dist-info$", re.IGNORECASE)
    for entry in site_packages.iterdir():
        match = pattern.match(entry.name)
        if match:
            return match.group(1)
    return None
