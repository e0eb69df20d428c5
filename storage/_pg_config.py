"""The versioned configuration on PostgreSQL: ``ConfigStore``'s semantics over psycopg 3.

A change takes ``config_meta``'s row ``FOR UPDATE`` first, so two operators'
changes get consecutive versions; reads that need one instant (``snapshot``,
``delta``) run in one REPEATABLE READ transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from protocol import EMPTY_DIGEST, ConfigOp

from ._config_model import ConfigState, op_from_json, op_to_json, ops_from_text, ops_to_text
from ._config_store import ConfigChange, NeedSnapshot, _item_key, _key
from ._errors import StoreError
from ._pg_conn import PgConnection, map_pg_errors
from ._pg_schema import migrate_pg

__all__ = ["PgConfigStore"]


class PgConfigStore:
    """Versioned configuration in the same PostgreSQL database as the event store."""

    def __init__(self, url: str, *, busy_timeout: float = 5.0, commit_timeout: float = 10.0) -> None:
        self._pg = PgConnection(url, what="the config store", busy_timeout=busy_timeout, commit_timeout=commit_timeout)
        self.where = self._pg.where
        try:
            migrate_pg(self._pg)
        except BaseException:
            self._pg.close()
            raise

    def __repr__(self) -> str:
        return f"<PgConfigStore {self.where}>"

    def close(self) -> None:
        self._pg.close()

    def _meta(self, conn: psycopg.Connection[Any], *, lock: bool = False) -> tuple[int, int, bytes]:
        row = conn.execute(
            "SELECT version, log_from, digest FROM config_meta WHERE id = 1" + (" FOR UPDATE" if lock else "")
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), bytes(row[2])

    @property
    def version(self) -> int:
        with map_pg_errors(self.where, "reading the config version"):
            return self._meta(self._pg.get())[0]

    def current(self) -> tuple[int, bytes]:
        """The current version and its digest, read together."""
        with map_pg_errors(self.where, "reading the config version"):
            version, _, digest = self._meta(self._pg.get())
        return version, digest

    def digest_at(self, version: int) -> bytes | None:
        """The digest of the configuration at ``version``; None if the store no longer knows it."""
        if version == 0:
            return EMPTY_DIGEST
        with map_pg_errors(self.where, "reading a config digest"):
            conn = self._pg.get()
            current, _, digest = self._meta(conn)
            if current == version:
                return digest
            row = conn.execute("SELECT digest FROM config_log WHERE version = %s", (version,)).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def request_resync(self, panel_id: int, *, at_us: int | None = None) -> int:
        """As ``ConfigStore.request_resync``."""
        stamp = at_us if at_us is not None else time.time_ns() // 1000
        with self._pg.transaction("recording a resync request") as conn:
            conn.execute(
                "INSERT INTO resync_requests (panel_id, requested_us, done_us) VALUES (%s, %s, NULL) "
                "ON CONFLICT (panel_id) DO UPDATE SET requested_us = excluded.requested_us, done_us = NULL",
                (panel_id, stamp),
            )
        return stamp

    def resyncs_pending(self) -> dict[int, int]:
        """As ``ConfigStore.resyncs_pending``."""
        with map_pg_errors(self.where, "reading resync requests"):
            rows = self._pg.get().execute("SELECT panel_id, requested_us FROM resync_requests WHERE done_us IS NULL")
            return {int(pid): int(at) for pid, at in rows}

    def resync_done(self, panel_id: int, requested_us: int, *, at_us: int | None = None) -> None:
        """As ``ConfigStore.resync_done``."""
        stamp = at_us if at_us is not None else time.time_ns() // 1000
        with self._pg.transaction("recording a resync") as conn:
            conn.execute(
                "UPDATE resync_requests SET done_us = %s WHERE panel_id = %s AND requested_us = %s",
                (stamp, panel_id, requested_us),
            )

    def change(self, ops: Sequence[ConfigOp], *, at_us: int | None = None) -> int:
        """Apply one operator change atomically; return the new version."""
        if not ops:
            raise ValueError("a config change needs at least one operation")
        encoded = [op_to_json(op) for op in ops]
        stamp = at_us if at_us is not None else time.time_ns() // 1000
        with self._pg.transaction("changing the configuration") as conn:
            version, _, _ = self._meta(conn, lock=True)
            for item in encoded:
                kind, key = _item_key(item)
                if str(item["op"]).startswith("Delete"):
                    conn.execute("DELETE FROM config_items WHERE kind = %s AND key = %s", (kind, _key(key)))
                else:
                    conn.execute(
                        "INSERT INTO config_items (kind, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                        (kind, _key(key), json.dumps(item, separators=(",", ":"))),
                    )
            rows = conn.execute("SELECT value FROM config_items").fetchall()
            digest = ConfigState().apply(op_from_json(json.loads(r[0])) for r in rows).digest()
            conn.execute(
                "INSERT INTO config_log (version, ops, at_us, digest) VALUES (%s, %s, %s, %s)",
                (version + 1, ops_to_text(ops), stamp, digest),
            )
            conn.execute("UPDATE config_meta SET version = %s, digest = %s WHERE id = 1", (version + 1, digest))
        return version + 1

    def _reading(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def snapshot(self) -> tuple[int, ConfigState]:
        """The current version and state, read in one transaction."""
        conn = self._pg.get()
        with map_pg_errors(self.where, "reading a config snapshot"):
            self._reading(conn)
            try:
                version, _, _ = self._meta(conn)
                rows = conn.execute("SELECT value FROM config_items").fetchall()
            finally:
                self._pg.rollback()
        return version, ConfigState().apply(op_from_json(json.loads(r[0])) for r in rows)

    def state(self) -> ConfigState:
        return self.snapshot()[1]

    def delta(self, from_version: int) -> ConfigChange | NeedSnapshot:
        """Operations from ``from_version`` to the current version, or why a snapshot is needed."""
        conn = self._pg.get()
        with map_pg_errors(self.where, "reading a config delta"):
            self._reading(conn)
            try:
                version, log_from, digest = self._meta(conn)
                if from_version > version:
                    return NeedSnapshot(reason=f"panel claims version {from_version}; the server is at {version}")
                if from_version + 1 < log_from:
                    return NeedSnapshot(
                        reason=f"the change log starts at version {log_from}; version {from_version} is compacted"
                    )
                rows = conn.execute(
                    "SELECT version, ops FROM config_log WHERE version > %s ORDER BY version", (from_version,)
                ).fetchall()
            finally:
                self._pg.rollback()
        if [r[0] for r in rows] != list(range(from_version + 1, version + 1)):
            raise StoreError(self.where, f"config log has holes between {from_version} and {version}")
        ops: list[ConfigOp] = []
        for _, text in rows:
            ops.extend(ops_from_text(text))
        return ConfigChange(from_version=from_version, to_version=version, digest=digest, ops=tuple(ops))

    def compact(self, keep_from: int) -> int:
        """Drop log entries older than ``keep_from``; panels behind it get a snapshot. Returns rows dropped."""
        with self._pg.transaction("compacting the config log") as conn:
            version, log_from, _ = self._meta(conn, lock=True)
            keep_from = min(max(keep_from, log_from), version + 1)
            dropped = conn.execute("DELETE FROM config_log WHERE version < %s", (keep_from,)).rowcount
            conn.execute("UPDATE config_meta SET log_from = %s WHERE id = 1", (keep_from,))
        return int(dropped)
