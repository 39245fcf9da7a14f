"""``dronedepth triton``: serve an exported model repository with a real Triton server on CPU.

Runs in the foreground until SIGINT (Ctrl-C) or SIGTERM, then stops Triton and
its backend processes and exits 130 (SIGINT) or 143 (SIGTERM); see
:mod:`dronedepth.shutdown`.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import NoReturn

from dronedepth.contract import GRPC_PORT, HTTP_PORT, METRICS_PORT, MIN_SIDE
from dronedepth.serving.embedded import DEFAULT_READY_TIMEOUT_S, EmbeddedTriton
from dronedepth.serving.environment import ENV_VAR
from dronedepth.serving.repository import DEFAULT_MAX_PIXELS, AdapterSettings
from dronedepth.shutdown import run_until_signalled

LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Serves until SIGINT (Ctrl-C) or SIGTERM, then stops Triton and its backend processes and exits "
        "130 (SIGINT) or 143 (SIGTERM)."
    )
    parser.add_argument(
        "--model-repository",
        required=True,
        metavar="DIR",
        help="the repository 'dronedepth export' wrote (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx)",
    )
    parser.add_argument("--grpc-port", type=int, default=GRPC_PORT, help="gRPC port (default %(default)s; 0: any free)")
    parser.add_argument("--http-port", type=int, default=HTTP_PORT, help="HTTP port (default %(default)s; 0: any free)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=METRICS_PORT,
        help="Prometheus metrics port (default %(default)s; 0: any free)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default %(default)s: this machine only; 0.0.0.0 serves the network, "
        "without authentication)",
    )
    parser.add_argument(
        "--server-env",
        metavar="DIR",
        help=f"virtualenv with nvidia-pytriton, numpy<2 and onnxruntime (default: ${ENV_VAR} or <repo>/.venv-triton)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=2,
        help="model instances, each its own process (default %(default)s: a second one spares requests a "
        "500 ms stall in Triton 2.51's batcher)",
    )
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime threads per instance (default: every usable core)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="reject frames with more than this many pixels (default %(default)s, 4K UHD)",
    )
    parser.add_argument(
        "--queue-timeout-ms",
        type=float,
        default=None,
        metavar="MS",
        help="replace the exported queue timeout: a frame waiting longer is refused (0: no timeout; "
        "default: as exported, which was chosen for a GPU)",
    )
    parser.add_argument("--log-file", metavar="FILE", help="append Triton's own output to FILE (-v also logs it)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT_S,
        metavar="SECONDS",
        help="give up if the models are not ready after this long (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    return run_until_signalled(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> NoReturn:
    """Serve until Triton fails (raised) or a signal stops it (:class:`~dronedepth.shutdown.StopRequested`)."""
    server = EmbeddedTriton(
        args.model_repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        server_env=args.server_env,
        settings=AdapterSettings(
            instances=args.instances,
            intra_op_threads=args.ort_threads,
            max_pixels=args.max_pixels,
            min_side=MIN_SIDE,
            queue_timeout_us=None if args.queue_timeout_ms is None else round(args.queue_timeout_ms * 1000),
        ),
        log_file=args.log_file,
    )
    try:
        server.start()
        server.wait_ready(timeout=args.ready_timeout)
        LOG.info("serving on gRPC %s (Ctrl-C or SIGTERM stops)", server.url)
        while True:
            server.check_alive()
            time.sleep(0.5)
    finally:
        server.stop()
        LOG.info("stopped")
