"""The server's event store: exactly once, in order, durable before the ACK.

One SQLite file in WAL mode with ``synchronous=FULL`` (NORMAL may lose a
committed transaction on power loss, and an ACK promises the event survives).
``ingest`` takes batches of many panels and commits them in ONE transaction, so
a single fsync serves them all (group commit).

Two ways in, one store: ``ingest`` writes every event's row before it returns (an
ACK means the row is there); ``append`` (the log-structured ingest) writes each
batch as ONE row of ``batch_log`` and returns, and ``materialize`` moves logged
batches into ``events`` behind the ACK, each step in one transaction that inserts
the rows and deletes their log rows together, so a kill at any point neither
loses nor repeats an event. Both check continuity and move the hwm the same way,
inside the write transaction. docs/architecture.md ("The batch log") has the
design and its measured lag.

Hot path: records stay packed until a multi-row INSERT binds them. The panel
id, receive time and epoch are numbered parameters shared by every row of a
statement, and one ``struct.unpack_from`` per chunk yields the other eight
columns flat, with no per-row Python. u64 fields go in as the signed 64-bit
integers SQLite stores (the same bits); the query helpers turn them back.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from sqlite_utils import Database

from protocol import GAP_KINDS, RECORD_SIZE

from ._errors import StaleEpoch, map_sqlite_errors
from ._gate import write_gate
from ._records import (
    ALARM_FIELDS,
    ALARM_INSERT,
    IngestAlarm,
    IngestBatch,
    IngestOutcome,
    IngestResult,
    LogBacklog,
    alarm_rows,
    gap_alarm_row,
    materialize_all,
    signed,
)
from ._schema import migrate, wal_connection
from ._store_queries import _EventQueries

__all__ = ["EventStore"]

_CHUNKS = (256, 64, 16, 4, 1)
_GAP_VALUES = frozenset(int(k) for k in GAP_KINDS)
_MARKER = struct.Struct(">QQB3xQI")
_ALARM_SQL = ALARM_INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1).format(",".join("?" * ALARM_FIELDS))


def _insert_sql(rows: int) -> str:
    values = ",".join("(?1," + ",".join(f"?{4 + 8 * i + c}" for c in range(8)) + ",?2,?3)" for i in range(rows))
    return f"INSERT INTO events VALUES {values}"


class EventStore(_EventQueries):
    """Durable, exactly-once, per-panel ordered event storage with epoch fencing.

    Args:
        path: the SQLite file (created if missing).
        busy_timeout: seconds to wait for another writer's lock before ``StoreLocked``.
        durable: False for a connection that only materializes the batch log: its
            commits are not fsynced one by one (``synchronous = NORMAL``). What they
            move is already durable in the log, and a step lost to a power cut is
            undone whole (WAL recovery) and done again.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0, durable: bool = True) -> None:
        self.path = Path(path)
        #: One commit's rows of ``alarms``: the lane's copies, then the batches' own alarms.
        self._alarm_rows: list[tuple[int, ...]] = []
        with map_sqlite_errors(self.path, "opening the event store"):
            conn = wal_connection(self.path, busy_timeout)
            self._conn = conn
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self.db = Database(conn)
            self._migrate()
        self._sql = {n: _insert_sql(n) for n in _CHUNKS}
        self._rows = {n: struct.Struct(">" + "qqBBBBqI" * n) for n in _CHUNKS}
        #: Writes take a bulk turn: this process's lease renewals go first (see ``_gate``).
        self._gate = write_gate(self.path)
        #: Within one ingest transaction: the batches go to ``batch_log`` (``append``).
        self._to_log = False

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

    def ingest(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
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
        return self._commit(batches, epoch, alarms, to_log=False)

    def append(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
        """``ingest``, with each batch's new records as one row of the batch log.

        Every check and the hwm are as in ``ingest``, in the same one transaction, so
        what this returns is as durable as an ``ingest``'s: its events reach the
        ``events`` table through ``materialize``. ``stored`` counts the events logged.
        """
        return self._commit(batches, epoch, alarms, to_log=True)

    def _commit(
        self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm], *, to_log: bool
    ) -> IngestResult:
        start = time.perf_counter()
        self._to_log = to_log
        # The alarm lane's copies first (docs/protocol.md 7.6), then the batches' own alarms.
        self._alarm_rows = [
            row for a in alarms for row in alarm_rows(a.panel_id, a.records, a.received_us, epoch, lane=True)
        ]
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
                alarms_stored = 0
                if self._alarm_rows:
                    before = conn.total_changes
                    conn.executemany(_ALARM_SQL, self._alarm_rows)
                    alarms_stored = conn.total_changes - before
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
            alarms_stored=alarms_stored,
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
                    (pid, lo, last, lost, kind, signed(time_us), batch.received_us, epoch),
                )
                self._alarm_rows.append(gap_alarm_row(pid, lo, last, kind, time_us, batch.received_us, epoch))
            else:
                duplicates += 1
            offset = RECORD_SIZE
            next_seq = last + 1
        if next_seq <= hwm:
            skip = hwm - next_seq + 1
            duplicates += skip
            offset += skip * RECORD_SIZE
        stored = (len(records) - offset) // RECORD_SIZE
        if stored:
            new = records[offset:] if offset else records
            self._alarm_rows += alarm_rows(pid, new, batch.received_us, epoch, lane=False, only_alarms=True)
        if stored and self._to_log:
            self._conn.execute(
                "INSERT INTO batch_log (panel_id, received_us, epoch, events, records) VALUES (?, ?, ?, ?, ?)",
                (pid, batch.received_us, epoch, stored, records[offset:] if offset else records),
            )
        elif stored:
            self._insert_rows(pid, batch.received_us, epoch, records, offset)
        return IngestOutcome(panel_id=pid, hwm=batch.last_seq, stored=stored, duplicates=duplicates, declared_lost=lost)

    def _insert_rows(self, pid: int, received_us: int, epoch: int, records: bytes, offset: int) -> None:
        conn = self._conn
        rows = (len(records) - offset) // RECORD_SIZE
        head = (pid, received_us, epoch)
        for size in _CHUNKS:
            statement = self._sql[size]
            layout = self._rows[size]
            while rows >= size:
                conn.execute(statement, head + layout.unpack_from(records, offset))
                offset += size * RECORD_SIZE
                rows -= size

    def orphan_alarms(self, panel_id: int, above: int) -> int:
        """The panel lost its counter (its HELLO's newest seq is below ``above``, the hwm) and
        numbers again from ``above + 1``: its lane copies above it stand for records that never
        reached ``events`` and keep their rows, out of the key (docs/protocol.md 7.6). How many."""
        with map_sqlite_errors(self.path, "setting aside a panel's renumbered alarms"):
            cursor = self._conn.execute(
                "UPDATE alarms SET orphan = 1 WHERE panel_id = ? AND seq > ? AND orphan = 0", (panel_id, above)
            )
            return cursor.rowcount

    # -- the batch log ------------------------------------------------------------------

    def log_backlog(self) -> LogBacklog:
        """What is acknowledged but not yet in ``events``."""
        with map_sqlite_errors(self.path, "reading the batch log"):
            batches, events, oldest = self._conn.execute(
                "SELECT count(*), coalesce(sum(events), 0), min(received_us) FROM batch_log"
            ).fetchone()
        return LogBacklog(batches=int(batches), events=int(events), oldest_received_us=oldest)

    def materialize(self, max_events: int = 16_384) -> LogBacklog:
        """Move the oldest logged batches, about ``max_events`` events, into ``events``.

        One transaction inserts their rows and deletes their log rows, so a kill at any
        point leaves each batch either in the log or in ``events``, never both, never
        neither. The log is read inside the transaction: two materializers of one file
        (a fenced node's and its successor's) take turns and never move a batch twice.
        Returns what it moved (``LogBacklog()`` when the log was empty).

        Raises:
            StoreFull, StoreLocked, StoreError: nothing was moved.
        """
        conn = self._conn
        with map_sqlite_errors(self.path, "materializing the batch log"), self._gate.background():
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "SELECT id, panel_id, received_us, epoch, events, records FROM batch_log ORDER BY id"
                )
                taken: list[tuple[int, int, int, int, int, bytes]] = []
                events = 0
                while events < max_events:
                    row = cursor.fetchone()
                    if row is None:
                        break
                    taken.append(row)
                    events += row[4]
                cursor.close()
                if not taken:
                    conn.execute("COMMIT")
                    return LogBacklog()
                for _id, pid, received_us, epoch, _n, records in taken:
                    self._insert_rows(pid, received_us, epoch, records, 0)
                conn.execute("DELETE FROM batch_log WHERE id <= ?", (taken[-1][0],))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return LogBacklog(batches=len(taken), events=events, oldest_received_us=min(r[2] for r in taken))

    def materialize_all(self) -> LogBacklog:
        """Materialize until the log is empty (what a restart or the checker finishes)."""
        return materialize_all(self.materialize)

    # -- panel bookkeeping --------------------------------------------------------------

    def acknowledge_alarms(self, alarms: Sequence[tuple[int, int, int, int]], *, by: str, at_us: int) -> int:
        """Record an operator's acknowledgement of these alarms, each (row id, panel, seq, kind).

        A row that does not match all four is left alone: an operator's listing may be of
        another database (a mirrored pair's, before a failover), whose ids name other alarms
        here. How many were not acknowledged before."""
        with map_sqlite_errors(self.path, "recording an acknowledgement"), self._gate.bulk(), self.db.atomic():
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT OR IGNORE INTO alarm_acks (alarm_id, acked_us, acked_by) "
                "SELECT id, ?, ? FROM alarms WHERE id = ? AND panel_id = ? AND seq = ? AND kind = ?",
                [(at_us, by, *key) for key in sorted(set(alarms))],
            )
            return self._conn.total_changes - before

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
                [(pid, signed(boot), seen, seen) for pid, boot, seen in sessions],
            )
            self._conn.executemany(
                "INSERT INTO panels (panel_id, hwm, config_version) VALUES (?, 0, ?) "
                "ON CONFLICT (panel_id) DO UPDATE SET config_version = excluded.config_version",
                config_acks,
            )
