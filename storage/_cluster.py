"""The cluster's lease and membership, kept in the shared store (``shared`` mode).

The lease and the epoch are one row, so taking the lease and raising the epoch
(the fencing token) happen in one transaction: there is never a moment where a
node holds the lease under an epoch another node also holds. Heartbeat rows
use their own connection with ``synchronous=NORMAL``: a lost heartbeat on power
loss costs nothing, an fsync ten times a second per node would.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from ._errors import StoreLocked, map_sqlite_errors
from ._gate import write_gate
from ._schema import migrate, wal_connection

__all__ = ["ClusterStore", "Lease", "NodeBeat"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    epoch: int
    holder: str | None
    holder_pid: int | None
    holder_address: str | None
    lease_until_us: int
    switchover_to: str | None

    def held_at(self, now_us: int) -> bool:
        return self.holder is not None and now_us < self.lease_until_us


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeBeat:
    node_id: str
    pid: int
    address: str
    role: str
    epoch: int
    heartbeat_us: int


class ClusterStore:
    """Lease, epoch and node heartbeats in the shared SQLite file."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 0.5) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        #: Writes here are few and short and keep the node alive: they go before this
        #: process's bulk writers (see ``_gate``).
        self._gate = write_gate(self.path)
        with map_sqlite_errors(self.path, "opening the cluster state"):
            from sqlite_utils import Database

            self._conn = wal_connection(self.path, busy_timeout)
            migrate(Database(self._conn), self.path)
            self._conn.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self._conn.close()

    def _read(self) -> Lease:
        row = self._conn.execute(
            "SELECT epoch, holder, holder_pid, holder_address, lease_until_us, switchover_to FROM cluster WHERE id = 1"
        ).fetchone()
        return Lease(
            epoch=row[0],
            holder=row[1],
            holder_pid=row[2],
            holder_address=row[3],
            lease_until_us=row[4],
            switchover_to=row[5],
        )

    @contextlib.contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        with map_sqlite_errors(self.path, doing), self._gate.urgent(self._busy_timeout) as turn:
            if not turn:
                raise StoreLocked(
                    self.path, f"{doing}: another writer of this process held the store for {self._busy_timeout:g} s"
                )
            yield

    def lease(self) -> Lease:
        with map_sqlite_errors(self.path, "reading the lease"):
            return self._read()

    def acquire(
        self, node_id: str, *, pid: int, address: str, now_us: int, lease_us: int, force: bool = False
    ) -> int | None:
        """Take the lease if it is free, expired, ours, or ``force`` (the holder was fenced by STONITH).

        Taking it from anyone (or after losing it) raises the epoch in the same
        transaction; returns the epoch to serve with, or None if it is held.
        """
        with self._writing("acquiring the lease"):
            self._conn.execute("PRAGMA synchronous = FULL")  # an epoch change must survive power loss
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                lease = self._read()
                if lease.holder not in (None, node_id) and lease.held_at(now_us) and not force:
                    self._conn.execute("ROLLBACK")
                    return None
                if lease.switchover_to not in (None, node_id) and not force:
                    self._conn.execute("ROLLBACK")
                    return None
                epoch = lease.epoch + 1
                self._conn.execute(
                    "UPDATE cluster SET epoch = ?, holder = ?, holder_pid = ?, holder_address = ?, "
                    "lease_until_us = ?, switchover_to = NULL WHERE id = 1",
                    (epoch, node_id, pid, address, now_us + lease_us),
                )
                # The new holder's heartbeat starts with its lease: a standby must not
                # read "no heartbeat yet" as "dead".
                self._conn.execute(
                    "INSERT OR REPLACE INTO cluster_nodes VALUES (?, ?, ?, 'active', ?, ?)",
                    (node_id, pid, address, epoch, now_us),
                )
                self._conn.execute("COMMIT")
                return epoch
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._conn.execute("PRAGMA synchronous = NORMAL")

    def renew(self, node_id: str, epoch: int, *, now_us: int, lease_us: int) -> Lease | None:
        """Extend our lease; None if it is no longer ours (another epoch took it)."""
        with self._writing("renewing the lease"):
            cur = self._conn.execute(
                "UPDATE cluster SET lease_until_us = ? WHERE id = 1 AND holder = ? AND epoch = ?",
                (now_us + lease_us, node_id, epoch),
            )
            if cur.rowcount != 1:
                return None
            return self._read()

    def release(self, node_id: str, epoch: int, *, hand_to: str | None = None) -> bool:
        """Give the lease up now (switchover, orderly stop); ``hand_to`` reserves it for that node."""
        with self._writing("releasing the lease"):
            cur = self._conn.execute(
                "UPDATE cluster SET lease_until_us = 0, holder = NULL, holder_pid = NULL, switchover_to = ? "
                "WHERE id = 1 AND holder = ? AND epoch = ?",
                (hand_to, node_id, epoch),
            )
            return cur.rowcount == 1

    def request_switchover(self, to_node: str) -> Lease:
        """Ask the active node to hand the lease (and the VIP) to ``to_node``."""
        with self._writing("requesting a switchover"):
            self._conn.execute("UPDATE cluster SET switchover_to = ? WHERE id = 1", (to_node,))
            return self._read()

    def beat(self, beat: NodeBeat) -> None:
        with self._writing("writing a node heartbeat"):
            self._conn.execute(
                "INSERT OR REPLACE INTO cluster_nodes VALUES (?, ?, ?, ?, ?, ?)",
                (beat.node_id, beat.pid, beat.address, beat.role, beat.epoch, beat.heartbeat_us),
            )

    def nodes(self) -> dict[str, NodeBeat]:
        with map_sqlite_errors(self.path, "reading node heartbeats"):
            rows = self._conn.execute("SELECT * FROM cluster_nodes").fetchall()
        return {
            r[0]: NodeBeat(node_id=r[0], pid=r[1], address=r[2], role=r[3], epoch=r[4], heartbeat_us=r[5]) for r in rows
        }
