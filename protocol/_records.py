"""Record types shared by the wire, the panel buffer and the server store.

An event record is fixed-size (32 bytes on the wire and in the panel's ring
buffer) so that a batch is a flat byte string that ``struct.iter_unpack`` can
walk at C speed. The ``EventRecord`` dataclass is the checked, readable form for
code that handles one event at a time; hot paths keep the packed bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from ._errors import ErrorCode, RemoteProtocolError

__all__ = [
    "ALARM_KINDS",
    "ALARM_KIND_BYTES",
    "GAP_KINDS",
    "RECORD_SIZE",
    "RECORD_STRUCT",
    "U64_MAX",
    "EventFlags",
    "EventKind",
    "EventRecord",
]

U64_MAX = 2**64 - 1

#: seq u64, time_us u64, kind u8, door u8, reader u8, flags u8, card u64, aux u32
RECORD_STRUCT = struct.Struct(">QQBBBBQI")
RECORD_SIZE = RECORD_STRUCT.size
assert RECORD_SIZE == 32


class EventKind(enum.IntEnum):
    """What happened at the panel. Values are stable wire constants."""

    ACCESS_GRANTED = 1
    DENIED_UNKNOWN_CARD = 2
    DENIED_SCHEDULE = 3
    DENIED_DOOR_MODE = 4
    DENIED_EXPIRED = 5
    DENIED_PIN = 6
    DOOR_FORCED = 7
    DOOR_HELD = 8
    TAMPER = 9
    POWER_FAIL = 10
    POWER_RESTORE = 11
    HOST_OFFLINE = 12
    HOST_ONLINE = 13
    #: Gap marker: the panel dropped seq ``seq..card`` (``aux`` events) to stay in budget.
    BUFFER_OVERFLOW = 14
    #: ``aux`` new events were refused (never numbered) while the buffer was full.
    EVENTS_REFUSED = 15
    #: Gap marker: seq ``seq..card`` were lost with the RAM buffer at a power-cycle.
    BUFFER_LOST = 16
    CONFIG_APPLIED = 17
    READER_OFFLINE = 18
    READER_ONLINE = 19
    READER_AUTH_FAILED = 20
    #: Gap marker: seq ``seq..card`` were acknowledged to the panel and the server no longer
    #: holds them (its WELCOME's hwm is below them: an asynchronous mirror's failover). The
    #: panel freed them at the ACK, so it can only declare them.
    SERVER_LOST = 21


#: Kinds whose record stands for a declared gap ``seq..card`` instead of one event.
GAP_KINDS = frozenset({EventKind.BUFFER_OVERFLOW, EventKind.BUFFER_LOST, EventKind.SERVER_LOST})

#: Kinds that are alarms: a copy of each travels in the alarm lane (docs/protocol.md 7.6).
ALARM_KINDS = frozenset(
    {
        EventKind.DOOR_FORCED,
        EventKind.DOOR_HELD,
        EventKind.TAMPER,
        EventKind.POWER_FAIL,
        EventKind.HOST_OFFLINE,
        EventKind.BUFFER_OVERFLOW,
        EventKind.EVENTS_REFUSED,
        EventKind.BUFFER_LOST,
        EventKind.READER_OFFLINE,
        EventKind.READER_AUTH_FAILED,
        EventKind.SERVER_LOST,
    }
)
#: Their values as bytes, for ``bytes.translate`` over a batch's kind column.
ALARM_KIND_BYTES = bytes(sorted(int(k) for k in ALARM_KINDS))

#: Byte string of every valid kind value; ``bytes.translate`` deletes them so an
#: empty remainder proves every kind in a batch is known (checked at C speed).
VALID_KIND_BYTES = bytes(sorted(int(k) for k in EventKind))


class EventFlags(enum.IntFlag):
    """Per-event flags (u8)."""

    NONE = 0
    #: Decided by the panel alone while the host was unreachable.
    DECIDED_OFFLINE = 1
    PIN_USED = 2


_MAX_DOOR = 255


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """One access-control event as the panel recorded it.

    For a gap marker (``kind in GAP_KINDS``) ``card`` holds the last seq of the
    declared gap and ``aux`` its length, so the record stands for seq
    ``seq..card``.
    """

    seq: int
    time_us: int
    kind: EventKind
    door: int = 0
    reader: int = 0
    flags: EventFlags = EventFlags.NONE
    card: int = 0
    aux: int = 0

    def __post_init__(self) -> None:
        _check_range("seq", self.seq, 1, U64_MAX)
        _check_range("time_us", self.time_us, 0, U64_MAX)
        _check_range("door", self.door, 0, _MAX_DOOR)
        _check_range("reader", self.reader, 0, 255)
        _check_range("card", self.card, 0, U64_MAX)
        _check_range("aux", self.aux, 0, 2**32 - 1)
        # Accept plain ints from callers that decode rows themselves.
        object.__setattr__(self, "kind", EventKind(self.kind))
        _check_range("flags", int(self.flags), 0, 255)
        object.__setattr__(self, "flags", EventFlags(self.flags))
        if self.kind in GAP_KINDS and (self.card < self.seq or self.aux != self.card - self.seq + 1):
            raise ValueError(
                f"gap marker at seq {self.seq} must have card >= seq (last dropped seq) "
                f"and aux == card - seq + 1, got card={self.card} aux={self.aux}"
            )

    @property
    def last_seq(self) -> int:
        """The last seq this record accounts for (``card`` for a gap marker)."""
        return self.card if self.kind in GAP_KINDS else self.seq

    def pack(self) -> bytes:
        return RECORD_STRUCT.pack(
            self.seq,
            self.time_us,
            self.kind,
            self.door,
            self.reader,
            self.flags,
            self.card,
            self.aux,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> EventRecord:
        """Parse one 32-byte record; raises ``RemoteProtocolError`` on bad content."""
        if len(data) != RECORD_SIZE:
            raise RemoteProtocolError(ErrorCode.MALFORMED, f"event record is {len(data)} bytes, expected {RECORD_SIZE}")
        return cls.from_tuple(RECORD_STRUCT.unpack(data))

    @classmethod
    def from_tuple(cls, row: tuple[int, ...]) -> EventRecord:
        seq, time_us, kind, door, reader, flags, card, aux = row
        checked_kind = _kind(kind)
        try:
            return cls(
                seq=seq,
                time_us=time_us,
                kind=checked_kind,
                door=door,
                reader=reader,
                flags=EventFlags(flags),
                card=card,
                aux=aux,
            )
        except ValueError as exc:
            raise RemoteProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, str(exc)) from None


def _kind(value: int) -> EventKind:
    try:
        return EventKind(value)
    except ValueError:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_EVENT_KIND, f"unknown event kind {value}") from None


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is outside {low}..{high}")
