"""A cluster node's standby side: the loop that waits for the lease, and what it looks at.

``ClusterNode`` (``_cluster``) inherits it; ``_failover.decide_standby`` makes
every decision, this loop only gathers what it needs and carries out the answer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from storage import Lease, LeaseStoreInterface, StoreError, StoreLocked

from ._beats import _Ears
from ._cluster_settings import ClusterSettings
from ._failover import (
    FailoverRules,
    HolderProcess,
    ReadStoreBeat,
    RequestFailback,
    StandbyView,
    Stonith,
    Take,
    Wait,
    decide_standby,
)
from ._processes import _pidfd, process_is_fieldsync, stonith, vrrp_master

__all__ = ["_StandbyLoop"]

log = logging.getLogger("fieldsync.cluster")
T = TypeVar("T")

#: Mirrored: how long a node on a replica that has never heard the other node waits, at its
#: start, before a free lease may be its (the other one, beside the primary, may be starting).
_PEER_START_GRACE = 2.0


class _StandbyLoop:
    """The standby half of ``ClusterNode``, which sets these attributes."""

    settings: ClusterSettings
    node_id: str
    cluster: LeaseStoreInterface | None
    #: Mirrored mode: where this node's database stands (``_mirrored.settle``); None: shared.
    mirror_state: str | None = None
    _settled_at: float = 0.0
    ears: _Ears
    stonith_kills: int
    lock_waits: int
    store_errors: int
    witness_refusals: int
    _now_us: Callable[[], int]
    _limiter: trio.CapacityLimiter
    _standby_since: float
    _started: float
    #: (pid, pidfd) of the lease holder's process while standing by; no fd without pidfds.
    _watched: tuple[int, int | None] | None

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    def _rules(self) -> FailoverRules:
        s = self.settings
        return FailoverRules(
            node_id=self.node_id,
            stonith=s.stonith,
            failback=s.failback,
            beat_interval=s.beat_interval,
            dead_after=s.dead_after,
            failback_after=s.failback_after,
        )

    async def _wait_for_lease(self) -> int:
        """Stand by until this node holds the lease; return its new epoch.

        Each round gathers what ``decide_standby`` needs and carries out its answer.
        """
        s = self.settings
        assert self.cluster is not None
        rules = self._rules()
        lease_us = int(s.lease * 1e6)
        while True:
            if s.mirror is not None and time.monotonic() - self._settled_at >= 1.0:
                await self._settle_mirror()
            try:
                lease = await self._db(self.cluster.lease)
            except StoreError as exc:
                # Its database restarting (a rejoin rewinds it), or gone for a moment: a standby
                # waits and reads again (the connection is opened anew), it does not exit.
                self._note_store_error(exc)
                await trio.sleep(s.beat_interval)
                continue
            view = StandbyView(
                now_us=self._now_us(),
                lease=lease,
                holder_process=self._holder_process(lease),
                udp_quiet=self._udp_quiet(lease),
                standby_for=time.monotonic() - self._standby_since,
                vrrp_master=self._vrrp_master(),
                peer_quiet=self._peer_quiet(),
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
                    if s.mirror is not None:
                        if self.mirror_state in ("diverged", "down"):
                            await self._nap(look_again_in, lease)  # the stale primary takes nothing
                            continue
                        if s.witness is not None and not await self._witness_grants():
                            await self._nap(look_again_in, lease)  # not in sync by the witness: no promotion
                            continue
                        try:
                            await self._db(self._promote_mirror)
                        except StoreError as exc:
                            self._note_store_error(exc)
                            await self._nap(look_again_in, lease)
                            continue
                        force = True  # the replica's lease is the old holder's, never renewed again
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

    async def _settle_mirror(self) -> None:
        """Mirrored mode: see where this node's database stands; a stale primary rejoins."""
        from storage.postgres import MirrorError

        from ._mirrored import settle

        self._settled_at = time.monotonic()
        try:
            self.mirror_state = await self._db(settle, self.settings)
        except MirrorError as exc:
            # Its own database does not answer, or a rejoin failed: take nothing this round.
            self.mirror_state = "down"
            self.store_errors += 1
            if self.store_errors in (1, 10) or self.store_errors % 100 == 0:
                log.error("node %s: %s", self.node_id, exc)

    async def _witness_grants(self) -> bool:
        """With a witness: may this node take over (promote its replica)? It may only while the
        witness lists it in sync, taking ``primary`` there first (``_mirrored.claim_primary``)."""
        from ._mirrored import claim_primary
        from ._witness import WitnessError

        try:
            refused = await self._db(claim_primary, self.settings)
        except WitnessError as exc:
            refused = str(exc)
        if refused is None:
            return True
        self.witness_refusals += 1
        if self.witness_refusals in (1, 10) or self.witness_refusals % 100 == 0:
            log.warning("node %s takes nothing: %s (%d times)", self.node_id, refused, self.witness_refusals)
        return False

    def _promote_mirror(self) -> None:
        from storage.postgres import MirrorError

        from ._mirrored import promote_own

        try:
            promote_own(self.settings)
        except MirrorError as exc:
            raise StoreError(str(self.settings.db), str(exc)) from None
        self.mirror_state = "primary"

    def _peer_quiet(self) -> float | None:
        """Mirrored, on a replica: seconds since the other node's last UDP beat."""
        if self.settings.mirror is None or self.mirror_state != "standby" or not self.settings.peers:
            return None
        peer = self.settings.peers[0][0]
        quiet = self.ears.silent_for(peer)
        if quiet is None:
            # Never heard since this node started: the other may still be starting (a cold
            # start of the pair); it counts as alive for a grace of 2 s first.
            return max(0.0, time.monotonic() - self._started - _PEER_START_GRACE)
        return quiet

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
