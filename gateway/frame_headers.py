"""Picture size from an encoded frame's headers, read before decoding (pure functions, bytes in, pixels out).

The gateway refuses oversized video before it reaches the decoder (see
:class:`~dronedepth.gateway.receiver.FrameSizeGate`); these functions say
what size a frame states:

- VP8: a keyframe states its width and height in its first ten bytes (RFC
  6386 §9.1); inter frames keep the size of the keyframe they follow.
- H.264: a sequence parameter set (SPS, NAL unit type 7; ITU-T H.264
  §7.3.2.1.1) states the coded size in macroblocks and a cropping window;
  the frames after it keep that size until the next SPS. aiortc's RTP
  depayloader hands frames over as an Annex B byte stream (each NAL unit after
  a ``00 00 00 01`` start code; a STAP-A aggregate is split into its NAL units
  and FU-A fragments are rejoined), so the SPS is found by its start code.

A size is the decoder's output size in pixels: for H.264 the cropped size,
as decoders output it (1920×1080 is coded as 1920×1088, cropped 8 rows).
"""

from __future__ import annotations

from typing import Final

__all__ = ["encoded_frame_size", "h264_access_unit_size", "h264_sps_size", "vp8_keyframe_size"]

_VP8_START_CODE: Final = b"\x9d\x01\x2a"
_VP8_KEYFRAME_HEADER_BYTES: Final = 10
"""3-byte frame tag, 3-byte start code, 2 bytes width, 2 bytes height."""
_ANNEX_B_START: Final = b"\x00\x00\x01"
"""What every H.264 NAL unit from aiortc's depayloader follows (as ``00 00 00 01``)."""
_NAL_TYPE_SPS: Final = 7
_HIGH_PROFILES: Final = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
"""profile_idc values whose SPS carries chroma format, bit depths and scaling lists (H.264 §7.3.2.1.1)."""
_MAX_EXP_GOLOMB_ZEROS: Final = 31
"""No field of an SPS needs a longer code (the largest is 32 bits); more is a malformed stream."""
_SPS_READ_LIMIT: Final = 4096
"""Bytes of an SPS read at most: its fields up to the cropping window fit in about 3.5 KiB even with every
scaling list and a 255-entry order count cycle, and a bound keeps a crafted huge SPS cheap on the event loop."""


def vp8_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels of a VP8 keyframe, or None for an inter frame or data that is not VP8.

    Frame tag bit 0 is 0 on keyframes (RFC 6386 §9.1); width and height are
    14-bit little-endian fields after the start code (their top 2 bits are
    an upscaling hint the decoder's output size ignores).
    """
    if len(frame) < _VP8_KEYFRAME_HEADER_BYTES or frame[0] & 1 or frame[3:6] != _VP8_START_CODE:
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


class _BitReader:
    """Reads an RBSP (emulation prevention removed) MSB first, with exp-Golomb codes; past the end is ValueError."""

    def __init__(self, rbsp: bytes) -> None:
        self._value = int.from_bytes(rbsp, "big")
        self._bits = len(rbsp) * 8
        self._position = 0

    def bits(self, count: int) -> int:
        end = self._position + count
        if end > self._bits:
            raise ValueError("SPS ends early")
        value = (self._value >> (self._bits - end)) & ((1 << count) - 1)
        self._position = end
        return value

    def flag(self) -> bool:
        return bool(self.bits(1))

    def ue(self) -> int:
        """Unsigned exp-Golomb, ue(v) (H.264 §9.1)."""
        zeros = 0
        while not self.bits(1):
            zeros += 1
            if zeros > _MAX_EXP_GOLOMB_ZEROS:
                raise ValueError("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """Signed exp-Golomb, se(v): 1, -1, 2, -2, … (H.264 §9.1.1)."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _rbsp(nal_payload: bytes) -> bytes:
    """The NAL unit's payload without its emulation prevention bytes (``00 00 03`` → ``00 00``, H.264 §7.4.1)."""
    if b"\x00\x00\x03" not in nal_payload:
        return nal_payload
    out = bytearray()
    start = 0
    while (found := nal_payload.find(b"\x00\x00\x03", start)) >= 0:
        out += nal_payload[start : found + 2]
        start = found + 3
    out += nal_payload[start:]
    return bytes(out)


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    """scaling_list() of ``size`` coefficients (H.264 §7.3.2.1.1.1): only its length matters here."""
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise ValueError(f"delta_scale {delta} outside -128..127")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = next_scale if next_scale != 0 else last_scale


def h264_sps_size(sps: bytes) -> tuple[int, int]:
    """(width, height) in pixels, after cropping, that an H.264 SPS NAL unit (header byte included) states.

    Raises ValueError for a NAL unit that is not an SPS or an SPS that cannot
    be read (truncated, out-of-range fields).
    """
    if not sps or sps[0] & 0x1F != _NAL_TYPE_SPS:
        raise ValueError("not an SPS NAL unit")
    reader = _BitReader(_rbsp(sps[1 : 1 + _SPS_READ_LIMIT]))
    profile_idc = reader.bits(8)
    reader.bits(16)  # constraint_set flags, reserved bits, level_idc
    reader.ue()  # seq_parameter_set_id
    chroma_format_idc = 1  # 4:2:0 unless a high profile says otherwise
    separate_colour_plane = False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = reader.ue()
        if chroma_format_idc > 3:
            raise ValueError(f"chroma_format_idc {chroma_format_idc} outside 0..3")
        if chroma_format_idc == 3:
            separate_colour_plane = reader.flag()
        reader.ue()  # bit_depth_luma_minus8
        reader.ue()  # bit_depth_chroma_minus8
        reader.flag()  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if reader.flag():  # seq_scaling_list_present_flag[index]
                    _skip_scaling_list(reader, 16 if index < 6 else 64)
    reader.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = reader.ue()
    if pic_order_cnt_type == 0:
        reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif pic_order_cnt_type == 1:
        reader.flag()  # delta_pic_order_always_zero_flag
        reader.se()  # offset_for_non_ref_pic
        reader.se()  # offset_for_top_to_bottom_field
        cycle = reader.ue()  # num_ref_frames_in_pic_order_cnt_cycle
        if cycle > 255:
            raise ValueError(f"num_ref_frames_in_pic_order_cnt_cycle {cycle} over 255")
        for _ in range(cycle):
            reader.se()  # offset_for_ref_frame
    elif pic_order_cnt_type != 2:
        raise ValueError(f"pic_order_cnt_type {pic_order_cnt_type} outside 0..2")
    reader.ue()  # max_num_ref_frames
    reader.flag()  # gaps_in_frame_num_value_allowed_flag
    width_in_mbs = reader.ue() + 1
    height_in_map_units = reader.ue() + 1
    frame_mbs_only = reader.flag()
    if not frame_mbs_only:
        reader.flag()  # mb_adaptive_frame_field_flag
    reader.flag()  # direct_8x8_inference_flag
    # A map unit is a macroblock pair in field-capable streams (H.264 §7.4.2.1.1, FrameHeightInMbs).
    field_factor = 1 if frame_mbs_only else 2
    width = width_in_mbs * 16
    height = height_in_map_units * field_factor * 16
    if reader.flag():  # frame_cropping_flag
        # Crop offsets count chroma samples (H.264 Table 6-1, equations 7-19 to 7-22).
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        crop_unit_x = 1 if chroma_array_type in (0, 3) else 2
        crop_unit_y = field_factor * (2 if chroma_array_type == 1 else 1)
        left, right, top, bottom = reader.ue(), reader.ue(), reader.ue(), reader.ue()
        width -= crop_unit_x * (left + right)
        height -= crop_unit_y * (top + bottom)
        if width < 1 or height < 1:
            raise ValueError("the cropping window is empty")
    return width, height


def h264_access_unit_size(frame: bytes) -> tuple[int, int] | None:
    """The largest size an SPS in an Annex B access unit states, or None when it carries no readable SPS.

    Several SPS (different ids) may come in one frame: the largest decides,
    since the decoder would accept any of them.
    """
    largest: tuple[int, int] | None = None
    start = frame.find(_ANNEX_B_START)
    while start >= 0:
        header = start + len(_ANNEX_B_START)
        end = frame.find(_ANNEX_B_START, header)
        if header < len(frame) and frame[header] & 0x1F == _NAL_TYPE_SPS:
            # A zero before the next start code belongs to that code (00 00 00 01), not to the SPS.
            nal = frame[header : end if end >= 0 else len(frame)].rstrip(b"\x00")
            try:
                size = h264_sps_size(nal)
            except ValueError:
                size = None
            if size is not None and (largest is None or size[0] * size[1] > largest[0] * largest[1]):
                largest = size
        start = end
    return largest


def encoded_frame_size(frame: bytes) -> tuple[int, int] | None:
    """The size an encoded VP8 or H.264 frame states in its headers, or None when it states none.

    A frame stating no size (VP8 inter frame, H.264 access unit without an
    SPS, unreadable data) keeps the size of the last one that did. The two
    codecs cannot be confused: an H.264 access unit from aiortc starts with a
    start code, a VP8 keyframe has its own at bytes 3–5 and a VP8 inter frame
    never starts with a zero byte (its frame tag's bit 0 is set).
    """
    if frame.startswith(_ANNEX_B_START) or frame.startswith(b"\x00" + _ANNEX_B_START):
        return h264_access_unit_size(frame)
    return vp8_keyframe_size(frame)
