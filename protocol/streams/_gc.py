"""Garbage collection for a process that holds thousands of long-lived sessions.

CPython's cyclic collector makes a full collection (every tracked object) whenever the
objects promoted to its oldest generation since the last one reach a quarter of those that
survived it. A process with 10,000 idle sessions holds millions of long-lived objects, and
each probe's short-lived ones that happen to be alive at a young collection are promoted
too: measured with ``fieldsync bench idle --panels 10000``, the fleet's process spent about
0.7 of a core in full collections that found next to nothing, and sessions timed out while
it did.

``collect_sparingly`` freezes what survived each full collection (``gc.freeze``: the
permanent generation, which no automatic collection traverses), so the next one traverses
only what came after. A frozen object that later becomes cyclic garbage (a session that
ended with an exception: its traceback's cycle) is reclaimed by a collection over
everything (unfreeze, collect, freeze again) every ``full_every`` seconds. Cancelled, it
unfreezes everything again. Objects freed by
their reference count (most of a session's) go at once, frozen or not.

A process entry point (``fieldsync serve``, ``node``, ``emulate``, the benchmarks' fleets)
runs it (``sparing_gc``); a library never does, since the policy is the whole process's.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import AsyncIterator
from typing import NoReturn

import trio

__all__ = ["GcTime", "collect_over_everything", "collect_sparingly", "sparing_gc"]


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def collect_over_everything() -> None:
    """One collection over every object, the frozen ones too, and freeze what survives."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def collect_sparingly(
    *,
    poll: float = 1.0,
    full_every: float | None = 300.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Freeze the survivors of each automatic full collection (looked for every ``poll``
    seconds), and collect over everything every ``full_every`` seconds (None: never, which
    keeps every cycle frozen objects form later). Started, once the first collection is done."""
    try:
        collect_over_everything()
        task_status.started()
        full_at = None if full_every is None else trio.current_time() + full_every
        seen = _full_collections()
        while True:
            await trio.sleep(poll)
            if full_at is not None and full_every is not None and trio.current_time() >= full_at:
                collect_over_everything()
                full_at = trio.current_time() + full_every
            elif _full_collections() != seen:
                gc.freeze()
            seen = _full_collections()
    finally:
        gc.unfreeze()  # cancelled: the process's collector as it was (a test's process goes on)


@contextlib.asynccontextmanager
async def sparing_gc(
    *, enabled: bool = True, poll: float = 1.0, full_every: float | None = 300.0
) -> AsyncIterator[None]:
    """``collect_sparingly`` for the length of the block (``enabled=False``: CPython's own
    policy, for a benchmark's comparison). The block starts after the first collection: a
    benchmark's clock, started in it, does not pay for that one (about 0.1 s at a fleet's start)."""
    async with trio.open_nursery() as nursery:
        if enabled:
            await nursery.start(functools.partial(collect_sparingly, poll=poll, full_every=full_every))
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


class GcTime:
    """The time this process spends in the cyclic collector, by generation, while open
    (``gc.callbacks``), for a benchmark to say where its CPU went."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.process_time() - self._began
            self.collections[generation] += 1

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)
