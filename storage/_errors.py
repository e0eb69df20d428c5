"""Storage errors, each naming the file and the cause.

sqlite3 exceptions are mapped where they enter (``map_sqlite_errors``), so the
layers above can tell a full disk from a lock from corruption without parsing
messages, and so every message says which file it is about.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "BufferFull",
    "MirrorError",
    "SchemaTooNew",
    "StaleEpoch",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreNotReplicated",
    "StoreUnreachable",
    "map_sqlite_errors",
]


class StoreError(Exception):
    """A storage operation failed; nothing of it was committed."""

    def __init__(self, path: Path | str, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class StoreFull(StoreError):
    """The disk (or the configured size limit) is full."""


class StoreLocked(StoreError):
    """Another process holds the write lock longer than the busy timeout."""


class StoreCorrupt(StoreError):
    """The file is not a usable SQLite database."""


class StoreUnreachable(StoreError):
    """The database server cannot be reached (refused, timed out, gone mid-call): nothing was acknowledged."""


class StoreNotReplicated(StoreError):
    """A commit was not confirmed by the synchronous standby in time; it must not be acknowledged.

    The transaction may be committed on the primary alone: a resend finds its rows
    there and counts them as duplicates, so nothing is stored twice.
    """


class SchemaTooNew(StoreError):
    """The file was written by a newer fieldsync; this one will not touch it."""


class StaleEpoch(StoreError):
    """A write carried a cluster epoch other than the store's (P5 fencing)."""

    def __init__(self, path: Path | str, epoch: int, store_epoch: int) -> None:
        super().__init__(path, f"write with epoch {epoch} refused: the store's epoch is {store_epoch}")
        self.epoch = epoch
        self.store_epoch = store_epoch


class BufferFull(Exception):
    """The panel buffer is full and its policy is ``block``: wait for acks."""


@contextlib.contextmanager
def map_sqlite_errors(path: Path | str, doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "full" in text:
            raise StoreFull(path, f"{doing}: disk or size limit full ({text})") from exc
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
            raise StoreLocked(path, f"{doing}: database is locked by another writer ({text})") from exc
        raise StoreError(path, f"{doing}: {text}") from exc
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            raise StoreCorrupt(path, f"{doing}: the file is corrupt or not a SQLite database ({text})") from exc
        raise StoreError(path, f"{doing}: {text}") from exc


class MirrorError(RuntimeError):
    """A mirrored pair's database cannot do what was asked; the message names the node and the cause."""
