"""DDSF: the binary frame format of the gateway's ``/stream/<drone>`` WebSocket.

Each WebSocket binary message is one processed frame: a fixed 48-byte
little-endian header, then the (down-sampled) point cloud and the keypoints as
packed arrays. ``docs/outputs.md`` documents it byte by byte for clients in
other languages; this module needs only numpy, so viewers and robots can import
it without the gateway's dependencies.

Header (``<`` little-endian, no padding)::

    offset size type     field
         0    4 char[4]  magic "DDSF"
         4    2 uint16   version (1)
         6    2 uint16   header_size (48): where the body starts
         8    4 uint32   frame_index (per drone session, 0-based)
        12    4 uint32   flags (0; reserved)
        16    8 int64    pts (90 kHz video clock ticks)
        24    8 float64  stamp (capture time, seconds since the Unix epoch)
        32    1 uint8    depth_kind (0 metric, 1 relative)
        33    1 uint8    axes (0 optical, 1 opengl, 2 seed)
        34    2 uint16   width  (frame size in pixels)
        36    2 uint16   height
        38    2 uint16   reserved (0)
        40    4 uint32   cloud_count N
        44    4 uint32   keypoint_count K

Body, every array row-major::

    float32[N][3] cloud xyz      (metres when metric)
    uint8[N][3]   cloud rgb
    0-3 zero bytes padding to a multiple of 4 (so the float arrays after it
                  are 4-byte aligned: JavaScript's Float32Array requires it)
    float32[K][3] keypoint xyz
    float32[K][2] keypoint uv (pixel coordinates of the frame)
    float32[K]    keypoint score

On the wire, points (cloud and keypoints) are in the frame named by ``axes``
(the gateway's ``--axes``, see :mod:`dronedepth.axes`). A :class:`StreamFrame`
always holds them in the REP-103 optical frame (x right, y down, z forward):
:func:`encode_frame` converts them to ``axes`` and :func:`decode_frame` back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import numpy as np
from numpy.typing import NDArray

from dronedepth.axes import AXES, Axes, axes_from_optical, optical_from_axes
from dronedepth.contract import DEPTH_KINDS, DepthKind
from dronedepth.errors import ProtocolError
from dronedepth.protocol import INVALID_MESSAGE

__all__ = [
    "AXES",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "StreamFrame",
    "decode_frame",
    "encode_frame",
    "encoded_size",
]

MAGIC: Final = b"DDSF"
VERSION: Final = 1
_HEADER: Final = struct.Struct("<4sHHIIqdBBHHHII")
HEADER_SIZE: Final = _HEADER.size  # 48

_WIRE_F4: Final = np.dtype("<f4")
_WIRE_U1: Final = np.dtype("u1")
_ScalarT = TypeVar("_ScalarT", bound=np.generic)

MAX_POINTS: Final = 1 << 24
"""Largest cloud or keypoint count a decoder accepts (a corrupt count must not allocate gigabytes)."""


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One frame of a drone's stream: a point cloud and keypoints.

    ``cloud_xyz`` and ``keypoints_xyz`` are in the optical frame; ``axes`` is
    the frame they take on the wire. Arrays from :func:`decode_frame` are
    read-only views of the received message (no copy; the point arrays are
    converted copies unless ``axes`` is ``optical``); ``np.array(frame.cloud_xyz)``
    gives a writable copy.
    """

    frame_index: int
    pts: int
    stamp: float
    depth_kind: DepthKind
    axes: Axes
    width: int
    height: int
    cloud_xyz: NDArray[np.float32]
    cloud_rgb: NDArray[np.uint8]
    keypoints_xyz: NDArray[np.float32]
    keypoints_uv: NDArray[np.float32]
    keypoints_score: NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.depth_kind not in DEPTH_KINDS:
            raise ProtocolError(
                INVALID_MESSAGE, f"stream frame: depth_kind must be one of {DEPTH_KINDS}, got {self.depth_kind!r}"
            )
        if self.axes not in AXES:
            raise ProtocolError(INVALID_MESSAGE, f"stream frame: axes must be one of {AXES}, got {self.axes!r}")
        n, k = len(self.cloud_xyz), len(self.keypoints_xyz)
        shapes = {
            "cloud_xyz": (self.cloud_xyz.shape, (n, 3)),
            "cloud_rgb": (self.cloud_rgb.shape, (n, 3)),
            "keypoints_xyz": (self.keypoints_xyz.shape, (k, 3)),
            "keypoints_uv": (self.keypoints_uv.shape, (k, 2)),
            "keypoints_score": (self.keypoints_score.shape, (k,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ProtocolError(INVALID_MESSAGE, f"stream frame: {name} has shape {got}, expected {want}")


def _padding(rgb_bytes: int) -> int:
    return -rgb_bytes % 4


def encoded_size(cloud_count: int, keypoint_count: int) -> int:
    """Bytes of a message with this many cloud points and keypoints."""
    return HEADER_SIZE + 12 * cloud_count + 3 * cloud_count + _padding(3 * cloud_count) + 24 * keypoint_count


def encode_frame(frame: StreamFrame) -> bytes:
    """Serialise ``frame``, its points in ``frame.axes`` (one allocation, one copy of each array)."""
    n, k = len(frame.cloud_xyz), len(frame.keypoints_xyz)
    if n > MAX_POINTS or k > MAX_POINTS:
        raise ProtocolError(INVALID_MESSAGE, f"stream frame: {n} cloud points / {k} keypoints exceed {MAX_POINTS}")
    if not (0 <= frame.width <= 0xFFFF and 0 <= frame.height <= 0xFFFF):
        raise ProtocolError(INVALID_MESSAGE, f"stream frame: size {frame.width}x{frame.height} exceeds 65535")
    buffer = bytearray(encoded_size(n, k))
    _HEADER.pack_into(
        buffer,
        0,
        MAGIC,
        VERSION,
        HEADER_SIZE,
        frame.frame_index & 0xFFFFFFFF,
        0,
        frame.pts,
        frame.stamp,
        DEPTH_KINDS.index(frame.depth_kind),
        AXES.index(frame.axes),
        frame.width,
        frame.height,
        0,
        n,
        k,
    )
    offset = HEADER_SIZE
    # np.frombuffer views into the bytearray: assigning converts dtype (and byte
    # order, on a big-endian host) while copying straight into place, so the
    # table holds arrays of any dtype.
    fields: tuple[tuple[NDArray[Any] | None, np.dtype[Any], int, bool], ...] = (
        (frame.cloud_xyz, _WIRE_F4, 3, True),
        (frame.cloud_rgb, _WIRE_U1, 3, False),
        (None, _WIRE_U1, _padding(3 * n), False),
        (frame.keypoints_xyz, _WIRE_F4, 3, True),
        (frame.keypoints_uv, _WIRE_F4, 2, False),
        (frame.keypoints_score, _WIRE_F4, 1, False),
    )
    for array, dtype, width, is_xyz in fields:
        rows = 1 if array is None else len(array)
        count = rows * width
        if array is not None and count:
            view = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
            if is_xyz:
                axes_from_optical(array, frame.axes, out=view.reshape(rows, 3))
            else:
                view[:] = np.reshape(array, -1)
        offset += count * dtype.itemsize
    return bytes(buffer)


def decode_frame(data: bytes | bytearray | memoryview) -> StreamFrame:
    """Parse one message; raises :class:`ProtocolError` naming what is wrong."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError(
            INVALID_MESSAGE, f"stream frame: {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header"
        )
    (magic, version, header_size, frame_index, _flags, pts, stamp, kind, axes, width, height, _reserved, n, k) = (
        _HEADER.unpack_from(data, 0)
    )
    if magic != MAGIC:
        raise ProtocolError(INVALID_MESSAGE, f"stream frame: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(
            INVALID_MESSAGE, f"stream frame: version {version} is not supported (this decoder reads version {VERSION})"
        )
    if header_size < HEADER_SIZE:
        raise ProtocolError(INVALID_MESSAGE, f"stream frame: header_size {header_size} < {HEADER_SIZE}")
    if kind >= len(DEPTH_KINDS) or axes >= len(AXES):
        raise ProtocolError(INVALID_MESSAGE, f"stream frame: unknown depth_kind code {kind} or axes code {axes}")
    if n > MAX_POINTS or k > MAX_POINTS:
        raise ProtocolError(INVALID_MESSAGE, f"stream frame: counts {n}/{k} exceed {MAX_POINTS}")
    expected = encoded_size(n, k) - HEADER_SIZE + header_size
    if len(data) != expected:
        raise ProtocolError(
            INVALID_MESSAGE,
            f"stream frame: {len(data)} bytes, expected {expected} for {n} cloud points and {k} keypoints",
        )
    offset = header_size

    def take(dtype: np.dtype[_ScalarT], rows: int, width: int) -> NDArray[_ScalarT]:
        nonlocal offset
        array = np.frombuffer(data, dtype=dtype, count=rows * width, offset=offset)
        offset += array.nbytes
        # Native dtype for callers (a no-op view on little-endian hosts).
        return array.astype(dtype.newbyteorder("="), copy=False).reshape((rows, width) if width > 1 else (rows,))

    cloud_xyz = optical_from_axes(take(_WIRE_F4, n, 3), AXES[axes])
    cloud_rgb = take(_WIRE_U1, n, 3)
    offset += _padding(3 * n)
    keypoints_xyz = optical_from_axes(take(_WIRE_F4, k, 3), AXES[axes])
    keypoints_uv = take(_WIRE_F4, k, 2)
    keypoints_score = take(_WIRE_F4, k, 1)
    return StreamFrame(
        frame_index=frame_index,
        pts=pts,
        stamp=stamp,
        depth_kind=DEPTH_KINDS[kind],
        axes=AXES[axes],
        width=width,
        height=height,
        cloud_xyz=cloud_xyz,
        cloud_rgb=cloud_rgb,
        keypoints_xyz=keypoints_xyz,
        keypoints_uv=keypoints_uv,
        keypoints_score=keypoints_score,
    )
