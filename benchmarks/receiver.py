"""Receiver benchmark: glass-to-result latency with aiortc's frame release and with release at the marker packet.

One drone streams 640×480 at ``--fps`` to an in-process gateway over
loopback; depth comes from :class:`ZeroCostDepth`, an in-process client that
answers at once (the issue asks for a zero-cost model: going through Triton
would add the same gRPC cost to both receivers, and this measures the
receiver). Each receiver runs on a clean link and on one that drops
``--loss`` of the drone's outgoing RTP packets (RTCP and the data channel
untouched, seeded), in the same process, alternating. Glass-to-result is the
drone's own figure: capture of the frame to arrival of its ``keypoints``.

Per run it reports latency percentiles, frames sent in the window and answered,
frames lost (sent, never answered), the gateway's drops, and frames the decoder
refused (``corrupted``: aiortc's "failed to decode" warnings).

``python -m dronedepth.benchmarks.receiver [--duration S] [--out FILE]``
prints a table and writes JSON; it fails if a run measured nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import is_rtcp
from numpy.typing import NDArray

from dronedepth.benchmarks.harness import Frames, load_frames
from dronedepth.benchmarks.stats import summarize
from dronedepth.benchmarks.stream import fly, gateway_counts
from dronedepth.contract import DepthKind
from dronedepth.gateway.receiver import MarkerJitterBuffer

__all__ = ["ZeroCostDepth", "lossy_rtp", "receiver_run", "receiver_section"]

log = logging.getLogger("dronedepth.benchmarks.receiver")

RECEIVERS = {"aiortc": False, "marker": True}
"""Receiver name → ``MarkerJitterBuffer.release_at_marker``."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "receiver.json"


class ZeroCostDepth:
    """A depth client that costs nothing: a constant 2 m plane (metric), one array per frame size."""

    def __init__(self) -> None:
        self._planes: dict[tuple[int, int], NDArray[np.float32]] = {}

    @property
    def depth_kind(self) -> DepthKind:
        return "metric"

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        shape = (rgb.shape[0], rgb.shape[1])
        plane = self._planes.get(shape)
        if plane is None:
            plane = self._planes[shape] = np.full(shape, 2.0, dtype=np.float32)
        return plane

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release."""


@contextlib.contextmanager
def lossy_rtp(loss: float, seed: int = 1) -> Iterator[list[int]]:
    """Drop ``loss`` of the RTP packets every DTLS transport in this process sends; yields [sent, dropped].

    Only media is dropped: RTCP (NACK, PLI, reports) and SCTP pass. The gateway
    sends no RTP, so this is the drone's uplink.
    """
    counts = [0, 0]
    rng = random.Random(seed)
    original = RTCDtlsTransport._send_rtp

    async def send_rtp(self: RTCDtlsTransport, data: bytes) -> None:
        if not is_rtcp(data):
            counts[0] += 1
            if rng.random() < loss:
                counts[1] += 1
                return
        await original(self, data)

    RTCDtlsTransport._send_rtp = send_rtp  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        RTCDtlsTransport._send_rtp = original  # type: ignore[method-assign]


class _DecodeFailures(logging.Handler):
    """Counts aiortc's "failed to decode" warnings: frames that reached the decoder broken."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.count += 1


async def receiver_run(
    frames: Frames, *, receiver: str, loss: float, fps: float, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    """One drone through one receiver for ``duration_s``; the run's figures."""
    from dronedepth.gateway.config import GatewayConfig
    from dronedepth.gateway.server import Gateway

    token = secrets.token_urlsafe(24)
    failures = _DecodeFailures()
    aiortc_log = logging.getLogger("aiortc.rtcrtpreceiver")
    aiortc_log.addHandler(failures)
    previous = MarkerJitterBuffer.release_at_marker
    MarkerJitterBuffer.release_at_marker = RECEIVERS[receiver]
    try:
        with lossy_rtp(loss) as rtp:
            gateway = Gateway(GatewayConfig(token=token, host="127.0.0.1", port=0), ZeroCostDepth())
            await gateway.start()
            try:
                fleet = await fly(
                    gateway.url, token, 1, frames, fps=fps, duration_s=duration_s, warmup_s=warmup_s, tail_s=5.0
                )
                counts = gateway_counts(gateway.metrics.render())
            finally:
                await gateway.stop()
    finally:
        MarkerJitterBuffer.release_at_marker = previous
        aiortc_log.removeHandler(failures)
    (drone,) = fleet.sent
    measured = fleet.measured(drone)
    latency = summarize(r.latency_ms for r in measured)
    sent = fleet.frames_in_window(drone)
    return {
        "receiver": receiver,
        "loss": loss,
        "latency_ms": latency.to_dict() if latency is not None else None,
        "frames_sent": sent,
        "frames_answered": len(measured),
        "frames_lost": sent - len(measured),
        "frames_corrupted": failures.count,
        "rtp_packets_sent": rtp[0],
        "rtp_packets_dropped": rtp[1],
        "gateway": counts,
    }


async def receiver_section(
    frames: Frames, *, fps: float = 15.0, loss: float = 0.01, duration_s: float = 20.0, warmup_s: float = 3.0
) -> dict[str, Any]:
    """Both receivers, on a clean and on a lossy link, in this process; raises if a run measured nothing."""
    runs = []
    for link_loss in (0.0, loss):
        for receiver in RECEIVERS:
            log.info("receiver %s, %.1f %% RTP loss: %.0f s", receiver, link_loss * 100, duration_s)
            runs.append(
                await receiver_run(
                    frames, receiver=receiver, loss=link_loss, fps=fps, duration_s=duration_s, warmup_s=warmup_s
                )
            )
    empty = [f"{r['receiver']} at {r['loss']:.0%} loss" for r in runs if r["latency_ms"] is None]
    if empty:
        raise RuntimeError(f"no result measured for {', '.join(empty)}: see the gateway log above")
    return {
        "setup": {
            "frame": "640x480",
            "fps": fps,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "depth": "ZeroCostDepth (in-process, constant 2 m plane)",
            "link": "loopback; lossy runs drop the drone's outgoing RTP packets at random (seeded)",
        },
        "runs": runs,
    }


def table(doc: dict[str, Any]) -> str:
    header = (
        f"{'receiver':<8} {'loss':>5} {'p50 ms':>7} {'p95 ms':>7} {'sent':>5} {'answered':>8} "
        f"{'lost':>5} {'corrupt':>7} {'rtp dropped':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in doc["runs"]:
        latency = r["latency_ms"]
        lines.append(
            f"{r['receiver']:<8} {r['loss']:>5.1%} {latency['p50']:>7.1f} {latency['p95']:>7.1f} {r['frames_sent']:>5} "
            f"{r['frames_answered']:>8} {r['frames_lost']:>5} {r['frames_corrupted']:>7} {r['rtp_packets_dropped']:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dronedepth.benchmarks.receiver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per run (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured at the start of a run")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--loss", type=float, default=0.01, help="fraction of RTP packets dropped on the lossy link")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    doc = asyncio.run(
        receiver_section(load_frames(), fps=args.fps, loss=args.loss, duration_s=args.duration, warmup_s=args.warmup)
    )
    print(table(doc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
