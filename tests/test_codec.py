"""Codec and framing properties: round trips, spec equivalence, corruption, resync."""

from __future__ import annotations

import contextlib

import construct
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import protocol as p
from protocol import _wire

from .strategies import frame_of, messages, record_runs


def decode_all(data: bytes, *, resync: bool = False, max_payload: int = p.DEFAULT_MAX_PAYLOAD) -> list[p.Message]:
    decoder = p.FrameDecoder(resync=resync, max_payload=max_payload)
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(p.decode_payload(frame.type, frame.payload))
    return out


@given(messages)
def test_every_message_round_trips(message: p.Message) -> None:
    assert decode_all(frame_of(message)) == [message]


@given(record_runs(max_size=48))
def test_fast_batch_encoding_equals_the_construct_spec(records: list[p.EventRecord]) -> None:
    batch = p.EventBatch.of(records)
    spec = _wire.COMPILED[p.MessageType.EVENT_BATCH].build(
        {
            "first_seq": batch.first_seq,
            "count": len(records),
            "records": [
                {
                    "seq": r.seq,
                    "time_us": r.time_us,
                    "kind": int(r.kind),
                    "door": r.door,
                    "reader": r.reader,
                    "flags": int(r.flags),
                    "card": r.card,
                    "aux": r.aux,
                }
                for r in records
            ],
        }
    )
    assert p.encode_payload(batch) == spec


@given(record_runs(max_size=48))
def test_fast_batch_decoding_equals_the_construct_spec(records: list[p.EventRecord]) -> None:
    payload = p.encode_payload(p.EventBatch.of(records))
    parsed = _wire.COMPILED[p.MessageType.EVENT_BATCH].parse(payload)
    fast = p.decode_payload(p.MessageType.EVENT_BATCH, payload)
    assert isinstance(fast, p.EventBatch)
    assert fast.count == parsed.count
    fields = ("seq", "time_us", "kind", "door", "reader", "flags", "card", "aux")
    assert [tuple(r[f] for f in fields) for r in parsed.records] == list(fast.rows())
    assert fast.events() == records


@given(st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_fast_heartbeat_and_ack_codec_equals_the_construct_spec(epoch: int, seq: int) -> None:
    for message, fields in (
        (p.Heartbeat(epoch=epoch), {"epoch": epoch}),
        (p.Ack(epoch=epoch, up_to_seq=seq), {"epoch": epoch, "up_to_seq": seq}),
    ):
        kind = p.message_type(message)
        spec = _wire.COMPILED[kind].build(fields)
        assert p.encode_payload(message) == spec
        assert p.decode_payload(kind, spec) == message
        # A payload of the wrong size takes construct's path and its error, naming the type.
        for bad in (spec[:-1], spec + b"\x00"):
            with pytest.raises(p.RemoteProtocolError, match=kind.name):
                p.decode_payload(kind, bad)


@given(st.binary(max_size=600), st.integers(0, 0xFF))
def test_any_payload_raises_only_protocol_errors(payload: bytes, type_code: int) -> None:
    with contextlib.suppress(p.RemoteProtocolError):
        p.decode_payload(type_code, payload)


@given(st.binary(max_size=2000), st.booleans())
def test_any_byte_string_raises_only_protocol_errors(data: bytes, resync: bool) -> None:
    decoder = p.FrameDecoder(resync=resync, max_payload=512)
    decoder.feed(data)
    decoder.feed(b"")
    for _ in range(len(data) + 2):
        try:
            frame = decoder.next_frame()
        except p.RemoteProtocolError:
            continue
        if frame is None:
            break
        with contextlib.suppress(p.RemoteProtocolError):
            p.decode_payload(frame.type, frame.payload)
    assert decoder.statistics().buffered <= len(data)


@settings(max_examples=200)  # each example already tries every edge of every frame
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_split_at_every_byte_boundary_yields_the_same_events(msgs: list[p.Message], data: st.DataObject) -> None:
    frames = [frame_of(m) for m in msgs]
    stream = b"".join(frames)
    # Every cut that lands in a header, its first payload byte or the CRC at the end of a
    # frame, and one drawn anywhere; the one-byte trickle below passes every boundary in
    # turn. (Every cut of every stream up to 300 bytes took 44 s of the suite and found
    # nothing these do not: a cut inside a payload is the same cut as its neighbours.)
    edges = {data.draw(st.integers(0, len(stream)))}
    start = 0
    for frame in frames:
        edges.update(range(start, start + p.FRAME_OVERHEAD))
        edges.update(range(start + len(frame) - 5, start + len(frame) + 1))
        start += len(frame)
    for split in sorted(e for e in edges if 0 <= e <= len(stream)):
        decoder = p.FrameDecoder()
        got = []
        for piece in (stream[:split], stream[split:]):
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                got.append(p.decode_payload(frame.type, frame.payload))
        assert got == msgs
    decoder = p.FrameDecoder()
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            got.append(p.decode_payload(frame.type, frame.payload))
    assert got == msgs


@given(messages, st.data())
def test_every_single_bit_flip_is_detected(message: p.Message, data: st.DataObject) -> None:
    frame = frame_of(message)
    bits = range(len(frame) * 8) if len(frame) <= 64 else [data.draw(st.integers(0, len(frame) * 8 - 1))]
    for bit in bits:
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << (bit % 8)
        for resync in (False, True):
            decoder = p.FrameDecoder(resync=resync)
            decoder.feed(bytes(damaged))
            decoder.feed(b"")
            delivered = []
            errors = 0
            while True:
                try:
                    got = decoder.next_frame()
                except p.RemoteProtocolError:
                    errors += 1
                    continue
                if got is None:
                    break
                delivered.append(got)
            # The damaged frame never comes out, and the damage is noticed.
            assert delivered == []
            assert errors or decoder.statistics().bytes_skipped > 0


@given(st.data())
def test_garbage_before_a_frame_is_skipped_and_the_frame_recovered(data: st.DataObject) -> None:
    max_payload = 256
    message = p.EventBatch.of(data.draw(record_runs(max_size=(max_payload - 10) // p.RECORD_SIZE)))
    garbage = data.draw(st.binary(max_size=4 * (max_payload + p.FRAME_OVERHEAD)))
    # Sprinkle magics into the garbage: they must be rejected by the header check.
    magics = data.draw(st.lists(st.integers(0, len(garbage)), max_size=8))
    for at in sorted(magics, reverse=True):
        garbage = garbage[:at] + _wire.MAGIC + garbage[at:]
    assume(not _contains_valid_header(garbage))
    frame = frame_of(message)
    got = []
    errors = 0
    decoder = p.FrameDecoder(resync=True, max_payload=max_payload)
    for piece in (garbage, frame):
        decoder.feed(piece)
        while True:
            try:
                f = decoder.next_frame()
            except p.RemoteProtocolError:
                errors += 1
                continue
            if f is None:
                break
            got.append(p.decode_payload(f.type, f.payload))
    assert got == [message]
    assert errors == 0
    assert decoder.statistics().bytes_skipped == len(garbage)


def _contains_valid_header(garbage: bytes) -> bool:
    from crc32c import crc32c

    at = garbage.find(_wire.MAGIC)
    while at >= 0:
        head = garbage[at : at + 11]
        if len(head) == 11 and crc32c(head[:9]) & 0xFFFF == int.from_bytes(head[9:], "big"):
            return True
        at = garbage.find(_wire.MAGIC, at + 1)
    return False


def test_oversized_length_is_refused_before_the_payload_is_buffered() -> None:
    decoder = p.FrameDecoder(max_payload=1024)
    header = p.encode_frame(p.MessageType.ACK, b"\0" * 2048)[:11]
    decoder.feed(header)
    with pytest.raises(p.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is p.ErrorCode.FRAME_TOO_LARGE
    assert "2048" in info.value.message and "1024" in info.value.message


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), p.ErrorCode.BAD_CRC),
        (lambda f: b"xx" + f, p.ErrorCode.BAD_MAGIC),
        (lambda f: _reheader(f, version=9), p.ErrorCode.UNSUPPORTED_VERSION),
        (lambda f: _reheader(f, type_code=99), p.ErrorCode.UNKNOWN_TYPE),
        (lambda f: _reheader(f, flags=0x80), p.ErrorCode.BAD_FLAGS),
    ],
    ids=["crc", "magic", "version", "type", "flags"],
)
def test_each_framing_fault_has_its_own_code(mutate, code) -> None:  # type: ignore[no-untyped-def]
    frame = frame_of(p.Ack(epoch=1, up_to_seq=5))
    decoder = p.FrameDecoder()
    decoder.feed(mutate(frame))
    with pytest.raises(p.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is code


def test_torn_frame_at_end_of_stream() -> None:
    frame = frame_of(p.Ack(epoch=1, up_to_seq=5))
    decoder = p.FrameDecoder()
    decoder.feed(frame[:-3])
    assert decoder.next_frame() is None
    decoder.feed(b"")
    with pytest.raises(p.RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is p.ErrorCode.TRUNCATED


def _reheader(
    frame: bytes, *, version: int = p.PROTOCOL_VERSION, type_code: int | None = None, flags: int = 0
) -> bytes:
    payload = frame[11:-4]
    type_code = frame[3] if type_code is None else type_code
    good = p.encode_frame(frame[3], payload)
    head = bytearray(good[:9])
    head[2], head[3], head[4] = version, type_code, flags
    from crc32c import crc32c

    head += (crc32c(bytes(head)) & 0xFFFF).to_bytes(2, "big")
    body = bytes(head) + payload
    return body + crc32c(body).to_bytes(4, "big")


@pytest.mark.parametrize(
    ("records", "code"),
    [
        (b"\0" * 31, p.ErrorCode.MALFORMED),
        (
            p.EventRecord(seq=5, time_us=0, kind=p.EventKind.TAMPER).pack()[:16] + b"\xee" + b"\0" * 15,
            p.ErrorCode.UNKNOWN_EVENT_KIND,
        ),
        (
            p.EventRecord(seq=5, time_us=0, kind=p.EventKind.TAMPER).pack()
            + p.EventRecord(seq=7, time_us=0, kind=p.EventKind.TAMPER).pack(),
            p.ErrorCode.SEQ_ORDER,
        ),
        (
            p.EventRecord(seq=5, time_us=0, kind=p.EventKind.TAMPER).pack()
            + p.EventRecord(seq=6, time_us=0, kind=p.EventKind.BUFFER_OVERFLOW, card=6, aux=1).pack(),
            p.ErrorCode.SEQ_ORDER,
        ),
    ],
    ids=["short", "kind", "order", "marker-not-first"],
)
def test_bad_batches_are_refused_with_a_code(records: bytes, code: p.ErrorCode) -> None:
    count = max(1, len(records) // 32)
    payload = (5).to_bytes(8, "big") + count.to_bytes(2, "big") + records
    with pytest.raises(p.RemoteProtocolError) as info:
        p.decode_payload(p.MessageType.EVENT_BATCH, payload)
    assert info.value.code is code


def test_unknown_config_op_is_named() -> None:
    head = (1).to_bytes(8, "big") + (0).to_bytes(8, "big") + (1).to_bytes(8, "big")
    payload = head + p.EMPTY_DIGEST + (1).to_bytes(4, "big")
    with pytest.raises(p.RemoteProtocolError) as info:
        p.decode_payload(p.MessageType.CONFIG_DELTA, payload + b"\x63\0\0")
    assert info.value.code is p.ErrorCode.UNKNOWN_CONFIG_OP


def test_construct_spec_compiles_and_matches_the_header_struct() -> None:
    frame = frame_of(p.Heartbeat(epoch=3))
    parsed = _wire.FRAME.parse(frame)
    assert parsed.header.version == _wire.PROTOCOL_VERSION
    assert parsed.header.type == p.MessageType.HEARTBEAT
    assert parsed.header.length == 8
    assert isinstance(_wire.COMPILED[p.MessageType.HELLO], construct.Compiled)


@given(
    st.one_of(
        st.integers(1, 2**64 - 70_000),
        st.integers(1, 2**47).map(lambda k: k * 65_536 - 300),  # runs across a 16-bit rollover
        st.just(2**64 - 40_000),
    ),
    st.integers(1, 700),
    st.data(),
)
def test_seq_check_accepts_exactly_the_consecutive_runs(first: int, count: int, data: st.DataObject) -> None:
    seqs = list(range(first, first + count))
    if data.draw(st.booleans()):
        index = data.draw(st.integers(0, count - 1))
        seqs[index] = data.draw(st.integers(1, 2**64 - 1))
    body = b"".join(p.EventRecord(seq=s, time_us=0, kind=p.EventKind.ACCESS_GRANTED).pack() for s in seqs)
    consecutive = seqs == list(range(seqs[0], seqs[0] + count))
    try:
        last = p.check_records(seqs[0], body)
    except p.LocalProtocolError as exc:
        # docs/protocol.md 7.2: order (step 7) is checked before the seq limit (step 8).
        if not consecutive:
            assert exc.code is p.ErrorCode.SEQ_ORDER
        else:
            assert exc.code is p.ErrorCode.FIELD_OUT_OF_RANGE
            assert seqs[-1] > p.MAX_SEQ
    else:
        assert consecutive
        assert last == seqs[0] + count - 1 <= p.MAX_SEQ
