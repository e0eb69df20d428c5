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
from ._records import ALARM_KIND_BYTES, GAP_KINDS, RECORD_SIZE, RECORD_STRUCT, VALID_KIND_BYTES, EventRecord

__all__ = ["alarms_in", "check_alarm_records", "check_records", "iter_rows", "pack_records"]

_KIND_OFFSET = 16
_CARD = struct.Struct(">Q")
_CARD_OFFSET = 20
_AUX = struct.Struct(">I")
_AUX_OFFSET = 28
_NON_GAP_KIND_BYTES = bytes(sorted(set(VALID_KIND_BYTES) - {int(k) for k in GAP_KINDS}))
_GAP_KIND_VALUES = frozenset(int(k) for k in GAP_KINDS)
_NON_ALARM_KIND_BYTES = bytes(sorted(set(range(256)) - set(ALARM_KIND_BYTES)))
_MAX_SEQ = 2**63 - 1  # docs/protocol.md 7.1: seqs fit a signed 64-bit integer


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
        if last < first_seq or aux != last - first_seq + 1 or last > _MAX_SEQ:
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE,
                f"gap marker at seq {first_seq} declares last seq {last} and count {aux}; "
                f"expected {first_seq} <= last <= 2**63-1 and count == last - seq + 1",
            )
        start = RECORD_SIZE
        next_seq = last + 1
        count -= 1
    if count:
        last_seq = next_seq + count - 1
        body = records[start:] if start else records
        if last_seq >= 2**64 or not _seq_columns_match(body, next_seq, count):
            _raise_bad_order(next_seq, body)
        if last_seq > _MAX_SEQ:
            raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"seq {last_seq} is above 2**63-1")
        return last_seq
    return next_seq - 1


# Low 16 bits of every seq, big-endian, twice over so any window of < 65,536
# consecutive values is one slice. 256 KiB, built once.
_LOW16 = struct.pack(">65536H", *range(65536)) * 2


def _seq_columns_match(body: bytes, first: int, count: int) -> bool:
    """True if the records' seqs are ``first .. first + count - 1``.

    Compares each of the 8 seq byte columns (a strided slice of the batch) with
    the column the expected run must have. Because a batch holds fewer than
    65,536 records, the upper 48 bits take at most two values across it, so
    those columns are two runs of one repeated byte each.
    """
    low = first & 0xFFFF
    window = _LOW16[2 * low : 2 * (low + count)]
    if body[6::RECORD_SIZE] != window[0::2] or body[7::RECORD_SIZE] != window[1::2]:
        return False
    before = min(count, 0x10000 - low)  # records before the upper bits roll over
    high = (first >> 16).to_bytes(6, "big")
    # Only a run that rolls over needs the next value (and then it fits in 48 bits).
    high_next = ((first >> 16) + 1).to_bytes(6, "big") if count > before else high
    for column in range(6):
        expected = high[column : column + 1] * before + high_next[column : column + 1] * (count - before)
        if body[column::RECORD_SIZE] != expected:
            return False
    return True


def alarms_in(records: bytes) -> bytes:
    """The records of alarm kinds among ``records`` (packed, in order), often none: the kind
    column is looked at in C first, a batch without an alarm costs one ``translate``."""
    kinds = records[_KIND_OFFSET::RECORD_SIZE]
    if not kinds.translate(None, _NON_ALARM_KIND_BYTES):
        return b""
    alarm = frozenset(ALARM_KIND_BYTES)
    return b"".join(records[i * RECORD_SIZE : (i + 1) * RECORD_SIZE] for i, kind in enumerate(kinds) if kind in alarm)


def check_alarm_records(records: bytes, after: int = 0) -> tuple[int, int]:
    """Check an ALARM's records (docs/protocol.md 7.6) and return its first and last seq.

    ``after``: the last seq of the session's previous ALARM (0: none); every seq must be above it.

    Raises:
        LocalProtocolError: MALFORMED, UNKNOWN_EVENT_KIND, FIELD_OUT_OF_RANGE or SEQ_ORDER.
    """
    size = len(records)
    if size == 0 or size % RECORD_SIZE:
        raise LocalProtocolError(
            ErrorCode.MALFORMED, f"alarm records are {size} bytes, not a positive multiple of {RECORD_SIZE}"
        )
    kinds = records[_KIND_OFFSET::RECORD_SIZE]
    for index, kind in enumerate(kinds):
        if kind not in VALID_KIND_BYTES:
            raise LocalProtocolError(ErrorCode.UNKNOWN_EVENT_KIND, f"alarm {index} has unknown event kind {kind}")
    rows = list(RECORD_STRUCT.iter_unpack(records))
    # Each check over every record before the next one (7.6, as 7.2): the first failure decides.
    for index, (seq, _time, kind, _door, _reader, _flags, card, aux) in enumerate(rows):
        if seq == 0 or seq > _MAX_SEQ:
            raise LocalProtocolError(ErrorCode.FIELD_OUT_OF_RANGE, f"alarm {index} has seq {seq}, outside 1..2**63-1")
        if kind not in ALARM_KIND_BYTES:
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE, f"alarm {index} (seq {seq}) is of kind {kind}, not an alarm kind"
            )
        if kind in _GAP_KIND_VALUES and (card < seq or aux != card - seq + 1 or card > _MAX_SEQ):
            raise LocalProtocolError(
                ErrorCode.FIELD_OUT_OF_RANGE,
                f"alarm {index}: gap marker at seq {seq} declares last seq {card} and count {aux}",
            )
    previous = after
    for index, row in enumerate(rows):
        if row[0] <= previous:
            raise LocalProtocolError(
                ErrorCode.SEQ_ORDER, f"alarm {index} has seq {row[0]}, not above the previous alarm's {previous}"
            )
        previous = row[0]
    return rows[0][0], previous


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
