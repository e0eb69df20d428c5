"""Payload codec: message dataclasses <-> payload bytes.

construct (``_wire.py``) parses and builds every payload except the records of
an EVENT_BATCH, which stay packed and go through ``_batch.py``. Library
exceptions are mapped here, where they enter (httpcore's ``map_exceptions``
idea): whatever bytes come in, only ``RemoteProtocolError`` leaves.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from typing import Any

import construct

from . import _wire
from ._config import (
    AccessLevel,
    Cardholder,
    ConfigOp,
    DeleteAccessLevel,
    DeleteCardholder,
    DeleteSchedule,
    Door,
    Interval,
    LevelEntry,
    PutAccessLevel,
    PutCardholder,
    PutDoor,
    PutSchedule,
    Schedule,
)
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._messages import (
    MESSAGE_TYPES,
    Ack,
    Alarm,
    AlarmAck,
    Bye,
    ConfigAck,
    ConfigDelta,
    ConfigSnapshot,
    Error,
    EventBatch,
    Heartbeat,
    Hello,
    Message,
    MessageType,
    Standby,
    Takeover,
    Welcome,
)
from ._records import RECORD_SIZE

__all__ = ["config_digest", "decode_payload", "encode_config_op", "encode_payload", "message_type"]

_BATCH_HEAD = struct.Struct(">QH")
# HEARTBEAT and ACK are fixed-size and by far the most frequent small messages (a
# thousand sessions send one each way every second): struct, not construct, for
# them. tests/test_codec.py proves both paths give the same bytes and messages.
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_U64_U64 = struct.Struct(">QQ")


def message_type(message: Message) -> MessageType:
    return MESSAGE_TYPES[type(message)]


# -- config ops ------------------------------------------------------------------


def _op_to_wire(op: ConfigOp) -> dict[str, Any]:
    match op:
        case PutCardholder(cardholder=c):
            body: Any = {
                "card": c.card,
                "pin": c.pin,
                "valid_from_us": c.valid_from_us,
                "valid_until_us": c.valid_until_us,
                "levels": list(c.levels),
            }
            return {"op": _wire.OP_PUT_CARDHOLDER, "body": body}
        case DeleteCardholder(card=card):
            return {"op": _wire.OP_DELETE_CARDHOLDER, "body": card}
        case PutSchedule(schedule=s):
            intervals = [{"days": i.days, "start": i.start, "end": i.end} for i in s.intervals]
            return {"op": _wire.OP_PUT_SCHEDULE, "body": {"id": s.id, "intervals": intervals}}
        case DeleteSchedule(id=ident):
            return {"op": _wire.OP_DELETE_SCHEDULE, "body": ident}
        case PutDoor(door=d):
            return {"op": _wire.OP_PUT_DOOR, "body": {"door": d.door, "mode": int(d.mode)}}
        case PutAccessLevel(level=lv):
            entries = [{"door": e.door, "schedule": e.schedule} for e in lv.entries]
            return {"op": _wire.OP_PUT_ACCESS_LEVEL, "body": {"id": lv.id, "entries": entries}}
        case DeleteAccessLevel(id=ident):
            return {"op": _wire.OP_DELETE_ACCESS_LEVEL, "body": ident}
    raise LocalProtocolError(ErrorCode.UNKNOWN_CONFIG_OP, f"not a config operation: {op!r}")


def _op_from_wire(item: Any) -> ConfigOp:
    body = item.body
    match item.op:
        case _wire.OP_PUT_CARDHOLDER:
            return PutCardholder(
                cardholder=Cardholder(
                    card=body.card,
                    pin=body.pin,
                    valid_from_us=body.valid_from_us,
                    valid_until_us=body.valid_until_us,
                    levels=tuple(body.levels),
                )
            )
        case _wire.OP_DELETE_CARDHOLDER:
            return DeleteCardholder(card=body)
        case _wire.OP_PUT_SCHEDULE:
            intervals = tuple(Interval(days=i.days, start=i.start, end=i.end) for i in body.intervals)
            return PutSchedule(schedule=Schedule(id=body.id, intervals=intervals))
        case _wire.OP_DELETE_SCHEDULE:
            return DeleteSchedule(id=body)
        case _wire.OP_PUT_DOOR:
            return PutDoor(door=Door(door=body.door, mode=body.mode))
        case _wire.OP_PUT_ACCESS_LEVEL:
            entries = tuple(LevelEntry(door=e.door, schedule=e.schedule) for e in body.entries)
            return PutAccessLevel(level=AccessLevel(id=body.id, entries=entries))
        case _wire.OP_DELETE_ACCESS_LEVEL:
            return DeleteAccessLevel(id=body)
    raise RemoteProtocolError(ErrorCode.UNKNOWN_CONFIG_OP, f"unknown config operation {item.op}")


def encode_config_op(op: ConfigOp) -> bytes:
    """One operation exactly as on the wire: the op byte, then its body."""
    try:
        return bytes(_wire.CONFIG_OP_COMPILED.build(_op_to_wire(op)))
    except (construct.ConstructError, struct.error, OverflowError) as exc:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"cannot encode {type(op).__name__}: {exc}") from None


def config_digest(canonical_ops: Iterable[ConfigOp]) -> bytes:
    """SHA-256 over the wire encodings of a configuration's canonical ``Put*`` operations.

    The caller gives the operations in canonical order (docs/protocol.md 8.1):
    schedules, access levels, doors, cardholders, each by ascending key.
    """
    digest = hashlib.sha256()
    for op in canonical_ops:
        digest.update(encode_config_op(op))
    return digest.digest()


# -- encode ------------------------------------------------------------------------


def encode_payload(message: Message) -> bytes:
    """Encode a message's payload (without the frame)."""
    if isinstance(message, EventBatch):
        return _BATCH_HEAD.pack(message.first_seq, message.count) + message.records
    if isinstance(message, Heartbeat):
        return _U64.pack(message.epoch)
    if isinstance(message, Ack | AlarmAck):
        return _U64_U64.pack(message.epoch, message.up_to_seq)
    if isinstance(message, Alarm):
        return _U16.pack(message.count) + message.records
    kind = message_type(message)
    if isinstance(message, ConfigDelta | ConfigSnapshot):
        fields: dict[str, Any] = {f: getattr(message, f) for f in message.__dataclass_fields__ if f != "ops"}
        fields["ops"] = [_op_to_wire(op) for op in message.ops]
    else:
        fields = {f: getattr(message, f) for f in message.__dataclass_fields__}
    try:
        return bytes(_wire.COMPILED[kind].build(fields))
    except (construct.ConstructError, UnicodeError, struct.error, OverflowError) as exc:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"cannot encode {kind.name}: {exc}") from None


# -- decode ------------------------------------------------------------------------


def _decode_batch(payload: bytes) -> EventBatch:
    if len(payload) < _BATCH_HEAD.size:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED, f"EVENT_BATCH payload is {len(payload)} bytes, shorter than its header"
        )
    first_seq, count = _BATCH_HEAD.unpack_from(payload)
    records = payload[_BATCH_HEAD.size :]
    if count == 0 or len(records) != count * RECORD_SIZE:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED,
            f"EVENT_BATCH declares {count} records but carries {len(records)} bytes ({count * RECORD_SIZE} expected)",
        )
    return EventBatch(first_seq=first_seq, records=records)


def _decode_alarm(payload: bytes) -> Alarm:
    if len(payload) < _U16.size:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED, f"ALARM payload is {len(payload)} bytes, shorter than its header"
        )
    (count,) = _U16.unpack_from(payload)
    records = payload[_U16.size :]
    if count == 0 or len(records) != count * RECORD_SIZE:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED,
            f"ALARM declares {count} records but carries {len(records)} bytes ({count * RECORD_SIZE} expected)",
        )
    return Alarm(records=records)


def _fields(parsed: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: parsed[name] for name in names}


def _from_construct(kind: MessageType, payload: bytes) -> Message:
    parsed = _wire.COMPILED[kind].parse(payload)
    names: tuple[str, ...]
    if kind is MessageType.HELLO:
        names = (
            "panel_id",
            "boot_id",
            "firmware",
            "oldest_seq",
            "newest_seq",
            "config_version",
            "config_digest",
            "max_epoch",
        )
        return Hello(**_fields(parsed, names))
    if kind is MessageType.WELCOME:
        names = ("node_id", "epoch", "hwm", "config_version", "config_digest", "heartbeat_ms", "idle_ms")
        return Welcome(**_fields(parsed, names))
    if kind is MessageType.ACK:
        return Ack(**_fields(parsed, ("epoch", "up_to_seq")))
    if kind is MessageType.CONFIG_DELTA:
        return ConfigDelta(
            epoch=parsed.epoch,
            from_version=parsed.from_version,
            to_version=parsed.to_version,
            digest=parsed.digest,
            ops=tuple(_op_from_wire(op) for op in parsed.ops),
        )
    if kind is MessageType.CONFIG_SNAPSHOT:
        return ConfigSnapshot(
            epoch=parsed.epoch,
            version=parsed.version,
            digest=parsed.digest,
            part=parsed.part,
            parts=parsed.parts,
            ops=tuple(_op_from_wire(op) for op in parsed.ops),
        )
    if kind is MessageType.CONFIG_ACK:
        return ConfigAck(version=parsed.version, digest=parsed.digest)
    if kind is MessageType.HEARTBEAT:
        return Heartbeat(epoch=parsed.epoch)
    if kind is MessageType.ERROR:
        return Error(epoch=parsed.epoch, code=parsed.code, text=parsed.text)
    if kind is MessageType.BYE:
        return Bye(epoch=parsed.epoch, reason=parsed.reason)
    if kind is MessageType.STANDBY:
        return Standby(**_fields(parsed, ("node_id", "heartbeat_ms", "idle_ms")))
    if kind is MessageType.TAKEOVER:
        return Takeover(epoch=parsed.epoch)
    if kind is MessageType.ALARM_ACK:
        return AlarmAck(**_fields(parsed, ("epoch", "up_to_seq")))
    raise AssertionError(f"no decoder for {kind!r}")  # pragma: no cover


def _guard(kind: MessageType, decode: Callable[[], Message]) -> Message:
    try:
        return decode()
    except RemoteProtocolError:
        raise
    except LocalProtocolError as exc:
        # The message constructor refused a field: the peer sent it.
        raise RemoteProtocolError(exc.code, f"{kind.name}: {exc.message}") from None
    except construct.ExplicitError:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_CONFIG_OP, f"{kind.name} carries an unknown config operation"
        ) from None
    except construct.ConstructError as exc:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED, f"{kind.name} payload does not parse: {_describe(exc)}"
        ) from None
    except UnicodeError:
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{kind.name} carries text that is not valid") from None
    except struct.error as exc:
        # construct's compiled parsers let struct's short-buffer error through.
        raise RemoteProtocolError(ErrorCode.MALFORMED, f"{kind.name} payload is too short: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise RemoteProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"{kind.name}: {exc}") from None


def _describe(exc: construct.ConstructError) -> str:
    text = str(exc).replace("\n", " ").strip()
    return text or type(exc).__name__


def decode_payload(type_code: int, payload: bytes) -> Message:
    """Decode a payload whose frame said ``type_code``; raises only RemoteProtocolError."""
    try:
        kind = MessageType(type_code)
    except ValueError:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_code}") from None
    if kind is MessageType.EVENT_BATCH:
        return _guard(kind, lambda: _decode_batch(payload))
    if kind is MessageType.HEARTBEAT and len(payload) == _U64.size:
        return Heartbeat(epoch=_U64.unpack(payload)[0])
    if kind is MessageType.ACK and len(payload) == _U64_U64.size:
        epoch, up_to_seq = _U64_U64.unpack(payload)
        return Ack(epoch=epoch, up_to_seq=up_to_seq)
    if kind is MessageType.ALARM:
        return _guard(kind, lambda: _decode_alarm(payload))
    return _guard(kind, lambda: _from_construct(kind, payload))
