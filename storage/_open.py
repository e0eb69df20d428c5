"""Open a store by its target: a path is a SQLite file, a ``postgresql://`` URL a PostgreSQL database.

psycopg is imported only when a URL is opened: it costs about 0.3 s at import,
which every SQLite-only command (and every node process of a shared site) would
otherwise pay.
"""

from __future__ import annotations

from pathlib import Path

from ._cluster import ClusterStore
from ._config_store import ConfigStore
from ._interface import ConfigStoreInterface, EventStoreInterface, LeaseStoreInterface
from ._store import EventStore

__all__ = ["describe_target", "is_database_url", "open_cluster_store", "open_config_store", "open_event_store"]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(target: Path | str) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``), False for a file path."""
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


def describe_target(target: Path | str) -> str:
    """The target as errors name it: the path, or the URL without its password."""
    if is_database_url(target):
        from ._pg_conn import describe_url

        return describe_url(str(target))
    return str(target)


def open_event_store(
    target: Path | str,
    *,
    busy_timeout: float = 5.0,
    commit_timeout: float = 10.0,
    synchronous_commit: str = "on",
    durable: bool = True,
) -> EventStoreInterface:
    """The event store at ``target``.

    Args:
        busy_timeout: seconds to wait for another writer's lock before ``StoreLocked``.
        commit_timeout: PostgreSQL: seconds a commit may wait for the synchronous
            standby before ``StoreNotReplicated``.
        synchronous_commit: PostgreSQL: ``on`` or ``remote_apply``.
        durable: False for a connection that only materializes the batch log.
    """
    if is_database_url(target):
        from ._pg_store import PgEventStore

        return PgEventStore(
            str(target),
            busy_timeout=busy_timeout,
            commit_timeout=commit_timeout,
            synchronous_commit=synchronous_commit,
            durable=durable,
        )
    return EventStore(target, busy_timeout=busy_timeout, durable=durable)


def open_config_store(
    target: Path | str, *, busy_timeout: float = 5.0, commit_timeout: float = 10.0
) -> ConfigStoreInterface:
    """The config store at ``target`` (the same file or database as the event store)."""
    if is_database_url(target):
        from ._pg_config import PgConfigStore

        return PgConfigStore(str(target), busy_timeout=busy_timeout, commit_timeout=commit_timeout)
    return ConfigStore(target, busy_timeout=busy_timeout)


def open_cluster_store(
    target: Path | str, *, busy_timeout: float = 0.5, commit_timeout: float = 10.0
) -> LeaseStoreInterface:
    """The cluster's lease, epoch and heartbeats at ``target``."""
    if is_database_url(target):
        from ._pg_cluster import PgClusterStore

        return PgClusterStore(str(target), busy_timeout=busy_timeout, commit_timeout=commit_timeout)
    return ClusterStore(target, busy_timeout=busy_timeout)
