"""An emulated field panel: decides locally, buffers, and resyncs with the host.

The panel keeps working with or without a host: card swipes are decided from
its own configuration and appended to its bounded buffer. A link manager keeps
trying to reach the cluster (punch-out: dial the VIP; host-initiated: listen on
the panel's own address and let the active node dial in). A session resumes
from the store's high-water mark, uploads in seq order with several batches in
flight, frees the buffer on ACK, applies configuration changes atomically and
refuses any node whose epoch is older than the newest it has seen (P5).
"""

from __future__ import annotations

import dataclasses
import enum
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from protocol import (
    Ack,
    ConfigAck,
    ConfigDelta,
    ConfigOp,
    ConfigSnapshot,
    Error,
    ErrorCode,
    EventBatch,
    EventKind,
    Hello,
    Message,
    PanelConnection,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    Welcome,
)
from protocol.streams import (
    EndReason,
    Link,
    LinkError,
    MessageStream,
    SerialLine,
    SessionDriver,
    SessionEnd,
    TlsError,
    TlsFiles,
    client_context,
    dial,
    listen,
    open_serial,
    records_per_batch,
    serial_link,
    server_context,
)
from storage import BufferFull, EventBuffer, FlashBackedBuffer, OverflowPolicy, PanelConfig, StoreError

from ._decide import decide
from ._osdp import ReaderPort, ReaderSpec

__all__ = ["BootSummary", "JournalEntry", "LinkMode", "Panel", "PanelSettings", "PanelStatistics", "SessionRefused"]

FIRMWARE = "fieldsync-emu/0.1"


class LinkMode(enum.Enum):
    #: The panel dials the cluster's VIP on 30002 ("node punch-out").
    PUNCH_OUT = "punch-out"
    #: The panel listens on its own address, port 3001; the active node dials in.
    HOST_INITIATED = "host-initiated"
    #: The panel's host link is a serial line (RS-232/RS-485 style) to a node or comm server.
    SERIAL = "serial"


class SessionRefused(Exception):
    """The node ended the session with an ERROR."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"node sent ERROR {error.code}: {error.text}")
        self.error = error


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

    def __post_init__(self) -> None:
        if not 0 < self.panel_id < 2**32:
            raise ValueError(f"panel id {self.panel_id} is outside 1..{2**32 - 1}")
        if self.mode is LinkMode.HOST_INITIATED and self.listen is None:
            raise ValueError(f"panel {self.panel_id}: host-initiated mode needs a listen address")
        if self.mode is LinkMode.SERIAL and self.serial is None:
            raise ValueError(f"panel {self.panel_id}: serial mode needs a serial line")
        if (self.reader_line is None) != (not self.readers):
            raise ValueError(f"panel {self.panel_id}: an OSDP reader bus needs both reader_line and readers")
        if self.window < 1 or not 1 <= self.batch_records <= 0xFFFF:
            raise ValueError("window must be >= 1 and batch_records within 1..65535")


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
    emitted: int
    acked: int
    dropped: int
    refused: int


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
        self._client_ctx: ssl.SSLContext | None = client_context(settings.tls) if settings.tls else None
        self._server_ctx: ssl.SSLContext | None = server_context(settings.tls) if settings.tls else None
        self._new_data = _Signal()
        self._room = trio.Event()
        self._session_scope: trio.CancelScope | None = None
        self._session_epoch = 0
        self._session_node: str | None = None
        self._acked_seq = 0
        #: The highest seq any node ever acknowledged in this boot: what the panel was
        #: promised is durable (a WELCOME may later say less: that is a broken promise).
        self._promised_seq = 0
        self._swipes = self._granted = self._denied = 0
        self._sessions = self._link_errors = self._protocol_errors = self._refused_stale = 0
        self._batches_sent = 0
        self._bytes_skipped = self._bad_frames = 0
        self._batch_records = settings.batch_records
        if settings.serial is not None:
            self._batch_records = min(settings.batch_records, records_per_batch(settings.serial))
        self.last_error: str | None = None
        #: trio time of the first ACK under each epoch: what failover is measured by.
        self.first_ack_at: dict[int, float] = {}
        #: trio time of the first WELCOME under each epoch (the session is up; the ACK follows a commit).
        self.welcome_at: dict[int, float] = {}
        self.connected = trio.Event()
        self.disconnected = trio.Event()
        self.disconnected.set()
        #: The OSDP Control Panel on the reader bus, when the panel has one.
        self.reader_port: ReaderPort | None = None
        if settings.reader_line is not None:
            self.reader_port = ReaderPort(self, settings.reader_line, settings.readers)

    def __repr__(self) -> str:
        state = f"connected to {self._session_node} epoch {self._session_epoch}" if self.is_connected else "offline"
        return f"<Panel {self.panel_id} {self.settings.mode.value} {state} {self.buffer!r}>"

    def _new_buffer(self) -> EventBuffer:
        s = self.settings
        if s.flash is not None:
            return FlashBackedBuffer(s.flash, s.buffer_bytes, s.policy)
        return EventBuffer(s.buffer_bytes, s.policy)

    @property
    def is_connected(self) -> bool:
        return self._session_scope is not None and self.connected.is_set()

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
        if self._session_scope is not None:
            self._session_scope.cancel()
        ram = not isinstance(self.buffer, FlashBackedBuffer)
        self.past_boots.append(BootSummary(boot_id=self.boot_id, promised_seq=self._promised_seq, ram=ram))
        if isinstance(self.buffer, FlashBackedBuffer):
            self.buffer.close()
        self.boot_id = self._rng.getrandbits(63)
        self.buffer = self._new_buffer()
        if not isinstance(self.buffer, FlashBackedBuffer):
            self._promised_seq = 0  # a new boot numbers afresh; its promises start now
        self._needs_rebase = not isinstance(self.buffer, FlashBackedBuffer)
        self.record(EventKind.POWER_RESTORE)

    # -- the link ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a host session up for as long as this runs."""
        async with trio.open_nursery() as nursery:
            if isinstance(self.buffer, FlashBackedBuffer):
                nursery.start_soon(self._flash_sync_loop)
            if self.reader_port is not None:
                await nursery.start(self.reader_port.run)
            if self.settings.mode is LinkMode.PUNCH_OUT:
                task_status.started()
                await self._reconnect_loop(self._dial_server)
            elif self.settings.mode is LinkMode.SERIAL:
                task_status.started()
                await self._reconnect_loop(self._open_line)
            else:
                host, port = self.settings.listen or ("", 0)
                await nursery.start(self._listen, host, port)
                task_status.started()

    async def _listen(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        def refused(remote: str, exc: Exception) -> None:
            self._link_errors += 1
            self.last_error = f"refused {remote}: {exc}"

        await listen(host, port, self._server_ctx, self._serve_link, on_refused=refused, task_status=task_status)

    async def _serve_link(self, link: Link) -> None:
        try:
            await self._run_link(link)
        except (LinkError, ProtocolError, SessionRefused, trio.TooSlowError) as exc:
            self._note_error(exc)

    async def _dial_server(self) -> Link:
        host, port = self.settings.server
        return await dial(host, port, self._client_ctx)

    async def _open_line(self) -> Link:
        assert self.settings.serial is not None
        stream = open_serial(self.settings.serial)
        try:
            return await serial_link(stream, self._client_ctx, server_side=False)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _reconnect_loop(self, connect: Callable[[], Awaitable[Link]]) -> None:
        s = self.settings
        delay = s.backoff_initial
        lost_at = -float("inf")
        while True:
            try:
                with trio.fail_after(s.connect_timeout):
                    link = await connect()
                if await self._run_link(link):
                    delay = s.backoff_initial
                    lost_at = trio.current_time()
            except (LinkError, ProtocolError, SessionRefused, trio.TooSlowError) as exc:
                self._note_error(exc)
            # Exponential backoff with jitter: a fleet must not reconnect in lockstep. Right
            # after losing a working session the standby is about to take the VIP, and a
            # refused connect costs nothing, so the cap stays low for a few seconds.
            cap = s.fast_retry_cap if trio.current_time() - lost_at < s.fast_retry_window else s.backoff_cap
            await trio.sleep(min(delay, cap) * (0.5 + self._rng.random() / 2))
            delay = min(s.backoff_cap, delay * s.backoff_factor)

    def _note_error(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if isinstance(exc, ProtocolError) and not isinstance(exc, PeerTimeout):
            self._protocol_errors += 1
            if exc.code is ErrorCode.STALE_EPOCH:
                self._refused_stale += 1
        else:
            self._link_errors += 1

    def _hello(self) -> Hello:
        stats = self.buffer.statistics()
        return Hello(
            panel_id=self.panel_id,
            boot_id=self.boot_id,
            firmware=FIRMWARE,
            oldest_seq=stats.oldest_seq,
            newest_seq=stats.newest_seq,
            config_version=self.config.version,
            config_digest=self.config.digest,
            max_epoch=self.max_epoch,
        )

    async def _run_link(self, link: Link) -> bool:
        """Run one session on an established link; True if it got as far as WELCOME."""
        if link.peer is not None and not link.peer.startswith("node-"):
            await link.stream.aclose()
            raise TlsError(f"peer {link.remote} presents {link.peer!r}, not a node certificate")
        line = self.settings.serial if link.lossy else None
        conn = PanelConnection(
            now=trio.current_time(),
            epoch_floor=self.max_epoch,
            handshake_timeout=self.settings.handshake_timeout,
            resync=line is not None,
            reply_timeout=line.reply_timeout if line is not None else None,
        )
        ms = MessageStream(
            link.stream,
            conn,
            name=f"panel {self.panel_id}",
            inter_char_timeout=line.inter_char_timeout if line is not None else None,
        )
        try:
            try:
                await ms.send(self._hello())
                with trio.fail_after(self.settings.handshake_timeout):
                    first = await ms.receive()
            except RemoteProtocolError as exc:
                await ms.send_error(exc.code, exc.message)
                raise
            if isinstance(first, Error):
                raise SessionRefused(first)
            if not isinstance(first, Welcome):
                raise RemoteProtocolError(ErrorCode.ILLEGAL_IN_STATE, f"expected WELCOME, got {type(first).__name__}")
            if first.epoch < self.max_epoch:  # another session raised the floor meanwhile
                await ms.send_error(ErrorCode.STALE_EPOCH, f"epoch {first.epoch} < {self.max_epoch}")
                raise RemoteProtocolError(ErrorCode.STALE_EPOCH, f"node epoch {first.epoch} < {self.max_epoch}")
            await self._streaming(ms, first)
            return True
        finally:
            stats = ms.statistics()
            self._bytes_skipped += stats.bytes_skipped
            self._bad_frames += stats.bad_crc
            await ms.aclose()

    async def _streaming(self, ms: MessageStream, welcome: Welcome) -> None:
        # One host session at a time: an equal or newer epoch replaces the old one.
        if self._session_scope is not None:
            self._session_scope.cancel()
            await self.disconnected.wait()
        self.max_epoch = welcome.epoch
        self.welcome_at.setdefault(welcome.epoch, trio.current_time())
        if self._needs_rebase or welcome.hwm >= self.buffer.next_seq:
            # This panel lost its counter (RAM power-cycle): continue after the store.
            oldest = self.buffer.oldest_seq or self.buffer.next_seq
            shift = self.buffer.rebase(welcome.hwm + 1)
            self._needs_rebase = False
            if self.journal is not None and shift:
                self.journal[:] = [
                    dataclasses.replace(e, seq=e.seq + shift) if e.boot_id == self.boot_id and e.seq >= oldest else e
                    for e in self.journal
                ]
        self.buffer.release(welcome.hwm)
        self._acked_seq = welcome.hwm
        self._sessions += 1
        self._session_epoch = welcome.epoch
        self._session_node = welcome.node_id
        self.disconnected = trio.Event()
        end: SessionEnd | None = None  # None: a power-cycle or a newer session cancelled this one
        with trio.CancelScope() as scope:
            self._session_scope = scope
            self.connected.set()
            self.record(EventKind.HOST_ONLINE)
            try:
                end = await SessionDriver(ms, _Uplink(self, ms, welcome.hwm + 1)).run()
            finally:
                self._session_scope = None
                self.connected = trio.Event()
                self.record(EventKind.HOST_OFFLINE)
                self.disconnected.set()
        if end is not None and end.reason is EndReason.PEER_ERROR:
            assert isinstance(end.message, Error)
            raise SessionRefused(end.message)

    def _acked(self, ack: Ack) -> None:
        self.first_ack_at.setdefault(ack.epoch, trio.current_time())
        self._acked_seq = ack.up_to_seq
        self._promised_seq = max(self._promised_seq, ack.up_to_seq)
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
        b = self.buffer.statistics()
        return PanelStatistics(
            panel_id=self.panel_id,
            connected=self.is_connected,
            node=self._session_node if self.is_connected else None,
            epoch=self._session_epoch,
            max_epoch=self.max_epoch,
            boot_id=self.boot_id,
            config_version=self.config.version,
            swipes=self._swipes,
            granted=self._granted,
            denied=self._denied,
            sessions=self._sessions,
            link_errors=self._link_errors,
            protocol_errors=self._protocol_errors,
            refused_stale=self._refused_stale,
            batches_sent=self._batches_sent,
            bytes_skipped=self._bytes_skipped,
            bad_frames=self._bad_frames,
            acked_seq=self._acked_seq,
            promised_seq=self._promised_seq,
            last_error=self.last_error,
            buffer_depth=b.depth,
            buffer_bytes=b.bytes,
            emitted=b.emitted,
            acked=b.acked,
            dropped=b.dropped,
            refused=b.refused,
        )


class _Uplink:
    """The panel's side of one session, for the ``SessionDriver``: upload in seq order
    with a window of batches in flight, free the buffer on ACK, apply configuration.

    A power-cycle ends the boot it was started in: from then on it sends nothing and
    takes nothing in, not even a message that was already on its way.
    """

    def __init__(self, panel: Panel, ms: MessageStream, next_seq: int) -> None:
        self.panel = panel
        self.ms = ms
        self.boot = panel.boot_id
        self.next_seq = next_seq
        #: Last seq of each batch sent and not yet acknowledged, oldest first.
        self.in_flight: deque[int] = deque()
        self._parts: list[ConfigOp] = []

    def __repr__(self) -> str:
        return f"<_Uplink panel {self.panel.panel_id} next seq {self.next_seq} in flight {len(self.in_flight)}>"

    async def send_loop(self) -> None:
        panel, in_flight = self.panel, self.in_flight
        window = panel.settings.window
        while panel.boot_id == self.boot:  # a power-cycle ends this boot's session: send nothing of the next
            while in_flight and in_flight[0] <= panel._acked_seq:
                in_flight.popleft()
            if len(in_flight) >= window:
                await panel._new_data.wait()
                continue
            data = panel.buffer.read(self.next_seq, panel._batch_records)
            if not data:
                await panel._new_data.wait()
                continue
            batch = EventBatch(first_seq=int.from_bytes(data[:8], "big"), records=data)
            await self.ms.send(batch)
            panel._batches_sent += 1
            in_flight.append(batch.last_seq)
            self.next_seq = batch.last_seq + 1

    async def handle(self, message: Message) -> bool:
        panel = self.panel
        if panel.boot_id != self.boot:
            # The power went while this message was on its way: it speaks of the old boot's
            # seqs, and an ACK applied to the new boot's buffer would free its unsent events.
            return False
        if isinstance(message, Ack):
            panel._acked(message)
        elif isinstance(message, ConfigDelta):
            panel.config.apply_delta(message.from_version, message.to_version, message.ops)
            panel._config_applied()
            await self.ms.send(ConfigAck(version=message.to_version, digest=panel.config.digest))
        elif isinstance(message, ConfigSnapshot):
            self._parts.extend(message.ops)
            if message.part == message.parts - 1:
                panel.config.apply_snapshot(message.version, self._parts)
                self._parts = []
                panel._config_applied()
                await self.ms.send(ConfigAck(version=message.version, digest=panel.config.digest))
        return True

    async def drain(self) -> None:
        """A panel has nothing to store: its BYE can go at once."""
