"""The server's event store: exactly once, in order, durable before the ACK.

One SQLite file in WAL mode with ``synchronous=FULL`` (NORMAL may lose a
committed transaction on power loss, and an ACK promises the event survives).
``ingest`` takes batches of many panels and commits them in ONE transaction, so
a single fsync serves them all (group commit).

Hot path: records stay packed until a multi-row INSERT binds them. The panel
id, receive time and epoch are numbered parameters shared by every row of a
statement, and one ``struct.unpack_from`` per chunk yields the other eight
columns flat, with no per-row Python. u64 fields go in as the signed 64-bit
integers SQLite stores (the same bits); the query helpers turn them back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sqlite_utils import Database

from protocol import GAP_KINDS, RECORD_SIZE, EventFlags, EventKind, EventRecord

from ._errors import StaleEpoch, StoreError, map_sqlite_errors
from ._gate import write_gate
from ._schema import migrate

__all__ = ["EventStore", "IngestBatch", "IngestOutcome", "IngestResult", "Loss", "StoredEvent"]

_MAX_STORED_SEQ = 2**63 - 1
_CHUNKS = (256, 64, 16, 4, 1)
_GAP_VALUES = frozenset(int(k) for k in GAP_KINDS)
_MARKER = struct.Struct(">QQB3xQI")


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _unsigned(value: int) -> int:
    return value + 2**64 if value < 0 else value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestBatch:
    """Records of one panel, checked by the protocol layer (``check_records``).

    Building one checks only what the rows need (seqs within what SQLite stores,
    whole records), so ``ingest`` trusts it and checks nothing of it again: the
    records' content was checked when their EVENT_BATCH was decoded.

    Raises:
        ValueError: the seqs or the records' size are outside those bounds.
    """

    panel_id: int
    first_seq: int
    last_seq: int
    records: bytes
    received_us: int

    def __post_init__(self) -> None:
        if not 1 <= self.first_seq <= self.last_seq <= _MAX_STORED_SEQ:
            raise ValueError(
                f"panel {self.panel_id}: batch seqs {self.first_seq}..{self.last_seq} are not "
                f"an ascending range within 1..2**63-1"
            )
        if not self.records or len(self.records) % RECORD_SIZE:
            raise ValueError(
                f"panel {self.panel_id}: batch records are {len(self.records)} bytes, "
                f"not a positive multiple of {RECORD_SIZE}"
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestOutcome:
    panel_id: int
    #: The panel's high-water mark after this batch (everything up to it is durable).
    hwm: int
    stored: int = 0
    duplicates: int = 0
    #: Seqs of a declared gap recorded as lost by this batch.
    declared_lost: int = 0
    #: Set when the batch was refused: it would have left an undeclared gap.
    error: str | None = None
    expected_seq: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    epoch: int
    outcomes: tuple[IngestOutcome, ...]
    #: Each panel's high-water mark after the commit.
    hwms: dict[int, int]
    stored: int
    commit_s: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    panel_id: int
    record: EventRecord
    received_us: int
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Loss:
    """A gap a panel declared: ``count`` events ``first_seq..last_seq`` never arrived."""

    panel_id: int
    first_seq: int
    last_seq: int
    count: int
    kind: EventKind
    time_us: int
    received_us: int
    epoch: int


def _insert_sql(rows: int) -> str:
    values = ",".join("(?1," + ",".join(f"?{4 + 8 * i + c}" for c in range(8)) + ",?2,?3)" for i in range(rows))
    return f"INSERT INTO events VALUES {values}"


class EventStore:
    """Durable, exactly-once, per-panel ordered event storage with epoch fencing.

    Args:
        path: the SQLite file (created if missing).
        busy_timeout: seconds to wait for another writer's lock before ``StoreLocked``.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        with map_sqlite_errors(self.path, "opening the event store"):
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn = conn
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(self.path, f"cannot switch to WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            self.db = Database(conn)
            self._migrate()
        self._sql = {n: _insert_sql(n) for n in _CHUNKS}
        self._rows = {n: struct.Struct(">" + "qqBBBBqI" * n) for n in _CHUNKS}
        #: Writes take a bulk turn: this process's lease renewals go first (see ``_gate``).
        self._gate = write_gate(self.path)

    def _migrate(self) -> None:
        for attempt in range(3):
            try:
                migrate(self.db, self.path)
                return
            except sqlite3.OperationalError as exc:
                # Another node created the schema at the same moment; look again.
                if attempt == 2 or "already exists" not in str(exc):
                    raise

    def __repr__(self) -> str:
        return f"<EventStore {self.path}>"

    def close(self) -> None:
        self._conn.close()

    # -- epoch ------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        with map_sqlite_errors(self.path, "reading the epoch"):
            return int(self._conn.execute("SELECT epoch FROM cluster WHERE id = 1").fetchone()[0])

    def advance_epoch(self, expected: int | None = None) -> int:
        """Raise the store's epoch by one and return it (a node taking over).

        With ``expected``, only if the epoch is still ``expected`` (compare and
        set), so two nodes cannot both take the same new epoch.
        """
        with map_sqlite_errors(self.path, "advancing the epoch"), self._gate.bulk():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                current = int(self._conn.execute("SELECT epoch FROM cluster WHERE id = 1").fetchone()[0])
                if expected is not None and current != expected:
                    raise StaleEpoch(self.path, expected, current)
                self._conn.execute("UPDATE cluster SET epoch = ? WHERE id = 1", (current + 1,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return current + 1

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    # -- ingest -----------------------------------------------------------------------

    def _load_hwm(self, panel_id: int) -> int:
        row = self._conn.execute("SELECT hwm FROM panels WHERE panel_id = ?", (panel_id,)).fetchone()
        return int(row[0]) if row else 0

    def ingest(self, batches: Sequence[IngestBatch], epoch: int) -> IngestResult:
        """Store batches of many panels in one transaction; return each panel's new hwm.

        Per panel, records at or below the high-water mark are duplicates and are
        skipped; a batch must reach back to ``hwm + 1`` (or lead with a gap
        marker that covers it), else that batch alone is refused with the seq
        the store expected. A gap marker becomes a loss record and the hwm moves
        past it. Nothing is acknowledged unless this returns.

        Raises:
            StaleEpoch: ``epoch`` is not the store's epoch; nothing was written.
            StoreFull, StoreLocked, StoreError: nothing was written.
        """
        start = time.perf_counter()
        conn = self._conn
        outcomes: list[IngestOutcome] = []
        new_hwm: dict[int, int] = {}
        touched: dict[int, int] = {}
        stored_total = 0
        with map_sqlite_errors(self.path, "ingesting events"), self._gate.bulk():
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._check_fence(epoch)
                for batch in batches:
                    pid = batch.panel_id
                    hwm = new_hwm.get(pid)
                    if hwm is None:
                        # Read inside the transaction, where the fence makes it true: the
                        # store keeps no hwm in memory (its user may, see IngestResult.hwms).
                        hwm = self._load_hwm(pid)
                    outcome = self._ingest_one(batch, hwm, epoch)
                    outcomes.append(outcome)
                    stored_total += outcome.stored
                    new_hwm[pid] = outcome.hwm
                    touched[pid] = batch.received_us
                if touched:
                    conn.executemany(
                        "INSERT INTO panels (panel_id, hwm, first_seen_us, last_seen_us) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (panel_id) DO UPDATE SET hwm = excluded.hwm, last_seen_us = excluded.last_seen_us",
                        [(pid, new_hwm[pid], seen, seen) for pid, seen in touched.items()],
                    )
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return IngestResult(
            epoch=epoch,
            outcomes=tuple(outcomes),
            hwms=new_hwm,
            stored=stored_total,
            commit_s=time.perf_counter() - start,
        )

    def _check_fence(self, epoch: int) -> None:
        """Inside the write transaction: only the store's current epoch may write (P5)."""
        store_epoch = int(self._conn.execute("SELECT epoch FROM cluster WHERE id = 1").fetchone()[0])
        if epoch != store_epoch:
            raise StaleEpoch(self.path, epoch, store_epoch)

    def _ingest_one(self, batch: IngestBatch, hwm: int, epoch: int) -> IngestOutcome:
        pid = batch.panel_id
        records = batch.records
        if batch.last_seq <= hwm:
            return IngestOutcome(panel_id=pid, hwm=hwm, duplicates=len(records) // RECORD_SIZE)
        if batch.first_seq > hwm + 1:
            return IngestOutcome(
                panel_id=pid,
                hwm=hwm,
                error=f"panel {pid}: batch starts at seq {batch.first_seq}, expected seq {hwm + 1}",
                expected_seq=hwm + 1,
            )
        offset = 0
        next_seq = batch.first_seq
        duplicates = 0
        lost = 0
        if records[16] in _GAP_VALUES:
            first, time_us, kind, last, _count = _MARKER.unpack_from(records)
            if last > hwm:
                lo = max(first, hwm + 1)
                lost = last - lo + 1
                self._conn.execute(
                    "INSERT INTO losses (panel_id, first_seq, last_seq, count, kind, time_us, received_us, epoch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (pid, lo, last, lost, kind, _signed(time_us), batch.received_us, epoch),
                )
            else:
                duplicates += 1
            offset = RECORD_SIZE
            next_seq = last + 1
        if next_seq <= hwm:
            skip = hwm - next_seq + 1
            duplicates += skip
            offset += skip * RECORD_SIZE
        rows = (len(records) - offset) // RECORD_SIZE
        stored = rows
        conn = self._conn
        head = (pid, batch.received_us, epoch)
        for size in _CHUNKS:
            statement = self._sql[size]
            layout = self._rows[size]
            while rows >= size:
                conn.execute(statement, head + layout.unpack_from(records, offset))
                offset += size * RECORD_SIZE
                rows -= size
        return IngestOutcome(panel_id=pid, hwm=batch.last_seq, stored=stored, duplicates=duplicates, declared_lost=lost)

    # -- panel bookkeeping --------------------------------------------------------------

    def write_status(
        self,
        rows: Sequence[tuple[int, int, str, int, int, int, int, int]],
        *,
        sessions: Sequence[tuple[int, int, int]] = (),
        config_acks: Sequence[tuple[int, int]] = (),
    ) -> None:
        """One transaction of bookkeeping, so a thousand sessions do not cost a thousand fsyncs.

        Args:
            rows: (panel, connected, node, epoch, acked, newest, config version, time) for ``panel_status``.
            sessions: (panel, boot id, time) of sessions that started.
            config_acks: (panel, version) the panels confirmed.
        """
        with map_sqlite_errors(self.path, "writing panel status"), self._gate.bulk(), self.db.atomic():
            self._conn.executemany("INSERT OR REPLACE INTO panel_status VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._conn.executemany(
                "INSERT INTO panels (panel_id, hwm, boot_id, first_seen_us, last_seen_us) VALUES (?, 0, ?, ?, ?) "
                "ON CONFLICT (panel_id) DO UPDATE SET boot_id = excluded.boot_id, last_seen_us = excluded.last_seen_us",
                [(pid, _signed(boot), seen, seen) for pid, boot, seen in sessions],
            )
            self._conn.executemany(
                "INSERT INTO panels (panel_id, hwm, config_version) VALUES (?, 0, ?) "
                "ON CONFLICT (panel_id) DO UPDATE SET config_version = excluded.config_version",
                config_acks,
            )

    def status(self) -> list[dict[str, object]]:
        """Per panel: what the store holds and what the serving node last reported."""
        with map_sqlite_errors(self.path, "reading panel status"):
            return list(
                self.db.query(
                    "SELECT p.panel_id, p.hwm, p.config_version AS config_acked, p.last_seen_us, "
                    "s.connected, s.node_id, s.epoch, s.newest_seq, s.updated_us "
                    "FROM panels p LEFT JOIN panel_status s USING (panel_id) ORDER BY p.panel_id"
                )
            )

    # -- queries ----------------------------------------------------------------------

    def hwm(self, panel_id: int) -> int:
        with map_sqlite_errors(self.path, "reading a high-water mark"):
            return self._load_hwm(panel_id)

    def hwms(self) -> dict[int, int]:
        with map_sqlite_errors(self.path, "reading high-water marks"):
            return {int(r[0]): int(r[1]) for r in self._conn.execute("SELECT panel_id, hwm FROM panels")}

    def panels(self) -> list[dict[str, int | None]]:
        with map_sqlite_errors(self.path, "reading panels"):
            return list(self.db.query("SELECT * FROM panels ORDER BY panel_id"))

    def count_events(self, panel_id: int | None = None) -> int:
        with map_sqlite_errors(self.path, "counting events"):
            if panel_id is None:
                return int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])
            return int(self._conn.execute("SELECT count(*) FROM events WHERE panel_id = ?", (panel_id,)).fetchone()[0])

    def events(
        self,
        panel_id: int,
        *,
        from_seq: int = 0,
        to_seq: int = _MAX_STORED_SEQ,
        since_us: int | None = None,
        until_us: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """A panel's events in seq order, within a seq range and optionally a panel-time range."""
        sql = "SELECT * FROM events WHERE panel_id = ? AND seq BETWEEN ? AND ?"
        args: list[int] = [panel_id, from_seq, to_seq]
        if since_us is not None:
            sql += " AND time_us >= ?"
            args.append(since_us)
        if until_us is not None:
            sql += " AND time_us < ?"
            args.append(until_us)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with map_sqlite_errors(self.path, "reading events"):
            return [self._event(row) for row in self._conn.execute(sql, args)]

    def seqs(self, panel_id: int) -> list[int]:
        with map_sqlite_errors(self.path, "reading seqs"):
            return [
                r[0] for r in self._conn.execute("SELECT seq FROM events WHERE panel_id = ? ORDER BY seq", (panel_id,))
            ]

    @staticmethod
    def _event(row: tuple[int, ...]) -> StoredEvent:
        pid, seq, time_us, kind, door, reader, flags, card, aux, received_us, epoch = row
        record = EventRecord(
            seq=seq,
            time_us=_unsigned(time_us),
            kind=EventKind(kind),
            door=door,
            reader=reader,
            flags=EventFlags(flags),
            card=_unsigned(card),
            aux=aux,
        )
        return StoredEvent(panel_id=pid, record=record, received_us=received_us, epoch=epoch)

    def losses(self, panel_id: int | None = None) -> list[Loss]:
        sql = "SELECT panel_id, first_seq, last_seq, count, kind, time_us, received_us, epoch FROM losses"
        args: Iterable[int] = ()
        if panel_id is not None:
            sql += " WHERE panel_id = ?"
            args = (panel_id,)
        sql += " ORDER BY panel_id, first_seq"
        with map_sqlite_errors(self.path, "reading losses"):
            return [
                Loss(
                    panel_id=r[0],
                    first_seq=r[1],
                    last_seq=r[2],
                    count=r[3],
                    kind=EventKind(r[4]),
                    time_us=_unsigned(r[5]),
                    received_us=r[6],
                    epoch=r[7],
                )
                for r in self._conn.execute(sql, tuple(args))
            ]

    def stale_writes(self) -> int:
        """Events committed under an older epoch after a newer epoch had committed (P5).

        In commit order (arrival time) the epoch must never go back: a write that
        does came from a fenced node that the store failed to refuse.
        """
        with map_sqlite_errors(self.path, "checking epochs"):
            newest = stale = 0
            for (epoch,) in self._conn.execute("SELECT epoch FROM events ORDER BY received_us, panel_id, seq"):
                if epoch < newest:
                    stale += 1
                newest = max(newest, epoch)
            return stale

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees the store as of one instant (one WAL read transaction).

        A checker reading a panel's rows, then its losses, then its hwm while a node
        commits would see three different stores: a seq counted in the hwm but not
        among the rows reads as an undeclared gap.
        """
        with map_sqlite_errors(self.path, "starting a read snapshot"):
            self._conn.execute("BEGIN")
            # A deferred transaction takes its snapshot at the first read: take it now.
            self._conn.execute("SELECT epoch FROM cluster WHERE id = 1").fetchone()
        try:
            yield
        finally:
            with map_sqlite_errors(self.path, "ending a read snapshot"):
                self._conn.execute("COMMIT")

    def integrity_check(self) -> str:
        with map_sqlite_errors(self.path, "checking integrity"):
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
