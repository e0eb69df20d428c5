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
  whole lease length steps down (``_cluster``), never degrading itself to async; unless a
  witness (``_witness``) takes the standby out of sync first, which lets the primary go on
  alone (``decide_mirror``) and keeps the standby from promoting (``claim_primary``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

from storage.postgres import (
    Mirror,
    MirrorError,
    application_name,
    database_role,
    lease_epoch,
    list_sync_standby,
    promote_database,
    query,
)

from ._cluster_settings import ClusterSettings
from ._witness import WitnessRecord, witness_cas, witness_get

__all__ = [
    "MirrorAction",
    "MirrorLook",
    "MirrorState",
    "act_on_mirror",
    "claim_primary",
    "decide_mirror",
    "look_at_mirror",
    "promote_own",
    "settle",
]

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
    mirror.witnessed = settings.witness is not None
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


# -- with a witness (``_witness``): who may serve alone --------------------------------------------


def claim_primary(settings: ClusterSettings) -> str | None:
    """Before this node promotes its replica: take ``primary`` at the witness, which it may
    only while the witness lists it in sync (it then holds every acknowledged commit).
    None: granted; else why not, in a phrase.

    Raises:
        WitnessError: the witness does not answer (the node promotes nothing then).
    """
    assert settings.witness is not None
    me = settings.node_id
    seen = witness_get(settings.witness)
    if seen.primary == me:
        return None
    if seen.generation == 0:
        # Only a primary's node makes the first record; a witness whose record is gone (a new
        # state file) must not let a replica that may be behind promote.
        return "the witness has no record of the pair yet (the primary's node makes it)"
    if me not in seen.in_sync:
        return f"the witness does not list it in sync (generation {seen.generation}: primary {seen.primary})"
    if not witness_cas(settings.witness, seen, primary=me, in_sync=(me,)):
        return "the witness's record changed meanwhile"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MirrorLook:
    """What a node whose database is the primary sees of its mirror: the witness's record, its
    own database, and the standby as its walsender reports it."""

    record: WitnessRecord
    #: This node's database is a primary (not a replica in recovery).
    own_primary: bool
    #: The walsender to the standby says ``streaming``, and the standby is the sync one. A
    #: partition leaves it saying both until its timeout: ``reply_age`` tells.
    streaming: bool
    in_sync: bool
    #: The primary lists the standby in ``synchronous_standby_names``.
    listed: bool
    #: How long the oldest commit waiting for the standby has waited, s (0: none waits).
    oldest_wait: float = 0.0
    #: The WAL the standby has flushed (its last reply), and the primary's WAL now (bytes).
    flush_lsn: int = 0
    current_lsn: int = 0
    #: The standby's last reply: its send time as the standby stamped it (None: no reply).
    reply_stamp: float | None = None
    #: Seconds since that stamp last changed, on this node's own clock (the keeper's: the
    #: standby's clock may be off); inf: no reply.
    reply_age: float = float("inf")


#: A standby whose last reply is older than this is not streaming (it replies every second).
_REPLY_SILENCE = 2.0

MirrorAction = Literal["none", "record", "degrade", "unlist", "list", "mark", "restore"]


def decide_mirror(
    look: MirrorLook,
    *,
    me: str,
    peer: str,
    grace: float,
    mark: int | None = None,
    since_degrade: float | None = None,
) -> MirrorAction:
    """What the node does about its mirror (with a witness), from what it saw.

    ``grace``: how long a commit may wait for the standby before the standby is out of sync.
    ``mark``: the primary's WAL position once the standby was waited for again (``mark``,
    the action, sets it): a standby that has flushed past it holds everything acknowledged
    while it was out, and every commit since waited for it; only then is it in sync again
    (a walsender that calls a standby "sync" says nothing of the WAL it missed).
    ``since_degrade``: seconds since this node stopped waiting for the standby; it is waited
    for again only on a reply sent after that (a partition leaves the last reply of before
    it looking fresh for a while: waiting on it again made the active step down).
    """
    record = look.record
    if not look.own_primary or record.primary not in (None, me):
        return "none"  # a replica's node, or the witness gave the pair to the other: never alone
    if record.primary is None:
        return "record"  # the first record: this primary alone (the standby is counted in below)
    alive = look.streaming and look.reply_age < _REPLY_SILENCE
    stuck = look.listed and (not alive or look.oldest_wait >= grace)
    if peer in record.in_sync:
        return "degrade" if stuck else "none"
    if stuck:
        # Out of sync by the witness (it can never promote) and still waited for: a degrade
        # that stopped between its CAS and the setting, a standby gone between "list" and
        # "restore", a rejoin that listed it and failed. Waiting on would stop the site.
        return "unlist"
    replied_since = since_degrade if since_degrade is not None else 0.5
    if alive and not look.listed and look.reply_age < replied_since:
        return "list"  # back and streaming: wait for it again, then count it in sync
    if alive and look.in_sync and look.listed:
        if mark is None:
            return "mark"
        if look.flush_lsn >= mark:
            return "restore"
    return "none"


def look_at_mirror(settings: ClusterSettings) -> MirrorLook:
    """Raises: WitnessError, MirrorError (the witness or this node's database does not answer)."""
    assert settings.witness is not None
    own, what = str(settings.db), _what(settings)
    peer, _ = _peer(settings)
    record = witness_get(settings.witness)
    rows = query(
        own,
        "SELECT sync_state, COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0'), 0)::bigint,"
        " EXTRACT(EPOCH FROM reply_time)::float8"
        f" FROM pg_stat_replication WHERE application_name = '{application_name(peer)}' AND state = 'streaming'",
        what=what,
    )
    ((recovering, listed, oldest, current),) = query(
        own,
        "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names') <> '',"
        " (SELECT COALESCE(EXTRACT(EPOCH FROM max(now() - state_change)), 0)::float8"
        "  FROM pg_stat_activity WHERE wait_event = 'SyncRep'),"
        " CASE WHEN pg_is_in_recovery() THEN 0"
        " ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END",
        what=what,
    )
    stamps = [float(stamp) for _, _, stamp in rows if stamp is not None]
    return MirrorLook(
        record=record,
        own_primary=not recovering,
        streaming=bool(rows),
        in_sync=any(sync == "sync" for sync, _, _ in rows),
        listed=bool(listed),
        oldest_wait=float(oldest),
        flush_lsn=max((int(flush) for _, flush, _ in rows), default=0),
        current_lsn=int(current),
        reply_stamp=max(stamps) if stamps else None,
    )


def act_on_mirror(settings: ClusterSettings, look: MirrorLook, action: MirrorAction) -> bool:
    """Carry out ``decide_mirror``'s answer; False if the witness refused it (it moved on).
    Raises: WitnessError, MirrorError."""
    assert settings.witness is not None
    me, (peer, _) = settings.node_id, _peer(settings)
    own, what = str(settings.db), _what(settings)
    if action == "record":
        return witness_cas(settings.witness, look.record, primary=me, in_sync=(me,))
    if action == "degrade":
        # The witness first: once it no longer lists the standby, that one can never promote.
        if not witness_cas(settings.witness, look.record, primary=me, in_sync=(me,)):
            return False
        list_sync_standby(own, "", what=what)
        log.warning(
            "node %s: node %s's database is out of sync (%s); the witness agreed: acknowledging alone",
            me,
            peer,
            f"a commit waited {look.oldest_wait:.1f} s" if look.oldest_wait else "no reply from it",
        )
        return True
    if action == "unlist":
        list_sync_standby(own, "", what=what)  # out of sync by the witness already: no CAS
        log.warning("node %s: node %s's database, out of sync, is no longer waited for", me, peer)
        return True
    if action == "list":
        list_sync_standby(own, application_name(peer), what=what)
        # A barrier: CHECKPOINT returns once the checkpointer has passed the top of its loop,
        # where it takes in the reload, and only then do commits wait for the standby. The
        # mark (the next look's WAL position) comes after it.
        query(own, "CHECKPOINT", what=what, timeout=30.0)
        return True
    if action == "restore":
        if not witness_cas(settings.witness, look.record, primary=me, in_sync=(me, peer)):
            return False
        log.warning("node %s: node %s's database is in sync again (the witness counts it)", me, peer)
        return True
    return False


def promote_own(settings: ClusterSettings) -> bool:
    """This node's replica becomes the primary (waiting for no standby until the other rejoins);
    False if it already was one."""
    promoted: bool = promote_database(str(settings.db), what=_what(settings))
    if promoted:
        log.warning("node %s: promoted its database to primary", settings.node_id)
    return promoted
