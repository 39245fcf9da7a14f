"""A real Triton Inference Server process on CPU, run from Python.

:class:`EmbeddedTriton` derives a Python-backend repository from an exported
one (see :mod:`dronedepth.serving.repository`), starts the ``tritonserver``
bundled with nvidia-pytriton in its own process group, waits until every model
is ready and stops it so that no backend stub outlives it::

    with EmbeddedTriton("model_repository", grpc_port=0, http_port=0, metrics_port=0) as server:
        client = tritonclient.grpc.InferenceServerClient(server.url)

Port 0 picks a free port. The server's own output goes to ``log_file`` (if
given) and to the ``dronedepth.serving.tritonserver`` logger at DEBUG level;
start-up failures are raised as :class:`ServingError` with Triton's reason.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

from dronedepth.contract import GRPC_PORT, HTTP_PORT, METRICS_PORT
from dronedepth.errors import ServingError
from dronedepth.serving.environment import ServerEnvironment, locate_server_env
from dronedepth.serving.repository import AdapterSettings, ExportedModel, read_repository, write_runtime_repository
from dronedepth.shutdown import deferred_stop

LOG = logging.getLogger(__name__)
SERVER_LOG = logging.getLogger("dronedepth.serving.tritonserver")

DEFAULT_READY_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 400
_PR_SET_PDEATHSIG = 1


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` the way Triton does (with SO_REUSEADDR) would fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


class EmbeddedTriton:
    """A ``tritonserver`` process serving an exported model repository on CPU.

    Args:
        repository: the exported model repository (``DIR/NAME/config.pbtxt``, ``DIR/NAME/1/model.onnx``).
        grpc_port, http_port, metrics_port: where to listen; 0 picks a free port.
        host: the IPv4 address to bind; ``127.0.0.1`` keeps the server private to this machine,
            ``0.0.0.0`` serves every interface (Triton has no authentication: mind the network).
        server_env: the virtualenv with nvidia-pytriton (default: see :func:`locate_server_env`).
        settings: instances, ONNX Runtime threads and frame limits (see :class:`AdapterSettings`).
        log_file: where to append the server's output (kept after :meth:`stop`).
        runtime_dir: where to create the private runtime directory (default: the system temp dir).
        exit_timeout_s: how long Triton waits for in-flight requests when stopping.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        grpc_port: int = GRPC_PORT,
        http_port: int = HTTP_PORT,
        metrics_port: int = METRICS_PORT,
        host: str = "127.0.0.1",
        server_env: str | os.PathLike[str] | None = None,
        settings: AdapterSettings | None = None,
        log_file: str | os.PathLike[str] | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        exit_timeout_s: int = 10,
    ) -> None:
        for what, port in (("gRPC", grpc_port), ("HTTP", http_port), ("metrics", metrics_port)):
            if not 0 <= port <= 65535:
                raise ServingError(f"the {what} port must be between 0 and 65535, got {port}")
        self.repository = Path(repository)
        self.host = host
        self.settings = settings or AdapterSettings()
        self.log_file = Path(log_file) if log_file is not None else None
        self.exit_timeout_s = exit_timeout_s
        self._requested_ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self._ports = dict(self._requested_ports)
        self._server_env_arg = server_env
        self._runtime_parent = Path(runtime_dir) if runtime_dir is not None else None
        self._runtime: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self.models: list[ExportedModel] = []

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def grpc_port(self) -> int:
        return self._ports["grpc"]

    @property
    def http_port(self) -> int:
        return self._ports["http"]

    @property
    def metrics_port(self) -> int:
        return self._ports["metrics"]

    @property
    def client_host(self) -> str:
        """The address a client on this machine uses to reach the server."""
        return "127.0.0.1" if self._bind_host == "0.0.0.0" else self.host

    @property
    def _bind_host(self) -> str:
        return self.host or "0.0.0.0"

    @property
    def url(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc`` and ``--triton-url`` take it."""
        return self.grpc_url

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The ``tritonserver`` process id (also its process group id), while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def model_names(self) -> list[str]:
        return [model.name for model in self.models]

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedTriton:
        for attempt in range(3):
            self.start()
            try:
                self.wait_ready()
                return self
            except ServingError:
                self.stop()
                # A port picked as free (port 0) was taken by someone else before Triton bound it: pick again.
                if (
                    attempt == 2
                    or "already in use" not in self.failure_reason()
                    or 0 not in self._requested_ports.values()
                ):
                    raise
                LOG.info("%s; a port picked as free was taken meanwhile: starting again", self.failure_reason())
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedTriton:
        """Check everything, write the runtime repository and start ``tritonserver``; returns at once."""
        with deferred_stop(), self._lock:  # a signal lands once the process is ours to stop
            if self._process is not None:
                raise ServingError(f"this server is already running (pid {self._process.pid}): stop() it first")
            environment = locate_server_env(self._server_env_arg)
            self.models = read_repository(self.repository)
            self._ports = self._choose_ports()
            if self._runtime_parent is not None:
                self._runtime_parent.mkdir(parents=True, exist_ok=True)
            self._runtime = Path(tempfile.mkdtemp(prefix="dronedepth-triton-", dir=self._runtime_parent))
            try:
                write_runtime_repository(self.models, self._runtime / "models", self.settings)
                backends = environment.install_backends(self._runtime / "backends")
                self._spawn(environment, backends)
            except BaseException:
                shutil.rmtree(self._runtime, ignore_errors=True)
                self._runtime = None
                raise
        LOG.info(
            "starting Triton (pid %d) for %s from %s",
            self._process.pid if self._process else -1,
            ", ".join(self.model_names),
            self.repository,
        )
        return self

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Block until every model is ready; raise :class:`ServingError` with Triton's reason otherwise."""
        process = self._process
        if process is None:
            raise ServingError("the server is not started: call start() first")
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self._join_reader()
                raise ServingError(self._failure_message(f"Triton exited with code {process.returncode}"))
            if self._http_ok("/v2/health/ready"):
                break
            if time.monotonic() > deadline:
                raise ServingError(self._failure_message(f"Triton was not ready after {timeout:.0f} s"))
            time.sleep(0.1)
        LOG.info(
            "Triton ready: gRPC %s, HTTP %s, metrics %s; models: %s (CPU, %d instance(s) x %d ONNX Runtime thread(s))",
            self.grpc_url,
            self.http_url,
            self.metrics_url,
            ", ".join(self.model_names),
            self.settings.instances,
            self.settings.threads(),
        )

    def check_alive(self) -> None:
        """Raise :class:`ServingError` with Triton's reason if the server has exited."""
        process = self._process
        if process is None:
            raise ServingError("the server is not started: call start() first")
        if process.poll() is not None:
            self._join_reader()
            raise ServingError(self._failure_message(f"Triton exited unexpectedly with code {process.returncode}"))

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the server and every backend stub it started; idempotent.

        A SIGTERM/SIGINT arriving meanwhile is held back until the group is gone (see
        :func:`~dronedepth.shutdown.deferred_stop`): interrupted half-way, stubs would outlive us.
        """
        with deferred_stop(), self._lock:
            process = self._process
            if process is None:
                return
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            if process.poll() is None:
                LOG.info("stopping Triton (pid %d)", process.pid)
            try:
                _shutdown(process, self._runtime, timeout)
            finally:
                self._join_reader()
                self._process = None
                self._runtime = None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the server printed."""
        return "".join(self._lines()[-lines:])

    def failure_reason(self) -> str:
        """Triton's own explanation of a failed start, read from its output."""
        return diagnose(self._lines())

    def _lines(self) -> list[str]:
        return list(self._tail.copy())  # deque.copy() is atomic; iterating while the reader appends is not

    # -- internals ---------------------------------------------------------------------------------

    def _choose_ports(self) -> dict[str, int]:
        names = {"grpc": "gRPC (--grpc-port)", "http": "HTTP (--http-port)", "metrics": "metrics (--metrics-port)"}
        ports: dict[str, int] = {}
        for key, port in self._requested_ports.items():
            if port == 0:
                port = find_free_port(self._bind_host)
                while port in ports.values():
                    port = find_free_port(self._bind_host)
            elif port in ports.values():
                raise ServingError(f"port {port} is given twice: the gRPC, HTTP and metrics ports must differ")
            elif port_in_use(self._bind_host, port):
                raise ServingError(
                    f"port {port} on {self.host}, asked for {names[key]}, is already in use: "
                    f"stop what listens there (another Triton?) or choose another port"
                )
            ports[key] = port
        return ports

    def _command(self, environment: ServerEnvironment, backends: Path) -> list[str]:
        assert self._runtime is not None
        return [
            str(environment.tritonserver),
            f"--model-repository={self._runtime / 'models'}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            f"--grpc-address={self._bind_host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self._bind_host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self._bind_host}",
            f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
        ]

    def _spawn(self, environment: ServerEnvironment, backends: Path) -> None:
        command = self._command(environment, backends)
        LOG.debug("running %s", " ".join(command))
        self._tail.clear()
        sink: IO[str] | None = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            sink = self.log_file.open("a", encoding="utf-8", buffering=1)
        # Started from the main thread, the server also dies with this process (even on SIGKILL).
        tie_to_parent = threading.current_thread() is threading.main_thread()
        try:
            process = subprocess.Popen(
                command,
                env=environment.process_environment(),
                cwd=self._runtime,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: its stubs get the group's signals
                preexec_fn=_die_with_parent if tie_to_parent else None,
            )
        except OSError as exc:
            if sink is not None:
                sink.close()
            raise ServingError(f"cannot run {environment.tritonserver}: {exc.strerror}; run 'make setup'") from exc
        assert process.stdout is not None
        self._process = process
        self._reader = threading.Thread(
            target=_pump, args=(process.stdout, self._tail, sink), name=f"tritonserver-{process.pid}-log", daemon=True
        )
        self._reader.start()
        self._finalizer = weakref.finalize(self, _shutdown, process, self._runtime, DEFAULT_STOP_TIMEOUT_S)

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}{path}", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _model_states(self) -> str:
        """``name: STATE (reason)`` for every model, from the repository index (while running)."""
        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                index = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return ""
        return "; ".join(
            f"{m.get('name')}: {m.get('state', 'UNKNOWN')}" + (f" ({m['reason']})" if m.get("reason") else "")
            for m in index
        )

    def _failure_message(self, what: str) -> str:
        parts = [what]
        states = self._model_states() if self.is_running() else ""
        if states:
            parts.append(f"model states: {states}")
        reason = self.failure_reason()
        if reason:
            parts.append(reason)
        message = "; ".join(parts)
        if self.log_file is not None:
            message += f"\n(Triton's full output: {self.log_file})"
        elif not reason:
            lines = [line for line in self._lines() if not line.startswith(("|", "+"))][-15:]
            message += f"\nlast lines of Triton's output:\n{''.join(lines).rstrip()}"
        return self._exported_paths(message)

    def _exported_paths(self, text: str) -> str:
        """Name files by their place in the exported repository, not in the private runtime copy."""
        if self._runtime is None:
            return text
        return text.replace(f"{self._runtime / 'models'}/", f"{self.repository.absolute()}/")


# Triton's own words for the usual start-up failures.
_FAILURE_PATTERNS = (
    (
        re.compile(r"failed to load '([^']+)' version (\d+): (.*?)(?:\\n|\"?$)"),
        "model '{0}' failed to load: {2} (fix or re-export it)",
    ),
    (re.compile(r"failed to start (\w+) service: (.*?)\"?$"), "the {0} endpoint could not start: {1}"),
    (re.compile(r"error: creating server: (.*)$"), "Triton could not start: {0}"),
)


def diagnose(lines: list[str]) -> str:
    """The reasons for a failed start found in Triton's output, most specific first."""
    reasons: list[str] = []
    for pattern, template in _FAILURE_PATTERNS:
        for line in lines:
            match = pattern.search(line.strip())
            if match:
                reason = template.format(*(g.strip() for g in match.groups()))
                if reason not in reasons:
                    reasons.append(reason)
    if any("already in use" in r for r in reasons):
        reasons.append("choose other ports (--grpc-port, --http-port, --metrics-port)")
    return "; ".join(reasons)


def _pump(stream: IO[bytes], tail: collections.deque[str], sink: IO[str] | None) -> None:
    """Copy the server's output to the tail buffer, the log file and the logger until it closes."""
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            tail.append(line)
            if sink is not None:
                sink.write(line)
            SERVER_LOG.debug("%s", line.rstrip())
    finally:
        stream.close()
        if sink is not None:
            sink.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def _shutdown(process: subprocess.Popen[bytes], runtime: Path | None, timeout: float) -> None:
    """Stop the server's whole process group and delete its runtime directory."""
    try:
        _terminate_group(process, timeout)
    finally:
        if runtime is not None:
            shutil.rmtree(runtime, ignore_errors=True)


def _terminate_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the server (it unloads its models and their stubs), then SIGKILL whatever is left of its group."""
    pgid = process.pid
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            LOG.warning("Triton (pid %d) did not stop within %.0f s: killing its process group", pgid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + 5
    while (leftovers := group_members(pgid)) and time.monotonic() < deadline:
        LOG.debug("killing leftover processes of Triton's group %d: %s", pgid, leftovers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.05)
    if leftovers:
        raise ServingError(f"processes {leftovers} of Triton's process group {pgid} survived SIGKILL")
