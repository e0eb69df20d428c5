"""An independent codec for the fieldsync wire protocol, version 5, written from docs/protocol.md alone.

Sections: frame and reader rules (3), message types (4), messages (5; STANDBY and TAKEOVER of parked
sessions, 6.3, and ALARM and ALARM_ACK of the alarm lane, 7.6, included), event records and batch checks
(7.1, 7.2), the checks of an ALARM (7.6), configuration operations, canonical form and digest (8.1, 8.2).
It shares no code with the implementation under test.

Why one module of this size: the whole wire format written once, in the spec's section order,
so that it can be read against docs/protocol.md side by side.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import crc32c as _crc32c

MAGIC = b"\xf5\x5c"
VERSION = 5
MAX_PAYLOAD = 1 << 20
HEADER_LEN = 11
OVERHEAD = 15
MAX_SEQ = (1 << 63) - 1
U64 = (1 << 64) - 1
EMPTY_DIGEST = hashlib.sha256(b"").digest()

HELLO, WELCOME, EVENT_BATCH, ACK, CONFIG_DELTA, CONFIG_SNAPSHOT, CONFIG_ACK, HEARTBEAT, ERROR, BYE = range(1, 11)
STANDBY, TAKEOVER = 11, 12  # version 4 (13.5): parked sessions (6.3)
ALARM, ALARM_ACK = 13, 14  # version 5 (13.1): the alarm lane (7.6)
TYPE_NAMES = {
    1: "HELLO",
    2: "WELCOME",
    3: "EVENT_BATCH",
    4: "ACK",
    5: "CONFIG_DELTA",
    6: "CONFIG_SNAPSHOT",
    7: "CONFIG_ACK",
    8: "HEARTBEAT",
    9: "ERROR",
    10: "BYE",
    11: "STANDBY",
    12: "TAKEOVER",
    13: "ALARM",
    14: "ALARM_ACK",
}

# Section 11.
CODES = {
    "BAD_MAGIC": 100,
    "UNSUPPORTED_VERSION": 101,
    "FRAME_TOO_LARGE": 102,
    "BAD_CRC": 103,
    "UNKNOWN_TYPE": 104,
    "BAD_FLAGS": 105,
    "TRUNCATED": 106,
    "MALFORMED": 200,
    "FIELD_OUT_OF_RANGE": 201,
    "UNKNOWN_EVENT_KIND": 202,
    "UNKNOWN_CONFIG_OP": 203,
    "ILLEGAL_IN_STATE": 300,
    "SEQ_GAP": 301,
    "SEQ_ORDER": 302,
    "BAD_ACK": 303,
    "STALE_EPOCH": 304,
    "EPOCH_MISMATCH": 305,
    "CONFIG_VERSION": 306,
    "TIMEOUT": 307,
    "CONFIG_DIGEST": 308,
    "UNAUTHENTICATED": 400,
    "PANEL_ID_MISMATCH": 401,
    "UNKNOWN_PANEL": 402,
    "REPLACED": 403,
    "STORE_REFUSED": 500,
    "OVERLOADED": 501,
    "SHUTTING_DOWN": 502,
    "INTERNAL": 503,
}
CODE_NAMES = {v: k for k, v in CODES.items()}

# Section 7.1.
KINDS = {
    1: "ACCESS_GRANTED",
    2: "DENIED_UNKNOWN_CARD",
    3: "DENIED_SCHEDULE",
    4: "DENIED_DOOR_MODE",
    5: "DENIED_EXPIRED",
    6: "DENIED_PIN",
    7: "DOOR_FORCED",
    8: "DOOR_HELD",
    9: "TAMPER",
    10: "POWER_FAIL",
    11: "POWER_RESTORE",
    12: "HOST_OFFLINE",
    13: "HOST_ONLINE",
    14: "BUFFER_OVERFLOW",
    15: "EVENTS_REFUSED",
    16: "BUFFER_LOST",
    17: "CONFIG_APPLIED",
    18: "READER_OFFLINE",
    19: "READER_ONLINE",
    20: "READER_AUTH_FAILED",
    21: "SERVER_LOST",
}
GAP_KINDS = frozenset({14, 16, 21})
# Section 7.6: the kinds an ALARM may carry (version 5, 13.1).
ALARM_KINDS = frozenset({7, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21})


def code_name(code: int) -> str:
    return f"{CODE_NAMES.get(code, '?')}({code})"


def crc32c(data: bytes) -> int:
    return int(_crc32c.crc32c(data)) & 0xFFFFFFFF


class ProtocolError(Exception):
    """A violation found while reading: `code` is the section 11 code the spec names for it."""

    def __init__(self, code: int | str, text: str = "", *, version: int | None = None) -> None:
        self.code = CODES[code] if isinstance(code, str) else code
        self.text = text
        self.version = version  # the peer's version byte, for UNSUPPORTED_VERSION (13.2)
        super().__init__(f"{code_name(self.code)}: {text}")


# ---------------------------------------------------------------------------------------------- frames (3)


def header(
    mtype: int, length: int, *, version: int = VERSION, flags: int = 0, magic: bytes = MAGIC, bad_hcrc: bool = False
) -> bytes:
    head = magic + bytes((version, mtype, flags)) + struct.pack(">I", length)
    hcrc = crc32c(head) & 0xFFFF
    if bad_hcrc:
        hcrc ^= 0x5A5A
    return head + struct.pack(">H", hcrc)


def encode_frame(
    mtype: int,
    payload: bytes,
    *,
    version: int = VERSION,
    flags: int = 0,
    magic: bytes = MAGIC,
    length: int | None = None,
    bad_hcrc: bool = False,
    bad_crc: bool = False,
) -> bytes:
    head = header(
        mtype, len(payload) if length is None else length, version=version, flags=flags, magic=magic, bad_hcrc=bad_hcrc
    )
    crc = crc32c(head + payload)
    if bad_crc:
        crc ^= 0xDEADBEEF
    return head + payload + struct.pack(">I", crc)


@dataclass(frozen=True)
class Frame:
    version: int
    type: int
    flags: int
    payload: bytes


class FrameReader:
    """Section 3's reader rules, applied in order as bytes arrive (TCP/TLS: no resynchronization).

    `any_version` lets a reader take frames of another version (to read the ERROR of 13.2).
    """

    def __init__(self, *, limit: int = MAX_PAYLOAD, any_version: bool = False) -> None:
        self.buf = bytearray()
        self.limit = limit
        self.any_version = any_version

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out: list[Frame] = []
        while True:
            buf = self.buf
            if (len(buf) >= 1 and buf[0] != MAGIC[0]) or (len(buf) >= 2 and buf[1] != MAGIC[1]):
                raise ProtocolError("BAD_MAGIC", f"bytes {bytes(buf[:2]).hex()} where a frame should start")
            if len(buf) < HEADER_LEN:
                return out
            (hcrc,) = struct.unpack_from(">H", buf, 9)
            if crc32c(bytes(buf[:9])) & 0xFFFF != hcrc:
                raise ProtocolError("BAD_CRC", "header check (hcrc) wrong")
            version, mtype, flags = buf[2], buf[3], buf[4]
            if version != VERSION and not self.any_version:
                raise ProtocolError("UNSUPPORTED_VERSION", f"version {version}", version=version)
            if mtype not in TYPE_NAMES:
                raise ProtocolError("UNKNOWN_TYPE", f"type {mtype}")
            if flags != 0:
                raise ProtocolError("BAD_FLAGS", f"flags {flags:#x}")
            (length,) = struct.unpack_from(">I", buf, 5)
            if length > self.limit:
                raise ProtocolError("FRAME_TOO_LARGE", f"declared length {length}")
            end = HEADER_LEN + length + 4
            if len(buf) < end:
                return out
            (crc,) = struct.unpack_from(">I", buf, end - 4)
            if crc32c(bytes(buf[: end - 4])) != crc:
                raise ProtocolError("BAD_CRC", "frame crc wrong")
            out.append(Frame(version, mtype, flags, bytes(buf[HEADER_LEN : end - 4])))
            del buf[:end]

    def eof(self) -> None:
        if self.buf:
            raise ProtocolError("TRUNCATED", f"stream ended {len(self.buf)} bytes into a frame")


# ---------------------------------------------------------------------------------------------- payload cursor


class _Cur:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.data):
            raise ProtocolError("MALFORMED", "payload too short")
        out = self.data[self.i : self.i + n]
        self.i += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def text(self, n: int, encoding: str) -> str:
        raw = self.take(n)
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            raise ProtocolError("MALFORMED", f"text is not valid {encoding}") from None

    def end(self) -> None:
        if self.i != len(self.data):
            raise ProtocolError("MALFORMED", f"{len(self.data) - self.i} trailing bytes")


def _range(ok: bool, what: str) -> None:
    if not ok:
        raise ProtocolError("FIELD_OUT_OF_RANGE", what)


def _str8(text: str, encoding: str) -> bytes:
    raw = text.encode(encoding)
    return bytes((len(raw),)) + raw


# ---------------------------------------------------------------------------------------------- operations (8.2)


@dataclass(frozen=True)
class PutCardholder:
    OP: ClassVar[int] = 1
    card: int
    pin: int = 0
    valid_from_us: int = 0
    valid_until_us: int = 0
    levels: tuple[int, ...] = ()

    def body(self) -> bytes:
        return struct.pack(
            ">QIQQB", self.card, self.pin, self.valid_from_us, self.valid_until_us, len(self.levels)
        ) + b"".join(struct.pack(">H", lv) for lv in self.levels)

    def check(self) -> None:
        _range(self.card >= 1, "PutCardholder card 0")
        _range(self.pin <= 99_999_999, "PutCardholder pin above 99,999,999")
        _range(len(self.levels) <= 32, "PutCardholder more than 32 levels")
        _range(all(lv >= 1 for lv in self.levels), "PutCardholder level 0")


@dataclass(frozen=True)
class DeleteCardholder:
    OP: ClassVar[int] = 2
    card: int

    def body(self) -> bytes:
        return struct.pack(">Q", self.card)

    def check(self) -> None:
        _range(self.card >= 1, "DeleteCardholder card 0")


@dataclass(frozen=True)
class PutSchedule:
    OP: ClassVar[int] = 3
    id: int
    intervals: tuple[tuple[int, int, int], ...] = ()  # (days, start, end)

    def body(self) -> bytes:
        return struct.pack(">HB", self.id, len(self.intervals)) + b"".join(
            struct.pack(">BHH", *iv) for iv in self.intervals
        )

    def check(self) -> None:
        _range(self.id >= 1, "PutSchedule id 0")
        _range(len(self.intervals) <= 16, "PutSchedule more than 16 intervals")
        for days, start, end in self.intervals:
            _range(days <= 127, "PutSchedule days above 127")
            _range(start <= 1440 and end <= 1440 and start < end, "PutSchedule interval start/end")


@dataclass(frozen=True)
class DeleteSchedule:
    OP: ClassVar[int] = 4
    id: int

    def body(self) -> bytes:
        return struct.pack(">H", self.id)

    def check(self) -> None:
        _range(self.id >= 1, "DeleteSchedule id 0")


@dataclass(frozen=True)
class PutDoor:
    OP: ClassVar[int] = 5
    door: int
    mode: int

    def body(self) -> bytes:
        return struct.pack(">BB", self.door, self.mode)

    def check(self) -> None:
        _range(1 <= self.mode <= 4, "PutDoor mode not 1..4")


@dataclass(frozen=True)
class PutAccessLevel:
    OP: ClassVar[int] = 6
    id: int
    entries: tuple[tuple[int, int], ...] = ()  # (door, schedule)

    def body(self) -> bytes:
        return struct.pack(">HB", self.id, len(self.entries)) + b"".join(struct.pack(">BH", *en) for en in self.entries)

    def check(self) -> None:
        _range(self.id >= 1, "PutAccessLevel id 0")
        _range(len(self.entries) <= 64, "PutAccessLevel more than 64 entries")
        _range(all(s >= 1 for _, s in self.entries), "PutAccessLevel schedule 0")


@dataclass(frozen=True)
class DeleteAccessLevel:
    OP: ClassVar[int] = 7
    id: int

    def body(self) -> bytes:
        return struct.pack(">H", self.id)

    def check(self) -> None:
        _range(self.id >= 1, "DeleteAccessLevel id 0")


Op = PutCardholder | DeleteCardholder | PutSchedule | DeleteSchedule | PutDoor | PutAccessLevel | DeleteAccessLevel
OP_CLASSES: dict[int, type[Any]] = {
    c.OP: c
    for c in (PutCardholder, DeleteCardholder, PutSchedule, DeleteSchedule, PutDoor, PutAccessLevel, DeleteAccessLevel)
}
OP_NAMES = {c.__name__: n for n, c in OP_CLASSES.items()}


def encode_op(op: Op) -> bytes:
    return bytes((op.OP,)) + op.body()


def encode_ops(ops: Sequence[Op]) -> bytes:
    return struct.pack(">I", len(ops)) + b"".join(encode_op(op) for op in ops)


def _read_op(c: _Cur) -> Op:
    code = c.u8()
    if code == 1:
        card, pin, vf, vu, n = c.u64(), c.u32(), c.u64(), c.u64(), c.u8()
        return PutCardholder(card, pin, vf, vu, tuple(c.u16() for _ in range(n)))
    if code == 2:
        return DeleteCardholder(c.u64())
    if code == 3:
        sid, n = c.u16(), c.u8()
        return PutSchedule(sid, tuple((c.u8(), c.u16(), c.u16()) for _ in range(n)))
    if code == 4:
        return DeleteSchedule(c.u16())
    if code == 5:
        return PutDoor(c.u8(), c.u8())
    if code == 6:
        lid, n = c.u16(), c.u8()
        return PutAccessLevel(lid, tuple((c.u8(), c.u16()) for _ in range(n)))
    if code == 7:
        return DeleteAccessLevel(c.u16())
    raise ProtocolError("UNKNOWN_CONFIG_OP", f"op {code}")


def _read_ops(c: _Cur) -> tuple[Op, ...]:
    n = c.u32()
    if n > len(c.data):  # each op is at least 2 bytes: a count this large cannot be honest
        raise ProtocolError("MALFORMED", f"{n} operations in {len(c.data)} bytes")
    return tuple(_read_op(c) for _ in range(n))


# ---------------------------------------------------------------------------------------------- configuration (8.1)


@dataclass
class Config:
    schedules: dict[int, PutSchedule] = field(default_factory=dict)
    levels: dict[int, PutAccessLevel] = field(default_factory=dict)
    doors: dict[int, PutDoor] = field(default_factory=dict)
    cardholders: dict[int, PutCardholder] = field(default_factory=dict)

    def copy(self) -> Config:
        return Config(dict(self.schedules), dict(self.levels), dict(self.doors), dict(self.cardholders))

    def applied(self, ops: Iterable[Op]) -> Config:
        """A new configuration: `ops` applied in order (atomically: this one is untouched)."""
        new = self.copy()
        for op in ops:
            if isinstance(op, PutCardholder):
                new.cardholders[op.card] = op
            elif isinstance(op, DeleteCardholder):
                new.cardholders.pop(op.card, None)
            elif isinstance(op, PutSchedule):
                new.schedules[op.id] = op
            elif isinstance(op, DeleteSchedule):
                new.schedules.pop(op.id, None)
            elif isinstance(op, PutDoor):
                new.doors[op.door] = op
            elif isinstance(op, PutAccessLevel):
                new.levels[op.id] = op
            else:
                new.levels.pop(op.id, None)
        return new

    def canonical(self) -> list[Op]:
        return [
            *(self.schedules[k] for k in sorted(self.schedules)),
            *(self.levels[k] for k in sorted(self.levels)),
            *(self.doors[k] for k in sorted(self.doors)),
            *(self.cardholders[k] for k in sorted(self.cardholders)),
        ]

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for op in self.canonical():
            h.update(encode_op(op))
        return h.digest()


def digest_of(ops: Iterable[Op]) -> bytes:
    return Config().applied(ops).digest()


# ---------------------------------------------------------------------------------------------- records (7.1)

_REC = struct.Struct(">QQBBBBQI")


@dataclass(frozen=True)
class Record:
    seq: int
    time_us: int = 0
    kind: int = 1
    door: int = 0
    reader: int = 0
    flags: int = 0
    card: int = 0
    aux: int = 0

    def encode(self) -> bytes:
        return _REC.pack(self.seq, self.time_us, self.kind, self.door, self.reader, self.flags, self.card, self.aux)

    @property
    def is_gap(self) -> bool:
        return self.kind in GAP_KINDS

    @property
    def last(self) -> int:
        return self.card if self.is_gap else self.seq


def gap_marker(first: int, last: int, *, kind: int = 14, time_us: int = 0) -> Record:
    return Record(first, time_us, kind, 0, 0, 0, last, last - first + 1)


# ---------------------------------------------------------------------------------------------- messages (5)


@dataclass(frozen=True)
class Hello:
    TYPE: ClassVar[int] = HELLO
    panel_id: int
    boot_id: int = 0
    firmware: str = "fieldsync-conformance"
    oldest_seq: int = 0
    newest_seq: int = 0
    config_version: int = 0
    config_digest: bytes = EMPTY_DIGEST
    max_epoch: int = 0

    def encode(self) -> bytes:
        return (
            struct.pack(">IQ", self.panel_id, self.boot_id)
            + _str8(self.firmware, "ascii")
            + struct.pack(">QQQ", self.oldest_seq, self.newest_seq, self.config_version)
            + self.config_digest
            + struct.pack(">Q", self.max_epoch)
        )

    @classmethod
    def decode(cls, c: _Cur) -> Hello:
        pid, boot = c.u32(), c.u64()
        fw = c.text(c.u8(), "ascii")
        m = cls(pid, boot, fw, c.u64(), c.u64(), c.u64(), c.take(32), c.u64())
        c.end()
        _range(m.panel_id >= 1, "HELLO panel_id 0")
        _range(len(fw) <= 32, "HELLO firmware above 32 bytes")
        _range(m.oldest_seq <= MAX_SEQ and m.newest_seq <= MAX_SEQ, "HELLO seq above 2^63-1")
        _range(m.newest_seq >= m.oldest_seq, "HELLO newest_seq below oldest_seq")
        return m


@dataclass(frozen=True)
class Welcome:
    TYPE: ClassVar[int] = WELCOME
    node_id: str
    epoch: int
    hwm: int
    config_version: int
    config_digest: bytes
    heartbeat_ms: int
    idle_ms: int  # version 3 (13.4): the idle interval I, heartbeat_ms..2^32-1

    def encode(self) -> bytes:
        return (
            _str8(self.node_id, "utf-8")
            + struct.pack(">QQQ", self.epoch, self.hwm, self.config_version)
            + self.config_digest
            + struct.pack(">II", self.heartbeat_ms, self.idle_ms)
        )

    def encode_v2(self) -> bytes:
        """The version-2 layout (no `idle_ms`), for playing a node of another version (13.2)."""
        return self.encode()[:-4]

    @classmethod
    def decode(cls, c: _Cur) -> Welcome:
        n = c.u8()
        node = c.text(n, "utf-8")
        m = cls(node, c.u64(), c.u64(), c.u64(), c.take(32), c.u32(), c.u32())
        c.end()
        _range(n <= 64, "WELCOME node_id above 64 bytes")
        _range(m.epoch >= 1, "WELCOME epoch 0")
        _range(m.hwm <= MAX_SEQ, "WELCOME hwm above 2^63-1")
        _range(m.heartbeat_ms >= 1, "WELCOME heartbeat_ms 0")
        _range(m.idle_ms >= m.heartbeat_ms, f"WELCOME idle_ms {m.idle_ms} below heartbeat_ms {m.heartbeat_ms}")
        return m


@dataclass(frozen=True)
class EventBatch:
    TYPE: ClassVar[int] = EVENT_BATCH
    first_seq: int
    records: tuple[Record, ...]
    count: int | None = None  # None: len(records); anything else forges the count field

    def encode(self) -> bytes:
        n = len(self.records) if self.count is None else self.count
        return struct.pack(">QH", self.first_seq, n) + b"".join(r.encode() for r in self.records)

    @property
    def last(self) -> int:
        return self.records[-1].last

    @classmethod
    def decode(cls, c: _Cur) -> EventBatch:
        data = c.data
        # 7.2 step 1: layout.
        if len(data) < 10:
            raise ProtocolError("MALFORMED", "EVENT_BATCH shorter than 10 bytes")
        first, count = struct.unpack_from(">QH", data)
        if count < 1 or count * 32 != len(data) - 10:
            raise ProtocolError("MALFORMED", f"EVENT_BATCH count {count} with {len(data) - 10} record bytes")
        c.i = len(data)
        recs = tuple(Record(*_REC.unpack_from(data, 10 + 32 * i)) for i in range(count))
        # 2: first_seq range.
        _range(1 <= first <= MAX_SEQ, f"first_seq {first}")
        # 3: kinds.
        for r in recs:
            if r.kind not in KINDS:
                raise ProtocolError("UNKNOWN_EVENT_KIND", f"kind {r.kind} at seq {r.seq}")
        # 4: a gap marker that is not first.
        for r in recs[1:]:
            if r.is_gap:
                raise ProtocolError("SEQ_ORDER", f"gap marker at seq {r.seq} not first in batch")
        # 5: first record's seq.
        if recs[0].seq != first:
            raise ProtocolError("SEQ_ORDER", f"first record seq {recs[0].seq} != first_seq {first}")
        # 6: a leading gap marker's card/aux.
        g = recs[0]
        if g.is_gap:
            _range(
                g.seq <= g.card <= MAX_SEQ and g.aux == g.card - g.seq + 1,
                f"gap marker seq {g.seq} card {g.card} aux {g.aux}",
            )
        # 7: consecutive.
        prev = recs[0].last
        for r in recs[1:]:
            if r.seq != prev + 1:
                raise ProtocolError("SEQ_ORDER", f"seq {r.seq} after {prev}")
            prev = r.seq
        # 8: last seq.
        _range(prev <= MAX_SEQ, f"last seq {prev} above 2^63-1")
        return cls(first, recs)


@dataclass(frozen=True)
class Ack:
    TYPE: ClassVar[int] = ACK
    epoch: int
    up_to_seq: int

    def encode(self) -> bytes:
        return struct.pack(">QQ", self.epoch, self.up_to_seq)

    @classmethod
    def decode(cls, c: _Cur) -> Ack:
        m = cls(c.u64(), c.u64())
        c.end()
        return m


@dataclass(frozen=True)
class ConfigDelta:
    TYPE: ClassVar[int] = CONFIG_DELTA
    epoch: int
    from_version: int
    to_version: int
    digest: bytes
    ops: tuple[Op, ...]

    def encode(self) -> bytes:
        return struct.pack(">QQQ", self.epoch, self.from_version, self.to_version) + self.digest + encode_ops(self.ops)

    @classmethod
    def decode(cls, c: _Cur) -> ConfigDelta:
        m = cls(c.u64(), c.u64(), c.u64(), c.take(32), _read_ops(c))
        c.end()
        if m.to_version <= m.from_version:
            raise ProtocolError("CONFIG_VERSION", f"delta to_version {m.to_version} <= from_version {m.from_version}")
        for op in m.ops:
            op.check()
        return m


@dataclass(frozen=True)
class ConfigSnapshot:
    TYPE: ClassVar[int] = CONFIG_SNAPSHOT
    epoch: int
    version: int
    digest: bytes
    part: int
    parts: int
    ops: tuple[Op, ...]

    def encode(self) -> bytes:
        return (
            struct.pack(">QQ", self.epoch, self.version)
            + self.digest
            + struct.pack(">HH", self.part, self.parts)
            + encode_ops(self.ops)
        )

    @classmethod
    def decode(cls, c: _Cur) -> ConfigSnapshot:
        m = cls(c.u64(), c.u64(), c.take(32), c.u16(), c.u16(), _read_ops(c))
        c.end()
        _range(m.parts >= 1, "snapshot parts 0")
        _range(m.part < m.parts, f"snapshot part {m.part} >= parts {m.parts}")
        for op in m.ops:
            op.check()
        return m


@dataclass(frozen=True)
class ConfigAck:
    TYPE: ClassVar[int] = CONFIG_ACK
    version: int
    digest: bytes

    def encode(self) -> bytes:
        return struct.pack(">Q", self.version) + self.digest

    @classmethod
    def decode(cls, c: _Cur) -> ConfigAck:
        m = cls(c.u64(), c.take(32))
        c.end()
        return m


@dataclass(frozen=True)
class Heartbeat:
    TYPE: ClassVar[int] = HEARTBEAT
    epoch: int

    def encode(self) -> bytes:
        return struct.pack(">Q", self.epoch)

    @classmethod
    def decode(cls, c: _Cur) -> Heartbeat:
        m = cls(c.u64())
        c.end()
        return m


@dataclass(frozen=True)
class Error:
    TYPE: ClassVar[int] = ERROR
    epoch: int
    code: int
    text: str = ""

    def encode(self) -> bytes:
        raw = self.text.encode()
        return struct.pack(">QHH", self.epoch, self.code, len(raw)) + raw

    @classmethod
    def decode(cls, c: _Cur) -> Error:
        epoch, code, n = c.u64(), c.u16(), c.u16()
        m = cls(epoch, code, c.text(n, "utf-8"))
        c.end()
        _range(n <= 1024, "ERROR text above 1024 bytes")
        return m


@dataclass(frozen=True)
class Bye:
    TYPE: ClassVar[int] = BYE
    epoch: int
    reason: int = 0

    def encode(self) -> bytes:
        return struct.pack(">QH", self.epoch, self.reason)

    @classmethod
    def decode(cls, c: _Cur) -> Bye:
        m = cls(c.u64(), c.u16())
        c.end()
        return m


@dataclass(frozen=True)
class Standby:
    TYPE: ClassVar[int] = STANDBY
    node_id: str
    heartbeat_ms: int
    idle_ms: int

    def encode(self) -> bytes:
        return _str8(self.node_id, "utf-8") + struct.pack(">II", self.heartbeat_ms, self.idle_ms)

    @classmethod
    def decode(cls, c: _Cur) -> Standby:
        n = c.u8()
        node = c.text(n, "utf-8")
        m = cls(node, c.u32(), c.u32())
        c.end()
        _range(n <= 64, "STANDBY node_id above 64 bytes")
        _range(m.heartbeat_ms >= 1, "STANDBY heartbeat_ms 0")
        _range(m.idle_ms >= m.heartbeat_ms, f"STANDBY idle_ms {m.idle_ms} below heartbeat_ms {m.heartbeat_ms}")
        return m


@dataclass(frozen=True)
class Takeover:
    TYPE: ClassVar[int] = TAKEOVER
    epoch: int

    def encode(self) -> bytes:
        return struct.pack(">Q", self.epoch)

    @classmethod
    def decode(cls, c: _Cur) -> Takeover:
        m = cls(c.u64())
        c.end()
        _range(m.epoch >= 1, "TAKEOVER epoch 0")
        return m


@dataclass(frozen=True)
class Alarm:
    """ALARM (13, version 5): copies of alarm records of the panel's event sequence, ahead of its backlog (7.6)."""

    TYPE: ClassVar[int] = ALARM
    records: tuple[Record, ...]
    count: int | None = None  # None: len(records); anything else forges the count field

    def encode(self) -> bytes:
        n = len(self.records) if self.count is None else self.count
        return struct.pack(">H", n) + b"".join(r.encode() for r in self.records)

    @property
    def last(self) -> int:
        """The ALARM's last seq: its last record's `seq` (7.6 compares records' `seq`; a gap marker's copy too)."""
        return self.records[-1].seq

    @classmethod
    def decode(cls, c: _Cur) -> Alarm:
        data = c.data
        # 7.6 check 1: layout.
        if len(data) < 2:
            raise ProtocolError("MALFORMED", "ALARM shorter than 2 bytes")
        (count,) = struct.unpack_from(">H", data)
        if count < 1 or count * 32 != len(data) - 2:
            raise ProtocolError("MALFORMED", f"ALARM count {count} with {len(data) - 2} record bytes")
        c.i = len(data)
        recs = tuple(Record(*_REC.unpack_from(data, 2 + 32 * i)) for i in range(count))
        # 2: kinds in 7.1's table.
        for r in recs:
            if r.kind not in KINDS:
                raise ProtocolError("UNKNOWN_EVENT_KIND", f"ALARM record of kind {r.kind} at seq {r.seq}")
        # 3: seq range, alarm kinds, gap markers' card/aux.
        for r in recs:
            _range(1 <= r.seq <= MAX_SEQ, f"ALARM record seq {r.seq}")
            _range(r.kind in ALARM_KINDS, f"ALARM record of kind {r.kind} ({KINDS[r.kind]}, not an alarm kind)")
            if r.is_gap:
                _range(
                    r.seq <= r.card <= MAX_SEQ and r.aux == r.card - r.seq + 1,
                    f"ALARM gap marker seq {r.seq} card {r.card} aux {r.aux}",
                )
        # 4: seqs rise within the message (the session's previous ALARM is the receiver's to compare).
        for a, b in itertools.pairwise(recs):
            if b.seq <= a.seq:
                raise ProtocolError("SEQ_ORDER", f"ALARM seq {b.seq} after {a.seq}")
        return cls(recs)


@dataclass(frozen=True)
class AlarmAck:
    """ALARM_ACK (14, version 5): every alarm of the session's ALARMs up to `up_to_seq` is stored (7.6)."""

    TYPE: ClassVar[int] = ALARM_ACK
    epoch: int
    up_to_seq: int

    def encode(self) -> bytes:
        return struct.pack(">QQ", self.epoch, self.up_to_seq)

    @classmethod
    def decode(cls, c: _Cur) -> AlarmAck:
        m = cls(c.u64(), c.u64())
        c.end()
        _range(m.epoch >= 1, "ALARM_ACK epoch 0")
        return m


Message = (
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
MESSAGE_CLASSES: dict[int, Any] = {
    c.TYPE: c
    for c in (
        Hello,
        Welcome,
        EventBatch,
        Ack,
        ConfigDelta,
        ConfigSnapshot,
        ConfigAck,
        Heartbeat,
        Error,
        Bye,
        Standby,
        Takeover,
        Alarm,
        AlarmAck,
    )
}


def decode_payload(mtype: int, payload: bytes) -> Message:
    """Section 5's layout and range checks (and 7.2 steps 1-8 for EVENT_BATCH, 7.6 checks 1-4 within an ALARM)."""
    if mtype not in MESSAGE_CLASSES:
        raise ProtocolError("UNKNOWN_TYPE", f"type {mtype}")
    msg: Message = MESSAGE_CLASSES[mtype].decode(_Cur(payload))
    return msg


def frame(msg: Message, **kw: Any) -> bytes:
    """The whole frame of `msg`; keyword arguments forge header fields (see encode_frame)."""
    return encode_frame(msg.TYPE, msg.encode(), **kw)


def decode_frame(data: bytes) -> Message:
    """One whole frame (exactly) to its message, applying every reader rule."""
    r = FrameReader()
    frames = r.feed(data)
    r.eof()
    if len(frames) != 1:
        raise ProtocolError("MALFORMED", f"{len(frames)} frames")
    return decode_payload(frames[0].type, frames[0].payload)


# Message direction (section 4): who may send what.
PANEL_SENDS = frozenset({HELLO, EVENT_BATCH, CONFIG_ACK, HEARTBEAT, ERROR, BYE, ALARM})
NODE_SENDS = frozenset(
    {WELCOME, ACK, CONFIG_DELTA, CONFIG_SNAPSHOT, HEARTBEAT, ERROR, BYE, STANDBY, TAKEOVER, ALARM_ACK}
)


def fields_of(obj: Any) -> Any:
    """A message, record or op as plain JSON-like values with the spec's names (section 14)."""
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, tuple | list):
        return [fields_of(x) for x in obj]
    if isinstance(obj, Record):
        return {k: getattr(obj, k) for k in ("seq", "time_us", "kind", "door", "reader", "flags", "card", "aux")}
    if isinstance(obj, PutSchedule):
        return {
            "op": obj.OP,
            "id": obj.id,
            "intervals": [{"days": d, "start": s, "end": e} for d, s, e in obj.intervals],
        }
    if isinstance(obj, PutAccessLevel):
        return {"op": obj.OP, "id": obj.id, "entries": [{"door": d, "schedule": s} for d, s in obj.entries]}
    if isinstance(obj, EventBatch):
        return {"first_seq": obj.first_seq, "count": len(obj.records), "records": fields_of(obj.records)}
    if isinstance(obj, Alarm):
        return {"count": len(obj.records), "records": fields_of(obj.records)}
    if hasattr(obj, "__dataclass_fields__"):
        out = {k: fields_of(getattr(obj, k)) for k in obj.__dataclass_fields__}
        if hasattr(obj, "OP"):
            out = {"op": obj.OP, **out}
        return out
    return obj
