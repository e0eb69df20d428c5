"""The standby's failover decision at exact times, every case: no thread, no process, no sleep.

``decide_standby`` is a pure function of what a standby observed (the lease row, the
holder's beats on both rings, the holder's process state, a switchover request, how
long this node has stood by) and ``now``; ``ClusterNode`` only gathers and acts.
"""

from __future__ import annotations

import dataclasses

import pytest

from fieldsync.engine import (
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
from storage import Lease

NOW = 1_000_000_000  # us
RULES = FailoverRules(node_id="B", stonith=True, failback=False, beat_interval=0.1, dead_after=0.3, failback_after=3.0)


def lease(
    holder: str | None = "A", *, until_us: int = NOW + 500_000, pid: int | None = 4242, to: str | None = None
) -> Lease:
    return Lease(
        epoch=7, holder=holder, holder_pid=pid, holder_address="127.0.0.11", lease_until_us=until_us, switchover_to=to
    )


def view(**kw: object) -> StandbyView:
    fields: dict[str, object] = {
        "now_us": NOW,
        "lease": lease(),
        "holder_process": HolderProcess.ALIVE,
        "udp_quiet": 0.05,
        **kw,
    }
    return StandbyView(**fields)  # type: ignore[arg-type]


def test_a_free_lease_is_taken_without_force() -> None:
    assert decide_standby(view(lease=lease(None)), RULES) == Take(force=False)
    assert decide_standby(view(lease=lease(until_us=NOW)), RULES) == Take(force=False)  # expired at exactly now
    assert decide_standby(view(lease=lease("B")), RULES) == Take(force=False)  # our own old lease


def test_a_silent_holder_still_running_is_fenced_even_after_its_lease_ran_out() -> None:
    """On VRRP hosts the standby may look only once its host is MASTER, after the lease ran
    out; a holder frozen there may hold the shared store's write lock, so it is fenced
    first (as before expiry), and only a holder that still beats is left to step down."""
    expired = lease(until_us=NOW - 1)
    assert decide_standby(view(lease=expired, udp_quiet=2.0), RULES) == ReadStoreBeat()
    silent = view(lease=expired, udp_quiet=2.0, store_read=True, store_beat_age=2.0)
    assert decide_standby(silent, RULES) == Stonith(pid=4242)
    writing = view(lease=expired, udp_quiet=2.0, store_read=True, store_beat_age=0.05)
    assert decide_standby(writing, RULES) == Take(force=False)  # the heartbeat link is cut, not the holder
    gone = view(lease=expired, udp_quiet=2.0, holder_process=HolderProcess.GONE)
    assert decide_standby(gone, RULES) == Take(force=False)
    assert decide_standby(silent, dataclasses.replace(RULES, stonith=False)) == Take(force=False)


def test_on_a_replica_a_free_lease_is_left_to_the_live_node_beside_the_primary() -> None:
    """Mirrored storage: at a cold start (or a restart) both nodes see a free lease; the one on
    the replica promoting it while the other (beside the primary) beats would split the pair."""
    free = lease(None)
    assert decide_standby(view(lease=free, peer_quiet=0.05), RULES) == Wait(look_again_in=0.1)
    assert decide_standby(view(lease=free, peer_quiet=0.5), RULES) == Take(force=False)  # silent: take it
    assert decide_standby(view(lease=free, peer_quiet=None), RULES) == Take(force=False)  # not on a replica
    handed = lease(None, to="B")  # a switchover to this node goes ahead whoever beats
    assert decide_standby(view(lease=handed, peer_quiet=0.05), RULES) == Take(force=False)


def test_on_a_replica_whose_host_vrrp_made_master_the_free_lease_is_taken_after_a_while() -> None:
    """The other node, beside the primary, is alive but its host is BACKUP: it can never serve,
    so the node that has the VIP promotes its replica, once it has stood by past dead_after
    (both hosts are MASTER for a few adverts when keepalived starts: no promotion then)."""
    free = lease(None)
    settled = view(lease=free, peer_quiet=0.05, vrrp_master=True, standby_for=RULES.dead_after + 0.1)
    assert decide_standby(settled, RULES) == Take(force=False)
    starting = dataclasses.replace(settled, standby_for=RULES.dead_after / 2)
    assert decide_standby(starting, RULES) == Wait(look_again_in=0.1)
    no_vrrp = dataclasses.replace(settled, vrrp_master=None)  # loopback: the peer can serve, leave it
    assert decide_standby(no_vrrp, RULES) == Wait(look_again_in=0.1)


def test_a_lease_held_one_microsecond_more_is_not_free() -> None:
    assert decide_standby(view(lease=lease(until_us=NOW + 1)), RULES) == Wait(look_again_in=0.1)


def test_a_switchover_to_this_node_waits_for_the_holder_to_release() -> None:
    assert decide_standby(view(lease=lease(to="B")), RULES) == Wait(look_again_in=0.1)
    assert decide_standby(view(lease=lease(until_us=NOW, to="B")), RULES) == Take(force=False)


def test_a_free_lease_promised_to_the_other_node_is_left_to_it() -> None:
    assert decide_standby(view(lease=lease(until_us=NOW, to="C")), RULES) == Wait(look_again_in=0.1)


def test_a_holder_whose_process_exited_is_dead_at_once() -> None:
    assert decide_standby(view(holder_process=HolderProcess.GONE, udp_quiet=0.0), RULES) == Take(force=True)


def test_without_stonith_an_exited_pid_means_nothing_and_only_expiry_frees_the_lease() -> None:
    rules = dataclasses.replace(RULES, stonith=False)
    gone = view(holder_process=HolderProcess.GONE, udp_quiet=9.0, store_read=True, store_beat_age=9.0)
    assert decide_standby(gone, rules) == Wait(look_again_in=0.1)
    assert decide_standby(dataclasses.replace(gone, lease=lease(until_us=NOW)), rules) == Take(force=False)


@pytest.mark.parametrize(
    ("quiet", "look"),
    [(0.05, 0.1), (0.1, 0.1), (0.25, 0.052), (0.3, 0.002)],
    ids=["fresh", "one beat", "a beat missing", "at the limit"],
)
def test_a_quiet_holder_is_looked_at_again_exactly_when_its_silence_reaches_dead_after(
    quiet: float, look: float
) -> None:
    decision = decide_standby(view(udp_quiet=quiet), RULES)
    assert isinstance(decision, Wait)
    assert decision.look_again_in == pytest.approx(look)


def test_a_quiet_udp_ring_asks_for_the_store_ring_before_anything_else() -> None:
    assert decide_standby(view(udp_quiet=0.31), RULES) == ReadStoreBeat()


def test_a_partition_of_the_heartbeat_link_alone_shoots_nobody() -> None:
    # UDP quiet for 5 s, but the holder wrote its heartbeat row 50 ms ago: alive.
    partitioned = view(udp_quiet=5.0, store_read=True, store_beat_age=0.05)
    assert decide_standby(partitioned, RULES) == Wait(look_again_in=0.1)


def test_silent_on_both_rings_and_running_is_shot_then_taken_over() -> None:
    silent = view(udp_quiet=0.5, store_read=True, store_beat_age=0.4)
    assert decide_standby(silent, RULES) == Stonith(pid=4242)
    assert decide_standby(dataclasses.replace(silent, holder_process=HolderProcess.GONE), RULES) == Take(force=True)


def test_silent_with_no_store_row_counts_the_udp_silence() -> None:
    assert decide_standby(view(udp_quiet=0.5, store_read=True, store_beat_age=None), RULES) == Stonith(pid=4242)


def test_silent_with_no_pid_in_the_lease_is_taken_over_with_stonith() -> None:
    silent = view(lease=lease(pid=None), holder_process=HolderProcess.UNKNOWN, udp_quiet=0.5, store_read=True)
    assert decide_standby(silent, RULES) == Take(force=True)


def test_silence_of_exactly_dead_after_is_not_death() -> None:
    at_limit = view(udp_quiet=0.3, store_read=True, store_beat_age=0.3)
    assert isinstance(decide_standby(at_limit, RULES), Wait)


def test_without_stonith_a_silent_holder_waits_for_its_lease_to_expire() -> None:
    rules = dataclasses.replace(RULES, stonith=False)
    silent = view(holder_process=HolderProcess.UNKNOWN, udp_quiet=2.0, store_read=True, store_beat_age=2.0)
    assert decide_standby(silent, rules) == Wait(look_again_in=0.1)


def test_failback_is_asked_for_only_by_a_settled_standby_while_the_holder_lives() -> None:
    rules = dataclasses.replace(RULES, failback=True)
    assert decide_standby(view(standby_for=2.999), rules) == Wait(look_again_in=0.1)
    assert decide_standby(view(standby_for=3.0), rules) == RequestFailback(look_again_in=0.1)
    # Already asked (a switchover is pending): not again.
    assert decide_standby(view(standby_for=9.0, lease=lease(to="B")), rules) == Wait(look_again_in=0.1)
    # A dying holder is taken over, not asked.
    dying = view(standby_for=9.0, udp_quiet=0.5, store_read=True, store_beat_age=0.5)
    assert decide_standby(dying, rules) == Stonith(pid=4242)
    # Without --failback never.
    assert decide_standby(view(standby_for=9.0), RULES) == Wait(look_again_in=0.1)


def test_the_loop_stall_rule() -> None:
    assert beats_allowed(now=105.0, loop_tick=100.0, loop_stall=5.0)
    assert not beats_allowed(now=105.001, loop_tick=100.0, loop_stall=5.0)


# -- VRRP: the host's keepalived state gates both roles (issue 17) ------------------------------


@pytest.mark.parametrize(
    "seen",
    [
        view(lease=lease(None)),  # a free lease
        view(lease=lease(until_us=NOW)),  # an expired one
        view(lease=lease(until_us=NOW, to="B")),  # a switchover to this node, released
        view(holder_process=HolderProcess.GONE, udp_quiet=0.0),  # the holder exited
        view(udp_quiet=0.5, store_read=True, store_beat_age=0.4),  # silent on both rings: would be shot
    ],
    ids=["free", "expired", "switchover to us", "holder exited", "holder silent"],
)
def test_a_standby_whose_host_is_not_master_takes_nothing_and_shoots_nobody(seen: StandbyView) -> None:
    assert decide_standby(dataclasses.replace(seen, vrrp_master=False), RULES) == Wait(look_again_in=0.1)
    assert decide_standby(dataclasses.replace(seen, vrrp_master=None), RULES) != Wait(look_again_in=0.1)


def test_a_standby_whose_host_is_master_decides_as_without_vrrp() -> None:
    for seen in (
        view(lease=lease(None)),
        view(holder_process=HolderProcess.GONE, udp_quiet=0.0),
        view(udp_quiet=0.31),
        view(udp_quiet=0.5, store_read=True, store_beat_age=0.4),
        view(udp_quiet=0.25),
    ):
        assert decide_standby(dataclasses.replace(seen, vrrp_master=True), RULES) == decide_standby(seen, RULES)


def test_a_master_standby_takes_a_lease_released_by_a_live_holder_at_once() -> None:
    # The old active left the VIP and released the lease: no silence, no expiry to wait for.
    released = view(lease=lease(None, until_us=0, pid=None), udp_quiet=0.0, vrrp_master=True)
    assert decide_standby(released, RULES) == Take(force=False)


def test_a_master_standby_waits_for_a_live_holder_that_still_holds_the_lease() -> None:
    # The other host just lost MASTER; its node gives the lease up on its next look.
    assert decide_standby(view(udp_quiet=0.05, vrrp_master=True), RULES) == Wait(look_again_in=0.1)


def active(**kw: object) -> ActiveView:
    fields: dict[str, object] = {"lease_lost": False, "switchover_to": None, **kw}
    return ActiveView(**fields)  # type: ignore[arg-type]


def test_an_active_keeps_serving_while_master_or_without_vrrp() -> None:
    assert decide_active(active(vrrp_master=True), RULES) == KeepServing()
    assert decide_active(active(vrrp_master=None), RULES) == KeepServing()


def test_an_active_whose_host_left_master_leaves_the_vip_at_once() -> None:
    assert decide_active(active(vrrp_master=False), RULES) == LeaveVip()
    # Before a switchover it was asked for: the VIP has gone already, there is nobody to drain to.
    assert decide_active(active(vrrp_master=False, switchover_to="A"), RULES) == LeaveVip()


def test_a_lost_lease_is_a_step_down_whatever_vrrp_says() -> None:
    for master in (True, False, None):
        assert decide_active(active(lease_lost=True, vrrp_master=master), RULES) == StepDown()


def test_an_active_hands_over_only_to_another_node() -> None:
    assert decide_active(active(switchover_to="A"), RULES) == HandOver(to="A")
    assert decide_active(active(switchover_to="B"), RULES) == KeepServing()  # the request names this node
