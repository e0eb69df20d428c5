"""The server store's schema on PostgreSQL: the SQLite schema's tables, typed for PostgreSQL.

The version is a row of ``fieldsync_schema``; a database written by a newer fieldsync
is refused, as SQLite's ``user_version`` is. Migrations run in one transaction under
an advisory lock, so two nodes opening a new database at once do not both create it.

Column types: u64 fields (times, cards) are stored as the signed BIGINT with the same
bits, as on SQLite; the four one-byte fields are SMALLINT and sit together between
BIGINTs, so a row has no alignment padding. ``events`` keeps SQLite's column order:
the ingest path writes it by binary COPY in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from protocol import EMPTY_DIGEST

from ._errors import SchemaTooNew
from ._pg_conn import PgConnection, map_pg_errors

__all__ = ["PG_SCHEMA_VERSION", "migrate_pg"]

_LOCK_KEY = 0x6669656C6473796E  # "fieldsyn": the advisory lock every migration takes

_M001 = """
CREATE TABLE events (
    panel_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    time_us BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    door SMALLINT NOT NULL,
    reader SMALLINT NOT NULL,
    flags SMALLINT NOT NULL,
    card BIGINT NOT NULL,
    aux BIGINT NOT NULL,
    received_us BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    PRIMARY KEY (panel_id, seq)
);
CREATE INDEX events_time ON events (panel_id, time_us);
CREATE TABLE losses (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    panel_id BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    count BIGINT NOT NULL,
    kind SMALLINT NOT NULL,
    time_us BIGINT NOT NULL,
    received_us BIGINT NOT NULL,
    epoch BIGINT NOT NULL
);
CREATE INDEX losses_panel ON losses (panel_id, first_seq);
CREATE TABLE panels (
    panel_id BIGINT PRIMARY KEY,
    hwm BIGINT NOT NULL DEFAULT 0,
    boot_id BIGINT,
    config_version BIGINT DEFAULT 0,
    first_seen_us BIGINT,
    last_seen_us BIGINT
);
CREATE TABLE panel_status (
    panel_id BIGINT PRIMARY KEY,
    connected INTEGER,
    node_id TEXT,
    epoch BIGINT,
    acked_seq BIGINT,
    newest_seq BIGINT,
    config_version BIGINT,
    updated_us BIGINT
);
CREATE TABLE cluster (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT,
    holder_pid BIGINT,
    holder_address TEXT,
    lease_until_us BIGINT NOT NULL DEFAULT 0,
    switchover_to TEXT
);
INSERT INTO cluster (id, epoch) VALUES (1, 0);
CREATE TABLE cluster_nodes (
    node_id TEXT PRIMARY KEY,
    pid BIGINT,
    address TEXT,
    role TEXT,
    epoch BIGINT,
    heartbeat_us BIGINT
);
CREATE TABLE config_items (kind TEXT NOT NULL, key BIGINT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE config_log (version BIGINT PRIMARY KEY, ops TEXT NOT NULL, at_us BIGINT NOT NULL, digest BYTEA);
CREATE TABLE config_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL,
    log_from BIGINT NOT NULL,
    digest BYTEA NOT NULL
);
"""


def _m001(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_M001)
    conn.execute("INSERT INTO config_meta (id, version, log_from, digest) VALUES (1, 0, 1, %s)", (EMPTY_DIGEST,))


def _m002(conn: psycopg.Connection[Any]) -> None:
    # The log-structured ingest (``PgEventStore.append``): one row per acknowledged batch,
    # its packed records as they came, materialized into ``events`` behind the ACK and
    # deleted in the same transaction. EXTERNAL: a batch's records (32 KiB and more) are
    # stored out of line uncompressed, as they are written once and read once.
    conn.execute(
        """
        CREATE TABLE batch_log (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            panel_id BIGINT NOT NULL,
            received_us BIGINT NOT NULL,
            epoch BIGINT NOT NULL,
            events INTEGER NOT NULL,
            records BYTEA NOT NULL
        );
        ALTER TABLE batch_log ALTER COLUMN records SET STORAGE EXTERNAL;
        """
    )


def _m003(conn: psycopg.Connection[Any]) -> None:
    # The alarm lane (docs/protocol.md 7.6), as storage/_schema.py's m007.
    conn.execute(
        """
        CREATE TABLE alarms (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            panel_id BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            time_us BIGINT NOT NULL,
            kind SMALLINT NOT NULL,
            door SMALLINT NOT NULL,
            reader SMALLINT NOT NULL,
            flags SMALLINT NOT NULL,
            card BIGINT NOT NULL,
            aux BIGINT NOT NULL,
            received_us BIGINT NOT NULL,
            epoch BIGINT NOT NULL,
            lane SMALLINT NOT NULL,
            gap SMALLINT NOT NULL,
            orphan SMALLINT NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX alarms_key ON alarms (panel_id, seq, gap) WHERE orphan = 0;
        """
    )


def _m004(conn: psycopg.Connection[Any]) -> None:
    # An operator's resync requests, as storage/_schema.py's m008.
    conn.execute(
        "CREATE TABLE resync_requests (panel_id BIGINT PRIMARY KEY, requested_us BIGINT NOT NULL, done_us BIGINT)"
    )


def _m005(conn: psycopg.Connection[Any]) -> None:
    # An operator's acknowledgements of alarms, as storage/_schema.py's m009.
    conn.execute(
        "CREATE TABLE alarm_acks (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "alarm_id BIGINT NOT NULL UNIQUE, acked_us BIGINT NOT NULL, acked_by TEXT NOT NULL)"
    )


_MIGRATIONS: tuple[Callable[[psycopg.Connection[Any]], None], ...] = (_m001, _m002, _m003, _m004, _m005)
PG_SCHEMA_VERSION = len(_MIGRATIONS)


def migrate_pg(pg: PgConnection) -> None:
    """Bring the database to this version's schema, or refuse a newer one.

    A hot standby (a mirrored pair's replica) is read-only: its schema is the primary's,
    replicated; it is only checked, and must be there.
    """
    conn = pg.get()
    with map_pg_errors(pg.where, "reading the schema"):
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        in_recovery = bool(row and row[0])
        if in_recovery:
            exists = conn.execute("SELECT to_regclass('fieldsync_schema') IS NOT NULL").fetchone()
            found = (
                conn.execute("SELECT version FROM fieldsync_schema WHERE id = 1").fetchone()
                if exists and exists[0]
                else None
            )
        pg.rollback()
    if in_recovery:
        if found is None:
            raise SchemaTooNew(pg.where, "a standby without fieldsync's schema: open the primary with fieldsync first")
        if int(found[0]) > PG_SCHEMA_VERSION:
            raise SchemaTooNew(
                pg.where,
                f"schema version {found[0]} is newer than this fieldsync's {PG_SCHEMA_VERSION}; "
                "upgrade fieldsync instead of opening it with this one",
            )
        return
    with map_pg_errors(pg.where, "migrating the schema"):
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS fieldsync_schema "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
            )
            row = conn.execute("SELECT version FROM fieldsync_schema WHERE id = 1").fetchone()
            version = int(row[0]) if row is not None else 0
            if version > PG_SCHEMA_VERSION:
                raise SchemaTooNew(
                    pg.where,
                    f"schema version {version} is newer than this fieldsync's {PG_SCHEMA_VERSION}; "
                    "upgrade fieldsync instead of opening it with this one",
                )
            for number in range(version + 1, PG_SCHEMA_VERSION + 1):
                _MIGRATIONS[number - 1](conn)
            if version < PG_SCHEMA_VERSION:
                conn.execute(
                    "INSERT INTO fieldsync_schema (id, version) VALUES (1, %s) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                    (PG_SCHEMA_VERSION,),
                )
        except BaseException:
            pg.rollback()
            raise
    pg.commit("migrating the schema")
