"""An emulated field panel: decides locally, buffers, and resyncs with the host.

The panel keeps working with or without a host: card swipes are decided from
its own configuration and appended to its bounded buffer. Its link to the host
(``HostLink``, in ``_uplink.py``) keeps trying to reach the cluster and runs one
session at a time; the panel keeps what a session changes: on WELCOME it
resumes from the store's high-water mark (renumbering after a RAM power-cycle),
on ACK it frees the buffer, and it applies configuration changes atomically.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from protocol import ALARM_KINDS, Ack, EventFlags, EventKind, EventRecord
from protocol.streams import Link, SerialLine, TlsFiles
from storage import BufferFull, EventBuffer, FlashBackedBuffer, OverflowPolicy, PanelConfig, StoreError

from ._decide import decide
from ._osdp import ReaderSpec
from ._osdp_port import ReaderPort
from ._uplink import HostLink, LinkMode, SessionRefused

__all__ = ["BootSummary", "JournalEntry", "LinkMode", "Panel", "PanelSettings", "PanelStatistics", "SessionRefused"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PanelSettings:
    panel_id: int
    mode: LinkMode = LinkMode.PUNCH_OUT
    #: Where a punch-out panel dials (the VIP).
    server: tuple[str, int] = ("127.0.0.100", 30002)
    #: Where a host-initiated panel listens (its own address).
    listen: tuple[str, int] | None = None
    #: The serial line of a serial panel.
    serial: SerialLine | None = None
    #: The reader bus: an OSDP line to libosdp card readers (see ``ReaderBus``), and the readers.
    reader_line: SerialLine | None = None
    readers: tuple[ReaderSpec, ...] = ()
    tls: TlsFiles | None = None
    buffer_bytes: int = 1 << 20
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    #: A SQLite file for flash persistence; None keeps the buffer in RAM only.
    flash: Path | None = None
    flash_sync_interval: float = 0.1
    doors: int = 4
    batch_records: int = 4096
    window: int = 4
    backoff_initial: float = 0.05
    backoff_cap: float = 2.0
    #: Growth per failed attempt; gentle, so a panel is back soon after a failover.
    backoff_factor: float = 1.5
    #: For this long after a working session is lost, retry at least every ``fast_retry_cap`` s.
    fast_retry_window: float = 5.0
    fast_retry_cap: float = 0.25
    #: TCP connect and TLS handshake; a reconnect storm after failover needs room.
    connect_timeout: float = 5.0
    handshake_timeout: float = 5.0
    #: Park addresses (docs/protocol.md 6.3): (node name, host, port) of each node of the
    #: cluster. The panel keeps a session parked at each node it is not in session with, so
    #: that a takeover reaches it on a connection already up. Empty: no parking.
    park: tuple[tuple[str, str, int], ...] = ()
    #: After a park connection ends or is refused (an active node does not listen there),
    #: the next try comes this long later (with jitter: between half and all of it).
    park_retry: float = 2.0
    #: The alarm lane (docs/protocol.md 7.6): copies of this many alarms at most wait for
    #: their ALARM_ACK (the oldest are forgotten past it: they still go in the backlog).
    #: 0: no alarm lane (alarms only in their places in the backlog).
    alarm_outbox: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.panel_id < 2**32:
            raise ValueError(f"panel id {self.panel_id} is outside 1..{2**32 - 1}")
        if self.mode is LinkMode.HOST_INITIATED and self.listen is None:
            raise ValueError(f"panel {self.panel_id}: host-initiated mode needs a listen address")
        if self.mode is LinkMode.SERIAL and self.serial is None:
            raise ValueError(f"panel {self.panel_id}: serial mode needs a serial line")
        if (self.reader_line is None) != (not self.readers):
            raise ValueError(f"panel {self.panel_id}: an OSDP reader bus needs both reader_line and readers")
        if self.park and self.park_retry < 2:
            # Tried again after half to all of it: never more than once a second (6.3 rule 1).
            raise ValueError(f"panel {self.panel_id}: park_retry {self.park_retry:g} s is below 2 s")
        if self.window < 1 or not 1 <= self.batch_records <= 0xFFFF:
            raise ValueError("window must be >= 1 and batch_records within 1..65535")
        if self.alarm_outbox < 0:
            raise ValueError(f"panel {self.panel_id}: alarm_outbox {self.alarm_outbox} is negative")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PanelStatistics:
    panel_id: int
    connected: bool
    node: str | None
    epoch: int
    max_epoch: int
    boot_id: int
    config_version: int
    swipes: int
    granted: int
    denied: int
    sessions: int
    link_errors: int
    protocol_errors: int
    refused_stale: int
    batches_sent: int
    #: Line noise the resynchronizing decoder skipped, and frames that failed their CRC (serial).
    bytes_skipped: int
    bad_frames: int
    acked_seq: int
    #: The highest seq ever acknowledged in this boot (ACKs only; a WELCOME's hwm does not count).
    promised_seq: int
    last_error: str | None
    buffer_depth: int
    buffer_bytes: int
    #: The buffer's byte budget (``buffer_bytes`` of it is in use).
    buffer_budget: int
    #: Alarm copies queued for the alarm lane, not yet acknowledged (docs/protocol.md 7.6).
    alarms_pending: int
    #: The buffer's counts since this boot (a power cycle starts a new buffer).
    emitted: int
    acked: int
    dropped: int
    refused: int
    #: Events lost with a RAM buffer at power cycles, every boot together.
    power_lost: int = 0
    #: Events acknowledged that a server later no longer held (SERVER_LOST markers).
    server_lost: int = 0


class _Signal:
    """A level-triggered wake-up for one waiting task."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One event as the panel generated it: the ground truth a checker holds the store to.

    ``time_us``, ``kind``, ``door`` and ``card`` are the event's identity, as stored;
    ``seq`` is its number (renumbered if its boot continued after the store's hwm).
    """

    boot_id: int
    seq: int
    time_us: int
    kind: int
    door: int
    card: int

    @property
    def identity(self) -> tuple[int, int, int, int]:
        return (self.time_us, self.kind, self.door, self.card)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BootSummary:
    """What a boot of the panel left behind when its power went."""

    boot_id: int
    #: The highest seq an ACK covered in that boot: every event up to it was promised durable.
    promised_seq: int
    #: The buffer was RAM: what was in it died with the power.
    ram: bool


class Panel:
    """One emulated field panel. Run ``run()`` in a nursery; call ``swipe*`` any time."""

    def __init__(
        self,
        settings: PanelSettings,
        *,
        wall_clock: Callable[[], int] = _wall_clock_us,
        seed: int = 0,
        config: PanelConfig | None = None,
        journal: bool = False,
    ) -> None:
        self.settings = settings
        self.panel_id = settings.panel_id
        #: Every event this panel numbered, when asked for: what a checker compares the store with.
        self.journal: list[JournalEntry] | None = [] if journal else None
        #: Every earlier boot, in order (a power-cycle ends one).
        self.past_boots: list[BootSummary] = []
        self.doors = settings.doors
        self.wall_clock = wall_clock
        self.clock_skew_us = 0
        self._rng = random.Random(seed ^ (settings.panel_id * 0x9E3779B1))
        self.config = config if config is not None else PanelConfig()
        self._known_cards: list[int] = []
        self._cards_version = -1
        self.max_epoch = 0
        self.boot_id = self._rng.getrandbits(63)
        self._needs_rebase = False
        self.buffer: EventBuffer = self._new_buffer()
        #: The link to the host: connections, the session, the link's counters.
        self._link = HostLink(self, self._rng)
        self._new_data = _Signal()
        self._room = trio.Event()
        self._acked_seq = 0
        #: The alarm lane (docs/protocol.md 7.6): packed copies of the alarms recorded and not
        #: yet covered by an ALARM_ACK or an ACK, oldest first; and how many were forgotten.
        self.alarm_outbox: collections.deque[bytes] = collections.deque()
        self.alarms_forgotten = 0
        self.alarms_sent = 0
        #: The highest seq an ALARM_ACK covered (this panel's alarms up to it that the lane
        #: carried are stored).
        self.alarm_acked_seq = 0
        #: With a journal: the identities (as ``JournalEntry.identity``) of the alarms an
        #: ALARM_ACK covered, every boot.
        self.alarms_lane_acked: list[tuple[int, int, int, int]] = []
        #: The highest seq any node ever acknowledged in this boot: what the panel was
        #: promised is durable (a WELCOME may later say less: that is a broken promise).
        self._promised_seq = 0
        self._swipes = self._granted = self._denied = 0
        self.last_error: str | None = None
        #: The last park connection's trouble (docs/protocol.md 6.3), kept apart from the session's.
        self.last_park_error: str | None = None
        #: trio time of the first ACK under each epoch: what failover is measured by.
        self.first_ack_at: dict[int, float] = {}
        #: When the last ACK under each epoch came (trio clock): where a failover's outage starts.
        self.last_ack_at: dict[int, float] = {}
        #: Events acknowledged to this panel that a server later no longer held, declared with
        #: SERVER_LOST markers (an asynchronous mirror's failover).
        self.server_lost = 0
        #: Events queued in a RAM buffer when the power went, every boot together.
        self.power_lost = 0
        #: trio time of the first WELCOME under each epoch (the session is up; the ACK follows a commit).
        self.welcome_at: dict[int, float] = {}
        #: The OSDP Control Panel on the reader bus, when the panel has one.
        self.reader_port: ReaderPort | None = None
        if settings.reader_line is not None:
            self.reader_port = ReaderPort(self, settings.reader_line, settings.readers)

    def __repr__(self) -> str:
        link = self._link
        state = f"connected to {link.session_node} epoch {link.session_epoch}" if self.is_connected else "offline"
        return f"<Panel {self.panel_id} {self.settings.mode.value} {state} {self.buffer!r}>"

    def _new_buffer(self) -> EventBuffer:
        s = self.settings
        if s.flash is not None:
            return FlashBackedBuffer(s.flash, s.buffer_bytes, s.policy)
        return EventBuffer(s.buffer_bytes, s.policy)

    @property
    def is_connected(self) -> bool:
        return self._link.is_connected

    @property
    def acked_seq(self) -> int:
        """The highest seq acknowledged to this panel (every event up to it is stored)."""
        return self._acked_seq

    @property
    def parked_at(self) -> list[str]:
        """The nodes this panel has a session parked at now (docs/protocol.md 6.3)."""
        return list(self._link.parks)

    @property
    def takeovers(self) -> int:
        """Sessions that came to this panel as a TAKEOVER on a parked connection."""
        return self._link.takeovers

    @property
    def connected(self) -> trio.Event:
        """Set while a session is up (a new event each session: read it when you wait)."""
        return self._link.connected

    @property
    def disconnected(self) -> trio.Event:
        """Set while no session is up (a new event each session: read it when you wait)."""
        return self._link.disconnected

    def now_us(self) -> int:
        return self.wall_clock() + self.clock_skew_us

    # -- local decisions ------------------------------------------------------------

    def known_cards(self) -> Sequence[int]:
        if self._cards_version != self.config.version:
            self._known_cards = sorted(self.config.state.cardholders)
            self._cards_version = self.config.version
        return self._known_cards

    def swipe(self, card: int, door: int, *, reader: int = 1, pin: int | None = None) -> EventKind | None:
        """Decide a card presentation locally and record it; None if the buffer refused it.

        Raises:
            BufferFull: the buffer is full and its policy is ``block`` (use ``swipe_wait``).
        """
        now = self.now_us()
        kind, flags = decide(self.config.state, card=card, door=door, now_us=now, pin=pin)
        if not self.is_connected:
            flags |= flags.DECIDED_OFFLINE
        if self._append(kind, door=door, reader=reader, flags=int(flags), card=card) is None:
            return None
        self._swipes += 1
        if kind is EventKind.ACCESS_GRANTED:
            self._granted += 1
        else:
            self._denied += 1
        return kind

    async def swipe_wait(self, card: int, door: int, *, reader: int = 1, pin: int | None = None) -> EventKind | None:
        """``swipe``, waiting for buffer room under the ``block`` policy."""
        while True:
            try:
                return self.swipe(card, door, reader=reader, pin=pin)
            except BufferFull:
                # No await since the refusal, so no release can have been missed.
                if self._room.is_set():
                    self._room = trio.Event()
                await self._room.wait()

    def record(self, kind: EventKind, *, door: int = 0, card: int = 0, aux: int = 0) -> int | None:
        """Record a non-access event (door forced, tamper, power) now."""
        try:
            return self._append(kind, door=door, card=card, aux=aux)
        except BufferFull:
            return None

    def _append(
        self, kind: EventKind, *, door: int = 0, reader: int = 0, flags: int = 0, card: int = 0, aux: int = 0
    ) -> int | None:
        now = self.now_us()
        seq = self.buffer.append(now, kind, door=door, reader=reader, flags=flags, card=card, aux=aux)
        if seq is not None and kind in ALARM_KINDS and self.settings.alarm_outbox:
            copy = EventRecord(
                seq=seq, time_us=now, kind=kind, door=door, reader=reader, flags=EventFlags(flags), card=card, aux=aux
            )
            self.alarm_outbox.append(copy.pack())
            if len(self.alarm_outbox) > self.settings.alarm_outbox:
                self.alarm_outbox.popleft()
                self.alarms_forgotten += 1
        if seq is not None and self.journal is not None:
            entry = JournalEntry(boot_id=self.boot_id, seq=seq, time_us=now, kind=int(kind), door=door, card=card)
            self.journal.append(entry)
        self._new_data.wake()
        return seq

    # -- power --------------------------------------------------------------------------

    def power_cycle(self) -> None:
        """Lose power and come back: the session drops; a RAM buffer is lost, flash is kept.

        The loss of a RAM buffer is declared by the new boot id and, once the
        host says where its store stands, by renumbering what was queued since.
        """
        self._link.cancel_session()
        ram = not isinstance(self.buffer, FlashBackedBuffer)
        if ram:
            self.power_lost += self.buffer.statistics().buffered
        self.past_boots.append(BootSummary(boot_id=self.boot_id, promised_seq=self._promised_seq, ram=ram))
        if isinstance(self.buffer, FlashBackedBuffer):
            self.buffer.close()
        self.boot_id = self._rng.getrandbits(63)
        self.buffer = self._new_buffer()
        self.alarm_outbox.clear()  # RAM: the alarms are in the (flash) backlog, if anywhere
        self.alarm_acked_seq = 0
        if not isinstance(self.buffer, FlashBackedBuffer):
            self._promised_seq = 0  # a new boot numbers afresh; its promises start now
        self._needs_rebase = not isinstance(self.buffer, FlashBackedBuffer)
        self.record(EventKind.POWER_RESTORE)

    # -- the link ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a host session up for as long as this runs."""
        link = self._link
        async with trio.open_nursery() as nursery:
            if isinstance(self.buffer, FlashBackedBuffer):
                nursery.start_soon(self._flash_sync_loop)
            if self.reader_port is not None:
                await nursery.start(self.reader_port.run)
            if self.settings.mode is not LinkMode.SERIAL:
                for node, host, port in self.settings.park:
                    nursery.start_soon(link.park_loop, node, host, port)
            if self.settings.mode is LinkMode.PUNCH_OUT:
                task_status.started()
                await link.reconnect_loop(link.dial_server)
            elif self.settings.mode is LinkMode.SERIAL:
                task_status.started()
                await link.reconnect_loop(link.open_line)
            else:
                host, port = self.settings.listen or ("", 0)
                await nursery.start(link.listen, host, port)
                task_status.started()

    async def _run_link(self, link: Link) -> bool:
        """Run one session on an established link (tests drive it over memory streams)."""
        return await self._link.run_link(link)

    def _resume_at(self, hwm: int) -> None:
        """A session is up and the store holds this panel's events to ``hwm``: free them.

        A panel that lost its counter (RAM power-cycle) continues after the store,
        and its journal is renumbered to match.
        """
        if self._needs_rebase or hwm >= self.buffer.next_seq:
            oldest = self.buffer.oldest_seq or self.buffer.next_seq
            shift = self.buffer.rebase(hwm + 1)
            self._needs_rebase = False
            if self.journal is not None and shift:
                self.journal[:] = [
                    dataclasses.replace(e, seq=e.seq + shift) if e.boot_id == self.boot_id and e.seq >= oldest else e
                    for e in self.journal
                ]
            if shift:  # the alarms' copies carry the seqs their records now have
                self.alarm_outbox = collections.deque(
                    (int.from_bytes(r[:8], "big") + shift).to_bytes(8, "big") + r[8:] for r in self.alarm_outbox
                )
        self.buffer.release(hwm)
        self._acked_seq = hwm
        self.alarm_stored(hwm)

    def alarm_stored(self, up_to_seq: int, *, by_lane: bool = False) -> None:
        """An ALARM_ACK (``by_lane``) or an ACK covers the alarms up to ``up_to_seq``: forget
        their copies. With a journal, what an ALARM_ACK covered is kept (``alarms_lane_acked``):
        the checker finds each in the store's alarms as the lane's."""
        if by_lane:
            self.alarm_acked_seq = max(self.alarm_acked_seq, up_to_seq)
        outbox = self.alarm_outbox
        while outbox and int.from_bytes(outbox[0][:8], "big") <= up_to_seq:
            copy = outbox.popleft()
            if by_lane and self.journal is not None:
                record = EventRecord.unpack(copy)
                self.alarms_lane_acked.append((record.time_us, int(record.kind), record.door, record.card))

    def _acked(self, ack: Ack) -> None:
        now = trio.current_time()
        self.first_ack_at.setdefault(ack.epoch, now)
        self.last_ack_at[ack.epoch] = now
        self._acked_seq = ack.up_to_seq
        self._promised_seq = max(self._promised_seq, ack.up_to_seq)
        self.alarm_stored(ack.up_to_seq)
        if self.buffer.release(ack.up_to_seq):
            self._room.set()
        self._new_data.wake()

    def _config_applied(self) -> None:
        self.record(EventKind.CONFIG_APPLIED, card=self.config.version)

    async def _flash_sync_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.flash_sync_interval)
            buffer = self.buffer
            if isinstance(buffer, FlashBackedBuffer):
                plan = buffer.sync_plan()  # taken here, between appends: no race with the ring
                try:
                    await trio.to_thread.run_sync(buffer.write_sync, plan)
                except StoreError:
                    if buffer is self.buffer:
                        raise
                    continue  # the power went while it synced: that buffer is history
                self._new_data.wake()

    # -- introspection --------------------------------------------------------------

    def statistics(self) -> PanelStatistics:
        b, link = self.buffer.statistics(), self._link
        return PanelStatistics(
            panel_id=self.panel_id,
            connected=self.is_connected,
            node=link.session_node if self.is_connected else None,
            epoch=link.session_epoch,
            max_epoch=self.max_epoch,
            boot_id=self.boot_id,
            config_version=self.config.version,
            swipes=self._swipes,
            granted=self._granted,
            denied=self._denied,
            sessions=link.sessions,
            link_errors=link.link_errors,
            protocol_errors=link.protocol_errors,
            refused_stale=link.refused_stale,
            batches_sent=link.batches_sent,
            bytes_skipped=link.bytes_skipped,
            bad_frames=link.bad_frames,
            acked_seq=self._acked_seq,
            promised_seq=self._promised_seq,
            last_error=self.last_error,
            buffer_depth=b.depth,
            buffer_bytes=b.bytes,
            buffer_budget=b.budget_bytes,
            alarms_pending=len(self.alarm_outbox),
            emitted=b.emitted,
            acked=b.acked,
            dropped=b.dropped,
            refused=b.refused,
            power_lost=self.power_lost,
            server_lost=self.server_lost,
        )
