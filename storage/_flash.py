"""Flash persistence for a panel buffer: a SQLite file that survives power-cycles.

A real panel writes its flash at sync points, not per event. ``sync()`` writes
what changed since the last one in a single transaction (synchronous=FULL), and
a flash-backed buffer only lets the uploader read records that are synced, so
no seq can reach the host and then vanish in a power-cut. Records appended
after the last sync are lost with the power, and their seqs are handed out
again: nobody outside the panel ever saw them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from protocol import RECORD_SIZE

from ._buffer import EventBuffer, OverflowPolicy
from ._errors import StoreCorrupt, map_sqlite_errors

__all__ = ["FlashBackedBuffer"]

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

    def sync(self) -> int:
        """Write everything since the last sync in one durable transaction; return records written."""
        head_seq = self.oldest_seq
        new: list[tuple[int, bytes]] = []
        if self._count:
            records = self.records()
            head_last = self._head_last()
            for index in range(self._count):
                seq = head_seq if index == 0 else head_last + index
                if index == 0 or seq >= self._synced_next:
                    new.append((seq, records[index * RECORD_SIZE : (index + 1) * RECORD_SIZE]))
        counters = {
            "next_seq": self._next_seq,
            "acked": self._acked,
            "dropped": self._dropped,
            "refused": self._refused,
            "refused_unreported": self._refused_unreported,
            "emitted": self._emitted,
        }
        with map_sqlite_errors(self.path, "syncing the panel flash"), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self._count:
                self._db.execute("DELETE FROM records WHERE seq < ?", (head_seq,))
            else:
                self._db.execute("DELETE FROM records")
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)", new)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", counters.items())
        self._synced_next = self._next_seq
        return len(new)

    def close(self) -> None:
        self._db.close()
