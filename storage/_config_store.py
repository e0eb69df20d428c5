"""The server's authoritative configuration, versioned, with a change log.

Every operator change is one transaction: the items change, the version goes up
by one, the operations are appended to the log with the new configuration's
digest (docs/protocol.md 8.1; O(items) per change, which an operator's pace affords). ``delta(v)`` answers with
the operations since ``v`` or says a snapshot is needed (the log was compacted
past ``v``, or the panel claims a version the server never had).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from protocol import EMPTY_DIGEST, ConfigOp

from ._config_model import ConfigState, op_from_json, op_to_json, ops_from_text, ops_to_text
from ._errors import StoreError, map_sqlite_errors
from ._schema import migrate, wal_connection

__all__ = ["ConfigChange", "ConfigStore", "NeedSnapshot", "PanelConfig"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChange:
    from_version: int
    to_version: int
    #: The configuration's digest at ``to_version``.
    digest: bytes
    ops: tuple[ConfigOp, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NeedSnapshot:
    reason: str


def _item_key(op_json: dict[str, Any]) -> tuple[str, int]:
    """Which config item an operation touches: (kind, key)."""
    name = str(op_json["op"])
    if name == "PutCardholder":
        return "cardholder", int(op_json["cardholder"]["card"])
    if name == "DeleteCardholder":
        return "cardholder", int(op_json["card"])
    if name == "PutSchedule":
        return "schedule", int(op_json["schedule"]["id"])
    if name == "DeleteSchedule":
        return "schedule", int(op_json["id"])
    if name == "PutAccessLevel":
        return "level", int(op_json["level"]["id"])
    if name == "DeleteAccessLevel":
        return "level", int(op_json["id"])
    if name == "PutDoor":
        return "door", int(op_json["door"]["door"])
    raise ValueError(f"unknown config operation {name!r}")


class ConfigStore:
    """Versioned configuration in the same SQLite file as the event store."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        with map_sqlite_errors(self.path, "opening the config store"):
            self._conn = wal_connection(self.path, busy_timeout)
            self._conn.execute("PRAGMA synchronous = FULL")
            self.db = Database(self._conn)
            migrate(self.db, self.path)

    def close(self) -> None:
        self._conn.close()

    def _meta(self) -> tuple[int, int]:
        row = self._conn.execute("SELECT version, log_from FROM config_meta WHERE id = 1").fetchone()
        return int(row[0]), int(row[1])

    @property
    def version(self) -> int:
        with map_sqlite_errors(self.path, "reading the config version"):
            return self._meta()[0]

    def current(self) -> tuple[int, bytes]:
        """The current version and its digest, read together."""
        with map_sqlite_errors(self.path, "reading the config version"):
            row = self._conn.execute("SELECT version, digest FROM config_meta WHERE id = 1").fetchone()
        return int(row[0]), bytes(row[1])

    def digest_at(self, version: int) -> bytes | None:
        """The digest of the configuration at ``version``; None if the store no longer knows it."""
        if version == 0:
            return EMPTY_DIGEST
        with map_sqlite_errors(self.path, "reading a config digest"):
            current = self._conn.execute("SELECT version, digest FROM config_meta WHERE id = 1").fetchone()
            if int(current[0]) == version:
                return bytes(current[1])
            row = self._conn.execute("SELECT digest FROM config_log WHERE version = ?", (version,)).fetchone()
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def request_resync(self, panel_id: int, *, at_us: int | None = None) -> int:
        """An operator asks that ``panel_id`` get its whole configuration again (a snapshot,
        docs/protocol.md 8.3) at its session, now or when it next connects; the request's time."""
        stamp = at_us if at_us is not None else time.time_ns() // 1000
        with map_sqlite_errors(self.path, "recording a resync request"):
            self._conn.execute(
                "INSERT INTO resync_requests (panel_id, requested_us, done_us) VALUES (?, ?, NULL) "
                "ON CONFLICT (panel_id) DO UPDATE SET requested_us = excluded.requested_us, done_us = NULL",
                (panel_id, stamp),
            )
        return stamp

    def resyncs_pending(self) -> dict[int, int]:
        """Panel -> time of its resync request not yet done."""
        with map_sqlite_errors(self.path, "reading resync requests"):
            rows = self._conn.execute("SELECT panel_id, requested_us FROM resync_requests WHERE done_us IS NULL")
            return {int(pid): int(at) for pid, at in rows}

    def resync_done(self, panel_id: int, requested_us: int, *, at_us: int | None = None) -> None:
        """The snapshot of that request went out (a newer request stays pending)."""
        stamp = at_us if at_us is not None else time.time_ns() // 1000
        with map_sqlite_errors(self.path, "recording a resync"):
            self._conn.execute(
                "UPDATE resync_requests SET done_us = ? WHERE panel_id = ? AND requested_us = ?",
                (stamp, panel_id, requested_us),
            )

    def change(self, ops: Sequence[ConfigOp], *, at_us: int | None = None) -> int:
        """Apply one operator change atomically; return the new version."""
        if not ops:
            raise ValueError("a config change needs at least one operation")
        encoded = [op_to_json(op) for op in ops]
        stamp = at_us if at_us is not None else time.time_ns() // 1000
        with map_sqlite_errors(self.path, "changing the configuration"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version, _ = self._meta()
                for item in encoded:
                    kind, key = _item_key(item)
                    if str(item["op"]).startswith("Delete"):
                        self._conn.execute("DELETE FROM config_items WHERE kind = ? AND key = ?", (kind, _key(key)))
                    else:
                        self._conn.execute(
                            "INSERT OR REPLACE INTO config_items (kind, key, value) VALUES (?, ?, ?)",
                            (kind, _key(key), json.dumps(item, separators=(",", ":"))),
                        )
                rows = self._conn.execute("SELECT value FROM config_items").fetchall()
                digest = ConfigState().apply(op_from_json(json.loads(r[0])) for r in rows).digest()
                self._conn.execute(
                    "INSERT INTO config_log (version, ops, at_us, digest) VALUES (?, ?, ?, ?)",
                    (version + 1, ops_to_text(ops), stamp, digest),
                )
                self._conn.execute("UPDATE config_meta SET version = ?, digest = ? WHERE id = 1", (version + 1, digest))
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return version + 1

    def snapshot(self) -> tuple[int, ConfigState]:
        """The current version and state, read in one transaction."""
        with map_sqlite_errors(self.path, "reading a config snapshot"):
            self._conn.execute("BEGIN")
            try:
                version, _ = self._meta()
                rows = self._conn.execute("SELECT value FROM config_items").fetchall()
            finally:
                self._conn.execute("COMMIT")
        return version, ConfigState().apply(op_from_json(json.loads(r[0])) for r in rows)

    def state(self) -> ConfigState:
        return self.snapshot()[1]

    def delta(self, from_version: int) -> ConfigChange | NeedSnapshot:
        """Operations from ``from_version`` to the current version, or why a snapshot is needed."""
        with map_sqlite_errors(self.path, "reading a config delta"):
            self._conn.execute("BEGIN")
            try:
                version, log_from = self._meta()
                if from_version > version:
                    return NeedSnapshot(reason=f"panel claims version {from_version}; the server is at {version}")
                if from_version + 1 < log_from:
                    return NeedSnapshot(
                        reason=f"the change log starts at version {log_from}; version {from_version} is compacted"
                    )
                rows = self._conn.execute(
                    "SELECT version, ops FROM config_log WHERE version > ? ORDER BY version", (from_version,)
                ).fetchall()
                digest = bytes(self._conn.execute("SELECT digest FROM config_meta WHERE id = 1").fetchone()[0])
            finally:
                self._conn.execute("COMMIT")
        if [r[0] for r in rows] != list(range(from_version + 1, version + 1)):
            raise StoreError(self.path, f"config log has holes between {from_version} and {version}")
        ops: list[ConfigOp] = []
        for _, text in rows:
            ops.extend(ops_from_text(text))
        return ConfigChange(from_version=from_version, to_version=version, digest=digest, ops=tuple(ops))

    def compact(self, keep_from: int) -> int:
        """Drop log entries older than ``keep_from``; panels behind it get a snapshot. Returns rows dropped."""
        with map_sqlite_errors(self.path, "compacting the config log"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version, log_from = self._meta()
                keep_from = min(max(keep_from, log_from), version + 1)
                dropped = self._conn.execute("DELETE FROM config_log WHERE version < ?", (keep_from,)).rowcount
                self._conn.execute("UPDATE config_meta SET log_from = ? WHERE id = 1", (keep_from,))
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return int(dropped)


def _key(key: int) -> int:
    # Card numbers are u64; SQLite integers are signed 64-bit.
    return key - 2**64 if key >= 2**63 else key


class PanelConfig:
    """A panel's copy of the configuration; deltas and snapshots apply atomically.

    ``digest`` is kept with the state (computed once per apply), since every HELLO
    and CONFIG_ACK carries it.
    """

    def __init__(self, version: int = 0, state: ConfigState | None = None) -> None:
        self.version = version
        self.state = state if state is not None else ConfigState()
        self.digest = self.state.digest()

    def __repr__(self) -> str:
        return f"<PanelConfig v{self.version} {len(self.state.cardholders)} cardholders {self.digest.hex()[:12]}>"

    def apply_delta(self, from_version: int, to_version: int, ops: Sequence[ConfigOp]) -> None:
        if from_version != self.version:
            raise ValueError(f"delta from version {from_version} does not apply to version {self.version}")
        if to_version <= from_version:
            raise ValueError(f"delta must move forward ({from_version} -> {to_version})")
        state = self.state.apply(ops)  # raises before anything changes
        self.state, self.version, self.digest = state, to_version, state.digest()

    def apply_snapshot(self, version: int, ops: Sequence[ConfigOp]) -> None:
        state = ConfigState().apply(ops)
        self.state, self.version, self.digest = state, version, state.digest()
