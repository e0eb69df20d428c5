"""Liveness in protocol version 3 (docs/protocol.md 9.1): busy and quiet ends, in virtual time.

Each rule of 9.1 is checked on the two state machines linked back to back, with exact
deadlines: what a quiet session costs (one probe and one answer per idle interval), that a dead peer
is still found within its bound, and that an end waking from a long quiet neither floods
the peer nor gives up on it at once. The negative controls are the machines broken one
rule at a time (a node that does not answer, a panel that never probes), caught by the
same checks.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import protocol as p

from .test_connection_pair import ConnectionPair

HB, IDLE = 0.5, 2.5  # heartbeat_ms 500, idle_ms 2500


def _pair(
    panel: type[p.PanelConnection] = p.PanelConnection,
    host: type[p.HostConnection] = p.HostConnection,
    *,
    hwm: int = 0,
) -> ConnectionPair:
    pair = ConnectionPair()
    pair.panel = panel(now=0.0)
    pair.host = host(now=0.0)
    pair.panel_sends(
        p.Hello(
            config_digest=p.EMPTY_DIGEST,
            panel_id=3,
            boot_id=1,
            firmware="e",
            oldest_seq=1 if hwm else 0,
            newest_seq=hwm,
            config_version=0,
            max_epoch=0,
        )
    )
    pair.host_sends(
        p.Welcome(
            config_digest=p.EMPTY_DIGEST,
            node_id="A",
            epoch=1,
            hwm=hwm,
            config_version=0,
            heartbeat_ms=int(HB * 1000),
            idle_ms=int(IDLE * 1000),
        )
    )
    return pair


def _beats(pair: ConnectionPair, who: str, since: float = 0.0) -> list[float]:
    return [t for t, sender, m in pair.log if sender == who and isinstance(m, p.Heartbeat) and t >= since]


def _batch(first: int, count: int = 1) -> p.EventBatch:
    return p.EventBatch.of(
        [p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED) for s in range(first, first + count)]
    )


def test_a_quiet_session_costs_one_probe_and_one_answer_per_idle_interval() -> None:
    pair = _pair()
    assert (pair.panel.heartbeat_ms, pair.panel.idle_ms) == (500, 2500)
    pair.advance_to(60.0)
    probes, answers = _beats(pair, "panel->host"), _beats(pair, "host->panel")
    assert probes == pytest.approx([IDLE * k for k in range(1, 25)])
    assert answers == probes  # each answered at once, nothing else from the node
    assert pair.panel.state is pair.host.state is p.State.STREAMING


def test_probes_due_within_one_slot_go_out_together_never_early_and_at_most_the_slack_late() -> None:
    """Rule 2's slack: a probe due at t goes at the next multiple of the slack (0.1 s, a tenth
    of I when that is less) on the clock, so a fleet's probes share wake-ups."""
    pairs = []
    for offset in (0.01, 0.04, 0.09):  # three sessions whose last frames fall in one slot
        pair = _pair()
        pair.now = offset
        pair.panel_sends(_batch(1))
        pair.host_sends(p.Ack(epoch=1, up_to_seq=1))  # quiet again, last frame at the offset
        pairs.append(pair)
    assert [pair.panel.next_deadline() for pair in pairs] == pytest.approx([IDLE + 0.1] * 3)
    for due in (2.5, 2.5000001, 2.55, 2.5999999, 2.6, 7.31):
        pair = _pair()
        pair.panel._last_sent = pair.panel._last_received = due - IDLE  # (the silence limit later)
        probe = pair.panel.next_deadline()
        assert probe is not None and due <= probe <= due + 0.1 + 1e-9, (due, probe)
        assert abs(probe / 0.1 - round(probe / 0.1)) < 1e-6  # on the grid
    # A due time a float's error past a grid point goes on it, not a whole slot later.
    pair = _pair()
    pair.panel._last_sent = pair.panel._last_received = 23 * 0.1  # due at 4.800000000000001
    assert pair.panel.next_deadline() == pytest.approx(4.8, abs=1e-9)  # (a plain ceil: 4.9)


def test_the_slack_never_eats_the_quiet_nodes_limit_when_heartbeats_are_short() -> None:
    """With H = 10 ms the slack is H / 2: a quiet panel's probes still reach the node well
    within I + 3 H of its last frame, for a minute of quiet (a 100 ms slack would have been
    dropped by the node with no delay at all)."""
    pair = ConnectionPair()
    pair.panel, pair.host = p.PanelConnection(now=0.0), p.HostConnection(now=0.0)
    pair.panel_sends(
        p.Hello(config_digest=p.EMPTY_DIGEST, panel_id=3, boot_id=1, firmware="e", oldest_seq=0,
                newest_seq=0, config_version=0, max_epoch=0)
    )  # fmt: skip
    pair.host_sends(
        p.Welcome(config_digest=p.EMPTY_DIGEST, node_id="A", epoch=1, hwm=0, config_version=0,
                  heartbeat_ms=10, idle_ms=1000)
    )  # fmt: skip
    pair.advance_to(60.0)  # a PeerTimeout at either end would raise here
    probes = _beats(pair, "panel->host")
    gaps = [b - a for a, b in zip([0.0, *probes], probes, strict=False)]
    assert len(probes) >= 55 and all(1.0 <= g <= 1.0 + 0.005 + 1e-9 for g in gaps), gaps[:5]
    assert pair.panel.state is pair.host.state is p.State.STREAMING


def test_a_busy_session_keeps_the_heartbeat_interval() -> None:
    pair = _pair()
    pair.now = 1.0
    pair.panel_sends(_batch(1))  # unacknowledged: both ends busy
    assert pair.panel.busy and pair.host.busy
    pair.advance_to(3.0)
    assert _beats(pair, "panel->host") == pytest.approx([1.5, 2.0, 2.5, 3.0])
    pair.host_sends(p.Ack(epoch=1, up_to_seq=1))  # quiet again: the next probe one idle interval after the last frame
    assert not pair.panel.busy and not pair.host.busy
    pair.advance_to(6.0)
    assert _beats(pair, "panel->host", since=3.01) == pytest.approx([5.5])


def test_a_node_waking_from_quiet_neither_floods_nor_gives_up_at_once() -> None:
    pair = _pair()
    pair.advance_to(4.0)  # the node last sent at 2.5 (an answer), last heard at 2.5
    pair.now = 4.0
    pair.host_sends(p.ConfigDelta(digest=p.EMPTY_DIGEST, epoch=1, from_version=0, to_version=1, ops=()))
    # It waits for the CONFIG_ACK from 4.0: its next beat one HB after that, not at once ...
    assert pair.host.busy and pair.host.next_deadline() == pytest.approx(4.0 + HB)
    # ... and the panel's silence counts from 4.0, not from its last frame at 2.5 (whose
    # 3 x HB would have run out at 4.0).
    with pytest.raises(p.PeerTimeout, match="while this end waited"):
        while (deadline := pair.host.next_deadline()) is not None:
            pair.now = deadline
            pair.host.handle_timer(deadline)  # (the panel's CONFIG_ACK never comes)
    assert pair.now == pytest.approx(4.0 + 3 * HB)


def test_a_batch_of_duplicates_keeps_both_ends_busy_until_its_ack() -> None:
    pair = _pair(hwm=3)
    assert not pair.panel.busy and not pair.host.busy
    pair.now = 1.0
    # A panel resending from its oldest event (7.3): every seq is stored already, and still
    # an ACK is owed (7.4), so a node whose reads pause keeps beating per HB.
    pair.panel_sends(_batch(1, 3))
    assert pair.panel.busy and pair.host.busy
    pair.host.pause_reading()
    assert pair.host.next_deadline() == pytest.approx(1.0 + HB)
    pair.host.resume_reading(1.2)
    pair.host_sends(p.Ack(epoch=1, up_to_seq=3))  # the ACK at the hwm covers it
    assert not pair.panel.busy and not pair.host.busy


def test_a_dead_node_is_found_within_the_idle_interval_and_three_heartbeats() -> None:
    pair = _pair()
    pair.advance_to(3.0)  # last answer at 2.5
    with pytest.raises(p.PeerTimeout):
        while (deadline := pair.panel.next_deadline()) is not None:
            pair.now = deadline
            pair.panel.handle_timer(deadline)  # its probes go nowhere
    assert pair.now == pytest.approx(2.5 + IDLE + 3 * HB)


def test_a_quiet_node_gives_a_silent_panel_the_idle_interval_and_three_heartbeats() -> None:
    pair = _pair()
    limit = pair.host.next_deadline()
    assert limit == pytest.approx(IDLE + 3 * HB)  # last heard at 0.0 (the HELLO)
    assert pair.host.handle_timer(limit - 1e-6) == b""
    with pytest.raises(p.PeerTimeout, match="idle interval"):
        pair.host.handle_timer(limit)


def test_the_node_does_not_answer_its_own_heartbeats_and_the_panel_answers_none() -> None:
    pair = _pair()
    pair.now = 1.0
    pair.host_sends(p.ConfigDelta(digest=p.EMPTY_DIGEST, epoch=1, from_version=0, to_version=1, ops=()))
    # The panel owes a CONFIG_ACK it does not send: the node beats per HB, the panel stays silent
    # but for its own beats (it is busy too), and no beat answers a node's beat.
    pair.advance_to(2.6)
    node_beats = _beats(pair, "host->panel")
    assert node_beats == pytest.approx([1.5, 2.0, 2.5])
    assert _beats(pair, "panel->host") == pytest.approx([1.5, 2.0, 2.5])


class _DeafHost(p.HostConnection):
    """Broken on purpose: a node that never answers a HEARTBEAT (9.1 rule 4)."""

    def _on_receive(self, message: p.Message) -> None:
        super()._on_receive(message)
        self._answer_due = False


class _MutePanel(p.PanelConnection):
    """Broken on purpose: a quiet panel that never probes (9.1 rule 2)."""

    def _quiet_beat(self) -> float | None:
        return None


def test_negative_control_a_node_that_does_not_answer_loses_its_panels() -> None:
    pair = _pair(host=_DeafHost)
    with pytest.raises(p.PeerTimeout):
        pair.advance_to(60.0)
    assert pair.panel.state is p.State.ERROR
    assert pair.now == pytest.approx(IDLE + 3 * HB)  # the first probe was never answered


def test_negative_control_a_panel_that_never_probes_is_dropped_by_the_node() -> None:
    pair = _pair(panel=_MutePanel)
    pair.advance_to(3.9)
    assert _beats(pair, "panel->host") == []  # the broken panel sent nothing
    with pytest.raises(p.PeerTimeout, match="idle interval"):
        while (deadline := pair.host.next_deadline()) is not None:
            pair.now = deadline
            pair.host.handle_timer(deadline)
    assert pair.host.state is p.State.ERROR
    assert pair.now == pytest.approx(IDLE + 3 * HB)


def test_a_welcome_with_idle_below_heartbeat_is_refused() -> None:
    with pytest.raises(p.LocalProtocolError, match="idle_ms"):
        p.Welcome(
            config_digest=p.EMPTY_DIGEST, node_id="A", epoch=1, hwm=0, config_version=0, heartbeat_ms=500, idle_ms=499
        )


async def test_a_node_stream_answers_each_probe_at_once_and_sends_nothing_else(autojump_clock: object) -> None:
    """The same rules through the trio driver (``MessageStream.run_timers``), in virtual time."""
    from protocol.streams import MessageStream

    ours, theirs = trio.testing.memory_stream_pair()
    node = MessageStream(ours, p.HostConnection(now=trio.current_time()), name="node")
    panel = MessageStream(theirs, p.PanelConnection(now=trio.current_time()), name="panel")
    seen: list[tuple[float, str, p.Message]] = []

    async def read(ms: MessageStream, who: str) -> None:
        while True:
            message = await ms.receive()
            seen.append((trio.current_time(), who, message))

    pair = _pair()  # the same HELLO and WELCOME, through the streams this time
    hello, welcome = (m for _, _, m in pair.log)
    start = trio.current_time()
    await panel.send(hello)
    assert await node.receive() == hello
    await node.send(welcome)
    assert await panel.receive() == welcome
    assert trio.current_time() == start
    async with trio.open_nursery() as nursery:
        for ms, who in ((node, "panel->node"), (panel, "node->panel")):
            nursery.start_soon(ms.run_timers)
            nursery.start_soon(read, ms, who)
        await trio.sleep(3 * IDLE + 0.1)
        nursery.cancel_scope.cancel()
    times = {
        who: [round(t - start, 6) for t, w, m in seen if w == who and isinstance(m, p.Heartbeat)]
        for who in ("panel->node", "node->panel")
    }
    assert times["panel->node"] == pytest.approx([IDLE, 2 * IDLE, 3 * IDLE])
    assert times["node->panel"] == times["panel->node"]  # answered at once, in virtual time
    assert len(seen) == 6  # and nothing else either way
