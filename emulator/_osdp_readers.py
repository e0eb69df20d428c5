"""The card readers of a reader bus: libosdp Peripheral Devices on one serial line.

``ReaderBus`` runs the readers in a thread of their own, each with its own
address and Secure Channel key; ``BusSwiper`` presents a workload's swipes at
them, so that a card read reaches the panel only across the OSDP stack.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import osdp_sys
import serial  # pyserial
import trio

from protocol.streams import SerialLine

from ._osdp import LOG_LEVEL, PacketSplitter, ReaderSpec, check_readers, open_reader_line

__all__ = ["BusSwiper", "ReaderBus", "card_read_event"]

_CAPABILITIES = [
    {"function_code": osdp_sys.CAP_COMMUNICATION_SECURITY, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_CARD_DATA_FORMAT, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_READER_LED_CONTROL, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_READER_AUDIBLE_OUTPUT, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_READERS, "compliance_level": 1, "num_items": 1},
]


def card_read_event(card: int) -> dict[str, Any]:
    """A CardRead event carrying a card number as 64 raw bits."""
    return {
        "event": osdp_sys.EVENT_CARDREAD,
        "reader_no": 0,
        "direction": 0,
        "format": osdp_sys.CARD_FMT_RAW_UNSPECIFIED,
        "length": 64,
        "data": card.to_bytes(8, "big"),
    }


class _PdChannel:
    """A reader's view of the shared line: packets the bus thread hands it, writes to the port."""

    def __init__(self, port: serial.Serial, errors: list[str]) -> None:
        self.id = 0
        self._port = port
        self._errors = errors
        self.inbox: deque[bytes] = deque()

    def read(self, max_bytes: int) -> bytes:
        try:
            if not self.inbox:
                return b""
            packet = self.inbox[0]
            if len(packet) <= max_bytes:
                return self.inbox.popleft()
            self.inbox[0] = packet[max_bytes:]
            return packet[:max_bytes]
        except Exception as exc:  # never into libosdp
            self._errors.append(f"read: {exc}")
            return b""

    def write(self, data: bytes) -> int:
        try:
            return int(self._port.write(data) or 0)
        except Exception as exc:  # never into libosdp
            self._errors.append(f"write: {exc}")
            return 0

    def flush(self) -> None:
        pass


class ReaderBus:
    """Card readers (libosdp PDs) on one serial line, run by a thread of their own.

    ``swipe`` may be called from any thread. ``silence``/``resume`` make a reader
    stop and start answering, as if unplugged.
    """

    def __init__(self, line: SerialLine, readers: Sequence[ReaderSpec], *, tick: float = 0.002) -> None:
        check_readers(readers)
        self.line = line
        self.readers = {r.address: r for r in readers}
        self.tick = tick
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._swipes: deque[tuple[int, int]] = deque()
        self._silent: set[int] = set()
        self._commands: dict[int, list[dict[str, Any]]] = {a: [] for a in self.readers}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.Serial | None = None
        self._pds: dict[int, tuple[Any, _PdChannel]] = {}
        self.reads_submitted = 0

    def __repr__(self) -> str:
        return f"<ReaderBus {self.line.path} readers {sorted(self.readers)}>"

    def start(self) -> ReaderBus:
        osdp_sys.set_loglevel(LOG_LEVEL)
        self._port = port = open_reader_line(self.line)
        for address, spec in self.readers.items():
            channel = _PdChannel(port, self.errors)
            info = {
                "name": f"reader-{address}",
                "address": address,
                "flags": osdp_sys.FLAG_ENFORCE_SECURE,
                "scbk": spec.key,
                "channel": channel,
                "version": 1,
                "model": 1,
                "vendor_code": 0xF1E1D5,
                "serial_number": address,
                "firmware_version": 1,
            }
            pd = osdp_sys.PeripheralDevice(info, capabilities=_CAPABILITIES)
            pd.set_command_callback(self._on_command(address))
            self._pds[address] = (pd, channel)
        self._thread = threading.Thread(target=self._run, name=f"osdp-readers {self.line.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._port is not None:
            self._port.close()
            self._port = None

    def __enter__(self) -> ReaderBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_command(self, address: int) -> Callable[[dict[str, Any]], tuple[int, None]]:
        def handler(command: dict[str, Any]) -> tuple[int, None]:
            with self._lock:
                self._commands[address].append(dict(command))
            return 0, None

        return handler

    def swipe(self, address: int, card: int) -> None:
        """Present ``card`` at reader ``address`` (it travels the OSDP stack to the panel)."""
        if address not in self.readers:
            raise ValueError(f"no reader at address {address} on {self.line.path}")
        with self._lock:
            self._swipes.append((address, card))

    def silence(self, address: int) -> None:
        with self._lock:
            self._silent.add(address)

    def resume(self, address: int) -> None:
        with self._lock:
            self._silent.discard(address)

    def commands(self, address: int) -> list[dict[str, Any]]:
        """What the panel told this reader to do (LED, buzzer), oldest first."""
        with self._lock:
            return list(self._commands[address])

    def is_secure(self, address: int) -> bool:
        return bool(self._pds[address][0].is_sc_active())

    def _run(self) -> None:
        splitter = PacketSplitter()
        port = self._port
        assert port is not None
        while not self._stop.is_set():
            try:
                data = port.read(4096)
            except (serial.SerialException, OSError) as exc:
                self.errors.append(f"line: {exc}")
                time.sleep(0.1)
                continue
            with self._lock:
                silent = set(self._silent)
                swipes = list(self._swipes)
                self._swipes.clear()
            for packet in splitter.feed(data):
                for address, (_, channel) in self._pds.items():
                    if address not in silent:
                        channel.inbox.append(packet)
            for address, card in swipes:
                if address not in silent:
                    self._pds[address][0].submit_event(card_read_event(card))
                    self.reads_submitted += 1
            for address, (pd, _) in self._pds.items():
                if address not in silent:
                    pd.refresh()
            time.sleep(self.tick)


class BusSwiper:
    """Presents a workload's swipes at a ReaderBus's readers instead of calling the panel.

    A swipe at door ``d`` goes to that door's readers in turn (in, out, in, ...);
    the panel sees it only if it crosses the OSDP stack.
    """

    def __init__(self, panel: Any, bus: ReaderBus) -> None:
        self.panel = panel
        self.bus = bus
        self.panel_id: int = panel.panel_id
        by_door: dict[int, list[int]] = {}
        for spec in bus.readers.values():
            by_door.setdefault(spec.door, []).append(spec.address)
        self._doors = [by_door[d] for d in sorted(by_door)]
        self._turn = [0] * len(self._doors)
        self.doors = len(self._doors)
        #: (reader address, card) in the order presented.
        self.presented: list[tuple[int, int]] = []

    def known_cards(self) -> Sequence[int]:
        cards: Sequence[int] = self.panel.known_cards()
        return cards

    async def swipe_wait(self, card: int, door: int, *, reader: int = 1, pin: int | None = None) -> None:
        index = door % len(self._doors)
        addresses = self._doors[index]
        address = addresses[self._turn[index] % len(addresses)]
        self._turn[index] += 1
        self.bus.swipe(address, card)
        self.presented.append((address, card))
        await trio.lowlevel.checkpoint()
