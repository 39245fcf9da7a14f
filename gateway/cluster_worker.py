"""A worker of ``dronedepth gateway --processes N``: an ordinary gateway that trusts only its front.

The front (:mod:`dronedepth.gateway.cluster`) starts ``python -m
dronedepth.gateway.cluster_worker`` and writes a pickled :class:`WorkerSpec`
to its stdin (the parsed command line with this worker's overrides, and the
front's secret, so the secret never appears in a process listing or the
environment). The worker then runs :func:`dronedepth.gateway.cli.serve` on
127.0.0.1 with one extra middleware (:func:`trust_front`): a request without
the secret in :data:`SECRET_HEADER` is refused with 403, so nothing reaches a
worker except through the front; with it, :data:`FORWARDED_HEADER` names the
drone's real address (for the per-address pending-offer limit, the logs and
``/api/drones``).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import pickle
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from dronedepth.gateway import launch
from dronedepth.gateway.responses import json_error
from dronedepth.gateway.server import Gateway
from dronedepth.shutdown import exit_status, run_until_signalled

__all__ = ["FORWARDED_HEADER", "SECRET_HEADER", "WorkerSpec", "main", "trust_front"]

SECRET_HEADER: Final = "X-Dronedepth-Cluster"
FORWARDED_HEADER: Final = "X-Dronedepth-Remote"


@dataclass(frozen=True)
class WorkerSpec:
    """What the front tells a worker: its command line (already overridden), its index and the shared secret."""

    args: argparse.Namespace
    index: int
    secret: str


def trust_front(secret: str) -> Callable[[Gateway], None]:
    """The ``prepare`` hook of :func:`~dronedepth.gateway.cli.serve` that admits only the front's requests."""

    @web.middleware
    async def front_only(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        presented = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), secret.encode()):
            return json_error(403, "forbidden", "a cluster worker answers only its front process")
        remote = request.headers.get(FORWARDED_HEADER)
        return await handler(request.clone(remote=remote) if remote else request)

    def prepare(gateway: Gateway) -> None:
        # Before the guard's middleware: a request refused here never counts as reaching a handler.
        gateway.app.middlewares.insert(0, front_only)

    return prepare


def main() -> int:
    spec = pickle.load(sys.stdin.buffer)  # the front's own pipe: trusted input
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("a cluster worker reads a WorkerSpec from its front on stdin")
    logging.basicConfig(
        level=logging.DEBUG if getattr(spec.args, "verbose", False) else logging.INFO,
        format=f"%(asctime)s %(levelname)-7s [process {spec.index}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    launch.quiet_media_logs(spec.args)
    config, client = launch.build(spec.args)

    def serve() -> int:
        signum = asyncio.run(launch.serve(config, client, prepare=trust_front(spec.secret)))
        return 0 if signum is None else exit_status(signum)

    return run_until_signalled(serve)


if __name__ == "__main__":
    # Run the imported module's main: the pickled WorkerSpec is that module's class, not this __main__'s.
    from dronedepth.gateway.cluster_worker import main as worker_main

    sys.exit(worker_main())
