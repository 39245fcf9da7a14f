"""The depth previews and per-drone result statistics behind the operator page.

:class:`PreviewHub` is a :class:`~dronedepth.gateway.outputs.sinks.ResultSink`:
the session's worker thread hands it every processed frame; it keeps a short
history of result times and latencies per drone and a reference to the latest
depth. Previews are made only when someone asks for one (the operator page's
``preview.jpg`` requests): :meth:`PreviewHub.preview` colourises that depth
(downscaled to at most ``max_width`` pixels wide) and encodes a JPEG, at most
``max_fps`` times a second per drone, in the caller's thread (the web API calls
it in a worker thread, never in the event loop). With nobody watching, a result
costs the hub only its bookkeeping. The web API (:mod:`dronedepth.gateway.web`) reads it.
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
from numpy.typing import NDArray

from dronedepth.contract import DepthKind
from dronedepth.gateway.outputs.render import colorize_depth
from dronedepth.gateway.outputs.sinks import FrameRecord
from dronedepth.stats import percentile

__all__ = [
    "DEFAULT_PREVIEW_FPS",
    "DEFAULT_PREVIEW_WIDTH",
    "LATENCY_WINDOW_S",
    "RATE_WINDOW_S",
    "PreviewHub",
    "encode_preview",
    "find_preview_hub",
    "preview_size",
]

DEFAULT_PREVIEW_WIDTH: Final = 320
DEFAULT_PREVIEW_FPS: Final = 3.0
RATE_WINDOW_S: Final = 5.0
"""The result rate is the number of results in this many seconds, divided by it."""
LATENCY_WINDOW_S: Final = 10.0
"""Latency percentiles (:func:`dronedepth.stats.percentile`) are over the results of this many seconds."""
_HISTORY: Final = 2048
"""At most this many results are remembered per drone (enough for 200 fps over the windows)."""


def preview_size(width: int, height: int, max_width: int = DEFAULT_PREVIEW_WIDTH) -> tuple[int, int]:
    """``(width, height)`` of the preview of a ``width`` × ``height`` frame: at most ``max_width`` wide, same aspect."""
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def encode_preview(
    depth: NDArray[np.float32], depth_kind: DepthKind, *, max_width: int = DEFAULT_PREVIEW_WIDTH, quality: int = 80
) -> tuple[bytes, int, int]:
    """Depth → colourised JPEG at most ``max_width`` wide: ``(jpeg bytes, width, height)``.

    The depth is downscaled *before* it is colourised (area averaging), which
    makes a preview of a 1080p frame cost about as much as one of a 320 px frame.
    """
    height, width = depth.shape[:2]
    size = preview_size(width, height, max_width)
    if size != (width, height):
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
    depth_kind: DepthKind | None = None
    frame_size: tuple[int, int] | None = None
    keypoints: int = 0
    total_results: int = 0
    depth: NDArray[np.float32] | None = None
    """The latest result's depth (a reference: results are never modified after they are handed to the sinks)."""
    depth_at: float = 0.0
    encode_due: float = -math.inf
    """Monotonic time from which the next preview may be encoded."""
    jpeg: bytes | None = None
    jpeg_seq: int = 0
    """``total_results`` when the depth of ``jpeg`` came: its sequence number."""


class PreviewHub:
    """Latest depth preview and recent result statistics per drone; a :class:`~.sinks.ResultSink`.

    ``write`` runs in the session's worker thread and only keeps statistics and
    the latest depth; :meth:`preview` encodes on demand, at most ``max_fps``
    times a second per drone. All state is behind one lock held only for
    bookkeeping, never while encoding.
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
            view.depth, view.depth_at = record.result.depth, now

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
        """A JPEG preview of ``drone_id``'s latest depth and its sequence number, or None before any result.

        Encodes one (blocking: call it in a worker thread) when a newer depth
        came since the last and that one is at least ``1 / max_fps`` old;
        otherwise returns the last one. A request that comes while another
        encodes the drone's first preview gets None.
        """
        now = self._clock()
        with self._lock:
            view = self._views.get(drone_id)
            if view is None or view.depth is None or view.depth_kind is None:
                return None
            fresh = view.jpeg is not None and view.jpeg_seq == view.total_results
            if fresh or now < view.encode_due:
                return None if view.jpeg is None else (view.jpeg, view.jpeg_seq)
            # Reserve this slot so a concurrent request for the same drone does not encode too.
            view.encode_due = now + 1.0 / self.max_fps
            depth, depth_kind, seq = view.depth, view.depth_kind, view.total_results
        jpeg, _, _ = encode_preview(depth, depth_kind, max_width=self.max_width, quality=self.quality)
        with self._lock:
            if self._views.get(drone_id) is view:  # not closed meanwhile
                if seq > view.jpeg_seq:
                    view.jpeg, view.jpeg_seq = jpeg, seq
                self.previews_encoded += 1
        return jpeg, seq

    def stats(self, drone_id: str) -> dict[str, Any] | None:
        """Result rate, latency percentiles and the latest result's shape for ``drone_id``, or None."""
        now = self._clock()
        with self._lock:
            view = self._views.get(drone_id)
            if view is None:
                return None
            results = list(view.results)
            # The preview is of the depth, on the model's grid (a strided model's is smaller than the frame).
            size = (
                None if view.depth is None else preview_size(view.depth.shape[1], view.depth.shape[0], self.max_width)
            )
            out: dict[str, Any] = {
                "depth_kind": view.depth_kind,
                "frame": None
                if view.frame_size is None
                else {"width": view.frame_size[0], "height": view.frame_size[1]},
                "keypoints": view.keypoints,
                "results": view.total_results,
                # What a preview request would show: the latest depth (encoded on that request).
                "preview": None
                if view.depth is None or size is None
                else {
                    "seq": view.total_results,
                    "width": size[0],
                    "height": size[1],
                    "age_s": round(now - view.depth_at, 2),
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
