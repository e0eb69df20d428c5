"""Flash persistence for a panel buffer: a SQLite file that survives power-cycles.

A real panel writes its flash at sync points, not per event. ``sync()`` writes
what changed since the last one in a single transaction (synchronous=FULL), and
a flash-backed buffer only lets the uploader read records that are synced, so
no seq can reach the host and then vanish in a power-cut. Records appended
after the last sync are lost with the power, and their seqs are handed out
again: nobody outside the panel ever saw them.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

from protocol import RECORD_SIZE

from ._buffer import EventBuffer, OverflowPolicy
from ._errors import StoreCorrupt, StoreError, map_sqlite_errors

__all__ = ["FlashBackedBuffer", "SyncPlan"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SyncPlan:
    head_seq: int
    #: Last seq the head stands for (past head_seq when it is a gap marker).
    head_last: int
    rows: tuple[tuple[int, bytes], ...]
    counters: tuple[tuple[str, int], ...]
    next_seq: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_COUNTERS = ("next_seq", "acked", "dropped", "refused", "refused_unreported", "emitted", "boots")


class FlashBackedBuffer(EventBuffer):
    """An ``EventBuffer`` whose contents survive a power-cycle up to the last ``sync()``."""

    def __init__(
        self, path: Path | str, budget_bytes: int, policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    ) -> None:
        super().__init__(budget_bytes, policy)
        self.path = Path(path)
        # write_sync runs in a worker thread; close (a power-cut) may come from the
        # event loop meanwhile. Closing a sqlite3 connection another thread is using
        # crashes the interpreter, so the two take turns.
        self._io = threading.Lock()
        self._closed = False
        with map_sqlite_errors(self.path, "opening the panel flash"):
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._load()
        self._synced_next = self._next_seq
        self._synced_head = self.oldest_seq

    def _load(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self.boots = int(meta.get("boots", 0)) + 1
        rows = self._db.execute("SELECT seq, record FROM records ORDER BY seq").fetchall()
        if len(rows) > self.capacity:
            raise StoreCorrupt(
                self.path, f"flash holds {len(rows)} records but the budget allows {self.capacity}; keep the budget"
            )
        for index, (seq, record) in enumerate(rows):
            if len(record) != RECORD_SIZE or int.from_bytes(record[:8], "big") != seq:
                raise StoreCorrupt(self.path, f"flash record {seq} is damaged")
            self._ring[index * RECORD_SIZE : (index + 1) * RECORD_SIZE] = record
            if index == 0:
                self._marker = record[16] in (14, 16)
        self._count = len(rows)
        self._next_seq = int(meta.get("next_seq", 1))
        self._acked = int(meta.get("acked", 0))
        self._dropped = int(meta.get("dropped", 0))
        self._refused = int(meta.get("refused", 0))
        self._refused_unreported = int(meta.get("refused_unreported", 0))
        self._emitted = int(meta.get("emitted", 0))
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('boots', ?)", (self.boots,))

    def _readable(self) -> int:
        if not self._count:
            return 0
        head_last = self._head_last()
        synced_last = self._synced_next - 1
        if synced_last <= head_last:
            return 1 if synced_last >= self.oldest_seq else 0
        return min(self._count, 1 + synced_last - head_last)

    @property
    def synced_seq(self) -> int:
        """The newest seq that would survive a power-cut now."""
        return self._synced_next - 1

    def sync_plan(self) -> SyncPlan:
        """Capture what a sync must write: the head record and the records since the last sync.

        Cheap and synchronous, so an event loop can take it between two appends and
        hand the slow part (``write_sync``) to a thread without racing the ring.
        """
        rows: list[tuple[int, bytes]] = []
        head_last = 0
        if self._count:
            head_last = self._head_last()
            rows.append((self.oldest_seq, self._record_at(0)))  # a head marker may have changed
            # Record ``index`` >= 1 holds seq ``head_last + index``.
            for index in range(max(1, self._synced_next - head_last), self._count):
                rows.append((head_last + index, self._record_at(index)))
        counters = (
            ("next_seq", self._next_seq),
            ("acked", self._acked),
            ("dropped", self._dropped),
            ("refused", self._refused),
            ("refused_unreported", self._refused_unreported),
            ("emitted", self._emitted),
        )
        return SyncPlan(
            head_seq=self.oldest_seq, head_last=head_last, rows=tuple(rows), counters=counters, next_seq=self._next_seq
        )

    def write_sync(self, plan: SyncPlan) -> int:
        """Write a plan in one durable transaction; return the records written.

        Raises:
            StoreError: the flash is closed (the power went) or cannot be written.
        """
        with self._io:
            if self._closed:
                raise StoreError(self.path, "the panel flash was closed (power-cycle) before this sync")
            return self._write_sync(plan)

    def _write_sync(self, plan: SyncPlan) -> int:
        with map_sqlite_errors(self.path, "syncing the panel flash"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if plan.head_seq:
                    # Below the head: released. Inside a head marker's range: folded into it.
                    self._db.execute(
                        "DELETE FROM records WHERE seq < ? OR (seq > ? AND seq <= ?)",
                        (plan.head_seq, plan.head_seq, plan.head_last),
                    )
                else:
                    self._db.execute("DELETE FROM records")
                self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)", plan.rows)
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", plan.counters)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        # Only what the plan held is durable; appends made meanwhile wait for the next sync.
        self._synced_next = max(self._synced_next, plan.next_seq)
        return len(plan.rows)

    def sync(self) -> int:
        """Write everything since the last sync in one durable transaction; return records written."""
        return self.write_sync(self.sync_plan())

    def close(self) -> None:
        """Close the flash; waits for a sync another thread is writing (a few ms)."""
        with self._io:
            self._closed = True
            self._db.close()
