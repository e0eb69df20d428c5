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
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import osdp_sys
import serial  # pyserial
import trio

from protocol import EventKind
from protocol.streams import LinkError, SerialLine

__all__ = [
    "MAX_READERS",
    "BusSwiper",
    "ReaderBus",
    "ReaderPort",
    "ReaderPortStatistics",
    "ReaderSpec",
    "card_read_event",
]

MAX_READERS = 32
_SOM = 0x53
_MARK = 0xFF
_MAX_PACKET = 1440
_CAPABILITIES = [
    {"function_code": osdp_sys.CAP_COMMUNICATION_SECURITY, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_CARD_DATA_FORMAT, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_READER_LED_CONTROL, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_READER_AUDIBLE_OUTPUT, "compliance_level": 1, "num_items": 1},
    {"function_code": osdp_sys.CAP_READERS, "compliance_level": 1, "num_items": 1},
]
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


def _check_readers(readers: Sequence[ReaderSpec]) -> None:
    if not 1 <= len(readers) <= MAX_READERS:
        raise ValueError(f"a reader bus has 1..{MAX_READERS} readers, not {len(readers)}")
    addresses = [r.address for r in readers]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"reader addresses repeat on one bus: {sorted(addresses)}")


class _PacketSplitter:
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
            start = i - 1 if i > 0 and buf[i - 1] == _MARK else i
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


def _card_of(event: dict[str, Any]) -> int | None:
    data = event.get("data") or b""
    bits = int(event.get("length", len(data) * 8))
    if not data or bits <= 0:
        return None
    return int.from_bytes(bytes(data)[: (bits + 7) // 8], "big")


def _open(line: SerialLine) -> serial.Serial:
    try:
        return serial.Serial(str(line.path), baudrate=line.baud, timeout=0, write_timeout=0, exclusive=True)
    except serial.SerialException as exc:
        raise LinkError(f"cannot open OSDP reader line {line.path}: {exc}") from exc


# -- the readers -------------------------------------------------------------------------


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
        _check_readers(readers)
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
        self._port = port = _open(self.line)
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
        splitter = _PacketSplitter()
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


# -- the panel's side --------------------------------------------------------------------


class _CpChannel:
    """The panel's end of the reader line: one packet per read, and who answered when."""

    def __init__(self, port: serial.Serial, heard: dict[int, float], clock: Callable[[], float]) -> None:
        self.id = 0
        self._port = port
        self._heard = heard
        self._clock = clock
        self._splitter = _PacketSplitter()
        self._packets: deque[bytes] = deque()
        self.errors: list[str] = []

    def read(self, max_bytes: int) -> bytes:
        try:
            if not self._packets:
                for packet in self._splitter.feed(self._port.read(4096)):
                    mark = 1 if packet[0] == _MARK else 0
                    self._heard[packet[mark + 1] & 0x7F] = self._clock()
                    self._packets.append(packet)
            if not self._packets:
                return b""
            packet = self._packets[0]
            if len(packet) <= max_bytes:
                return self._packets.popleft()
            self._packets[0] = packet[max_bytes:]
            return packet[:max_bytes]
        except Exception as exc:  # never into libosdp
            self.errors.append(f"read: {exc}")
            return b""

    def write(self, data: bytes) -> int:
        try:
            return int(self._port.write(data) or 0)
        except Exception as exc:  # never into libosdp
            self.errors.append(f"write: {exc}")
            return 0

    def flush(self) -> None:
        pass


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReaderPortStatistics:
    readers: int
    online: tuple[int, ...]
    secure: tuple[int, ...]
    card_reads: int
    auth_failures: dict[int, int]
    offline_reports: int
    retries: int


class ReaderPort:
    """The panel's OSDP Control Panel on its reader line; run ``run()`` in the panel's nursery.

    Args:
        panel: decides each card read (``swipe``) and records reader events (``record``).
        silent_after: a reader that has not answered a poll this long is reported offline.
        retry_interval: how often an offline reader is tried again (libosdp alone waits 300 s).
    """

    def __init__(
        self,
        panel: Any,
        line: SerialLine,
        readers: Sequence[ReaderSpec],
        *,
        tick: float = 0.002,
        silent_after: float = 1.0,
        retry_interval: float = 1.0,
    ) -> None:
        _check_readers(readers)
        self.panel = panel
        self.line = line
        self.readers = list(readers)
        self._index = {r.address: i for i, r in enumerate(self.readers)}
        self.tick = tick
        self.silent_after = silent_after
        self.retry_interval = retry_interval
        #: When each reader last answered (a packet from it on the line).
        self._heard: dict[int, float] = {}
        #: Silence is counted from here at the earliest (it came online, or was retried).
        self._watch_from: dict[int, float] = {}
        self._online: set[int] = set()
        self._offline_since: dict[int, float] = {}
        self._last_retry: dict[int, float] = {}
        self._auth_failed_now: set[int] = set()
        self._auth_failures = dict.fromkeys(self._index, 0)
        self._sc_failed_in_row = dict.fromkeys(self._index, 0)
        self._events: deque[tuple[int, dict[str, Any]]] = deque()
        self._cp: Any = None
        self._card_reads = self._offline_reports = self._retries = 0
        self.decisions: list[tuple[int, int, EventKind | None]] = []
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<ReaderPort {self.line.path} online {sorted(self._online)} of {sorted(self._index)}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the readers until cancelled.

        Raises:
            LinkError: the reader line cannot be opened.
        """
        osdp_sys.set_loglevel(LOG_LEVEL)
        port = _open(self.line)
        try:
            channel = _CpChannel(port, self._heard, trio.current_time)
            infos = [
                {
                    "name": f"reader-{r.address}",
                    "address": r.address,
                    # Secure Channel or nothing: no clear-text fallback (OSDP downgrade findings).
                    "flags": osdp_sys.FLAG_ENFORCE_SECURE | osdp_sys.FLAG_ENABLE_NOTIFICATION,
                    "scbk": r.key,
                    "channel": channel,
                    "version": 1,
                    "model": 1,
                    "vendor_code": 0,
                    "serial_number": 0,
                    "firmware_version": 0,
                }
                for r in self.readers
            ]
            self._cp = cp = osdp_sys.ControlPanel(infos)
            cp.set_event_callback(self._on_event)
            start = trio.current_time()
            for r in self.readers:
                self._offline_since[r.address] = start
                self._last_retry[r.address] = start
            task_status.started()
            while True:
                cp.refresh()
                self._handle_events()
                self._watch(trio.current_time())
                if channel.errors:
                    self.last_error = channel.errors[-1]
                await trio.sleep(self.tick)
        finally:
            self._cp = None
            port.close()

    def _on_event(self, pd: int, event: dict[str, Any]) -> int:
        # Inside libosdp's refresh(): only queue; act after it returns.
        self._events.append((pd, dict(event)))
        return 0

    def _handle_events(self) -> None:
        cp = self._cp
        while self._events:
            pd, event = self._events.popleft()
            spec = self.readers[pd]
            kind = event.get("event")
            if kind == osdp_sys.EVENT_CARDREAD:
                card = _card_of(event)
                if card is None:
                    continue
                self._card_reads += 1
                decision = self.panel.swipe(card, spec.door, reader=spec.address)
                self.decisions.append((spec.address, card, decision))
                granted = decision is EventKind.ACCESS_GRANTED
                cp.submit_command(pd, _led(granted))
                if not granted:
                    cp.submit_command(pd, _BUZZ)
            elif kind == osdp_sys.EVENT_NOTIFICATION:
                self._on_notification(spec, event)

    def _on_notification(self, spec: ReaderSpec, event: dict[str, Any]) -> None:
        address = spec.address
        kind, up = event.get("type"), bool(event.get("arg0"))
        if kind == osdp_sys.EVENT_NOTIFICATION_PD_STATUS:
            if up and self._cp.sc_status() & (1 << self._index[address]):
                self._mark_online(spec)
            elif not up:
                self._mark_offline(spec, trio.current_time())
        elif (
            kind == osdp_sys.EVENT_NOTIFICATION_SC_STATUS
            and not up
            and address not in self._online
            and address not in self._auth_failed_now
            and self._heard.get(address, -math.inf) >= self._last_retry.get(address, math.inf)
        ):
            # It answered since this attempt began, yet the Secure Channel handshake
            # failed: a wrong key (or an impostor), not silence. A reader coming back
            # mid-handshake can fail once, so only a second failure in a row counts.
            # Refused and reported once per outage; never served in clear.
            self._sc_failed_in_row[address] += 1
            if self._sc_failed_in_row[address] < 2:
                self._last_retry[address] = -math.inf  # try again at once
                return
            self._auth_failed_now.add(address)
            self._auth_failures[address] += 1
            self.panel.record(EventKind.READER_AUTH_FAILED, door=spec.door, card=address)
            self.last_error = f"reader {address}: Secure Channel refused (wrong key?)"

    def _mark_online(self, spec: ReaderSpec) -> None:
        if spec.address in self._online:
            return
        self._online.add(spec.address)
        self._watch_from[spec.address] = trio.current_time()
        self._sc_failed_in_row[spec.address] = 0
        self._offline_since.pop(spec.address, None)
        self._auth_failed_now.discard(spec.address)
        self.panel.record(EventKind.READER_ONLINE, door=spec.door, card=spec.address)

    def _mark_offline(self, spec: ReaderSpec, now: float) -> None:
        self._offline_since.setdefault(spec.address, now)
        self._last_retry.setdefault(spec.address, now)
        if spec.address in self._online:
            self._online.discard(spec.address)
            self._offline_reports += 1
            self.panel.record(EventKind.READER_OFFLINE, door=spec.door, card=spec.address)

    def _watch(self, now: float) -> None:
        for spec in self.readers:
            address = spec.address
            if address in self._online:
                last = max(self._heard.get(address, -math.inf), self._watch_from.get(address, now))
                if now - last >= self.silent_after:
                    self._mark_offline(spec, now)
                    self._retry(address, now)
                continue
            # A silent reader is tried every retry_interval; one that failed its Secure
            # Channel handshake backs off (up to 30 s): its key will not fix itself.
            delay = self.retry_interval
            if address in self._auth_failed_now:
                delay = min(30.0, self.retry_interval * 2 ** min(self._auth_failures[address], 5))
            if now - self._last_retry.get(address, now) >= delay:
                self._retry(address, now)

    def _retry(self, address: int, now: float) -> None:
        # libosdp parks a lost reader for 300 s; disabling and enabling it (with a
        # refresh in between) starts it over at once.
        cp, pd = self._cp, self._index[address]
        cp.disable_pd(pd)
        for _ in range(3):
            cp.refresh()
        cp.enable_pd(pd)
        self._watch_from[address] = now
        self._last_retry[address] = now
        self._retries += 1

    def statistics(self) -> ReaderPortStatistics:
        secure: tuple[int, ...] = ()
        if self._cp is not None:
            mask = self._cp.sc_status()
            secure = tuple(r.address for i, r in enumerate(self.readers) if mask & (1 << i))
        return ReaderPortStatistics(
            readers=len(self.readers),
            online=tuple(sorted(self._online)),
            secure=secure,
            card_reads=self._card_reads,
            auth_failures=dict(self._auth_failures),
            offline_reports=self._offline_reports,
            retries=self._retries,
        )


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


def _led(granted: bool) -> dict[str, Any]:
    return {
        "command": osdp_sys.CMD_LED,
        "reader": 0,
        "led_number": 0,
        "control_code": 1,
        "on_color": osdp_sys.LED_COLOR_GREEN if granted else osdp_sys.LED_COLOR_RED,
        "off_color": osdp_sys.LED_COLOR_NONE,
        "on_count": 10,
        "off_count": 0,
        "timer_count": 10,
        "temporary": True,
    }


_BUZZ = {"command": osdp_sys.CMD_BUZZER, "reader": 0, "control_code": 2, "on_count": 1, "off_count": 1, "rep_count": 1}
