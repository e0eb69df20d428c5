"""EventBuffer against a simple model, for all three policies (P3)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import protocol as p
from storage import BufferFull, EventBuffer, OverflowPolicy


class BufferMachine(RuleBasedStateMachine):
    """The model: a list of (first_seq, last_seq, kind) for what the ring should hold."""

    @initialize(policy=st.sampled_from(list(OverflowPolicy)), capacity=st.integers(2, 12))
    def setup(self, policy: OverflowPolicy, capacity: int) -> None:
        self.buffer = EventBuffer(capacity * p.RECORD_SIZE + 7, policy)
        self.capacity = capacity
        self.model: list[tuple[int, int, int]] = []  # (seq, last, kind)
        self.next_seq = 1
        self.acked = self.dropped = self.refused = self.unreported = 0
        self.sent_upto = 0  # what an uploader has read so far
        self.time = 0

    @rule(card=st.integers(0, 2**64 - 1))
    def append(self, card: int) -> None:
        self.time += 1
        policy = self.buffer.policy
        if self.unreported and self.capacity - len(self.model) >= 2:
            self.model.append((self.next_seq, self.next_seq, int(p.EventKind.EVENTS_REFUSED)))
            self.next_seq += 1
            self.unreported = 0
        if len(self.model) == self.capacity:
            if policy is OverflowPolicy.REFUSE_NEWEST:
                assert self.buffer.append(self.time, p.EventKind.ACCESS_GRANTED, card=card) is None
                self.refused += 1
                self.unreported += 1
                return
            if policy is OverflowPolicy.BLOCK:
                with pytest.raises(BufferFull):
                    self.buffer.append(self.time, p.EventKind.ACCESS_GRANTED, card=card)
                return
            head = self.model[0]
            if head[2] in (14, 16):
                nxt = self.model[1]
                self.model[:2] = [(head[0], nxt[1], head[2])]
                self.dropped += 1
            else:
                nxt = self.model[1]
                self.model[:2] = [(head[0], nxt[1], int(p.EventKind.BUFFER_OVERFLOW))]
                self.dropped += 2
        seq = self.buffer.append(self.time, p.EventKind.ACCESS_GRANTED, card=card)
        assert seq == self.next_seq
        self.model.append((seq, seq, int(p.EventKind.ACCESS_GRANTED)))
        self.next_seq += 1

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        up_to = data.draw(st.integers(0, self.next_seq))
        self.buffer.release(up_to)
        while self.model and self.model[0][1] <= up_to:
            _, _, kind = self.model.pop(0)
            if kind not in (14, 16):
                self.acked += 1
        if self.model and self.model[0][0] <= up_to:
            _, last, kind = self.model[0]
            assert kind in (14, 16)
            self.model[0] = (up_to + 1, last, kind)

    @precondition(lambda self: self.next_seq > 1)
    @rule(data=st.data(), n=st.integers(1, 20))
    def read(self, data: st.DataObject, n: int) -> None:
        from_seq = data.draw(st.integers(0, self.next_seq + 2))
        got = self.buffer.read(from_seq, n)
        expected = [r for r in self.model if r[1] >= from_seq][:n]
        if expected and expected[0][0] < from_seq:  # a marker clipped to where reading starts
            expected[0] = (from_seq, expected[0][1], expected[0][2])
        rows = list(p.iter_rows(got))
        assert [(r[0], r[6] if r[2] in (14, 16) else r[0], r[2]) for r in rows] == expected
        if got:
            # Whatever the buffer hands out is a valid batch body.
            assert p.check_records(rows[0][0], got) == expected[-1][1]

    @invariant()
    def accounting_is_exact(self) -> None:
        stats = self.buffer.statistics()
        assert stats.depth == len(self.model) <= self.capacity
        assert stats.bytes <= stats.budget_bytes
        assert stats.emitted == stats.acked + stats.buffered + stats.dropped
        assert (stats.acked, stats.dropped, stats.refused, stats.refused_unreported) == (
            self.acked,
            self.dropped,
            self.refused,
            self.unreported,
        )
        assert stats.next_seq == self.next_seq
        assert stats.oldest_seq == (self.model[0][0] if self.model else 0)


BufferMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestBufferMachine = BufferMachine.TestCase


def test_refusals_are_reported_once_space_returns() -> None:
    buf = EventBuffer(4 * p.RECORD_SIZE, OverflowPolicy.REFUSE_NEWEST)
    for t in range(7):
        buf.append(t, p.EventKind.ACCESS_GRANTED)
    assert buf.statistics().refused == 3
    buf.release(3)
    buf.append(100, p.EventKind.DOOR_HELD)
    rows = list(p.iter_rows(buf.records()))
    assert [(r[0], p.EventKind(r[2]), r[7]) for r in rows] == [
        (4, p.EventKind.ACCESS_GRANTED, 0),
        (5, p.EventKind.EVENTS_REFUSED, 3),
        (6, p.EventKind.DOOR_HELD, 0),
    ]
    assert buf.statistics().refused_unreported == 0


def test_a_million_events_fit_their_budget() -> None:
    budget = 32 * 1_000_000
    buf = EventBuffer(budget, OverflowPolicy.DROP_OLDEST)
    for t in range(1_000_000):
        buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
    stats = buf.statistics()
    assert stats.depth == 1_000_000 and stats.dropped == 0
    assert len(buf._ring) == budget  # the whole store is the preallocated ring


def test_rebase_renumbers_a_ram_buffer_after_power_loss() -> None:
    buf = EventBuffer(8 * p.RECORD_SIZE)
    for t in range(10):
        buf.append(t, p.EventKind.TAMPER)
    buf.rebase(501)
    body = buf.records()
    first = int.from_bytes(body[:8], "big")
    assert first == 501
    assert p.check_records(first, body) == 510
    assert buf.next_seq == 511


def test_declare_lost_leads_with_a_marker() -> None:
    buf = EventBuffer(8 * p.RECORD_SIZE)
    buf.declare_lost(40, 59, time_us=5)
    seq = buf.append(6, p.EventKind.POWER_RESTORE)
    assert seq == 60
    body = buf.read(0, 10)
    assert p.check_records(40, body) == 60
    stats = buf.statistics()
    assert stats.dropped == 20 and stats.emitted == stats.acked + stats.buffered + stats.dropped


def test_a_budget_under_two_records_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than 2 records"):
        EventBuffer(63)
