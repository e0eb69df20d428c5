"""Unacknowledged alarms: the store's ``alarms`` (docs/protocol.md 7.6: every alarm once per
panel and seq, the alarm lane's copies as they arrive, ahead of their panels' backlogs, and
the alarms of every batch), less the operator's acknowledgements, which the console keeps in
a table of its own in the store.

The acknowledgements live in the site's store (``console_acks``, made with CREATE TABLE IF
NOT EXISTS, outside the store's migrations): they stay with the alarms they acknowledge, in
the same backup, and one SQL join tells which alarms are still open. SQLite stores only; a
PostgreSQL store shows no alarms yet (docs/console.md).

The scan is incremental so that a busy store costs little: the alarms above the highest id
the last scan saw, and the losses above the last id (for each panel's tally of what it
declared lost). Reads and writes go through one connection, from one thread at a time (the
caller's CapacityLimiter).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import protocol
from protocol import EventKind
from storage import StoreError

__all__ = ["ALARM_KINDS", "LOSS_KINDS", "Alarm", "AlarmBook"]

#: Records that need an operator's eye: the protocol's alarm kinds (7.6); the declared gaps
#: among them count events (``Alarm.count``).
ALARM_KINDS = protocol.ALARM_KINDS
LOSS_KINDS = protocol.GAP_KINDS
#: The kinds whose ``aux`` counts events: the gaps, and what a full buffer refused.
_COUNTED = frozenset(int(k) for k in (*LOSS_KINDS, EventKind.EVENTS_REFUSED))
#: The most open alarms kept in memory; older ones are counted, not listed.
MAX_OPEN = 10_000

_ACKS_TABLE = """
CREATE TABLE IF NOT EXISTS console_acks (
    panel_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    acked_us INTEGER NOT NULL,
    acked_by TEXT NOT NULL,
    PRIMARY KEY (panel_id, seq)
)
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Alarm:
    """One alarm: an event (``seq`` its seq) or a declared loss (``seq`` its first seq, ``count`` events)."""

    panel_id: int
    seq: int
    kind: EventKind
    time_us: int
    received_us: int
    door: int = 0
    count: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.panel_id, self.seq

    def to_json(self) -> dict[str, Any]:
        return {
            "panel_id": self.panel_id,
            "seq": self.seq,
            "kind": self.kind.name,
            "time_us": self.time_us,
            "received_us": self.received_us,
            "door": self.door,
            "count": self.count,
        }


@dataclasses.dataclass(slots=True)
class PanelTally:
    """What a panel declared it lost or refused, summed over every record seen."""

    dropped: int = 0
    lost: int = 0
    refused: int = 0


class AlarmBook:
    """The open alarms of one SQLite store, and the operator's acknowledgements.

    Raises (from every method):
        StoreError: the store cannot be read or written (the message names the file).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise StoreError(path, "the site's store does not exist (no node has run on this site, or db is wrong)")
        try:
            # mode=rw: never create a store that is not there.
            self._conn = sqlite3.connect(
                f"file:{path}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA busy_timeout = 2000")
            self._conn.execute(_ACKS_TABLE)
        except sqlite3.Error as exc:
            raise StoreError(path, f"opening the console's alarms: {exc}") from exc
        self._alarm_id = 0
        self._loss_id = 0
        self._ack_rowid = 0
        self._acked: set[tuple[int, int]] = set()
        self.open: dict[tuple[int, int], Alarm] = {}
        self.trimmed = 0
        self.tally: dict[int, PanelTally] = {}

    def __repr__(self) -> str:
        return f"<AlarmBook {self.path}: {len(self.open)} open>"

    def close(self) -> None:
        self._conn.close()

    def scan(self) -> None:
        """Take in what was stored since the last scan (one read transaction: one snapshot)."""
        try:
            self._conn.execute("BEGIN")
            try:
                self._scan_acks()
                self._scan_alarms()
                self._scan_losses()
            finally:
                self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"reading alarms: {exc}") from exc
        if len(self.open) > MAX_OPEN:
            oldest = sorted(self.open.values(), key=lambda a: a.received_us)[: len(self.open) - MAX_OPEN]
            for alarm in oldest:
                del self.open[alarm.key]
            self.trimmed += len(oldest)

    def _scan_acks(self) -> None:
        rows = self._conn.execute(
            "SELECT rowid, panel_id, seq FROM console_acks WHERE rowid > ? ORDER BY rowid", (self._ack_rowid,)
        ).fetchall()
        for rowid, panel_id, seq in rows:
            self._acked.add((panel_id, seq))
            self.open.pop((panel_id, seq), None)
            self._ack_rowid = rowid

    def _scan_alarms(self) -> None:
        rows = self._conn.execute(
            "SELECT id, panel_id, seq, kind, time_us, received_us, door, aux FROM alarms WHERE id > ? ORDER BY id",
            (self._alarm_id,),
        ).fetchall()
        for alarm_id, panel_id, seq, kind, time_us, received_us, door, aux in rows:
            self._alarm_id = alarm_id
            alarm = Alarm(
                panel_id=panel_id,
                seq=seq,
                kind=EventKind(kind),
                time_us=time_us,
                received_us=received_us,
                door=door,
                count=aux if kind in _COUNTED else 0,
            )
            if alarm.kind is EventKind.EVENTS_REFUSED:
                self.tally.setdefault(panel_id, PanelTally()).refused += aux
            self._take(alarm)

    def _scan_losses(self) -> None:
        rows = self._conn.execute(
            "SELECT id, panel_id, count, kind FROM losses WHERE id > ? ORDER BY id", (self._loss_id,)
        ).fetchall()
        for loss_id, panel_id, count, kind in rows:
            self._loss_id = loss_id
            tally = self.tally.setdefault(panel_id, PanelTally())
            if kind == EventKind.BUFFER_OVERFLOW:
                tally.dropped += count
            else:
                tally.lost += count

    def _take(self, alarm: Alarm) -> None:
        if alarm.key not in self._acked:
            self.open[alarm.key] = alarm

    def acknowledge(self, keys: Iterable[tuple[int, int]], *, by: str, now_us: int) -> int:
        """Record the operator's acknowledgement of these open alarms; how many were open."""
        alarms = [self.open[k] for k in dict.fromkeys(keys) if k in self.open]
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR IGNORE INTO console_acks VALUES (?, ?, ?, ?, ?)",
                    [(a.panel_id, a.seq, int(a.kind), now_us, by) for a in alarms],
                )
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"recording an acknowledgement: {exc}") from exc
        for alarm in alarms:
            self._acked.add(alarm.key)
            del self.open[alarm.key]
        return len(alarms)

    def newest(self, limit: int) -> list[Alarm]:
        return sorted(self.open.values(), key=lambda a: (a.received_us, a.panel_id, a.seq), reverse=True)[:limit]
