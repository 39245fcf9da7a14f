"""``dronedepth gateway --processes N``: one public port in front of N gateway processes.

The **front** (this module) owns the public port, TLS and the connection
guard; it runs no WebRTC and no depth. It starts N **workers**
(:mod:`dronedepth.gateway.cluster_worker`: the same gateway code, bound to
127.0.0.1 on a port of their own, answering only requests that carry the
front's secret) and routes:

- ``POST /offer``: to the worker already holding that drone id (a replacement
  offer replaces the session where it lives), else to the worker with the
  fewest sessions (:func:`choose_worker`). The answer SDP comes from the worker:
  media then flows directly between the drone and the worker's ICE ports, so
  nothing else needs proxying. Credentials are checked by the worker, exactly
  as in one process; the front only reads the drone id a per-drone token is bound to.
- ``GET /stream/<drone>`` (WebSocket) and ``/api/drones/<drone>/...``: to the
  worker holding the drone (the first worker when no worker holds it).
- ``GET /metrics``: every worker's exposition merged
  (:mod:`~dronedepth.gateway.cluster_metrics`) plus the front's own counters;
  ``GET /ready``: ready when every worker is; ``GET /api/drones``: the union.
- ``GET /health``: the front's own liveness. Anything else (the pages, assets)
  is the first worker's answer.

Where a drone lives is read from the workers' ``/api/drones`` at each offer,
so it is never stale: a drone whose session ended is nowhere. The workers are
children in the front's process group that the kernel stops if the front dies
(``PR_SET_PDEATHSIG``); one that exits is logged and restarted (its drones are
gone and reconnect); SIGTERM/SIGINT stops them all, then the front exits 143/130.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pickle
import re
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter

from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.gateway.auth import CHALLENGE, authorize_offer, presented_token, token_matches
from dronedepth.gateway.cluster_metrics import merge_expositions
from dronedepth.gateway.cluster_worker import FORWARDED_HEADER, SECRET_HEADER, WorkerSpec
from dronedepth.gateway.config import GatewayConfig
from dronedepth.gateway.http_guard import ConnectionGuard, GuardedTCPSite
from dronedepth.gateway.responses import json_error
from dronedepth.gateway.signaling import drone_id_from
from dronedepth.protocol import DRONE_ID_HEADER, DRONE_ID_PATTERN, DRONE_ID_RULE, INVALID_DRONE_ID, UNAUTHORIZED
from dronedepth.shutdown import STOP_SIGNALS, exit_status, run_until_signalled

__all__ = ["choose_worker", "run_front", "worker_args"]

log = logging.getLogger(__name__)

_LISTENING: Final = re.compile(rb"gateway listening on 127\.0\.0\.1:(\d+)")
_START_TIMEOUT_S: Final = 120.0
"""A worker imports aiortc, OpenCV and its depth client before it listens: slow on a busy 2-core machine."""
_PROXY_TIMEOUT_S: Final = 30.0
_STOP_GRACE_S: Final = 10.0
"""Beyond the worker's own shutdown timeout, before the front kills it."""
_RESTART_DELAY_S: Final = 1.0
_PR_SET_PDEATHSIG: Final = 1
_FORWARDED_REPLY_HEADERS: Final = ("Content-Type", "Retry-After", "WWW-Authenticate", DRONE_ID_HEADER, "Cache-Control")


def choose_worker(drone_id: str | None, held: Sequence[frozenset[str]], placing: Sequence[int]) -> int:
    """The worker for an offer: the one holding ``drone_id``, else the one with the fewest sessions.

    ``held[i]`` is worker ``i``'s sessions (connected or connecting) and ``placing[i]`` its offers being
    answered now, so simultaneous offers spread out. Ties go to the lowest index.
    """
    if drone_id is not None:
        for index, drone_ids in enumerate(held):
            if drone_id in drone_ids:
                return index
    return min(range(len(held)), key=lambda index: (len(held[index]) + placing[index], index))


def worker_args(args: argparse.Namespace, index: int, processes: int) -> argparse.Namespace:
    """Worker ``index``'s command line: loopback, a free port, no TLS (the front has it), its share of the media ports.

    Raises :class:`ConfigError` for what cannot be shared between processes: the Foxglove port and the
    world map (each worker would fuse only its own drones), and a media port range smaller than ``processes``.
    """
    from dronedepth.gateway.ice import MediaPorts

    if args.foxglove is not None:
        raise ConfigError("--foxglove serves one port from one process: use it without --processes")
    if args.map:
        raise ConfigError("--map fuses the drones of one process into one map: use it without --processes")
    overrides: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "tls_cert": None, "tls_key": None, "processes": 1}
    text = args.rtc_ports or os.environ.get("DRONEDEPTH_RTC_PORTS", "").strip()
    if text:
        ports = MediaPorts.parse(text)
        if len(ports) < processes:
            raise ConfigError(f"--rtc-ports {ports} has {len(ports)} ports: fewer than the {processes} processes")
        share = len(ports) // processes
        low = ports.low + index * share
        high = ports.high if index == processes - 1 else low + share - 1
        overrides["rtc_ports"] = f"{low}-{high}"
    return argparse.Namespace(**{**vars(args), **overrides})


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the front dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _Worker:
    """One worker process: started, watched, restarted; ``url`` is where the front reaches it."""

    def __init__(self, index: int, args: argparse.Namespace, secret: str) -> None:
        self.index = index
        self.spec = WorkerSpec(args, index, secret)
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.placing = 0
        """Offers being forwarded to this worker now."""
        self._relay: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the process and wait until it listens; raises :class:`ConfigError` when it exits first."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dronedepth.gateway.cluster_worker",
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.process.stdin is not None and self.process.stderr is not None
        self.process.stdin.write(pickle.dumps(self.spec))
        self.process.stdin.close()
        port = None
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while port is None:
                    line = await self.process.stderr.readline()
                    if not line:
                        code = await self.process.wait()
                        raise ConfigError(f"gateway process {self.index} exited with status {code} before listening")
                    sys.stderr.buffer.write(line)
                    if match := _LISTENING.search(line):
                        port = int(match.group(1))
        except TimeoutError:
            raise ConfigError(f"gateway process {self.index} did not listen within {_START_TIMEOUT_S:g} s") from None
        sys.stderr.flush()
        self.url = f"http://127.0.0.1:{port}"
        self._relay = asyncio.create_task(self._relay_log(), name=f"gateway-process-{self.index}-log")

    async def _relay_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            sys.stderr.buffer.write(line)
            sys.stderr.flush()

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; waits for the exit and the last log lines."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                log.error("gateway process %d did not stop within %g s: killing it", self.index, grace)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._relay is not None:
            await self._relay


class Front:
    """The front process's HTTP server and its workers (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, config: GatewayConfig, processes: int) -> None:
        self.config = config
        secret = secrets.token_urlsafe(32)
        self.workers = [_Worker(i, worker_args(args, i, processes), secret) for i in range(processes)]
        self._secret = secret
        self._registry = CollectorRegistry(auto_describe=True)
        self.restarts = PromCounter(
            "dronedepth_process_restarts",
            "Gateway worker processes that exited unexpectedly and were restarted (--processes).",
            registry=self._registry,
        )
        self.guard = ConnectionGuard(
            header_timeout=config.header_timeout, max_waiting=config.max_waiting_connections, on_drop=lambda _: None
        )
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every worker, then listen on the public port; raises :class:`ConfigError`."""
        self._http = aiohttp.ClientSession(
            headers={SECRET_HEADER: self._secret}, timeout=aiohttp.ClientTimeout(total=_PROXY_TIMEOUT_S)
        )
        await asyncio.gather(*(worker.start() for worker in self.workers))
        self._watchers = [asyncio.create_task(self._watch(worker)) for worker in self.workers]
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self.guard.middleware])
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/drones", self._drones)
        app.router.add_get("/stream/{drone}", self._stream)
        app.router.add_get("/api/drones/{drone}/{rest:.*}", self._drone_resource)
        app.router.add_route("*", "/{path:.*}", self._first_worker)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.config.header_timeout)
        await self._runner.setup()
        site = GuardedTCPSite(
            self._runner, self.config.host, self.config.port, guard=self.guard, ssl_context=self.config.ssl_context()
        )
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}; choose another --port"
            ) from exc
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.config.port
        log.info(
            "gateway front listening on %s:%d (%s) for %d gateway processes: %s",
            self.config.host,
            self.port,
            "HTTPS" if self.config.tls else "HTTP",
            len(self.workers),
            ", ".join(worker.url for worker in self.workers),
        )

    async def stop(self) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        grace = self.config.shutdown_timeout + _STOP_GRACE_S
        await asyncio.gather(*(worker.stop(grace) for worker in self.workers))
        if self._http is not None:
            await self._http.close()
        log.info("gateway front stopped")

    async def _watch(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits while the front serves."""
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping:
                return
            log.error(
                "gateway process %d exited with status %s: restarting it (its drones reconnect)", worker.index, code
            )
            self.restarts.inc()
            await asyncio.sleep(_RESTART_DELAY_S)
            try:
                await worker.start()
            except ConfigError as exc:
                log.error("%s; retrying", exc)

    # ------------------------------------------------------------------ proxying

    def _forward_headers(self, request: web.Request) -> dict[str, str]:
        headers = {FORWARDED_HEADER: request.remote or "?"}
        for name in ("Authorization", DRONE_ID_HEADER, "Content-Type", "If-None-Match"):
            if name in request.headers:
                headers[name] = request.headers[name]
        return headers

    async def _forward(self, worker: _Worker, request: web.Request, body: bytes | None = None) -> web.Response:
        """``request`` sent to ``worker`` as is (path, query, credentials), and its answer."""
        assert self._http is not None
        try:
            async with self._http.request(
                request.method, worker.url + request.rel_url.path_qs, headers=self._forward_headers(request), data=body
            ) as reply:
                payload = await reply.read()
                headers = {name: reply.headers[name] for name in _FORWARDED_REPLY_HEADERS if name in reply.headers}
                return web.Response(status=reply.status, body=payload, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("gateway process %d did not answer %s: %r", worker.index, request.path, exc)
            return json_error(503, "unavailable", f"gateway process {worker.index} is restarting", {"Retry-After": "5"})

    async def _each_worker(self, path: str, request: web.Request | None = None) -> list[tuple[int, bytes]]:
        """``GET path`` from every worker, with ``request``'s credentials or the operator token; (status, body)."""
        assert self._http is not None
        http = self._http
        if request is not None:
            headers = self._forward_headers(request)
        else:
            headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}

        async def one(worker: _Worker) -> tuple[int, bytes]:
            try:
                async with http.get(worker.url + path, headers=headers) as reply:
                    return reply.status, await reply.read()
            except (aiohttp.ClientError, TimeoutError):
                return 503, b""

        return list(await asyncio.gather(*(one(worker) for worker in self.workers)))

    async def _held(self) -> list[frozenset[str]]:
        """Each worker's sessions, from its ``/api/drones`` (a worker that does not answer holds none)."""
        held = []
        for status, body in await self._each_worker("/api/drones"):
            held.append(frozenset(json.loads(body)["drones"]) if status == 200 else frozenset())
        return held

    async def _holder(self, drone_id: str) -> _Worker:
        held = await self._held()
        return next((self.workers[i] for i, ids in enumerate(held) if drone_id in ids), self.workers[0])

    # ------------------------------------------------------------------ routes

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await asyncio.wait_for(request.read(), self.config.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, "body_too_large", f"the body exceeds {self.config.max_body_bytes} bytes")
        except TimeoutError:
            return json_error(408, "body_timeout", f"the body did not arrive within {self.config.body_timeout:g} s")
        try:
            drone_id = drone_id_from(request)
        except ProtocolError:
            drone_id = None  # the worker refuses it with the exact reason
        grant = authorize_offer(request, self.config.token, self.config.drone_ids_by_token_digest())
        if not isinstance(grant, str) and grant.drone_id is not None:
            drone_id = grant.drone_id
        index = choose_worker(drone_id, await self._held(), [worker.placing for worker in self.workers])
        worker = self.workers[index]
        worker.placing += 1
        try:
            reply = await self._forward(worker, request, body)
        finally:
            worker.placing -= 1
        if reply.status == 200:
            log.info("drone %s placed on gateway process %d", reply.headers.get(DRONE_ID_HEADER), index)
        return reply

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        answers = await self._each_worker("/ready", request)
        ready = all(status == 200 for status, _ in answers)
        body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
        details = [json.loads(payload) for _, payload in answers if payload]
        if len(details) == len(answers) and all("sessions" in detail for detail in details):
            body["sessions"] = sum(detail["sessions"] for detail in details)
            body["processes"] = [detail["status"] for detail in details]
            if ready:
                body["depth_kind"] = details[0].get("depth_kind")
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        answers = await self._each_worker("/metrics", request)
        texts = [payload.decode("utf-8") for status, payload in answers if status == 200]
        text = merge_expositions(texts) + generate_latest(self._registry).decode("utf-8")
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _drones(self, request: web.Request) -> web.Response:
        answers = await self._each_worker("/api/drones", request)
        failed = next(((status, payload) for status, payload in answers if status != 200), None)
        if failed is not None:
            status, payload = failed
            return web.Response(status=status, body=payload, content_type="application/json")
        payloads = [json.loads(payload) for _, payload in answers]
        drones: dict[str, Any] = {}
        for index, payload in enumerate(payloads):
            for drone_id, entry in payload["drones"].items():
                drones[drone_id] = {**entry, "process": index}
        summary = dict(payloads[0]["gateway"])
        summary["sessions"] = sum(payload["gateway"]["sessions"] for payload in payloads)
        summary["processes"] = len(payloads)
        summary["depth_available"] = all(payload["gateway"]["depth_available"] for payload in payloads)
        return web.json_response({**payloads[0], "gateway": summary, "drones": dict(sorted(drones.items()))})

    async def _drone_resource(self, request: web.Request) -> web.Response:
        return await self._forward(await self._holder(request.match_info["drone"]), request)

    async def _first_worker(self, request: web.Request) -> web.Response:
        return await self._forward(self.workers[0], request)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """The drone's ``/stream`` WebSocket on its worker, relayed message by message."""
        if not token_matches(presented_token(request, allow_query=True), self.config.token):
            return json_error(
                401,
                UNAUTHORIZED,
                "missing or wrong token: send 'Authorization: Bearer <token>' or add ?token=<token>",
                CHALLENGE,
            )
        drone_id = request.match_info["drone"]
        if not DRONE_ID_PATTERN.fullmatch(drone_id):
            return json_error(400, INVALID_DRONE_ID, f"drone id {drone_id!r} must be {DRONE_ID_RULE}")
        worker = await self._holder(drone_id)
        assert self._http is not None
        viewer = web.WebSocketResponse(max_msg_size=64 * 1024)
        if not viewer.can_prepare(request).ok:
            return await self._forward(worker, request)
        try:
            upstream = await self._http.ws_connect(
                worker.url + request.rel_url.path_qs, headers=self._forward_headers(request)
            )
        except aiohttp.WSServerHandshakeError as exc:
            return json_error(exc.status, "unavailable", f"gateway process {worker.index}: {exc.message}")
        except (aiohttp.ClientError, TimeoutError):
            return json_error(503, "unavailable", f"gateway process {worker.index} is restarting", {"Retry-After": "5"})
        await viewer.prepare(request)

        async def downstream() -> None:
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.BINARY:
                    await viewer.send_bytes(message.data)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    await viewer.send_str(message.data)
                else:
                    break

        relay = asyncio.create_task(downstream())
        try:
            async for _ in viewer:  # viewers send nothing; reading notices when they leave
                pass
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            await upstream.close()
            await viewer.close()
        return viewer


async def serve_front(
    args: argparse.Namespace, config: GatewayConfig, processes: int, stop: asyncio.Event | None = None
) -> int | None:
    """Run the front and its workers until ``stop`` is set or SIGTERM/SIGINT arrives; returns that signal."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        log.info("%s received: stopping the gateway processes", signal.Signals(signum).name)
        received.append(signum)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    front = Front(args, config, processes)
    try:
        await front.start()
        await stop.wait()
    finally:
        await front.stop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return received[0] if received else None


def run_front(args: argparse.Namespace) -> int:
    """``dronedepth gateway --processes N`` (N > 1): the front in this process, N workers as children."""
    from dronedepth.gateway.launch import build_config

    config = build_config(args)  # the workers make their depth clients; the front needs none
    worker_args(args, 0, args.processes)  # refuses what cannot be shared before any process starts

    def serve() -> int:
        signum = asyncio.run(serve_front(args, config, args.processes))
        return 0 if signum is None else exit_status(signum)

    return run_until_signalled(serve)
