"""The batch log's materializer: moves acknowledged batches into ``events`` behind the ACKs.

With ``NodeSettings.ingest = "log"`` an ACK means the batch is durable in the store's
batch log (``EventStore.append``: one row per batch, group-committed), and this task
moves logged batches into the per-event table that operators query
(``EventStore.materialize``: rows in and log rows out in one transaction). It runs on a
connection and a thread of its own, so the commits and the materializing use both cores,
and it takes SQLite's write lock only when no commit waits for it (the ``background``
turn of ``storage._gate``): a commit waits at most one of its steps.

**When.** A step goes once the commits have been quiet for ``materialize_idle``, or
once the oldest batch in the log is ``max_log_age`` old, or at once when a commit waits
for room under ``max_log_lag``. A replay's burst is so acknowledged at the log's rate
and materialized when it ends (on two cores a materializer working beside the commits
takes the CPU and the lock they need: measured, it halved the acknowledged rate), while
under steady traffic it can follow no event waits much past ``max_log_age`` to be visible.

**Outpaced.** The age does not start a step while the commits of the last second logged
more events than the materializer's own recent steps move in one (``rate``): no step
can keep that age then, and stepping beside the burst only slows its ACKs. Measured
(1,000 panels x 10,000, two cores), stepping on age there acknowledged at 1.02x the row
bound and every event was visible 20.4 s after the start; waiting, 1.6x and 19.8 s. Such a
burst waits for its end (``materialize_idle``) or for the push-back.

**Bounded lag.** ``lag`` counts events acknowledged and not yet materialized. The commit
task waits (``room``) while one more commit would take it past ``max_log_lag``: the
panels' reads then pause (TCP pushes back), and nothing is ever dropped. A node that
starts finds what a predecessor left in the log and finishes it; so does any later node.

It runs on every store, SQLite or PostgreSQL, in either ingest mode: a log written
under ``log`` is finished by a node that now runs ``rows``. On PostgreSQL a step is one
transaction of its own connection (COPY into ``events``, DELETE of exactly the batches
moved), committed without waiting for the standby: a step lost to a failover is lost
whole, its batches still in the log the promoted standby's node finishes.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from storage import EventStoreInterface, LogBacklog, StoreError, is_database_url, open_event_store

if TYPE_CHECKING:
    from ._node import Node

__all__: list[str] = []

log = logging.getLogger("fieldsync.node")
T = TypeVar("T")

#: After a step the store refused (disk full, lock held elsewhere): wait this long, then again.
RETRY_AFTER = 0.5
#: The commits' rate is taken over this many seconds; an outpaced materializer looks again
#: every quarter of it.
RATE_WINDOW = 1.0


class _Materializer:
    """Moves the batch log into ``events``; how far it is behind, and the push-back."""

    def __init__(self, node: Node) -> None:
        s = node.settings
        self.node = node
        self.step = s.materialize_step
        self.max_lag = s.max_log_lag
        self.idle = s.materialize_idle
        self.max_age = s.max_log_age
        self._last_logged = 0.0
        #: (when, events) of each commit's batches still in the log, oldest first.
        self._logged: collections.deque[list[float]] = collections.deque()
        #: Set while the commit task waits for room: the steps go at once.
        self._pressed = trio.Event()
        #: Events acknowledged (logged) and not yet in ``events``, as this node knows it.
        self.lag = 0
        self.peak = 0
        self.materialized = 0
        #: The oldest logged batch's age when a step moved it, seconds: the queries' lag.
        self.lag_s_max = 0.0
        self._work = trio.Event()
        self._moved = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        #: Events per second its recent steps moved (None before its first step).
        self.rate: float | None = None

    def __repr__(self) -> str:
        return f"<Materializer {self.lag} events behind (peak {self.peak})>"

    def logged(self, events: int) -> None:
        """A commit logged ``events`` more."""
        self.lag += events
        self.peak = max(self.peak, self.lag)
        self._last_logged = now = trio.current_time()
        self._logged.append([now, events])
        self._work.set()

    def has_room(self, events: int) -> bool:
        """Would a commit of ``events`` more go at once (``room`` not wait)?"""
        return not (self.lag and self.lag + events > self.max_lag)

    async def room(self, events: int) -> None:
        """Until a commit of ``events`` more keeps the lag within ``max_lag`` (push-back)."""
        while self.lag and self.lag + events > self.max_lag:
            self._pressed.set()
            await self._moved.wait()
        if self._pressed.is_set():
            self._pressed = trio.Event()

    async def run(self) -> None:
        node = self.node
        store = await trio.to_thread.run_sync(self._open, limiter=self._limiter)
        try:
            self._found(await self._in_thread(store.log_backlog))
            self.peak = self.lag
            if self.lag:
                # A warning: what a takeover left, visible in the log the supervisor keeps.
                log.warning("node %s: %d acknowledged events in the batch log to materialize", node.node_id, self.lag)
            while True:
                if not self.lag:
                    await self._work.wait()
                    self._work = trio.Event()
                    continue
                wait = self._wait()
                if wait > 0:
                    with trio.move_on_after(wait):
                        await self._pressed.wait()
                    continue
                try:
                    began = time.perf_counter()
                    step = await self._in_thread(store.materialize, self.step)
                    self._measured(step.events, time.perf_counter() - began)
                    if not step.batches:  # another node's materializer moved them
                        self._found(await self._in_thread(store.log_backlog))
                except StoreError as exc:
                    node.last_error = str(exc)
                    log.error("node %s: materializing the batch log: %s", node.node_id, exc)
                    await trio.sleep(RETRY_AFTER)
                    continue
                self._moved_out(step.events)
                self.materialized += step.events
                if step.oldest_received_us is not None:
                    self.lag_s_max = max(self.lag_s_max, (node.now_us() - step.oldest_received_us) / 1e6)
                self._moved.set()
                self._moved = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await self._in_thread(store.close)

    def _found(self, backlog: LogBacklog) -> None:
        """What the store's log holds, as the lag: older than any commit of this node."""
        self.lag = backlog.events
        self._logged.clear()
        if self.lag:
            self._logged.append([-float("inf"), self.lag])

    def _wait(self) -> float:
        """Seconds until the next step may go (0: now)."""
        if self._pressed.is_set():
            return 0.0
        now = trio.current_time()
        oldest = self._logged[0][0] if self._logged else now
        quiet = self.idle - (now - self._last_logged)
        age = self.max_age - (now - oldest)
        if age <= 0 < quiet and self.outpaced(now):
            return min(quiet, RATE_WINDOW / 4)
        return max(0.0, min(quiet, age))

    def outpaced(self, now: float) -> bool:
        """Did the commits of the last ``RATE_WINDOW`` log more than the steps move in it?"""
        if self.rate is None:
            return False
        since, incoming = now - RATE_WINDOW, 0.0
        for when, events in reversed(self._logged):
            if when < since:
                break
            incoming += events
        return incoming > self.rate * RATE_WINDOW

    def _measured(self, events: int, seconds: float) -> None:
        if events and seconds > 0:
            rate = events / seconds
            self.rate = rate if self.rate is None else (self.rate + rate) / 2

    def _moved_out(self, events: int) -> None:
        """A step moved ``events``: out of the lag, oldest commits first."""
        self.lag = max(0, self.lag - events)
        logged = self._logged
        while events > 0 and logged:
            head = logged[0]
            if head[1] > events:
                head[1] -= events
                return
            events -= int(head[1])
            logged.popleft()
        if not self.lag:
            logged.clear()

    def _open(self) -> EventStoreInterface:
        db = self.node.settings.db
        if is_database_url(db):
            return open_event_store(db, durable=False)
        # The node's store class: the harness's broken builds reach the materializer too.
        return self.node.store_class(db, durable=False)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
