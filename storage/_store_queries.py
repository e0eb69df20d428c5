"""The SQLite event store's read side: the queries the checker, the CLI and operators use.

``EventStore`` (``_store``) adds the write side (open, epoch, ingest) to this
base; these methods only read, through the store's one connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlite_utils import Database

from protocol import EventKind

from ._errors import map_sqlite_errors
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
    stored_alarm,
    stored_event,
    unsigned,
)

__all__ = ["_EventQueries"]


class _EventQueries:
    """Reads of the SQLite event store; ``EventStore`` opens the connection they use."""

    path: Path
    db: Database
    _conn: sqlite3.Connection

    def _load_hwm(self, panel_id: int) -> int:
        row = self._conn.execute("SELECT hwm FROM panels WHERE panel_id = ?", (panel_id,)).fetchone()
        return int(row[0]) if row else 0

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
        to_seq: int = MAX_STORED_SEQ,
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

    _event = staticmethod(stored_event)

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
                    time_us=unsigned(r[5]),
                    received_us=r[6],
                    epoch=r[7],
                )
                for r in self._conn.execute(sql, tuple(args))
            ]

    def alarms(self, panel_id: int | None = None) -> list[StoredAlarm]:
        """Every alarm stored (docs/protocol.md 7.6), in the order it was stored."""
        sql = f"SELECT {ALARM_COLUMNS} FROM alarms"
        args: tuple[int, ...] = ()
        if panel_id is not None:
            sql, args = sql + " WHERE panel_id = ?", (panel_id,)
        with map_sqlite_errors(self.path, "reading alarms"):
            return [stored_alarm(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def alarm_feed(self, after: AlarmCursor, *, limit: int = ALARM_FEED_LIMIT) -> AlarmFeed:
        """The alarms, declared losses and acknowledgements stored after ``after``, in one snapshot.

        SQLite has one writer at a time and numbers each table's rows inside the write, so
        ids grow in commit order and a reader's cursor never skips a row committed later.
        """
        with map_sqlite_errors(self.path, "reading alarms"), self.snapshot():
            return alarm_feed(lambda sql, args: self._conn.execute(sql, args).fetchall(), "?", after, limit)

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
