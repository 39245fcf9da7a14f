"""The receiver in a real gateway with real aiortc drones: oversized VP8 and H.264 frames refused before decoding."""

from __future__ import annotations

import psutil
import pytest
from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Decoder
from aiortc.jitterbuffer import JitterFrame
from av.frame import Frame
from gateway_fixtures import TestDrone, camera_for, drones, photo, running_gateway, wait_until

from dronedepth.gateway.receiver import MarkerJitterBuffer


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


def prefer_h264(drone: TestDrone) -> None:
    """Offer H.264 only on the drone's video transceiver (aiortc offers VP8 first otherwise)."""
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    for transceiver in drone.pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(h264)


async def test_oversized_h264_frames_are_refused_before_decoding_and_other_drones_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[int] = []
    decode = H264Decoder.decode

    def counting_decode(self: H264Decoder, encoded_frame: JitterFrame) -> list[Frame]:
        decoded.append(len(encoded_frame.data))
        return decode(self, encoded_frame)

    monkeypatch.setattr(H264Decoder, "decode", counting_decode)
    async with (
        running_gateway(max_frame_pixels=640 * 480) as gateway,
        drones(1, photo(1920, 1080), fps=5.0) as (big,),
        drones(1, photo(320, 240)) as (small,),
    ):
        prefer_h264(big)
        await big.connect(gateway.url, camera=camera_for(1920, 1080, focal=1500.0))
        await small.connect(gateway.url, camera=camera_for())
        assert "H264/90000" in big.pc.remoteDescription.sdp and "VP8/90000" not in big.pc.remoteDescription.sdp
        session = gateway.sessions[big.drone_id]
        await wait_until(lambda: session.dropped["frame_too_large"] >= 5, what="5 refused H.264 frames")
        await small.wait_for(lambda d: len(d.keypoints) >= 3, what="the other drone's results")
        # Refused at the receiver, from the SPS: the H.264 decoder never saw one of these frames.
        assert decoded == []
        assert session.frames_received == 0
        assert big.error_codes() == ["frame_too_large"]
        assert "1920x1080" in big.errors[0]["message"]
        assert small.error_codes() == []
