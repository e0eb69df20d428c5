"""The server store's schema, as sqlite-utils migrations.

Each migration also sets ``PRAGMA user_version`` to its number, so a file
written by a newer fieldsync (a higher number, or a migration this version does
not know) is refused instead of being written with the wrong assumptions.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ._errors import SchemaTooNew

__all__ = ["SCHEMA_VERSION", "migrate", "wal_connection"]

migrations = Migrations("fieldsync.store")


def wal_connection(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode, waiting up to ``busy_timeout`` for
    other openers: switching a fresh file to WAL takes its lock, and SQLite answers
    "database is locked" at once, without its busy handler, while another connection holds
    it (several processes opening one new site's file together).

    Raises:
        sqlite3.Error: as ``sqlite3.connect`` and the pragmas raise it (the caller maps it).
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
        if mode != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode!r})")
    except BaseException:
        conn.close()
        raise
    return conn


@migrations(name="m001_events_losses_panels_cluster")
def _m001(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE events (
            panel_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            time_us INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            door INTEGER NOT NULL,
            reader INTEGER NOT NULL,
            flags INTEGER NOT NULL,
            card INTEGER NOT NULL,
            aux INTEGER NOT NULL,
            received_us INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            PRIMARY KEY (panel_id, seq)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX events_time ON events (panel_id, time_us)")
    db["losses"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "panel_id": int,
            "first_seq": int,
            "last_seq": int,
            "count": int,
            "kind": int,
            "time_us": int,
            "received_us": int,
            "epoch": int,
        },
        pk="id",
        not_null={"panel_id", "first_seq", "last_seq", "count", "kind", "time_us", "received_us", "epoch"},
    )
    db.execute("CREATE INDEX losses_panel ON losses (panel_id, first_seq)")
    db["panels"].create(  # type: ignore[union-attr]
        {
            "panel_id": int,
            "hwm": int,
            "boot_id": int,
            "config_version": int,
            "first_seen_us": int,
            "last_seen_us": int,
        },
        pk="panel_id",
        not_null={"hwm"},
        defaults={"hwm": 0, "config_version": 0},
    )
    db.execute("CREATE TABLE cluster (id INTEGER PRIMARY KEY CHECK (id = 1), epoch INTEGER NOT NULL)")
    db.execute("INSERT INTO cluster (id, epoch) VALUES (1, 0)")
    db.execute("PRAGMA user_version = 1")


@migrations(name="m002_config")
def _m002(db: Database) -> None:
    db["config_items"].create(  # type: ignore[union-attr]
        {"kind": str, "key": int, "value": str}, pk=("kind", "key"), not_null={"value"}
    )
    db["config_log"].create(  # type: ignore[union-attr]
        {"version": int, "ops": str, "at_us": int}, pk="version", not_null={"ops", "at_us"}
    )
    db["config_meta"].create(  # type: ignore[union-attr]
        {"id": int, "version": int, "log_from": int}, pk="id", not_null={"version", "log_from"}
    )
    db.execute("INSERT INTO config_meta (id, version, log_from) VALUES (1, 0, 1)")
    db.execute("PRAGMA user_version = 2")


def migrate(db: Database, path: Path | str) -> None:
    """Bring the file to this version's schema, or refuse a newer one.

    Several processes open one fresh file at once (both nodes of a pair, a console beside
    them): the migrations run under the file's write lock (``BEGIN IMMEDIATE``), looked at
    again once it is held, so one process applies them and the others find them applied.
    A file already at this version takes no lock (a read-only opener never writes)."""
    _check_version(db, path)
    if not migrations.pending(db):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        _check_version(db, path)
        migrations.apply(db)  # each migration a savepoint inside this transaction
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _check_version(db: Database, path: Path | str) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    applied: list[Any] = migrations.applied(db)
    unknown = {m.name for m in applied} - _KNOWN
    if version > SCHEMA_VERSION or unknown:
        raise SchemaTooNew(
            path,
            f"schema version {version} (migrations {sorted(unknown) or 'known'}) is newer than this "
            f"fieldsync's {SCHEMA_VERSION}; upgrade fieldsync instead of opening it with this one",
        )


@migrations(name="m003_panel_status")
def _m003(db: Database) -> None:
    # What the node serving a panel knows right now, for `fieldsync status`.
    db["panel_status"].create(  # type: ignore[union-attr]
        {
            "panel_id": int,
            "connected": int,
            "node_id": str,
            "epoch": int,
            "acked_seq": int,
            "newest_seq": int,
            "config_version": int,
            "updated_us": int,
        },
        pk="panel_id",
    )
    db.execute("PRAGMA user_version = 3")


@migrations(name="m004_cluster_lease")
def _m004(db: Database) -> None:
    # The lease lives in the same row as the epoch: one transaction moves both.
    for column, kind in (
        ("holder", "TEXT"),
        ("holder_pid", "INTEGER"),
        ("holder_address", "TEXT"),
        ("lease_until_us", "INTEGER NOT NULL DEFAULT 0"),
        ("switchover_to", "TEXT"),
    ):
        db.execute(f"ALTER TABLE cluster ADD COLUMN {column} {kind}")
    db["cluster_nodes"].create(  # type: ignore[union-attr]
        {"node_id": str, "pid": int, "address": str, "role": str, "epoch": int, "heartbeat_us": int},
        pk="node_id",
    )
    db.execute("PRAGMA user_version = 4")


@migrations(name="m005_config_digest")
def _m005(db: Database) -> None:
    # Protocol version 2 compares configurations by content: each version's digest.
    from ._config_model import ConfigState, op_from_json, ops_from_text

    db.execute("ALTER TABLE config_log ADD COLUMN digest BLOB")
    db.execute("ALTER TABLE config_meta ADD COLUMN digest BLOB")
    items = [op_from_json(json.loads(row[0])) for row in db.execute("SELECT value FROM config_items").fetchall()]
    db.execute("UPDATE config_meta SET digest = ? WHERE id = 1", (ConfigState().apply(items).digest(),))
    log_from = int(db.execute("SELECT log_from FROM config_meta WHERE id = 1").fetchone()[0])
    if log_from == 1:  # the whole history is there: replay it for every version's digest
        state = ConfigState()
        for version, text in db.execute("SELECT version, ops FROM config_log ORDER BY version").fetchall():
            state = state.apply(ops_from_text(text))
            db.execute("UPDATE config_log SET digest = ? WHERE version = ?", (state.digest(), version))
    db.execute("PRAGMA user_version = 5")


@migrations(name="m006_batch_log")
def _m006(db: Database) -> None:
    # The log-structured ingest (``EventStore.append``): one row per acknowledged batch,
    # materialized into ``events`` behind the ACK and deleted in the same transaction.
    db.execute(
        """
        CREATE TABLE batch_log (
            id INTEGER PRIMARY KEY,
            panel_id INTEGER NOT NULL,
            received_us INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            events INTEGER NOT NULL,
            records BLOB NOT NULL
        )
        """
    )
    db.execute("PRAGMA user_version = 6")


@migrations(name="m007_alarms")
def _m007(db: Database) -> None:
    # The alarm lane (docs/protocol.md 7.6): every alarm once per (panel, seq), from an ALARM
    # or from a batch; ``id`` is the order they were stored in, ``lane`` whether the lane
    # brought it (1) or its batch (0). A declared gap (``gap``) is keyed apart from the alarm
    # whose seq it took; a lane copy whose seq a panel that lost its counter numbered again
    # is ``orphan`` (kept, out of the key).
    db.execute(
        """
        CREATE TABLE alarms (
            id INTEGER PRIMARY KEY,
            panel_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            time_us INTEGER NOT NULL,
            kind INTEGER NOT NULL,
            door INTEGER NOT NULL,
            reader INTEGER NOT NULL,
            flags INTEGER NOT NULL,
            card INTEGER NOT NULL,
            aux INTEGER NOT NULL,
            received_us INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            lane INTEGER NOT NULL,
            gap INTEGER NOT NULL,
            orphan INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX alarms_key ON alarms (panel_id, seq, gap) WHERE orphan = 0")
    db.execute("PRAGMA user_version = 7")


@migrations(name="m008_resync_requests")
def _m008(db: Database) -> None:
    # An operator's request that a panel be sent its whole configuration again (a snapshot):
    # the newest per panel; ``done_us`` set once a node has sent it.
    db.execute(
        "CREATE TABLE resync_requests (panel_id INTEGER PRIMARY KEY, requested_us INTEGER NOT NULL, done_us INTEGER)"
    )
    db.execute("PRAGMA user_version = 8")


@migrations(name="m009_alarm_acks")
def _m009(db: Database) -> None:
    # An operator's acknowledgement of an alarm (the console's), by the alarm's row: ``id``
    # the order they were made in. The console of earlier versions kept them in a table of
    # its own, by (panel, seq), outside the migrations: they are carried over.
    db.execute(
        "CREATE TABLE alarm_acks (id INTEGER PRIMARY KEY, alarm_id INTEGER NOT NULL UNIQUE, "
        "acked_us INTEGER NOT NULL, acked_by TEXT NOT NULL)"
    )
    if db["console_acks"].exists():
        db.execute(
            "INSERT OR IGNORE INTO alarm_acks (alarm_id, acked_us, acked_by) "
            # The alarm of that panel, seq and kind stored before the acknowledgement: a gap
            # marker the operator saw at an alarm's seq, not the alarm; never a later one.
            "SELECT a.id, c.acked_us, c.acked_by FROM console_acks c JOIN alarms a "
            "ON a.panel_id = c.panel_id AND a.seq = c.seq AND a.kind = c.kind AND a.received_us <= c.acked_us "
            "ORDER BY c.rowid, a.id"
        )
        db.execute("DROP TABLE console_acks")
    db.execute("PRAGMA user_version = 9")


SCHEMA_VERSION = 9
_KNOWN = {
    "m001_events_losses_panels_cluster",
    "m002_config",
    "m003_panel_status",
    "m004_cluster_lease",
    "m005_config_digest",
    "m006_batch_log",
    "m007_alarms",
    "m008_resync_requests",
    "m009_alarm_acks",
}
