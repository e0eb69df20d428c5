"""The standby's failover decision and the heart's stall rule, as pure functions.

The trade-off first: a standby that takes over too eagerly shoots a live active (two
writers, a STONITH duel with the supervisor); one too cautious leaves the site without
a server. Everything the decision rests on is an observation passed in, with ``now``;
the threads and the trio loop around it (``_cluster.py``) only gather observations and
carry out what this returns, so every case is unit-tested at exact times
(``tests/test_failover_decision.py``), like the protocol's transition table.

Two rings, like a cluster's network and disk heartbeats: the holder is silent only if
its UDP beats AND its heartbeat row in the shared store have both been quiet for
``dead_after``. A lost heartbeat link alone (a partition between the nodes) must not
shoot a live, writing node.

With VRRP (keepalived moves the VIP between real hosts), a third observation gates both
roles: a node serves only while its host is MASTER, meaning keepalived's state file says
MASTER *and* keepalived runs (a SIGKILLed keepalived leaves MASTER in its file and the VIP
on the interface: a duplicate address the node must not serve on). A standby that is not
MASTER takes nothing, whatever the lease says; an active that stops being MASTER stops
serving and gives the lease up at once, so the new MASTER takes it without waiting for
silence or expiry. ``vrrp_master=None`` is a site without VRRP: the rule is absent.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TypeAlias

from storage import Lease

__all__ = [
    "ActiveDecision",
    "ActiveView",
    "FailoverRules",
    "HandOver",
    "HolderProcess",
    "KeepServing",
    "LeaveVip",
    "ReadStoreBeat",
    "RequestFailback",
    "StandbyDecision",
    "StandbyView",
    "StepDown",
    "Stonith",
    "Take",
    "Wait",
    "beats_allowed",
    "decide_active",
    "decide_standby",
]

#: How far past the holder's ``dead_after`` the standby looks again (a beat due at the limit).
_LOOK_MARGIN = 0.002


class HolderProcess(enum.Enum):
    """What this machine says of the lease holder's pid (only meaningful with STONITH)."""

    ALIVE = "alive"  # a running fieldsync process
    GONE = "gone"  # exited (or a zombie): dead for sure, no need to wait for silence
    UNKNOWN = "unknown"  # no pid in the lease, or STONITH is off (pids are not ours to judge)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverRules:
    node_id: str
    stonith: bool
    failback: bool
    beat_interval: float
    dead_after: float
    failback_after: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StandbyView:
    """What a standby has observed, at ``now_us`` (the store's clock) and monotonic seconds."""

    now_us: int
    lease: Lease
    holder_process: HolderProcess
    #: Seconds since the holder's last UDP beat (or since this node started listening).
    udp_quiet: float
    #: Seconds since the holder's heartbeat row in the store; None: no row. Only read,
    #: and so only given, once the UDP ring has been quiet for ``dead_after``.
    store_beat_age: float | None = None
    store_read: bool = False
    #: Seconds this node has been a healthy standby (failback waits for ``failback_after``).
    standby_for: float = 0.0
    #: This host is VRRP MASTER (state file and a live keepalived); None: the site has no VRRP.
    vrrp_master: bool | None = None
    #: Mirrored storage, this node's database a replica: seconds since the other node's last
    #: UDP beat (it beats only while its own database answers). None: not mirrored, or this
    #: node's database is a primary.
    peer_quiet: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    look_again_in: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReadStoreBeat:
    """The UDP ring is quiet: read the holder's heartbeat row, then decide again."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stonith:
    """Silent on both rings yet running: kill ``pid``, then decide again."""

    pid: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Take:
    """Acquire the lease under a new epoch; ``force`` over a holder judged dead."""

    force: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RequestFailback:
    """This node is back and settled: ask the holder to hand the VIP over."""

    look_again_in: float


StandbyDecision: TypeAlias = Wait | ReadStoreBeat | Stonith | Take | RequestFailback


def _holder_silence(view: StandbyView, rules: FailoverRules) -> float | None:
    """How long the holder has been silent on both rings; None: the UDP ring is quiet and its
    heartbeat row in the store must be read first (a lost link alone is not death)."""
    silence = view.udp_quiet
    if silence > rules.dead_after:
        if not view.store_read:
            return None
        if view.store_beat_age is not None:
            silence = min(silence, view.store_beat_age)
    return silence


def _vip_left_here(view: StandbyView, rules: FailoverRules) -> bool:
    """VRRP put the VIP on this host, and this node has stood by for longer than ``dead_after``
    since: the other node, gated by its host's BACKUP state, can never take the free lease, so
    this one must, promoting its replica (found on the lab's hosts: keepalived made the
    replica's host MASTER at a cold start, and neither node ever served). The wait keeps a
    moment when both hosts are MASTER (keepalived's own start, a few adverts) from promoting."""
    return view.vrrp_master is True and view.standby_for > rules.dead_after


def decide_standby(view: StandbyView, rules: FailoverRules) -> StandbyDecision:
    """What a standby does next, from what it observed."""
    lease, beat = view.lease, rules.beat_interval
    if view.vrrp_master is False:  # the VIP is on the other host (or nowhere): nothing to serve on
        return Wait(look_again_in=beat)
    free = lease.holder in (None, rules.node_id) or not lease.held_at(view.now_us)
    if lease.switchover_to == rules.node_id:
        return Take(force=False) if free else Wait(look_again_in=beat)  # the holder hands over by releasing
    if free:
        if lease.switchover_to is not None:
            return Wait(look_again_in=beat)
        if view.peer_quiet is not None and view.peer_quiet <= rules.dead_after and not _vip_left_here(view, rules):
            # Mirrored, on a replica, and the other node (beside the primary) is alive: a free
            # lease is its to take (a cold start, a restart); promoting here would split the pair.
            return Wait(look_again_in=beat)
        expired_holder = lease.holder not in (None, rules.node_id)  # it did not release: it ran out
        if expired_holder and rules.stonith and view.holder_process is HolderProcess.ALIVE and lease.holder_pid:
            # Its lease ran out while it still runs: if it is silent too (frozen, hung), fence
            # it before taking over, also after expiry. A holder frozen inside a write
            # transaction on the shared store locks every writer out until it dies (seen on
            # the lab's hosts, where this node may look only once its host is MASTER, after
            # the lease has run out). One that still beats is only slow: it will find the
            # lease taken and step down.
            silence = _holder_silence(view, rules)
            if silence is None:
                return ReadStoreBeat()
            if silence > rules.dead_after:
                return Stonith(pid=lease.holder_pid)
        return Take(force=False)
    if rules.stonith and view.holder_process is HolderProcess.GONE:
        return Take(force=True)
    silence = _holder_silence(view, rules)
    if silence is None:
        return ReadStoreBeat()
    if silence > rules.dead_after and rules.stonith:  # without STONITH only lease expiry frees it
        if view.holder_process is HolderProcess.ALIVE and lease.holder_pid is not None:
            return Stonith(pid=lease.holder_pid)
        return Take(force=True)
    look_again_in = beat
    if beat < silence <= rules.dead_after:  # a beat is missing: look again exactly when it is due
        look_again_in = min(beat, rules.dead_after - silence + _LOOK_MARGIN)
    if rules.failback and lease.switchover_to is None and view.standby_for >= rules.failback_after:
        return RequestFailback(look_again_in=look_again_in)
    return Wait(look_again_in=look_again_in)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ActiveView:
    """What an active node has observed since its last look (its heart thread renews the lease)."""

    #: A renewal found the lease under another epoch: someone else holds it now.
    lease_lost: bool
    #: A switchover request in the lease row (None: none).
    switchover_to: str | None
    #: This host is VRRP MASTER; None: the site has no VRRP.
    vrrp_master: bool | None = None
    #: Seconds since the last renewal that succeeded; None: not watched (the shared store,
    #: where a renewal fails only while the store is locked or full, and the standby's
    #: takeover shows it).
    unrenewed_for: float | None = None
    lease: float = 1.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class KeepServing:
    pass


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StepDown:
    """The lease is another's (a newer epoch): stop; there is nothing to release."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LeaveVip:
    """The host is no longer MASTER: stop serving at once (no drain: the VIP has gone), release the lease."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HandOver:
    """A switchover: drain, say BYE, release the lease reserved for ``to``."""

    to: str


ActiveDecision: TypeAlias = KeepServing | StepDown | LeaveVip | HandOver


def decide_active(view: ActiveView, rules: FailoverRules) -> ActiveDecision:
    """What an active does next: a lost lease first (fenced), then a lost MASTER, then a switchover."""
    if view.lease_lost:
        return StepDown()
    if view.unrenewed_for is not None and view.unrenewed_for > view.lease:
        # Its lease has run out by its own clock: on mirrored storage the commits that would
        # renew it are not confirmed (the mirror is gone), and the other node may be taking over.
        return StepDown()
    if view.vrrp_master is False:
        return LeaveVip()
    if view.switchover_to is not None and view.switchover_to != rules.node_id:
        return HandOver(to=view.switchover_to)
    return KeepServing()


def beats_allowed(now: float, loop_tick: float, loop_stall: float) -> bool:
    """A node whose own event loop has not run for ``loop_stall`` must look dead: no beats."""
    return now - loop_tick <= loop_stall
