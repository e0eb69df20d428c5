"""Parked sessions (docs/protocol.md 6.3) on the two state machines, back to back, in virtual time.

A standby node answers a HELLO on its park address with STANDBY; both ends are PARKED and
keep the liveness of a quiet session; the node's TAKEOVER sends the panel back to IDLE and
the handshake of 6.2 runs again on the same connection. Each refusal the section lists is
made to happen, and P5's (a TAKEOVER below the panel's floor) is the negative control of
the epoch rule.
"""

from __future__ import annotations

import pytest

import protocol as p

from .test_connection_pair import ConnectionPair

HB, IDLE = 0.5, 2.5


def _hello(max_epoch: int = 4, config_version: int = 0) -> p.Hello:
    return p.Hello(
        config_digest=p.EMPTY_DIGEST,
        panel_id=3,
        boot_id=1,
        firmware="e",
        oldest_seq=1,
        newest_seq=20,
        config_version=config_version,
        max_epoch=max_epoch,
    )


def _welcome(epoch: int, hwm: int = 10) -> p.Welcome:
    return p.Welcome(
        config_digest=p.EMPTY_DIGEST,
        node_id="B",
        epoch=epoch,
        hwm=hwm,
        config_version=0,
        heartbeat_ms=int(HB * 1000),
        idle_ms=int(IDLE * 1000),
    )


STANDBY = p.Standby(node_id="B", heartbeat_ms=int(HB * 1000), idle_ms=int(IDLE * 1000))


def _parked(floor: int = 4) -> ConnectionPair:
    pair = ConnectionPair()
    pair.panel = p.PanelConnection(now=0.0, epoch_floor=floor, park=True)
    pair.host = p.HostConnection(now=0.0, park=True)
    pair.panel_sends(_hello(max_epoch=floor))
    assert pair.host_sends(STANDBY) == [STANDBY]
    assert pair.panel.state is pair.host.state is p.State.PARKED
    return pair


def test_a_parked_session_keeps_the_liveness_of_a_quiet_one() -> None:
    pair = _parked()
    assert pair.panel.standby == STANDBY and pair.panel.idle_ms == pair.host.idle_ms == 2500
    pair.advance_to(6.0)
    beats = [(t, who, m.epoch) for t, who, m in pair.log if isinstance(m, p.Heartbeat)]
    # The panel probes once per I (on rule 2's 0.1 s grid), the node answers at once; the
    # panel's beat carries its floor, the node's 0 (it serves no epoch while parked).
    assert beats == [
        (pytest.approx(2.5), "panel->host", 4),
        (pytest.approx(2.5), "host->panel", 0),
        (pytest.approx(5.0), "panel->host", 4),
        (pytest.approx(5.0), "host->panel", 0),
    ]
    assert pair.panel.state is pair.host.state is p.State.PARKED


def test_a_silent_standby_is_found_dead_within_the_quiet_bound() -> None:
    pair = _parked()
    pair.host = p.HostConnection(now=0.0, park=True)  # a node that stopped answering: nothing reaches it
    with pytest.raises(p.PeerTimeout):
        while True:
            deadline = pair.panel.next_deadline()
            assert deadline is not None and deadline <= IDLE + 3 * HB + 0.1 + 1e-9
            pair.now = deadline
            pair.panel.handle_timer(pair.now)  # the probes go nowhere
    assert pair.panel.state is p.State.ERROR


def test_takeover_runs_the_handshake_again_on_the_same_connection() -> None:
    pair = _parked(floor=4)
    pair.advance_to(3.0)
    pair.now = 3.2
    assert pair.host_sends(p.Takeover(epoch=5)) == [p.Takeover(epoch=5)]
    assert pair.panel.state is p.State.IDLE and pair.host.state is p.State.AWAIT_HELLO
    assert pair.panel.takeover_epoch == 5 and not pair.panel.park and not pair.host.park
    # The handshake's bound starts again at the TAKEOVER.
    assert pair.host.next_deadline() == pytest.approx(3.2 + 5.0)
    pair.panel.raise_floor(4)
    pair.panel_sends(_hello(max_epoch=4, config_version=2))
    assert pair.host.hello is not None and pair.host.hello.config_version == 2  # read now, not at parking
    pair.host_sends(_welcome(epoch=5))
    assert pair.panel.state is pair.host.state is p.State.STREAMING
    assert pair.panel.epoch_floor == 5 and pair.panel.acked_seq == 10
    batch = p.EventBatch.of([p.EventRecord(seq=11, time_us=1, kind=p.EventKind.ACCESS_GRANTED, card=1)])
    assert pair.panel_sends(batch) == [batch]
    pair.host_sends(p.Ack(epoch=5, up_to_seq=11))
    assert pair.panel.acked_seq == 11


def test_a_takeover_below_the_panels_floor_is_refused() -> None:
    """P5: the panel accepted epoch 6 elsewhere since it parked; a TAKEOVER with 5 is stale."""
    pair = _parked(floor=4)
    pair.panel.raise_floor(6)
    with pytest.raises(p.RemoteProtocolError) as refused:
        pair.host_sends(p.Takeover(epoch=5))
    assert refused.value.code is p.ErrorCode.STALE_EPOCH
    # The control: the same TAKEOVER at the floor is taken.
    pair = _parked(floor=4)
    pair.panel.raise_floor(5)
    assert pair.host_sends(p.Takeover(epoch=5)) == [p.Takeover(epoch=5)]


def test_no_takeover_in_time_and_no_hello_after_it_time_out() -> None:
    pair = _parked()
    pair.now = 1.0
    pair.host_sends(p.Takeover(epoch=5))
    assert pair.host.next_deadline() == pytest.approx(6.0)
    with pytest.raises(p.PeerTimeout, match="handshake not done"):
        pair.host.handle_timer(6.0)


@pytest.mark.parametrize(
    ("who", "message"),
    [
        # Only liveness while parked: no events, no acks, no configuration, no second answer.
        ("panel", p.EventBatch.of([p.EventRecord(seq=1, time_us=1, kind=p.EventKind.ACCESS_GRANTED, card=1)])),
        ("panel", p.ConfigAck(version=1, digest=p.EMPTY_DIGEST)),
        ("host", p.Ack(epoch=5, up_to_seq=1)),
        ("host", _welcome(epoch=5)),
        ("host", STANDBY),
    ],
)
def test_only_liveness_and_the_takeover_are_legal_while_parked(who: str, message: p.Message) -> None:
    pair = _parked()
    sender = pair.panel if who == "panel" else pair.host
    with pytest.raises(p.LocalProtocolError) as illegal:
        sender.send(message, 1.0)
    assert illegal.value.code is p.ErrorCode.ILLEGAL_IN_STATE


def test_standby_belongs_to_park_connections_and_welcome_does_not() -> None:
    # A STANDBY to a panel that did not dial a park address.
    pair = ConnectionPair()
    pair.panel.send(_hello(max_epoch=0), 0.0)
    pair.panel.receive_data(p.encode_frame(p.MessageType.STANDBY, p.encode_payload(STANDBY)), 0.0)
    with pytest.raises(p.RemoteProtocolError) as refused:
        pair.panel.next_event()
    assert refused.value.code is p.ErrorCode.ILLEGAL_IN_STATE
    # A node may not send it there either.
    host = p.HostConnection(now=0.0)
    host.receive_data(p.encode_frame(p.MessageType.HELLO, p.encode_payload(_hello(max_epoch=0))), 0.0)
    host.next_event()
    with pytest.raises(p.LocalProtocolError, match="STANDBY only on a park"):
        host.send(STANDBY, 0.0)
    # A WELCOME on a park connection before any TAKEOVER: refused by the panel, not sent by the node.
    panel = p.PanelConnection(now=0.0, epoch_floor=0, park=True)
    panel.send(_hello(max_epoch=0), 0.0)
    panel.receive_data(p.encode_frame(p.MessageType.WELCOME, p.encode_payload(_welcome(epoch=1))), 0.0)
    with pytest.raises(p.RemoteProtocolError, match="before its TAKEOVER"):
        panel.next_event()
    host = p.HostConnection(now=0.0, park=True)
    host.receive_data(p.encode_frame(p.MessageType.HELLO, p.encode_payload(_hello(max_epoch=0))), 0.0)
    host.next_event()
    with pytest.raises(p.LocalProtocolError, match="only after its TAKEOVER"):
        host.send(_welcome(epoch=1), 0.0)


def test_the_new_messages_round_trip_and_keep_their_ranges() -> None:
    for message in (STANDBY, p.Takeover(epoch=2**64 - 1)):
        frame = p.encode_frame(p.message_type(message), p.encode_payload(message))
        decoder = p.FrameDecoder()
        decoder.feed(frame)
        got = decoder.next_frame()
        assert got is not None and p.decode_payload(got.type, got.payload) == message
    with pytest.raises(p.LocalProtocolError):
        p.Takeover(epoch=0)
    with pytest.raises(p.LocalProtocolError):
        p.Standby(node_id="B", heartbeat_ms=1000, idle_ms=999)
    assert p.MessageType.STANDBY == 11 and p.MessageType.TAKEOVER == 12


def test_a_probe_that_crossed_the_takeover_is_ignored_not_refused() -> None:
    """6.3 rule 4: the panel probed just before the TAKEOVER reached it; the node, already
    waiting for the fresh HELLO, drops that HEARTBEAT unanswered. The control: on a fresh
    connection a HEARTBEAT before HELLO is still ILLEGAL_IN_STATE (the section 14 vector)."""
    pair = _parked()
    pair.now = 2.6
    probe = pair.panel.send(p.Heartbeat(epoch=4), pair.now)  # in flight...
    takeover = pair.host.send(p.Takeover(epoch=5), pair.now)  # ...as the node takes over
    pair.host.receive_data(probe, pair.now)
    assert pair.host.next_event() is p.NEED_DATA and pair.host.state is p.State.AWAIT_HELLO
    assert pair.host.handle_timer(pair.now) == b""  # and it is not answered
    pair.panel.receive_data(takeover, pair.now)
    assert pair.panel.next_event() == p.Takeover(epoch=5)
    pair.panel_sends(_hello(max_epoch=4))
    assert pair.host.state is p.State.HELLO_RECEIVED
    # Only until the HELLO: a HEARTBEAT after it, before the WELCOME, is judged as ever.
    pair.host.receive_data(p.encode_frame(p.MessageType.HEARTBEAT, p.encode_payload(p.Heartbeat(epoch=4))), 2.7)
    with pytest.raises(p.RemoteProtocolError) as late:
        pair.host.next_event()
    assert late.value.code is p.ErrorCode.ILLEGAL_IN_STATE
    fresh = p.HostConnection(now=0.0)
    fresh.receive_data(p.encode_frame(p.MessageType.HEARTBEAT, p.encode_payload(p.Heartbeat(epoch=0))), 0.0)
    with pytest.raises(p.RemoteProtocolError) as illegal:
        fresh.next_event()
    assert illegal.value.code is p.ErrorCode.ILLEGAL_IN_STATE
