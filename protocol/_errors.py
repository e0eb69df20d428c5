"""Errors of the wire protocol, split by whose fault they are.

The split follows h11: ``LocalProtocolError`` means *we* tried something the
protocol forbids (a bug in the caller), ``RemoteProtocolError`` means the peer
sent something illegal, ``PeerTimeout`` means the peer went quiet. Each carries
an ``ErrorCode`` that maps one-to-one to the code of a wire ERROR message, so
the failover logic can tell a timeout, a network fault and a protocol fault
apart without parsing text.
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "PeerTimeout",
    "ProtocolError",
    "RemoteProtocolError",
]


class ErrorCode(enum.IntEnum):
    """Codes carried by wire ERROR messages (u16). Stable across versions."""

    # framing (1xx)
    BAD_MAGIC = 100
    UNSUPPORTED_VERSION = 101
    FRAME_TOO_LARGE = 102
    BAD_CRC = 103
    UNKNOWN_TYPE = 104
    BAD_FLAGS = 105
    TRUNCATED = 106
    # message content (2xx)
    MALFORMED = 200
    FIELD_OUT_OF_RANGE = 201
    UNKNOWN_EVENT_KIND = 202
    UNKNOWN_CONFIG_OP = 203
    # state and sequencing (3xx)
    ILLEGAL_IN_STATE = 300
    SEQ_GAP = 301
    SEQ_ORDER = 302
    BAD_ACK = 303
    STALE_EPOCH = 304
    EPOCH_MISMATCH = 305
    CONFIG_VERSION = 306
    TIMEOUT = 307
    CONFIG_DIGEST = 308
    # authentication and admission (4xx)
    UNAUTHENTICATED = 400
    PANEL_ID_MISMATCH = 401
    UNKNOWN_PANEL = 402
    REPLACED = 403
    # server side (5xx)
    STORE_REFUSED = 500
    OVERLOADED = 501
    SHUTTING_DOWN = 502
    INTERNAL = 503


class ProtocolError(Exception):
    """Base of every error the sans-I/O core raises.

    Attributes:
        code: the ``ErrorCode`` to put on the wire.
        message: a sentence naming what was wrong.
    """

    code: ErrorCode
    message: str

    def __init__(self, code: ErrorCode, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError, RemoteProtocolError or PeerTimeout")
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code = code
        self.message = message


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message the protocol forbids."""


class PeerTimeout(RemoteProtocolError):
    """The peer missed its deadline (handshake or heartbeats)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TIMEOUT, message)
