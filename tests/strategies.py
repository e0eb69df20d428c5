"""Hypothesis strategies for every protocol type."""

from __future__ import annotations

from hypothesis import strategies as st

import protocol as p

U64 = 2**64 - 1
u64 = st.integers(0, U64)
epochs = st.integers(1, U64)
seqs = st.integers(0, p.MAX_SEQ)
digests = st.binary(min_size=32, max_size=32)

kinds = st.sampled_from([k for k in p.EventKind if k not in p.GAP_KINDS])


@st.composite
def records(draw: st.DrawFn, seq: int, kind: st.SearchStrategy[p.EventKind] = kinds) -> p.EventRecord:
    return p.EventRecord(
        seq=seq,
        time_us=draw(u64),
        kind=draw(kind),
        door=draw(st.integers(0, 255)),
        reader=draw(st.integers(0, 255)),
        flags=p.EventFlags(draw(st.integers(0, 255))),
        card=draw(u64),
        aux=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def record_runs(draw: st.DrawFn, max_size: int = 64, first_seq: int | None = None) -> list[p.EventRecord]:
    """A run of consecutive records, optionally led by a gap marker."""
    n = draw(st.integers(1, max_size))
    # Room below MAX_SEQ for the run and a gap marker of up to 10,000.
    first = first_seq if first_seq is not None else draw(st.integers(1, p.MAX_SEQ - max_size - 10_000))
    out: list[p.EventRecord] = []
    seq = first
    if draw(st.booleans()) and draw(st.booleans()):
        gap = draw(st.integers(1, 10_000))
        out.append(
            p.EventRecord(
                seq=seq,
                time_us=draw(u64),
                kind=draw(st.sampled_from(sorted(p.GAP_KINDS))),
                card=seq + gap - 1,
                aux=gap,
            )
        )
        seq += gap
        n -= 1
    for i in range(n):
        out.append(draw(records(seq + i)))
    return out


batches = record_runs().map(p.EventBatch.of)

intervals = st.builds(
    lambda days, a, b: p.Interval(days=days, start=min(a, b), end=max(a, b) + 1),
    st.integers(0, 0x7F),
    st.integers(0, 1439),
    st.integers(0, 1439),
)
schedules = st.builds(p.Schedule, id=st.integers(1, 0xFFFF), intervals=st.lists(intervals, max_size=16).map(tuple))
levels = st.builds(
    p.AccessLevel,
    id=st.integers(1, 0xFFFF),
    entries=st.lists(
        st.builds(p.LevelEntry, door=st.integers(0, 255), schedule=st.integers(1, 0xFFFF)), max_size=64
    ).map(tuple),
)
cardholders = st.builds(
    p.Cardholder,
    card=st.integers(1, U64),
    levels=st.lists(st.integers(1, 0xFFFF), max_size=32).map(tuple),
    pin=st.integers(0, 99_999_999),
    valid_from_us=u64,
    valid_until_us=u64,
)
doors = st.builds(p.Door, door=st.integers(0, 255), mode=st.sampled_from(list(p.DoorMode)))
config_ops: st.SearchStrategy[p.ConfigOp] = st.one_of(
    st.builds(p.PutCardholder, cardholder=cardholders),
    st.builds(p.DeleteCardholder, card=st.integers(1, U64)),
    st.builds(p.PutSchedule, schedule=schedules),
    st.builds(p.DeleteSchedule, id=st.integers(1, 0xFFFF)),
    st.builds(p.PutDoor, door=doors),
    st.builds(p.PutAccessLevel, level=levels),
    st.builds(p.DeleteAccessLevel, id=st.integers(1, 0xFFFF)),
)
op_tuples = st.lists(config_ops, max_size=8).map(tuple)


@st.composite
def deltas(draw: st.DrawFn) -> p.ConfigDelta:
    start = draw(st.integers(0, U64 - 1))
    return p.ConfigDelta(
        epoch=draw(epochs),
        from_version=start,
        to_version=draw(st.integers(start + 1, U64)),
        digest=draw(digests),
        ops=draw(op_tuples),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> p.ConfigSnapshot:
    parts = draw(st.integers(1, 0xFFFF))
    return p.ConfigSnapshot(
        epoch=draw(epochs),
        version=draw(u64),
        digest=draw(digests),
        part=draw(st.integers(0, parts - 1)),
        parts=parts,
        ops=draw(op_tuples),
    )


@st.composite
def hellos(draw: st.DrawFn) -> p.Hello:
    a, b = sorted((draw(seqs), draw(seqs)))
    return p.Hello(
        panel_id=draw(st.integers(1, 2**32 - 1)),
        boot_id=draw(u64),
        firmware=draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=32)),
        oldest_seq=a,
        newest_seq=b,
        config_version=draw(u64),
        config_digest=draw(digests),
        max_epoch=draw(u64),
    )


@st.composite
def welcomes(draw: st.DrawFn) -> p.Welcome:
    heartbeat_ms = draw(st.integers(1, 2**32 - 1))
    return p.Welcome(
        node_id=draw(_utf8_bounded(64)),
        epoch=draw(epochs),
        hwm=draw(seqs),
        config_version=draw(u64),
        config_digest=draw(digests),
        heartbeat_ms=heartbeat_ms,
        idle_ms=draw(st.integers(heartbeat_ms, 2**32 - 1)),
    )


@st.composite
def standbys(draw: st.DrawFn) -> p.Standby:
    heartbeat_ms = draw(st.integers(1, 2**32 - 1))
    return p.Standby(
        node_id=draw(_utf8_bounded(64)),
        heartbeat_ms=heartbeat_ms,
        idle_ms=draw(st.integers(heartbeat_ms, 2**32 - 1)),
    )


def _utf8_bounded(limit: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=limit // 4)


messages: st.SearchStrategy[p.Message] = st.one_of(
    hellos(),
    welcomes(),
    batches,
    st.builds(p.Ack, epoch=epochs, up_to_seq=u64),
    deltas(),
    snapshots(),
    st.builds(p.ConfigAck, version=u64, digest=digests),
    st.builds(p.Heartbeat, epoch=u64),
    st.builds(p.Error, epoch=u64, code=st.integers(0, 0xFFFF), text=_utf8_bounded(1024)),
    st.builds(p.Bye, epoch=u64, reason=st.integers(0, 0xFFFF)),
    standbys(),
    st.builds(p.Takeover, epoch=epochs),
)


def frame_of(message: p.Message) -> bytes:
    return p.encode_frame(p.message_type(message), p.encode_payload(message))
