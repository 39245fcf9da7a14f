"""The receiver in a real gateway with real aiortc drones: oversized VP8 frames refused before decoding."""

from __future__ import annotations

import psutil
from dronedepth.gateway.receiver import MarkerJitterBuffer
from gateway_fixtures import camera_for, drones, photo, running_gateway, wait_until


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def test_oversized_vp8_frames_are_refused_before_decoding_and_other_drones_go_on() -> None:
    limit = 640 * 480
    async with (
        running_gateway(max_frame_pixels=limit) as gateway,
        drones(1, photo(1920, 1080), fps=5.0) as (big,),
        drones(1, photo(320, 240)) as (small,),
    ):
        await big.connect(gateway.url, camera=camera_for(1920, 1080, focal=1500.0))
        await small.connect(gateway.url, camera=camera_for())
        session = gateway.sessions[big.drone_id]
        buffers = [t.receiver._RTCRtpReceiver__jitter_buffer for t in session.pc.getTransceivers()]  # type: ignore[attr-defined]
        assert any(isinstance(b, MarkerJitterBuffer) for b in buffers)
        await wait_until(lambda: session.dropped["frame_too_large"] >= 3, what="3 refused frames")
        before = rss_mb()
        refused = session.dropped["frame_too_large"]
        await wait_until(lambda: session.dropped["frame_too_large"] >= refused + 10, what="10 more refused frames")
        growth = rss_mb() - before
        print(f"RSS growth over 10 refused 1920x1080 frames: {growth:+.1f} MB")
        # Refused at the receiver: the decoder never produced one of these frames.
        assert session.frames_received == 0
        assert big.error_codes() == ["frame_too_large"]
        assert "1920x1080" in big.errors[0]["message"]
        assert gateway.metrics.frames_dropped.value(reason="frame_too_large") >= refused + 10
        assert growth < 64.0  # the drones' encoders share this process; a decoded 1080p frame queue grows without bound
        await small.wait_for(lambda d: len(d.keypoints) >= 3, what="the other drone's results")
        assert small.error_codes() == []
