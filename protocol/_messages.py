"""The messages of the fieldsync wire protocol, as frozen dataclasses.

Each message checks its own fields when built (h11's ``_events.py`` style): a
message that exists is one the codec can encode. Building an illegal one raises
``LocalProtocolError``; the decoder re-raises that as ``RemoteProtocolError``
because then it was the peer that sent it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from typing import TypeAlias

from ._batch import check_alarm_records, check_records, iter_rows
from ._config import ConfigOp
from ._errors import ErrorCode, LocalProtocolError
from ._records import RECORD_SIZE, EventRecord

__all__ = [
    "DIGEST_SIZE",
    "EMPTY_DIGEST",
    "MAX_BATCH_RECORDS",
    "MAX_SEQ",
    "MAX_CONFIG_OPS",
    "Ack",
    "Alarm",
    "AlarmAck",
    "Bye",
    "ConfigAck",
    "ConfigDelta",
    "ConfigSnapshot",
    "Error",
    "EventBatch",
    "Heartbeat",
    "Hello",
    "Message",
    "MessageType",
    "Standby",
    "Takeover",
    "Welcome",
]

MAX_BATCH_RECORDS = 0xFFFF
#: Seqs and high-water marks stay within a signed 64-bit integer (docs/protocol.md 7.1).
MAX_SEQ = 2**63 - 1
DIGEST_SIZE = 32
#: SHA-256 of no bytes: the digest of the empty configuration (version 0).
EMPTY_DIGEST = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
MAX_CONFIG_OPS = 2**32 - 1
MAX_FIRMWARE_LEN = 32
MAX_NODE_ID_LEN = 64
MAX_ERROR_TEXT_LEN = 1024


class MessageType(enum.IntEnum):
    """The frame header's type byte."""

    HELLO = 1
    WELCOME = 2
    EVENT_BATCH = 3
    ACK = 4
    CONFIG_DELTA = 5
    CONFIG_SNAPSHOT = 6
    CONFIG_ACK = 7
    HEARTBEAT = 8
    ERROR = 9
    BYE = 10
    STANDBY = 11
    TAKEOVER = 12
    ALARM = 13
    ALARM_ACK = 14


def _u(name: str, value: int, bits: int, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 2**bits:
        raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"{name}={value!r} is outside {low}..{2**bits - 1}")


def _digest(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} must be {DIGEST_SIZE} bytes")


def _text(name: str, value: str, limit: int) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} must be text, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"{name} is {size} bytes of UTF-8, the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} is not valid Unicode text") from None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Panel -> host, first message of a session: who I am and what I hold."""

    panel_id: int
    boot_id: int
    firmware: str
    #: Oldest and newest seq in the panel's buffer (0, 0 when it is empty).
    oldest_seq: int
    newest_seq: int
    config_version: int
    #: SHA-256 of the panel's canonical configuration (docs/protocol.md 8.1).
    config_digest: bytes
    #: The newest cluster epoch this panel has ever accepted.
    max_epoch: int

    def __post_init__(self) -> None:
        _u("panel_id", self.panel_id, 32, low=1)
        _u("boot_id", self.boot_id, 64)
        _text("firmware", self.firmware, MAX_FIRMWARE_LEN)
        if not self.firmware.isascii():
            raise LocalProtocolError(ErrorCode.MALFORMED, "firmware must be ASCII")
        _u("oldest_seq", self.oldest_seq, 63)
        _u("newest_seq", self.newest_seq, 63)
        if self.oldest_seq > self.newest_seq:
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE,
                f"oldest_seq {self.oldest_seq} is after newest_seq {self.newest_seq}",
            )
        _u("config_version", self.config_version, 64)
        _digest("config_digest", self.config_digest)
        _u("max_epoch", self.max_epoch, 64)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Host -> panel: session accepted; resume after ``hwm``."""

    node_id: str
    epoch: int
    #: The store's high-water mark for this panel: everything up to it is durable.
    hwm: int
    config_version: int
    #: The server's configuration digest at ``config_version``.
    config_digest: bytes
    #: H: how often a busy end sends (docs/protocol.md 9.1).
    heartbeat_ms: int
    #: I: how often a quiet panel probes the node; at least ``heartbeat_ms``.
    idle_ms: int

    def __post_init__(self) -> None:
        _text("node_id", self.node_id, MAX_NODE_ID_LEN)
        _u("epoch", self.epoch, 64, low=1)
        _u("hwm", self.hwm, 63)
        _u("config_version", self.config_version, 64)
        _digest("config_digest", self.config_digest)
        _u("heartbeat_ms", self.heartbeat_ms, 32, low=1)
        _u("idle_ms", self.idle_ms, 32, low=self.heartbeat_ms)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EventBatch:
    """Panel -> host: consecutive event records, packed 32 bytes each.

    ``records`` stays packed so a host can hand it to the store without building
    one object per event; ``events()`` gives the checked dataclasses.
    """

    first_seq: int
    records: bytes
    #: Last seq the batch accounts for; derived from ``records`` when built.
    last_seq: int = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.records, bytes):
            raise LocalProtocolError(ErrorCode.MALFORMED, "records must be bytes")
        _u("first_seq", self.first_seq, 63, low=1)
        if len(self.records) > MAX_BATCH_RECORDS * RECORD_SIZE:
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE,
                f"{len(self.records) // RECORD_SIZE} records exceed {MAX_BATCH_RECORDS} per batch",
            )
        object.__setattr__(self, "last_seq", check_records(self.first_seq, self.records))

    @classmethod
    def of(cls, records: list[EventRecord]) -> EventBatch:
        if not records:
            raise LocalProtocolError(ErrorCode.MALFORMED, "a batch holds at least one record")
        return cls(first_seq=records[0].seq, records=b"".join(r.pack() for r in records))

    @property
    def count(self) -> int:
        return len(self.records) // RECORD_SIZE

    def rows(self) -> Iterator[tuple[int, int, int, int, int, int, int, int]]:
        return iter_rows(self.records)

    def events(self) -> list[EventRecord]:
        return [EventRecord.from_tuple(row) for row in iter_rows(self.records)]

    def __repr__(self) -> str:
        return f"EventBatch(first_seq={self.first_seq}, last_seq={self.last_seq}, count={self.count})"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Host -> panel: every seq up to ``up_to_seq`` is committed to the store."""

    epoch: int
    up_to_seq: int

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64, low=1)
        _u("up_to_seq", self.up_to_seq, 64)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigDelta:
    """Host -> panel: apply ``ops`` to go from ``from_version`` to ``to_version``."""

    epoch: int
    from_version: int
    to_version: int
    #: The configuration's digest at ``to_version``.
    digest: bytes
    ops: tuple[ConfigOp, ...]

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64, low=1)
        _u("from_version", self.from_version, 64)
        _u("to_version", self.to_version, 64)
        _digest("digest", self.digest)
        if self.to_version <= self.from_version:
            raise LocalProtocolError(
                ErrorCode.CONFIG_VERSION,
                f"delta goes from version {self.from_version} to {self.to_version}; it must move forward",
            )
        _ops(self.ops)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigSnapshot:
    """Host -> panel: one part of the full configuration at ``version``.

    A large site's snapshot is split into ``parts`` frames; the panel applies the
    whole set atomically when part ``parts - 1`` arrives.
    """

    epoch: int
    version: int
    #: The configuration's digest at ``version``.
    digest: bytes
    part: int
    parts: int
    ops: tuple[ConfigOp, ...]

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64, low=1)
        _u("version", self.version, 64)
        _digest("digest", self.digest)
        _u("parts", self.parts, 16, low=1)
        _u("part", self.part, 16)
        if self.part >= self.parts:
            raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"snapshot part {self.part} of {self.parts} parts")
        _ops(self.ops)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigAck:
    """Panel -> host: configuration ``version`` is applied; ``digest`` is what the panel now holds."""

    version: int
    digest: bytes

    def __post_init__(self) -> None:
        _u("version", self.version, 64)
        _digest("digest", self.digest)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Either way, when nothing else was sent for a heartbeat interval.

    A panel puts the newest epoch it has seen, so a stale node learns it is stale.
    """

    epoch: int

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """Either way: the sender ends the session because of ``code``."""

    epoch: int
    code: int
    text: str

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64)
        _u("code", self.code, 16)
        _text("text", self.text, MAX_ERROR_TEXT_LEN)

    @property
    def error_code(self) -> ErrorCode | None:
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    """Either way: a clean end of session."""

    epoch: int
    reason: int = 0

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64)
        _u("reason", self.reason, 16)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Standby:
    """Host -> panel, instead of WELCOME, on a connection to a standby node's park address:
    the session is parked (docs/protocol.md 6.3); hold it, nothing but liveness flows."""

    node_id: str
    #: H and I of the parked session's liveness, as a WELCOME's.
    heartbeat_ms: int
    idle_ms: int

    def __post_init__(self) -> None:
        _text("node_id", self.node_id, MAX_NODE_ID_LEN)
        _u("heartbeat_ms", self.heartbeat_ms, 32, low=1)
        _u("idle_ms", self.idle_ms, 32, low=self.heartbeat_ms)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Takeover:
    """Host -> panel, on a parked session: this node now serves under ``epoch``; say HELLO again."""

    epoch: int

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64, low=1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Alarm:
    """Panel -> host: copies of alarm records, in rising seq order, ahead of the backlog
    (docs/protocol.md 7.6). The records keep their places in the event sequence too."""

    records: bytes
    first_seq: int = dataclasses.field(init=False, compare=False)
    last_seq: int = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.records, bytes):
            raise LocalProtocolError(ErrorCode.MALFORMED, "records must be bytes")
        if len(self.records) > MAX_BATCH_RECORDS * RECORD_SIZE:
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE,
                f"{len(self.records) // RECORD_SIZE} alarms exceed {MAX_BATCH_RECORDS} per ALARM",
            )
        first, last = check_alarm_records(self.records)
        object.__setattr__(self, "first_seq", first)
        object.__setattr__(self, "last_seq", last)

    @classmethod
    def of(cls, records: list[EventRecord]) -> Alarm:
        return cls(records=b"".join(r.pack() for r in records))

    @property
    def count(self) -> int:
        return len(self.records) // RECORD_SIZE

    def events(self) -> list[EventRecord]:
        return [EventRecord.from_tuple(row) for row in iter_rows(self.records)]

    def __repr__(self) -> str:
        return f"Alarm(first_seq={self.first_seq}, last_seq={self.last_seq}, count={self.count})"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AlarmAck:
    """Host -> panel: every alarm of this session's ALARMs up to ``up_to_seq`` is stored."""

    epoch: int
    up_to_seq: int

    def __post_init__(self) -> None:
        _u("epoch", self.epoch, 64, low=1)
        _u("up_to_seq", self.up_to_seq, 64)


def _ops(ops: tuple[ConfigOp, ...]) -> None:
    if not isinstance(ops, tuple):
        raise LocalProtocolError(ErrorCode.MALFORMED, "ops must be a tuple")


Message: TypeAlias = (
    Hello
    | Welcome
    | EventBatch
    | Ack
    | ConfigDelta
    | ConfigSnapshot
    | ConfigAck
    | Heartbeat
    | Error
    | Bye
    | Standby
    | Takeover
    | Alarm
    | AlarmAck
)

MESSAGE_TYPES: dict[type[Message], MessageType] = {
    Hello: MessageType.HELLO,
    Welcome: MessageType.WELCOME,
    EventBatch: MessageType.EVENT_BATCH,
    Ack: MessageType.ACK,
    ConfigDelta: MessageType.CONFIG_DELTA,
    ConfigSnapshot: MessageType.CONFIG_SNAPSHOT,
    ConfigAck: MessageType.CONFIG_ACK,
    Heartbeat: MessageType.HEARTBEAT,
    Error: MessageType.ERROR,
    Bye: MessageType.BYE,
    Standby: MessageType.STANDBY,
    Takeover: MessageType.TAKEOVER,
    Alarm: MessageType.ALARM,
    AlarmAck: MessageType.ALARM_ACK,
}
