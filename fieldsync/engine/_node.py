"""The sync-engine node: sessions with panels, group-commit ingest, config push.

One node process serves every panel that reaches it (punch-out on :30002) or
that it dials (host-initiated, :3001). Batches from all sessions flow into ONE
ingest task, which commits whatever has queued up in a single transaction and
only then lets each session send its ACK (P1). A session that stops reading
holds only its own writer: acks coalesce to the latest hwm, inbound batches
are limited per session, so one stuck panel cannot stall the others.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import trio

from protocol import (
    EMPTY_DIGEST,
    Ack,
    Bye,
    ConfigAck,
    ConfigDelta,
    ConfigSnapshot,
    Error,
    ErrorCode,
    EventBatch,
    Heartbeat,
    Hello,
    HostConnection,
    ProtocolError,
    RemoteProtocolError,
    Welcome,
)
from protocol.streams import (
    Link,
    LinkError,
    MessageStream,
    PeerClosed,
    SerialLine,
    TlsFiles,
    client_context,
    dial,
    first_error,
    listen,
    open_serial,
    serial_link,
    server_context,
)
from storage import ConfigChange, ConfigStore, EventStore, IngestBatch, StaleEpoch, StoreError

__all__ = [
    "Node",
    "NodeSettings",
    "NodeStatistics",
]

log = logging.getLogger("fieldsync.node")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    node_id: str = "A"
    db: Path = Path("fieldsync.db")
    #: Where panels punch out to (the VIP); None to accept no inbound sessions.
    listen: tuple[str, int] | None = ("127.0.0.100", 30002)
    #: Host-initiated panels this node dials: (panel id, address, port).
    dial: tuple[tuple[int, str, int], ...] = ()
    #: Serial lines this node serves, one panel each: (expected panel id or None, line).
    serial: tuple[tuple[int | None, SerialLine], ...] = ()
    tls: TlsFiles | None = None
    #: Panels allowed in; None admits any panel with a valid site certificate.
    known_panels: frozenset[int] | None = None
    heartbeat_ms: int = 1000
    handshake_timeout: float = 5.0
    #: TLS handshakes in progress at once, accepted and dialed together. A reconnect
    #: storm then completes a few at a time instead of advancing all of them so slowly
    #: that every one times out (a collapse seen with 40 panels under coverage).
    max_handshakes: int = 16
    #: Most events one group commit takes.
    #: (Small enough that the write lock is never held long: the lease renews through it.)
    max_commit_events: int = 20_000
    #: Batches one session may have queued for commit before its reads pause.
    session_window: int = 8
    ingest_queue: int = 4096
    config_poll: float = 0.25
    status_interval: float = 1.0
    snapshot_part_ops: int = 4000
    dial_backoff_cap: float = 2.0
    #: The epoch to serve with; None advances the store's epoch at start (a lone node).
    epoch: int | None = None
    #: Keep trying to bind the listen address this long (a fenced predecessor's socket may linger).
    bind_retry: float = 0.0
    #: On ``stop()``: how long sessions get to store and acknowledge what they received before BYE.
    drain_timeout: float = 2.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatistics:
    node_id: str
    epoch: int
    sessions: int
    sessions_total: int
    rejected: int
    protocol_errors: int
    link_errors: int
    commits: int
    #: Seconds spent inside ingest transactions: the writer's busy time.
    commit_s: float
    events_stored: int
    events_duplicate: int
    declared_lost: int
    refused_batches: int
    #: Line noise skipped and frames failing their CRC on serial lines.
    bytes_skipped: int
    bad_frames: int
    config_version: int
    fenced: bool


@dataclasses.dataclass(slots=True)
class _Item:
    session: _Session
    batch: EventBatch
    received_us: int


class _Session:
    def __init__(self, node: Node, ms: MessageStream, hello: Hello, window: int) -> None:
        self.node = node
        self.ms = ms
        self.hello = hello
        self.panel_id = hello.panel_id
        self.conn: HostConnection = ms.conn  # type: ignore[assignment]
        self.pending_ack = 0
        #: A batch was answered by the store: an ACK is owed even if the hwm did not move.
        self.ack_due = False
        self.ack_taken = 0
        self.newest_seq = hello.newest_seq
        #: The configuration the panel holds as far as this session knows (HELLO, then pushes).
        self.config_sent = hello.config_version
        self.digest_sent = hello.config_digest
        #: A CONFIG_ACK after a delta showed another digest: the next push is a snapshot.
        self.need_snapshot = False
        self.outstanding = trio.Semaphore(window)
        self.wake = trio.Event()
        self.wake.set()  # configuration sync starts right after WELCOME (docs/protocol.md 8.3)
        self.failure: tuple[ErrorCode, str] | None = None
        self.scope = trio.CancelScope()
        #: Cancelled to stop reading when the node stops (then drain, ACK, BYE).
        self.read_scope = trio.CancelScope()
        self.stopping = False
        self.done = trio.Event()

    def __repr__(self) -> str:
        return f"<Session panel {self.panel_id} acked {self.conn.acked_seq} of {self.conn.sent_seq}>"

    def ack(self, hwm: int) -> None:
        # The store may be ahead of this session (a replaced session's batches).
        self.pending_ack = max(self.pending_ack, min(hwm, self.conn.sent_seq))
        self.ack_due = True
        self.wake.set()

    def take_ack(self) -> Ack | None:
        """The ACK owed now, if any: every stored batch gets one, duplicates too (7.4).

        Taking it is what makes it no longer owed, so the writer and a stopping session
        never both send the same one.
        """
        if not self.ack_due and self.pending_ack <= self.ack_taken:
            return None
        self.ack_due = False
        self.ack_taken = max(self.pending_ack, self.ack_taken)
        return Ack(epoch=self.node.epoch, up_to_seq=self.ack_taken)

    def fail(self, code: ErrorCode, text: str) -> None:
        if self.failure is None:
            self.failure = (code, text)
        self.wake.set()


class Node:
    """A sync-engine node. ``await node.run()`` inside a nursery; it stops when cancelled.

    ``store_class`` and ``_resume_hwm`` are where the harness's deliberately broken
    builds (``fieldsync.harness``, for the checker's negative controls) plug in a
    flaw by subclassing; nothing in the settings or the CLI can.
    """

    store_class: ClassVar[type[EventStore]] = EventStore

    def __init__(self, settings: NodeSettings, *, now_us: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        self._server_ctx: ssl.SSLContext | None = server_context(settings.tls) if settings.tls else None
        self._client_ctx: ssl.SSLContext | None = client_context(settings.tls) if settings.tls else None
        self._handshakes = trio.Semaphore(settings.max_handshakes)
        self.store: EventStore | None = None
        self.config_store: ConfigStore | None = None
        self._store_limiter = trio.CapacityLimiter(1)
        self._config_limiter = trio.CapacityLimiter(1)
        self.epoch = 0
        self.config_version = 0
        self.config_digest = EMPTY_DIGEST
        self.sessions: dict[int, _Session] = {}
        self._ingest_send, self._ingest_recv = trio.open_memory_channel[_Item](settings.ingest_queue)
        self.listeners: list[trio.SocketListener] = []
        self.fenced = trio.Event()
        #: Set when ``run`` has returned (after a planned stop: once every session said BYE).
        self.stopped = trio.Event()
        self._stop = trio.Event()
        self._counts = dict.fromkeys(
            (
                "sessions_total",
                "rejected",
                "protocol_errors",
                "link_errors",
                "commits",
                "events_stored",
                "events_duplicate",
                "declared_lost",
                "refused_batches",
                "bytes_skipped",
                "bad_frames",
            ),
            0,
        )
        self.last_error: str | None = None
        self._commit_s = 0.0
        self._ended: dict[int, tuple[int, int, str, int, int, int, int, int]] = {}
        self._hwms: dict[int, int] = {}
        self._new_sessions: list[tuple[int, int, int]] = []
        self._config_acks: dict[int, int] = {}
        #: Batches queued for commit per panel, and who waits for a panel's to be through.
        self._queued: dict[int, int] = {}
        self._drained: dict[int, trio.Event] = {}

    def __repr__(self) -> str:
        return f"<Node {self.node_id} epoch {self.epoch} sessions {len(self.sessions)}>"

    # -- running ------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._store_limiter)

    async def _cfg(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._config_limiter)

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, claim the epoch, listen/dial, serve until cancelled or fenced.

        Raises:
            StoreError: the database cannot be opened or used.
            LinkError: the listen address cannot be bound (in use, not local).
        """
        s = self.settings
        self.store = await self._db(self.store_class, s.db)
        self.config_store = await self._cfg(ConfigStore, s.db)
        try:
            self.epoch = s.epoch if s.epoch is not None else await self._db(self.store.advance_epoch)
            self._hwms = await self._db(self.store.hwms)
            self.config_version, self.config_digest = await self._cfg(self.config_store.current)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ingest_loop)
                nursery.start_soon(self._config_watch)
                nursery.start_soon(self._status_loop)
                # Dial first: host-initiated panels can be served even while a fenced
                # predecessor still holds the listen address.
                for panel_id, host, port in s.dial:
                    nursery.start_soon(self._dial_loop, panel_id, host, port)
                for expected, line in s.serial:
                    nursery.start_soon(self._serial_loop, expected, line)
                if s.listen is not None:
                    host, port = s.listen
                    self.listeners = await nursery.start(self._listen, host, port)
                log.info("node %s serving with epoch %d", self.node_id, self.epoch)
                task_status.started(self)
                async with trio.open_nursery() as waiters:  # until stopped or fenced
                    for event in (self._stop, self.fenced):
                        waiters.start_soon(_wait_then_cancel, event, waiters.cancel_scope)
                if not self.fenced.is_set():
                    await self._say_bye()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._write_status(final=True)
                await self._db(self.store.close)
                await self._cfg(self.config_store.close)
            self.stopped.set()

    def stop(self) -> None:
        """Stop on purpose (docs/protocol.md 10): refuse new HELLOs, store and acknowledge
        what the sessions received, say BYE(SHUTTING_DOWN), then ``run`` returns."""
        self._stop.set()

    async def _say_bye(self) -> None:
        with trio.move_on_after(self.settings.drain_timeout):
            for session in list(self.sessions.values()):
                session.stopping = True
                session.read_scope.cancel()
            for session in list(self.sessions.values()):
                await session.done.wait()

    async def _listen(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        def refused(remote: str, exc: Exception) -> None:
            self._counts["rejected"] += 1
            self.last_error = f"refused {remote}: {exc}"
            log.warning("refused %s: %s", remote, exc)

        deadline = trio.current_time() + self.settings.bind_retry
        attempts = 0
        while True:
            try:
                await listen(
                    host,
                    port,
                    self._server_ctx,
                    self._serve_link,
                    handshake_timeout=self.settings.handshake_timeout,
                    handshakes=self._handshakes,
                    on_refused=refused,
                    task_status=task_status,
                )
                return
            except LinkError as exc:
                # A fenced predecessor's listening socket may linger for a moment.
                if "in use" not in str(exc) or trio.current_time() >= deadline:
                    raise
                attempts += 1
                if attempts in (1, 50) or attempts % 500 == 0:
                    log.warning("node %s: %s; retrying", self.node_id, exc)
                await trio.sleep(0.02)

    async def _dial_loop(self, panel_id: int, host: str, port: int) -> None:
        delay = 0.05
        while True:
            current = self.sessions.get(panel_id)
            if current is not None:
                await current.done.wait()
                continue
            try:
                async with self._handshakes:  # the timeout is for the handshake, not our own queue
                    with trio.fail_after(self.settings.handshake_timeout):
                        link = await dial(host, port, self._client_ctx)
                if await self._serve_link(link, expected=panel_id):
                    delay = 0.05
            except (LinkError, trio.TooSlowError) as exc:
                self._counts["link_errors"] += 1
                self.last_error = str(exc)
            await trio.sleep(delay)
            delay = min(self.settings.dial_backoff_cap, delay * 2)

    async def _serial_loop(self, expected: int | None, line: SerialLine) -> None:
        """Serve the panel on one serial line, session after session, for as long as this runs.

        The port is opened afresh for each session (stale bytes discarded); a device
        that is missing or busy is retried with backoff and reported once per outage.
        """
        delay = 0.05
        reported = False
        while True:
            try:
                stream = open_serial(line)
            except LinkError as exc:
                self._counts["link_errors"] += 1
                self.last_error = str(exc)
                if not reported:
                    log.warning("node %s: %s; retrying", self.node_id, exc)
                    reported = True
                await trio.sleep(delay)
                delay = min(self.settings.dial_backoff_cap, delay * 2)
                continue
            delay, reported = 0.05, False
            try:
                await stream.wait_for_input()  # a line is quiet until its panel speaks
                with trio.fail_after(self.settings.handshake_timeout):
                    link = await serial_link(stream, self._server_ctx, server_side=True)
                await self._serve_link(link, expected=expected, line=line)
            except (LinkError, trio.TooSlowError) as exc:
                self._counts["link_errors"] += 1
                self.last_error = f"serial {line.path}: {exc}"
            finally:
                await trio.aclose_forcefully(stream)

    # -- one session ----------------------------------------------------------------------

    async def _serve_link(self, link: Link, *, expected: int | None = None, line: SerialLine | None = None) -> bool:
        """Run one panel session; True if it reached STREAMING.

        Over a serial ``line`` the session resynchronizes on noise and times out
        a config push whose CONFIG_ACK never comes (a frame lost on the line).
        """
        conn = HostConnection(
            now=trio.current_time(),
            handshake_timeout=self.settings.handshake_timeout,
            resync=line is not None,
            reply_timeout=line.reply_timeout if line is not None else None,
        )
        ms = MessageStream(
            link.stream,
            conn,
            name=f"node {self.node_id} <- {link.remote}",
            inter_char_timeout=line.inter_char_timeout if line is not None else None,
        )
        try:
            try:
                with trio.fail_after(self.settings.handshake_timeout):
                    hello = await ms.receive()
            except trio.TooSlowError:
                await ms.send_error(ErrorCode.TIMEOUT, "no HELLO in time")
                self._counts["protocol_errors"] += 1
                return False
            if not isinstance(hello, Hello):
                # Only ERROR or BYE can come before HELLO: a peer giving up (on a serial
                # line, often the tail of the previous session).
                self.last_error = f"{link.remote}: {type(hello).__name__} instead of HELLO"
                return False
            refusal = self._admit(link, hello, expected)
            if refusal is not None:
                self._counts["rejected"] += 1
                self.last_error = refusal[1]
                log.warning("panel %d refused: %s", hello.panel_id, refusal[1])
                await ms.send_error(*refusal)
                return False
            # An older session of this panel may still have batches queued for commit
            # (a power-cycled panel, a reconnect after a reset). The WELCOME's hwm must
            # include them, or the panel would number new events into seqs they take.
            await self._retire(hello.panel_id)
            # No store round trip per session: the hwm cache is authoritative while this
            # node's epoch is the store's, and bookkeeping goes out with the status write.
            hwm = self._resume_hwm(hello)
            self._new_sessions.append((hello.panel_id, hello.boot_id, self._now_us()))
            await ms.send(
                Welcome(
                    node_id=self.node_id,
                    epoch=self.epoch,
                    hwm=hwm,
                    config_version=self.config_version,
                    config_digest=self.config_digest,
                    heartbeat_ms=self.settings.heartbeat_ms,
                )
            )
            session = _Session(self, ms, hello, self.settings.session_window)
            session.pending_ack = session.ack_taken = hwm
            await self._run_session(session)
            return True
        except RemoteProtocolError as exc:
            self._counts["protocol_errors"] += 1
            self.last_error = f"{link.remote}: {exc}"
            await ms.send_error(exc.code, exc.message)
            return False
        except (LinkError, ProtocolError) as exc:
            self._counts["link_errors"] += 1
            self.last_error = f"{link.remote}: {exc}"
            return False
        except StoreError as exc:
            self.last_error = str(exc)
            await ms.send_error(ErrorCode.STORE_REFUSED, str(exc))
            return False
        finally:
            stats = ms.statistics()
            self._counts["bytes_skipped"] += stats.bytes_skipped
            self._counts["bad_frames"] += stats.bad_crc
            await ms.aclose()

    def _resume_hwm(self, hello: Hello) -> int:
        """Where the panel resumes: the store's hwm, never what the panel says it holds."""
        return self._hwms.get(hello.panel_id, 0)

    def _admit(self, link: Link, hello: Hello, expected: int | None) -> tuple[ErrorCode, str] | None:
        pid = hello.panel_id
        if self.settings.tls is not None and link.peer != f"panel-{pid}":
            return ErrorCode.PANEL_ID_MISMATCH, f"HELLO says panel {pid} but the certificate is {link.peer!r}"
        if expected is not None and pid != expected:
            return ErrorCode.PANEL_ID_MISMATCH, f"dialed panel {expected} but panel {pid} answered"
        if self.settings.known_panels is not None and pid not in self.settings.known_panels:
            return ErrorCode.UNKNOWN_PANEL, f"panel {pid} is not in this site"
        if hello.max_epoch > self.epoch:
            return ErrorCode.STALE_EPOCH, f"panel {pid} has seen epoch {hello.max_epoch}; this node has {self.epoch}"
        if self._stop.is_set():
            return ErrorCode.SHUTTING_DOWN, f"node {self.node_id} is stopping"
        return None

    async def _retire(self, panel_id: int) -> None:
        """End an older session of this panel and wait until every batch it queued is through."""
        old = self.sessions.get(panel_id)
        if old is not None:
            old.fail(ErrorCode.REPLACED, f"a newer session of panel {panel_id} replaced this one")
            old.scope.cancel()
            with trio.move_on_after(2):
                await old.done.wait()
        with trio.move_on_after(self.settings.handshake_timeout):
            await self._wait_drained(panel_id)

    async def _wait_drained(self, panel_id: int) -> None:
        while self._queued.get(panel_id, 0):
            await self._drained.setdefault(panel_id, trio.Event()).wait()

    def _dequeued(self, items: list[_Item]) -> None:
        for item in items:
            pid = item.session.panel_id
            left = self._queued.get(pid, 0) - 1
            if left > 0:
                self._queued[pid] = left
                continue
            self._queued.pop(pid, None)
            event = self._drained.pop(pid, None)
            if event is not None:
                event.set()

    async def _run_session(self, session: _Session) -> None:
        old = self.sessions.get(session.panel_id)
        if old is not None:
            old.fail(ErrorCode.REPLACED, f"a newer session of panel {session.panel_id} replaced this one")
            old.scope.cancel()
            with trio.move_on_after(2):
                await old.done.wait()
        self.sessions[session.panel_id] = session
        self._counts["sessions_total"] += 1
        try:
            with session.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(session.ms.run_timers)
                        nursery.start_soon(self._write, session)
                        with session.read_scope:
                            await self._read(session)
                        if session.stopping and session.failure is None:
                            await self._finish(session)
                        nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    raise first_error(group) from None
            if session.failure is not None:
                await session.ms.send_error(*session.failure)
        finally:
            if self.sessions.get(session.panel_id) is session:
                del self.sessions[session.panel_id]
                self._ended[session.panel_id] = self._status_row(session, connected=False)
            session.done.set()

    async def _finish(self, session: _Session) -> None:
        """A planned stop: what the session received is stored and acknowledged, then BYE."""
        await self._wait_drained(session.panel_id)
        ack = session.take_ack()
        if ack is not None:
            await session.ms.send(ack)
        await session.ms.send(Bye(epoch=self.epoch, reason=int(ErrorCode.SHUTTING_DOWN)))

    async def _read(self, session: _Session) -> None:
        ms = session.ms
        while True:
            try:
                message = await ms.receive()
            except PeerClosed:
                return
            if isinstance(message, EventBatch):
                session.newest_seq = max(session.newest_seq, message.last_seq)
                with ms.reading_paused():  # waiting on our own commit capacity
                    await session.outstanding.acquire()
                    pid = session.panel_id
                    self._queued[pid] = self._queued.get(pid, 0) + 1
                    try:
                        await self._ingest_send.send(_Item(session, message, self._now_us()))
                    except BaseException:
                        self._dequeued([_Item(session, message, 0)])
                        raise
            elif isinstance(message, ConfigAck):
                self._config_acks[session.panel_id] = message.version
                push = session.conn.last_acked_push
                if push is not None and message.digest != push.digest:
                    # docs/protocol.md 8.5: the panel holds other content than it was sent.
                    if push.snapshot:
                        session.fail(
                            ErrorCode.CONFIG_DIGEST,
                            f"after the snapshot of version {push.version} the panel's digest is "
                            f"{message.digest.hex()[:16]}..., not {push.digest.hex()[:16]}...",
                        )
                    else:
                        session.need_snapshot = True
                        session.digest_sent = message.digest
                        session.wake.set()
            elif isinstance(message, Heartbeat):
                pass
            elif isinstance(message, Error | Bye):
                return

    async def _write(self, session: _Session) -> None:
        ms = session.ms
        while True:
            await session.wake.wait()
            session.wake = trio.Event()
            if session.failure is not None:
                session.scope.cancel()
                return
            ack = session.take_ack()
            if ack is not None:
                await ms.send(ack)
            if session.need_snapshot or (session.config_sent, session.digest_sent) != (
                self.config_version,
                self.config_digest,
            ):
                await self._push_config(session)

    async def _push_config(self, session: _Session) -> None:
        """Bring the panel to the server's configuration (docs/protocol.md 8.3): a delta
        when the panel's version is behind and its digest is what the server had at that
        version, a snapshot in every other case."""
        assert self.config_store is not None
        change: ConfigChange | None = None
        if not session.need_snapshot and session.config_sent < self.config_version:
            base = await self._cfg(self.config_store.digest_at, session.config_sent)
            if base == session.digest_sent:
                found = await self._cfg(self.config_store.delta, session.config_sent)
                if isinstance(found, ConfigChange) and found.to_version > found.from_version:
                    change = found
        if change is not None:
            await session.ms.send(
                ConfigDelta(
                    epoch=self.epoch,
                    from_version=change.from_version,
                    to_version=change.to_version,
                    digest=change.digest,
                    ops=change.ops,
                )
            )
            session.config_sent, session.digest_sent = change.to_version, change.digest
            self._saw_config(change.to_version, change.digest)
            return
        version, state = await self._cfg(self.config_store.snapshot)
        ops = state.snapshot_ops()
        digest = state.digest()
        size = self.settings.snapshot_part_ops
        parts = max(1, -(-len(ops) // size))
        for part in range(parts):
            await session.ms.send(
                ConfigSnapshot(
                    epoch=self.epoch,
                    version=version,
                    digest=digest,
                    part=part,
                    parts=parts,
                    ops=ops[part * size : (part + 1) * size],
                )
            )
        session.config_sent, session.digest_sent = version, digest
        session.need_snapshot = False
        self._saw_config(version, digest)

    def _saw_config(self, version: int, digest: bytes) -> None:
        """The store's configuration is at ``version`` (it only moves forward): every session follows."""
        if version > self.config_version or (version == self.config_version and digest != self.config_digest):
            self.config_version, self.config_digest = version, digest
            for session in list(self.sessions.values()):
                session.wake.set()

    # -- ingest ---------------------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        assert self.store is not None
        limit = self.settings.max_commit_events
        while True:
            items = [await self._ingest_recv.receive()]
            events = items[0].batch.count
            while events < limit:
                try:
                    item = self._ingest_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                items.append(item)
                events += item.batch.count
            batches = [
                IngestBatch(
                    panel_id=i.session.panel_id,
                    first_seq=i.batch.first_seq,
                    last_seq=i.batch.last_seq,
                    records=i.batch.records,
                    received_us=i.received_us,
                )
                for i in items
            ]
            try:
                result = await self._db(self.store.ingest, batches, self.epoch)
            except StaleEpoch as exc:
                # Another node took over: nothing of ours may be stored or acked (P5).
                self.last_error = str(exc)
                log.error("fenced: %s", exc)
                for item in items:
                    item.session.fail(ErrorCode.STALE_EPOCH, str(exc))
                self._dequeued(items)
                self.fenced.set()
                return
            except StoreError as exc:
                self.last_error = str(exc)
                log.error("store refused a commit: %s", exc)
                for item in items:
                    item.session.outstanding.release()
                    item.session.fail(ErrorCode.STORE_REFUSED, str(exc))
                self._dequeued(items)
                continue
            self._counts["commits"] += 1
            self._commit_s += result.commit_s
            for item, outcome in zip(items, result.outcomes, strict=True):
                item.session.outstanding.release()
                self._counts["events_stored"] += outcome.stored
                self._counts["events_duplicate"] += outcome.duplicates
                self._counts["declared_lost"] += outcome.declared_lost
                if outcome.error is not None:
                    self._counts["refused_batches"] += 1
                    item.session.fail(ErrorCode.SEQ_GAP, outcome.error)
                else:
                    item.session.ack(outcome.hwm)
            self._hwms.update(result.hwms)
            self._dequeued(items)

    # -- config and status -----------------------------------------------------------------

    async def _config_watch(self) -> None:
        assert self.config_store is not None
        while True:
            await trio.sleep(self.settings.config_poll)
            self._saw_config(*await self._cfg(self.config_store.current))

    async def _status_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.status_interval)
            await self._write_status()

    async def _write_status(self, *, final: bool = False) -> None:
        if self.store is None:
            return
        rows = list(self._ended.values())
        rows += [self._status_row(s, connected=not final) for s in self.sessions.values()]
        sessions, acks = self._new_sessions, list(self._config_acks.items())
        if rows or sessions or acks:
            try:
                await self._db(functools.partial(self.store.write_status, rows, sessions=sessions, config_acks=acks))
            except StoreError as exc:
                self.last_error = str(exc)
                return
            self._ended.clear()
            self._new_sessions = []
            for pid, version in acks:
                if self._config_acks.get(pid) == version:
                    del self._config_acks[pid]

    def _status_row(self, s: _Session, *, connected: bool) -> tuple[int, int, str, int, int, int, int, int]:
        return (
            s.panel_id,
            int(connected),
            self.node_id,
            self.epoch,
            s.conn.acked_seq,
            s.newest_seq,
            s.config_sent,
            self._now_us(),
        )

    def statistics(self) -> NodeStatistics:
        c = self._counts
        return NodeStatistics(
            node_id=self.node_id,
            epoch=self.epoch,
            sessions=len(self.sessions),
            sessions_total=c["sessions_total"],
            rejected=c["rejected"],
            protocol_errors=c["protocol_errors"],
            link_errors=c["link_errors"],
            commits=c["commits"],
            commit_s=self._commit_s,
            events_stored=c["events_stored"],
            events_duplicate=c["events_duplicate"],
            declared_lost=c["declared_lost"],
            refused_batches=c["refused_batches"],
            bytes_skipped=c["bytes_skipped"],
            bad_frames=c["bad_frames"],
            config_version=self.config_version,
            fenced=self.fenced.is_set(),
        )


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
