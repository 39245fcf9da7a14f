"""The newest-frame slot: frames that come together while the session is idle are all processed, stale ones dropped.

A frame held behind a repaired packet loss leaves the receiver together with
its successor; neither is stale when the session is idle. A frame is stale
when a newer one arrives while it waits for a busy session or for an
inference request slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gateway_fixtures import FakeDepthClient, camera_for, gateway_config, photo
from numpy.typing import NDArray
from test_session import FakeChannel, FakeTrack, started_session

from dronedepth import protocol
from dronedepth.gateway.session import SUPERSEDED, DroneSession, LatestFrame

FRAME_TICKS = 6000
"""RTP ticks between frames at 15 fps (90 kHz clock)."""


class GatedDepthClient(FakeDepthClient):
    """Fake depth whose answers wait for ``gate``; ``started`` is set when a request is in."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def infer(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        self.started.set()
        await self.gate.wait()
        return await super().infer(rgb)


class HeldAdmission:
    """An inference request slot that the test opens: ``asked`` is set once a frame waits for it."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.opened = asyncio.Event()

    async def __aenter__(self) -> None:
        self.asked.set()
        await self.opened.wait()

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.fixture
async def idle_session() -> AsyncIterator[tuple[DroneSession, FakeChannel, FakeTrack, GatedDepthClient]]:
    executor = ThreadPoolExecutor(2)
    client = GatedDepthClient()
    session, channel, track = started_session("slot", client, executor, config=gateway_config(idle_timeout=60))
    channel.receive(protocol.encode(camera_for()))
    yield session, channel, track, client
    await session.close("test over")
    executor.shutdown()


def answered(channel: FakeChannel) -> list[int]:
    return [m["pts"] for m in channel.keypoints()]


def accounted(session: DroneSession) -> int:
    return session.frames_processed + sum(session.dropped.values())


async def test_an_item_put_while_the_consumer_waits_is_handed_over_not_replaced() -> None:
    slot = LatestFrame()
    getter = asyncio.ensure_future(slot.get())
    await asyncio.sleep(0)  # the consumer now waits
    assert slot.put("repaired") is False
    assert slot.put("successor") is False  # the first is in the consumer's hands: it replaced nothing
    assert await getter == "repaired"
    assert slot.peek() == "successor"
    assert slot.put("newer") is True  # "successor" waited, not taken: this one is stale
    assert await slot.get() == "newer"
    assert slot.clear() is False


async def test_a_repaired_frame_and_its_successor_are_both_processed_when_the_session_is_idle(
    idle_session: tuple[DroneSession, FakeChannel, FakeTrack, GatedDepthClient],
) -> None:
    session, channel, track, _ = idle_session
    rgb = photo()
    track.push(rgb, pts=0)
    await channel.wait_for(lambda: len(channel.keypoints()) == 1)
    # The receiver releases the repaired frame and the one that waited behind it together.
    track.push(rgb, pts=FRAME_TICKS)
    track.push(rgb, pts=2 * FRAME_TICKS)
    await channel.wait_for(lambda: accounted(session) == 3)
    assert answered(channel) == [0, FRAME_TICKS, 2 * FRAME_TICKS]
    assert session.dropped[SUPERSEDED] == 0


async def test_a_frame_that_waits_while_a_newer_one_arrives_is_still_superseded(
    idle_session: tuple[DroneSession, FakeChannel, FakeTrack, GatedDepthClient],
) -> None:
    session, channel, track, client = idle_session
    rgb = photo()
    client.gate.clear()
    track.push(rgb, pts=0)
    await client.started.wait()
    # The session is busy with frame 0: frame 1 waits in the slot and frame 2 makes it stale.
    track.push(rgb, pts=FRAME_TICKS)
    await channel.wait_for(lambda: session.frames_received == 2)
    track.push(rgb, pts=2 * FRAME_TICKS)
    await channel.wait_for(lambda: session.dropped[SUPERSEDED] == 1)
    client.gate.set()
    await channel.wait_for(lambda: accounted(session) == 3)
    assert answered(channel) == [0, 2 * FRAME_TICKS]
    assert session.dropped[SUPERSEDED] == 1


async def test_a_frame_waiting_for_a_request_slot_is_superseded_by_one_arriving_meanwhile(
    idle_session: tuple[DroneSession, FakeChannel, FakeTrack, GatedDepthClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    session, channel, track, _ = idle_session
    held = HeldAdmission()
    monkeypatch.setattr(session._ctx.depth, "admission", lambda: held)
    rgb = photo()
    track.push(rgb, pts=0)
    await held.asked.wait()
    track.push(rgb, pts=FRAME_TICKS)
    await channel.wait_for(lambda: session.frames_received == 2)
    held.opened.set()
    await channel.wait_for(lambda: accounted(session) == 2)
    assert answered(channel) == [FRAME_TICKS]
    assert session.dropped[SUPERSEDED] == 1
    assert session._ctx.metrics.frames_dropped.value(reason=SUPERSEDED) == 1
