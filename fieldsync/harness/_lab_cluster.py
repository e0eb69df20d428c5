"""The netns backend: a scenario's nodes on the lab's hosts, the VIP moved by keepalived.

``LabCluster`` builds a lab (``fieldsync.lab``) for the run in the run's directory, with the
run's own site file (the lab's addresses), and runs the run's fleet and fault proxies inside
the lab's panel host: every trio socket of the run is made in that network namespace
(``sockets_in``), so every panel socket and every proxy lives there, and reaches the nodes
over the lab's switch. The scenario file is unchanged; the faults of real hosts are steps of their
own (``power-off``, ``nic-down``, ``partition``, ``kill-keepalived``), and the heartbeat link
(group ``nodes``) is the switch between hosts A and B: ``down nodes`` partitions them.

What differs from the process backend, and why:

- ``kill`` is SIGKILL of the node's process only; its host's keepalived notices through its
  track script (within its 1 s interval) and gives up the VIP.
- ``stop`` pauses the node only: keepalived still sees a process and keeps the VIP, so the
  other node, BACKUP, rightly takes nothing until the pause ends (the hung service that a
  pid check cannot see).
- ``switchover`` is what an operator does on such a pair: keepalived on the active host
  stops gracefully (it hands the VIP over at once), the switchover is asked of the store,
  and keepalived starts again as BACKUP (``nopreempt``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from storage import Lease

from ..lab import NODE_HOSTS, Lab, LabError, LabSpec
from ._clusters import StoreWatchedCluster, lease_targets, run_node_command, until
from ._scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    from ._runner import ScenarioRun

__all__ = ["LabCluster", "crashed", "lab_name", "run_lab_spec", "sockets_in"]

_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def lab_name() -> str:
    """A fresh lab name for one run: namespaces ``fsl-r<10 hex>-<host>``."""
    return "r" + secrets.token_hex(5)


def run_lab_spec(scenario: Scenario, *, directory: Path, port: int, name: str) -> LabSpec:
    """The lab a scenario runs on: its panels, its VRRP interval, its STONITH, in ``directory``."""
    return LabSpec(
        name=name,
        directory=directory,
        panels=scenario.site.panels,
        first_id=scenario.site.first_id,
        advert_int=scenario.cluster.advert_int,
        port=port,
        mode=scenario.site.mode,
        stonith=scenario.cluster.stonith,
        mirror=scenario.cluster.mirror,
        witness=scenario.cluster.witness,
    )


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class _SocketsIn(trio.abc.SocketFactory):
    """trio's sockets of this run, each made inside one network namespace (``sockets_in``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def socket(
        self,
        family: socket.AddressFamily | int = socket.AF_INET,
        type: socket.SocketKind | int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(self.fd)
            try:
                made = socket.socket(family, type, proto)
            finally:
                _setns(home)
        finally:
            os.close(home)
        return trio.socket.from_stdlib_socket(made)


@contextlib.contextmanager
def sockets_in(namespace: str) -> Iterator[None]:
    """Every trio socket this trio run opens meanwhile lives in network namespace ``namespace``.

    Only the creation of each socket steps into the namespace (and straight back), on the
    thread that creates it: no thread stays there. (Moving the run's thread for the whole run
    left the worker threads it started meanwhile in the namespace, and trio keeps them for
    later runs: a later test's thread found only a dead namespace.)
    """
    try:
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    except FileNotFoundError:
        raise LabError(f"network namespace {namespace} is gone") from None
    previous = trio.socket.set_custom_socket_factory(_SocketsIn(fd))
    try:
        yield
    finally:
        trio.socket.set_custom_socket_factory(previous)
        os.close(fd)


class LabCluster(StoreWatchedCluster):
    """Nodes A and B on the lab's hosts A and B, each with its keepalived; the run's panels on
    the lab's panel host. See the module's notes for how its faults differ."""

    kind = "netns"
    kill_words = "kill -9 (the node's process; its keepalived stays)"

    def __init__(self, run: ScenarioRun, site_path: Path, spec: LabSpec) -> None:
        scenario = run.scenario
        self.run = run
        mirrored = scenario.cluster.mirror is not None
        # The lab's hosts share one filesystem: the shared store; or each host's own database.
        self.db = None if mirrored else run.site.db_file
        self.targets = lease_targets(run)
        self.store_target = run.store_target
        self.spec = spec
        self.lab = Lab(self.spec, node_argv=lambda host: run_node_command(run, host, site_path), owner=os.getpid())
        self.lease: Lease | None = None
        self.stopped: set[str] = set()
        self.pause_tries = 0
        self.lease_reads = trio.Lock()
        self.restart = scenario.cluster.restart
        #: Hosts that crashed (``crash``): down, database and all, until a step or the end starts them.
        self._crashed: set[str] = set()
        #: Nodes this run keeps down (``all_down``) or that are restarting now.
        self._held: set[str] = set()
        self._starts = dict.fromkeys(NODE_HOSTS, 0)
        self._nics_down: set[str] = set()
        self._nursery: trio.Nursery | None = None
        #: One lab operation at a time (a restart and a step may meet: one record, one start).
        self._lab_lock = trio.Lock()

    @property
    def panel_namespace(self) -> str:
        return self.spec.namespace("panels")

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        await nursery.start(self._own_lab)
        for host in NODE_HOSTS:
            self._starts[host] += 1
        nursery.start_soon(self._watch_lease)
        nursery.start_soon(self._restart_dead)

    async def _own_lab(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            seed = self.run._setup.seed if self.run.scenario.cluster.mirror is not None else None
            await trio.to_thread.run_sync(lambda: self.lab.up(write_site=False, timeout=60, before_nodes=seed))
        except LabError as exc:
            raise ScenarioError(f"{self.run.scenario.name}: the netns backend could not build its lab: {exc}") from None
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.lab.down)

    async def _restart_dead(self) -> None:
        assert self._nursery is not None
        """The supervisor's part: a node that died (a kill, STONITH, a crash) starts again after
        ``restart_delay``, unless the run holds it down or its host has no power."""
        delay = self.run.scenario.cluster.restart_delay
        while True:
            await trio.sleep(0.1)
            for host in NODE_HOSTS:
                if self._may_restart(host) and host not in self._held and not self.lab.is_running(host, "node"):
                    self._held.add(host)
                    self._nursery.start_soon(self._start_later, host, delay)

    async def _start_later(self, host: str, delay: float) -> None:
        try:
            await trio.sleep(delay)
            if self._may_restart(host) and not self.lab.is_running(host, "node"):
                await self._start_node(host)
        finally:
            self._held.discard(host)

    def _may_restart(self, host: str) -> bool:
        return self.restart and host not in self.lab.powered_off and host not in self._crashed

    def lease_sources(self) -> list[Path | str]:
        if self.db is not None:
            return self.targets
        mirror = self.run._setup.mirror
        assert mirror is not None
        return [mirror.servers[h].admin_url() for h in NODE_HOSTS if h not in self.lab.powered_off]

    async def _in_lab(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lab_lock:
            return await trio.to_thread.run_sync(fn, *args)

    async def _start_node(self, host: str) -> None:
        def start_unless_running() -> bool:
            if self.lab.is_running(host, "node"):
                return False
            self.lab.start_process(host, "node")
            return True

        if await self._in_lab(start_unless_running):
            self._starts[host] += 1

    def alive(self, name: str) -> bool:
        return self.lab.is_running(name, "node")

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        return self.lab.signal_node(name, sig)

    async def kill(self, name: str) -> bool:
        self.stopped.discard(name)
        return await self._in_lab(self._signal, name, signal.SIGKILL)

    async def crash(self, name: str) -> None:
        """Mirrored storage: the host crashes: SIGKILL of its node, keepalived and PostgreSQL at
        once. It stays down until a step or the end's heal starts it again."""
        self.stopped.discard(name)
        self._crashed.add(name)
        await self._in_lab(self.lab.kill, name)

    async def ensure_running(self, name: str) -> None:
        if name in self._crashed:
            await self._in_lab(self.lab.start, name)
            self._crashed.discard(name)
            self._starts[name] += 1
            return
        if self.lab.is_running(name, "node"):
            return
        with trio.move_on_after(5):  # the restart watcher may be about to start it
            await until(lambda: name not in self._held or self.lab.is_running(name, "node"))
        if not self.lab.is_running(name, "node"):
            await self._start_node(name)

    async def all_down(self) -> None:
        self.restart = False
        for name in NODE_HOSTS:
            await self.kill(name)

    async def all_up(self, *, restart: bool) -> None:
        """Every paused node resumed, every node running (on a host with power)."""
        for name in list(self.stopped):
            await self.cont(name)
        self.restart = restart
        for host in NODE_HOSTS:
            if host not in self.lab.powered_off:
                await self.ensure_running(host)

    async def heal_hosts(self) -> None:
        """Every host's fault healed: power back, NICs up, no partition, keepalived running."""
        for host in sorted(self.lab.powered_off):
            await self.power(host, on=True)
        for host in sorted(self._nics_down):
            await self.nic(host, up=True)
        await self.heal()
        for host in NODE_HOSTS:
            if not self.lab.is_running(host, "keepalived"):
                await self._in_lab(self.lab.start_process, host, "keepalived")

    async def switchover(self, to: str) -> None:
        """keepalived on the other host stops gracefully (the VIP goes to ``to`` at once), the
        switchover is asked of the store, and that keepalived starts again as BACKUP."""
        other = "B" if to == "A" else "A"
        await self._in_lab(self.lab.stop_keepalived, other)
        await super().switchover(to)
        await self._in_lab(self.lab.start_process, other, "keepalived")

    # -- the faults of hosts (the steps of ``_host_steps``) ------------------------------------

    def powered_off(self) -> list[str]:
        """The hosts without power now."""
        return sorted(self.lab.powered_off)

    async def power(self, host: str, *, on: bool) -> None:
        frozen = self.run._setup.frozen
        if on:
            await self._in_lab(self.lab.power_on, host)
            frozen.discard(host)
            return
        # Frozen only between two reads of the lease: a read of a frozen database never ends.
        async with self.lease_reads:
            frozen.add(host)
            await self._in_lab(self.lab.power_off, host)

    async def nic(self, host: str, *, up: bool) -> None:
        await self._in_lab(lambda: self.lab.nic(host, up=up))
        (self._nics_down.discard if up else self._nics_down.add)(host)

    async def partition(self, a: str, b: str) -> None:
        await self._in_lab(self.lab.partition, a, b)

    async def heal(self) -> list[str]:
        return await self._in_lab(self.lab.heal)

    async def kill_keepalived(self, host: str) -> list[int]:
        return await self._in_lab(self.lab.kill_keepalived, host)

    def starts(self) -> dict[str, int]:
        return dict(self._starts)

    def crashes(self) -> int:
        """Nodes that ended by themselves (``crashed``), from the exit statuses the lab recorded."""
        return sum(1 for host in NODE_HOSTS for code in self.lab.node_exits(host) if crashed(code))


def crashed(status: int) -> bool:
    """A node's exit status (a shell's: 128 + N for signal N) that no one asked for: not SIGKILL
    (this run, STONITH), not SIGTERM or SIGINT (the lab's ``down``), not a clean exit."""
    return status not in {0, 128 + signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGINT}
