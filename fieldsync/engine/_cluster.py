"""Two sync-engine nodes behind one virtual IP: lease, epoch fencing, STONITH, switchover.

On the embedded default the VIP is a loopback address and "holding" it means
being bound to VIP:30002. The lease and the epoch live in one row of the shared
store, so taking over always raises the epoch (the fencing token) in the same
transaction. A standby takes over when the active's heartbeats stop (its UDP
beats and its heartbeat row in the store: a lost link alone is not death) and either
its lease has expired or STONITH has killed it (on one machine: SIGKILL of the
pid the lease records, after checking it is a fieldsync process). With STONITH
off, a paused active keeps VIP:30002 until it wakes, finds its lease gone and
steps down; meanwhile epoch fencing keeps it from storing or being believed.

A holder whose process has exited (kill -9, a crash) is dead without waiting for
its silence: with STONITH on, the node already relies on the lease's pid being a
process on this machine, and a process that no longer exists can neither store
nor hold the VIP. The standby watches that pid (a Linux pidfd, else /proc on
every look) and takes over the moment it is gone.

With VRRP (``vrrp_state`` / ``vrrp_pid``: the lab's keepalived on real hosts) the VIP is
keepalived's to move: the node looks at its host's VRRP state every beat and serves only
while the host is MASTER (``_failover.py`` has the rule).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import trio

from protocol.streams import LinkError, TlsFiles
from storage import ClusterStore, Lease, NodeBeat, StoreError, StoreLocked

from ._failover import (
    ActiveView,
    FailoverRules,
    HandOver,
    HolderProcess,
    KeepServing,
    LeaveVip,
    ReadStoreBeat,
    RequestFailback,
    StandbyView,
    StepDown,
    Stonith,
    Take,
    Wait,
    beats_allowed,
    decide_active,
    decide_standby,
)
from ._node import Node, NodeSettings

__all__ = [
    "ClusterNode",
    "ClusterSettings",
    "Role",
    "process_is_fieldsync",
    "stonith",
    "vrrp_master",
]

log = logging.getLogger("fieldsync.cluster")
T = TypeVar("T")


def _pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when ``pid`` exits (Linux 5.3+); None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds here, or the process is already gone
        return None


class Role(enum.Enum):
    STANDBY = "standby"
    ACTIVE = "active"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    node_id: str
    #: This node's own address (127.0.0.11 / .12 on loopback).
    address: str
    db: Path
    vip: str = "127.0.0.100"
    port: int = 30002
    dial: tuple[tuple[int, str, int], ...] = ()
    tls: TlsFiles | None = None
    heartbeat_ms: int = 1000
    #: Node-to-node heartbeat (through the shared store) and lease timing.
    beat_interval: float = 0.1
    dead_after: float = 0.3
    lease: float = 1.0
    stonith: bool = True
    #: Take the VIP back from the other node when this one is back and in sync.
    failback: bool = False
    #: How long a returning node must have been a healthy standby before failback.
    failback_after: float = 3.0
    #: Stop heartbeating if this node's own event loop has not run for this long.
    loop_stall: float = 5.0
    #: The other nodes' (name, address); heartbeats go to them as UDP datagrams.
    peers: tuple[tuple[str, str], ...] = ()
    #: UDP port of the node-to-node heartbeat (each node listens on its own address).
    beat_port: int = 30007
    #: The site's panels; others are refused with UNKNOWN_PANEL (None admits any certified panel).
    known_panels: frozenset[int] | None = None
    #: VRRP: the file keepalived's notify script writes the state to, and the pid file of
    #: keepalived's VRRP process. Set, the node serves only while its host is MASTER.
    vrrp_state: Path | None = None
    vrrp_pid: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.beat_interval < self.dead_after <= self.lease:
            raise ValueError("need 0 < beat_interval < dead_after <= lease")
        if (self.vrrp_state is None) != (self.vrrp_pid is None):
            raise ValueError("vrrp_state and vrrp_pid go together")


def _now_us() -> int:
    return time.time_ns() // 1000


def process_is_fieldsync(pid: int) -> bool:
    """True if ``pid`` is alive (not a zombie) and runs fieldsync."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z" and b"fieldsync" in cmdline


def vrrp_master(state_file: Path, pid_file: Path) -> bool:
    """True if keepalived's state file says MASTER and the keepalived process of its pid file runs.

    Two small reads and a /proc look, cheap enough for every beat. A keepalived killed with
    SIGKILL leaves both MASTER in the file and the VIP on the interface: it is not MASTER.
    """
    try:
        if state_file.read_text().strip() != "MASTER":
            return False
        pid = int(pid_file.read_text().split()[0])
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError, IndexError):
        return False
    return state != b"Z" and b"keepalived" in cmdline


def stonith(pid: int, *, timeout: float = 2.0) -> bool:
    """SIGKILL a fieldsync node process and wait until it is gone; False if it was not one."""
    if pid == os.getpid() or not process_is_fieldsync(pid):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while process_is_fieldsync(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} survived SIGKILL for {timeout} s")
        time.sleep(0.005)
    return True


def _vrrp_words(s: ClusterSettings) -> str:
    """What the VRRP files say, for the log: the state file's word and whether keepalived runs."""
    assert s.vrrp_state is not None and s.vrrp_pid is not None
    try:
        state = s.vrrp_state.read_text().strip()
    except OSError as exc:
        state = f"no state file: {exc.strerror}"
    try:
        pid = int(s.vrrp_pid.read_text().split()[0])
        alive = "keepalived runs" if os.path.exists(f"/proc/{pid}") else f"keepalived pid {pid} is gone"
    except (OSError, ValueError, IndexError):
        alive = "no keepalived pid file"
    return f"state file says {state}, {alive}"


class _Heart(threading.Thread):
    """Beats (and, while active, renews the lease) from its own OS thread.

    A node busy with a thousand TLS handshakes can leave its event loop slow for
    a second; a heartbeat written from that loop then looks like death and the
    standby shoots a healthy node. This thread keeps time on its own, and stops
    beating if the event loop itself stalls (``loop_stall``), so a wedged node
    still looks dead.
    """

    def __init__(self, owner: ClusterNode) -> None:
        super().__init__(name=f"fieldsync-heart-{owner.node_id}", daemon=True)
        self.owner = owner
        self.loop_tick = time.monotonic()
        self.stop = threading.Event()
        #: Set when a renewal found the lease taken (another epoch): the active must step down.
        self.lost_epoch = 0
        self.switchover_to: str | None = None
        self.locked = 0
        self.store_errors = 0

    def requested_switchover(self) -> str | None:
        return self.switchover_to

    def run(self) -> None:
        owner, s = self.owner, self.owner.settings
        # Long enough to get between our own group commits; short enough to beat on time.
        store = ClusterStore(s.db, busy_timeout=s.dead_after / 2)
        lease_us = int(s.lease * 1e6)
        try:
            while True:
                if not beats_allowed(time.monotonic(), self.loop_tick, s.loop_stall):
                    # The event loop is wedged: let the peer see us as dead.
                    if self.stop.wait(s.beat_interval):
                        return
                    continue
                role, epoch = owner.role, owner.epoch
                try:
                    if role is Role.ACTIVE and epoch and self.lost_epoch != epoch:
                        lease = store.renew(owner.node_id, epoch, now_us=owner._now_us(), lease_us=lease_us)
                        if lease is None:
                            self.lost_epoch = epoch
                        else:
                            self.switchover_to = lease.switchover_to
                    store.beat(owner._beat())
                except StoreLocked:
                    self.locked += 1
                except StoreError as exc:
                    # A full disk, a store gone: this beat and renewal failed; the thread lives on
                    # and tries again (dying here would stop the beats of a node that still serves).
                    self.store_errors += 1
                    if self.store_errors in (1, 10) or self.store_errors % 100 == 0:
                        log.error(
                            "node %s: cannot beat or renew the lease (%d times): %s",
                            owner.node_id,
                            self.store_errors,
                            exc,
                        )
                if self.stop.wait(s.beat_interval):
                    return
        finally:
            store.close()


class _Ears(threading.Thread):
    """Sends this node's UDP heartbeats and notes when each peer's was last heard.

    Nothing here touches the store, so a busy write lock cannot delay a beat.
    """

    def __init__(self, owner: ClusterNode, address: str, port: int) -> None:
        super().__init__(name="fieldsync-ears", daemon=True)
        self.owner = owner
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((address, port))
        except OSError as exc:
            self.sock.close()
            raise LinkError(f"node heartbeat: cannot bind UDP {address}:{port}: {exc.strerror}") from exc
        self.heard: dict[str, float] = {}
        self.stop = threading.Event()
        self._next_send = 0.0

    def _send(self) -> None:
        owner = self.owner
        s = owner.settings
        if not beats_allowed(time.monotonic(), owner.heart.loop_tick, s.loop_stall):
            return  # this node's event loop is wedged: let the peer see it as dead
        payload = json.dumps(
            {"node": owner.node_id, "pid": os.getpid(), "role": owner.role.value, "epoch": owner.epoch}
        ).encode()
        for _, address in s.peers:
            with contextlib.suppress(OSError):  # the peer's host is down: what heartbeats are for
                self.sock.sendto(b"FSHB" + payload, (address, s.beat_port))

    def run(self) -> None:
        interval = self.owner.settings.beat_interval
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= self._next_send:
                    self._send()
                    self._next_send = now + interval
                self.sock.settimeout(max(0.001, self._next_send - now))
                try:
                    data, _ = self.sock.recvfrom(512)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data.startswith(b"FSHB"):
                    continue
                try:
                    node = str(json.loads(data[4:])["node"])
                except (ValueError, KeyError, TypeError):
                    continue
                self.heard[node] = time.monotonic()
        finally:
            self.sock.close()

    def silent_for(self, node: str) -> float | None:
        heard = self.heard.get(node)
        return None if heard is None else time.monotonic() - heard


class ClusterNode:
    """One node of the pair. ``run`` alternates standby and active until cancelled.

    ``node_class`` and ``_step_down`` are the seams of the harness's broken builds.
    """

    node_class: ClassVar[type[Node]] = Node

    def __init__(self, settings: ClusterSettings, *, now_us: Callable[[], int] = _now_us) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self._now_us = now_us
        self._limiter = trio.CapacityLimiter(1)
        self.cluster: ClusterStore | None = None
        self.role = Role.STANDBY
        self.epoch = 0
        self.node: Node | None = None
        self.takeovers = 0
        self.fenced_count = 0
        self.stonith_kills = 0
        self.lock_waits = 0
        self.store_errors = 0
        self.became_active = trio.Event()
        self._standby_since = time.monotonic()
        #: (pid, pidfd) of the lease holder's process while standing by; no fd without pidfds.
        self._watched: tuple[int, int | None] | None = None
        #: Set when the active stopped because its host left VRRP MASTER: release the lease after.
        self._left_vip = False

    def __repr__(self) -> str:
        return f"<ClusterNode {self.node_id} {self.role.value} epoch {self.epoch}>"

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    def _beat(self) -> NodeBeat:
        return NodeBeat(
            node_id=self.node_id,
            pid=os.getpid(),
            address=self.settings.address,
            role=self.role.value,
            epoch=self.epoch,
            heartbeat_us=self._now_us(),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.cluster = await self._db(ClusterStore, self.settings.db)
        self.heart = _Heart(self)
        self.ears = _Ears(self, self.settings.address, self.settings.beat_port)
        self._started = time.monotonic()
        self.heart.start()
        self.ears.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick)
                task_status.started()
                while True:
                    self.role = Role.STANDBY
                    self._standby_since = time.monotonic()
                    epoch = await self._wait_for_lease()
                    await self._serve(epoch)
        finally:
            self._unwatch()
            self.heart.stop.set()
            self.ears.stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.heart.join)
                await trio.to_thread.run_sync(self.ears.join)
                await self._db(self.cluster.close)

    async def _tick(self) -> None:
        while True:
            self.heart.loop_tick = time.monotonic()
            await trio.sleep(self.settings.beat_interval)

    # -- standby ---------------------------------------------------------------------

    async def _wait_for_lease(self) -> int:
        """Stand by until this node holds the lease; return its new epoch.

        Each round gathers what ``decide_standby`` needs and carries out its answer.
        """
        s = self.settings
        assert self.cluster is not None
        rules = FailoverRules(
            node_id=self.node_id,
            stonith=s.stonith,
            failback=s.failback,
            beat_interval=s.beat_interval,
            dead_after=s.dead_after,
            failback_after=s.failback_after,
        )
        lease_us = int(s.lease * 1e6)
        while True:
            lease = await self._db(self.cluster.lease)
            view = StandbyView(
                now_us=self._now_us(),
                lease=lease,
                holder_process=self._holder_process(lease),
                udp_quiet=self._udp_quiet(lease),
                standby_for=time.monotonic() - self._standby_since,
                vrrp_master=self._vrrp_master(),
            )
            decision = decide_standby(view, rules)
            if isinstance(decision, ReadStoreBeat):
                row = (await self._db(self.cluster.nodes)).get(lease.holder or "")
                age = None if row is None else (view.now_us - row.heartbeat_us) / 1e6
                view = dataclasses.replace(view, store_read=True, store_beat_age=age)
                decision = decide_standby(view, rules)
            if isinstance(decision, Stonith):
                log.warning(
                    "node %s: STONITH of %s (pid %d), silent since its last beat",
                    self.node_id,
                    lease.holder,
                    decision.pid,
                )
                if await trio.to_thread.run_sync(stonith, decision.pid):
                    self.stonith_kills += 1
                view = dataclasses.replace(view, holder_process=self._holder_process(lease))
                decision = decide_standby(view, rules)
            look_again_in = s.beat_interval
            match decision:
                case Take(force=force):
                    if force and view.holder_process is HolderProcess.GONE:
                        log.warning("node %s: %s (pid %s) has exited", self.node_id, lease.holder, lease.holder_pid)
                    try:
                        epoch = await self._db(
                            self.cluster.acquire,
                            self.node_id,
                            pid=os.getpid(),
                            address=s.address,
                            now_us=self._now_us(),
                            lease_us=lease_us,
                            force=force,
                        )
                    except StoreError as exc:  # locked by a sleeper, or full: look again later
                        self._note_store_error(exc)
                        epoch = None
                    if epoch is not None:
                        self._unwatch()
                        return epoch
                case RequestFailback(look_again_in=look_again_in):
                    # Back and in sync (shared store: always) for long enough: ask for the VIP back.
                    log.warning("node %s asks for failback", self.node_id)
                    try:
                        await self._db(self.cluster.request_switchover, self.node_id)
                    except StoreError as exc:
                        self._note_store_error(exc)
                case Wait(look_again_in=look_again_in):
                    pass
                case Stonith():  # still running after SIGKILL and its wait: look again
                    pass
            await self._nap(look_again_in, lease)

    def _vrrp_master(self) -> bool | None:
        s = self.settings
        if s.vrrp_state is None or s.vrrp_pid is None:
            return None
        return vrrp_master(s.vrrp_state, s.vrrp_pid)

    def _holder_process(self, lease: Lease) -> HolderProcess:
        """With STONITH (pids are this machine's): is the holder's process running?"""
        pid = lease.holder_pid
        if not self.settings.stonith or pid is None:
            return HolderProcess.UNKNOWN
        if pid == os.getpid() or process_is_fieldsync(pid):
            return HolderProcess.ALIVE
        return HolderProcess.GONE

    def _udp_quiet(self, lease: Lease) -> float:
        """Seconds since the holder's last UDP beat (since we started listening if never heard)."""
        if lease.holder is None:
            return 0.0
        quiet = self.ears.silent_for(lease.holder)
        return time.monotonic() - self._started if quiet is None else quiet

    async def _nap(self, seconds: float, lease: Lease) -> None:
        """Sleep until the next look, or until the holder's process exits if that comes first."""
        pid = lease.holder_pid if self.settings.stonith and lease.holder != self.node_id else None
        if self._watched is not None and self._watched[0] != pid:
            self._unwatch()
        if self._watched is None and pid is not None:
            self._watched = (pid, _pidfd(pid))
        fd = self._watched[1] if self._watched is not None else None
        if fd is None:
            await trio.sleep(seconds)
            return
        with trio.move_on_after(seconds):
            await trio.lowlevel.wait_readable(fd)  # a pidfd turns readable when its process exits

    def _unwatch(self) -> None:
        watched, self._watched = self._watched, None
        if watched is not None and watched[1] is not None:
            trio.lowlevel.notify_closing(watched[1])
            os.close(watched[1])

    # -- active ------------------------------------------------------------------------

    async def _serve(self, epoch: int) -> None:
        s = self.settings
        self.epoch = epoch
        self.role = Role.ACTIVE
        self.takeovers += 1
        log.warning("node %s is active with epoch %d", self.node_id, epoch)
        node = self.node_class(
            NodeSettings(
                node_id=self.node_id,
                db=s.db,
                listen=(s.vip, s.port),
                dial=s.dial,
                tls=s.tls,
                heartbeat_ms=s.heartbeat_ms,
                epoch=epoch,
                bind_retry=float("inf"),  # a zombie may hold the VIP until it wakes
                known_panels=s.known_panels,
            )
        )
        self.node = node
        self._left_vip = False
        async with trio.open_nursery() as nursery:
            # Renew from the start: binding the VIP may wait for a zombie to let go of it.
            nursery.start_soon(self._keep_lease, node, nursery.cancel_scope)
            await nursery.start(node.run)
            self.became_active.set()
            await node.fenced.wait()
            self.fenced_count += 1
            log.warning("node %s fenced at epoch %d: stepping down", self.node_id, epoch)
            nursery.cancel_scope.cancel()
        self.node = None
        self.became_active = trio.Event()
        if self._left_vip:
            # Stopped serving first; now the lease, so the new MASTER takes it without waiting for expiry.
            assert self.cluster is not None
            try:
                released = await self._db(self.cluster.release, self.node_id, epoch)
            except StoreError as exc:
                self._note_store_error(exc)
                released = False
            log.warning("node %s %s the lease (epoch %d)", self.node_id, "released" if released else "lost", epoch)

    async def _keep_lease(self, node: Node, scope: trio.CancelScope) -> None:
        """Watch what the heart thread learns while renewing: a lost lease, a switchover."""
        s = self.settings
        assert self.cluster is not None
        heart = self.heart
        heart.switchover_to = None
        rules = FailoverRules(
            node_id=self.node_id,
            stonith=s.stonith,
            failback=s.failback,
            beat_interval=s.beat_interval,
            dead_after=s.dead_after,
            failback_after=s.failback_after,
        )
        while True:
            await trio.sleep(s.beat_interval)
            view = ActiveView(
                lease_lost=heart.lost_epoch == self.epoch,
                switchover_to=heart.requested_switchover(),
                vrrp_master=self._vrrp_master(),
            )
            match decide_active(view, rules):
                case StepDown():
                    if self._step_down(node):
                        return
                case LeaveVip():
                    log.warning(
                        "node %s: its host is no longer VRRP MASTER (%s): stops serving at once",
                        self.node_id,
                        _vrrp_words(s),
                    )
                    self._left_vip = True
                    scope.cancel()  # the sessions go with the VIP; no BYE to panels we cannot reach
                    return
                case HandOver(to=hand_to):
                    log.warning("node %s hands the VIP to %s (switchover)", self.node_id, hand_to)
                    node.stop()  # drain, acknowledge, BYE(SHUTTING_DOWN): docs/protocol.md 10
                    with trio.move_on_after(node.settings.drain_timeout + 1):
                        await node.stopped.wait()
                    await self._db(self.cluster.release, self.node_id, self.epoch, hand_to=hand_to)
                    scope.cancel()
                    return
                case KeepServing():
                    pass

    def _step_down(self, node: Node) -> bool:
        """The lease was lost (another node holds a newer epoch): stop serving."""
        log.warning("node %s lost the lease (epoch %d): stepping down", self.node_id, self.epoch)
        node.fenced.set()
        return True

    def _note_store_error(self, exc: StoreError) -> None:
        if isinstance(exc, StoreLocked):
            self._note_locked(exc)
            return
        self.store_errors += 1
        if self.store_errors in (1, 10) or self.store_errors % 100 == 0:
            log.error("node %s: the store refused a cluster write (%d times): %s", self.node_id, self.store_errors, exc)

    def _note_locked(self, exc: StoreLocked) -> None:
        self.lock_waits += 1
        if self.lock_waits in (1, 10) or self.lock_waits % 100 == 0:
            log.error(
                "node %s: the shared store is write-locked by another process (%s); waiting%s",
                self.node_id,
                exc.cause,
                "" if self.settings.stonith else " (STONITH is off: only that process can free it)",
            )

    def status(self) -> dict[str, object]:
        stats = self.node.statistics() if self.node is not None else None
        return {
            "node": self.node_id,
            "role": self.role.value,
            "epoch": self.epoch,
            "takeovers": self.takeovers,
            "fenced": self.fenced_count,
            "stonith_kills": self.stonith_kills,
            "sessions": stats.sessions if stats else 0,
            "stored": stats.events_stored if stats else 0,
        }
