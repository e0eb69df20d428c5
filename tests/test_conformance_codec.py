"""The conformance battery's own codec against docs/vectors (section 14) and a few fixed values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fieldsync.conformance import _codec as c

VECTORS = Path(__file__).resolve().parent.parent / "docs" / "vectors"


def _load(name: str) -> list[dict[str, Any]]:
    path = VECTORS / name
    if not path.exists():
        pytest.skip(f"{path} does not exist yet (section 14 vectors not generated)")
    text = path.read_text()
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError:  # JSON lines, as section 14 shows them
        doc = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        assert lists, f"{name}: no list of vectors in it"
        doc = lists[0]
    assert isinstance(doc, list) and doc, f"{name}: no vectors"
    return doc


def _frame_vectors() -> list[Any]:
    try:
        return [pytest.param(v, id=str(v.get("name", i))) for i, v in enumerate(_load("frames.json"))]
    except pytest.skip.Exception as exc:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)))]


def _digest_vectors() -> list[Any]:
    try:
        return [pytest.param(v, id=str(v.get("name", i))) for i, v in enumerate(_load("config_digest.json"))]
    except pytest.skip.Exception as exc:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)))]


_OP_KEYS = {"op", "name", "type"}


def _norm(value: Any) -> Any:
    """Vector values in one comparable shape: op names to numbers, hex in lowercase, pairs/triples as dicts."""
    if isinstance(value, dict):
        out = {k: _norm(v) for k, v in value.items()}
        for key in _OP_KEYS & out.keys():
            if isinstance(out[key], str) and out[key] in c.OP_NAMES:
                out["op"] = c.OP_NAMES[out.pop(key)]
        return out
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, str):
        return value.lower() if all(ch in "0123456789abcdefABCDEF" for ch in value) and len(value) >= 16 else value
    return value


def _match(mine: Any, theirs: Any, where: str) -> None:
    if isinstance(theirs, dict):
        assert isinstance(mine, dict), f"{where}: {mine!r} vs {theirs!r}"
        for key, val in theirs.items():
            if key in ("name", "type") and key not in mine:
                continue
            assert key in mine, f"{where}: field {key!r} is not one this codec decodes ({sorted(mine)})"
            _match(mine[key], val, f"{where}.{key}")
        return
    if isinstance(theirs, list):
        assert isinstance(mine, list) and len(mine) == len(theirs), f"{where}: {mine!r} vs {theirs!r}"
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if isinstance(b, list) and isinstance(a, dict):  # [days, start, end] / [door, schedule]
                a = list(a.values())
            if isinstance(b, str) and isinstance(a, dict) and "seq" in a:  # a record as its 32 bytes of hex
                a = c.Record(**a).encode().hex()
            _match(a, b, f"{where}[{i}]")
        return
    assert mine == theirs, f"{where}: {mine!r} != {theirs!r}"


def _receive(data: bytes, receiver: str) -> int | None:
    """Feed `data` to a receiver of that direction as the first bytes of a stream that then ends: the code or None."""
    reader = c.FrameReader()
    try:
        frames = reader.feed(data)
        reader.eof()
        for i, f in enumerate(frames):
            msg = c.decode_payload(f.type, f.payload)
            allowed = c.PANEL_SENDS if receiver == "node" else c.NODE_SENDS
            if f.type not in allowed:
                return c.CODES["ILLEGAL_IN_STATE"]
            first = c.HELLO if receiver == "node" else c.WELCOME
            if i == 0 and msg.TYPE not in (first, c.ERROR, c.BYE):
                return c.CODES["ILLEGAL_IN_STATE"]
    except c.ProtocolError as exc:
        return exc.code
    return None


@pytest.mark.parametrize("vector", _frame_vectors())
def test_frame_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    if vector["valid"]:
        msg = c.decode_frame(data)
        assert c.TYPE_NAMES[msg.TYPE] == vector["type"]
        _match(c.fields_of(msg), _norm(vector.get("fields", {})), vector["type"])
        assert c.frame(msg) == data, "re-encoding the decoded message does not give the same bytes"
    else:
        code = vector["code"]
        assert c.CODE_NAMES.get(code) == vector["error"]
        receiver = vector.get("receiver", "node")
        got = _receive(data, receiver)
        assert got == code, f"{vector.get('name')}: got {got and c.code_name(got)}, want {c.code_name(code)}"


def _op(obj: dict[str, Any]) -> c.Op:
    o = _norm(obj)
    code = o.pop("op")
    cls = c.OP_CLASSES[code]
    args: dict[str, Any] = {}
    for key, val in o.items():
        if key == "intervals":
            val = tuple((v["days"], v["start"], v["end"]) if isinstance(v, dict) else tuple(v) for v in val)
        elif key == "entries":
            val = tuple((v["door"], v["schedule"]) if isinstance(v, dict) else tuple(v) for v in val)
        elif key == "levels":
            val = tuple(val)
        args[key] = val
    op: c.Op = cls(**args)
    return op


@pytest.mark.parametrize("vector", _digest_vectors())
def test_config_digest_vector(vector: dict[str, Any]) -> None:
    ops_key = next(k for k in ("ops", "operations", "config") if k in vector)
    ops = [_op(o) for o in vector[ops_key]]
    assert c.digest_of(ops).hex() == vector["digest"].lower()


def test_crc32c_check_value() -> None:
    assert c.crc32c(b"123456789") == 0xE3069283


def test_empty_digest() -> None:
    assert c.Config().digest().hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert c.digest_of([c.PutDoor(1, 1), c.DeleteCardholder(5)]) != c.EMPTY_DIGEST
    assert c.digest_of([c.PutDoor(1, 1), c.PutDoor(1, 2), c.PutDoor(1, 1)]) == c.digest_of([c.PutDoor(1, 1)])


def test_canonical_order_and_digest() -> None:
    ops: list[c.Op] = [
        c.PutCardholder(2, levels=(3, 1)),
        c.PutDoor(4, 1),
        c.PutCardholder(1),
        c.PutSchedule(9, ((1, 0, 60),)),
        c.PutAccessLevel(1, ((4, 9),)),
    ]
    cfg = c.Config().applied(ops)
    canon = cfg.canonical()
    assert [type(o).__name__ for o in canon] == [
        "PutSchedule",
        "PutAccessLevel",
        "PutDoor",
        "PutCardholder",
        "PutCardholder",
    ]
    assert [o.card for o in canon if isinstance(o, c.PutCardholder)] == [1, 2]
    assert cfg.digest() == hashlib.sha256(b"".join(c.encode_op(o) for o in canon)).digest()


def test_frame_roundtrip_and_reader_rules() -> None:
    hello = c.Hello(17, 5, "fw", 1, 9, 3, c.EMPTY_DIGEST, 2)
    data = c.frame(hello)
    assert len(data) == len(hello.encode()) + c.OVERHEAD
    assert c.decode_frame(data) == hello
    cases = {
        "BAD_MAGIC": c.frame(hello, magic=b"\x00\x00"),
        "BAD_CRC": c.frame(hello, bad_crc=True),
        "UNSUPPORTED_VERSION": c.frame(hello, version=1),
        "UNKNOWN_TYPE": c.encode_frame(42, b""),
        "BAD_FLAGS": c.frame(hello, flags=2),
        "FRAME_TOO_LARGE": c.header(c.HELLO, c.MAX_PAYLOAD + 1),
        "TRUNCATED": data[:-1],
        "MALFORMED": c.encode_frame(c.HELLO, hello.encode() + b"x"),
    }
    for name, raw in cases.items():
        with pytest.raises(c.ProtocolError) as info:
            c.decode_frame(raw)
        assert info.value.code == c.CODES[name], name
    # hcrc is checked before version, type and flags.
    with pytest.raises(c.ProtocolError) as info:
        c.decode_frame(c.frame(hello, version=9, flags=1, bad_hcrc=True))
    assert info.value.code == c.CODES["BAD_CRC"]


def test_batch_checks_in_order() -> None:
    def code(b: c.EventBatch) -> int:
        with pytest.raises(c.ProtocolError) as info:
            c.decode_payload(c.EVENT_BATCH, b.encode())
        return info.value.code

    r = [c.Record(5 + i) for i in range(3)]
    assert code(c.EventBatch(0, tuple(r), count=0)) == c.CODES["MALFORMED"]
    assert code(c.EventBatch(0, (c.Record(0, kind=99),))) == c.CODES["FIELD_OUT_OF_RANGE"]
    assert code(c.EventBatch(5, (r[0], c.gap_marker(6, 6), c.Record(7, kind=0)))) == c.CODES["UNKNOWN_EVENT_KIND"]
    assert code(c.EventBatch(5, (r[0], c.gap_marker(6, 6)))) == c.CODES["SEQ_ORDER"]
    assert code(c.EventBatch(4, tuple(r))) == c.CODES["SEQ_ORDER"]
    assert code(c.EventBatch(5, (c.Record(5, kind=14, card=7, aux=2),))) == c.CODES["FIELD_OUT_OF_RANGE"]
    assert code(c.EventBatch(5, (r[0], r[2]))) == c.CODES["SEQ_ORDER"]
    assert (
        code(c.EventBatch(c.MAX_SEQ, (c.Record(c.MAX_SEQ), c.Record(c.MAX_SEQ + 1)))) == c.CODES["FIELD_OUT_OF_RANGE"]
    )
    ok = c.EventBatch(5, (c.gap_marker(5, 9), c.Record(10, time_us=c.U64)))
    assert c.decode_payload(c.EVENT_BATCH, ok.encode()) == ok


# ---------------------------------------------------------------------------------------------- version 5 (13.1)


def test_version_5_header_and_version_4_refused() -> None:
    hb = c.frame(c.Heartbeat(3))
    assert c.VERSION == 5 and hb[2] == 5
    with pytest.raises(c.ProtocolError) as info:
        c.decode_frame(c.frame(c.Heartbeat(3), version=4))
    assert info.value.code == c.CODES["UNSUPPORTED_VERSION"] and info.value.version == 4
    # A version-4 peer's ERROR is still read by a reader that takes any version (13.2).
    err = c.frame(c.Error(0, 101, "this node speaks protocol version 5"), version=4)
    (f,) = c.FrameReader(any_version=True).feed(err)
    assert f.version == 4 and c.decode_payload(f.type, f.payload) == c.Error(
        0, 101, "this node speaks protocol version 5"
    )


def test_alarm_types_and_directions() -> None:
    assert (c.ALARM, c.ALARM_ACK) == (13, 14)
    assert c.TYPE_NAMES[13] == "ALARM" and c.TYPE_NAMES[14] == "ALARM_ACK"
    assert c.ALARM in c.PANEL_SENDS and c.ALARM not in c.NODE_SENDS
    assert c.ALARM_ACK in c.NODE_SENDS and c.ALARM_ACK not in c.PANEL_SENDS
    assert sorted(c.ALARM_KINDS) == [7, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21]
    alarm = c.frame(c.Alarm((c.Record(4, kind=7),)))
    assert _receive(alarm, "panel") == c.CODES["ILLEGAL_IN_STATE"]  # node -> panel only for ALARM_ACK
    assert _receive(c.frame(c.AlarmAck(1, 0)), "node") == c.CODES["ILLEGAL_IN_STATE"]
    assert _receive(alarm, "node") == c.CODES["ILLEGAL_IN_STATE"]  # legal direction, but before HELLO


def test_alarm_roundtrip_layout_and_fields() -> None:
    recs = (c.Record(5, 1, 7, 1, 2, 3, 9, 0), c.gap_marker(9, 12, kind=16), c.Record(40, kind=21, card=41, aux=2))
    a = c.Alarm(recs)
    raw = a.encode()
    assert raw[:2] == b"\x00\x03" and len(raw) == 2 + 3 * 32
    assert raw[2:34] == recs[0].encode()
    data = c.frame(a)
    assert data[3] == c.ALARM and len(data) == len(raw) + c.OVERHEAD
    assert c.decode_frame(data) == a
    assert a.last == 40  # the last record's seq (a gap marker's copy counts by its seq too)
    assert c.fields_of(a) == {"count": 3, "records": [c.fields_of(r) for r in recs]}
    ack = c.AlarmAck(7, 40)
    assert ack.encode() == (7).to_bytes(8, "big") + (40).to_bytes(8, "big")
    assert c.decode_frame(c.frame(ack)) == ack


def test_alarm_checks_in_order() -> None:
    def code(payload: bytes) -> int:
        with pytest.raises(c.ProtocolError) as info:
            c.decode_payload(c.ALARM, payload)
        return info.value.code

    def alarm(*recs: c.Record, count: int | None = None) -> bytes:
        return c.Alarm(tuple(recs), count=count).encode()

    forced, tamper = c.Record(5, kind=7), c.Record(8, kind=9)
    # 1: layout.
    assert code(b"") == c.CODES["MALFORMED"]
    assert code(b"\x01") == c.CODES["MALFORMED"]
    assert code(b"\x00\x00") == c.CODES["MALFORMED"]
    assert code(alarm(forced, count=2)) == c.CODES["MALFORMED"]
    assert code(alarm(forced, tamper, count=1)) == c.CODES["MALFORMED"]
    assert code(alarm(forced) + b"\x00") == c.CODES["MALFORMED"]
    # 2: a kind not in 7.1, before every later check (a non-alarm kind, seq 0, seqs falling).
    assert code(alarm(c.Record(9, kind=1), c.Record(0, kind=99))) == c.CODES["UNKNOWN_EVENT_KIND"]
    assert code(alarm(c.Record(5, kind=0))) == c.CODES["UNKNOWN_EVENT_KIND"]
    # 3: seq range, alarm kinds, gap markers; before seq order.
    assert code(alarm(c.Record(0, kind=7))) == c.CODES["FIELD_OUT_OF_RANGE"]
    assert code(alarm(c.Record(c.MAX_SEQ + 1, kind=7))) == c.CODES["FIELD_OUT_OF_RANGE"]
    assert code(alarm(forced, c.Record(6, kind=1))) == c.CODES["FIELD_OUT_OF_RANGE"]  # ACCESS_GRANTED
    assert code(alarm(c.Record(6, kind=11))) == c.CODES["FIELD_OUT_OF_RANGE"]  # POWER_RESTORE: not an alarm
    assert code(alarm(tamper, c.Record(0, kind=7))) == c.CODES["FIELD_OUT_OF_RANGE"]
    assert code(alarm(c.Record(5, kind=14, card=7, aux=2))) == c.CODES["FIELD_OUT_OF_RANGE"]
    assert code(alarm(c.Record(5, kind=21, card=4, aux=0))) == c.CODES["FIELD_OUT_OF_RANGE"]
    # 4: seqs rise within the ALARM.
    assert code(alarm(tamper, forced)) == c.CODES["SEQ_ORDER"]
    assert code(alarm(forced, c.Record(5, kind=8))) == c.CODES["SEQ_ORDER"]
    # Rising, not consecutive, every alarm kind, a marker at the top of the seq range: accepted.
    kinds = sorted(c.ALARM_KINDS - c.GAP_KINDS)
    ok = c.Alarm((*(c.Record(10 + 3 * i, kind=k) for i, k in enumerate(kinds)), c.gap_marker(c.MAX_SEQ, c.MAX_SEQ)))
    assert c.decode_payload(c.ALARM, ok.encode()) == ok


def test_alarm_ack_checks() -> None:
    def code(payload: bytes) -> int:
        with pytest.raises(c.ProtocolError) as info:
            c.decode_payload(c.ALARM_ACK, payload)
        return info.value.code

    good = c.AlarmAck(1, 0).encode()
    assert code(good[:-1]) == c.CODES["MALFORMED"]
    assert code(good + b"\x00") == c.CODES["MALFORMED"]
    assert code(c.AlarmAck(0, 5).encode()) == c.CODES["FIELD_OUT_OF_RANGE"]  # epoch >= 1
    assert c.decode_payload(c.ALARM_ACK, good) == c.AlarmAck(1, 0)


def test_alarm_lane_of_the_battery_node() -> None:
    """The battery's node-side checks of a panel's ALARMs across a session (7.6), beyond the codec's."""
    from fieldsync.conformance._link import AlarmLane

    lane = AlarmLane(epoch=2, hwm=10, answer=True)
    first = c.Alarm((c.Record(12, kind=7), c.Record(15, kind=9)))
    assert lane.fault_of(first) is None and lane.top == 15 and set(lane.copies) == {12, 15}
    # Check 4 across ALARMs: not above the previous ALARM's last seq.
    again = lane.fault_of(c.Alarm((c.Record(15, kind=8),)))
    assert again is not None and again[0] == c.CODES["SEQ_ORDER"]
    assert lane.fault_of(c.Alarm((c.Record(16, kind=8),))) is None and lane.top == 16
    # The batch holding the copies: equal records pass, a differing one is reported (no code names it).
    recs = (c.Record(11), c.Record(12, kind=7), c.Record(13), c.Record(14), c.Record(15, kind=9), c.Record(16, kind=8))
    assert lane.fault_of(c.EventBatch(11, recs)) is None
    changed = (*recs[:4], c.Record(15, kind=9, door=3), recs[5])
    fault = lane.fault_of(c.EventBatch(11, changed))
    assert fault is not None and fault[0] == 0 and "seq 15" in fault[1]
    # A copy at or below the WELCOME's hwm: the panel forgot it on the WELCOME.
    fresh = AlarmLane(epoch=2, hwm=10, answer=False)
    low = fresh.fault_of(c.Alarm((c.Record(10, kind=7), c.Record(11, kind=7))))
    assert low is not None and low[0] == 0 and "hwm 10" in low[1]
    assert fresh.alarms == [] and fresh.top == 0
