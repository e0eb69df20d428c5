"""A cluster node on mirrored storage: its own PostgreSQL, the other node's as the mirror.

In mirrored mode (``ClusterSettings.mirror``) the lease and the epoch live in the primary's
database and reach the standby's replica by streaming replication, so each node reads them
from its own database. What the node does beyond the shared mode, all here:

- **Taking over** promotes its replica first (``promote_database``: it then waits for
  nobody until the other node rejoins) and takes the lease in it under a new epoch.
- **Settling** (at start, and every second while standing by): a node whose database is a
  primary while the other node's is a primary under a newer epoch is the stale side of a
  failover: it rejoins as the other's standby (pg_rewind of what diverged, or a base
  backup) when its data directory is on this machine, and otherwise refuses to take over
  until an operator rejoins it (``fieldsync cluster rejoin``).
- **Losing the mirror** (the active's commits no longer confirmed by a sync standby): its
  lease renewals fail like every other commit, and an active that could not renew for a
  whole lease length steps down (``_cluster``), never degrading itself to async.
"""

from __future__ import annotations

import logging
from typing import Literal

from storage.postgres import Mirror, MirrorError, database_role, lease_epoch, promote_database

from ._cluster_settings import ClusterSettings

__all__ = ["MirrorState", "promote_own", "settle"]

log = logging.getLogger("fieldsync.cluster")

#: ``down`` is the standby loop's own: its database did not answer (``settle`` raised).
MirrorState = Literal["standby", "primary", "stale", "diverged", "down"]


def _what(settings: ClusterSettings, node: str | None = None) -> str:
    return f"node {node or settings.node_id}'s database"


def _peer(settings: ClusterSettings) -> tuple[str, str]:
    assert settings.peer_db is not None, "mirrored settings name the other node's database"
    name = next((n for n, _ in settings.peers), "peer")
    return name, settings.peer_db


def settle(settings: ClusterSettings) -> MirrorState:
    """Where this node's database stands in the pair; rejoins it if it is the stale primary.

    Returns ``standby`` (a replica: the normal standby), ``primary`` (the pair's primary, or
    alone), ``stale`` (it was the stale primary and has rejoined: now a standby), or
    ``diverged`` (the stale primary, which this machine cannot rewind: take nothing).

    Raises:
        MirrorError: this node's own database does not answer.
    """
    own = str(settings.db)
    role = database_role(own, what=_what(settings))
    peer, peer_url = _peer(settings)
    if role == "down":
        # A rejoin that failed halfway (its source went away) leaves this node's server
        # stopped: with a primary beside it, it rejoins again; else it waits for its database.
        if settings.pg_data is None or database_role(peer_url, what=_what(settings, peer)) != "primary":
            raise MirrorError(f"{_what(settings)} ({own}) does not answer")
        mine, theirs = None, lease_epoch(peer_url, what=_what(settings, peer))
    else:
        if role == "standby":
            return "standby"
        if database_role(peer_url, what=_what(settings, peer)) != "primary":
            return "primary"
        mine, theirs = lease_epoch(own, what=_what(settings)), lease_epoch(peer_url, what=_what(settings, peer))
        if mine is not None and theirs is not None and mine > theirs:
            return "primary"  # the other one is stale: it rejoins us
    # Two primaries, and the other's epoch is newer (or equal: it took over from this one
    # before writing anything): this one is the stale side of a failover.
    if settings.pg_data is None:
        log.error(
            "node %s: its database is a primary beside node %s's (epoch %s vs %s): diverged; "
            "it takes nothing until it rejoins (fieldsync cluster rejoin %s)",
            settings.node_id,
            peer,
            mine,
            theirs,
            settings.node_id,
        )
        return "diverged"
    mirror = Mirror.from_urls(
        {settings.node_id: own, peer: peer_url},
        {settings.node_id: settings.pg_data, peer: None},
        mode="sync" if settings.mirror == "sync" else "async",
    )
    report = mirror.rejoin(settings.node_id)
    log.warning(
        "node %s: its database was the stale primary (epoch %s, node %s's %s): rejoined by %s in %.2f s%s",
        settings.node_id,
        mine,
        peer,
        theirs,
        "pg_rewind" if report.how == "rewind" else "a base backup",
        report.in_sync_after,
        f" ({report.fallback_reason})" if report.fallback_reason else "",
    )
    return "stale"


def promote_own(settings: ClusterSettings) -> bool:
    """This node's replica becomes the primary (waiting for no standby until the other rejoins);
    False if it already was one."""
    promoted: bool = promote_database(str(settings.db), what=_what(settings))
    if promoted:
        log.warning("node %s: promoted its database to primary", settings.node_id)
    return promoted
