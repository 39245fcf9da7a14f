"""Helpers for the ICE tests: free UDP port ranges and the candidate pair a peer connection selected."""

from __future__ import annotations

import random
import re
import socket

from aioice.ice import CandidatePair
from aiortc import RTCPeerConnection

from dronedepth.gateway.ice import MediaPorts

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE | re.IGNORECASE)


def free_udp_range(size: int) -> MediaPorts:
    """``size`` consecutive UDP ports that nothing binds right now, on any IPv4 or IPv6 address."""
    for _ in range(200):
        low = random.randrange(20000, 30000 - size)
        if all(_udp_port_free(port) for port in range(low, low + size)):
            return MediaPorts(low, low + size - 1)
    raise RuntimeError(f"no {size} consecutive free UDP ports found")


def _udp_port_free(port: int) -> bool:
    for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((wildcard, port))
            except OSError:
                return False
    return True


def sdp_candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every ``a=candidate`` line of ``sdp``."""
    return [(host, int(port), kind) for host, port, kind in _CANDIDATE.findall(sdp)]


def selected_pair(pc: RTCPeerConnection) -> CandidatePair:
    """The candidate pair ICE nominated for ``pc``'s (bundled) transport."""
    transceivers = pc.getTransceivers()
    transport = transceivers[0].receiver.transport.transport if transceivers else pc.sctp.transport.transport
    # aiortc does not expose the selected pair: read it from its aioice connection.
    return transport.iceGatherer._connection._nominated[1]
