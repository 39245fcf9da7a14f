"""The ``dronedepth`` command line: one entry point, one subcommand per pipeline part.

Each subcommand lives beside the part it drives (``export/cli.py``,
``gateway/cli.py``, ...) and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand runs, so
``dronedepth drone`` never pays for torch or Open3D.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from dronedepth import __version__
from dronedepth.errors import DroneDepthError

# name -> (module, one-line help). Order is the order of the pipeline.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "dronedepth.export.cli",
        "Export Depth Anything V2 to ONNX / TensorRT and write a Triton model repository.",
    ),
    "triton": ("dronedepth.serving.cli", "Run an embedded Triton server on CPU (no Docker, no GPU)."),
    "gateway": (
        "dronedepth.gateway.cli",
        "Receive drone video over WebRTC, get depth from Triton, send back 3D keypoints.",
    ),
    "drone": ("dronedepth.drone.cli", "Stream a camera, video, image folder or synthetic scene to a gateway."),
    "view": ("dronedepth.cli.view", "Watch a drone's live point cloud and keypoints from a gateway."),
    "map": ("dronedepth.cli.map", "Export a gateway's world map (fused from every drone) to a PLY file."),
    "demo": ("dronedepth.cli.demo", "Run the whole pipeline end to end on this machine and write the results."),
    "bench": ("dronedepth.benchmarks.cli", "Measure latency and throughput of every stage and of the baselines."),
    "eval": (
        "dronedepth.benchmarks.eval_cli",
        "Score metric depth, scale, obstacles and flicker against ground truth on synthetic flights.",
    ),
}


def build_parser(load: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the parser; ``load`` limits which subcommand modules are imported."""
    parser = argparse.ArgumentParser(
        prog="dronedepth",
        description="Live metric 3D perception from a drone's single camera.",
        epilog="Run 'dronedepth COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dronedepth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if load is None or name in load:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the module of the subcommand asked for (``--help`` of the top level imports none).
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(load=[chosen] if chosen else [])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except DroneDepthError as exc:
        print(f"dronedepth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
