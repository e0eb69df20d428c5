"""The PostgreSQL event store's read side: the queries the checker, the CLI and operators use.

``PgEventStore`` (``_pg_store``) adds the write side (open, epoch, ingest) to
this base; these methods only read, through the store's one connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from protocol import EventKind

from ._pg_conn import PgConnection, map_pg_errors
from ._records import (
    ALARM_COLUMNS,
    ALARM_FEED_LIMIT,
    MAX_STORED_SEQ,
    AlarmCursor,
    AlarmFeed,
    Loss,
    StoredAlarm,
    StoredEvent,
    alarm_feed,
    signed,
    stored_alarm,
    stored_event,
    unsigned,
)

__all__ = ["_PgEventQueries", "_one"]


class _PgEventQueries:
    """Reads of the PostgreSQL event store; ``PgEventStore`` opens the connection they use."""

    _pg: PgConnection
    where: str
    #: Set inside ``snapshot``: a write there would end the read transaction.
    _in_snapshot: bool

    def _read(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return map_pg_errors(self.where, doing)

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
        to_seq: int = MAX_STORED_SEQ,
        since_us: int | None = None,
        until_us: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """A panel's events in seq order, within a seq range and optionally a panel-time range."""
        sql = "SELECT * FROM events WHERE panel_id = %s AND seq BETWEEN %s AND %s"
        args: list[int] = [panel_id, from_seq, to_seq]
        if since_us is not None:
            sql += " AND time_us >= %s"
            args.append(signed(since_us))
        if until_us is not None:
            sql += " AND time_us < %s"
            args.append(signed(until_us))
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
                    time_us=unsigned(r[5]),
                    received_us=r[6],
                    epoch=r[7],
                )
                for r in self._pg.get().execute(sql, tuple(args))
            ]

    def alarms(self, panel_id: int | None = None) -> list[StoredAlarm]:
        """Every alarm stored (docs/protocol.md 7.6), in the order it was stored."""
        sql = f"SELECT {ALARM_COLUMNS} FROM alarms"
        args: tuple[int, ...] = ()
        if panel_id is not None:
            sql, args = sql + " WHERE panel_id = %s", (panel_id,)
        with self._read("reading alarms"):
            return [stored_alarm(r) for r in self._pg.get().execute(sql + " ORDER BY id", args)]

    def alarm_feed(self, after: AlarmCursor, *, limit: int = ALARM_FEED_LIMIT) -> AlarmFeed:
        """As ``EventStore.alarm_feed``: the node's one ingest connection and the acknowledgers'
        lock make each table's ids grow in commit order."""
        with self._read("reading alarms"), self.snapshot():
            conn = self._pg.get()
            return alarm_feed(lambda sql, args: conn.execute(sql, args).fetchall(), "%s", after, limit)

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


_event = stored_event
