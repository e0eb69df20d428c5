"""The store engines the store tests run on, and how each is made to fail on purpose.

A test asks for the ``engine`` fixture (tests/conftest.py) and gets one of these: the
same assertions run on SQLite and on PostgreSQL, while the way a fault is caused (a
lock held by another connection, a disk that fills up, a schema from a newer
fieldsync) is the engine's own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from storage import EventStore, EventStoreInterface
from storage.postgres import LocalPostgres

__all__ = ["PostgresEngine", "SqliteEngine", "StoreEngine", "ensure_postgres", "wait_for_dead_sessions"]

_databases = itertools.count(1)


class SqliteEngine:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.target: Path | str = directory / "events.db"
        self._fresh = itertools.count(1)

    def fresh_target(self) -> Path | str:
        """An empty store (a new file beside ``target``)."""
        return self.directory / f"fresh-{next(self._fresh)}.db"

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def hold_write_lock(self) -> Iterator[None]:
        holder = sqlite3.connect(self.target, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    @contextlib.contextmanager
    def full(self, store: EventStoreInterface) -> Iterator[None]:
        """Within the block the store can grow by two pages (the size limit SQLite enforces)."""
        assert isinstance(store, EventStore)
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        try:
            yield
        finally:
            store._conn.execute("PRAGMA max_page_count = 1073741823")

    def make_schema_newer(self) -> None:
        with sqlite3.connect(self.target) as conn:
            conn.execute("PRAGMA user_version = 99")


class PostgresEngine:
    """A database of its own on the session's server, dropped at the end of the test."""

    name = "postgres"

    def __init__(self, server: LocalPostgres) -> None:
        self.server = server
        self.dbname = f"t{os.getpid()}_{next(_databases)}"
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {self.dbname}")
        self.target: Path | str = server.url(self.dbname)
        self._mounts: list[Path] = []

    def fresh_target(self) -> Path | str:
        """An empty store: ``target`` emptied (a new database costs ten times as long)."""
        with psycopg.connect(str(self.target), autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self.target

    def close(self) -> None:
        with psycopg.connect(self.server.url(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
            for n, mount in enumerate(self._mounts):
                admin.execute(f"DROP TABLESPACE IF EXISTS {self.dbname}_full{n}")
                subprocess.run(["umount", str(mount)], check=False)
                shutil.rmtree(mount.parent, ignore_errors=True)

    @contextlib.contextmanager
    def hold_write_lock(self) -> Iterator[None]:
        """Another session holds the cluster row, as a node raising the epoch does."""
        with psycopg.connect(str(self.target)) as holder:
            holder.execute("SELECT epoch FROM cluster WHERE id = 1 FOR UPDATE")
            yield
            holder.rollback()

    @contextlib.contextmanager
    def full(self, store: EventStoreInterface) -> Iterator[None]:
        """Within the block ``events`` lives on a 1 MiB tmpfs (a real ENOSPC from the server)."""
        if os.geteuid() != 0:
            pytest.skip("a full disk for PostgreSQL needs a tmpfs mount (root)")
        base = Path(tempfile.mkdtemp(prefix="fieldsync-pg-full-"))
        os.chmod(base, 0o755)
        mount = base / "mnt"
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
        self._mounts.append(mount)
        shutil.chown(mount, "postgres", "postgres")
        space = f"{self.dbname}_full{len(self._mounts) - 1}"
        with psycopg.connect(str(self.target), autocommit=True) as admin:
            admin.execute(f"CREATE TABLESPACE {space} LOCATION '{mount}'")
            admin.execute(f"ALTER TABLE events SET TABLESPACE {space}")
            try:
                yield
            finally:
                subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)

    def make_schema_newer(self) -> None:
        with psycopg.connect(str(self.target), autocommit=True) as conn:
            conn.execute("UPDATE fieldsync_schema SET version = 99")


StoreEngine = SqliteEngine | PostgresEngine


def wait_for_dead_sessions(target: Path | str, timeout: float = 10.0) -> None:
    """After a kill -9 of a client: until the server has ended the dead client's sessions.

    A SQLite writer that dies commits nothing more. A PostgreSQL client that dies right
    after sending COMMIT leaves a server backend that still commits it, a moment later:
    a check that read the store before then would see a hwm move under it.
    """
    if not isinstance(target, str):
        return
    deadline = time.monotonic() + timeout
    with psycopg.connect(target, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ).fetchone()
            if not row or not row[0]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{row[0]} sessions of a killed client still open after {timeout} s")
            time.sleep(0.01)


def ensure_postgres() -> str | None:
    """None if the PostgreSQL server binaries are here (installed with apt-get if missing and root),
    else one line saying what is missing."""
    from storage.postgres import PostgresMissing, find_pg_bindir

    try:
        find_pg_bindir()
        return None
    except PostgresMissing as exc:
        missing = str(exc)
    from .debian import install

    def present() -> bool:
        try:
            find_pg_bindir()
            return True
        except PostgresMissing:
            return False

    problem = install("postgresql", present)
    return None if problem is None else f"PostgreSQL tests skipped: {missing}; {problem}"
