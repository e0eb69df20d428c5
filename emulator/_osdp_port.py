"""The panel's side of its reader bus: the libosdp Control Panel, as a trio task.

``ReaderPort`` polls the readers, hands each card read to the panel's local
decision and answers the reader with its LED and buzzer; it enforces Secure
Channel, reports readers that fail it or go silent, and retries them soon.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import osdp_sys
import serial  # pyserial
import trio

from protocol import EventKind
from protocol.streams import SerialLine

from ._osdp import LOG_LEVEL, MARK, PacketSplitter, ReaderSpec, check_readers, open_reader_line

__all__ = ["ReaderPort", "ReaderPortStatistics"]


def _card_of(event: dict[str, Any]) -> int | None:
    data = event.get("data") or b""
    bits = int(event.get("length", len(data) * 8))
    if not data or bits <= 0:
        return None
    return int.from_bytes(bytes(data)[: (bits + 7) // 8], "big")


class _CpChannel:
    """The panel's end of the reader line: one packet per read, and who answered when."""

    def __init__(self, port: serial.Serial, heard: dict[int, float], clock: Callable[[], float]) -> None:
        self.id = 0
        self._port = port
        self._heard = heard
        self._clock = clock
        self._splitter = PacketSplitter()
        self._packets: deque[bytes] = deque()
        self.errors: list[str] = []

    def read(self, max_bytes: int) -> bytes:
        try:
            if not self._packets:
                for packet in self._splitter.feed(self._port.read(4096)):
                    mark = 1 if packet[0] == MARK else 0
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
        check_readers(readers)
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
        port = open_reader_line(self.line)
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
