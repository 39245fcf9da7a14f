"""gateway/receiver.py: release at the marker packet, loss and reordering as before, the VP8 and H.264 size gate."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc import RTCRtpReceiver
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from test_frame_headers import libx264

from dronedepth.gateway.frame_headers import encoded_frame_size, vp8_keyframe_size
from dronedepth.gateway.receiver import FrameSizeGate, MarkerJitterBuffer, check_aiortc_internals, install

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


def packet(seq: int, timestamp: int, data: bytes, *, marker: bool = False) -> RtpPacket:
    rtp = RtpPacket(payload_type=96, sequence_number=seq % 65536, timestamp=timestamp, marker=int(marker))
    rtp._data = data  # type: ignore[attr-defined]  # what aiortc's receiver sets after depayloading
    return rtp


def frame_packets(first_seq: int, timestamp: int, count: int) -> list[RtpPacket]:
    """One frame of ``count`` packets; payload bytes name the frame and the packet."""
    return [packet(first_seq + i, timestamp, bytes([timestamp % 256, i]), marker=i == count - 1) for i in range(count)]


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, JitterFrame]]:
    """(index of the packet whose arrival released it, frame) for every frame released."""
    released = []
    for index, rtp in enumerate(packets):
        _, frame = buffer.add(rtp)
        if frame is not None:
            released.append((index, frame))
    return released


def test_in_order_frames_are_released_at_their_marker_packet() -> None:
    packets = frame_packets(100, 3000, 3) + frame_packets(103, 6000, 2) + frame_packets(105, 9000, 4)
    released = feed(MarkerJitterBuffer(), packets)
    assert [index for index, _ in released] == [2, 4, 8]
    assert [f.timestamp for _, f in released] == [3000, 6000, 9000]
    assert released[0][1].data == bytes([3000 % 256, 0, 3000 % 256, 1, 3000 % 256, 2])
    # aiortc's buffer holds each frame until the next frame's first packet: the last one not at all.
    stock = feed(JitterBuffer(capacity=512, is_video=True), packets)
    assert [index for index, _ in stock] == [3, 5]
    assert [f.data for _, f in stock] == [f.data for _, f in released[:2]]


def test_the_stock_rule_is_kept_when_release_at_marker_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MarkerJitterBuffer, "release_at_marker", False)
    packets = frame_packets(100, 3000, 3) + frame_packets(103, 6000, 2)
    assert [index for index, _ in feed(MarkerJitterBuffer(), packets)] == [3]


def test_packets_reordered_within_a_frame_still_assemble() -> None:
    first = frame_packets(10, 3000, 4)
    second = frame_packets(14, 6000, 3)
    # The marker packet overtakes two of its frame; the second frame arrives scrambled.
    order = [first[0], first[3], first[1], first[2], second[2], second[0], second[1]]
    released = feed(MarkerJitterBuffer(), order)
    assert [index for index, _ in released] == [3, 6]
    assert released[0][1].data == b"".join(p._data for p in first)  # type: ignore[attr-defined]
    assert released[1][1].data == b"".join(p._data for p in second)  # type: ignore[attr-defined]


def test_a_frame_with_a_lost_packet_is_not_released_early_nor_corrupted() -> None:
    first = frame_packets(10, 3000, 3)
    second = frame_packets(13, 6000, 2)
    third = frame_packets(15, 9000, 2)
    buffer = MarkerJitterBuffer()
    # first[1] is lost for now: nothing may come out, not even the complete frames behind the gap.
    assert feed(buffer, [first[0], first[2], *second, *third]) == []
    # Its retransmission completes the first frame, released whole.
    _, frame = buffer.add(first[1])
    assert frame is not None and frame.timestamp == 3000
    assert frame.data == b"".join(p._data for p in first)  # type: ignore[attr-defined]
    # The complete frames that waited behind it are due at the same packet, in order.
    behind = buffer.take_ready()
    assert [f.timestamp for f in behind] == [6000, 9000]
    assert behind[0].data == b"".join(p._data for p in second)  # type: ignore[attr-defined]
    assert buffer.take_ready() == []
    assert [f.timestamp for _, f in feed(buffer, frame_packets(17, 12000, 2))] == [12000]


def test_without_take_ready_the_frames_behind_a_repair_still_come_out_in_order_one_per_packet() -> None:
    first, second, third = frame_packets(10, 3000, 3), frame_packets(13, 6000, 2), frame_packets(15, 9000, 2)
    buffer = MarkerJitterBuffer()
    assert feed(buffer, [first[0], first[2], *second, *third]) == []
    later = feed(buffer, [first[1], *frame_packets(17, 12000, 2)])
    assert [(index, f.timestamp) for index, f in later] == [(0, 3000), (1, 6000), (2, 9000)]


def test_a_lost_marker_packet_leaves_the_frame_to_the_stock_rule() -> None:
    first = frame_packets(10, 3000, 3)
    released = feed(MarkerJitterBuffer(), [first[0], first[1], *frame_packets(13, 6000, 2)])
    assert released == []  # the gap at first[2] holds both frames; no truncated frame is emitted


def test_sequence_numbers_wrap_around() -> None:
    packets = frame_packets(65533, 3000, 3) + frame_packets(65536, 6000, 3) + frame_packets(65539, 9000, 2)
    assert [p.sequence_number for p in packets[:6]] == [65533, 65534, 65535, 0, 1, 2]
    released = feed(MarkerJitterBuffer(), packets)
    assert [index for index, _ in released] == [2, 5, 7]
    assert released[1][1].data == b"".join(p._data for p in packets[3:6])  # type: ignore[attr-defined]


def encoded_vp8(width: int, height: int, count: int = 3) -> list[bytes]:
    """Frames from aiortc's libvpx encoder, depayloaded as aiortc's receiver does (the first is a keyframe)."""
    encoder = get_encoder(VP8)
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame)
        frames.append(b"".join(vp8_depayload(p) for p in payloads))
    return frames


@pytest.mark.parametrize(("width", "height"), [(320, 240), (640, 480), (1280, 720)])
def test_vp8_keyframe_size_reads_the_encoders_keyframe(width: int, height: int) -> None:
    keyframe, *inter = encoded_vp8(width, height)
    assert vp8_keyframe_size(keyframe) == (width, height)
    assert all(vp8_keyframe_size(f) is None for f in inter)


def test_vp8_keyframe_size_ignores_h264_and_short_data() -> None:
    assert vp8_keyframe_size(b"\x00\x00\x00\x01\x67\x42\xc0\x1e\x9d\x01\x2a\x00") is None
    assert vp8_keyframe_size(b"\x10\x02\x00\x9d\x01\x2a") is None


def test_the_gate_refuses_an_oversized_keyframe_and_its_inter_frames() -> None:
    refusals: list[tuple[int, int]] = []
    gate = FrameSizeGate(640 * 480, lambda w, h: refusals.append((w, h)))
    big = encoded_vp8(1280, 720)
    small = encoded_vp8(320, 240)
    assert [gate.admit(f) for f in big] == [False, False, False]
    assert refusals == [(1280, 720)] * 3 and gate.refused == 3
    assert [gate.admit(f) for f in small] == [True, True, True]
    with pytest.raises(ValueError, match="max_pixels must be at least 1, got 0"):
        FrameSizeGate(0, lambda w, h: None)


def test_the_gate_refuses_an_oversized_h264_sps_and_the_frames_after_it() -> None:
    refusals: list[tuple[int, int]] = []
    gate = FrameSizeGate(640 * 480, lambda w, h: refusals.append((w, h)))
    big = libx264(1920, 1080, count=4)  # SPS + IDR, then P frames without an SPS
    small = libx264(640, 480, count=4)
    assert len(big) == len(small) == 4
    assert [gate.admit(f) for f in big] == [False] * 4
    assert refusals == [(1920, 1080)] * 4 and gate.refused == 4
    # An SPS the gate cannot read states no size: the refusal stands.
    truncated_sps = small[0][:10]
    assert truncated_sps[4] == 0x67 and encoded_frame_size(truncated_sps) is None
    assert gate.admit(truncated_sps) is False
    assert [gate.admit(f) for f in small] == [True] * 4  # an allowed SPS with its IDR lifts it
    assert [gate.admit(f) for f in big[:2]] == [False, False]


def test_a_refused_frame_never_leaves_the_buffer() -> None:
    gate = FrameSizeGate(100, lambda w, h: None)
    keyframe = encoded_vp8(320, 240, count=1)[0]
    buffer = MarkerJitterBuffer(gate=gate)
    assert feed(buffer, [packet(1, 3000, keyframe[:50]), packet(2, 3000, keyframe[50:], marker=True)]) == []
    assert gate.refused == 1


async def test_install_replaces_one_receivers_buffer_and_aiortc_still_has_what_it_relies_on() -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        other = pc.addTransceiver("video", direction="recvonly").receiver
        check_aiortc_internals(receiver)
        buffer = install(receiver)
        assert receiver._RTCRtpReceiver__jitter_buffer is buffer  # type: ignore[attr-defined]
        assert type(other._RTCRtpReceiver__jitter_buffer) is JitterBuffer  # type: ignore[attr-defined]
        assert buffer.capacity == 512
    finally:
        await pc.close()
    # A receiver that lost the private attribute is refused loudly, not silently left on the stock rule.
    bare = object.__new__(RTCRtpReceiver)
    with pytest.raises(RuntimeError, match="no _RTCRtpReceiver__jitter_buffer"):
        check_aiortc_internals(bare)


def late_marker_repair() -> list[RtpPacket]:
    """Frame 3000's marker packet is lost and retransmitted after frame 6000 is in; frame 9000 follows."""
    first, second, third = frame_packets(100, 3000, 3), frame_packets(103, 6000, 2), frame_packets(105, 9000, 3)
    return first[:2] + second + [first[2]] + third


def test_a_late_retransmission_still_yields_that_frame_and_the_following_ones_in_order() -> None:
    buffer = MarkerJitterBuffer()
    released = []
    for index, rtp in enumerate(late_marker_repair()):
        _, frame = buffer.add(rtp)
        released += [(index, f) for f in ([frame] if frame is not None else []) + buffer.take_ready()]
    # Each frame exactly once, in order; none overtakes the one being repaired, and the frame that was complete
    # behind it leaves at the retransmission too (not at the next frame's first packet).
    assert [(index, f.timestamp) for index, f in released] == [(4, 3000), (4, 6000), (7, 9000)]
    assert released[1][1].data == bytes([6000 % 256, 0, 6000 % 256, 1])


def vp8_rtp(seq: int, timestamp: int, data: bytes, *, first: bool, marker: bool) -> RtpPacket:
    """An RTP packet with a minimal VP8 payload descriptor (RFC 7741 §4.2: S bit on a frame's first packet)."""
    descriptor = b"\x10" if first else b"\x00"
    return RtpPacket(
        payload_type=96,
        sequence_number=seq,
        timestamp=timestamp,
        marker=int(marker),
        ssrc=1234,
        payload=descriptor + data,
    )


async def test_an_installed_receiver_queues_every_frame_a_repair_completes_for_its_decoder() -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        install(receiver)
        # What receive() sets up, without starting the decoder thread: the test reads the decoder's queue.
        receiver._RTCRtpReceiver__codecs[96] = VP8  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__decoder_thread = object()  # type: ignore[attr-defined]
        decoder_queue = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]

        def queued() -> list[tuple[int, bytes]]:
            out = []
            while not decoder_queue.empty():
                codec, frame = decoder_queue.get_nowait()
                assert codec is VP8
                out.append((frame.timestamp, frame.data))
            return out

        packets = [
            vp8_rtp(200, 3000, b"a0", first=True, marker=False),
            vp8_rtp(201, 3000, b"a1", first=False, marker=False),  # lost, retransmitted last
            vp8_rtp(202, 3000, b"a2", first=False, marker=True),
            vp8_rtp(203, 6000, b"b0", first=True, marker=False),
            vp8_rtp(204, 6000, b"b1", first=False, marker=True),
            vp8_rtp(205, 9000, b"c0", first=True, marker=True),
        ]
        for rtp in packets[:1] + packets[2:]:
            await receiver._handle_rtp_packet(rtp, arrival_time_ms=0)
        assert queued() == []
        await receiver._handle_rtp_packet(packets[1], arrival_time_ms=0)
        # aiortc's timestamp mapper counts from the first frame's RTP timestamp.
        assert queued() == [(0, b"a0a1a2"), (3000, b"b0b1"), (6000, b"c0")]
        await receiver._handle_rtp_packet(vp8_rtp(206, 12000, b"d0", first=True, marker=True), arrival_time_ms=0)
        assert queued() == [(9000, b"d0")]
    finally:
        await pc.close()
