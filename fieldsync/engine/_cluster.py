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

Here: ``ClusterNode``, the active side (serving, keeping the lease). Around it:
``_standby.py`` (waiting for the lease), ``_beats.py`` (the heartbeat threads),
``_processes.py`` (STONITH, the holder's pid, VRRP), ``_cluster_settings.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from protocol.streams import LinkError
from storage import LeaseStoreInterface, NodeBeat, StoreError, open_cluster_store

from ._beats import _Ears, _Heart
from ._cluster_settings import ClusterSettings, Role, _now_us
from ._failover import ActiveView, HandOver, KeepServing, LeaveVip, StepDown, decide_active
from ._node import Node, NodeSettings
from ._parking import ParkingLot
from ._processes import _vrrp_words
from ._standby import _StandbyLoop

if TYPE_CHECKING:
    from ._mirrored import MirrorAction, MirrorLook

__all__ = ["ClusterNode"]

log = logging.getLogger("fieldsync.cluster")


class ClusterNode(_StandbyLoop):
    """One node of the pair. ``run`` alternates standby and active until cancelled.

    ``node_class`` and ``_step_down`` are the seams of the harness's broken builds.
    """

    node_class: ClassVar[type[Node]] = Node

    def __init__(self, settings: ClusterSettings, *, now_us: Callable[[], int] = _now_us) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self._now_us = now_us
        self._limiter = trio.CapacityLimiter(1)
        self.cluster: LeaseStoreInterface | None = None
        self.role = Role.STANDBY
        self.epoch = 0
        self.node: Node | None = None
        self.takeovers = 0
        self.fenced_count = 0
        self.stonith_kills = 0
        self.lock_waits = 0
        self.store_errors = 0
        self.became_active = trio.Event()
        #: The park address's sessions while standing by (docs/protocol.md 6.3); None: no parking.
        self.lot: ParkingLot | None = ParkingLot(settings) if settings.park is not None else None
        self._standby_since = time.monotonic()
        #: (pid, pidfd) of the lease holder's process while standing by; no fd without pidfds.
        self._watched: tuple[int, int | None] | None = None
        #: Set when the active stopped because its host left VRRP MASTER: release the lease after.
        self._left_vip = False
        #: Set while an active is stopping (fenced, stepped down, left the VIP): on mirrored
        #: storage its sessions' commits still waiting for a standby that is gone are ended.
        self._stopping = trio.Event()
        #: Takeovers the witness refused (this node not in sync by its record), and errors.
        self.witness_refusals = 0

    def __repr__(self) -> str:
        return f"<ClusterNode {self.node_id} {self.role.value} epoch {self.epoch}>"

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
        if self.settings.mirror is not None:
            # A stale primary rejoins before it opens anything; a node whose own database does
            # not answer yet (starting, being rewound) waits for it rather than exiting.
            await self._settle_mirror()
            while self.mirror_state == "down":
                await trio.sleep(0.5)
                await self._settle_mirror()
        self.cluster = await self._db(open_cluster_store, self.settings.db)
        self.heart = _Heart(self)
        self.ears = _Ears(self, self.settings.address, self.settings.beat_port)
        self._started = time.monotonic()
        self.heart.start()
        self.ears.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick)
                if self.settings.mirror is not None:
                    nursery.start_soon(self._end_stuck_commits)
                    if self.settings.witness is not None:
                        nursery.start_soon(self._keep_mirror)
                if self.lot is not None:
                    await nursery.start(self.lot.run)
                task_status.started()
                while True:
                    self.role = Role.STANDBY
                    self._standby_since = time.monotonic()
                    epoch = await self._stand_by()
                    await self._serve(epoch)
        finally:
            self._unwatch()
            self.heart.stop.set()
            self.ears.stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.heart.join)
                await trio.to_thread.run_sync(self.ears.join)
                await self._db(self.cluster.close)

    async def _keep_mirror(self) -> None:
        """With a witness, wherever this node's database is the primary (serving or not: a
        primary whose node stood down must still count its rejoined standby back, or neither
        node may serve): go on alone once the witness took the standby out of sync (it can
        then never promote), and count it in sync again once it has caught up
        (``_mirrored.decide_mirror``). Every beat; a witness or database that does not answer
        changes nothing (the pair stays strict)."""
        from storage.postgres import MirrorError

        from ._mirrored import _peer, act_on_mirror, look_at_mirror
        from ._witness import WitnessError

        s = self.settings
        peer, _ = _peer(s)
        grace = max(0.5, s.dead_after)
        mark: int | None = None  # the primary's WAL once the standby was waited for again
        degraded_at: float | None = None
        stamp: tuple[float | None, float] = (None, time.monotonic())  # the last reply, when first seen
        errors = 0
        while True:
            await trio.sleep(s.beat_interval)
            try:
                # Not through the store's limiter: the commits that wait may be holding it.
                look = await trio.to_thread.run_sync(look_at_mirror, s)
                now = time.monotonic()
                if look.reply_stamp != stamp[0]:
                    stamp = (look.reply_stamp, now)
                look = dataclasses.replace(
                    look, reply_age=now - stamp[1] if look.reply_stamp is not None else float("inf")
                )
                if not (look.listed and look.in_sync) or peer in look.record.in_sync:
                    mark = None
                action = self._mirror_action(
                    look,
                    me=self.node_id,
                    peer=peer,
                    grace=grace,
                    mark=mark,
                    since_degrade=now - degraded_at if degraded_at is not None else None,
                )
                if action == "mark":
                    mark = look.current_lsn
                elif action != "none":
                    acted = await trio.to_thread.run_sync(act_on_mirror, s, look, action)
                    if action == "degrade" and acted:
                        degraded_at = time.monotonic()
                errors = 0
            except (WitnessError, MirrorError) as exc:
                errors += 1
                if errors in (1, 10) or errors % 100 == 0:
                    log.error("node %s: keeping its mirror: %s (%d times)", self.node_id, exc, errors)

    def _mirror_action(self, look: MirrorLook, **given: Any) -> MirrorAction:
        """``decide_mirror`` (a seam of the harness's broken builds)."""
        from ._mirrored import decide_mirror

        return decide_mirror(look, **given)

    async def _end_stuck_commits(self) -> None:
        """While an active stops on mirrored storage: end its commits that wait for the
        standby (they return not replicated: never acknowledged), every beat until it has
        stopped. Otherwise each waits out its ``commit_timeout`` before the node can stand by
        and see that its database is the stale primary (found on the lab's hosts: a node back
        from a power loss took 20 s to rejoin)."""
        from storage.postgres import MirrorError, cancel_sync_waits

        while True:
            await self._stopping.wait()
            try:
                # Not through the store's limiter: the commits to end may be holding it.
                ended = await trio.to_thread.run_sync(
                    lambda: cancel_sync_waits(str(self.settings.db), what=f"node {self.node_id}'s database")
                )
            except MirrorError:
                ended = 0
            if ended:
                log.warning("node %s: ended %d commits waiting for the standby (not acknowledged)", self.node_id, ended)
            await trio.sleep(self.settings.beat_interval)

    async def _stand_by(self) -> int:
        """``_wait_for_lease``, with the park address open meanwhile when this node parks."""
        if self.lot is None:
            return await self._wait_for_lease()
        async with trio.open_nursery() as standby:
            standby.start_soon(self._keep_parking)
            epoch = await self._wait_for_lease()
            standby.cancel_scope.cancel()
        return epoch

    async def _keep_parking(self) -> None:
        """The park listener, bound again every 5 s while its address is taken: parking only
        saves the panels a set-up, so a standby without it still stands by."""
        assert self.lot is not None
        said = False
        while True:
            try:
                await self.lot.listening()
            except LinkError as exc:
                if not said:
                    log.warning("node %s: standing by without parking: %s; binding again every 5 s", self.node_id, exc)
                    said = True
                await trio.sleep(5)

    async def _tick(self) -> None:
        while True:
            self.heart.loop_tick = time.monotonic()
            await trio.sleep(self.settings.beat_interval)

    # -- active ------------------------------------------------------------------------

    async def _serve(self, epoch: int) -> None:
        s = self.settings
        self.epoch = epoch
        self.role = Role.ACTIVE
        self.takeovers += 1
        log.warning("node %s is active with epoch %d", self.node_id, epoch)
        self.heart.renewed_at = time.monotonic()
        node = self.node_class(
            NodeSettings(
                node_id=self.node_id,
                db=s.db,
                listen=(s.vip, s.port),
                dial=s.dial,
                tls=s.tls,
                heartbeat_ms=s.heartbeat_ms,
                idle_ms=s.idle_ms,
                ingest=s.ingest,
                materialize_idle=s.materialize_idle,
                max_log_age=s.max_log_age,
                max_log_lag=s.max_log_lag,
                epoch=epoch,
                bind_retry=float("inf"),  # a zombie may hold the VIP until it wakes
                known_panels=s.known_panels,
            )
        )
        if self.lot is not None:
            node.adopt(await self.lot.hand_over())
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
            self._stopping.set()
            nursery.cancel_scope.cancel()
        self._stopping = trio.Event()
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
        rules = self._rules()
        while True:
            await trio.sleep(s.beat_interval)
            view = ActiveView(
                lease_lost=heart.lost_epoch == self.epoch,
                switchover_to=heart.requested_switchover(),
                vrrp_master=self._vrrp_master(),
                unrenewed_for=time.monotonic() - heart.renewed_at if s.mirror is not None else None,
                lease=s.lease,
            )
            match decide_active(view, rules):
                case StepDown():
                    if view.unrenewed_for is not None and view.unrenewed_for > view.lease:
                        log.warning(
                            "node %s could not renew its lease for %.1f s (its database confirmed no commit)",
                            self.node_id,
                            view.unrenewed_for,
                        )
                    if self._step_down(node):
                        return
                case LeaveVip():
                    log.warning(
                        "node %s: its host is no longer VRRP MASTER (%s): stops serving at once",
                        self.node_id,
                        _vrrp_words(s),
                    )
                    self._left_vip = True
                    self._stopping.set()
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
            "parked": len(self.lot.parked) if self.lot is not None else 0,
            "stored": stats.events_stored if stats else 0,
        }
