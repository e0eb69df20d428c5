"""The cluster's lease, epoch and heartbeats on PostgreSQL: ``ClusterStore``'s semantics.

Taking the lease locks the cluster row ``FOR UPDATE``: that waits for every ingest in
flight (they hold it ``FOR KEY SHARE``) and makes every later one see the new epoch.
A renewal is a plain conditional UPDATE, which does not conflict with an ingest's
share lock: it never waits behind a group commit. Heartbeat rows commit with
``synchronous_commit = off`` (as SQLite's write them with ``synchronous=NORMAL``): a
lost heartbeat costs nothing, and it must not wait for a standby.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import psycopg

from ._cluster import Lease, NodeBeat
from ._pg_conn import PgConnection, map_pg_errors
from ._pg_schema import migrate_pg

__all__ = ["PgClusterStore"]

_LEASE = "SELECT epoch, holder, holder_pid, holder_address, lease_until_us, switchover_to FROM cluster WHERE id = 1"


class PgClusterStore:
    """Lease, epoch and node heartbeats in the PostgreSQL database."""

    def __init__(self, url: str, *, busy_timeout: float = 0.5, commit_timeout: float = 10.0) -> None:
        self._pg = PgConnection(url, what="the cluster state", busy_timeout=busy_timeout, commit_timeout=commit_timeout)
        self.where = self._pg.where
        try:
            migrate_pg(self._pg)
        except BaseException:
            self._pg.close()
            raise

    def __repr__(self) -> str:
        return f"<PgClusterStore {self.where}>"

    def close(self) -> None:
        self._pg.close()

    @staticmethod
    def _read(conn: psycopg.Connection[Any], *, lock: bool = False) -> Lease:
        row = conn.execute(_LEASE + (" FOR UPDATE" if lock else "")).fetchone()
        assert row is not None
        return Lease(
            epoch=int(row[0]),
            holder=row[1],
            holder_pid=row[2],
            holder_address=row[3],
            lease_until_us=int(row[4]),
            switchover_to=row[5],
        )

    def _writing(self, doing: str, *, durable: bool = True) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self._pg.transaction(doing, durable=durable)

    def lease(self) -> Lease:
        with map_pg_errors(self.where, "reading the lease"):
            return self._read(self._pg.get())

    def acquire(
        self, node_id: str, *, pid: int, address: str, now_us: int, lease_us: int, force: bool = False
    ) -> int | None:
        """Take the lease if it is free, expired, ours, or ``force``; raise the epoch in the same transaction.

        Returns the epoch to serve with, or None if it is held.
        """
        with self._writing("acquiring the lease") as conn:
            lease = self._read(conn, lock=True)
            held = lease.holder not in (None, node_id) and lease.held_at(now_us)
            reserved = lease.switchover_to not in (None, node_id)
            if (held or reserved) and not force:
                self._pg.rollback()  # a commit would wait for the standby to release a lock
                return None
            epoch = lease.epoch + 1
            conn.execute(
                "UPDATE cluster SET epoch = %s, holder = %s, holder_pid = %s, holder_address = %s, "
                "lease_until_us = %s, switchover_to = NULL WHERE id = 1",
                (epoch, node_id, pid, address, now_us + lease_us),
            )
            # The new holder's heartbeat starts with its lease (see ClusterStore.acquire).
            self._upsert_beat(
                conn,
                NodeBeat(node_id=node_id, pid=pid, address=address, role="active", epoch=epoch, heartbeat_us=now_us),
            )
        return epoch

    def renew(self, node_id: str, epoch: int, *, now_us: int, lease_us: int) -> Lease | None:
        """Extend our lease; None if it is no longer ours (another epoch took it)."""
        with self._writing("renewing the lease") as conn:
            cur = conn.execute(
                "UPDATE cluster SET lease_until_us = %s WHERE id = 1 AND holder = %s AND epoch = %s",
                (now_us + lease_us, node_id, epoch),
            )
            if cur.rowcount != 1:
                return None
            return self._read(conn)

    def release(self, node_id: str, epoch: int, *, hand_to: str | None = None) -> bool:
        """Give the lease up now (switchover, orderly stop); ``hand_to`` reserves it for that node."""
        with self._writing("releasing the lease") as conn:
            cur = conn.execute(
                "UPDATE cluster SET lease_until_us = 0, holder = NULL, holder_pid = NULL, switchover_to = %s "
                "WHERE id = 1 AND holder = %s AND epoch = %s",
                (hand_to, node_id, epoch),
            )
            return cur.rowcount == 1

    def request_switchover(self, to_node: str) -> Lease:
        """Ask the active node to hand the lease (and the VIP) to ``to_node``."""
        with self._writing("requesting a switchover") as conn:
            conn.execute("UPDATE cluster SET switchover_to = %s WHERE id = 1", (to_node,))
            return self._read(conn)

    @staticmethod
    def _upsert_beat(conn: psycopg.Connection[Any], beat: NodeBeat) -> None:
        conn.execute(
            "INSERT INTO cluster_nodes VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (node_id) DO UPDATE SET "
            "pid = excluded.pid, address = excluded.address, role = excluded.role, epoch = excluded.epoch, "
            "heartbeat_us = excluded.heartbeat_us",
            (beat.node_id, beat.pid, beat.address, beat.role, beat.epoch, beat.heartbeat_us),
        )

    def beat(self, beat: NodeBeat) -> None:
        with self._writing("writing a node heartbeat", durable=False) as conn:
            self._upsert_beat(conn, beat)

    def nodes(self) -> dict[str, NodeBeat]:
        with map_pg_errors(self.where, "reading node heartbeats"):
            rows = self._pg.get().execute("SELECT * FROM cluster_nodes").fetchall()
        return {
            r[0]: NodeBeat(node_id=r[0], pid=r[1], address=r[2], role=r[3], epoch=r[4], heartbeat_us=r[5]) for r in rows
        }
