"""The server's event store on PostgreSQL: ``EventStore``'s semantics over psycopg 3.

One transaction per ``ingest`` call, the epoch fence inside it, durable (with a
synchronous standby: on both nodes) before it returns.

The fence is ``SELECT epoch FROM cluster ... FOR KEY SHARE``: it conflicts with the
``FOR UPDATE`` that ``advance_epoch`` and a lease take-over hold while they raise the
epoch, so an ingest either commits before the new epoch does or sees it and is
refused; and it does not conflict with the plain UPDATE of a lease renewal, so a
renewal never waits behind a group commit.

Hot path: the records stay packed. Each row of ``events`` goes to the server by
binary COPY; its 110 bytes are the record's 32 bytes moved into a per-batch template
(field count, lengths, panel, receive time, epoch) by 32 strided slice assignments
per batch, with no per-row Python. The record's big-endian u64 fields are already the
binary form of the signed BIGINT with the same bits. Duplicates never reach COPY: a
batch is cut at the panel's high-water mark, read in the same transaction after the
fence (measured: COPY into a temporary table then ``INSERT ... ON CONFLICT DO NOTHING``
ran at 0.6-0.8x of COPY straight into ``events``). The primary key stays as the last
guard: a row that got past the mark fails the whole transaction, never silently.

The batch log (``append``, ``materialize``): as on SQLite, ``append`` keeps every rule of
``ingest`` in the same one transaction and writes each batch's new records as one
``bytea`` row of ``batch_log``, by one binary COPY per call; ``materialize`` moves the
oldest logged batches into ``events`` (the same COPY rows as ``ingest``'s) and deletes
exactly those log rows, in one transaction. Materializers take turns on a transaction
advisory lock, so a fenced node's and its successor's never move a batch twice. A
materializing connection (``durable=False``) commits without waiting for the flush or
the standby: what it moves is already durable in the log, and a step lost to a crash or
a failover is lost whole (its inserts and its deletes are one WAL commit) and done again.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from protocol import GAP_KINDS, RECORD_SIZE

from ._errors import StaleEpoch, StoreError
from ._pg_conn import PgConnection
from ._pg_queries import _one, _PgEventQueries
from ._pg_schema import migrate_pg
from ._records import (
    ALARM_FIELDS,
    ALARM_INSERT,
    MAX_STORED_SEQ,
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

__all__ = ["PgEventStore"]

_ALARM_SQL = (
    ALARM_INSERT.format(", ".join(["%s"] * ALARM_FIELDS))
    + " ON CONFLICT (panel_id, seq, gap) WHERE orphan = 0 DO NOTHING"
)

_GAP_VALUES = frozenset(int(k) for k in GAP_KINDS)
#: The transaction advisory lock every materializing step takes ("fsyncmat").
_MATERIALIZE_LOCK = 0x6673796E636D6174
#: batch_log's columns by binary COPY: panel_id, received_us, epoch (int8), events (int4), records.
_LOG_HEADER = struct.Struct(">hiqiqiqii")
_MARKER = struct.Struct(">QQB3xQI")

#: Binary COPY: signature, flags, header extension length; the trailer is a field count of -1.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
#: events' columns: (binary length, bytes taken from the record at this offset, or None).
_COLUMNS: tuple[tuple[int, int | None], ...] = (
    (8, None),  # panel_id
    (8, 0),  # seq
    (8, 8),  # time_us
    (2, 16),  # kind: u8 in the low byte of an int2
    (2, 17),  # door
    (2, 18),  # reader
    (2, 19),  # flags
    (8, 20),  # card
    (8, 28),  # aux: u32 in the low 4 bytes of an int8
    (8, None),  # received_us
    (8, None),  # epoch
)


def _layout() -> tuple[int, tuple[tuple[int, int], ...], tuple[int, int, int]]:
    """The row size, (row offset, record offset) of each record byte, offsets of the three shared values."""
    moves: list[tuple[int, int]] = []
    shared: list[int] = []
    at = 2
    for width, src in _COLUMNS:
        at += 4
        if src is None:
            shared.append(at)
        else:
            size = {0: 8, 8: 8, 20: 8, 28: 4}.get(src, 1)
            moves.extend((at + width - size + k, src + k) for k in range(size))
        at += width
    assert len(moves) == RECORD_SIZE
    return at, tuple(moves), (shared[0], shared[1], shared[2])


_ROW_SIZE, _MOVES, _SHARED = _layout()


def _row_template(panel_id: int, received_us: int, epoch: int) -> bytes:
    row = bytearray(_ROW_SIZE)
    struct.pack_into(">h", row, 0, len(_COLUMNS))
    at = 2
    for width, _ in _COLUMNS:
        struct.pack_into(">i", row, at, width)
        at += 4 + width
    for offset, value in zip(_SHARED, (panel_id, received_us, epoch), strict=True):
        struct.pack_into(">q", row, offset, value)
    return bytes(row)


def copy_rows(panel_id: int, received_us: int, epoch: int, records: bytes | memoryview) -> bytearray:
    """Binary COPY rows of ``events`` for packed records (without the stream's header)."""
    n = len(records) // RECORD_SIZE
    out = bytearray(_row_template(panel_id, received_us, epoch) * n)
    for dst, src in _MOVES:
        out[dst::_ROW_SIZE] = records[src::RECORD_SIZE]
    return out


class PgEventStore(_PgEventQueries):
    """Durable, exactly-once, per-panel ordered event storage with epoch fencing, on PostgreSQL.

    Args:
        url: ``postgresql://user@host:port/dbname`` (libpq's URL; a password in it is never shown).
        busy_timeout: seconds to wait for a row lock (``lock_timeout``) before ``StoreLocked``.
        commit_timeout: seconds a commit may wait for the synchronous standby before
            ``StoreNotReplicated`` (nothing acknowledged).
        synchronous_commit: ``on`` or ``remote_apply`` (see ``PgConnection``).
        connect_timeout: seconds to reach the server before ``StoreUnreachable``.
        durable: False for a connection that only materializes the batch log: its steps
            commit without waiting for a flush or a standby (see the module's docstring).
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 5.0,
        commit_timeout: float = 10.0,
        synchronous_commit: str = "on",
        connect_timeout: float = 5.0,
        durable: bool = True,
    ) -> None:
        self.durable = durable
        self._pg = PgConnection(
            url,
            what="the event store",
            busy_timeout=busy_timeout,
            commit_timeout=commit_timeout,
            synchronous_commit=synchronous_commit,
            connect_timeout=connect_timeout,
        )
        self.where = self._pg.where
        try:
            migrate_pg(self._pg)
        except BaseException:
            self._pg.close()
            raise
        #: This call's COPY rows and losses, filled by ``_ingest_one`` inside the transaction.
        self._rows: list[bytes | bytearray | memoryview] = []
        self._loss_rows: list[tuple[int, ...]] = []
        #: This call's rows of ``alarms``: the lane's copies, then the batches' own alarms.
        self._alarm_rows: list[tuple[int, ...]] = []
        #: Within one ``append``: the batches go to ``batch_log``, one COPY row each.
        self._to_log = False
        self._in_snapshot = False

    def __repr__(self) -> str:
        return f"<PgEventStore {self.where}>"

    def close(self) -> None:
        self._pg.close()

    @contextlib.contextmanager
    def _writing(self, doing: str, *, durable: bool = True) -> Iterator[psycopg.Connection[Any]]:
        if self._in_snapshot:
            raise StoreError(self.where, f"{doing}: not inside a read snapshot")
        with self._pg.transaction(doing, durable=durable) as conn:
            yield conn

    # -- epoch ------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        with self._read("reading the epoch"):
            return _one(self._pg.get().execute("SELECT epoch FROM cluster WHERE id = 1"))

    def advance_epoch(self, expected: int | None = None) -> int:
        """Raise the store's epoch by one and return it (compare and set with ``expected``)."""
        with self._writing("advancing the epoch") as conn:
            current = _one(conn.execute("SELECT epoch FROM cluster WHERE id = 1 FOR UPDATE"))
            if expected is not None and current != expected:
                raise StaleEpoch(self.where, expected, current)
            conn.execute("UPDATE cluster SET epoch = %s WHERE id = 1", (current + 1,))
        return current + 1

    # -- ingest -----------------------------------------------------------------------

    def ingest(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
        """Store batches of many panels in one transaction; return each panel's new hwm.

        The same contract as ``EventStore.ingest``; with a synchronous standby it
        returns only once the standby has the commit.

        Raises:
            StaleEpoch: ``epoch`` is not the store's epoch; nothing was written.
            StoreNotReplicated: the standby did not confirm in time; not acknowledged.
            StoreFull, StoreLocked, StoreUnreachable, StoreError: not acknowledged.
        """
        return self._commit(batches, epoch, alarms, to_log=False)

    def append(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
        """``ingest``, with each batch's new records as one row of the batch log.

        Every check and the hwm are as in ``ingest``, in the same one transaction and as
        durable (with a synchronous standby: on both nodes); its events reach ``events``
        through ``materialize``. ``stored`` counts the events logged.
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
        alarms_stored = 0
        outcomes: list[IngestOutcome] = []
        new_hwm: dict[int, int] = {}
        touched: dict[int, int] = {}
        stored_total = 0
        self._rows.clear()
        self._loss_rows.clear()
        with self._writing("ingesting events") as conn:
            self._check_fence(epoch)
            panels = sorted({b.panel_id for b in batches})
            known: dict[int, int] = {}
            if panels:
                known = {
                    int(r[0]): int(r[1])
                    for r in conn.execute("SELECT panel_id, hwm FROM panels WHERE panel_id = ANY(%s)", (panels,))
                }
            for batch in batches:
                pid = batch.panel_id
                hwm = new_hwm.get(pid)
                if hwm is None:
                    hwm = known.get(pid, 0)
                outcome = self._ingest_one(batch, hwm, epoch)
                outcomes.append(outcome)
                stored_total += outcome.stored
                new_hwm[pid] = outcome.hwm
                touched[pid] = batch.received_us
            if self._rows:
                table = "batch_log (panel_id, received_us, epoch, events, records)" if to_log else "events"
                with conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(b"".join([_COPY_HEADER, *self._rows, _COPY_TRAILER]))
            if self._loss_rows:
                conn.cursor().executemany(
                    "INSERT INTO losses (panel_id, first_seq, last_seq, count, kind, time_us, received_us, epoch) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    self._loss_rows,
                )
            if self._alarm_rows:
                cur = conn.cursor()
                cur.executemany(_ALARM_SQL, self._alarm_rows)
                alarms_stored = max(0, cur.rowcount)
            if touched:
                ids = list(touched)
                conn.execute(
                    "INSERT INTO panels (panel_id, hwm, first_seen_us, last_seen_us) "
                    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) "
                    "ON CONFLICT (panel_id) DO UPDATE SET hwm = excluded.hwm, last_seen_us = excluded.last_seen_us",
                    (ids, [new_hwm[p] for p in ids], [touched[p] for p in ids], [touched[p] for p in ids]),
                )
        self._rows.clear()
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
        store_epoch = _one(self._pg.get().execute("SELECT epoch FROM cluster WHERE id = 1 FOR KEY SHARE"))
        if epoch != store_epoch:
            raise StaleEpoch(self.where, epoch, store_epoch)

    def _ingest_one(self, batch: IngestBatch, hwm: int, epoch: int) -> IngestOutcome:
        pid = batch.panel_id
        records = batch.records
        if batch.last_seq > MAX_STORED_SEQ:
            return IngestOutcome(panel_id=pid, hwm=hwm, error=f"seq {batch.last_seq} is beyond 2**63-1")
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
                self._loss_rows.append((pid, lo, last, lost, kind, signed(time_us), batch.received_us, epoch))
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
            size = stored * RECORD_SIZE
            head = _LOG_HEADER.pack(5, 8, pid, 8, batch.received_us, 8, epoch, 4, stored)
            self._rows.append(head + size.to_bytes(4, "big"))
            self._rows.append(memoryview(records)[offset:] if offset else records)
        elif stored:
            self._rows.append(copy_rows(pid, batch.received_us, epoch, memoryview(records)[offset:]))
        return IngestOutcome(panel_id=pid, hwm=batch.last_seq, stored=stored, duplicates=duplicates, declared_lost=lost)

    def orphan_alarms(self, panel_id: int, above: int) -> int:
        """As ``EventStore.orphan_alarms``."""
        with self._writing("setting aside a panel's renumbered alarms") as conn:
            cursor = conn.execute(
                "UPDATE alarms SET orphan = 1 WHERE panel_id = %s AND seq > %s AND orphan = 0", (panel_id, above)
            )
            return max(0, cursor.rowcount)

    # -- the batch log ------------------------------------------------------------------

    def log_backlog(self) -> LogBacklog:
        """What is acknowledged but not yet in ``events``."""
        with self._read("reading the batch log"):
            row = (
                self._pg.get()
                .execute("SELECT count(*), coalesce(sum(events), 0), min(received_us) FROM batch_log")
                .fetchone()
            )
        assert row is not None
        return LogBacklog(batches=int(row[0]), events=int(row[1]), oldest_received_us=row[2])

    def materialize(self, max_events: int = 16_384) -> LogBacklog:
        """Move the oldest logged batches, about ``max_events`` events, into ``events``.

        One transaction inserts their rows and deletes exactly their log rows, so a kill
        at any point leaves each batch either in the log or in ``events``, never both,
        never neither. Materializers take turns (an advisory lock held to the commit) and
        read the log after taking it: no batch is moved twice. Returns what it moved
        (``LogBacklog()`` when the log was empty).

        Raises:
            StoreFull, StoreLocked, StoreUnreachable, StoreError: nothing was moved.
        """
        with self._writing("materializing the batch log", durable=self.durable) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MATERIALIZE_LOCK,))
            # Whole batches, oldest first, until about max_events (the first always): their
            # sizes by the primary key's order (at most max_events rows, each holds one
            # event or more), then the records of those alone.
            ids: list[int] = []
            events = 0
            for batch_id, n in conn.execute(
                "SELECT id, events FROM batch_log ORDER BY id LIMIT %s", (max(1, max_events),)
            ):
                if events >= max_events:
                    break
                ids.append(batch_id)
                events += n
            if not ids:
                return LogBacklog()
            taken = conn.execute(
                "SELECT id, panel_id, received_us, epoch, events, records FROM batch_log "
                "WHERE id = ANY(%s) ORDER BY id",
                (ids,),
            ).fetchall()
            rows = [copy_rows(pid, received_us, epoch, records) for _id, pid, received_us, epoch, _n, records in taken]
            with conn.cursor().copy("COPY events FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(b"".join([_COPY_HEADER, *rows, _COPY_TRAILER]))
            deleted = conn.execute("DELETE FROM batch_log WHERE id = ANY(%s)", (ids,)).rowcount
            if deleted != len(ids) or len(taken) != len(ids):  # another mover despite the lock
                raise StoreError(self.where, f"materializing the batch log: {len(ids)} batches read, {deleted} deleted")
        return LogBacklog(
            batches=len(taken), events=sum(int(r[4]) for r in taken), oldest_received_us=min(r[2] for r in taken)
        )

    def materialize_all(self) -> LogBacklog:
        """Materialize until the log is empty (what a restart or the checker finishes)."""
        return materialize_all(self.materialize)

    # -- panel bookkeeping --------------------------------------------------------------

    def acknowledge_alarms(self, alarms: Sequence[tuple[int, int, int, int]], *, by: str, at_us: int) -> int:
        """As ``EventStore.acknowledge_alarms``. Acknowledgers take turns (the table's lock), so
        that ``alarm_acks``' ids grow in commit order and ``alarm_feed``'s cursor skips none."""
        keys = sorted(set(alarms))
        with self._writing("recording an acknowledgement") as conn:
            conn.execute("LOCK TABLE alarm_acks IN EXCLUSIVE MODE")
            cursor = conn.execute(
                "INSERT INTO alarm_acks (alarm_id, acked_us, acked_by) SELECT a.id, %s, %s FROM alarms a "
                "JOIN unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::smallint[]) AS k (id, panel_id, seq, kind) "
                "USING (id, panel_id, seq, kind) ORDER BY a.id ON CONFLICT (alarm_id) DO NOTHING",
                (at_us, by, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys]),
            )
            return max(0, cursor.rowcount)

    def write_status(
        self,
        rows: Sequence[tuple[int, int, str, int, int, int, int, int]],
        *,
        sessions: Sequence[tuple[int, int, int]] = (),
        config_acks: Sequence[tuple[int, int]] = (),
    ) -> None:
        """One transaction of bookkeeping (see ``EventStore.write_status``)."""
        with self._writing("writing panel status") as conn:
            cur = conn.cursor()
            if rows:
                cur.executemany(
                    "INSERT INTO panel_status VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (panel_id) DO UPDATE "
                    "SET connected = excluded.connected, node_id = excluded.node_id, epoch = excluded.epoch, "
                    "acked_seq = excluded.acked_seq, newest_seq = excluded.newest_seq, "
                    "config_version = excluded.config_version, updated_us = excluded.updated_us",
                    rows,
                )
            if sessions:
                cur.executemany(
                    "INSERT INTO panels (panel_id, hwm, boot_id, first_seen_us, last_seen_us) "
                    "VALUES (%s, 0, %s, %s, %s) ON CONFLICT (panel_id) DO UPDATE "
                    "SET boot_id = excluded.boot_id, last_seen_us = excluded.last_seen_us",
                    [(pid, signed(boot), seen, seen) for pid, boot, seen in sessions],
                )
            if config_acks:
                cur.executemany(
                    "INSERT INTO panels (panel_id, hwm, config_version) VALUES (%s, 0, %s) "
                    "ON CONFLICT (panel_id) DO UPDATE SET config_version = excluded.config_version",
                    config_acks,
                )
