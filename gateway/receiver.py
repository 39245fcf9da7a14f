"""The gateway's video receiver: frames released at their last packet, oversized frames refused before decoding.

aiortc's :class:`~aiortc.jitterbuffer.JitterBuffer` hands a video frame to the
decoder only when a packet of the *next* frame arrives, so every frame waits
one frame interval (67 ms at 15 fps) after its last packet is in.
:class:`MarkerJitterBuffer` also releases a frame as soon as every packet from
its first one to the packet carrying the RTP marker bit (RFC 3550 §5.1; RFC
7741 §4.1 for VP8, RFC 6184 §5.1 for H.264: the last packet of the picture) is
present, contiguous in sequence number. A frame with a packet missing is not
released early: it waits, as before, for the retransmission (aiortc NACKs the
gap) or is dropped whole by aiortc's overflow path, so loss and reordering
behave as they did. When a retransmission completes such a frame, every
complete frame that waited behind it is released with it, in order: aiortc's
buffer gives one frame per arriving packet, which would keep a complete frame
waiting for the next packet (the next frame's, up to a frame interval later).

Why a subclass of aiortc's buffer rather than our own depacketiser: the
receiver's NACK, RTX, PLI, RTCP statistics and decoder thread all stay
aiortc's, and the change is the release rule alone. aiortc has no public hook
for its buffer, so :func:`install` replaces the private attribute of one
receiver (no global patch) and wraps that receiver's packet handler to queue
the extra frames a repair completes for its decoder, as aiortc queues the one
it gets back; :func:`check_aiortc_internals` says whether the aiortc in use
still has what this relies on (a test calls it).

:class:`FrameSizeGate` refuses frames from their dimensions before they reach
the decoder: a VP8 keyframe states its width and height in its header, an
H.264 access unit in its sequence parameter set (read by
:mod:`~dronedepth.gateway.frame_headers`), and the frames that follow keep
that size, so they share its verdict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from dronedepth.gateway.frame_headers import encoded_frame_size

__all__ = [
    "VIDEO_BUFFER_PACKETS",
    "FrameSizeGate",
    "MarkerJitterBuffer",
    "check_aiortc_internals",
    "install",
]

VIDEO_BUFFER_PACKETS: Final = 512
"""Capacity of the video buffer in packets: aiortc's own for video."""
_BUFFER_ATTRIBUTE: Final = "_RTCRtpReceiver__jitter_buffer"
"""aiortc's private (name-mangled) ``RTCRtpReceiver.__jitter_buffer``."""
_DECODER_ATTRIBUTES: Final = tuple(
    f"_RTCRtpReceiver__{name}" for name in ("codecs", "decoder_queue", "decoder_thread", "timestamp_mapper")
)
"""The private receiver state that queues an encoded frame for the decoder (``_handle_rtp_packet``'s end)."""


class FrameSizeGate:
    """Admits encoded VP8 and H.264 frames of at most ``max_pixels``; tells ``on_refused`` of each refusal.

    A frame stating its size (VP8 keyframe, H.264 access unit with an SPS)
    sets the verdict; the frames after it share that verdict until the next
    one states a size, so once a keyframe is refused its inter frames are
    too, until an allowed VP8 keyframe or H.264 SPS (encoders send one with
    each IDR) comes.
    ``on_refused(width, height)`` runs on the event loop (the receiver's
    packet handler) once per refused frame; reporting once is the caller's
    choice. Frames before the first stated size pass (the decoder cannot
    decode them anyway, and asks for a keyframe); an SPS the gate cannot read
    states no size, and the session checks decoded frames as well.
    """

    def __init__(self, max_pixels: int, on_refused: Callable[[int, int], None]) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
        self.max_pixels = max_pixels
        self._on_refused = on_refused
        self._refused_size: tuple[int, int] | None = None
        """The latest stated size when it was over the limit: the frames after it are refused too."""
        self.refused = 0

    def admit(self, frame: bytes) -> bool:
        size = encoded_frame_size(frame)
        if size is not None:
            self._refused_size = size if size[0] * size[1] > self.max_pixels else None
        if self._refused_size is None:
            return True
        self.refused += 1
        self._on_refused(*self._refused_size)
        return False


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing a frame at its marker packet when none of its packets is missing.

    ``gate``, if given, decides whether a released frame goes to the decoder.
    :meth:`add` returns one frame, as aiortc's receiver expects; the frames
    a repair completes after it wait in :meth:`take_ready` (which the wrapper
    :func:`install` puts on the receiver empties after every packet).
    """

    release_at_marker: bool = True
    """False gives aiortc's release rule alone (the receiver benchmark compares the two)."""

    def __init__(self, capacity: int = VIDEO_BUFFER_PACKETS, *, gate: FrameSizeGate | None = None) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self._gate = gate
        self._ready: deque[JitterFrame] = deque()
        """Complete frames released after the one :meth:`add` returned, oldest first."""
        self.payload_type: int | None = None
        """Payload type of the latest media packet (after RTX unwrapping): the codec of the frames released."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.payload_type = packet.payload_type
        pli_flag, frame = super().add(packet)
        if frame is not None and not self._admitted(frame):
            frame = None
        return pli_flag, frame

    def take_ready(self) -> list[JitterFrame]:
        """The complete frames released after the one :meth:`add` returned (those the gate admits), in order."""
        ready = [frame for frame in self._ready if self._admitted(frame)]
        self._ready.clear()
        return ready

    def _admitted(self, frame: JitterFrame) -> bool:
        return self._gate is None or self._gate.admit(frame.data)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._ready:  # not taken since the last packet (no wrapper): still one frame per packet, in order
            return self._ready.popleft()
        if self.release_at_marker:
            frame = self._remove_marked_frame()
            if frame is not None:
                # A repaired frame may have complete frames behind it: they are due now too.
                while (behind := self._remove_marked_frame()) is not None:
                    self._ready.append(behind)
                return frame
        return super()._remove_frame(sequence_number)

    def _remove_marked_frame(self) -> JitterFrame | None:
        """The oldest frame if its packets, from the buffer's origin to a marker packet, are all here."""
        origin = self._origin
        if origin is None:
            return None
        first = self._packets[origin % self._capacity]
        if first is None:
            return None
        for count in range(self._capacity):
            packet = self._packets[uint16_add(origin, count) % self._capacity]
            if packet is None or packet.timestamp != first.timestamp:
                # A gap, or the next frame began without a marker: aiortc's rule decides.
                return None
            if packet.marker:
                packets = [self._packets[uint16_add(origin, i) % self._capacity] for i in range(count + 1)]
                frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=first.timestamp)  # type: ignore[union-attr]
                self.remove(count + 1)
                return frame
        return None


def check_aiortc_internals(receiver: RTCRtpReceiver) -> None:
    """Raise RuntimeError if ``receiver`` lacks the aiortc internals :func:`install` replaces."""
    current = getattr(receiver, _BUFFER_ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer):
        raise RuntimeError(f"aiortc's RTCRtpReceiver has no {_BUFFER_ATTRIBUTE} JitterBuffer any more")
    for name in ("_origin", "_packets", "_capacity", "_remove_frame", "remove"):
        if not hasattr(current, name):
            raise RuntimeError(f"aiortc's JitterBuffer has no {name} any more")
    for name in (*_DECODER_ATTRIBUTES, "_handle_rtp_packet"):
        if not hasattr(receiver, name):
            raise RuntimeError(f"aiortc's RTCRtpReceiver has no {name} any more")


def install(receiver: RTCRtpReceiver, *, gate: FrameSizeGate | None = None) -> MarkerJitterBuffer:
    """Give one video receiver a :class:`MarkerJitterBuffer`; call before its first RTP packet (the track event)."""
    check_aiortc_internals(receiver)
    buffer = MarkerJitterBuffer(getattr(receiver, _BUFFER_ATTRIBUTE).capacity, gate=gate)
    setattr(receiver, _BUFFER_ATTRIBUTE, buffer)
    handle = receiver._handle_rtp_packet
    codecs, decoder_queue, _, timestamp_mapper = (getattr(receiver, name) for name in _DECODER_ATTRIBUTES)

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        await handle(packet, arrival_time_ms)
        ready = buffer.take_ready()
        # What aiortc's handler does with the frame the buffer returns, for each frame released after it.
        codec: Any = codecs.get(buffer.payload_type)
        if ready and codec is not None and getattr(receiver, _DECODER_ATTRIBUTES[2]) is not None:
            for frame in ready:
                frame.timestamp = timestamp_mapper.map(frame.timestamp)
                decoder_queue.put((codec, frame))

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
    return buffer
