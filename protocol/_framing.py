"""Frames on a byte stream: encode, and decode with bounds and resync.

The decoder refuses an oversized declared length the moment the 11-byte header
parses, before a byte of payload is buffered (h2's frame buffer checks only
after buffering). On a stream with garbage (a serial line) it scans for the
magic, checks the header's own 16-bit CRC so that a false magic is dropped at
once, and counts every byte it skipped.
"""

from __future__ import annotations

import dataclasses
import struct

from crc32c import crc32c

from ._errors import ErrorCode, RemoteProtocolError
from ._messages import MessageType
from ._wire import MAGIC, PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "FRAME_OVERHEAD",
    "Frame",
    "FrameDecoder",
    "FrameStatistics",
    "encode_frame",
]

_HEADER = struct.Struct(">2sBBBIH")
_HEADER_SIZE = _HEADER.size  # 11
_CHECKED = _HEADER_SIZE - 2
_CRC = struct.Struct(">I")
FRAME_OVERHEAD = _HEADER_SIZE + _CRC.size
#: 1 MiB: room for a 32,768-record batch; a node may configure more.
DEFAULT_MAX_PAYLOAD = 1 << 20
_VALID_TYPES = frozenset(int(t) for t in MessageType)


def encode_frame(type_code: int, payload: bytes, flags: int = 0, *, version: int = PROTOCOL_VERSION) -> bytes:
    """One frame. ``version`` is another than ours only to answer a peer of that version
    with ERROR UNSUPPORTED_VERSION: the header and ERROR layouts never change."""
    head = struct.pack(">2sBBBI", MAGIC, version, type_code, flags, len(payload))
    head += (crc32c(head) & 0xFFFF).to_bytes(2, "big")
    return b"".join((head, payload, _CRC.pack(crc32c(payload, crc32c(head)))))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    type: int
    flags: int
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FrameStatistics:
    frames: int
    bytes_received: int
    bytes_skipped: int
    bad_crc: int
    buffered: int
    max_payload: int


class FrameDecoder:
    """Turns bytes into frames; holds at most one partial frame.

    Errors raised by ``next_frame`` are ``RemoteProtocolError``. After one, the
    decoder has stepped past the bad frame's magic, so a caller that tolerates
    errors (a serial line) may go on calling ``next_frame`` to resynchronize.
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, resync: bool = False) -> None:
        if not 0 < max_payload < 2**32:
            raise ValueError(f"max_payload {max_payload} must be within 1..{2**32 - 1}")
        self.max_payload = max_payload
        #: Skip garbage between frames (a noisy serial line) instead of failing.
        self.resync = resync
        self._buf = bytearray()
        self._pos = 0
        self._frames = 0
        self._received = 0
        self._skipped = 0
        self._bad_crc = 0
        self._eof = False
        #: The version byte of a frame refused as UNSUPPORTED_VERSION: answer in it.
        self.peer_version: int | None = None

    def __repr__(self) -> str:
        return f"<FrameDecoder buffered={len(self._buf) - self._pos} frames={self._frames} skipped={self._skipped}>"

    def feed(self, data: bytes | bytearray) -> None:
        """Add bytes from the stream; ``b""`` means the stream ended."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        self._received += len(data)

    @property
    def pending(self) -> int:
        """Bytes received and not yet consumed: a partial frame, or a magic byte."""
        return len(self._buf) - self._pos

    def drop_pending(self) -> int:
        """Skip (and count) what is buffered: the line went silent inside a frame."""
        count = len(self._buf) - self._pos
        self._skip(count)
        return count

    @property
    def at_eof(self) -> bool:
        """True once the stream ended and every byte was consumed."""
        return self._eof and self._pos >= len(self._buf)

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or None until more bytes arrive."""
        buf = self._buf
        while True:
            start = buf.find(MAGIC, self._pos)
            if start < 0:
                # Keep a trailing first magic byte: the second may be next.
                keep = 1 if buf.endswith(MAGIC[:1]) else 0
                self._garbage(len(buf) - keep - self._pos)
                return self._need_more()
            self._garbage(start - self._pos)
            if len(buf) - start < _HEADER_SIZE:
                return self._need_more()
            _, version, type_code, flags, length, hcrc = _HEADER.unpack_from(buf, start)
            if crc32c(memoryview(buf)[start : start + _CHECKED]) & 0xFFFF != hcrc:
                self._skip(1)  # a false magic, or a header hit by noise
                if not self.resync:
                    raise RemoteProtocolError(ErrorCode.BAD_CRC, "frame header fails its check")
                continue
            if version != PROTOCOL_VERSION:
                self._skip(1)
                self.peer_version = version
                raise RemoteProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"frame has protocol version {version}; this end speaks protocol version {PROTOCOL_VERSION}",
                )
            if type_code not in _VALID_TYPES:
                self._skip(1)
                raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_code}")
            if flags:
                self._skip(1)
                raise RemoteProtocolError(
                    ErrorCode.BAD_FLAGS, f"frame flags 0x{flags:02x} are reserved in version {PROTOCOL_VERSION}"
                )
            if length > self.max_payload:
                self._skip(1)
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame declares a {length}-byte payload; the limit is {self.max_payload}",
                )
            end = start + _HEADER_SIZE + length
            if len(buf) < end + _CRC.size:
                return self._need_more()
            (crc,) = _CRC.unpack_from(buf, end)
            if crc32c(memoryview(buf)[start:end]) != crc:
                self._bad_crc += 1
                self._skip(1)
                raise RemoteProtocolError(
                    ErrorCode.BAD_CRC,
                    f"{MessageType(type_code).name} frame of {length} bytes fails its CRC-32C",
                )
            payload = bytes(buf[start + _HEADER_SIZE : end])
            self._pos = end + _CRC.size
            self._frames += 1
            return Frame(type=type_code, flags=flags, payload=payload)

    def _garbage(self, count: int) -> None:
        if count <= 0:
            return
        first = self._buf[self._pos]
        self._skip(count)
        if not self.resync:
            raise RemoteProtocolError(
                ErrorCode.BAD_MAGIC, f"{count} bytes (first 0x{first:02x}) where a frame should start"
            )

    def _skip(self, count: int) -> None:
        self._pos += count
        self._skipped += count

    def _need_more(self) -> Frame | None:
        if self._eof and self._pos < len(self._buf):
            left = len(self._buf) - self._pos
            self._skip(left)
            raise RemoteProtocolError(ErrorCode.TRUNCATED, f"stream ended inside a frame ({left} bytes of it received)")
        return None

    def statistics(self) -> FrameStatistics:
        return FrameStatistics(
            frames=self._frames,
            bytes_received=self._received,
            bytes_skipped=self._skipped,
            bad_crc=self._bad_crc,
            buffered=len(self._buf) - self._pos,
            max_payload=self.max_payload,
        )
