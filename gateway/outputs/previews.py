"""The depth previews and per-drone result statistics behind the operator page.

:class:`PreviewHub` is a :class:`~dronedepth.gateway.outputs.sinks.ResultSink`:
the session's worker thread hands it every processed frame; it keeps a short
history of result times and latencies per drone and, at most ``max_fps`` times
a second per drone, colourises the depth (downscaled to at most ``max_width``
pixels wide) and encodes a JPEG, in that worker thread, never in the event
loop. The web API (:mod:`dronedepth.gateway.web`) reads it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Final

import cv2
import numpy as np
from dronedepth.gateway.outputs.render import colorize_depth
from dronedepth.gateway.outputs.sinks import FrameRecord
from numpy.typing import NDArray

from dronedepth.contract import DepthKind
from dronedepth.stats import percentile

__all__ = [
    "DEFAULT_PREVIEW_FPS",
    "DEFAULT_PREVIEW_WIDTH",
    "LATENCY_WINDOW_S",
    "RATE_WINDOW_S",
    "PreviewHub",
    "encode_preview",
    "find_preview_hub",
]

DEFAULT_PREVIEW_WIDTH: Final = 320
DEFAULT_PREVIEW_FPS: Final = 3.0
RATE_WINDOW_S: Final = 5.0
"""The result rate is the number of results in this many seconds, divided by it."""
LATENCY_WINDOW_S: Final = 10.0
"""Latency percentiles (:func:`dronedepth.stats.percentile`) are over the results of this many seconds."""
_HISTORY: Final = 2048
"""At most this many results are remembered per drone (enough for 200 fps over the windows)."""


def encode_preview(
    depth: NDArray[np.float32], depth_kind: DepthKind, *, max_width: int = DEFAULT_PREVIEW_WIDTH, quality: int = 80
) -> tuple[bytes, int, int]:
    """Depth → colourised JPEG at most ``max_width`` wide: ``(jpeg bytes, width, height)``.

    The depth is downscaled *before* it is colourised (area averaging), which
    makes a preview of a 1080p frame cost about as much as one of a 320 px frame.
    """
    height, width = depth.shape[:2]
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        # float32 in (cv2.resize has no float16), float32 out: the outer astype (no copy) tells mypy,
        # whose OpenCV stubs type every result as any dtype.
        shrunk = cv2.resize(depth.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
        depth = shrunk.astype(np.float32, copy=False)
    rgb = colorize_depth(depth, depth_kind)
    ok, buffer = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV cannot fail on a uint8 BGR image
        raise RuntimeError("JPEG encoding of the depth preview failed")
    return buffer.tobytes(), rgb.shape[1], rgb.shape[0]


@dataclass
class _DroneView:
    """What the hub knows of one drone. Guarded by the hub's lock."""

    first_at: float
    results: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    """``(monotonic arrival, gateway total ms)`` of recent results."""
    depth_kind: str | None = None
    frame_size: tuple[int, int] | None = None
    keypoints: int = 0
    total_results: int = 0
    encode_due: float = -math.inf
    """Monotonic time from which the next preview may be encoded."""
    jpeg: bytes | None = None
    jpeg_size: tuple[int, int] = (0, 0)
    jpeg_at: float = 0.0
    seq: int = 0


class PreviewHub:
    """Latest depth preview and recent result statistics per drone; a :class:`~.sinks.ResultSink`.

    ``write`` runs in the session's worker thread and encodes a preview at most
    ``max_fps`` times a second per drone; the routes read the hub from the
    event loop. All state is behind one lock held only for bookkeeping, never
    while encoding.
    """

    def __init__(
        self,
        *,
        max_width: int = DEFAULT_PREVIEW_WIDTH,
        max_fps: float = DEFAULT_PREVIEW_FPS,
        quality: int = 80,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_width < 16:
            raise ValueError(f"max_width must be at least 16 pixels, got {max_width}")
        if not max_fps > 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {quality}")
        self.max_width = max_width
        self.max_fps = max_fps
        self.quality = quality
        self._clock = clock
        self._lock = threading.Lock()
        self._views: dict[str, _DroneView] = {}
        self._closed = False
        self.previews_encoded = 0

    def __repr__(self) -> str:
        return f"PreviewHub(max_width={self.max_width}, max_fps={self.max_fps})"

    # ------------------------------------------------------------------ ResultSink (worker threads)

    def write(self, record: FrameRecord) -> None:
        message = record.message
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            view = self._views.get(record.drone_id)
            if view is None:
                view = self._views[record.drone_id] = _DroneView(first_at=now)
            view.results.append((now, float(message.timing.get("total", math.nan))))
            view.depth_kind = message.depth_kind
            view.frame_size = (message.width, message.height)
            view.keypoints = len(message.points)
            view.total_results += 1
            due = now >= view.encode_due
            if due:  # reserve this slot so a concurrent write of the same drone does not encode too
                view.encode_due = now + 1.0 / self.max_fps
        if not due:
            return
        jpeg, width, height = encode_preview(
            record.result.depth, message.depth_kind, max_width=self.max_width, quality=self.quality
        )
        with self._lock:
            if self._views.get(record.drone_id) is view:  # not closed meanwhile
                view.jpeg, view.jpeg_size, view.jpeg_at = jpeg, (width, height), now
                view.seq += 1
                self.previews_encoded += 1

    def close_drone(self, drone_id: str) -> None:
        """The drone left: forget it (a drone that comes back starts afresh)."""
        with self._lock:
            self._views.pop(drone_id, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._views.clear()

    def retain(self, drone_ids: Collection[str]) -> None:
        """Forget every drone not in ``drone_ids`` (the live sessions).

        A frame still in a worker thread when its session closes can reach
        :meth:`write` after :meth:`close_drone`; this drops what it left behind.
        """
        with self._lock:
            for drone_id in [d for d in self._views if d not in drone_ids]:
                del self._views[drone_id]

    # ------------------------------------------------------------------ readers (any thread)

    def preview(self, drone_id: str) -> tuple[bytes, int] | None:
        """The latest preview JPEG of ``drone_id`` and its sequence number, or None."""
        with self._lock:
            view = self._views.get(drone_id)
            if view is None or view.jpeg is None:
                return None
            return view.jpeg, view.seq

    def stats(self, drone_id: str) -> dict[str, Any] | None:
        """Result rate, latency percentiles and the latest result's shape for ``drone_id``, or None."""
        now = self._clock()
        with self._lock:
            view = self._views.get(drone_id)
            if view is None:
                return None
            results = list(view.results)
            out: dict[str, Any] = {
                "depth_kind": view.depth_kind,
                "frame": None
                if view.frame_size is None
                else {"width": view.frame_size[0], "height": view.frame_size[1]},
                "keypoints": view.keypoints,
                "results": view.total_results,
                "preview": None
                if view.jpeg is None
                else {
                    "seq": view.seq,
                    "width": view.jpeg_size[0],
                    "height": view.jpeg_size[1],
                    "age_s": round(now - view.jpeg_at, 2),
                },
            }
            first_at = view.first_at
        recent = [t for t, _ in results if t > now - RATE_WINDOW_S]
        span = min(RATE_WINDOW_S, max(now - first_at, 1.0))
        out["result_rate"] = round(len(recent) / span, 2)
        latencies = [ms for t, ms in results if t > now - LATENCY_WINDOW_S and math.isfinite(ms)]
        out["latency_ms"] = {
            "p50": round(percentile(latencies, 50), 1) if latencies else None,
            "p95": round(percentile(latencies, 95), 1) if latencies else None,
            "last": round(results[-1][1], 1) if results and math.isfinite(results[-1][1]) else None,
            "samples": len(latencies),
        }
        return out


def find_preview_hub(sink: object) -> PreviewHub | None:
    """The :class:`PreviewHub` that is ``sink`` or one of its ``sinks`` (a SinkSet), else None."""
    if isinstance(sink, PreviewHub):
        return sink
    for inner in getattr(sink, "sinks", ()) or ():
        if isinstance(inner, PreviewHub):
            return inner
    return None
