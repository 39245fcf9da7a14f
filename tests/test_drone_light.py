"""The drone side stays light for an onboard computer: no torch, Open3D, Triton client or gateway code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from dronedepth import drone

HEAVY = ("torch", "open3d", "tritonclient", "onnxruntime", "transformers", "dronedepth.gateway", "dronedepth.export")
DRONE_DIR = Path(drone.__file__).parent

PROBE = f"""
import json, sys
import dronedepth.drone, dronedepth.drone.cli, dronedepth.drone.client, dronedepth.drone.intrinsics
import dronedepth.drone.results, dronedepth.drone.signaling, dronedepth.drone.sources, dronedepth.drone.track
import dronedepth.drone.waypoints
from dronedepth.cli import build_parser
build_parser(load=["drone"])
heavy = {HEAVY!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def test_importing_the_drone_package_loads_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


GROUND_FLOOR = (
    "dronedepth.protocol",
    "dronedepth.errors",
    "dronedepth.frames",
    "dronedepth.pose_buffer",
    "dronedepth.stats",
)
"""The numpy-only shared modules the drone may use (``dronedepth/``)."""


def test_drone_sources_import_only_light_packages():
    allowed = {"aiortc", "aiohttp", "av", "cv2", "numpy", "yaml", "dronedepth"}
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(DRONE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                optional = {"pymavlink"} if path.name == "mavlink.py" else set()  # the 'mavlink' extra
                assert top in allowed | stdlib | optional, f"{path.name} imports {name}"
                if top == "dronedepth" and not name.startswith("dronedepth.drone"):
                    assert name in GROUND_FLOOR, f"{path.name} imports {name}: the drone uses only the ground floor"


def test_public_api_is_pinned():
    assert sorted(drone.__all__) == [
        "CameraSource",
        "CapturedFrame",
        "DroneClient",
        "DroneConfig",
        "DroneSummary",
        "FrameSource",
        "FreeDirection",
        "ImageFolderSource",
        "Obstacle",
        "ResultCallback",
        "SourceTrack",
        "SyntheticSource",
        "VideoFileSource",
        "Waypoints",
        "intrinsics_from_values",
        "load_intrinsics",
        "open_source",
        "plan_waypoints",
    ]
    for name in drone.__all__:
        assert hasattr(drone, name)
