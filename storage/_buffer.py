"""The panel's bounded event buffer: a packed ring of 32-byte records.

The ring is one preallocated ``bytearray`` of ``budget // 32`` slots, so memory
is the budget plus a constant, whatever happens (P3). The buffer assigns seqs:
every seq it hands out ends in exactly one of three places, which
``statistics()`` counts: still buffered, released by an ACK, or dropped (and
declared). ``emitted == acked + buffered + dropped`` always holds.

drop_oldest declares what it drops with a gap marker (a BUFFER_OVERFLOW record
standing for seq ``seq..card``) that takes the place of the dropped records at
the head of the ring. The marker is the only record that can stand for more
than one seq and it can only sit at the head, so finding a seq stays O(1).

``EventBuffer`` is longer than the project's guide of about 250 lines for a class
(issue 16), on purpose: every method keeps the same ring invariants (head and
count, the marker only at the head, emitted = acked + buffered + dropped), and
keeping them in one class keeps them in one place.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from protocol import GAP_KINDS, RECORD_SIZE, RECORD_STRUCT, EventKind

from ._errors import BufferFull

__all__ = ["BufferStatistics", "EventBuffer", "OverflowPolicy"]

_SEQ = struct.Struct(">Q")
_MARKER_TAIL = struct.Struct(">QI")  # card (last seq), aux (count) at offset 20
_KIND_OFFSET = 16
_GAP_VALUES = frozenset(int(k) for k in GAP_KINDS)


class OverflowPolicy(enum.Enum):
    """What a full buffer does with the next event."""

    #: Drop the oldest records and queue a BUFFER_OVERFLOW marker for the gap.
    DROP_OLDEST = "drop_oldest"
    #: Refuse the new event, count it, report the count once space returns.
    REFUSE_NEWEST = "refuse_newest"
    #: Raise ``BufferFull``; the caller waits for acks (for workloads that must not lose).
    BLOCK = "block"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BufferStatistics:
    policy: OverflowPolicy
    budget_bytes: int
    capacity: int
    #: Records in the ring (events and at most one gap marker).
    depth: int
    bytes: int
    #: Real events in the ring (``depth`` less a marker).
    buffered: int
    oldest_seq: int
    newest_seq: int
    next_seq: int
    emitted: int
    acked: int
    dropped: int
    refused: int
    refused_unreported: int


class EventBuffer:
    """A bounded FIFO of packed event records with exact loss accounting.

    Args:
        budget_bytes: the byte budget; capacity is ``budget_bytes // 32`` records (>= 2).
        policy: what to do when full.
        next_seq: the seq the next event gets (a flash-backed panel resumes its counter).
    """

    def __init__(
        self, budget_bytes: int, policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST, *, next_seq: int = 1
    ) -> None:
        capacity = budget_bytes // RECORD_SIZE
        if capacity < 2:
            raise ValueError(f"buffer budget {budget_bytes} bytes holds fewer than 2 records of {RECORD_SIZE} bytes")
        if next_seq < 1:
            raise ValueError("seqs start at 1")
        self.policy = OverflowPolicy(policy)
        self.budget_bytes = budget_bytes
        self.capacity = capacity
        self._ring = bytearray(capacity * RECORD_SIZE)
        self._head = 0
        self._count = 0
        self._marker = False  # is the head record a gap marker?
        self._next_seq = next_seq
        self._emitted = 0
        self._acked = 0
        self._dropped = 0
        self._refused = 0
        self._refused_unreported = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"<EventBuffer {self.policy.value} {self._count}/{self.capacity} records "
            f"seq {self.oldest_seq}..{self._next_seq - 1} dropped={self._dropped} refused={self._refused}>"
        )

    # -- reading the ring -----------------------------------------------------------

    def _offset(self, index: int) -> int:
        return ((self._head + index) % self.capacity) * RECORD_SIZE

    def _record_at(self, index: int) -> bytes:
        offset = self._offset(index)
        return bytes(self._ring[offset : offset + RECORD_SIZE])

    def _seq_at(self, index: int) -> int:
        return int(_SEQ.unpack_from(self._ring, self._offset(index))[0])

    def _head_last(self) -> int:
        """Last seq the head record stands for."""
        if self._marker:
            return int(_MARKER_TAIL.unpack_from(self._ring, self._offset(0) + 20)[0])
        return self._seq_at(0)

    @property
    def oldest_seq(self) -> int:
        """Seq of the head record (0 when empty)."""
        return self._seq_at(0) if self._count else 0

    @property
    def newest_seq(self) -> int:
        """Newest seq assigned so far (0 before the first)."""
        return self._next_seq - 1

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def has_room(self) -> bool:
        return self._count < self.capacity

    # -- writing ------------------------------------------------------------------

    def _write(self, time_us: int, kind: int, door: int, reader: int, flags: int, card: int, aux: int) -> int:
        seq = self._next_seq
        RECORD_STRUCT.pack_into(
            self._ring, self._offset(self._count), seq, time_us, kind, door, reader, flags, card, aux
        )
        self._count += 1
        self._next_seq = seq + 1
        self._emitted += 1
        return seq

    def append(
        self,
        time_us: int,
        kind: EventKind | int,
        *,
        door: int = 0,
        reader: int = 0,
        flags: int = 0,
        card: int = 0,
        aux: int = 0,
    ) -> int | None:
        """Number and store one event; return its seq, or None if refused.

        Raises:
            BufferFull: the buffer is full and the policy is ``block``.
            struct.error: a field is out of its wire range.
        """
        if self._refused_unreported and self.capacity - self._count >= 2:
            self._write(time_us, EventKind.EVENTS_REFUSED, 0, 0, 0, 0, self._refused_unreported)
            self._refused_unreported = 0
        if self._count == self.capacity:
            if self.policy is OverflowPolicy.DROP_OLDEST:
                self._drop_oldest(time_us)
            elif self.policy is OverflowPolicy.REFUSE_NEWEST:
                self._refused += 1
                self._refused_unreported += 1
                return None
            else:
                raise BufferFull(f"buffer full at {self.capacity} records ({self.budget_bytes} bytes); wait for acks")
        return self._write(time_us, int(kind), door, reader, flags, card, aux)

    def _drop_oldest(self, time_us: int) -> None:
        # Free one slot: fold the record after the head into a head marker.
        ring = self._ring
        if self._marker:
            first, marker_time = struct.unpack_from(">QQ", ring, self._offset(0))
            kind = ring[self._offset(0) + _KIND_OFFSET]
            dropped = 1
        else:
            first = self._seq_at(0)
            marker_time, kind = time_us, int(EventKind.BUFFER_OVERFLOW)
            dropped = 2
        last = self._seq_at(1)
        RECORD_STRUCT.pack_into(ring, self._offset(1), first, marker_time, kind, 0, 0, 0, last, last - first + 1)
        self._head = (self._head + 1) % self.capacity
        self._count -= 1
        self._marker = True
        self._dropped += dropped

    def declare_lost(self, first_seq: int, last_seq: int, time_us: int) -> None:
        """Put a BUFFER_LOST marker for ``first_seq..last_seq`` at the head of an empty buffer.

        Used after a power-cycle that lost the RAM buffer, when the panel still
        knows which seqs it had handed out. The seq counter moves past the gap.
        """
        if self._count:
            raise ValueError("declare_lost needs an empty buffer (the marker must lead)")
        if not 1 <= first_seq <= last_seq:
            raise ValueError(f"bad lost range {first_seq}..{last_seq}")
        count = last_seq - first_seq + 1
        RECORD_STRUCT.pack_into(
            self._ring, self._offset(0), first_seq, time_us, EventKind.BUFFER_LOST, 0, 0, 0, last_seq, count
        )
        self._count = 1
        self._marker = True
        self._next_seq = max(self._next_seq, last_seq + 1)
        self._emitted += count
        self._dropped += count

    # -- upload side ------------------------------------------------------------------

    def read(self, from_seq: int, max_records: int) -> bytes:
        """Packed records from the one that holds ``from_seq``, at most ``max_records``.

        A gap marker can only be the first record returned, so the result is
        always a valid EVENT_BATCH body starting at ``from_seq`` (or at the
        oldest record, if ``from_seq`` was already released).
        """
        if not self._count or max_records <= 0:
            return b""
        head_last = self._head_last()
        # Records after the head hold consecutive seqs from head_last + 1.
        index = 0 if from_seq <= head_last else from_seq - head_last
        limit = self._readable()
        if index >= limit:
            return b""
        n = min(max_records, limit - index)
        start = (self._head + index) % self.capacity
        end = start + n
        ring = self._ring
        if end <= self.capacity:
            data = bytes(ring[start * RECORD_SIZE : end * RECORD_SIZE])
        else:
            data = bytes(ring[start * RECORD_SIZE :]) + bytes(ring[: (end - self.capacity) * RECORD_SIZE])
        if index == 0 and self._marker and self._seq_at(0) < from_seq <= head_last:
            # The uploader already sent the start of the gap's range (it was
            # dropped while in flight): hand out the marker clipped to from_seq.
            clipped = bytearray(data[:RECORD_SIZE])
            _SEQ.pack_into(clipped, 0, from_seq)
            _MARKER_TAIL.pack_into(clipped, 20, head_last, head_last - from_seq + 1)
            data = bytes(clipped) + data[RECORD_SIZE:]
        return data

    def _readable(self) -> int:
        """How many records from the head may be uploaded (all, unless flash-backed)."""
        return self._count

    def release(self, up_to_seq: int) -> int:
        """Free every record the host acknowledged (seq <= ``up_to_seq``); return how many."""
        freed = 0
        if self._count and self._marker:
            first = self._seq_at(0)
            last = self._head_last()
            if last <= up_to_seq:
                self._head = (self._head + 1) % self.capacity
                self._count -= 1
                self._marker = False
                freed = 1
            elif first <= up_to_seq:
                # The host has part of the gap: shrink the marker to what is left.
                offset = self._offset(0)
                _SEQ.pack_into(self._ring, offset, up_to_seq + 1)
                _MARKER_TAIL.pack_into(self._ring, offset + 20, last, last - up_to_seq)
                return 0
        if self._count and not self._marker:
            k = min(self._count, up_to_seq - self._seq_at(0) + 1)
            if k > 0:
                self._head = (self._head + k) % self.capacity
                self._count -= k
                self._acked += k
                freed += k
        return freed

    def rebase(self, next_seq: int) -> int:
        """Renumber every buffered record so the oldest gets ``next_seq``.

        For a RAM-only panel after a power-cycle: it lost its counter with its
        buffer, so it learns where to continue from the host's WELCOME and
        renumbers what it queued meanwhile (none of it was sent yet).
        Returns how far every seq moved.
        """
        if next_seq < 1:
            raise ValueError("seqs start at 1")
        if not self._count:
            shift = next_seq - self._next_seq
            self._next_seq = next_seq
            return shift
        shift = next_seq - self._seq_at(0)
        for index in range(self._count):
            offset = self._offset(index)
            (seq,) = _SEQ.unpack_from(self._ring, offset)
            _SEQ.pack_into(self._ring, offset, seq + shift)
            if index == 0 and self._marker:
                last, count = _MARKER_TAIL.unpack_from(self._ring, offset + 20)
                _MARKER_TAIL.pack_into(self._ring, offset + 20, last + shift, count)
        self._next_seq += shift
        return shift

    def records(self) -> bytes:
        """Every buffered record, packed, oldest first (synced or not)."""
        if not self._count:
            return b""
        end = self._head + self._count
        if end <= self.capacity:
            return bytes(self._ring[self._head * RECORD_SIZE : end * RECORD_SIZE])
        return bytes(self._ring[self._head * RECORD_SIZE :]) + bytes(self._ring[: (end - self.capacity) * RECORD_SIZE])

    def statistics(self) -> BufferStatistics:
        return BufferStatistics(
            policy=self.policy,
            budget_bytes=self.budget_bytes,
            capacity=self.capacity,
            depth=self._count,
            bytes=self._count * RECORD_SIZE,
            buffered=self._count - (1 if self._marker else 0),
            oldest_seq=self.oldest_seq,
            newest_seq=self.newest_seq,
            next_seq=self._next_seq,
            emitted=self._emitted,
            acked=self._acked,
            dropped=self._dropped,
            refused=self._refused,
            refused_unreported=self._refused_unreported,
        )
