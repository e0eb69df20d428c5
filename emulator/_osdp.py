"""The panel's reader bus in OSDP (IEC 60839-11-5), through libosdp.

Card reads originate in a protocol stack nobody here wrote: the card readers
are libosdp Peripheral Devices (``ReaderBus``, in its own thread) on one serial
line, several addresses on it, each with its own Secure Channel key. The panel
owns the libosdp Control Panel (``ReaderPort``, a trio task): a card read
reaches it over the line, the panel decides locally as for any swipe, and
answers the reader with its LED (green: granted, red: denied) and buzzer.

Secure Channel is enforced for every reader: a reader whose key is wrong is
refused and reported (``READER_AUTH_FAILED``), never served in clear text
(the 2023 OSDP downgrade findings are why). A reader that goes silent is
reported (``READER_OFFLINE``) after ``silent_after`` and retried every
``retry_interval`` instead of libosdp's 300 s, so it is back (``READER_ONLINE``)
soon after it answers again.

libosdp facts this module is built around: drive ``refresh()`` every ~2 ms
(its own loop sleeps 20 ms, too slow for several readers); hand the stack one
OSDP packet per channel read when several readers share a line; never let an
exception escape a channel callback (it surfaces later as a SystemError from
``refresh()``); address 127 is broadcast; at most 32 readers per panel.

This module holds what both ends of the line share (a reader's spec, the
packet splitter, opening the line); the readers are in ``_osdp_readers.py``,
the panel's Control Panel in ``_osdp_port.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import osdp_sys
import serial  # pyserial

from protocol.streams import LinkError, SerialLine

__all__ = ["LOG_LEVEL", "MARK", "MAX_READERS", "PacketSplitter", "ReaderSpec", "check_readers", "open_reader_line"]

MAX_READERS = 32
_SOM = 0x53
MARK = 0xFF
_MAX_PACKET = 1440
#: libosdp's C logs go to stderr; Warning keeps them to what matters.
LOG_LEVEL = osdp_sys.LOG_WARNING


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReaderSpec:
    """One card reader on a panel's reader bus."""

    address: int
    #: Secure Channel base key (16 bytes), one per reader.
    key: bytes
    door: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 126:
            raise ValueError(f"OSDP reader address {self.address} is outside 0..126 (127 is broadcast)")
        if len(self.key) != 16:
            raise ValueError(f"reader {self.address}: a Secure Channel key is 16 bytes, not {len(self.key)}")


def check_readers(readers: Sequence[ReaderSpec]) -> None:
    if not 1 <= len(readers) <= MAX_READERS:
        raise ValueError(f"a reader bus has 1..{MAX_READERS} readers, not {len(readers)}")
    addresses = [r.address for r in readers]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"reader addresses repeat on one bus: {sorted(addresses)}")


class PacketSplitter:
    """Cuts a byte stream into OSDP packets (optional 0xFF mark, SOM 0x53, addr, len16 LE ...)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            i = buf.find(_SOM)
            if i < 0:
                self.skipped += len(buf)
                buf.clear()
                return out
            start = i - 1 if i > 0 and buf[i - 1] == MARK else i
            self.skipped += start
            del buf[:start]
            i -= start
            if len(buf) - i < 4:
                return out
            length = buf[i + 2] | buf[i + 3] << 8
            if not 6 <= length <= _MAX_PACKET:
                self.skipped += i + 1  # a false SOM
                del buf[: i + 1]
                continue
            if len(buf) - i < length:
                return out
            out.append(bytes(buf[: i + length]))
            del buf[: i + length]


def open_reader_line(line: SerialLine) -> serial.Serial:
    try:
        return serial.Serial(str(line.path), baudrate=line.baud, timeout=0, write_timeout=0, exclusive=True)
    except serial.SerialException as exc:
        raise LinkError(f"cannot open OSDP reader line {line.path}: {exc}") from exc
