"""One installed namespace: the wheel holds ``dronedepth`` only, with every module and data file of every part.

The repository keeps one top-level folder per pipeline part (gateway/, drone/, ...); they must install as
``dronedepth.<part>``, never as top-level packages of their own. Building the real wheel also catches a
sub-package folder missing from ``[tool.setuptools] packages`` and package data left out.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
NOT_PARTS = {"tests", "docs", "deploy", "model_repository"}


def top_level_folders() -> set[str]:
    """Folders at the repository root that are Python packages (have an ``__init__.py``)."""
    return {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in NOT_PARTS}


def installed_path(repo_path: Path) -> str:
    """Where a file of a package folder lands in the wheel: ``gateway/x.py`` -> ``dronedepth/gateway/x.py``."""
    relative = repo_path.relative_to(ROOT)
    if relative.parts[0] == "dronedepth":
        return relative.as_posix()
    return f"dronedepth/{relative.as_posix()}"


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    # Build from a copy: setuptools writes build/ and egg-info next to the sources, and other work
    # (tests, engineers) shares this tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in top_level_folders() | set(PACKAGE_DIR.values()):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), "."]
    subprocess.run(command, cwd=source, check=True, capture_output=True, text=True)
    (wheel,) = out.glob("dronedepth-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_every_part_folder_is_mapped_into_the_namespace() -> None:
    assert {f"dronedepth.{folder}": folder for folder in top_level_folders() - {"dronedepth"}} | {
        "dronedepth": "dronedepth"
    } == PACKAGE_DIR


def test_wheel_has_only_the_dronedepth_package(wheel_names: set[str]) -> None:
    top = {name.split("/")[0] for name in wheel_names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"dronedepth"}
    assert len(top) == 2


def test_wheel_holds_every_module_under_dronedepth(wheel_names: set[str]) -> None:
    modules = {
        path
        for folder in PACKAGE_DIR.values()
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts and "results" not in path.parts
    }
    assert len(modules) > 50
    assert sorted(installed_path(p) for p in modules if installed_path(p) not in wheel_names) == []
    assert "dronedepth/gateway/outputs/sinks.py" in wheel_names


def test_wheel_ships_the_package_data(wheel_names: set[str]) -> None:
    photos = sorted((ROOT / "dronedepth" / "data").glob("*.jpg"))
    static = sorted(p for p in (ROOT / "gateway" / "static").iterdir() if p.is_file())
    configs = sorted(p for folder in PACKAGE_DIR.values() for p in (ROOT / folder).rglob("*.pbtxt"))
    assert photos
    assert static
    data = [*photos, ROOT / "dronedepth" / "data" / "README.md", *static, *configs]
    assert sorted(installed_path(p) for p in data if installed_path(p) not in wheel_names) == []


@pytest.mark.parametrize("package", ["dronedepth.export", "dronedepth.gateway"])
def test_lazy_public_names_resolve_under_the_namespace(package: str) -> None:
    # These packages load their public names on first access by module name: a name still spelled
    # with the old top-level package ("export.weights") would only fail here.
    module = importlib.import_module(package)
    assert [name for name in module.__all__ if getattr(module, name, None) is None] == []
