"""The house is built one way: the ground floor ``dronedepth/`` holds up the pipeline parts, which hold up the tools.

Two kinds of check: a bare interpreter that imports every ground-floor module and looks at what got
loaded (the drone imports the ground floor, so it must stay light), and a static import graph of every
module of every package (module-level and function-level imports, and the module names that
``importlib.import_module`` dispatch tables hold) with the allowed arrows between the parts written down below.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
GROUND = "ground"

# Part -> the parts it may import besides itself, and why each arrow exists.
ALLOWED_ARROWS: dict[str, set[str]] = {
    # Shared by everything and imported on the drone: depends on nothing of ours.
    GROUND: set(),
    # Runs on the onboard computer, which installs the ground floor and the drone only.
    "drone": {GROUND},
    # Offline model tool; the model contract it writes against lives in the ground floor.
    "export": {GROUND},
    # Serves what the exporter wrote, read back as data (the model repository), not through export's code.
    "serving": {GROUND},
    # Meets the drone and Triton through the wire formats and the contract of the ground floor.
    "gateway": {GROUND},
    # Measures the parts themselves (export a model, serve it, stream through the real gateway).
    "benchmarks": {GROUND, "drone", "export", "serving", "gateway"},
    # The command line dispatches to every part's subcommand; the demo wires the whole pipeline.
    "cli": {GROUND, "drone", "export", "serving", "gateway", "benchmarks"},
}
SUBPACKAGES = {f"dronedepth.{part}" for part in ALLOWED_ARROWS if part != GROUND}

# Heavy or server-side libraries the ground floor must never load (numpy is allowed).
HEAVY = {
    "torch",
    "open3d",
    "tritonclient",
    "onnx",
    "onnxruntime",
    "aiortc",
    "av",
    "cv2",
    "transformers",
    "foxglove",
    "rosbags",
    "prometheus_client",
    "aiohttp",
}

# Known cycle being removed (issue 13): the gateway's server, signaling and web modules import each other
# (directly or through the modules they share). Imports under ``if TYPE_CHECKING:`` count: a type-only
# import still ties the modules together.
KNOWN_GATEWAY_CYCLE = {"dronedepth.gateway.server", "dronedepth.gateway.signaling", "dronedepth.gateway.web"}


def package_folder(package: str) -> Path:
    """The folder of a package under the package-dir mapping of pyproject.toml."""
    mapping: Mapping[str, str] = SETUPTOOLS["package-dir"]
    base = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
    return ROOT / mapping[base] / package[len(base) :].lstrip(".").replace(".", "/")


def discover_modules() -> dict[str, Path]:
    """Every module of every package listed in pyproject.toml, by its installed name."""
    modules: dict[str, Path] = {}
    for package in SETUPTOOLS["packages"]:
        for path in sorted(package_folder(package).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported_names(module: str, source: str, is_package: bool) -> Iterator[str]:
    """Absolute names a module imports anywhere in its body (module level, in functions, relative)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one; resolved by the caller.
            yield from (f"{origin}.{alias.name}" for alias in node.names)


def named_modules(source: str, modules: Mapping[str, Path]) -> set[str]:
    """Module names held by module-level tables (what ``importlib.import_module`` dispatch loads).

    Only module-level assignments count: a name in a function (``python -m dronedepth.cli`` run in a
    subprocess) is a command line, not an import.
    """
    tables = [node for node in ast.parse(source).body if isinstance(node, ast.Assign | ast.AnnAssign)]
    return {
        node.value
        for table in tables
        for node in ast.walk(table)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules
    }


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name resolves to its longest known module prefix)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        source = path.read_text()
        targets = named_modules(source, modules) - {module}
        for name in imported_names(module, source, path.stem == "__init__"):
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            if name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def part_of(module: str) -> str:
    """The part a module belongs to: a sub-package name, or the ground floor."""
    head = ".".join(module.split(".")[:2])
    return head.split(".")[1] if head in SUBPACKAGES else GROUND


def cycles(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


MODULES = discover_modules()
GRAPH = import_graph(MODULES)


def arrows(source_parts: set[str], allowed: Mapping[str, set[str]]) -> list[str]:
    """Every import arrow from a module of ``source_parts`` to a part it may not import."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if part_of(module) in source_parts
        for target in targets
        if part_of(target) != part_of(module) and part_of(target) not in allowed[part_of(module)]
    )


def test_the_graph_sees_every_module_and_every_kind_of_import() -> None:
    # Every .py file under a package folder belongs to a listed package (a sub-folder missing from
    # pyproject.toml would otherwise escape these checks and the wheel).
    folders = {package_folder(p) for p in SETUPTOOLS["packages"]}
    on_disk = {path for folder in folders for path in folder.rglob("*.py") if "__pycache__" not in path.parts}
    assert on_disk - set(MODULES.values()) == set()
    assert {part_of(m) for m in MODULES} == set(ALLOWED_ARROWS)
    # Module-level, relative, function-level and importlib-table imports all become arrows.
    source = "from . import protocol\nfrom .outputs import sinks\ndef f():\n    import dronedepth.errors\n"
    names = set(imported_names("dronedepth.gateway", source, is_package=True))
    assert names >= {"dronedepth.gateway.protocol", "dronedepth.gateway.outputs.sinks", "dronedepth.errors"}
    table = "TABLE = {'x': 'dronedepth.drone.cli', 'y': 'no module'}\ndef f():\n    run('dronedepth.cli')\n"
    assert named_modules(table, MODULES) == {"dronedepth.drone.cli"}
    assert "dronedepth.protocol" in GRAPH["dronedepth.gateway.session"]
    assert "dronedepth.gateway.cli" in GRAPH["dronedepth.cli"]  # the dispatch table's import_module


def test_no_import_cycles_outside_the_known_gateway_one() -> None:
    assert [sorted(c) for c in cycles(GRAPH) if not c & KNOWN_GATEWAY_CYCLE] == []


def test_no_gateway_server_signaling_web_cycle() -> None:
    assert [sorted(c) for c in cycles(GRAPH) if c & KNOWN_GATEWAY_CYCLE] == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_ground_floor_imports_nothing_above_it() -> None:
    assert arrows({GROUND}, ALLOWED_ARROWS) == []


def test_drone_imports_only_itself_and_the_ground_floor() -> None:
    assert arrows({"drone"}, ALLOWED_ARROWS) == []


def test_layering_is_one_way() -> None:
    assert arrows(set(ALLOWED_ARROWS), ALLOWED_ARROWS) == []


def test_ground_floor_loads_no_part_and_no_heavy_dependency() -> None:
    # A bare interpreter: nothing imported before, so whatever the ground floor drags in shows up.
    script = """
import json, pkgutil, sys
before = set(sys.modules)
import dronedepth
names = sorted(m.name for m in pkgutil.iter_modules(dronedepth.__path__, "dronedepth.") if not m.ispkg)
for name in names:
    __import__(name)
print(json.dumps({"modules": names, "loaded": sorted(set(sys.modules) - before)}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    report = json.loads(result.stdout)
    ground_files = {p.stem for p in (ROOT / "dronedepth").glob("*.py")} - {"__init__"}
    assert set(report["modules"]) == {f"dronedepth.{stem}" for stem in ground_files}
    assert {"dronedepth.protocol", "dronedepth.contract", "dronedepth.errors", "dronedepth.samples"} <= set(
        report["modules"]
    )
    loaded = set(report["loaded"])
    assert sorted(m for m in loaded if m in SUBPACKAGES or m.startswith(tuple(s + "." for s in SUBPACKAGES))) == []
    top_level = {m.partition(".")[0] for m in loaded}
    assert sorted(top_level & HEAVY) == []
    # Beyond the named heavy ones: only the standard library, numpy and dronedepth itself.
    assert sorted(top_level - set(sys.stdlib_module_names) - {"numpy", "dronedepth"}) == []
