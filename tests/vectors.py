"""The test vectors of docs/protocol.md section 14, made from this repository's codec.

``python tests/vectors.py`` writes docs/vectors/frames.json and config_digest.json;
``tests/test_vectors.py`` proves the committed files equal what this makes, that the
codec decodes every valid frame to its fields and refuses every invalid one with its
code. A third party reads the JSON files only.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

from crc32c import crc32c

if __name__ == "__main__":  # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol as p

OUT = Path(__file__).resolve().parent.parent / "docs" / "vectors"

SCHEDULE = p.PutSchedule(schedule=p.Schedule(id=1, intervals=(p.Interval(days=0b0011111, start=420, end=1140),)))
LEVEL = p.PutAccessLevel(level=p.AccessLevel(id=10, entries=(p.LevelEntry(door=1, schedule=1),)))
DOOR = p.PutDoor(door=p.Door(door=1, mode=p.DoorMode.CARD_AND_PIN))
HOLDER = p.PutCardholder(
    cardholder=p.Cardholder(card=1_000_001, pin=4321, levels=(10,), valid_from_us=0, valid_until_us=0)
)
HIGH_CARD = p.PutCardholder(cardholder=p.Cardholder(card=2**63 + 1, levels=(10,)))


def op_fields(op: p.ConfigOp) -> dict[str, Any]:
    """An operation with the names of docs/protocol.md 8.2."""
    match op:
        case p.PutCardholder(cardholder=c):
            return {
                "op": "PutCardholder",
                "card": c.card,
                "pin": c.pin,
                "valid_from_us": c.valid_from_us,
                "valid_until_us": c.valid_until_us,
                "levels": list(c.levels),
            }
        case p.DeleteCardholder(card=card):
            return {"op": "DeleteCardholder", "card": card}
        case p.PutSchedule(schedule=s):
            intervals = [{"days": i.days, "start": i.start, "end": i.end} for i in s.intervals]
            return {"op": "PutSchedule", "id": s.id, "intervals": intervals}
        case p.DeleteSchedule(id=ident):
            return {"op": "DeleteSchedule", "id": ident}
        case p.PutDoor(door=d):
            return {"op": "PutDoor", "door": d.door, "mode": int(d.mode)}
        case p.PutAccessLevel(level=lv):
            entries = [{"door": e.door, "schedule": e.schedule} for e in lv.entries]
            return {"op": "PutAccessLevel", "id": lv.id, "entries": entries}
        case p.DeleteAccessLevel(id=ident):
            return {"op": "DeleteAccessLevel", "id": ident}
    raise TypeError(op)


def message_fields(message: p.Message) -> dict[str, Any]:
    """A message with the field names of docs/protocol.md section 5."""
    if isinstance(message, p.EventBatch):
        records = [
            dict(zip(("seq", "time_us", "kind", "door", "reader", "flags", "card", "aux"), row, strict=True))
            for row in message.rows()
        ]
        return {"first_seq": message.first_seq, "count": message.count, "records": records}
    if isinstance(message, p.Alarm):
        names = ("seq", "time_us", "kind", "door", "reader", "flags", "card", "aux")
        records = [dict(zip(names, row, strict=True)) for row in p.iter_rows(message.records)]
        return {"count": message.count, "records": records}
    out: dict[str, Any] = {}
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        if name == "ops":
            value = [op_fields(op) for op in value]
        elif isinstance(value, bytes):
            value = value.hex()
        out[name] = value
    return out


def frame(
    type_code: int, payload: bytes, *, version: int = p.PROTOCOL_VERSION, flags: int = 0, length: int | None = None
) -> bytes:
    """A frame with any header values, checks computed: for invalid vectors."""
    head = struct.pack(">2sBBBI", b"\xf5\x5c", version, type_code, flags, len(payload) if length is None else length)
    head += (crc32c(head) & 0xFFFF).to_bytes(2, "big")
    return head + payload + crc32c(head + payload).to_bytes(4, "big")


def _record(seq: int, kind: int = 1, *, card: int = 0, aux: int = 0) -> bytes:
    return struct.pack(">QQBBBBQI", seq, 1_764_000_000_000_000 + seq, kind, 1, 2, 0, card, aux)


def _batch(first: int, *records: bytes, count: int | None = None) -> bytes:
    return struct.pack(">QH", first, len(records) if count is None else count) + b"".join(records)


def _alarm(*records: bytes, count: int | None = None) -> bytes:
    return struct.pack(">H", len(records) if count is None else count) + b"".join(records)


def valid_messages() -> list[tuple[str, str, p.Message]]:
    digest = p.config_digest([DOOR])
    marker = p.EventRecord(seq=5, time_us=7, kind=p.EventKind.BUFFER_OVERFLOW, card=104, aux=100)
    return [
        (
            "HELLO of panel 17",
            "5",
            p.Hello(
                panel_id=17,
                boot_id=0xB007,
                firmware="acme-4.2",
                oldest_seq=1,
                newest_seq=3,
                config_version=0,
                config_digest=p.EMPTY_DIGEST,
                max_epoch=0,
            ),
        ),
        (
            "WELCOME with hwm 0",
            "5",
            p.Welcome(
                node_id="A", epoch=1, hwm=0, config_version=1, config_digest=digest, heartbeat_ms=1000, idle_ms=5000
            ),
        ),
        (
            "EVENT_BATCH of two events",
            "5, 7.1",
            p.EventBatch.of(
                [
                    p.EventRecord(
                        seq=1,
                        time_us=1_764_000_000_000_000,
                        kind=p.EventKind.ACCESS_GRANTED,
                        door=1,
                        reader=2,
                        card=1_000_001,
                        flags=p.EventFlags.DECIDED_OFFLINE,
                    ),
                    p.EventRecord(seq=2, time_us=1_764_000_000_500_000, kind=p.EventKind.DOOR_FORCED, door=1),
                ]
            ),
        ),
        (
            "EVENT_BATCH led by a gap marker for seqs 5..104",
            "7.1, 7.2",
            p.EventBatch.of([marker, p.EventRecord(seq=105, time_us=8, kind=p.EventKind.HOST_ONLINE)]),
        ),
        (
            "EVENT_BATCH with a time beyond 2^63 (stored, never refused)",
            "7.1",
            p.EventBatch.of([p.EventRecord(seq=3, time_us=2**64 - 1, kind=p.EventKind.TAMPER)]),
        ),
        ("ACK up to seq 2", "5, 7.4", p.Ack(epoch=1, up_to_seq=2)),
        (
            "CONFIG_DELTA from 0 to 1",
            "5, 8.2",
            p.ConfigDelta(epoch=1, from_version=0, to_version=1, digest=digest, ops=(DOOR,)),
        ),
        (
            "CONFIG_DELTA with every operation",
            "8.2",
            p.ConfigDelta(
                epoch=1,
                from_version=1,
                to_version=2,
                digest=p.config_digest([SCHEDULE, LEVEL, DOOR]),
                ops=(
                    SCHEDULE,
                    LEVEL,
                    HOLDER,
                    p.DeleteCardholder(card=1_000_001),
                    p.PutSchedule(schedule=p.Schedule(id=2, intervals=())),
                    p.DeleteSchedule(id=2),
                    p.PutAccessLevel(level=p.AccessLevel(id=11, entries=())),
                    p.DeleteAccessLevel(id=11),
                ),
            ),
        ),
        (
            "CONFIG_SNAPSHOT of version 4 in one part",
            "5, 8.1",
            p.ConfigSnapshot(
                epoch=2,
                version=4,
                digest=p.config_digest([SCHEDULE, LEVEL, DOOR, HOLDER]),
                part=0,
                parts=1,
                ops=(SCHEDULE, LEVEL, DOOR, HOLDER),
            ),
        ),
        ("CONFIG_ACK of version 1", "5, 8.4", p.ConfigAck(version=1, digest=digest)),
        ("HEARTBEAT", "5, 9", p.Heartbeat(epoch=1)),
        ("ERROR SEQ_GAP", "5, 10", p.Error(epoch=1, code=int(p.ErrorCode.SEQ_GAP), text="expected seq 3")),
        ("BYE SHUTTING_DOWN", "5, 10", p.Bye(epoch=1, reason=int(p.ErrorCode.SHUTTING_DOWN))),
        ("STANDBY of node B", "5, 6.3", p.Standby(node_id="B", heartbeat_ms=1000, idle_ms=10_000)),
        ("TAKEOVER under epoch 2", "5, 6.3", p.Takeover(epoch=2)),
        (
            "ALARM: a door forced at seq 40 and a tamper at seq 90",
            "5, 7.6",
            p.Alarm(records=_record(40, int(p.EventKind.DOOR_FORCED)) + _record(90, int(p.EventKind.TAMPER))),
        ),
        ("ALARM_ACK up to seq 90", "5, 7.6", p.AlarmAck(epoch=1, up_to_seq=90)),
    ]


def invalid_frames() -> list[tuple[str, str, str, bytes, p.ErrorCode]]:
    """(name, section, receiver, bytes, code)."""
    E = p.ErrorCode
    hello = p.encode_payload(valid_messages()[0][2])
    good = frame(8, (1).to_bytes(8, "big"))
    bad_hcrc = bytearray(good)
    bad_hcrc[9] ^= 0xFF
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x01
    delta_head = struct.pack(">QQQ", 1, 0, 1) + p.EMPTY_DIGEST
    welcome = p.Welcome(
        node_id="A", epoch=1, hwm=0, config_version=0, config_digest=p.EMPTY_DIGEST, heartbeat_ms=1000, idle_ms=1000
    )
    slow_welcome = p.encode_payload(welcome)[:-4] + (999).to_bytes(4, "big")  # idle_ms 999 < heartbeat_ms 1000
    holder = lambda card, pin=0: bytes([1]) + struct.pack(">QIQQB", card, pin, 0, 0, 0)  # noqa: E731
    return [
        ("bytes before the magic", "3", "node", b"\x00\x01" + frame(1, hello), E.BAD_MAGIC),
        ("hcrc wrong", "3", "node", bytes(bad_hcrc), E.BAD_CRC),
        ("crc wrong", "3", "node", bytes(bad_crc), E.BAD_CRC),
        ("a version-1 HELLO", "3, 13.2", "node", frame(1, hello, version=1), E.UNSUPPORTED_VERSION),
        ("a version-2 HELLO", "3, 13.2", "node", frame(1, hello, version=2), E.UNSUPPORTED_VERSION),
        ("a version-3 HELLO", "3, 13.2", "node", frame(1, hello, version=3), E.UNSUPPORTED_VERSION),
        ("a version-4 HELLO", "3, 13.2", "node", frame(1, hello, version=4), E.UNSUPPORTED_VERSION),
        ("TAKEOVER with epoch 0", "5, 6.3", "panel", frame(12, (0).to_bytes(8, "big")), E.FIELD_OUT_OF_RANGE),
        (
            "ALARM that declares 2 records and carries 1",
            "5, 7.6",
            "node",
            frame(13, _alarm(_record(5, 7), count=2)),
            E.MALFORMED,
        ),
        ("ALARM of an ACCESS_GRANTED", "7.6", "node", frame(13, _alarm(_record(5, 1))), E.FIELD_OUT_OF_RANGE),
        ("ALARM whose seqs fall", "7.6", "node", frame(13, _alarm(_record(9, 7), _record(8, 9))), E.SEQ_ORDER),
        (
            "ALARM_ACK with epoch 0",
            "5, 7.6",
            "panel",
            frame(14, bytes(8) + (3).to_bytes(8, "big")),
            E.FIELD_OUT_OF_RANGE,
        ),
        ("type 99", "3", "node", frame(99, b""), E.UNKNOWN_TYPE),
        ("flags set", "3", "node", frame(1, hello, flags=0x80), E.BAD_FLAGS),
        (
            "declared length above 1 MiB, header only",
            "3",
            "node",
            frame(3, b"", length=(1 << 20) + 1)[:11],
            E.FRAME_TOO_LARGE,
        ),
        ("stream ends inside a frame", "3", "node", frame(1, hello)[:20], E.TRUNCATED),
        ("HELLO with a trailing byte", "3, 5", "node", frame(1, hello + b"\x00"), E.MALFORMED),
        ("HELLO with panel_id 0", "5", "node", frame(1, b"\0\0\0\0" + hello[4:]), E.FIELD_OUT_OF_RANGE),
        ("WELCOME with idle_ms below heartbeat_ms", "5, 9.1", "panel", frame(2, slow_welcome), E.FIELD_OUT_OF_RANGE),
        (
            "HELLO with a non-ASCII firmware",
            "5",
            "node",
            frame(1, hello[:12] + b"\x01\xe9" + hello[13 + hello[12] :]),
            E.MALFORMED,
        ),
        ("HEARTBEAT before HELLO", "4, 6.1", "node", frame(8, (0).to_bytes(8, "big")), E.ILLEGAL_IN_STATE),
        (
            "EVENT_BATCH whose count is not its length",
            "7.2",
            "node",
            frame(3, _batch(1, _record(1), count=2)),
            E.MALFORMED,
        ),
        (
            "EVENT_BATCH with first_seq 2^63",
            "7.2",
            "node",
            frame(3, _batch(2**63, _record(2**63))),
            E.FIELD_OUT_OF_RANGE,
        ),
        (
            "EVENT_BATCH with kind 99",
            "7.2",
            "node",
            frame(3, _batch(1, _record(1), _record(2, 99))),
            E.UNKNOWN_EVENT_KIND,
        ),
        (
            "EVENT_BATCH with a gap marker second",
            "7.2",
            "node",
            frame(3, _batch(1, _record(1), _record(2, 14, card=2, aux=1))),
            E.SEQ_ORDER,
        ),
        (
            "EVENT_BATCH whose first record is not first_seq",
            "7.2",
            "node",
            frame(3, _batch(1, _record(2))),
            E.SEQ_ORDER,
        ),
        (
            "EVENT_BATCH with a gap marker counting wrong",
            "7.2",
            "node",
            frame(3, _batch(5, _record(5, 14, card=9, aux=4))),
            E.FIELD_OUT_OF_RANGE,
        ),
        ("EVENT_BATCH with seqs 1, 3", "7.2", "node", frame(3, _batch(1, _record(1), _record(3))), E.SEQ_ORDER),
        (
            "EVENT_BATCH ending above 2^63-1",
            "7.2",
            "node",
            frame(3, _batch(2**63 - 1, _record(2**63 - 1), _record(2**63))),
            E.FIELD_OUT_OF_RANGE,
        ),
        ("CONFIG_DELTA with op 99", "8.2", "panel", frame(5, delta_head + b"\0\0\0\1\x63"), E.UNKNOWN_CONFIG_OP),
        (
            "CONFIG_DELTA putting card 0",
            "8.2",
            "panel",
            frame(5, delta_head + b"\0\0\0\1" + holder(0)),
            E.FIELD_OUT_OF_RANGE,
        ),
        (
            "CONFIG_DELTA with a pin above 99,999,999",
            "8.2",
            "panel",
            frame(5, delta_head + b"\0\0\0\1" + holder(5, 100_000_000)),
            E.FIELD_OUT_OF_RANGE,
        ),
        (
            "CONFIG_DELTA going back",
            "5",
            "panel",
            frame(5, struct.pack(">QQQ", 1, 3, 2) + p.EMPTY_DIGEST + b"\0\0\0\0"),
            E.CONFIG_VERSION,
        ),
        (
            "CONFIG_SNAPSHOT part 2 of 2",
            "5",
            "panel",
            frame(6, struct.pack(">QQ", 1, 4) + p.EMPTY_DIGEST + struct.pack(">HHI", 2, 2, 0)),
            E.FIELD_OUT_OF_RANGE,
        ),
        ("ERROR text of invalid UTF-8", "5", "panel", frame(9, struct.pack(">QHH", 1, 503, 1) + b"\xff"), E.MALFORMED),
    ]


def frames_document() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, section, message in valid_messages():
        data = p.encode_frame(p.message_type(message), p.encode_payload(message))
        out.append(
            {
                "name": name,
                "section": section,
                "hex": data.hex(),
                "valid": True,
                "type": p.message_type(message).name,
                "fields": message_fields(message),
            }
        )
    for name, section, receiver, data, code in invalid_frames():
        out.append(
            {
                "name": name,
                "section": section,
                "hex": data.hex(),
                "valid": False,
                "receiver": receiver,
                "error": code.name,
                "code": int(code),
            }
        )
    return out


def digest_document() -> list[dict[str, Any]]:
    cases = [
        ("empty configuration (version 0)", []),
        ("one door", [DOOR]),
        ("schedule, level, door, cardholder", [SCHEDULE, LEVEL, DOOR, HOLDER]),
        ("cards ordered as u64: 1,000,001 before 2^63+1", [SCHEDULE, LEVEL, DOOR, HOLDER, HIGH_CARD]),
    ]
    return [
        {"name": name, "ops": [op_fields(op) for op in ops], "digest": p.config_digest(ops).hex()}
        for name, ops in cases
    ]


def render(document: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join(json.dumps(item, separators=(", ", ": ")) for item in document) + "\n]\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "frames.json").write_text(render(frames_document()))
    (OUT / "config_digest.json").write_text(render(digest_document()))
    print(f"wrote {OUT / 'frames.json'} and {OUT / 'config_digest.json'}")


if __name__ == "__main__":
    main()
