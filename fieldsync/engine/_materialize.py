"""The batch log's materializer: moves acknowledged batches into ``events`` behind the ACKs.

With ``NodeSettings.ingest = "log"`` an ACK means the batch is durable in the store's
batch log (``EventStore.append``: one row per batch, group-committed), and this task
moves logged batches into the per-event table that operators query
(``EventStore.materialize``: rows in and log rows out in one transaction). It runs on a
connection and a thread of its own, so the commits and the materializing use both cores,
and it takes SQLite's write lock only when no commit waits for it (the ``background``
turn of ``storage._gate``): a commit waits at most one of its steps.

**When.** By default a step goes whenever the write lock is free of commits. With
``materialize_idle`` each step first waits until no commit has come for that long: a
replay's burst is then acknowledged at the log's rate, and materialized after it. The
bound still holds: once a commit waits for room, the steps go at once.

**Bounded lag.** ``lag`` counts events acknowledged and not yet materialized. The commit
task waits (``room``) while one more commit would take it past ``max_log_lag``: the
panels' reads then pause (TCP pushes back), and nothing is ever dropped. A node that
starts finds what a predecessor left in the log and finishes it; so does any later node.

It runs on every SQLite store, in either ingest mode: a log written under ``log`` is
finished by a node that now runs ``rows``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from storage import EventStore, LogBacklog, StoreError

if TYPE_CHECKING:
    from ._node import Node

__all__: list[str] = []

log = logging.getLogger("fieldsync.node")
T = TypeVar("T")

#: After a step the store refused (disk full, lock held elsewhere): wait this long, then again.
RETRY_AFTER = 0.5


class _Materializer:
    """Moves the batch log into ``events``; how far it is behind, and the push-back."""

    def __init__(self, node: Node) -> None:
        s = node.settings
        self.node = node
        self.step = s.materialize_step
        self.max_lag = s.max_log_lag
        self.idle = s.materialize_idle
        self._last_logged = 0.0
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

    def __repr__(self) -> str:
        return f"<Materializer {self.lag} events behind (peak {self.peak})>"

    def logged(self, events: int) -> None:
        """A commit logged ``events`` more."""
        self.lag += events
        self.peak = max(self.peak, self.lag)
        self._last_logged = trio.current_time()
        self._work.set()

    async def room(self, events: int) -> None:
        """Until a commit of ``events`` more keeps the lag within ``max_lag`` (push-back)."""
        while self.lag and self.lag + events > self.max_lag:
            self._pressed.set()
            await self._moved.wait()
        self._pressed = trio.Event()

    async def run(self) -> None:
        node = self.node
        store = await trio.to_thread.run_sync(self._open, limiter=self._limiter)
        try:
            self.lag = (await self._in_thread(store.log_backlog)).events
            self.peak = self.lag
            if self.lag:
                log.info("node %s: %d acknowledged events in the batch log to materialize", node.node_id, self.lag)
            while True:
                if not self.lag:
                    await self._work.wait()
                    self._work = trio.Event()
                    continue
                quiet = trio.current_time() - self._last_logged
                if quiet < self.idle and not self._pressed.is_set():
                    with trio.move_on_after(self.idle - quiet):
                        await self._pressed.wait()
                    continue
                try:
                    step = await self._in_thread(store.materialize, self.step)
                    if not step.batches:  # another node's materializer moved them
                        step = LogBacklog()
                        self.lag = (await self._in_thread(store.log_backlog)).events
                except StoreError as exc:
                    node.last_error = str(exc)
                    log.error("node %s: materializing the batch log: %s", node.node_id, exc)
                    await trio.sleep(RETRY_AFTER)
                    continue
                self.lag = max(0, self.lag - step.events)
                self.materialized += step.events
                if step.oldest_received_us is not None:
                    self.lag_s_max = max(self.lag_s_max, (node.now_us() - step.oldest_received_us) / 1e6)
                self._moved.set()
                self._moved = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await self._in_thread(store.close)

    def _open(self) -> EventStore:
        # The node's store class: the harness's broken builds reach the materializer too.
        return self.node.store_class(self.node.settings.db, durable=False)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
