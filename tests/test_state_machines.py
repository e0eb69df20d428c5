"""Every state x every message x both directions, for both roles (h2's model)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import protocol as p
from protocol import Direction, Role, State

from .strategies import frame_of

EPOCH = 5
HWM = 10
CFG = 3

D = p.EMPTY_DIGEST
HELLO = p.Hello(
    panel_id=9,
    boot_id=1,
    firmware="t",
    oldest_seq=11,
    newest_seq=20,
    config_version=CFG,
    config_digest=D,
    max_epoch=EPOCH - 1,
)
WELCOME = p.Welcome(
    node_id="A", epoch=EPOCH, hwm=HWM, config_version=CFG + 1, config_digest=D, heartbeat_ms=1000, idle_ms=5000
)
#: A completed push of version CFG: a STREAMING pair has one, so a CONFIG_ACK of CFG is legal.
PUSH = p.ConfigSnapshot(epoch=EPOCH, version=CFG, digest=D, part=0, parts=1, ops=())

SAMPLES: dict[p.MessageType, p.Message] = {
    p.MessageType.HELLO: HELLO,
    p.MessageType.WELCOME: WELCOME,
    p.MessageType.EVENT_BATCH: p.EventBatch.of(
        [p.EventRecord(seq=HWM + 1 + i, time_us=i, kind=p.EventKind.ACCESS_GRANTED) for i in range(3)]
    ),
    p.MessageType.ACK: p.Ack(epoch=EPOCH, up_to_seq=HWM),
    p.MessageType.CONFIG_DELTA: p.ConfigDelta(digest=D, epoch=EPOCH, from_version=CFG, to_version=CFG + 1, ops=()),
    p.MessageType.CONFIG_SNAPSHOT: p.ConfigSnapshot(digest=D, epoch=EPOCH, version=CFG + 2, part=0, parts=1, ops=()),
    p.MessageType.CONFIG_ACK: p.ConfigAck(digest=D, version=CFG),
    p.MessageType.HEARTBEAT: p.Heartbeat(epoch=EPOCH),
    p.MessageType.ERROR: p.Error(epoch=EPOCH, code=int(p.ErrorCode.INTERNAL), text="x"),
    p.MessageType.BYE: p.Bye(epoch=EPOCH),
    p.MessageType.STANDBY: p.Standby(node_id="B", heartbeat_ms=1000, idle_ms=5000),
    p.MessageType.TAKEOVER: p.Takeover(epoch=EPOCH),
    p.MessageType.ALARM: p.Alarm.of([p.EventRecord(seq=HWM + 2, time_us=1, kind=p.EventKind.DOOR_FORCED)]),
    p.MessageType.ALARM_ACK: p.AlarmAck(epoch=EPOCH, up_to_seq=0),
}
assert set(SAMPLES) == set(p.MessageType)


def _recv(conn: p.PanelConnection | p.HostConnection, message: p.Message) -> object:
    conn.receive_data(frame_of(message), 0.0)
    return conn.next_event()


def _panel(state: State, park: bool = False) -> p.PanelConnection:
    conn = p.PanelConnection(now=0.0, epoch_floor=EPOCH - 1, park=park)
    if state is State.IDLE:
        return conn
    conn.send(HELLO, 0.0)
    if state is State.HELLO_SENT:
        return conn
    if state is State.PARKED:
        _recv(conn, SAMPLES[p.MessageType.STANDBY])
        return conn
    _recv(conn, WELCOME)
    _recv(conn, PUSH)
    if state is State.STREAMING:
        return conn
    if state is State.CLOSED:
        _recv(conn, p.Bye(epoch=EPOCH))
        return conn
    assert state is State.ERROR
    with pytest.raises(p.RemoteProtocolError):
        _recv(conn, p.Ack(epoch=EPOCH, up_to_seq=HWM + 100))
    return conn


def _host(state: State, park: bool = False) -> p.HostConnection:
    conn = p.HostConnection(now=0.0, park=park)
    if state is State.AWAIT_HELLO:
        return conn
    _recv(conn, HELLO)
    if state is State.HELLO_RECEIVED:
        return conn
    if state is State.PARKED:
        conn.send(SAMPLES[p.MessageType.STANDBY], 0.0)
        return conn
    conn.send(WELCOME, 0.0)
    conn.send(PUSH, 0.0)
    if state is State.STREAMING:
        return conn
    if state is State.CLOSED:
        _recv(conn, p.Bye(epoch=EPOCH))
        return conn
    assert state is State.ERROR
    with pytest.raises(p.RemoteProtocolError):
        _recv(conn, p.ConfigAck(digest=D, version=CFG + 50))
    return conn


_STATES = {
    # (state, whether the connection is a park address's): the answer to HELLO differs.
    Role.PANEL: [State.IDLE, State.HELLO_SENT, State.STREAMING, State.CLOSED, State.ERROR],
    Role.HOST: [State.AWAIT_HELLO, State.HELLO_RECEIVED, State.STREAMING, State.CLOSED, State.ERROR],
}
FACTORIES: dict[
    Role, tuple[Callable[[State, bool], p.PanelConnection | p.HostConnection], list[tuple[State, bool]]]
] = {
    Role.PANEL: (_panel, [(s, False) for s in _STATES[Role.PANEL]] + [(State.HELLO_SENT, True), (State.PARKED, True)]),
    Role.HOST: (_host, [(s, False) for s in _STATES[Role.HOST]] + [(State.HELLO_RECEIVED, True), (State.PARKED, True)]),
}

CASES = [
    (role, state, park, direction, kind)
    for role, (_, states) in FACTORIES.items()
    for state, park in states
    for direction in Direction
    for kind in p.MessageType
]


def _legal(role: Role, state: State, park: bool, direction: Direction, kind: p.MessageType) -> State | None:
    """The table's answer, and docs/protocol.md 6.3's on top: STANDBY only on a park
    connection, and there no WELCOME before the TAKEOVER."""
    if (kind is p.MessageType.STANDBY and not park) or (kind is p.MessageType.WELCOME and park):
        return None
    return p.TRANSITIONS.get((role, state, direction, kind))


@pytest.mark.parametrize(
    ("role", "state", "park", "direction", "kind"),
    CASES,
    ids=lambda v: getattr(v, "name", None) or ("park" if v is True else "" if v is False else str(v)),
)
def test_every_state_and_message(
    role: Role, state: State, park: bool, direction: Direction, kind: p.MessageType
) -> None:
    factory, _ = FACTORIES[role]
    conn = factory(state, park)
    assert conn.state is state
    message = SAMPLES[kind]
    if state is State.PARKED and kind is p.MessageType.HEARTBEAT and role is Role.PANEL:
        message = p.Heartbeat(epoch=0)  # a parked node serves no epoch (6.3)
    expected = _legal(role, state, park, direction, kind)
    if direction is Direction.SEND:
        if expected is None:
            with pytest.raises(p.LocalProtocolError) as info:
                conn.send(message, 0.0)
            assert info.value.code is p.ErrorCode.ILLEGAL_IN_STATE
            assert conn.state is State.ERROR
        else:
            data = conn.send(message, 0.0)
            assert data
            assert conn.state is expected
        return
    if expected is None:
        with pytest.raises(p.RemoteProtocolError) as rinfo:
            _recv(conn, message)
        assert rinfo.value.code is p.ErrorCode.ILLEGAL_IN_STATE
        assert conn.state is State.ERROR
    else:
        assert _recv(conn, message) == message
        assert conn.state is expected


def test_the_table_covers_every_live_state_with_error_and_bye() -> None:
    for role, (_, states) in FACTORIES.items():
        for state, _park in states:
            if state in (State.CLOSED, State.ERROR):
                continue
            for direction in Direction:
                assert (role, state, direction, p.MessageType.BYE) in p.TRANSITIONS


def test_panel_refuses_a_welcome_older_than_its_floor() -> None:
    conn = p.PanelConnection(now=0.0, epoch_floor=7)
    conn.send(HELLO.__class__(**{**_fields(HELLO), "max_epoch": 7}), 0.0)
    with pytest.raises(p.RemoteProtocolError) as info:
        _recv(conn, WELCOME)  # epoch 5 < 7
    assert info.value.code is p.ErrorCode.STALE_EPOCH
    assert conn.state is State.ERROR


def test_host_cannot_welcome_a_panel_that_saw_a_newer_epoch() -> None:
    conn = p.HostConnection(now=0.0)
    _recv(conn, p.Hello(**{**_fields(HELLO), "max_epoch": 9}))
    with pytest.raises(p.LocalProtocolError) as info:
        conn.send(WELCOME, 0.0)
    assert info.value.code is p.ErrorCode.STALE_EPOCH


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (p.Ack(epoch=EPOCH - 1, up_to_seq=HWM), p.ErrorCode.STALE_EPOCH),
        (p.Ack(epoch=EPOCH + 1, up_to_seq=HWM), p.ErrorCode.EPOCH_MISMATCH),
        (p.Ack(epoch=EPOCH, up_to_seq=HWM - 1), p.ErrorCode.BAD_ACK),
        (p.Ack(epoch=EPOCH, up_to_seq=HWM + 1), p.ErrorCode.BAD_ACK),
        (
            p.ConfigDelta(digest=D, epoch=EPOCH, from_version=CFG + 1, to_version=CFG + 2, ops=()),
            p.ErrorCode.CONFIG_VERSION,
        ),
        (p.ConfigSnapshot(digest=D, epoch=EPOCH, version=9, part=1, parts=2, ops=()), p.ErrorCode.CONFIG_VERSION),
        (p.Heartbeat(epoch=EPOCH - 1), p.ErrorCode.STALE_EPOCH),
    ],
)
def test_panel_refuses_bad_node_messages(message: p.Message, code: p.ErrorCode) -> None:
    conn = _panel(State.STREAMING)
    with pytest.raises(p.RemoteProtocolError) as info:
        _recv(conn, message)
    assert info.value.code is code
    assert conn.state is State.ERROR


def _batch(first: int, n: int) -> p.EventBatch:
    return p.EventBatch.of([p.EventRecord(seq=first + i, time_us=0, kind=p.EventKind.TAMPER) for i in range(n)])


def test_host_refuses_gaps_and_reordering() -> None:
    conn = _host(State.STREAMING)
    with pytest.raises(p.RemoteProtocolError) as info:
        _recv(conn, _batch(HWM + 2, 2))
    assert info.value.code is p.ErrorCode.SEQ_GAP
    assert f"{HWM + 1}..{HWM + 1}" in info.value.message

    conn = _host(State.STREAMING)
    assert _recv(conn, _batch(HWM - 1, 3)) == _batch(HWM - 1, 3)  # overlap on the first batch is fine
    with pytest.raises(p.RemoteProtocolError) as info:
        _recv(conn, _batch(HWM + 1, 1))
    assert info.value.code is p.ErrorCode.SEQ_ORDER


def test_a_gap_marker_declares_the_gap() -> None:
    conn = _host(State.STREAMING)
    marker = p.EventRecord(seq=HWM + 1, time_us=0, kind=p.EventKind.BUFFER_OVERFLOW, card=HWM + 50, aux=50)
    batch = p.EventBatch.of([marker, p.EventRecord(seq=HWM + 51, time_us=0, kind=p.EventKind.TAMPER)])
    assert _recv(conn, batch) == batch
    assert conn.sent_seq == HWM + 51
    conn.send(p.Ack(epoch=EPOCH, up_to_seq=HWM + 51), 0.0)
    with pytest.raises(p.LocalProtocolError):
        conn.send(p.Ack(epoch=EPOCH, up_to_seq=HWM + 52), 0.0)


def test_panel_cannot_send_a_gap_or_ack_a_config_it_never_got() -> None:
    conn = _panel(State.STREAMING)
    with pytest.raises(p.LocalProtocolError) as info:
        conn.send(_batch(HWM + 5, 1), 0.0)
    assert info.value.code is p.ErrorCode.SEQ_GAP
    conn = _panel(State.STREAMING)
    with pytest.raises(p.LocalProtocolError) as info:
        conn.send(p.ConfigAck(digest=D, version=CFG + 1), 0.0)
    assert info.value.code is p.ErrorCode.CONFIG_VERSION


def test_after_error_next_event_keeps_refusing() -> None:
    conn = _panel(State.ERROR)
    with pytest.raises(p.RemoteProtocolError):
        conn.next_event()
    assert conn.send_error(p.ErrorCode.BAD_ACK, "bye", 0.0)  # telling the peer is still allowed


def _fields(message: p.Message) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}
