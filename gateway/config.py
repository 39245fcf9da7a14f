"""The gateway's settings: one validated dataclass, built by ``gateway/cli.py`` or by hand."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dronedepth.contract import GATEWAY_PORT
from dronedepth.errors import ConfigError
from dronedepth.gateway.frame_rate import FrameRateConfig
from dronedepth.protocol import DRONE_ID_PATTERN, DRONE_ID_RULE

if TYPE_CHECKING:
    import ssl

    from aiortc import RTCConfiguration, RTCIceServer

    from dronedepth.gateway.ice import MediaPorts
    from dronedepth.gateway.mapping import MapSettings
    from dronedepth.gateway.pipeline import ProcessingConfig

__all__ = [
    "DEFAULT_MAX_FRAME_PIXELS",
    "SCALE_MODES",
    "TRITON_SHM_MODES",
    "GatewayConfig",
    "ScaleMode",
    "TritonShmMode",
    "parse_ice_server",
    "read_drone_tokens",
    "read_ice_credential",
    "read_token",
]

DEFAULT_MAX_FRAME_PIXELS = 1920 * 1080
ScaleMode = Literal["auto", "model", "off"]
SCALE_MODES: tuple[ScaleMode, ...] = ("auto", "model", "off")
"""``--scale``: see :attr:`GatewayConfig.scale`."""
TritonShmMode = Literal["auto", "on", "off"]
TRITON_SHM_MODES: tuple[TritonShmMode, ...] = ("auto", "on", "off")
"""``--triton-shm``: frames and depth through system shared memory with Triton. ``auto``: when the Triton
URL's host is a loopback address (certainly this host); ``on``: always (a sidecar sharing /dev/shm);
``off``: never. Refused registrations fall back to gRPC payloads (see :mod:`~dronedepth.gateway.triton_shm`)."""
TOKEN_ENV = "DRONEDEPTH_TOKEN"
ICE_CREDENTIAL_ENV = "DRONEDEPTH_ICE_CREDENTIAL"
_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything :class:`gateway.server.Gateway` needs besides its depth client.

    ``token`` is the operator's bearer token (web pages, API, ``/stream``,
    metrics detail) and, without ``drone_tokens``, the fleet token drones
    present on ``POST /offer``; ``None`` disables authentication and is only
    accepted with ``allow_no_auth=True``. ``drone_tokens`` (drone id → SHA-256
    hex of its token, :func:`read_drone_tokens`) gives each drone its own
    credential: then only those open sessions, each for its own drone id.
    ``port=0`` binds a free port (read it back from ``Gateway.port``).
    """

    token: str | None
    host: str = "0.0.0.0"
    port: int = GATEWAY_PORT
    allow_no_auth: bool = False
    processing: ProcessingConfig | None = None
    """Projection, keypoint and point-cloud settings; ``None``: the pipeline's defaults."""
    max_drones: int = 8
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_body_bytes: int = 64 * 1024
    """Largest ``POST /offer`` body; larger ones get 413."""
    drone_tokens: Mapping[str, str] | None = None
    """Per-drone credentials: drone id → SHA-256 hex digest of its token (``--drone-tokens-file``)."""
    pending_timeout: float = 10.0
    """An answered offer whose ICE/DTLS has not completed after this many seconds is closed."""
    max_pending_offers: int = 4
    """Answered offers still connecting, across all drones; they do not count against ``max_drones``."""
    max_pending_per_remote: int = 2
    """Answered offers still connecting from one remote address."""
    header_timeout: float = 10.0
    """Seconds an HTTP connection may take to deliver a request's headers, and may stay idle between requests."""
    body_timeout: float = 10.0
    """Seconds ``POST /offer`` may take to deliver its body."""
    max_waiting_connections: int = 64
    """HTTP connections whose request has not reached a handler yet (unauthenticated); more are closed at once."""
    inference_timeout: float = 5.0
    max_in_flight: int | Literal["auto"] | None = "auto"
    """Depth requests in flight across all drones. ``"auto"``: what the Triton model runs at once (its CPU
    instances, or GPU instances × max batch), so waiting frames stay in the drones' newest-frame slots
    instead of queueing inside the server; ``None``: one per drone."""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs; none by default so the gateway works offline (host candidates only)."""
    ice_username: str | None = None
    """TURN username, for every ``turn:``/``turns:`` URL without credentials of its own."""
    ice_credential: str | None = None
    """TURN password (``--ice-credential-file`` or ``$DRONEDEPTH_ICE_CREDENTIAL``); needs ``ice_username``."""
    ice_relay_only: bool = False
    """Gather relayed (TURN) candidates only (``iceTransportPolicy`` relay): media goes through the TURN server."""
    rtc_ports: MediaPorts | None = None
    """UDP ports the media sockets bind (one per connected drone); ``None``: ephemeral ports."""
    public_ip: str | None = None
    """The address the answers advertise as the gateway's only host candidate (see :mod:`~dronedepth.gateway.ice`)."""
    idle_timeout: float = 15.0
    """A session with no video frame for this long (seconds) is closed."""
    record_dir: Path | None = None
    """Record every drone's keypoints (JSONL) and periodic point clouds (PLY) under this folder."""
    record_every: int = 10
    """With ``record_dir``: write a point cloud every this many processed frames."""
    record_bag_dir: Path | None = None
    """Record every drone session as a rosbag2 (MCAP storage) under this folder."""
    record_max_bytes: int | None = None
    """With ``record_dir`` / ``record_bag_dir``: bytes one drone session may record in each (None: no limit)."""
    record_min_free: int = 512 * 1024 * 1024
    """Recording stops (cleanly, once, with a logged error and a metric) below this many free bytes."""
    foxglove_port: int | None = None
    """Serve a live Foxglove WebSocket on this port (0: a free one); ``None``: no Foxglove server."""
    foxglove_host: str = "127.0.0.1"
    """Address of the Foxglove server; it has no authentication, so loopback by default."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; needs ``tls_key``."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    workers: int | None = None
    """Threads for frame conversion and processing; ``None``: one per CPU core, at least 2, at most 8."""
    shutdown_timeout: float = 5.0
    data_channel_buffer_bytes: int = 1024 * 1024
    """Results are dropped, not queued, while more than this waits to be sent to a drone."""
    pose_max_gap: float = 0.1
    """Seconds a frame may lie from the drone's poses and still get one (interpolated or extrapolated)."""
    world_map: MapSettings | None = None
    """Fuse the drones' metric depth into one world map per world frame (``--map``); ``None``: no map."""
    scale: ScaleMode = "auto"
    """``auto``: metric models keep their scale, relative ones get the scale recovered from anchors (ground
    from height above ground + attitude, the drone's ``anchors``); ``model``: every model keeps its own scale
    (a metric model's is still checked); ``off``: no scale estimation at all (docs/scale.md)."""
    scale_correct: bool = False
    """Apply the recovered scale correction to metric models too (needs ``scale`` ``auto``)."""
    frame_rate_advice: FrameRateConfig | None = field(default_factory=FrameRateConfig)
    """Ask each drone for no more frames than the gateway processes for it (``frame_rate`` messages,
    :mod:`~dronedepth.gateway.frame_rate`); ``None`` (``--no-frame-rate-advice``): every frame a drone sends
    is decoded and the stale ones dropped."""

    def __post_init__(self) -> None:
        if self.token is None:
            if not self.allow_no_auth:
                raise ConfigError(
                    "no token: give --token-file FILE or set DRONEDEPTH_TOKEN "
                    "(or pass --insecure-no-auth to accept any client)"
                )
        elif not self.token or any(c.isspace() for c in self.token):
            raise ConfigError("the token must be a non-empty string without whitespace")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        positive = {
            "max_drones": self.max_drones,
            "max_frame_pixels": self.max_frame_pixels,
            "max_body_bytes": self.max_body_bytes,
            "inference_timeout": self.inference_timeout,
            "idle_timeout": self.idle_timeout,
            "record_every": self.record_every,
            "shutdown_timeout": self.shutdown_timeout,
            "data_channel_buffer_bytes": self.data_channel_buffer_bytes,
            "pending_timeout": self.pending_timeout,
            "max_pending_offers": self.max_pending_offers,
            "max_pending_per_remote": self.max_pending_per_remote,
            "header_timeout": self.header_timeout,
            "body_timeout": self.body_timeout,
            "max_waiting_connections": self.max_waiting_connections,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if not (0 <= self.pose_max_gap <= 10):
            raise ConfigError(f"pose_max_gap must be within 0..10 seconds, got {self.pose_max_gap}")
        if self.scale not in SCALE_MODES:
            raise ConfigError(f"scale must be one of {', '.join(SCALE_MODES)}, got {self.scale!r}")
        if self.scale_correct and self.scale != "auto":
            raise ConfigError(f"--scale-correct needs --scale auto (got --scale {self.scale})")
        if isinstance(self.max_in_flight, int) and self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.foxglove_port is not None and not 0 <= self.foxglove_port <= 65535:
            raise ConfigError(f"foxglove_port must be in 0..65535, got {self.foxglove_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            raise ConfigError(f"{given} needs {missing}: HTTPS takes a certificate and its private key, give both")
        for url in self.ice_servers:
            parse_ice_server(url)
        if (self.ice_username is None) != (self.ice_credential is None):
            raise ConfigError("TURN credentials need both --ice-username and --ice-credential-file")
        if self.ice_relay_only and not any(url.startswith(("turn:", "turns:")) for url in self.ice_servers):
            raise ConfigError("--ice-relay-only needs a TURN server: give --ice-server turn:HOST:PORT")
        if self.drone_tokens is not None:
            if self.token is None:
                raise ConfigError("per-drone tokens need an operator token too (--token-file or DRONEDEPTH_TOKEN)")
            for drone_id, digest in self.drone_tokens.items():
                if not DRONE_ID_PATTERN.fullmatch(drone_id):
                    raise ConfigError(f"drone tokens: drone id {drone_id!r} must be {DRONE_ID_RULE}")
                if not _SHA256_HEX.fullmatch(digest):
                    raise ConfigError(f"drone tokens: the token hash of {drone_id!r} must be 64 lowercase hex digits")
            if len(set(self.drone_tokens.values())) != len(self.drone_tokens):
                raise ConfigError("drone tokens: two drones share a token; give each drone its own")

    def drone_ids_by_token_digest(self) -> dict[str, str] | None:
        """``drone_tokens`` inverted (SHA-256 hex → drone id), what ``POST /offer`` looks tokens up in."""
        if self.drone_tokens is None:
            return None
        return {digest: drone_id for drone_id, digest in self.drone_tokens.items()}

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(2, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2))

    def rtc_ice_servers(self) -> list[RTCIceServer]:
        """The ICE servers, TURN ones carrying ``ice_username``/``ice_credential`` unless their URL has its own."""
        servers = [parse_ice_server(url) for url in self.ice_servers]
        for server in servers:
            if str(server.urls).startswith("turn") and server.username is None:
                server.username, server.credential = self.ice_username, self.ice_credential
        return servers

    def rtc_configuration(self) -> RTCConfiguration:
        """What each peer connection is made with: the ICE servers and, with ``ice_relay_only``, the relay policy."""
        from aiortc import RTCConfiguration, RTCIceTransportPolicy

        policy = RTCIceTransportPolicy.RELAY if self.ice_relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=self.rtc_ice_servers(), iceTransportPolicy=policy)

    @property
    def tls(self) -> bool:
        """True when the gateway serves HTTPS."""
        return self.tls_cert is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context of ``tls_cert`` and ``tls_key``, or None for plain HTTP."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        import ssl

        key = self.tls_key

        def encrypted() -> bytes:  # instead of OpenSSL asking for the passphrase on the terminal
            raise ConfigError(f"the TLS key {key} is encrypted: give an unencrypted PEM key (openssl pkey -in ...)")

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key, password=encrypted)
        except FileNotFoundError as exc:
            raise ConfigError(f"cannot read the TLS certificate or key: {exc.filename}: {exc.strerror}") from exc
        except OSError as exc:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"cannot use {self.tls_cert} with {self.tls_key} for HTTPS ({exc}): both must be PEM files, "
                "the key unencrypted and matching the certificate"
            ) from exc
        return context


def parse_ice_server(url: str) -> RTCIceServer:
    """``stun:HOST[:PORT]`` or ``turn:[USER:PASSWORD@]HOST[:PORT][?transport=udp|tcp]`` → RTCIceServer."""
    from aiortc import RTCIceServer

    if not url.startswith(_ICE_SCHEMES):
        raise ConfigError(f"ICE server {url!r} must start with one of {', '.join(_ICE_SCHEMES)}")
    scheme, rest = url.split(":", 1)
    if "@" in rest:
        credentials, host = rest.rsplit("@", 1)
        username, _, password = credentials.partition(":")
        if not scheme.startswith("turn") or not username or not password:
            raise ConfigError("ICE server credentials must be given as turn:USER:PASSWORD@HOST[:PORT]")
        return RTCIceServer(urls=f"{scheme}:{host}", username=username, credential=password)
    if not rest:
        raise ConfigError(f"ICE server {url!r} has no host")
    return RTCIceServer(urls=url)


def read_token(token_file: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (first line, stripped) or ``$DRONEDEPTH_TOKEN``, else ``None``."""
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {str(path)!r}: {exc.strerror}") from exc
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ConfigError(f"the token file {str(path)!r} is empty")
        return token
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    return token or None


def read_ice_credential(
    credential_file: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The TURN password from ``credential_file`` (first line) or ``$DRONEDEPTH_ICE_CREDENTIAL``, else ``None``.

    A file or the environment keeps the secret out of the process list and the logs.
    """
    if credential_file is not None:
        path = Path(credential_file)
        try:
            lines = path.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the ICE credential file {str(path)!r}: {exc.strerror}") from exc
        if not lines or not lines[0].strip():
            raise ConfigError(f"the ICE credential file {str(path)!r} is empty")
        return lines[0].strip()
    env = os.environ if environ is None else environ
    return env.get(ICE_CREDENTIAL_ENV, "").strip() or None


def read_drone_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """Drone id → SHA-256 hex of its token, from lines ``DRONE_ID SHA256HEX`` (``#`` comments, blank lines).

    ``docs/security.md`` shows the one-liner that mints a token and its line.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the drone tokens file {str(file)!r}: {exc.strerror}") from exc
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ConfigError(f"{file}:{number}: expected 'DRONE_ID SHA256HEX', got {len(fields)} fields")
        drone_id, digest = fields
        if drone_id in tokens:
            raise ConfigError(f"{file}:{number}: drone {drone_id!r} is listed twice")
        tokens[drone_id] = digest.lower()
    if not tokens:
        raise ConfigError(f"the drone tokens file {str(file)!r} lists no drone")
    return tokens
