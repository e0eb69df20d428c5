"""The event store's records, shared by both engines (SQLite and PostgreSQL).

u64 fields are stored as the signed 64-bit integers both engines hold (the same
bits): ``signed`` on the way in, ``unsigned`` on the way out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from protocol import GAP_KINDS, RECORD_SIZE, RECORD_STRUCT, EventFlags, EventKind, EventRecord, alarms_in

__all__ = [
    "MAX_STORED_SEQ",
    "ALARM_FEED_LIMIT",
    "AlarmCursor",
    "AlarmFeed",
    "ALARM_FIELDS",
    "ALARM_INSERT",
    "gap_alarm_row",
    "IngestAlarm",
    "IngestBatch",
    "IngestOutcome",
    "IngestResult",
    "LogBacklog",
    "Loss",
    "StoredAlarm",
    "StoredEvent",
    "ALARM_COLUMNS",
    "alarm_feed",
    "alarm_rows",
    "stored_alarm",
    "stored_event",
    "stored_record",
    "signed",
    "unsigned",
]

MAX_STORED_SEQ = 2**63 - 1


def signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def unsigned(value: int) -> int:
    return value + 2**64 if value < 0 else value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestBatch:
    """Records of one panel, checked by the protocol layer (``check_records``).

    Building one checks only what the rows need (seqs within what SQLite stores,
    whole records), so ``ingest`` trusts it and checks nothing of it again: the
    records' content was checked when their EVENT_BATCH was decoded.

    Raises:
        ValueError: the seqs or the records' size are outside those bounds.
    """

    panel_id: int
    first_seq: int
    last_seq: int
    records: bytes
    received_us: int

    def __post_init__(self) -> None:
        if not 1 <= self.first_seq <= self.last_seq <= MAX_STORED_SEQ:
            raise ValueError(
                f"panel {self.panel_id}: batch seqs {self.first_seq}..{self.last_seq} are not "
                f"an ascending range within 1..2**63-1"
            )
        if not self.records or len(self.records) % RECORD_SIZE:
            raise ValueError(
                f"panel {self.panel_id}: batch records are {len(self.records)} bytes, "
                f"not a positive multiple of {RECORD_SIZE}"
            )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestAlarm:
    """An ALARM's records of one panel (docs/protocol.md 7.6), checked by the protocol layer
    (``check_alarm_records``): copies of alarms, stored once per (panel, seq)."""

    panel_id: int
    records: bytes
    received_us: int


#: The alarms' columns after ``id``, as both engines name them (``alarm_rows`` fills them).
ALARM_INSERT = (
    "INSERT INTO alarms (panel_id, seq, time_us, kind, door, reader, flags, card, aux, received_us, epoch, lane, gap) "
    "VALUES ({})"
)
#: How many values a row of ``ALARM_INSERT`` takes.
ALARM_FIELDS = 13
_GAPS = frozenset(int(k) for k in GAP_KINDS)


def alarm_rows(
    panel_id: int, records: bytes, received_us: int, epoch: int, *, lane: bool, only_alarms: bool = False
) -> list[tuple[int, ...]]:
    """Rows of ``alarms`` for packed records (``only_alarms``: pick the alarms out first, for
    a batch's records, which are mostly not: one ``translate`` when none is)."""
    if only_alarms:
        records = alarms_in(records)
    return [
        (
            panel_id,
            seq,
            signed(time_us),
            kind,
            door,
            reader,
            flags,
            signed(card),
            aux,
            received_us,
            epoch,
            int(lane),
            int(kind in _GAPS),
        )
        for seq, time_us, kind, door, reader, flags, card, aux in RECORD_STRUCT.iter_unpack(records)
    ]


def gap_alarm_row(
    panel_id: int, first: int, last: int, kind: int, time_us: int, received_us: int, epoch: int
) -> tuple[int, ...]:
    """The alarm of a declared gap ``first..last`` as its loss row records it (the part above
    the hwm), keyed apart from any alarm at that seq (``gap`` 1)."""
    count = last - first + 1
    return (panel_id, first, signed(time_us), kind, 0, 0, 0, signed(last), count, received_us, epoch, 0, 1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestOutcome:
    panel_id: int
    #: The panel's high-water mark after this batch (everything up to it is durable).
    hwm: int
    stored: int = 0
    duplicates: int = 0
    #: Seqs of a declared gap recorded as lost by this batch.
    declared_lost: int = 0
    #: Set when the batch was refused: it would have left an undeclared gap.
    error: str | None = None
    expected_seq: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    epoch: int
    outcomes: tuple[IngestOutcome, ...]
    #: Each panel's high-water mark after the commit.
    hwms: dict[int, int]
    stored: int
    commit_s: float
    #: Alarms this commit added to ``alarms`` (from the lane and from the batches; not the copies already there).
    alarms_stored: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogBacklog:
    """What the batch log holds (acknowledged, not yet in ``events``), or what one
    ``materialize`` moved out of it."""

    batches: int = 0
    events: int = 0
    #: The oldest such batch's receive time (µs since the epoch), None when there is none.
    oldest_received_us: int | None = None


def materialize_all(step: Callable[[], LogBacklog]) -> LogBacklog:
    """Take ``step`` (one ``materialize``) until the log is empty; what they moved together."""
    batches = events = 0
    oldest: int | None = None
    while True:
        moved = step()
        if not moved.batches:
            return LogBacklog(batches=batches, events=events, oldest_received_us=oldest)
        batches += moved.batches
        events += moved.events
        oldest = moved.oldest_received_us if oldest is None else oldest


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoredAlarm:
    """A row of ``alarms``: ``order`` is the order alarms were stored in, ``lane`` whether
    the alarm lane brought it (else its batch did), ``orphan`` a lane copy whose seq its
    panel numbered again after it lost its counter (the record never reached ``events``)."""

    order: int
    panel_id: int
    record: EventRecord
    received_us: int
    epoch: int
    lane: bool
    orphan: bool = False


#: The most alarms one ``alarm_feed`` call returns (a reader behind takes the rest next time).
ALARM_FEED_LIMIT = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class AlarmCursor:
    """How far an ``alarm_feed`` reader has read: the last id it took of ``alarms``, of
    ``losses`` and of ``alarm_acks`` (each table's ids grow in the order rows are stored)."""

    alarm: int = 0
    loss: int = 0
    ack: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AlarmFeed:
    """What was stored after a cursor, read in one snapshot (``EventStoreInterface.alarm_feed``)."""

    #: New alarms in the order stored (``StoredAlarm.order`` is the row's id).
    alarms: tuple[StoredAlarm, ...]
    #: (panel, kind, count) of each new declared loss.
    losses: tuple[tuple[int, EventKind, int], ...]
    #: The ids of the alarms acknowledged since.
    acked: tuple[int, ...]
    #: Where the next call starts.
    cursor: AlarmCursor
    #: More alarms than ``limit`` were there: call again.
    more: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    panel_id: int
    record: EventRecord
    received_us: int
    epoch: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Loss:
    """A gap a panel declared: ``count`` events ``first_seq..last_seq`` never arrived."""

    panel_id: int
    first_seq: int
    last_seq: int
    count: int
    kind: EventKind
    time_us: int
    received_us: int
    epoch: int


#: What ``stored_alarm`` reads, in order, from either engine.
ALARM_COLUMNS = "id, panel_id, seq, time_us, kind, door, reader, flags, card, aux, received_us, epoch, lane, orphan"


def stored_record(
    seq: int, time_us: int, kind: int, door: int, reader: int, flags: int, card: int, aux: int
) -> EventRecord:
    """A record from the columns either engine stores it in (u64 fields as signed)."""
    return EventRecord(
        seq=seq,
        time_us=unsigned(time_us),
        kind=EventKind(kind),
        door=door,
        reader=reader,
        flags=EventFlags(flags),
        card=unsigned(card),
        aux=aux,
    )


def stored_event(row: tuple[int, ...]) -> StoredEvent:
    """A row of ``events`` (its eleven columns in table order), from either engine."""
    pid, *columns, received_us, epoch = row
    return StoredEvent(panel_id=pid, record=stored_record(*columns), received_us=received_us, epoch=epoch)


def stored_alarm(row: tuple[int, ...]) -> StoredAlarm:
    order, pid, *columns, received_us, epoch, lane, orphan = row
    record = stored_record(*columns)
    return StoredAlarm(
        order=order,
        panel_id=pid,
        record=record,
        received_us=received_us,
        epoch=epoch,
        lane=bool(lane),
        orphan=bool(orphan),
    )


def alarm_feed(
    fetch: Callable[[str, tuple[int, ...]], list[tuple[int, ...]]], mark: str, after: AlarmCursor, limit: int
) -> AlarmFeed:
    """An ``AlarmFeed`` read by either engine: ``fetch(sql, args)`` runs one query (inside the
    caller's snapshot) and returns its rows; ``mark`` is the engine's placeholder."""
    alarm_rows = fetch(
        f"SELECT {ALARM_COLUMNS} FROM alarms WHERE id > {mark} ORDER BY id LIMIT {mark}", (after.alarm, limit + 1)
    )
    loss_rows = fetch(f"SELECT id, panel_id, kind, count FROM losses WHERE id > {mark} ORDER BY id", (after.loss,))
    ack_rows = fetch(f"SELECT id, alarm_id FROM alarm_acks WHERE id > {mark} ORDER BY id", (after.ack,))
    alarms = tuple(stored_alarm(r) for r in alarm_rows[:limit])
    return AlarmFeed(
        alarms=alarms,
        losses=tuple((int(pid), EventKind(kind), int(count)) for _, pid, kind, count in loss_rows),
        acked=tuple(int(alarm_id) for _, alarm_id in ack_rows),
        cursor=AlarmCursor(
            alarm=alarms[-1].order if alarms else after.alarm,
            loss=int(loss_rows[-1][0]) if loss_rows else after.loss,
            ack=int(ack_rows[-1][0]) if ack_rows else after.ack,
        ),
        more=len(alarm_rows) > limit,
    )
