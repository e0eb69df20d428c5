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
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from protocol import GAP_KINDS, RECORD_SIZE, EventFlags, EventKind, EventRecord

from ._errors import StaleEpoch, StoreError
from ._pg_conn import PgConnection, map_pg_errors
from ._pg_schema import migrate_pg
from ._store import IngestBatch, IngestOutcome, IngestResult, Loss, StoredEvent

__all__ = ["PgEventStore"]

_MAX_STORED_SEQ = 2**63 - 1
_GAP_VALUES = frozenset(int(k) for k in GAP_KINDS)
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


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _unsigned(value: int) -> int:
    return value + 2**64 if value < 0 else value


class PgEventStore:
    """Durable, exactly-once, per-panel ordered event storage with epoch fencing, on PostgreSQL.

    Args:
        url: ``postgresql://user@host:port/dbname`` (libpq's URL; a password in it is never shown).
        busy_timeout: seconds to wait for a row lock (``lock_timeout``) before ``StoreLocked``.
        commit_timeout: seconds a commit may wait for the synchronous standby before
            ``StoreNotReplicated`` (nothing acknowledged).
        synchronous_commit: ``on`` or ``remote_apply`` (see ``PgConnection``).
        connect_timeout: seconds to reach the server before ``StoreUnreachable``.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 5.0,
        commit_timeout: float = 10.0,
        synchronous_commit: str = "on",
        connect_timeout: float = 5.0,
    ) -> None:
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
        self._rows: list[bytes | bytearray] = []
        self._loss_rows: list[tuple[int, ...]] = []
        self._in_snapshot = False

    def __repr__(self) -> str:
        return f"<PgEventStore {self.where}>"

    def close(self) -> None:
        self._pg.close()

    @contextlib.contextmanager
    def _writing(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        if self._in_snapshot:
            raise StoreError(self.where, f"{doing}: not inside a read snapshot")
        with self._pg.transaction(doing) as conn:
            yield conn

    def _read(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return map_pg_errors(self.where, doing)

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

    def ingest(self, batches: Sequence[IngestBatch], epoch: int) -> IngestResult:
        """Store batches of many panels in one transaction; return each panel's new hwm.

        The same contract as ``EventStore.ingest``; with a synchronous standby it
        returns only once the standby has the commit.

        Raises:
            StaleEpoch: ``epoch`` is not the store's epoch; nothing was written.
            StoreNotReplicated: the standby did not confirm in time; not acknowledged.
            StoreFull, StoreLocked, StoreUnreachable, StoreError: not acknowledged.
        """
        start = time.perf_counter()
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
                with conn.cursor().copy("COPY events FROM STDIN (FORMAT BINARY)") as copy:
                    copy.write(b"".join([_COPY_HEADER, *self._rows, _COPY_TRAILER]))
            if self._loss_rows:
                conn.cursor().executemany(
                    "INSERT INTO losses (panel_id, first_seq, last_seq, count, kind, time_us, received_us, epoch) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    self._loss_rows,
                )
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
        )

    def _check_fence(self, epoch: int) -> None:
        """Inside the write transaction: only the store's current epoch may write (P5)."""
        store_epoch = _one(self._pg.get().execute("SELECT epoch FROM cluster WHERE id = 1 FOR KEY SHARE"))
        if epoch != store_epoch:
            raise StaleEpoch(self.where, epoch, store_epoch)

    def _ingest_one(self, batch: IngestBatch, hwm: int, epoch: int) -> IngestOutcome:
        pid = batch.panel_id
        records = batch.records
        if batch.last_seq > _MAX_STORED_SEQ:
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
                self._loss_rows.append((pid, lo, last, lost, kind, _signed(time_us), batch.received_us, epoch))
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
            self._rows.append(copy_rows(pid, batch.received_us, epoch, memoryview(records)[offset:]))
        return IngestOutcome(panel_id=pid, hwm=batch.last_seq, stored=stored, duplicates=duplicates, declared_lost=lost)

    # -- panel bookkeeping --------------------------------------------------------------

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
                    [(pid, _signed(boot), seen, seen) for pid, boot, seen in sessions],
                )
            if config_acks:
                cur.executemany(
                    "INSERT INTO panels (panel_id, hwm, config_version) VALUES (%s, 0, %s) "
                    "ON CONFLICT (panel_id) DO UPDATE SET config_version = excluded.config_version",
                    config_acks,
                )

    def status(self) -> list[dict[str, object]]:
        """Per panel: what the store holds and what the serving node last reported."""
        with self._read("reading panel status"):
            cur = self._pg.get().cursor(row_factory=dict_row)
            return list(
                cur.execute(
                    "SELECT p.panel_id, p.hwm, p.config_version AS config_acked, p.last_seen_us, "
                    "s.connected, s.node_id, s.epoch, s.newest_seq, s.updated_us "
                    "FROM panels p LEFT JOIN panel_status s USING (panel_id) ORDER BY p.panel_id"
                )
            )

    # -- queries ----------------------------------------------------------------------

    def hwm(self, panel_id: int) -> int:
        with self._read("reading a high-water mark"):
            row = self._pg.get().execute("SELECT hwm FROM panels WHERE panel_id = %s", (panel_id,)).fetchone()
            return int(row[0]) if row else 0

    def hwms(self) -> dict[int, int]:
        with self._read("reading high-water marks"):
            return {int(r[0]): int(r[1]) for r in self._pg.get().execute("SELECT panel_id, hwm FROM panels")}

    def panels(self) -> list[dict[str, int | None]]:
        with self._read("reading panels"):
            cur = self._pg.get().cursor(row_factory=dict_row)
            return list(cur.execute("SELECT * FROM panels ORDER BY panel_id"))

    def count_events(self, panel_id: int | None = None) -> int:
        with self._read("counting events"):
            if panel_id is None:
                return _one(self._pg.get().execute("SELECT count(*) FROM events"))
            return _one(self._pg.get().execute("SELECT count(*) FROM events WHERE panel_id = %s", (panel_id,)))

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
        sql = "SELECT * FROM events WHERE panel_id = %s AND seq BETWEEN %s AND %s"
        args: list[int] = [panel_id, from_seq, to_seq]
        if since_us is not None:
            sql += " AND time_us >= %s"
            args.append(_signed(since_us))
        if until_us is not None:
            sql += " AND time_us < %s"
            args.append(_signed(until_us))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        with self._read("reading events"):
            return [_event(row) for row in self._pg.get().execute(sql, args)]

    def seqs(self, panel_id: int) -> list[int]:
        with self._read("reading seqs"):
            cur = self._pg.get().execute("SELECT seq FROM events WHERE panel_id = %s ORDER BY seq", (panel_id,))
            return [int(r[0]) for r in cur]

    def losses(self, panel_id: int | None = None) -> list[Loss]:
        sql = "SELECT panel_id, first_seq, last_seq, count, kind, time_us, received_us, epoch FROM losses"
        args: Iterable[int] = ()
        if panel_id is not None:
            sql += " WHERE panel_id = %s"
            args = (panel_id,)
        sql += " ORDER BY panel_id, first_seq"
        with self._read("reading losses"):
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
                for r in self._pg.get().execute(sql, tuple(args))
            ]

    def stale_writes(self) -> int:
        """Events committed under an older epoch after a newer epoch had committed (P5)."""
        with self._read("checking epochs"):
            return _one(
                self._pg.get().execute(
                    "SELECT count(*) FROM (SELECT epoch < max(epoch) OVER (ORDER BY received_us, panel_id, seq "
                    "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stale FROM events) t WHERE stale"
                )
            )

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees the store as of one instant (one REPEATABLE READ transaction)."""
        conn = self._pg.get()
        with self._read("starting a read snapshot"):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # The snapshot is taken at the first query: take it now.
            conn.execute("SELECT epoch FROM cluster WHERE id = 1").fetchone()
        self._in_snapshot = True
        try:
            yield
        finally:
            self._in_snapshot = False
            with self._read("ending a read snapshot"):
                conn.execute("COMMIT")

    def integrity_check(self) -> str:
        """``"ok"``, or the store's invariants that do not hold (no row past its panel's hwm, one cluster row)."""
        with self._read("checking integrity"):
            conn = self._pg.get()
            problems = []
            beyond = _one(
                conn.execute("SELECT count(*) FROM events e JOIN panels p USING (panel_id) WHERE e.seq > p.hwm")
            )
            if beyond:
                problems.append(f"{beyond} events beyond their panel's high-water mark")
            orphans = _one(
                conn.execute(
                    "SELECT count(*) FROM (SELECT DISTINCT panel_id FROM events) e LEFT JOIN panels p "
                    "USING (panel_id) WHERE p.panel_id IS NULL"
                )
            )
            if orphans:
                problems.append(f"{orphans} panels with events but no high-water mark")
            if _one(conn.execute("SELECT count(*) FROM cluster")) != 1:
                problems.append("the cluster table does not hold exactly one row")
        return "; ".join(problems) or "ok"


def _one(cur: psycopg.Cursor[Any]) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


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
