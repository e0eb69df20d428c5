"""The wire format of docs/protocol.md (sections 3, 5, 7.1, 8.2), declared with construct.

Every multi-byte integer is big-endian (network order). ``docs/protocol.md`` is
the specification; ``tests/test_docs.py`` checks these declarations against its tables. The
compiled parsers are used for every message except EVENT_BATCH records, which
``_batch.py`` handles with ``struct`` and a test proves byte-identical to
``EVENT_BATCH`` below.
"""

from __future__ import annotations

from construct import (
    Array,
    Bytes,
    Const,
    Error,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    PascalString,
    PrefixedArray,
    Struct,
    Switch,
    Terminated,
    this,
)

__all__ = ["CONFIG_OP", "FRAME", "FRAME_HEADER", "MAGIC", "MESSAGES", "PROTOCOL_VERSION"]

#: Two bytes that start every frame; a reader that lost sync scans for them.
MAGIC = b"\xf5\x5c"
PROTOCOL_VERSION = 5

# -- framing -------------------------------------------------------------------

#: 11 bytes. ``hcrc`` is the low 16 bits of CRC-32C over the 9 bytes before it,
#: so a resynchronizing reader rejects a false magic at once instead of waiting
#: for a bogus payload length.
FRAME_HEADER = Struct(
    "magic" / Const(MAGIC),
    "version" / Int8ub,
    "type" / Int8ub,
    "flags" / Int8ub,
    "length" / Int32ub,
    "hcrc" / Int16ub,
)

#: ``crc`` is CRC-32C (Castagnoli) over header and payload.
FRAME = Struct(
    "header" / FRAME_HEADER,
    "payload" / Bytes(this.header.length),
    "crc" / Int32ub,
)

# -- records -------------------------------------------------------------------

EVENT_RECORD = Struct(
    "seq" / Int64ub,
    "time_us" / Int64ub,
    "kind" / Int8ub,
    "door" / Int8ub,
    "reader" / Int8ub,
    "flags" / Int8ub,
    "card" / Int64ub,
    "aux" / Int32ub,
)

INTERVAL = Struct("days" / Int8ub, "start" / Int16ub, "end" / Int16ub)
SCHEDULE = Struct("id" / Int16ub, "intervals" / PrefixedArray(Int8ub, INTERVAL))
LEVEL_ENTRY = Struct("door" / Int8ub, "schedule" / Int16ub)
ACCESS_LEVEL = Struct("id" / Int16ub, "entries" / PrefixedArray(Int8ub, LEVEL_ENTRY))
CARDHOLDER = Struct(
    "card" / Int64ub,
    "pin" / Int32ub,
    "valid_from_us" / Int64ub,
    "valid_until_us" / Int64ub,
    "levels" / PrefixedArray(Int8ub, Int16ub),
)
DOOR = Struct("door" / Int8ub, "mode" / Int8ub)

#: Config operation codes (u8).
OP_PUT_CARDHOLDER = 1
OP_DELETE_CARDHOLDER = 2
OP_PUT_SCHEDULE = 3
OP_DELETE_SCHEDULE = 4
OP_PUT_DOOR = 5
OP_PUT_ACCESS_LEVEL = 6
OP_DELETE_ACCESS_LEVEL = 7

CONFIG_OP = Struct(
    "op" / Int8ub,
    "body"
    / Switch(
        this.op,
        {
            OP_PUT_CARDHOLDER: CARDHOLDER,
            OP_DELETE_CARDHOLDER: Int64ub,
            OP_PUT_SCHEDULE: SCHEDULE,
            OP_DELETE_SCHEDULE: Int16ub,
            OP_PUT_DOOR: DOOR,
            OP_PUT_ACCESS_LEVEL: ACCESS_LEVEL,
            OP_DELETE_ACCESS_LEVEL: Int16ub,
        },
        default=Error,
    ),
)

# -- messages (payloads) -----------------------------------------------------------

HELLO = Struct(
    "panel_id" / Int32ub,
    "boot_id" / Int64ub,
    "firmware" / PascalString(Int8ub, "ascii"),
    "oldest_seq" / Int64ub,
    "newest_seq" / Int64ub,
    "config_version" / Int64ub,
    "config_digest" / Bytes(32),
    "max_epoch" / Int64ub,
    Terminated,
)
WELCOME = Struct(
    "node_id" / PascalString(Int8ub, "utf8"),
    "epoch" / Int64ub,
    "hwm" / Int64ub,
    "config_version" / Int64ub,
    "config_digest" / Bytes(32),
    "heartbeat_ms" / Int32ub,
    "idle_ms" / Int32ub,
    Terminated,
)
EVENT_BATCH = Struct(
    "first_seq" / Int64ub,
    "count" / Int16ub,
    "records" / Array(this.count, EVENT_RECORD),
    Terminated,
)
#: The fast codec's view of the same bytes: header, then opaque packed records.
EVENT_BATCH_PACKED = Struct(
    "first_seq" / Int64ub,
    "count" / Int16ub,
    "records" / GreedyBytes,
)
ACK = Struct("epoch" / Int64ub, "up_to_seq" / Int64ub, Terminated)
CONFIG_DELTA = Struct(
    "epoch" / Int64ub,
    "from_version" / Int64ub,
    "to_version" / Int64ub,
    "digest" / Bytes(32),
    "ops" / PrefixedArray(Int32ub, CONFIG_OP),
    Terminated,
)
CONFIG_SNAPSHOT = Struct(
    "epoch" / Int64ub,
    "version" / Int64ub,
    "digest" / Bytes(32),
    "part" / Int16ub,
    "parts" / Int16ub,
    "ops" / PrefixedArray(Int32ub, CONFIG_OP),
    Terminated,
)
CONFIG_ACK = Struct("version" / Int64ub, "digest" / Bytes(32), Terminated)
HEARTBEAT = Struct("epoch" / Int64ub, Terminated)
ERROR = Struct("epoch" / Int64ub, "code" / Int16ub, "text" / PascalString(Int16ub, "utf8"), Terminated)
BYE = Struct("epoch" / Int64ub, "reason" / Int16ub, Terminated)
STANDBY = Struct("node_id" / PascalString(Int8ub, "utf8"), "heartbeat_ms" / Int32ub, "idle_ms" / Int32ub, Terminated)
TAKEOVER = Struct("epoch" / Int64ub, Terminated)
ALARM = Struct("count" / Int16ub, "records" / Array(this.count, EVENT_RECORD), Terminated)
ALARM_ACK = Struct("epoch" / Int64ub, "up_to_seq" / Int64ub, Terminated)

#: Message type number -> payload declaration. Keys are ``MessageType`` values.
MESSAGES = {
    1: HELLO,
    2: WELCOME,
    3: EVENT_BATCH,
    4: ACK,
    5: CONFIG_DELTA,
    6: CONFIG_SNAPSHOT,
    7: CONFIG_ACK,
    8: HEARTBEAT,
    9: ERROR,
    10: BYE,
    11: STANDBY,
    12: TAKEOVER,
    13: ALARM,
    14: ALARM_ACK,
}

COMPILED = {number: spec.compile() for number, spec in MESSAGES.items()}
CONFIG_OP_COMPILED = CONFIG_OP.compile()
EVENT_BATCH_PACKED_COMPILED = EVENT_BATCH_PACKED.compile()
