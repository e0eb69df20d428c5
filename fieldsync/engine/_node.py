"""The sync-engine node: sessions with panels, group-commit ingest, config push.

One node process serves every panel that reaches it (punch-out on :30002) or
that it dials (host-initiated, :3001). Batches from all sessions flow into ONE
ingest task, which commits whatever has queued up in a single transaction and
only then lets each session send its ACK (P1). A session that stops reading
holds only its own writer: acks coalesce to the latest hwm, inbound batches
are limited per panel, so one stuck panel cannot stall the others.

The node is cut by what each part does; ``Node`` only wires them and runs them:

- ``_links``: the listener, the dialer and serial lines (how a link comes up);
- ``_sessions``: admission, one session per panel, the node's side of a session
  (run by ``protocol.streams.SessionDriver``, shared with the panel);
- ``_ingest``: the group commit, queue depth per panel, and the node's one hwm;
- ``_config_push``: following the config store and pushing to the panels.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import trio

from protocol import ErrorCode, Hello, ProtocolError, RemoteProtocolError, Takeover
from protocol.streams import Link, LinkError, SerialLine, TlsFiles
from storage import EventStore, EventStoreInterface, StoreError, is_database_url, open_event_store

from ._config_push import _ConfigFeed
from ._ingest import _Ingest
from ._links import _Links
from ._materialize import _Materializer
from ._sessions import _Session, _Sessions

if TYPE_CHECKING:
    from ._parking import ParkedSession

#: The adopted sessions' TAKEOVERs go out within this, all together (docs/protocol.md 6.3).
TAKEOVER_BOUND = 1.0

__all__ = [
    "INGEST_MODES",
    "Node",
    "NodeSettings",
    "NodeStatistics",
]

log = logging.getLogger("fieldsync.node")
T = TypeVar("T")

#: ``NodeSettings.ingest``: what an ACK waits for (docs/architecture.md, "The batch log").
INGEST_MODES = ("rows", "log")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    node_id: str = "A"
    #: A SQLite file, or a ``postgresql://`` URL (the PostgreSQL engine).
    db: Path | str = Path("fieldsync.db")
    #: Where panels punch out to (the VIP); None to accept no inbound sessions.
    listen: tuple[str, int] | None = ("127.0.0.100", 30002)
    #: Host-initiated panels this node dials: (panel id, address, port).
    dial: tuple[tuple[int, str, int], ...] = ()
    #: Serial lines this node serves, one panel each: (expected panel id or None, line).
    serial: tuple[tuple[int | None, SerialLine], ...] = ()
    tls: TlsFiles | None = None
    #: Panels allowed in; None admits any panel with a valid site certificate.
    known_panels: frozenset[int] | None = None
    #: H: how often a busy session's ends send (docs/protocol.md 9.1).
    heartbeat_ms: int = 1000
    #: I: how often a quiet panel probes; a quiet session costs one HEARTBEAT each way per I.
    idle_ms: int = 10_000
    handshake_timeout: float = 5.0
    #: TLS handshakes in progress at once, accepted and dialed together. A reconnect
    #: storm then completes a few at a time instead of advancing all of them so slowly
    #: that every one times out (a collapse seen with 40 panels under coverage).
    max_handshakes: int = 16
    #: Most events one group commit takes.
    #: (Small enough that the write lock is never held long: the lease renews through it.)
    max_commit_events: int = 20_000
    #: ``rows``: an ACK once every event's row is in ``events``. ``log`` (SQLite): once the
    #: batch is one row of the batch log, its rows materialized behind the ACK (``_materialize``).
    ingest: str = "rows"
    #: ``log``: the most events acknowledged and not yet materialized; past it commits wait.
    max_log_lag: int = 4_000_000
    #: Events one materializing transaction moves (a commit waits at most one such step).
    materialize_step: int = 2048
    #: Seconds without a commit before the materializer takes a step (0: whenever the lock is
    #: free), unless the log's oldest batch is ``max_log_age`` old or a commit waits for room.
    materialize_idle: float = 0.05
    max_log_age: float = 2.0
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

    def __post_init__(self) -> None:
        if not 1 <= self.heartbeat_ms <= self.idle_ms < 2**32:
            raise ValueError(f"need 1 <= heartbeat_ms ({self.heartbeat_ms}) <= idle_ms ({self.idle_ms}) < 2**32")
        if self.ingest not in INGEST_MODES:
            raise ValueError(f"ingest {self.ingest!r}: one of {', '.join(INGEST_MODES)}")
        if self.max_log_lag < self.max_commit_events or self.materialize_step < 1:
            raise ValueError("need max_log_lag >= max_commit_events and materialize_step >= 1")
        if self.materialize_idle < 0 or self.max_log_age < 0:
            raise ValueError("need materialize_idle >= 0 and max_log_age >= 0")


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
    #: Commits per bucket of ``COMMIT_BUCKETS`` (not cumulative), the last one past them all.
    commit_buckets: tuple[int, ...]
    #: Batches queued for commit now, every panel together.
    queued_batches: int
    events_stored: int
    #: Alarms added to the store's alarms (docs/protocol.md 7.6), from the lane and the batches.
    alarms_stored: int
    events_duplicate: int
    declared_lost: int
    refused_batches: int
    #: Line noise skipped and frames failing their CRC on serial lines.
    bytes_skipped: int
    bad_frames: int
    #: ``protocol_errors`` by the code that ended the session: (code, count), in code order.
    protocol_error_codes: tuple[tuple[ErrorCode, int], ...]
    config_version: int
    fenced: bool
    #: The batch log (``ingest = log``): events acknowledged and not yet in ``events`` now, at
    #: most, moved so far, and the oldest batch's age when it was moved (seconds).
    log_lag_events: int = 0
    log_lag_peak: int = 0
    materialized: int = 0
    materialize_lag_s: float = 0.0


class Node:
    """A sync-engine node. ``await node.run()`` inside a nursery; it stops when cancelled.

    ``store_class``, ``_resume_hwm``, ``_admit`` and ``_peer_broke_protocol`` are where the
    harness's deliberately broken builds (``fieldsync.harness``, for the checker's negative
    controls) plug in a flaw by subclassing; nothing in the settings or the CLI can.
    """

    store_class: ClassVar[type[EventStore]] = EventStore

    def __init__(self, settings: NodeSettings, *, now_us: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.now_us: Callable[[], int] = now_us or (lambda: time.time_ns() // 1000)
        self.store: EventStoreInterface | None = None
        self._store_limiter = trio.CapacityLimiter(1)
        self.epoch = 0
        self.ingest = _Ingest(self)
        self.materializer = _Materializer(self)
        self.config = _ConfigFeed(self)
        self.sessions_table = _Sessions(self)
        self.links = _Links(self)
        self.listeners: list[trio.SocketListener] = []
        self.fenced = trio.Event()
        #: Set when ``run`` has returned (after a planned stop: once every session said BYE).
        self.stopped = trio.Event()
        self._stop = trio.Event()
        self.last_error: str | None = None
        #: Parked sessions this node takes over (``adopt``), and how many it did.
        self._adopted: list[ParkedSession] = []
        self.adopted = 0

    def __repr__(self) -> str:
        return f"<Node {self.node_id} epoch {self.epoch} sessions {len(self.sessions)}>"

    @property
    def sessions(self) -> dict[int, _Session]:
        """The live session of each panel served now."""
        return self.sessions_table.live

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the event store's thread (one connection, one thread)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._store_limiter)

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the store, claim the epoch, listen/dial, serve until cancelled or fenced.

        Raises:
            StoreError: the database cannot be opened or used.
            LinkError: the listen address cannot be bound (in use, not local).
        """
        s = self.settings
        # A URL opens the PostgreSQL engine; the harness's broken stores subclass SQLite's.
        opener = open_event_store if is_database_url(s.db) else self.store_class
        self.store = await self.db(opener, s.db)
        await self.config.open(s.db)
        try:
            self.epoch = s.epoch if s.epoch is not None else await self.db(self.store.advance_epoch)
            await self.ingest.load_hwms()
            await self.config.load()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.ingest.run)
                nursery.start_soon(self.materializer.run)  # a log left by any node is finished
                nursery.start_soon(self.config.watch)
                nursery.start_soon(self._status_loop)
                # Parked sessions first (6.3 rule 4: TAKEOVER before the listen address accepts).
                for parked in await self._take_over_parked():
                    self.sessions_table.expect_adopted(parked.panel_id)
                    nursery.start_soon(self.sessions_table.serve_adopted, parked)
                # Dial first: host-initiated panels can be served even while a fenced
                # predecessor still holds the listen address.
                for panel_id, host, port in s.dial:
                    nursery.start_soon(self.links.dial_loop, panel_id, host, port)
                for expected, line in s.serial:
                    nursery.start_soon(self.links.serial_loop, expected, line)
                if s.listen is not None:
                    host, port = s.listen
                    self.listeners = await nursery.start(self.links.listen, host, port)
                log.info("node %s serving with epoch %d", self.node_id, self.epoch)
                task_status.started(self)
                async with trio.open_nursery() as waiters:  # until stopped or fenced
                    for event in (self._stop, self.fenced):
                        waiters.start_soon(_wait_then_cancel, event, waiters.cancel_scope)
                if not self.fenced.is_set():
                    await self.sessions_table.stop_all()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for parked in self._adopted:  # the node ended before it could take them over
                    await parked.ms.aclose()
                self._adopted = []
                await self._write_status(final=True)
                await self.db(self.store.close)
                await self.config.close()
            self.stopped.set()

    def adopt(self, parked: list[ParkedSession]) -> None:
        """Before ``run``: the standby's parked sessions (docs/protocol.md 6.3), to be sent
        TAKEOVER and served before the node accepts connections on its listen address."""
        self._adopted = list(parked)

    async def _take_over_parked(self) -> list[ParkedSession]:
        """TAKEOVER on every adopted session at once, within ``TAKEOVER_BOUND`` in all: a session whose
        TAKEOVER does not go out by then is closed (its panel comes back by the cluster's
        address instead)."""
        adopted, self._adopted = self._adopted, []
        sent: list[ParkedSession] = []

        async def takeover(parked: ParkedSession) -> None:
            try:
                await parked.ms.send(Takeover(epoch=self.epoch))
            except (LinkError, ProtocolError) as exc:
                self.last_error = f"{parked.link.remote}: TAKEOVER not sent: {exc}"
                log.warning("node %s: %s", self.node_id, self.last_error)
            else:
                sent.append(parked)

        try:
            with trio.move_on_after(TAKEOVER_BOUND):
                async with trio.open_nursery() as nursery:
                    for parked in adopted:
                        nursery.start_soon(takeover, parked)
        finally:
            for parked in adopted:
                if parked not in sent:
                    await parked.ms.aclose()
        self.adopted += len(sent)
        if sent:
            log.warning("node %s: %d parked sessions taken over with epoch %d", self.node_id, len(sent), self.epoch)
        return sent

    def stop(self) -> None:
        """Stop on purpose (docs/protocol.md 10): refuse new HELLOs, store and acknowledge
        what the sessions received, say BYE(SHUTTING_DOWN), then ``run`` returns."""
        self._stop.set()

    def _resume_hwm(self, hello: Hello) -> int:
        """Where the panel resumes: the node's hwm, never what the panel says it holds."""
        return self.ingest.hwm(hello.panel_id)

    def _admit(self, link: Link, hello: Hello, expected: int | None) -> tuple[ErrorCode, str] | None:
        """docs/protocol.md 6.2 step 3: the first refusal that applies, in the spec's order."""
        pid, s = hello.panel_id, self.settings
        if s.tls is not None and link.peer != f"panel-{pid}":
            return ErrorCode.PANEL_ID_MISMATCH, f"HELLO says panel {pid} but the certificate is {link.peer!r}"
        if expected is not None and pid != expected:
            return ErrorCode.PANEL_ID_MISMATCH, f"dialed panel {expected} but panel {pid} answered"
        if s.known_panels is not None and pid not in s.known_panels:
            return ErrorCode.UNKNOWN_PANEL, f"panel {pid} is not in this site"
        if hello.max_epoch > self.epoch:
            return ErrorCode.STALE_EPOCH, f"panel {pid} has seen epoch {hello.max_epoch}; this node has {self.epoch}"
        if self.stopping:
            return ErrorCode.SHUTTING_DOWN, f"node {self.node_id} is stopping"
        return None

    def _peer_broke_protocol(self, link: Link, exc: RemoteProtocolError) -> None:
        """A peer's bytes or messages broke the protocol: counted, and only that session ends (P6)."""
        self.sessions_table.counts.protocol_error(exc.code)
        self.last_error = f"{link.remote}: {exc}"

    # -- status ----------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.status_interval)
            await self._write_status()

    async def _write_status(self, *, final: bool = False) -> None:
        """Session and config-ack bookkeeping, once a second, in one transaction."""
        if self.store is None:
            return
        table = self.sessions_table
        rows = table.status_rows(final=final)
        started, acks = table.started, list(self.config.acks.items())
        if rows or started or acks:
            try:
                await self.db(functools.partial(self.store.write_status, rows, sessions=started, config_acks=acks))
            except StoreError as exc:
                self.last_error = str(exc)
                return
            table.ended.clear()
            table.started = []
            self.config.written(acks)

    def statistics(self) -> NodeStatistics:
        c, i = self.sessions_table.counts, self.ingest
        return NodeStatistics(
            node_id=self.node_id,
            epoch=self.epoch,
            sessions=len(self.sessions),
            sessions_total=c.sessions_total,
            rejected=c.rejected,
            protocol_errors=c.protocol_errors,
            link_errors=c.link_errors,
            commits=i.commits,
            commit_s=i.commit_s,
            commit_buckets=tuple(i.commit_buckets),
            queued_batches=i.queued_total(),
            events_stored=i.events_stored,
            alarms_stored=i.alarms_stored,
            events_duplicate=i.events_duplicate,
            declared_lost=i.declared_lost,
            refused_batches=i.refused_batches,
            bytes_skipped=c.bytes_skipped,
            bad_frames=c.bad_frames,
            protocol_error_codes=tuple(sorted(c.protocol_error_codes.items())),
            config_version=self.config.version,
            fenced=self.fenced.is_set(),
            log_lag_events=self.materializer.lag,
            log_lag_peak=self.materializer.peak,
            materialized=self.materializer.materialized,
            materialize_lag_s=self.materializer.lag_s_max,
        )


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
