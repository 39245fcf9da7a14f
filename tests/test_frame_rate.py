"""Frame-rate advice: the pure advisor, the drone's track honouring it, and both ends over real WebRTC."""

from __future__ import annotations

import asyncio
import itertools
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from gateway_fixtures import TOKEN, FakeDepthClient, running_gateway
from test_drone_track import ClockSource

from dronedepth.drone.client import DroneClient, DroneConfig, DroneSummary
from dronedepth.drone.track import SourceTrack
from dronedepth.errors import ConfigError, ProtocolError
from dronedepth.gateway.frame_rate import FleetShare, FrameRateAdvisor, FrameRateConfig
from dronedepth.protocol import FrameRateMessage, decode, encode

# --------------------------------------------------------------------------------------------- the advisor


class Counts:
    """A session's running counts, advanced one period at a time (``latency_ms``: each processed frame's)."""

    def __init__(self) -> None:
        self.time_s = 0.0
        self.received = self.processed = self.superseded = 0
        self.latency_ms = 0.0

    def period(
        self, received: int, processed: int, superseded: int, seconds: float = 1.0, latency_ms: float = 20.0
    ) -> tuple:
        self.time_s += seconds
        self.received += received
        self.processed += processed
        self.superseded += superseded
        self.latency_ms += processed * latency_ms
        return self.time_s, self.received, self.processed, self.superseded, self.latency_ms


def test_a_drone_the_gateway_keeps_up_with_gets_no_advice() -> None:
    advisor, counts = FrameRateAdvisor(), Counts()
    assert advisor.update(*counts.period(0, 0, 0)) is None  # the first sample is the baseline
    for _ in range(5):
        assert advisor.update(*counts.period(30, 30, 0)) is None
    assert advisor.advised_fps is None


def test_superseded_frames_bring_advice_of_headroom_times_the_rate_processed() -> None:
    advisor, counts = FrameRateAdvisor(), Counts()
    advisor.update(*counts.period(0, 0, 0))
    message = advisor.update(*counts.period(30, 10, 20))
    assert message == FrameRateMessage(max_fps=12.5) and advisor.advised_fps == 12.5
    # Saturated at the advice: about a fifth superseded, processed about the same: nothing new to say.
    for _ in range(5):
        assert advisor.update(*counts.period(12, 10, 2)) is None


def test_room_raises_the_advice_and_a_drone_slower_than_it_lifts_it() -> None:
    advisor, counts = FrameRateAdvisor(), Counts()
    advisor.update(*counts.period(0, 0, 0))
    advisor.update(*counts.period(30, 8, 22))
    assert advisor.advised_fps == 10.0
    raised = advisor.update(*counts.period(10, 10, 0))  # sends what it was advised, all processed: probe up
    assert raised is not None and raised.max_fps == 12.5
    raised = advisor.update(*counts.period(12, 12, 0))
    assert raised is not None and raised.max_fps == pytest.approx(15.625)
    # 12 fps is all it has, a step below the advice (a source that halves, thirds...): hold, no flip-flop.
    assert advisor.update(*counts.period(12, 12, 0)) is None and advisor.advised_fps == pytest.approx(15.625)
    lifted = advisor.update(*counts.period(9, 9, 0))  # well below: the advice no longer matters
    assert lifted == FrameRateMessage(max_fps=None) and advisor.advised_fps is None


def test_an_outage_a_stall_and_a_stray_superseded_frame_leave_the_advice_alone() -> None:
    advisor, counts = FrameRateAdvisor(), Counts()
    advisor.update(*counts.period(0, 0, 0))
    assert advisor.update(*counts.period(30, 29, 1)) is None  # one frame of 30 (a repaired loss's burst)
    assert advisor.update(*counts.period(30, 0, 0)) is None  # inference down: dropped, not superseded
    assert advisor.update(*counts.period(30, 0, 5)) is None  # nothing processed at all: no pace to follow
    assert advisor.advised_fps is None


def test_periods_shorter_than_half_the_configured_one_are_merged() -> None:
    advisor, counts = FrameRateAdvisor(FrameRateConfig(period_s=1.0)), Counts()
    advisor.update(*counts.period(0, 0, 0))
    assert advisor.update(*counts.period(15, 5, 10, seconds=0.2)) is None  # too short to judge
    message = advisor.update(*counts.period(15, 5, 10, seconds=0.8))  # judged over the whole second
    assert message is not None and message.max_fps == 12.5


def test_a_closed_loop_converges_without_chatter_and_lets_go_when_capacity_returns() -> None:
    """A 30 fps drone that honours the advice, a gateway that processes at most ``capacity`` of its frames/s."""
    advisor, counts = FrameRateAdvisor(), Counts()
    advisor.update(*counts.period(0, 0, 0))
    source_fps, messages = 30.0, []

    def run(capacity: float, seconds: int) -> float:
        superseded_share = 0.0
        for _ in range(seconds):
            sent = min(source_fps, advisor.advised_fps or source_fps)
            processed = min(sent, capacity)
            superseded_share = (sent - processed) / sent
            message = advisor.update(*counts.period(round(sent), round(processed), round(sent - processed)))
            if message is not None:
                messages.append(message.max_fps)
        return superseded_share

    share = run(capacity=8.0, seconds=20)
    assert advisor.advised_fps == pytest.approx(10.0) and share <= 0.2  # was 73 % dropped without advice
    assert len(messages) == 1
    run(capacity=40.0, seconds=20)  # the other drones left: the advice climbs past the drone's own 30 fps
    assert advisor.advised_fps is not None and advisor.advised_fps > source_fps and len(messages) <= 7
    assert messages == sorted(messages), "it only climbed: no flip-flop"
    source_fps = 10.0  # the drone slows down on its own: the limit is lifted
    run(capacity=40.0, seconds=3)
    assert advisor.advised_fps is None and messages[-1] is None


def test_over_the_latency_budget_the_advice_backs_off_and_near_it_stops_climbing() -> None:
    advisor, counts = FrameRateAdvisor(FrameRateConfig(latency_budget_ms=50.0)), Counts()
    advisor.update(*counts.period(0, 0, 0))
    # Nothing superseded, yet frames spend 80 ms in a saturated gateway: ask for 0.8 x the rate processed.
    assert advisor.update(*counts.period(20, 20, 0, latency_ms=80.0)) == FrameRateMessage(max_fps=16.0)
    assert advisor.update(*counts.period(16, 16, 0, latency_ms=60.0)) == FrameRateMessage(max_fps=12.8)
    # Within the budget but near it (over 0.75 x 50 ms): room would raise the advice, here it holds...
    assert advisor.update(*counts.period(13, 13, 0, latency_ms=45.0)) is None
    # ... and frames superseded near the budget may lower it, not raise it.
    assert advisor.update(*counts.period(13, 8, 5, latency_ms=45.0)) == FrameRateMessage(max_fps=10.0)
    assert advisor.update(*counts.period(10, 9, 1, latency_ms=45.0)) is None  # 1.25 x 9 > 10: held, not raised
    # Well within it: the ordinary climb resumes.
    assert advisor.update(*counts.period(10, 10, 0, latency_ms=20.0)) == FrameRateMessage(max_fps=12.5)


def test_without_a_budget_latency_changes_nothing() -> None:
    advisor, counts = FrameRateAdvisor(), Counts()
    advisor.update(*counts.period(0, 0, 0))
    assert advisor.update(*counts.period(30, 30, 0, latency_ms=500.0)) is None
    assert advisor.update(*counts.period(30, 10, 20, latency_ms=500.0)) == FrameRateMessage(max_fps=12.5)


def test_a_fleet_on_a_saturated_gateway_backs_off_together_to_the_budget_and_stays() -> None:
    """8 drones at 30 fps on a gateway of 100 frames/s whose latency grows as it fills: 12 ms idle, 12 / (1 - load)
    (a single-server queue). Each drone's advisor sees the gateway's latency; all honour their advice."""
    budget, capacity, idle_ms = 40.0, 100.0, 12.0
    advisors = [FrameRateAdvisor(FrameRateConfig(latency_budget_ms=budget)) for _ in range(8)]
    counts = [Counts() for _ in advisors]
    for advisor, count in zip(advisors, counts, strict=True):
        advisor.update(*count.period(0, 0, 0))
    history = []
    for _ in range(40):
        sent = [min(30.0, a.advised_fps or 30.0) for a in advisors]
        load = min(sum(sent) / capacity, 0.97)
        latency = idle_ms / (1 - load)
        share = min(1.0, capacity / sum(sent))
        for advisor, count, fps in zip(advisors, counts, sent, strict=True):
            processed = fps * share
            advisor.update(*count.period(round(fps), round(processed), round(fps - processed), latency_ms=latency))
        history.append((sum(sent), latency))
    without_budget_ms = idle_ms / (1 - 0.97)  # every advisor at 1.25 x its share: the gateway stays full
    settled = history[-10:]
    assert all(latency <= budget for _, latency in settled), settled
    assert min(rate for rate, _ in settled) >= 0.5 * capacity, "fresher frames, but not a starved fleet"
    assert max(latency for _, latency in settled) < without_budget_ms / 5


def _saturated_fleet(
    fleet: FleetShare | None, budget_ms: float | None, periods: int = 30
) -> tuple[list[FrameRateAdvisor], list[tuple[float, float]]]:
    """6 drones at 30 fps on a gateway of 60 frames/s that shares its capacity in proportion to what each sends
    (latency 12 ms idle, 12 / (1 - load)); drone 0 starts starved, advised 1.5 fps. Returns the advisors and
    the (total sent, latency) of each period."""
    advisors = [FrameRateAdvisor(FrameRateConfig(latency_budget_ms=budget_ms), fleet, f"d{i}") for i in range(6)]
    counts = [Counts() for _ in advisors]
    for advisor, count in zip(advisors, counts, strict=True):
        advisor.update(*count.period(0, 0, 0))
    advisors[0].advised_fps = 1.5
    history = []
    for _ in range(periods):
        sent = [min(30.0, a.advised_fps or 30.0) for a in advisors]
        share = min(1.0, 60.0 / sum(sent))
        latency = 12.0 / (1 - min(sum(sent) / 60.0, 0.97))
        for advisor, count, fps in zip(advisors, counts, sent, strict=True):
            processed = fps * share
            advisor.update(*count.period(round(fps), round(processed), round(fps - processed), latency_ms=latency))
        history.append((sum(sent), latency))
    return advisors, history


@pytest.mark.parametrize("budget_ms", [None, 40.0], ids=["pace", "latency budget"])
def test_without_a_fleet_share_a_drone_advised_low_stays_starved(budget_ms: float | None) -> None:
    # Measured: 2.4 against 15 fps for the others (pace), 1 against 8 (budget): each advice follows its own pace.
    advisors, _ = _saturated_fleet(None, budget_ms)
    starved = advisors[0].advised_fps
    assert starved is not None and starved < 0.35 * min(a.advised_fps or 30.0 for a in advisors[1:])


@pytest.mark.parametrize("budget_ms", [None, 40.0], ids=["pace", "latency budget"])
def test_the_fleet_share_lifts_a_starved_drone_to_an_equal_advice(budget_ms: float | None) -> None:
    fleet = FleetShare()
    advisors, history = _saturated_fleet(fleet, budget_ms)
    advice = [a.advised_fps for a in advisors]
    assert None not in advice and max(advice) <= 1.3 * min(advice), advice  # type: ignore[type-var, operator]
    if budget_ms is not None:
        assert all(latency <= budget_ms for _, latency in history[-10:]), history[-10:]
    for advisor in advisors:
        advisor.close()
    assert fleet.fair_share_fps() is None, "closed sessions leave the share"


def test_the_fair_share_is_the_mean_of_the_drones_with_results() -> None:
    fleet = FleetShare()
    assert fleet.fair_share_fps() is None
    fleet.report("a", 10.0)
    fleet.report("b", 4.0)
    fleet.report("c", 0.0)  # no results yet (no camera, an outage): not a drone to share with
    assert fleet.fair_share_fps() == 7.0
    fleet.report("a", 6.0)
    fleet.forget("b")
    assert fleet.fair_share_fps() == 6.0


@pytest.mark.parametrize(
    "settings",
    [
        {"headroom": 1.0},
        {"period_s": 0},
        {"min_fps": 0.1},
        {"hysteresis": 1.0},
        {"min_superseded": -1},
        {"latency_budget_ms": 0.0},
        {"latency_backoff": 0.9},  # a step the 15 % hysteresis would swallow
        {"latency_room": 1.0},
    ],
)
def test_bad_settings_are_refused(settings: dict) -> None:
    with pytest.raises(ConfigError, match="frame rate advice"):
        FrameRateConfig(**settings)


def test_the_message_round_trips_and_refuses_nonsense() -> None:
    assert decode(encode(FrameRateMessage(max_fps=7.5))) == FrameRateMessage(max_fps=7.5)
    assert decode('{"type": "frame_rate", "max_fps": null}') == FrameRateMessage(max_fps=None)
    for bad in (
        '{"type": "frame_rate"}',
        '{"type": "frame_rate", "max_fps": 0}',
        '{"type": "frame_rate", "max_fps": "9"}',
    ):
        with pytest.raises(ProtocolError, match="max_fps"):
            decode(bad)


# --------------------------------------------------------------------------------------------- the drone's track


async def test_the_track_skips_source_frames_to_honour_the_advice() -> None:
    times = [i / 30 for i in range(61)]  # two seconds of a 30 fps camera
    skipped: list[None] = []
    with ThreadPoolExecutor(1) as executor:
        track = SourceTrack(ClockSource(times), fps=1000, executor=executor, on_skip=lambda: skipped.append(None))
        sent = [await track.recv() for _ in range(5)]  # no advice: every frame
        track.max_fps = 10.0
        sent += [await track.recv() for _ in range(10)]
        track.max_fps = None
        sent += [await track.recv() for _ in range(5)]
    captured = [frame.pts / 90_000 for frame in sent]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(captured)]
    assert all(0.032 <= g <= 0.035 for g in gaps[:4]), gaps
    assert all(0.099 <= g <= 0.101 for g in gaps[5:14]), gaps  # every third frame at 10 fps
    assert all(0.032 <= g <= 0.035 for g in gaps[15:]), gaps
    assert len(skipped) == 2 * 10  # two source frames skipped before each of the 10 advised ones


@pytest.mark.parametrize(("advised", "expected"), [(24.0, 24), (15.0, 15), (20.0, 20), (7.0, 7)])
async def test_the_track_averages_at_most_the_advice_from_a_faster_source(advised: float, expected: int) -> None:
    """A 30 fps camera with a few milliseconds of jitter: over 4 s, the advised rate on average, never more."""
    jitter = [0.004, -0.003, 0.0, 0.002, -0.004]
    times = [i / 30 + jitter[i % 5] for i in range(121)]
    with ThreadPoolExecutor(1) as executor:
        track = SourceTrack(ClockSource(times), fps=1000, executor=executor)
        await track.recv()
        track.max_fps = advised
        while (frame := await track.recv()) and frame.pts / 90_000 < 4.0 - 1e-6:
            pass
        sent = track.frames  # including the first, unadvised frame and the one past 4 s
    assert expected - 1 <= (sent - 2) / 4.0 <= expected, sent


# --------------------------------------------------------------------------------------------- end to end


async def _fly(advise: bool, latency_budget_ms: float | None = None) -> tuple[DroneSummary, float | None]:
    """A 30 fps drone against a gateway whose depth takes 0.1 s: it cannot process more than ~10 frames/s.

    The advice comes after about two seconds (a baseline period, then one with frames superseded). Returns the
    drone's summary and the advice the gateway's Prometheus registry showed for it meanwhile."""
    advice = FrameRateConfig(latency_budget_ms=latency_budget_ms) if advise else None
    async with running_gateway(FakeDepthClient(delay=0.1), frame_rate_advice=advice) as gateway:
        config = DroneConfig(
            gateway=gateway.url, token=TOKEN, width=160, height=120, fps=30.0, max_frames=90, result_timeout=30.0
        )
        client = DroneClient(config)
        flight = asyncio.create_task(client.run())
        shown = None
        async with asyncio.timeout(60):
            while not flight.done():
                metrics = gateway.metrics.render()
                if found := re.search(r'dronedepth_drone_advised_fps\{drone="[^"]+"\} ([0-9.]+)', metrics):
                    shown = float(found.group(1))
                await asyncio.sleep(0.2)
        return await flight, shown


async def test_a_drone_faster_than_the_gateway_is_asked_to_slow_down_and_does() -> None:
    summary, shown = await _fly(advise=True)
    assert summary.results > 0
    assert summary.advised_fps is not None and summary.advised_fps < 30.0, summary
    assert shown == pytest.approx(summary.advised_fps, abs=0.01), "the advice in force is on /metrics"
    assert summary.frames_skipped > 0, "the drone skipped source frames instead of sending them"


async def test_a_latency_budget_below_the_gateways_latency_asks_for_ever_fewer_frames() -> None:
    # Every frame spends over 100 ms in this gateway (its depth alone takes 0.1 s): over a 50 ms budget, the
    # advice falls each second below the ~12.5 fps that the pace alone would ask for.
    summary, shown = await _fly(advise=True, latency_budget_ms=50.0)
    assert summary.results > 0
    assert summary.advised_fps is not None and summary.advised_fps < 6.0, summary
    # /metrics is sampled every 0.2 s and the advice still falls each second: the last sample may lag the
    # last advice, but every advice was under the ~12.5 fps the pace alone asks for.
    assert shown is not None and shown < 10.0


async def test_without_advice_the_drone_sends_every_frame() -> None:
    summary, shown = await _fly(advise=False)
    assert summary.results > 0 and summary.advised_fps is None and summary.frames_skipped == 0 and shown is None
