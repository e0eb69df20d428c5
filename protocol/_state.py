"""Session states and the transition table of both roles.

Like h11's ``_state.py`` and h2's ``_transitions``: the table is the whole
truth about which message may go which way in which state. A (role, state,
direction, message type) missing from it is a protocol error that moves the
connection to ERROR.
"""

from __future__ import annotations

import enum

from ._messages import MessageType as T

__all__ = ["TRANSITIONS", "Direction", "Role", "State"]


class Role(enum.Enum):
    PANEL = "panel"
    HOST = "host"


class Direction(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"


class State(enum.Enum):
    #: Panel: connected, HELLO not sent yet.
    IDLE = "IDLE"
    #: Panel: HELLO sent, waiting for WELCOME.
    HELLO_SENT = "HELLO_SENT"
    #: Host: connected, waiting for HELLO.
    AWAIT_HELLO = "AWAIT_HELLO"
    #: Host: HELLO received; the application decides WELCOME or ERROR.
    HELLO_RECEIVED = "HELLO_RECEIVED"
    #: Both: handshake done; events, acks, config and heartbeats flow.
    STREAMING = "STREAMING"
    #: Both: a standby node answered HELLO with STANDBY; only liveness flows until its
    #: TAKEOVER (the panel then says HELLO again: IDLE, and the node waits for it: AWAIT_HELLO).
    PARKED = "PARKED"
    #: Both: ended by BYE or ERROR, sent or received.
    CLOSED = "CLOSED"
    #: Both: this end detected a protocol violation; only an ERROR may still be sent.
    ERROR = "ERROR"


S, R = Direction.SEND, Direction.RECEIVE
_PANEL, _HOST = Role.PANEL, Role.HOST

TRANSITIONS: dict[tuple[Role, State, Direction, T], State] = {
    # panel handshake
    (_PANEL, State.IDLE, S, T.HELLO): State.HELLO_SENT,
    (_PANEL, State.HELLO_SENT, R, T.WELCOME): State.STREAMING,
    # host handshake
    (_HOST, State.AWAIT_HELLO, R, T.HELLO): State.HELLO_RECEIVED,
    (_HOST, State.HELLO_RECEIVED, S, T.WELCOME): State.STREAMING,
    # parking (docs/protocol.md 6.3): a standby's answer, its liveness, its takeover
    (_PANEL, State.HELLO_SENT, R, T.STANDBY): State.PARKED,
    (_PANEL, State.PARKED, S, T.HEARTBEAT): State.PARKED,
    (_PANEL, State.PARKED, R, T.HEARTBEAT): State.PARKED,
    (_PANEL, State.PARKED, R, T.TAKEOVER): State.IDLE,
    (_HOST, State.HELLO_RECEIVED, S, T.STANDBY): State.PARKED,
    (_HOST, State.PARKED, R, T.HEARTBEAT): State.PARKED,
    (_HOST, State.PARKED, S, T.HEARTBEAT): State.PARKED,
    (_HOST, State.PARKED, S, T.TAKEOVER): State.AWAIT_HELLO,
    # panel streaming
    (_PANEL, State.STREAMING, S, T.EVENT_BATCH): State.STREAMING,
    (_PANEL, State.STREAMING, S, T.CONFIG_ACK): State.STREAMING,
    (_PANEL, State.STREAMING, S, T.HEARTBEAT): State.STREAMING,
    (_PANEL, State.STREAMING, R, T.ACK): State.STREAMING,
    (_PANEL, State.STREAMING, R, T.CONFIG_DELTA): State.STREAMING,
    (_PANEL, State.STREAMING, R, T.CONFIG_SNAPSHOT): State.STREAMING,
    (_PANEL, State.STREAMING, R, T.HEARTBEAT): State.STREAMING,
    (_PANEL, State.STREAMING, S, T.ALARM): State.STREAMING,
    (_PANEL, State.STREAMING, R, T.ALARM_ACK): State.STREAMING,
    # host streaming
    (_HOST, State.STREAMING, R, T.EVENT_BATCH): State.STREAMING,
    (_HOST, State.STREAMING, R, T.CONFIG_ACK): State.STREAMING,
    (_HOST, State.STREAMING, R, T.HEARTBEAT): State.STREAMING,
    (_HOST, State.STREAMING, S, T.ACK): State.STREAMING,
    (_HOST, State.STREAMING, S, T.CONFIG_DELTA): State.STREAMING,
    (_HOST, State.STREAMING, S, T.CONFIG_SNAPSHOT): State.STREAMING,
    (_HOST, State.STREAMING, S, T.HEARTBEAT): State.STREAMING,
    (_HOST, State.STREAMING, R, T.ALARM): State.STREAMING,
    (_HOST, State.STREAMING, S, T.ALARM_ACK): State.STREAMING,
}

# ERROR and BYE end the session from any live state, either way. An ERROR may
# also be sent from ERROR (to tell the peer why we are closing).
for _role, _states in (
    (_PANEL, (State.IDLE, State.HELLO_SENT, State.STREAMING, State.PARKED)),
    (_HOST, (State.AWAIT_HELLO, State.HELLO_RECEIVED, State.STREAMING, State.PARKED)),
):
    for _state in _states:
        for _direction in (S, R):
            TRANSITIONS[(_role, _state, _direction, T.ERROR)] = State.CLOSED
            TRANSITIONS[(_role, _state, _direction, T.BYE)] = State.CLOSED
    TRANSITIONS[(_role, State.ERROR, S, T.ERROR)] = State.ERROR
