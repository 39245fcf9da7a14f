"""Finding and checking the server environment (the virtualenv with nvidia-pytriton)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dronedepth.errors import ServingError
from dronedepth.serving.environment import ENV_VAR, inspect_server_env, locate_server_env, project_root


def _fake_env(root: Path, numpy: str = "1.26.4", onnxruntime: bool = True) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    bundle = site / "pytriton" / "tritonserver"
    for directory in (root / "bin", bundle / "bin", bundle / "backends" / "python", site / "nvidia_pytriton.libs"):
        directory.mkdir(parents=True, exist_ok=True)
    (bundle / "python_backend_stubs" / "3.11").mkdir(parents=True)
    for file in (
        root / "bin" / "python3",
        bundle / "bin" / "tritonserver",
        bundle / "backends" / "python" / "libtriton_python.so",
        bundle / "python_backend_stubs" / "3.11" / "triton_python_backend_stub",
    ):
        file.touch()
    (site / f"numpy-{numpy}.dist-info").mkdir()
    if onnxruntime:
        (site / "onnxruntime-1.32.0.dist-info").mkdir()
    return root


def test_describes_a_good_environment(tmp_path: Path) -> None:
    env = inspect_server_env(_fake_env(tmp_path / "env"))
    assert env.python_version == "3.11"
    assert env.stub.parent.name == "3.11"
    process_env = env.process_environment({"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"})
    assert process_env["PATH"].startswith(str(tmp_path / "env" / "bin"))
    assert process_env["LD_LIBRARY_PATH"] == str(env.libraries)
    assert "PYTHONPATH" not in process_env


def test_installs_the_stub_beside_the_backend(tmp_path: Path) -> None:
    env = inspect_server_env(_fake_env(tmp_path / "env"))
    backends = env.install_backends(tmp_path / "backends")
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert (backends / "python" / "triton_python_backend_stub").is_file()


def test_flag_then_env_var_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, var = _fake_env(tmp_path / "flag"), _fake_env(tmp_path / "var")
    monkeypatch.setenv(ENV_VAR, str(var))
    assert locate_server_env(flag).root == flag
    assert locate_server_env(None).root == var
    monkeypatch.delenv(ENV_VAR)
    assert locate_server_env(None).root == project_root() / ".venv-triton"


def test_a_missing_environment_says_to_run_make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(ServingError, match=rf"no Triton server environment at .*nowhere \(\${ENV_VAR}\).*make setup"):
        locate_server_env(None)


def test_numpy_2_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match=r"has numpy 2\.1\.0, but Triton's Python backend needs numpy<2"):
        inspect_server_env(_fake_env(tmp_path / "env", numpy="2.1.0"))


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="onnxruntime is not installed"):
        inspect_server_env(_fake_env(tmp_path / "a", onnxruntime=False))
    root = _fake_env(tmp_path / "b")
    next(root.glob("lib/*/site-packages/pytriton/tritonserver/python_backend_stubs/3.11/*")).unlink()
    with pytest.raises(ServingError, match=r"incomplete .*triton_python_backend_stub is missing"):
        inspect_server_env(root)
    with pytest.raises(ServingError, match="has no nvidia-pytriton"):
        inspect_server_env(tmp_path)
