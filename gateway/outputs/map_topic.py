"""The world map on ``/map`` (rosbag2 and Foxglove): its own thread, at a modest rate, off fusion and frames.

:class:`MapPublisher` reads the :class:`~dronedepth.gateway.mapping.MapService`'s
latest published snapshot of each world frame every ``period_s`` (2 s by
default), serialises it once as a ``sensor_msgs/PointCloud2`` in that frame
(:meth:`~dronedepth.gateway.outputs.rosbag.RosEncoder.map_message`) and hands
it to its targets: the :class:`~dronedepth.gateway.outputs.rosbag.BagSink`
(recorded when it changed, in the gateway-level ``fleet_<UTC>`` bag) and the
:class:`~dronedepth.gateway.outputs.foxglove.FoxgloveSink` (sent every period,
for clients that subscribe late). Reading a snapshot never waits for the
fusion thread, and the frames' workers never see this thread. :meth:`close`
publishes the last snapshots once more, so a bag ends with the final map.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from dronedepth.gateway.outputs.rosbag import RosEncoder, RosMessage

from dronedepth.protocol import WORLD_FRAMES

if TYPE_CHECKING:
    from dronedepth.gateway.fusion import OccupiedVoxels

__all__ = ["MAP_PERIOD_S", "MapPublisher", "MapSnapshots", "MapTarget"]

log = logging.getLogger(__name__)

MAP_PERIOD_S: Final = 2.0
"""Seconds between two ``/map`` messages: a map of 10⁵ voxels is 1.2 MB per message."""


class MapSnapshots(Protocol):
    def snapshot(self, frame_id: str) -> OccupiedVoxels | None: ...


@runtime_checkable
class MapTarget(Protocol):
    """An output that takes world-map messages (the bag and Foxglove sinks)."""

    @property
    def encoder(self) -> RosEncoder: ...

    @property
    def repeat_map(self) -> bool:
        """True: give it the latest map every period even unchanged; False: only a new one."""
        ...

    def write_map(self, message: RosMessage, stamp_ns: int) -> None: ...


class MapPublisher:
    """Publishes the maps of ``snapshots`` to ``targets`` every ``period_s`` from its own thread (see the module)."""

    def __init__(
        self, snapshots: MapSnapshots, targets: Sequence[MapTarget], *, period_s: float = MAP_PERIOD_S
    ) -> None:
        if not targets:
            raise ValueError("map publisher: no target")
        self.snapshots = snapshots
        self.targets = tuple(targets)
        self.encoder = targets[0].encoder
        self.period_s = period_s
        self.published = 0
        """Messages handed to the targets so far (each target counted)."""
        self._sent: dict[str, OccupiedVoxels] = {}
        """Per world frame the snapshot last published (the service publishes a new object when the map changes)."""
        self._message: dict[str, tuple[RosMessage, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def targets_in(outputs: Iterable[object]) -> list[MapTarget]:
        """The outputs that take world-map messages."""
        return [output for output in outputs if isinstance(output, MapTarget)]

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the map publisher is already started")
        self._thread = threading.Thread(target=self._run, name="gateway-map-topic", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop the thread, then publish the newest maps once more (call it before the targets close)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.publish()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.publish()

    def publish(self) -> None:
        """Hand each world frame's snapshot to the targets that want it now (any thread; one call at a time)."""
        with self._lock:
            for frame_id in WORLD_FRAMES:
                self._publish(frame_id)

    def _publish(self, frame_id: str) -> None:
        snapshot = self.snapshots.snapshot(frame_id)
        if snapshot is None:
            return
        changed = self._sent.get(frame_id) is not snapshot
        if changed:
            self._message[frame_id] = (self.encoder.map_message(snapshot), round(snapshot.stamp * 1e9))
            self._sent[frame_id] = snapshot
        message, stamp_ns = self._message[frame_id]
        for target in self.targets:
            if not (changed or target.repeat_map):
                continue
            try:
                target.write_map(message, stamp_ns)
            except Exception:  # one failing output must not stop the others
                log.exception("map: writing %s to %s failed", message.topic, type(target).__name__)
            else:
                self.published += 1
