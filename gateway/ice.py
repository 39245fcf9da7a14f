"""Where the gateway's WebRTC media sockets bind, and the address its answers advertise.

aioice (0.13) binds every host candidate to a random ephemeral UDP port, so a
gateway behind a NAT or in a container cannot publish "the media ports". This
module narrows that one step of ICE gathering for the gateway's own peer
connections, nothing else in the process:

- ``rtc_ports`` (``--rtc-ports LO-HI``): each peer connection's host sockets
  bind one port of the range, the *same* port on each host address. With
  BUNDLE and rtcp-mux (what aiortc and browsers negotiate) a drone needs one
  component, so **the range bounds the drones served at once: one port each**.
  A drone arriving when every port is taken is refused with
  :class:`~dronedepth.errors.GatewayFull` (HTTP 503); the others are untouched.
- ``public_ip`` (``--public-ip ADDR``): the answer carries one host candidate
  per component, at that address, instead of one per interface. The socket
  binds that address when it is one of this machine's (host networking,
  1:1 addresses) and every address of its family otherwise (``0.0.0.0``:
  behind a port-forwarding NAT such as Docker's published UDP ports, where
  packets to ``ADDR:port`` arrive at the container's ``port``). It stays a
  host candidate rather than an extra server-reflexive one so that it is the
  only address browsers and aioice try, and no check goes to an unreachable
  container address first.

The hook is :meth:`HostCandidatePolicy.apply`, called between
``setRemoteDescription`` (which creates the ICE transports) and
``setLocalDescription`` (which gathers): it replaces, on those transports'
aioice ``Connection`` objects only, the ``get_component_candidates`` step with
one that binds as above and leaves server-reflexive (STUN) and relayed (TURN)
candidates to aioice as before. With neither option set nothing is replaced.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aioice import Candidate, Connection
from aioice import ice as aioice_ice
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.turn import UDP_SOCKET_BUFFER_SIZE

from dronedepth.errors import ConfigError, GatewayFull

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

__all__ = ["HostCandidatePolicy", "MediaPorts", "parse_public_ip"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaPorts:
    """An inclusive UDP port range for the gateway's media sockets (``--rtc-ports LO-HI``)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high <= 65535:
            raise ConfigError(f"the media port range must be LO-HI with 1 <= LO <= HI <= 65535, got {self}")

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def __len__(self) -> int:
        return self.high - self.low + 1

    @classmethod
    def parse(cls, text: str) -> MediaPorts:
        """``"40000-40099"`` → ``MediaPorts(40000, 40099)``; a single ``"40000"`` is a range of one."""
        low, sep, high = text.strip().partition("-")
        try:
            return cls(int(low), int(high) if sep else int(low))
        except ValueError:
            raise ConfigError(f"the media port range must be LO-HI such as 40000-40099, got {text!r}") from None


def parse_public_ip(text: str) -> str:
    """The address to advertise (``--public-ip``), normalised; a clear error for a name or a typo."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ConfigError(f"the public address must be an IPv4 or IPv6 address, got {text!r}") from None


def _is_local_address(address: str) -> bool:
    """Whether a socket can bind ``address`` on this machine (it is one of its addresses)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class HostCandidatePolicy:
    """Bind the gateway's host candidates in ``ports`` and advertise ``public_ip`` (either may be None).

    ``on_exhausted`` is called (before the refusal is raised) each time a peer connection finds no free
    port in the range, e.g. to count it in the metrics.
    """

    def __init__(
        self,
        ports: MediaPorts | None = None,
        public_ip: str | None = None,
        *,
        on_exhausted: Callable[[], None] | None = None,
    ) -> None:
        self.ports = ports
        self.public_ip = public_ip
        self._on_exhausted = on_exhausted
        self._next_port = ports.low if ports is not None else 0
        self._bind_addresses: list[str] | None = None
        if public_ip is not None:
            wildcard = "::" if ":" in public_ip else "0.0.0.0"
            self._bind_addresses = [public_ip if _is_local_address(public_ip) else wildcard]

    @property
    def active(self) -> bool:
        """False when neither option is set: aioice gathers as it always does."""
        return self.ports is not None or self.public_ip is not None

    def apply(self, pc: RTCPeerConnection) -> None:
        """Make ``pc``'s coming gathering follow this policy; call after ``setRemoteDescription``, before gathering."""
        if not self.active:
            return
        transports = [t.receiver.transport.transport for t in pc.getTransceivers()]
        if pc.sctp is not None:
            transports.append(pc.sctp.transport.transport)
        seen: set[int] = set()
        for transport in transports:
            # aiortc exposes no hook for candidate gathering: the aioice Connection behind its gatherer is private.
            connection: Connection = transport.iceGatherer._connection
            if id(connection) not in seen:
                seen.add(id(connection))
                # Patching one instance's method: mypy checks it against the method's type, self included.
                connection.get_component_candidates = self._gatherer(connection)  # type: ignore[method-assign,assignment]

    def _gatherer(self, connection: Connection) -> Callable[..., object]:
        async def get_component_candidates(component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
            # With the relay policy aioice passes no address: no host candidate, nothing to bind.
            hosts = await self._host_candidates(connection, component, addresses) if addresses else []
            # STUN for these sockets as aioice does it (a public address leaves it nothing to find); TURN by aioice.
            stun_server = connection.stun_server if self.public_ip is None else None
            reflexive = [aioice_ice.server_reflexive_candidate(p, stun_server) for p in hosts if stun_server]
            relayed = Connection.get_component_candidates(connection, component, [], timeout)
            found, relayed_candidates = await asyncio.gather(
                asyncio.wait_for(asyncio.gather(*reflexive, return_exceptions=True), timeout), relayed
            )
            candidates = [p.local_candidate for p in hosts]
            candidates += [r[0] for r in found if not isinstance(r, BaseException)]
            return candidates + relayed_candidates

        return get_component_candidates

    async def _host_candidates(
        self, connection: Connection, component: int, addresses: list[str]
    ) -> list[aioice_ice.StunProtocol]:
        sockets = self._bind(self._bind_addresses if self._bind_addresses is not None else addresses)
        loop = asyncio.get_running_loop()
        protocols = []
        for sock in sockets:
            _, protocol = await loop.create_datagram_endpoint(lambda: aioice_ice.StunProtocol(connection), sock=sock)
            host, port = sock.getsockname()[:2]
            advertised = self.public_ip or host
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", advertised),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=advertised,
                port=port,
                type="host",
            )
            protocols.append(protocol)
        # Pairs are formed from the connection's protocols: register ours as aioice registers its own.
        connection._protocols += protocols
        return protocols

    def _bind(self, addresses: list[str]) -> list[socket.socket]:
        """One UDP socket per address, all on the same port: a free one of the range, or any without a range."""
        if self.ports is None:
            return _try_bind(addresses, 0) or []
        for offset in range(len(self.ports)):
            port = self.ports.low + (self._next_port - self.ports.low + offset) % len(self.ports)
            bound = _try_bind(addresses, port)
            if bound is not None:
                # Start the next search past this port, so a just-closed port is not reused at once.
                self._next_port = port + 1 if port < self.ports.high else self.ports.low
                return bound
        if self._on_exhausted is not None:
            self._on_exhausted()
        raise GatewayFull(
            f"no free UDP port for media in --rtc-ports {self.ports}: its {len(self.ports)} ports serve "
            f"{len(self.ports)} drones at once; retry later, or widen the range and the published ports"
        )


def _try_bind(addresses: list[str], port: int) -> list[socket.socket] | None:
    """Non-blocking UDP sockets bound to ``port`` (0: any) on each address; None if ``port`` is taken on one.

    An address that cannot be bound for another reason (gone, not configured) is skipped, as aioice skips it.
    """
    bound: list[socket.socket] = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
            sock.setblocking(False)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                for other in bound:
                    other.close()
                return None
            log.info("cannot bind a media socket on %s:%d: %s", address, port, exc.strerror)
            continue
        bound.append(sock)
    return bound
