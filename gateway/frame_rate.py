"""Frame-rate advice: ask each drone for no more frames than the gateway processes for it.

A session processes the newest frame and drops (``superseded``) the ones that
arrive while it is busy. A dropped frame still cost the drone an encode and
radio time, and the gateway an RTP receive and a VP8 decode (inter frames
cannot be skipped): at 16 drones × 30 fps the gateway decoded 480 frames/s to
process 60. :class:`FrameRateAdvisor` turns a session's counts, sampled once
a period, into a ``frame_rate`` message (see
:class:`~dronedepth.protocol.FrameRateMessage`):

- **Frames superseded** (more than ``min_superseded`` of those received in
  the period): advise ``headroom`` × the rate processed. The drone then sends
  slightly more than the gateway takes, so the gateway never waits for a frame
  and at most about ``1 − 1 / headroom`` of what arrives is dropped.
- **Nothing superseded while the advice binds** (the drone sends about what
  was advised): there is room, advise ``headroom`` × more, once a period, until
  frames are superseded again.
- **Nothing superseded and the drone sends well below the advice** (under
  ``1 / headroom²`` of it: its own rate is lower): the advice no longer
  matters; lift it (``max_fps`` null). In between, hold: a drone whose source
  can only step its rate (every 2nd, 3rd frame) may sit a step below the advice
  without that meaning room, and lifting there would flip-flop.

With a **latency budget** (``latency_budget_ms``), the advice also keeps the
drone's frames young: a frame's time in the gateway (decoded → result ready,
``timing.total``) grows once the gateway's cores are saturated, because every
frame then waits for CPU, not only for the newest-frame slot. Over the budget
(the period's mean), the advice is ``latency_backoff`` × the rate processed
(× the fair share, below, when the advisor has one);
between ``latency_room`` × the budget and the budget it may fall but not rise;
below, the rules above apply. All drones share the cores, so all see the
latency and back off together until the gateway runs below saturation: fewer
results per second, each fresher. The right budget depends on the model and
the hardware (it must exceed a frame's latency on an idle gateway), so there
is none by default.

**Fair shares.** Each drone's advice follows its own pace, and a pace is
partly the advice's doing: a drone asked for fewer frames has fewer
processed, and 1.25 × that is a lower advice still, while a drone left alone
keeps its frames coming. With a :class:`FleetShare` (one per gateway process,
every session's advisor reporting its rate processed to it), the advice never
pushes a drone below the fair share, the mean rate processed per streaming
drone: frames superseded ask for ``headroom`` × the larger of the two, and over
the latency budget every drone is asked for ``latency_backoff`` × the share,
the same for all, so they back off together and end equal.

A new advice is sent only when it differs from the last by more than
``hysteresis``. Frames dropped for other reasons (an inference outage, no
camera yet) say nothing about the gateway's pace and leave the advice alone.
Pure: no clock, no I/O; the session calls :meth:`FrameRateAdvisor.update`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dronedepth.errors import ConfigError
from dronedepth.protocol import MAX_ADVISED_FPS, MIN_ADVISED_FPS, FrameRateMessage

__all__ = ["FleetShare", "FrameRateAdvisor", "FrameRateConfig"]


@dataclass(frozen=True, slots=True)
class FrameRateConfig:
    """How the advice follows a session's pace (seconds, frames per second, fractions)."""

    period_s: float = 1.0
    headroom: float = 1.25
    min_fps: float = 1.0
    hysteresis: float = 0.15
    min_superseded: float = 0.05
    """Fraction of a period's received frames that must be superseded to count: frames held behind a repaired
    loss arrive together, and one of them may be superseded on a gateway with room to spare."""
    latency_budget_ms: float | None = None
    """The most a frame should spend in the gateway, on average over a period (None: no budget)."""
    latency_backoff: float = 0.8
    latency_room: float = 0.75

    def __post_init__(self) -> None:
        checks = {
            "period_s": self.period_s > 0,
            "headroom": self.headroom > 1,
            "min_fps": MIN_ADVISED_FPS <= self.min_fps <= MAX_ADVISED_FPS,
            "hysteresis": 0 <= self.hysteresis < 1,
            "min_superseded": 0 <= self.min_superseded < 1,
            "latency_budget_ms": self.latency_budget_ms is None or self.latency_budget_ms > 0,
            "latency_backoff": 0 < self.latency_backoff < 1 - self.hysteresis,  # a backoff the hysteresis lets out
            "latency_room": 0 < self.latency_room < 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if value is None and ok:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and ok):
                raise ConfigError(f"frame rate advice: bad {name} {value!r}")


@dataclass(frozen=True, slots=True)
class _Sample:
    time_s: float
    received: int
    processed: int
    superseded: int
    latency_ms: float


class FleetShare:
    """The rates processed of the drones one gateway process serves, for their advisors' fair share."""

    def __init__(self) -> None:
        self._processed_fps: dict[str, float] = {}

    def report(self, drone_id: str, processed_fps: float) -> None:
        self._processed_fps[drone_id] = processed_fps

    def forget(self, drone_id: str) -> None:
        self._processed_fps.pop(drone_id, None)

    def fair_share_fps(self) -> float | None:
        """The mean rate processed per drone with results (None: no drone has any)."""
        rates = [fps for fps in self._processed_fps.values() if fps > 0]
        return sum(rates) / len(rates) if rates else None


class FrameRateAdvisor:
    """One session's frame-rate advice; feed it the session's running counts once per ``period_s``.

    With ``fleet`` (shared by the advisors of one gateway process, ``drone_id`` naming this one), the
    advice keeps to the fleet's fair share (see the module's *Fair shares*); call :meth:`close` when the
    session ends.
    """

    def __init__(
        self, config: FrameRateConfig | None = None, fleet: FleetShare | None = None, drone_id: str = ""
    ) -> None:
        self.config = config or FrameRateConfig()
        self.advised_fps: float | None = None
        """The advice in force (None: no limit)."""
        self._last: _Sample | None = None
        self._fleet = fleet
        self._drone_id = drone_id

    def close(self) -> None:
        """Leave the fleet's share: a drone that left no longer counts."""
        if self._fleet is not None:
            self._fleet.forget(self._drone_id)

    def update(
        self, time_s: float, received: int, processed: int, superseded: int, latency_ms: float = 0.0
    ) -> FrameRateMessage | None:
        """The advice to send now, or None when there is nothing new to say.

        ``time_s`` is a monotonic clock in seconds; the counts are the
        session's totals since it started (frames received from the drone,
        processed into results, dropped as superseded), ``latency_ms`` the
        sum of the processed frames' times in the gateway (``timing.total``).
        """
        sample = _Sample(time_s, received, processed, superseded, latency_ms)
        last = self._last
        if last is None or time_s - last.time_s < 0.5 * self.config.period_s:
            self._last = last or sample
            return None
        self._last = sample
        elapsed = time_s - last.time_s
        arrived = received - last.received
        received_fps = arrived / elapsed
        processed_fps = (processed - last.processed) / elapsed
        crowded = superseded - last.superseded > self.config.min_superseded * max(arrived, 1)
        over_budget, near_budget = self._latency(last, sample)
        share = None
        if self._fleet is not None:
            self._fleet.report(self._drone_id, processed_fps)
            share = self._fleet.fair_share_fps()
        headroom = self.config.headroom
        advised = self.advised_fps
        target: float | None
        if over_budget:
            target = max(self.config.min_fps, (share or processed_fps) * self.config.latency_backoff)
        elif crowded:
            if processed_fps <= 0:  # a stall (nothing processed at all) is not a pace to follow
                return None
            target = max(self.config.min_fps, max(processed_fps, share or 0.0) * headroom)
            if near_budget and advised is not None:  # no rise near the budget, but up to the share
                target = min(target, max(advised, share or 0.0))
        elif advised is None:
            return None
        elif received_fps * headroom >= advised:  # the drone sends about what was advised: there is room
            if not near_budget:
                target = advised * headroom
            elif share is not None and share > advised:  # near the budget a drone below the share still rises
                target = share
            else:
                return None
        elif received_fps * headroom * headroom >= advised:  # a step below the advice: hold
            return None
        else:  # the drone sends well below the advice on its own: the advice no longer matters
            target = None
        return self._advise(target)

    def _latency(self, last: _Sample, now: _Sample) -> tuple[bool, bool]:
        """Whether the period's mean gateway latency is over the budget, and whether it is near it."""
        budget = self.config.latency_budget_ms
        processed = now.processed - last.processed
        if budget is None or processed <= 0:  # no frame, no latency: nothing to say about it
            return False, False
        mean_ms = (now.latency_ms - last.latency_ms) / processed
        return mean_ms > budget, mean_ms > budget * self.config.latency_room

    def _advise(self, target: float | None) -> FrameRateMessage | None:
        advised = self.advised_fps
        if target is not None:
            target = min(target, MAX_ADVISED_FPS)
            if advised is not None and abs(target - advised) <= self.config.hysteresis * advised:
                return None
        elif advised is None:
            return None
        self.advised_fps = target
        return FrameRateMessage(max_fps=target)
