"""gateway/frame_headers.py: sizes read from real VP8 and H.264 encoders' headers agree with the decoders'."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder, h264_depayload
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from dronedepth.gateway.frame_headers import encoded_frame_size, h264_access_unit_size, h264_sps_size

H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=102,
    parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
)
START = b"\x00\x00\x00\x01"


def libx264(width: int, height: int, pix_fmt: str = "yuv420p", count: int = 3, **options: str) -> list[bytes]:
    """Access units (Annex B) from PyAV's libx264; the first carries SPS, PPS and an IDR."""
    assert "libx264" in av.codecs_available
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {"bframes": "0", **options}
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    units = []
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        frame.pts = index
        units += [bytes(p) for p in codec.encode(frame)]
    return units + [bytes(p) for p in codec.encode(None)]


def decoded_size(units: list[bytes]) -> tuple[int, int]:
    """The size FFmpeg's H.264 decoder outputs for these access units."""
    decoder = av.CodecContext.create("h264", "r")
    frames = [f for unit in units for f in decoder.decode(av.Packet(unit))]
    assert frames, "FFmpeg decoded nothing"
    return frames[0].width, frames[0].height


def nal_units(unit: bytes) -> list[bytes]:
    return [nal for nal in unit.split(START) if nal]


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "options"),
    [
        (320, 240, "yuv420p", {"profile": "baseline"}),
        (1920, 1080, "yuv420p", {}),  # coded 1920x1088, cropped 8 rows (crop unit 2)
        (642, 362, "yuv420p", {"profile": "high"}),  # cropped on both axes
        (1920, 1080, "yuv420p", {"x264-params": "interlaced=1"}),  # field map units: crop unit 4 rows
        (322, 242, "yuv422p", {}),  # High 4:2:2, crop unit 1 row
        (321, 241, "yuv444p", {"profile": "high444"}),  # High 4:4:4 Predictive, odd sizes
        (640, 481, "gray", {}),  # monochrome: crop unit 1
    ],
)
def test_the_sps_size_is_what_ffmpeg_decodes(width: int, height: int, pix_fmt: str, options: dict[str, str]) -> None:
    first, *rest = libx264(width, height, pix_fmt, **options)
    assert h264_access_unit_size(first) == (width, height) == decoded_size([first, *rest])
    assert encoded_frame_size(first) == (width, height)
    assert all(encoded_frame_size(unit) is None for unit in rest)  # no SPS: they keep the first one's size


def test_aiortc_h264_encoder_stap_a_packets_depayloaded_state_the_size() -> None:
    encoder = get_encoder(H264)
    rgb = np.random.default_rng(1).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    payloads, _ = encoder.encode(frame)
    assert payloads[0][0] & 0x1F == 24  # SPS and PPS aggregated in a STAP-A
    unit = b"".join(h264_depayload(p) for p in payloads)  # what aiortc's receiver hands its jitter buffer
    assert h264_access_unit_size(unit) == (640, 360)


class BitWriter:
    """Writes fields MSB first, with exp-Golomb codes, to build SPS variants encoders do not emit."""

    def __init__(self) -> None:
        self.bits: list[str] = []

    def u(self, count: int, value: int) -> BitWriter:
        self.bits.append(format(value, f"0{count}b") if count else "")
        return self

    def ue(self, value: int) -> BitWriter:
        code = format(value + 1, "b")
        self.bits.append("0" * (len(code) - 1) + code)
        return self

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = "".join(self.bits) + "1"  # rbsp_stop_one_bit, then zeros to a byte
        bits += "0" * (-len(bits) % 8)
        return int(bits, 2).to_bytes(len(bits) // 8, "big")


def with_emulation_prevention(rbsp: bytes) -> bytes:
    """Insert 03 after two zero bytes before a byte <= 03, as an encoder does (H.264 §7.4.1)."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def scaling_list(writer: BitWriter, deltas: list[int]) -> None:
    for delta in deltas:
        writer.se(delta)


def test_scaling_lists_are_skipped_as_ffmpeg_reads_them() -> None:
    """x264 puts its matrices in the PPS: an SPS carrying lists is x264's SPS with lists spliced in."""
    first, *rest = libx264(640, 480, profile="high")
    sps, *others = nal_units(first)
    assert sps[0] & 0x1F == 7 and sps[1] == 100  # High profile
    assert b"\x00\x00\x03" in sps  # x264's VUI timing fields need emulation prevention
    bits = "".join(format(b, "08b") for b in sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    # profile 8, flags+level 16, id ue '1', chroma_format_idc 1 '010', two bit depths '1' '1', qpprime '0'
    flag_at = 8 + 16 + 1 + 3 + 1 + 1 + 1
    assert bits[:flag_at].endswith("1010110") and bits[flag_at] == "0"
    lists = BitWriter()
    lists.u(1, 1)  # list 0 (4x4 intra Y) present: a varied list that ends on a zero next_scale
    scaling_list(lists, [4, -3, 10, 0, -7, 1, 2, -2, 5, 0, 0, 3, -1, 1, -21])  # next_scale 0 after 15: no 16th delta
    lists.u(1, 0).u(1, 0).u(1, 0).u(1, 0).u(1, 0)  # lists 1-5 fall back
    lists.u(1, 1)  # list 6 (8x8 intra Y) present: 64 deltas
    scaling_list(lists, [(i % 7) - 3 for i in range(64)])
    lists.u(1, 0)  # list 7
    spliced_bits = bits[:flag_at] + "1" + "".join(lists.bits) + bits[flag_at + 1 :]
    spliced_bits = spliced_bits.rstrip("0")[:-1]  # drop the old stop bit and padding
    writer = BitWriter()
    writer.bits = [spliced_bits]
    spliced = bytes([sps[0]]) + with_emulation_prevention(writer.rbsp())
    unit = b"".join(START + nal for nal in [spliced, *others])
    assert h264_access_unit_size(unit) == (640, 480) == decoded_size([unit, *rest])


def synthetic_sps(width_in_mbs: int, height_in_map_units: int, crop: tuple[int, int, int, int]) -> bytes:
    """A Main-profile SPS with pic_order_cnt_type 1 (a cycle of 3) and a cropping window."""
    writer = BitWriter().u(8, 77).u(8, 0).u(8, 40).ue(0)  # profile Main, no constraints, level 4.0, id 0
    writer.ue(0).ue(1)  # log2_max_frame_num_minus4, pic_order_cnt_type 1
    writer.u(1, 0).se(-2).se(1).ue(3).se(2).se(-1).se(4)  # always_zero, non_ref, top_to_bottom, cycle of 3
    writer.ue(1).u(1, 0).ue(width_in_mbs - 1).ue(height_in_map_units - 1)
    writer.u(1, 1).u(1, 1)  # frame_mbs_only, direct_8x8_inference
    writer.u(1, 1)
    for offset in crop:
        writer.ue(offset)
    writer.u(1, 0)  # no VUI
    return b"\x67" + with_emulation_prevention(writer.rbsp())


def test_order_count_type_1_cropping_and_emulation_prevention() -> None:
    # 65536 macroblocks a side writes long runs of zero bits: the NAL unit needs emulation prevention bytes.
    sps = synthetic_sps(65536, 65536, (1, 2, 3, 4))
    assert b"\x00\x00\x03" in sps
    size = (65536 * 16 - 2 * 3, 65536 * 16 - 2 * 7)
    assert h264_sps_size(sps) == size
    assert h264_access_unit_size(START + sps + START + b"\x68\xce\x38\x80") == size


def test_unreadable_sps_states_no_size() -> None:
    sps = synthetic_sps(40, 30, (0, 0, 0, 0))
    for broken in (sps[:6], b"\x67" + b"\x00" * 12, sps[:1]):
        with pytest.raises(ValueError):
            h264_sps_size(broken)
        assert h264_access_unit_size(START + broken) is None
    with pytest.raises(ValueError, match="not an SPS"):
        h264_sps_size(b"\x68\xce\x38\x80")
    with pytest.raises(ValueError, match="cropping window is empty"):
        h264_sps_size(synthetic_sps(1, 1, (4, 4, 0, 0)))
    assert h264_access_unit_size(b"") is None


def test_the_largest_sps_in_an_access_unit_decides() -> None:
    small, large = synthetic_sps(20, 15, (0, 0, 0, 0)), synthetic_sps(120, 68, (0, 0, 0, 4))
    assert h264_access_unit_size(START + small + START + large + START + b"\x65\x88") == (1920, 1080)
    assert h264_access_unit_size(b"\x00\x00\x01" + large) == (1920, 1080)  # 3-byte start codes too


def test_vp8_and_h264_are_told_apart() -> None:
    vp8 = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    frame = av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    keyframe = b"".join(vp8_depayload(p) for p in vp8.encode(frame)[0])
    assert encoded_frame_size(keyframe) == (320, 240)
    assert encoded_frame_size(START + synthetic_sps(20, 15, (0, 0, 0, 0))) == (320, 240)
    assert encoded_frame_size(b"\x10\x02\x00\x9d\x01\x2a") is None
