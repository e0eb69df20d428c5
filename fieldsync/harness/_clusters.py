"""Where a scenario's nodes run: the cluster backends behind one ``ClusterBackend`` protocol.

``ProcessCluster`` runs nodes A and B as OS processes under a supervisor, sharing the store
(the real thing: kill -9 and SIGSTOP are signals to the pids this run started);
``InProcessCluster`` runs one node inside the run's trio loop (the fast tier, virtual time).
The runner and the steps only ask who holds the VIP, at which epoch, and to kill, pause,
resume or start a node: a backend on network-namespace hosts with keepalived, or on a
PostgreSQL mirrored store, is another class with these methods.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from storage import Lease, LeaseStoreInterface, open_cluster_store

from ..engine import Supervised, Supervisor, node_command
from ._flaws import flawed_command, flawed_node_class
from ._scenario import ScenarioError

if TYPE_CHECKING:
    from ._runner import ScenarioRun

__all__ = ["ClusterBackend", "InProcessCluster", "ProcessCluster", "StoreWatchedCluster"]


class ClusterBackend(Protocol):
    """What the runner and the steps need of a cluster, whatever runs it."""

    kind: str
    #: How the log names this backend's kill ("kill -9", or what it really is).
    kill_words: str

    async def start(self, nursery: trio.Nursery) -> None: ...
    def holder(self) -> str | None: ...
    def epoch(self) -> int: ...
    def active_since(self) -> float | None:
        """When (trio time) the node holding the lease now was first seen holding it; None if none does."""
        ...

    async def resolve(self, target: str, *, wait: bool = True) -> str:
        """The node ``target`` names now; with ``wait``, ``active`` and ``standby`` first wait
        (at most ``HOLDER_WAIT``, noted in the run's log) for a holder whose process runs."""
        ...

    async def kill(self, name: str) -> bool: ...
    async def stop(self, name: str, *, outside_transaction: bool = False) -> bool: ...
    async def cont(self, name: str) -> None: ...
    async def ensure_running(self, name: str) -> None: ...
    async def all_down(self) -> None: ...
    async def all_up(self, *, restart: bool) -> None: ...
    async def switchover(self, to: str) -> None: ...
    def starts(self) -> dict[str, int]: ...
    def crashes(self) -> int: ...


def run_node_command(run: ScenarioRun, name: str, site_path: Path) -> list[str]:
    """Node ``name``'s command line in this run: the scenario's cluster options, the run's
    extra node arguments, and the run's deliberately broken build if it has one."""
    cluster = run.scenario.cluster
    extra = list(run.node_args)
    if not cluster.stonith:
        extra.append("--no-stonith")
    if cluster.failback:
        extra.append("--failback")
    extra += ["--lease", str(cluster.lease)]
    return flawed_command(node_command(name, str(site_path), *extra), run.flaws)


def lease_targets(run: ScenarioRun) -> list[Path | str]:
    """Where the run's lease lives: the shared store, or each node's own database (mirrored),
    as this process reaches it (a lab host's by its Unix socket)."""
    mirror = run._setup.mirror
    if mirror is None:
        return [run.site.db_file]
    return [mirror.servers[n.name].admin_url() for n in run.site.nodes]


class StoreWatchedCluster:
    """What the two-node backends share: the lease read every 0.1 s (from the shared store, or
    the newest of the nodes' own databases on mirrored storage), and pauses kept only outside a
    write transaction. A subclass signals its own nodes."""

    run: ScenarioRun
    #: The shared store (None on mirrored storage: no write lock is shared there).
    db: Path | None
    targets: list[Path | str]
    store_target: Callable[[], Path | str]
    lease: Lease | None
    stopped: set[str]
    #: How many tries the last ``stop(outside_transaction=True)`` took.
    pause_tries: int
    #: Held while the lease is read: a host is frozen only between two reads (the netns backend).
    lease_reads: trio.Lock
    #: When (trio time) the newest lease's epoch was first read.
    epoch_seen_at: float = 0.0

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        raise NotImplementedError

    def alive(self, name: str) -> bool:
        """Is node ``name``'s process running, as far as this backend knows? (A killed
        holder's lease is still held until it runs out.)"""
        return True

    def live_holder(self) -> str | None:
        """The lease's holder, unless its process is known to be gone."""
        holder = self.holder()
        return holder if holder is not None and self.alive(holder) else None

    def lease_sources(self) -> list[Path | str]:
        """The targets the lease is read from now (the netns backend leaves out a frozen host's)."""
        return self.targets

    async def _watch_lease(self) -> None:
        stores: dict[Path | str, LeaseStoreInterface] = {}

        def read() -> Lease | None:
            newest: Lease | None = None
            sources = self.lease_sources()
            for target in [t for t in stores if t not in sources]:
                with contextlib.suppress(Exception):
                    stores.pop(target).close()
            for target in sources:
                try:
                    if target not in stores:
                        stores[target] = open_cluster_store(target)
                    lease = stores[target].lease()
                except Exception:  # busy, or a database restarting for a rejoin: the next read will do
                    stale = stores.pop(target, None)
                    if stale is not None:
                        with contextlib.suppress(Exception):
                            stale.close()
                    continue
                if newest is None or lease.epoch > newest.epoch:
                    newest = lease
            return newest

        try:
            while True:
                async with self.lease_reads:
                    lease = await trio.to_thread.run_sync(read)
                # Epochs only grow: a read that missed the newest database (restarting for a
                # rejoin, say) must not bring back an older holder.
                if lease is not None and (self.lease is None or lease.epoch >= self.lease.epoch):
                    if self.lease is None or lease.epoch > self.lease.epoch:
                        self.epoch_seen_at = trio.current_time()
                    self.lease = lease
                await trio.sleep(0.1)
        finally:
            for store in stores.values():
                with contextlib.suppress(Exception):
                    store.close()

    def holder(self) -> str | None:
        lease = self.lease
        if lease is None or not lease.held_at(time.time_ns() // 1000):
            return None
        return lease.holder

    def epoch(self) -> int:
        return self.lease.epoch if self.lease else 0

    def active_since(self) -> float | None:
        return None if self.live_holder() is None else self.epoch_seen_at

    async def resolve(self, target: str, *, wait: bool = True) -> str:
        if wait and target in ("active", "standby"):
            await wait_for_holder(self.run, self.live_holder)
        holder = self.live_holder() or self.holder() or (self.lease.holder if self.lease else None) or "A"
        if target == "active":
            return holder
        if target == "standby":
            return "B" if holder == "A" else "A"
        return target

    async def stop(self, name: str, *, outside_transaction: bool = False) -> bool:
        """SIGSTOP. ``outside_transaction``: keep the pause only where the paused process holds
        no write lock on the shared store (the shared-disk limit: a sleeper inside a
        transaction locks everyone out, docs/architecture.md); a pause that landed inside one
        is lifted at once and tried again a moment later, at most 200 times."""
        if not outside_transaction or self.db is None:  # mirrored: no store lock is shared
            if self._signal(name, signal.SIGSTOP):
                self.stopped.add(name)
                return True
            return False
        for attempt in range(200):
            if not self._signal(name, signal.SIGSTOP):
                return False
            db = self.db
            if not await trio.to_thread.run_sync(_write_locked, db):
                self.stopped.add(name)
                self.pause_tries = attempt + 1
                return True
            await trio.sleep(0.05)  # the other node's own writes free the lock within milliseconds
            if not await trio.to_thread.run_sync(_write_locked, db):
                self.stopped.add(name)
                self.pause_tries = attempt + 1
                return True
            self._signal(name, signal.SIGCONT)
            await trio.sleep(0.003 * (attempt % 7))
        raise ScenarioError(f"every pause of node {name} in 200 tries landed inside a write transaction")

    async def cont(self, name: str) -> None:
        self._signal(name, signal.SIGCONT)
        self.stopped.discard(name)

    async def switchover(self, to: str) -> None:
        target = await trio.to_thread.run_sync(self.store_target)
        await trio.to_thread.run_sync(_request_switchover, target, to)


class ProcessCluster(StoreWatchedCluster):
    """Nodes A and B as OS processes under a supervisor, sharing the store (the real thing).

    Process faults are signals to the pids this run started. Later cluster kinds
    (keepalived in network namespaces, a PostgreSQL mirrored store) are more of
    these: the runner only asks who holds the VIP, at which epoch, and to kill,
    pause, resume or start a node.
    """

    kind = "process"
    kill_words = "kill -9"

    def __init__(self, run: ScenarioRun, site_path: Path, log_fd: int) -> None:
        scenario = run.scenario
        self.db = None if run.site.mirror is not None else run.site.db_file
        self.targets = lease_targets(run)
        self.store_target = run.store_target
        self.children = {
            n: Supervised(
                name=n,
                command=run_node_command(run, n, site_path),
                restart=scenario.cluster.restart,
                restart_delay=scenario.cluster.restart_delay,
            )
            for n in ("A", "B")
        }
        # Mirrored: node A (beside the primary) first, B once A holds the lease. Started
        # together, B could find no beat from a slow-starting A and promote its replica (a
        # needless failover that moved the replication off the run's proxy: a WAN run lost
        # nothing, and its RPO check failed, on a loaded machine).
        self.supervisor = Supervisor(
            list(self.children.values()), stdout=log_fd, first=["A"] if run.site.mirror is not None else None
        )
        self.run = run
        #: Mirrored: the nodes whose database a crash stopped (started again before their node).
        self.crashed_databases: set[str] = set()
        self.lease: Lease | None = None
        #: Each node's process this run last sent SIGKILL (a restarted node has a new pid).
        self._killed: dict[str, int] = {}
        self.stopped: set[str] = set()
        #: How many tries the last ``stop(outside_transaction=True)`` took.
        self.pause_tries = 0
        self.lease_reads = trio.Lock()

    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._watch_lease)
        await nursery.start(self.supervisor.run)
        if self.run.site.mirror is not None:
            with trio.fail_after(120):
                await until(lambda: self.holder() == "A")
            await self.supervisor.start("B")

    def alive(self, name: str) -> bool:
        # A process is reaped a moment after its SIGKILL: until then it still has its pid.
        pid = self.children[name].pid
        return pid is not None and self._killed.get(name) != pid

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        pid = self.children[name].pid  # a process this run started
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        if sig == signal.SIGKILL:
            self._killed[name] = pid
        return True

    async def kill(self, name: str) -> bool:
        self.stopped.discard(name)
        return self._signal(name, signal.SIGKILL)

    async def crash(self, name: str) -> None:
        """Mirrored storage: the host crashes: kill -9 of the node, an immediate stop of its database."""
        mirror = self.run._setup.mirror
        assert mirror is not None, "a crash step needs mirrored storage (the runner checks)"
        server = mirror.servers[name]
        self.stopped.discard(name)
        # The host is down until it is started again (a restart step, or the end's heal): its
        # node must not be restarted onto a database that is not there.
        self.children[name].restart = False
        self._signal(name, signal.SIGKILL)
        await trio.to_thread.run_sync(lambda: server.stop(mode="immediate"))
        self.crashed_databases.add(name)

    async def _restart_database(self, name: str) -> None:
        """After a host crash, the node's database starts again before its node does."""
        mirror = self.run._setup.mirror
        if mirror is None or name not in self.crashed_databases:
            return
        server = mirror.servers[name]
        if not await trio.to_thread.run_sync(server.running):
            await trio.to_thread.run_sync(server.start)
        self.crashed_databases.discard(name)
        self.children[name].restart = self.run.scenario.cluster.restart

    async def ensure_running(self, name: str) -> None:
        await self._restart_database(name)
        child = self.children[name]
        with trio.move_on_after(5):  # the supervisor may be about to restart it
            await until(lambda: not (child.kept and child.pid is None and child.restart))
        if child.pid is None:
            await self.supervisor.start(name)

    async def all_down(self) -> None:
        for child in self.children.values():
            child.restart = False
        for name in self.children:
            await self.kill(name)

    async def all_up(self, *, restart: bool) -> None:
        for name in list(self.stopped):
            await self.cont(name)
        for name in self.children:
            await self._restart_database(name)  # a crashed host's database before its node
        for child in self.children.values():
            child.restart = restart
        for name in self.children:
            await self.ensure_running(name)

    def starts(self) -> dict[str, int]:
        return {n: c.starts for n, c in self.children.items()}

    def crashes(self) -> int:
        """Node processes that ended by themselves: not by a signal of this run or of STONITH
        (SIGKILL), not by the supervisor's stop at the end (SIGINT, or a clean exit)."""
        expected = {0, -signal.SIGKILL, -signal.SIGINT, -signal.SIGTERM, 130}
        return sum(1 for c in self.children.values() for code in c.exits if code not in expected)


class InProcessCluster:
    """One sync-engine node inside this trio run: the fast tier (virtual time, no processes).

    A "kill" cancels the node at once (its in-flight acks never go out; what it
    committed stays), and a new node starts after ``restart_delay`` with a new
    epoch, like a takeover. There is no second node to hold the VIP meanwhile,
    and no SIGSTOP: scenarios for this tier leave out ``stop``, ``cont`` and
    ``switchover``.
    """

    kind = "in-process"
    #: Named for what it is: the node's task is cancelled and its shielded clean-up (status
    #: written, store closed) still runs. The process tier's kill is the real kill -9.
    kill_words = "cancel (in-process, not kill -9)"

    def __init__(self, run: ScenarioRun) -> None:
        from ..engine import NodeSettings

        site = run.site
        self.run = run
        self.settings = NodeSettings(
            node_id="A",
            db=site.db_file,
            listen=(site.vip, site.port),
            dial=site.dials(),
            tls=site.tls_for("node", "A"),
            bind_retry=5.0,
            known_panels=frozenset(site.panel_ids()),
            heartbeat_ms=site.heartbeat_ms,
            idle_ms=site.idle_ms,
            ingest=site.ingest,
            materialize_idle=float(site.materialize_idle),
            max_log_age=float(site.max_log_age),
            max_log_lag=site.max_log_lag,
        )
        self.node_class = flawed_node_class(run.flaws)
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._starts = 0
        self._epoch = 0
        #: When the running node took up its epoch (None while it starts, or none runs).
        self._since: float | None = None
        self.restart = run.scenario.cluster.restart

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        await self.ensure_running("A")

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node_class(self.settings)
        with trio.CancelScope() as scope:
            self._scope = scope
            self._since = None
            # Started at once: a kill may cancel it while it is still opening the store.
            task_status.started()
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                self._starts += 1
                self._epoch = node.epoch
                self._since = trio.current_time()

    def holder(self) -> str | None:
        """A once its node has taken up its epoch (not while it opens the store), until a kill."""
        running = self._scope is not None and not self._scope.cancel_called
        return "A" if running and self._since is not None else None

    def epoch(self) -> int:
        return self._epoch

    def active_since(self) -> float | None:
        return None if self.holder() is None else self._since

    async def resolve(self, target: str, *, wait: bool = True) -> str:
        if wait and target in ("active", "standby"):
            await wait_for_holder(self.run, self.holder)
        return "A"

    async def kill(self, name: str) -> bool:
        if self._scope is None or self._scope.cancel_called:
            return False
        self._scope.cancel()
        self._scope = None
        await trio.lowlevel.checkpoint()
        if self.restart and self._nursery is not None:
            self._nursery.start_soon(self._restart_later)
        return True

    async def _restart_later(self) -> None:
        await trio.sleep(self.run.scenario.cluster.restart_delay)
        if self.restart:
            await self.ensure_running("A")

    async def stop(self, name: str, *, outside_transaction: bool = False) -> bool:
        raise ValueError("SIGSTOP needs the process cluster; the in-process tier cannot pause a node")

    async def cont(self, name: str) -> None:
        raise ValueError("SIGCONT needs the process cluster")

    async def ensure_running(self, name: str) -> None:
        # Running or starting (not yet holding: ``holder``) is enough: a second node would
        # overwrite the first's scope and leave it beyond any kill.
        starting_or_running = self._scope is not None and not self._scope.cancel_called
        if not starting_or_running and self._nursery is not None:
            await self._nursery.start(self._serve)

    async def all_down(self) -> None:
        self.restart = False
        await self.kill("A")

    async def all_up(self, *, restart: bool) -> None:
        self.restart = restart
        await self.ensure_running("A")

    async def switchover(self, to: str) -> None:
        raise ValueError("switchover needs the process cluster (two nodes)")

    def starts(self) -> dict[str, int]:
        return {"A": self._starts}

    def crashes(self) -> int:
        return 0  # a node that raised here has already ended the run with its exception


#: How long a step naming ``active`` or ``standby`` waits for a node to hold the lease.
HOLDER_WAIT = 60.0


async def wait_for_holder(run: ScenarioRun, holder: Callable[[], str | None]) -> None:
    """Wait until some node holds the lease (then the caller falls back to the last holder):
    "the active" of a step taken while the nodes restart after an outage, or just after a
    kill, is the node that takes over, not the one whose lease ran out while it was down or
    has not yet run out though its process is gone."""
    await wait_noted(run, lambda: holder() is not None, "a node holding the lease")


async def wait_noted(run: ScenarioRun, predicate: Callable[[], bool], what: str) -> None:
    """A step's wait: until ``predicate`` (at most ``HOLDER_WAIT``), noted in the run's log
    when it took 50 ms or more, and when it ran out."""
    began = trio.current_time()
    with trio.move_on_after(HOLDER_WAIT) as scope:
        await until(predicate)
    if scope.cancelled_caught:
        run.note(f"gave up after {HOLDER_WAIT:g}s waiting for {what}: the step is taken now")
    elif (waited := trio.current_time() - began) >= 0.05:
        run.note(f"waited {waited:.2f}s for {what}")


async def until(predicate: Callable[[], bool], poll: float = 0.05) -> None:
    # The run watches other processes (through the store) and a fleet's counters:
    # polling is the point, bounded by the caller's timeout.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(poll)


def _write_locked(db: Path) -> bool:
    """Does some process hold the store's write lock right now? (One try, no waiting.)"""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise
    finally:
        conn.close()


def _request_switchover(db: Path | str, to: str) -> None:
    store = open_cluster_store(db)
    try:
        store.request_switchover(to)
    finally:
        store.close()
