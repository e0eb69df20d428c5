"""The fast EVENT_BATCH record codec.

construct parses about 0.5M records/s even compiled; the hot path needs ten
times that. Records are therefore kept packed and checked with whole-batch
operations that run in C: strided ``bytes`` slices compare every seq column at
once and ``bytes.translate`` proves every kind is known. ``tests/`` compares
this module with the construct spec in ``_wire.py`` on random batches.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from ._errors import ErrorCode, LocalProtocolError
from ._records import GAP_KINDS, RECORD_SIZE, RECORD_STRUCT, VALID_KIND_BYTES, EventRecord

__all__ = ["check_records", "iter_rows", "pack_records"]

_KIND_OFFSET = 16
_CARD = struct.Struct(">Q")
_CARD_OFFSET = 20
_AUX = struct.Struct(">I")
_AUX_OFFSET = 28
_NON_GAP_KIND_BYTES = bytes(sorted(set(VALID_KIND_BYTES) - {int(k) for k in GAP_KINDS}))
_GAP_KIND_VALUES = frozenset(int(k) for k in GAP_KINDS)


def pack_records(records: Iterable[EventRecord]) -> bytes:
    return b"".join(r.pack() for r in records)


def iter_rows(records: bytes) -> Iterator[tuple[int, int, int, int, int, int, int, int]]:
    """Yield each record as a raw tuple (seq, time_us, kind, door, reader, flags, card, aux)."""
    return RECORD_STRUCT.iter_unpack(records)


def check_records(first_seq: int, records: bytes) -> int:
    """Check a packed batch and return the last seq it accounts for.

    A batch is a run of consecutive seqs starting at ``first_seq``. Only its first
    record may be a gap marker (a marker stands for ``seq..card``), because the
    panel's buffer only ever drops from its head.

    Raises:
        LocalProtocolError: MALFORMED, UNKNOWN_EVENT_KIND, SEQ_ORDER or
            FIELD_OUT_OF_RANGE, naming the offending record. The decoder turns it
            into a RemoteProtocolError with the same code.
    """
    size = len(records)
    if size == 0 or size % RECORD_SIZE:
        raise LocalProtocolError(
            ErrorCode.MALFORMED,
            f"batch records are {size} bytes, not a positive multiple of {RECORD_SIZE}",
        )
    count = size // RECORD_SIZE
    kinds = records[_KIND_OFFSET::RECORD_SIZE]
    if kinds[1:].translate(None, _NON_GAP_KIND_BYTES) or kinds[:1].translate(None, VALID_KIND_BYTES):
        _raise_bad_kind(kinds)
    head_seq = int.from_bytes(records[0:8], "big")
    if head_seq != first_seq:
        raise LocalProtocolError(
            ErrorCode.SEQ_ORDER, f"batch says first seq {first_seq} but its first record has seq {head_seq}"
        )
    if first_seq == 0:
        raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, "seq 0 is reserved; seqs start at 1")
    start = 0
    next_seq = first_seq
    if kinds[0] in _GAP_KIND_VALUES:
        (last,) = _CARD.unpack_from(records, _CARD_OFFSET)
        (aux,) = _AUX.unpack_from(records, _AUX_OFFSET)
        if last < first_seq or aux != last - first_seq + 1:
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE,
                f"gap marker at seq {first_seq} declares last seq {last} and count {aux}; "
                f"expected last >= {first_seq} and count == last - seq + 1",
            )
        start = RECORD_SIZE
        next_seq = last + 1
        count -= 1
    if count:
        last_seq = next_seq + count - 1
        if last_seq >= 2**64:
            raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"seq {last_seq} overflows u64")
        expected = struct.pack(f">{count}Q", *range(next_seq, last_seq + 1))
        body = records[start:] if start else records
        for byte in range(8):
            if body[byte::RECORD_SIZE] != expected[byte::8]:
                _raise_bad_order(next_seq, body)
        return last_seq
    return next_seq - 1


def _raise_bad_kind(kinds: bytes) -> None:
    for index, kind in enumerate(kinds):
        if kind not in VALID_KIND_BYTES:
            raise LocalProtocolError(ErrorCode.UNKNOWN_EVENT_KIND, f"record {index} has unknown event kind {kind}")
    for index, kind in enumerate(kinds[1:], start=1):
        if kind in _GAP_KIND_VALUES:
            raise LocalProtocolError(
                ErrorCode.SEQ_ORDER, f"record {index} is a gap marker; only a batch's first record may be one"
            )
    raise AssertionError("unreachable: kinds passed every check")  # pragma: no cover


def _raise_bad_order(next_seq: int, body: bytes) -> None:
    for index, (seq,) in enumerate(struct.iter_unpack(">Q24x", body)):
        if seq != next_seq + index:
            raise LocalProtocolError(
                ErrorCode.SEQ_ORDER,
                f"record with seq {seq} found where seq {next_seq + index} was expected",
            )
    raise AssertionError("unreachable: seqs passed the column check")  # pragma: no cover
