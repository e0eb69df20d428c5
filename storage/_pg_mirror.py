"""Mirrored storage: one PostgreSQL per node, the active's the primary, the other's a streaming replica.

The seed's recommended layout (ExpressCluster's data mirroring, on PostgreSQL streaming
replication): each node has its own disk; the primary lists the standby in
``synchronous_standby_names`` (sync mode: a commit returns once the standby has flushed
it, ``synchronous_commit = on``) or does not (async, the WAN edition: a commit returns
after the local flush, and what was not yet streamed is lost at a failover: the RPO).

``Mirror`` does what the pair's nodes and its operator need of their databases:

- ``promote(node)``: the standby becomes the primary, and lists nobody as its sync standby
  until the other comes back (its commits would block otherwise). The old primary's own
  commits keep blocking: it still lists the promoted node, which no longer streams from it,
  and nothing here ever removes that while it is the old primary (it never degrades itself
  to async).
- ``rejoin(node)``: a returning node becomes the standby of the current primary by
  ``pg_rewind`` of only what diverged (the seed's FastSync), after a CHECKPOINT on the
  source (without it pg_rewind can read an old timeline and wrongly answer "no rewind
  required"), falling back to a fresh base backup when the rewind cannot be done; its own
  settings are written back (pg_rewind copies the source's configuration files), and the
  primary lists it again in sync mode. It is reported in sync only once
  ``pg_stat_replication`` says ``streaming`` and ``sync``.
- ``replication()``: the primary's view of each standby (state, sync state, lag in bytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ._errors import MirrorError
from ._pg_conn import DEAD_PEER
from ._pg_local import LocalPostgres, find_pg_bindir, free_port

__all__ = [
    "DatabaseHost",
    "Mirror",
    "MirrorError",
    "RejoinReport",
    "Replica",
    "ReplicationState",
    "application_name",
    "cancel_sync_waits",
    "database_role",
    "lease_epoch",
    "list_sync_standby",
    "mirror_servers",
    "promote_database",
    "query",
    "replication_state",
    "running_mirror",
    "start_mirror",
    "stop_mirror",
]

Mode = Literal["sync", "async"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    """One standby as the primary's ``pg_stat_replication`` shows it."""

    node: str
    #: ``startup``, ``catchup``, ``streaming``, ...
    state: str
    #: ``sync``, ``async``, ``potential``, ``quorum``.
    sync_state: str
    #: WAL the primary has written that the standby has not yet flushed / replayed, bytes.
    flush_lag_bytes: int
    replay_lag_bytes: int

    @property
    def in_sync(self) -> bool:
        return self.state == "streaming" and self.sync_state == "sync"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationState:
    """One server's own view of replication: a primary's standbys, or how far a standby's
    replay is behind what it has received."""

    role: Literal["primary", "standby", "down"]
    #: A primary's standbys (``pg_stat_replication``).
    replicas: tuple[Replica, ...] = ()
    #: A standby: whether its WAL receiver streams from a primary now (None on a primary).
    receiving: bool | None = None
    #: A standby's WAL received and not yet replayed, bytes (None on a primary, or when it
    #: has received nothing since it started).
    replay_behind_bytes: int | None = None
    #: Why it could not be read (``role`` is then ``down``).
    error: str | None = None


#: A primary's standbys with their lag behind its WAL, in bytes.
_REPLICAS_SQL = (
    "SELECT application_name, state, sync_state,"
    " COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn), 0)::bigint,"
    " COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint"
    " FROM pg_stat_replication"
)


def _replicas(rows: list[tuple[Any, ...]], names: Mapping[str, str]) -> list[Replica]:
    return [
        Replica(
            node=names.get(str(name), str(name)),
            state=str(state),
            sync_state=str(sync),
            flush_lag_bytes=int(flush),
            replay_lag_bytes=int(replay),
        )
        for name, state, sync, flush, replay in rows
    ]


def replication_state(url: str, *, nodes: Collection[str], what: str, timeout: float = 2.0) -> ReplicationState:
    """What the server at ``url`` says of replication now, in one connection (a node's metrics
    read their own database's once a second). ``nodes``: the pair's names, for its standbys'."""
    import psycopg

    names = {application_name(n): n for n in nodes}
    options = f"-c statement_timeout={int(timeout * 1000)}"
    try:
        with psycopg.connect(
            url, autocommit=True, connect_timeout=max(1, int(timeout)), options=options, **DEAD_PEER
        ) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(),"
                " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,"
                " EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')"
            ).fetchone()
            assert row is not None
            if row[0]:
                behind = None if row[1] is None else max(0, int(row[1]))
                return ReplicationState(role="standby", receiving=bool(row[2]), replay_behind_bytes=behind)
            return ReplicationState(
                role="primary", replicas=tuple(_replicas(conn.execute(_REPLICAS_SQL).fetchall(), names))
            )
    except psycopg.Error as exc:
        return ReplicationState(role="down", error=f"{what}: {_first_line(exc)}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RejoinReport:
    node: str
    source: str
    #: ``rewind`` (only what diverged was copied) or ``basebackup`` (a full copy).
    how: str
    #: Why the rewind was not used (None when it was).
    fallback_reason: str | None
    #: From the start of the rejoin until the copy (rewind or base backup) was done.
    seconds: float
    #: From the start of the rejoin until ``pg_stat_replication`` showed it streaming (and
    #: sync, in sync mode).
    in_sync_after: float


def application_name(node: str) -> str:
    """How node ``node``'s replica names itself to the primary (``synchronous_standby_names``)."""
    return f"fieldsync_{node}"


def query(url: str, sql: str, *, what: str, timeout: float = 5.0) -> list[tuple[Any, ...]]:
    """Run one statement on the database at ``url`` (autocommit); its rows (none for a command).

    Raises:
        MirrorError: the database does not answer or refuses, named by ``what``.
    """
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)), **DEAD_PEER) as conn:
            cursor = conn.execute(sql)
            return list(cursor.fetchall()) if cursor.description is not None else []
    except psycopg.Error as exc:
        raise MirrorError(f"{what}: {_first_line(exc)}") from None


def database_role(url: str, *, what: str) -> Literal["primary", "standby", "down"]:
    """What the server at ``url`` is now (``down``: it does not answer)."""
    try:
        (in_recovery,) = query(url, "SELECT pg_is_in_recovery()", what=what)[0]
    except MirrorError:
        return "down"
    return "standby" if in_recovery else "primary"


def lease_epoch(url: str, *, what: str) -> int | None:
    """The cluster epoch in the database at ``url`` (None: it does not answer, or has no lease yet)."""
    try:
        rows = query(url, "SELECT epoch FROM cluster WHERE id = 1", what=what)
    except MirrorError:
        return None
    return int(rows[0][0]) if rows else None


def cancel_sync_waits(url: str, *, what: str) -> int:
    """End every commit at ``url`` still waiting for its synchronous standby; how many.

    Each such COMMIT then returns with the WARNING that it "might not have been replicated",
    which the stores count as not acknowledged (``StoreNotReplicated``). A node stepping down
    does this so that its sessions' commits, waiting for a standby that is gone, end now and
    not at their ``commit_timeout`` (its rejoin waits for them).
    """
    rows = query(
        url,
        "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity"
        " WHERE wait_event = 'SyncRep' AND pid <> pg_backend_pid()",
        what=what,
    )
    return int(rows[0][0]) if rows else 0


def list_sync_standby(url: str, names: str, *, what: str) -> None:
    """The primary at ``url`` waits for ``names`` at every commit (``''``: for nobody).

    ``ALTER SYSTEM`` (postgresql.auto.conf, which wins over the settings file) and a reload:
    the setting follows the role, not the node's configuration.
    """
    quoted = names.replace("'", "''")
    query(url, f"ALTER SYSTEM SET synchronous_standby_names = '{quoted}'", what=what)
    query(url, "SELECT pg_reload_conf()", what=what)


def promote_database(url: str, *, what: str, timeout: float = 30.0) -> bool:
    """The standby at ``url`` becomes a primary waiting for nobody; False if it already was one."""
    if database_role(url, what=what) == "primary":
        return False  # already one: whom it waits for stays as it is (never degraded to async here)
    # Cleared first: a promoted server inherits the old primary's list, and its first commit
    # would wait for a standby it does not have.
    list_sync_standby(url, "", what=what)
    query(url, f"SELECT pg_promote(true, {int(timeout)})", what=what, timeout=timeout)
    return True


class Mirror:
    """The databases of a mirrored pair: ``servers`` by node name, one of them the primary.

    Args:
        servers: each node's own PostgreSQL (``LocalPostgres``: this machine's binaries).
        mode: ``sync`` or ``async`` (see the module's notes).
        settings: PostgreSQL settings every server gets besides the mirror's own.
    """

    def __init__(self, servers: Mapping[str, LocalPostgres], *, mode: Mode = "sync", settings: Mapping[str, str] = {}):
        if len(servers) != 2:
            raise MirrorError(f"a mirrored pair has two databases, not {len(servers)}")
        if mode not in ("sync", "async"):
            raise MirrorError(f"mirror mode {mode!r}: sync or async")
        self.servers = dict(servers)
        self.mode = mode
        self.settings = dict(settings)
        #: The nodes whose data directory is on this machine (all, unless made ``from_urls``).
        self.local = set(self.servers)
        #: A witness keeps the pair (``fieldsync.engine._witness``): its keeper, not a rejoin,
        #: lists a returning standby.
        self.witnessed = False

    @classmethod
    def from_urls(
        cls,
        urls: Mapping[str, str],
        data: Mapping[str, Path | None],
        *,
        mode: Mode = "sync",
        settings: Mapping[str, str] = {},
    ) -> Mirror:
        """The pair as a node sees it: each database by its URL, and the data directory of the
        ones on this machine (a rejoin rewinds only a server whose directory is given)."""
        from urllib.parse import urlsplit

        servers = {}
        for node, url in urls.items():
            parts = urlsplit(url)
            if parts.hostname is None or parts.port is None:
                raise MirrorError(f"node {node}'s database {url!r}: a mirrored node's URL names its host and port")
            where = data.get(node) or Path(f"/nonexistent/fieldsync-{node}")  # never touched: not ours
            servers[node] = LocalPostgres(where, port=parts.port, host=parts.hostname)
        mirror = cls(servers, mode=mode, settings=settings)
        mirror.local = {n for n, d in data.items() if d is not None}
        return mirror

    def __repr__(self) -> str:
        return f"<Mirror {self.mode} {', '.join(f'{n}={s.host}:{s.port}' for n, s in self.servers.items())}>"

    def other(self, node: str) -> str:
        self._known(node)
        return next(n for n in self.servers if n != node)

    def _known(self, node: str) -> LocalPostgres:
        try:
            return self.servers[node]
        except KeyError:
            raise MirrorError(f"node {node!r}: the pair's nodes are {', '.join(self.servers)}") from None

    def _own_settings(self, node: str, *, primary: bool) -> dict[str, str]:
        """What ``node``'s server runs with, whatever its role (who a primary waits for is set
        by ``list_sync_standby``, which follows the role)."""
        return {
            **self.settings,
            "wal_log_hints": "on",  # pg_rewind needs it (or data checksums)
            # A replica replies at least every second, so its primary (and a witness's keeper,
            # reading reply_time) can tell a standby that streams from one cut off by a partition.
            "wal_receiver_status_interval": "1s",
            "synchronous_commit": "on" if self.mode == "sync" else "local",
            "cluster_name": application_name(node),
        }

    # -- what each server is --------------------------------------------------------------------

    def _what(self, node: str) -> str:
        server = self._known(node)
        return f"node {node}'s database at {server.host}:{server.port}"

    def _query(self, node: str, sql: str, *, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        return query(self._known(node).admin_url(), sql, what=self._what(node), timeout=timeout)

    def role(self, node: str) -> Literal["primary", "standby", "down"]:
        """What ``node``'s server is now (``down``: it does not answer)."""
        return database_role(self._known(node).admin_url(), what=self._what(node))

    def wait_for_standby(self, node: str) -> None:
        """The primary ``node`` waits for the other node's replica at every commit (sync mode)."""
        listed = application_name(self.other(node)) if self.mode == "sync" else ""
        list_sync_standby(self._known(node).admin_url(), listed, what=self._what(node))

    def primary(self) -> str | None:
        """The node whose server is the primary now (None if neither answers as one)."""
        found = [n for n in self.servers if self.role(n) == "primary"]
        return found[0] if len(found) == 1 else None

    def newest_primary(self, *, besides: Collection[str] = ()) -> str | None:
        """The node whose database is a primary under the newest epoch: after a failover both
        may answer as primaries until the stale one rejoins. None: no primary answers.
        ``besides``: nodes not to ask (a frozen host's server would keep a caller waiting)."""
        best: tuple[int, str] | None = None
        for node, server in self.servers.items():
            if node not in besides and self.role(node) == "primary":
                epoch = lease_epoch(server.admin_url(), what=self._what(node)) or 0
                if best is None or epoch > best[0]:
                    best = (epoch, node)
        return best[1] if best is not None else None

    def replication(self, node: str) -> list[Replica]:
        """The standbys streaming from ``node``'s server, as its ``pg_stat_replication`` says."""
        return _replicas(self._query(node, _REPLICAS_SQL), {application_name(n): n for n in self.servers})

    def wait_replicating(
        self, primary: str, standby: str, *, timeout: float = 30.0, in_sync: bool | None = None
    ) -> Replica:
        """Until ``standby`` streams from ``primary`` (and is its sync standby: in sync mode,
        unless ``in_sync`` says otherwise)."""
        sync = self.mode == "sync" if in_sync is None else in_sync
        deadline = time.monotonic() + timeout
        seen: Replica | None = None
        while time.monotonic() < deadline:
            seen = next((r for r in self.replication(primary) if r.node == standby), None)
            if seen is not None and seen.state == "streaming" and (not sync or seen.sync_state == "sync"):
                return seen
            time.sleep(0.02)
        raise MirrorError(
            f"node {standby}'s database is not streaming{' in sync' if self.mode == 'sync' else ''} from node "
            f"{primary}'s after {timeout:g} s (pg_stat_replication: {seen})"
        )

    def wait_replayed(self, primary: str, standby: str, *, timeout: float = 30.0) -> None:
        """Until ``standby`` has replayed all the WAL ``primary`` has written (so reads there see it).

        Sync mode's ``synchronous_commit = on`` waits for the standby's flush, not its replay:
        a read on the standby right after an ack may not see the row yet.
        """
        deadline = time.monotonic() + timeout
        seen: Replica | None = None
        while time.monotonic() < deadline:
            seen = next((r for r in self.replication(primary) if r.node == standby), None)
            if seen is not None and seen.replay_lag_bytes == 0:
                return
            time.sleep(0.01)
        raise MirrorError(
            f"node {standby}'s database has not replayed node {primary}'s WAL after {timeout:g} s: {seen}"
        )

    # -- failover and return --------------------------------------------------------------------

    def promote(self, node: str, *, timeout: float = 30.0) -> None:
        """``node``'s standby becomes the primary, with no sync standby until the other rejoins."""
        if self.role(node) != "standby":
            raise MirrorError(f"node {node}'s database is not a standby ({self.role(node)}): nothing to promote")
        promote_database(self._known(node).admin_url(), what=self._what(node), timeout=timeout)

    def rejoin(self, node: str, *, timeout: float = 60.0) -> RejoinReport:
        """``node`` (its server stopped or running, diverged or not) becomes the standby of the
        other node's primary: pg_rewind, or a base backup when the rewind cannot be done."""
        started = time.monotonic()
        source = self.other(node)
        if node not in self.local:
            raise MirrorError(f"node {node} cannot rejoin from here: its data directory is not on this machine")
        if self.role(source) != "primary":
            raise MirrorError(f"node {node} cannot rejoin: node {source}'s database is not a primary")
        target, origin = self._known(node), self._known(source)
        if target.running():
            target.stop(mode="fast")
        # Without a checkpoint the source's control file may still show the old timeline,
        # and pg_rewind answers "no rewind required" for a target that has diverged.
        self._query(source, "CHECKPOINT", timeout=timeout)
        how, reason = "rewind", None
        conninfo = (
            f"host={origin.host} port={origin.port} user=postgres dbname=postgres "
            f"application_name={application_name(node)}"
        )
        try:
            target._run(
                "pg_rewind",
                ["--target-pgdata", str(target.datadir), "--source-server", conninfo, "--write-recovery-conf"],
                timeout=timeout,
            )
        except RuntimeError as exc:
            how, reason = "basebackup", _first_line(exc)
            try:
                self._basebackup(node, source, timeout=timeout)
            except RuntimeError as again:  # the source went away meanwhile, say: try again later
                raise MirrorError(f"node {node} cannot rejoin from node {source}: {_first_line(again)}") from None
        copied = time.monotonic() - started
        # pg_rewind copied the source's settings file: this node's own go back.
        target.configure(self._own_settings(node, primary=False))
        try:
            target.start(timeout=timeout)
        except RuntimeError as exc:
            raise MirrorError(f"node {node}'s database did not start after its rejoin: {_first_line(exc)}") from None
        if self.witnessed:
            # The witness's keeper on the source waits for it again and counts it in sync once
            # it has caught up past a mark (listed here, it would bypass the mark, and hold
            # every commit of the source while it recovers: past the lease, under load).
            self.wait_replicating(source, node, timeout=timeout, in_sync=False)
        else:
            # Without a witness the source acknowledges alone until it is listed: listed at
            # once, before it streams, so no commit goes by without it (the source's commits
            # wait while it catches up; it is never counted a standby while it lags).
            self.wait_for_standby(source)
            self.wait_replicating(source, node, timeout=timeout)
        return RejoinReport(
            node=node,
            source=source,
            how=how,
            fallback_reason=reason,
            seconds=copied,
            in_sync_after=time.monotonic() - started,
        )

    def _basebackup(self, node: str, source: str, *, timeout: float) -> None:
        target, origin = self._known(node), self._known(source)
        moved = target.datadir.with_name(target.datadir.name + ".diverged")
        shutil.rmtree(moved, ignore_errors=True)
        if target.datadir.exists():
            target.datadir.rename(moved)  # kept for a post-mortem until the next fallback
        LocalPostgres.basebackup(
            origin,
            target.datadir,
            port=target.port,
            application_name=application_name(node),
            settings=self._own_settings(node, primary=False),
            host=target.host,
            netns=target.netns,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseHost:
    """Where a node's database runs when that is not loopback: a lab host's address, the
    port, and the host's network namespace."""

    address: str
    port: int
    netns: str


def mirror_servers(workdir: Path, hosts: Mapping[str, DatabaseHost] | None = None) -> dict[str, LocalPostgres]:
    """Nodes A and B's servers (not made yet): ``workdir/pg-A`` and ``pg-B``, on loopback ports
    of their own, or on ``hosts``."""
    bindir = find_pg_bindir()
    if hosts is None:
        ports = {free_port()}
        while len(ports) < 2:  # two at once: the kernel may hand the same free port out twice
            ports.add(free_port())
        pairs = zip("AB", sorted(ports), strict=True)
        return {n: LocalPostgres(workdir / f"pg-{n}", port=p, bindir=bindir) for n, p in pairs}
    return {
        n: LocalPostgres(workdir / f"pg-{n}", port=h.port, host=h.address, bindir=bindir, netns=h.netns)
        for n, h in hosts.items()
    }


def start_mirror(
    workdir: Path,
    *,
    mode: Mode = "sync",
    primary: str = "A",
    settings: Mapping[str, str] = {},
    hosts: Mapping[str, DatabaseHost] | None = None,
    clients: Sequence[str] = (),
) -> Mirror:
    """Nodes A and B's databases in ``workdir`` (the server user's), started: ``primary``'s the
    primary, the other its replica (in sync in sync mode). ``hosts``: each in a lab host's
    namespace at its address (None: loopback). ``clients``: other addresses let in for
    sessions (a lab's console on its panel host). If it fails halfway, what it had started is
    stopped again (the caller removes ``workdir``)."""
    standby = "B" if primary == "A" else "A"
    mirror = Mirror(mirror_servers(workdir, hosts), mode=mode, settings=settings)
    first, replica = mirror.servers[primary], mirror.servers[standby]
    try:
        LocalPostgres.init(
            first.datadir,
            port=first.port,
            host=first.host,
            netns=first.netns,
            settings=mirror._own_settings(primary, primary=True),
            trusted=[h.address for h in hosts.values()] if hosts else (),
            clients=clients,
        )
        first.start_on_a_free_port(mirror._own_settings(primary, primary=True))
        mirror.wait_for_standby(primary)
        LocalPostgres.basebackup(
            first,
            replica.datadir,
            port=replica.port,
            application_name=application_name(standby),
            settings=mirror._own_settings(standby, primary=False),
            host=replica.host,
            netns=replica.netns,
        )
        replica.start_on_a_free_port(mirror._own_settings(standby, primary=False))
        mirror.wait_replicating(primary, standby)
    except BaseException:
        for server in mirror.servers.values():
            with contextlib.suppress(Exception):
                if server.running():
                    server.stop(mode="immediate")
        raise
    return mirror


def stop_mirror(mirror: Mirror | None, workdir: Path) -> None:
    """Stop whatever of the pair runs (immediately) and remove ``workdir``."""
    for server in mirror.servers.values() if mirror is not None else ():
        with contextlib.suppress(Exception):
            if server.running():
                server.stop(mode="immediate")
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_mirror(
    *, mode: Mode = "sync", primary: str = "A", prefix: str = "fieldsync-mirror-", settings: Mapping[str, str] = {}
) -> Iterator[Mirror]:
    """Nodes A and B's databases on loopback for the block (``start_mirror``); both stopped and
    removed after."""
    workdir = LocalPostgres.workdir(prefix)
    mirror: Mirror | None = None
    try:
        mirror = start_mirror(workdir, mode=mode, primary=primary, settings=settings)
        yield mirror
    finally:
        stop_mirror(mirror, workdir)
