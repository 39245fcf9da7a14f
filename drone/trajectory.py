"""Where the drone's poses come from: the :class:`PoseSource` interface and TUM trajectory files.

**The interface every pose source implements** (this module, the synthetic
scene in :mod:`drone.sources`, MAVLink in :mod:`drone.mavlink`):

- :class:`StampedPose`: ``world_from_body`` with its ``capture_time`` on the
  clock of :attr:`drone.sources.CapturedFrame.capture_time`
  (``time.monotonic()`` seconds), its ``convention`` (``enu_flu`` or
  ``ned_frd``: sources send what they have; the gateway converts NED/FRD on
  receipt) and world ``frame_id``; optional height above ground and velocity;
- :class:`PoseSource`: ``poses_for_frame(index, capture_time)`` is called in
  the event loop for every frame the client sends (``index`` counts the
  source's frames from 0 over the whole run, ``capture_time`` is the frame's),
  must not block, and returns the poses to send now (those that became known
  since the last call, oldest first; may be empty). ``close()`` releases it.
  The client stamps each pose with ``pts`` on the video clock (see
  ``docs/protocol.md``: ``round((capture_time − first frame's capture_time) ·
  90000)``) and sends a ``pose`` message.

**TUM files** (``t tx ty tz qx qy qz qw`` per line, ``#`` comments; the format
SLAM evaluation tools use): each line is ``world_from_body`` (``base_link``,
not the camera), ENU world / FLU body by default or NED/FRD when asked
(``--pose-frame ned``). Time ``t`` relative to the first line is the media
time of the frames: frame ``n`` of a video file or image folder played at
``--fps`` is at ``n / fps``, so it gets the pose at ``t₀ + n / fps``
(interpolated; none when the trajectory has no pose within 0.1 s there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.frames import Transform, enu_from_ned_pose, normalised_quaternion
from dronedepth.pose_buffer import DEFAULT_MAX_GAP_S, PoseBuffer, TimedPose
from dronedepth.protocol import PoseConvention

__all__ = ["PoseSource", "StampedPose", "TumPoseSource", "read_tum"]

_MAX_TUM_LINES: Final = 10_000_000


@dataclass(frozen=True, slots=True)
class StampedPose:
    """The body's pose at ``capture_time`` (``time.monotonic()`` seconds, the frames' clock).

    ``world_from_body`` is in ``convention`` (``enu_flu`` or ``ned_frd``),
    metres; ``velocity_m_s`` in the world's axes.
    """

    capture_time: float
    world_from_body: Transform
    convention: PoseConvention = "enu_flu"
    frame_id: str = "map"
    height_above_ground_m: float | None = None
    velocity_m_s: NDArray[np.float64] | None = None


class PoseSource(Protocol):
    """A source of the body's poses; see the module doc for the contract."""

    def poses_for_frame(self, index: int, capture_time: float) -> Sequence[StampedPose]: ...

    def close(self) -> None: ...


def read_tum(path: str | Path, *, ned: bool = False) -> PoseBuffer:
    """A TUM trajectory as a pose buffer in ENU/FLU, times relative to its first line.

    ``ned``: the file is NED world / FRD body (converted here). Raises
    :class:`ConfigError` naming the file and line of any bad entry (wrong
    column count, not a number, NaN, non-unit quaternion, time not increasing).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"could not read the pose file {str(path)!r}: {exc}") from exc
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)]
    rows = [(n, fields) for n, fields in rows if fields and not fields[0].startswith("#")]
    if not rows:
        raise ConfigError(f"the pose file {str(path)!r} holds no poses (TUM: 't tx ty tz qx qy qz qw' per line)")
    if len(rows) > _MAX_TUM_LINES:
        raise ConfigError(f"the pose file {str(path)!r} has more than {_MAX_TUM_LINES} poses")
    trajectory = PoseBuffer(capacity=max(len(rows), 2), max_gap_s=DEFAULT_MAX_GAP_S)
    start: float | None = None
    for number, fields in rows:
        where = f"{path}:{number}"
        if len(fields) != 8:
            raise ConfigError(f"{where}: a TUM line has 8 numbers 't tx ty tz qx qy qz qw', got {len(fields)}")
        try:
            values = [float(v) for v in fields]
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{where}: every value must be finite, got {' '.join(fields)}")
        start = values[0] if start is None else start
        try:
            pose = Transform(normalised_quaternion(values[4:8]), np.array(values[1:4]))
            trajectory.add(TimedPose(values[0] - start, enu_from_ned_pose(pose) if ned else pose))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except ProtocolError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return trajectory


class TumPoseSource:
    """Poses from a TUM file for frames of a video file or image folder played at ``fps``.

    Frame ``index`` is at media time ``index / fps`` from the trajectory's first
    line; its pose (ENU/FLU) is stamped with the frame's own capture time, so the
    gateway finds it exactly at the frame's ``pts``.
    """

    def __init__(self, path: str | Path, *, fps: float, ned: bool = False) -> None:
        if not fps > 0:
            raise ConfigError(f"fps must be positive, got {fps}")
        self.name = str(path)
        self.fps = fps
        self.trajectory = read_tum(path, ned=ned)

    def poses_for_frame(self, index: int, capture_time: float) -> Sequence[StampedPose]:
        match = self.trajectory.lookup(index / self.fps)
        if match.pose is None:
            return ()
        return (StampedPose(capture_time, match.pose.world_from_body),)

    def close(self) -> None:
        """Nothing to release: the file was read at start."""
