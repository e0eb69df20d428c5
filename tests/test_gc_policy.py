"""The sparing GC policy of the processes that hold many sessions (protocol.streams._gc).

What it must do: freeze what survives each full collection (so automatic ones stop
traversing it), still reclaim a cycle among frozen objects at its collection over
everything, and leave the process's collector as it found it when cancelled. Time is trio's
MockClock: the policy's intervals pass at once.
"""

from __future__ import annotations

import gc
import weakref

import trio
import trio.testing

from protocol.streams import GcTime, collect_sparingly


class _Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


async def _frozen_cycle_after(autojump_clock: trio.testing.MockClock, full_every: float | None) -> bool:
    """Whether a cycle made before the policy started, frozen, then dropped, is still there
    after 10 minutes of the policy with ``full_every``."""
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: collect_sparingly(poll=1.0, full_every=full_every))
        await trio.sleep(0.5)
        assert gc.get_freeze_count() > 0  # the policy froze what was there (the cycle too)
        del cycle
        gc.collect()  # an ordinary full collection does not see frozen objects
        assert gone() is not None
        await trio.sleep(600)
        alive = gone() is not None
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0  # cancelled: everything unfrozen again
    return alive


async def test_a_cycle_among_frozen_objects_is_reclaimed_at_the_collection_over_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert not await _frozen_cycle_after(autojump_clock, full_every=300.0)
    # The negative control: without the collection over everything the same cycle stays (the
    # policy of freezing alone leaks every cycle a session's end leaves among frozen objects).
    assert await _frozen_cycle_after(autojump_clock, full_every=None)
    gc.collect()


async def test_what_survives_a_full_collection_is_frozen_by_the_next_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: collect_sparingly(poll=1.0, full_every=None))
        await trio.sleep(0.5)
        # Frozen objects freed by their reference count meanwhile (a few of pytest's and
        # trio's) make the count move a little by itself: the margin.
        frozen, margin = gc.get_freeze_count(), 500
        survivors = [_Cycle() for _ in range(5_000)]  # after the first freeze; too few to start a full collection
        await trio.sleep(3)
        assert gc.get_freeze_count() < frozen + margin  # no full collection yet: none of them frozen
        gc.collect(2)  # a full collection (as the collector's thresholds would start one)
        await trio.sleep(1.5)
        assert gc.get_freeze_count() > frozen + len(survivors) - margin
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0


def test_gc_time_counts_the_collections_it_saw() -> None:
    with GcTime() as seen:
        gc.collect(0)
        gc.collect(2)
    assert seen.collections[0] >= 1 and seen.collections[2] >= 1
    assert all(s >= 0 for s in seen.seconds) and seen.seconds[2] > 0
    assert seen._callback not in gc.callbacks
