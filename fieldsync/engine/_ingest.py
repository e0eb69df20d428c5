"""The node's ingest: one group-commit task for the batches of every session (P1, P2).

**One envelope per batch.** A session's reader turns an EVENT_BATCH into a ``_Queued``
(an ``IngestBatch`` that also names the session to answer), and that one object goes
through the channel into ``ingest`` (or ``append``) of the store and back to its session. Nothing
re-checks it on the way: the records were checked when the frame was decoded, the
batch's place in the session by the ``HostConnection``; the store checks only what it
alone can, continuity with its durable hwm, inside the transaction.

**Queue depth, counted once**, per panel (``queued``): a reader waits while its panel
has ``window`` batches queued (TCP then pushes back on that panel alone), and a new
session of a panel waits until its older session's batches are through, since its
WELCOME's hwm must count them (docs/protocol.md 7.5). One session serves a panel at
a time, so the panel's count is its session's.

**Two ingest modes** (``NodeSettings.ingest``): ``rows`` commits every event's row before
the ACK (``EventStore.ingest``); ``log`` commits each batch as one row of the batch log
(``EventStore.append``) and leaves the rows to the materializer (``_materialize``), whose
bounded lag this task waits on before a commit that would pass it.

**Alarms go first** (docs/protocol.md 7.6). An ALARM's copies wait in a list of their own,
not in the batches' channel, where they would queue behind every panel's window: the
commit task takes every alarm waiting into its next commit (a commit of alarms alone when
no batch is there), and a batch-less wait is cut short when an alarm comes. An alarm
counts in its panel's queue (a new session waits for it, 7.5) but never waits for room.

**The hwm lives here** (``hwm``), and only here in the process: read from the store
once, after the node claimed its epoch, then set from every commit's result. It is
authoritative because the store refuses any other epoch, so nobody else can move it.
The store keeps no copy (it reads the row inside each transaction); a WELCOME's hwm
and every ACK are read from this one.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import TYPE_CHECKING

import trio

from protocol import RECORD_SIZE, Alarm, ErrorCode, EventBatch
from storage import IngestAlarm, IngestBatch, StaleEpoch, StoreError

if TYPE_CHECKING:
    from ._node import Node
    from ._sessions import _Session

__all__: list[str] = []

log = logging.getLogger("fieldsync.node")

#: ALARMs one panel may have queued for commit before its reader waits (7.6: the lane's bound).
ALARM_WINDOW = 8
#: Upper bounds, seconds, of the commit-latency histogram's buckets: an fsync'd commit takes
#: about 1-10 ms on a disk, a PostgreSQL commit waiting on a synchronous standby more.
COMMIT_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Queued(IngestBatch):
    """A batch on its way from a session's reader to the commit, and whom to answer."""

    session: _Session


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _QueuedAlarm(IngestAlarm):
    """An ALARM on its way to the commit, and whom to answer with its last seq."""

    session: _Session
    last_seq: int


class _Ingest:
    """The channel from every session to the one commit task, and what comes back."""

    def __init__(self, node: Node) -> None:
        s = node.settings
        self.node = node
        self.window = s.session_window
        self.max_commit_events = s.max_commit_events
        self._send, self._recv = trio.open_memory_channel[_Queued](s.ingest_queue)
        self._hwms: dict[int, int] = {}
        #: Batches queued for commit per panel, and who waits for a panel's count to fall.
        self._queued: dict[int, int] = {}
        self._waiting: dict[int, trio.Event] = {}
        self.commits = 0
        #: Seconds spent inside ingest transactions: the writer's busy time.
        self.commit_s = 0.0
        #: Commits per bucket of ``COMMIT_BUCKETS`` (not cumulative), the last one past them all.
        #: Observed once per commit with plain ints: no lock, the metrics read it in this thread.
        self.commit_buckets = [0] * (len(COMMIT_BUCKETS) + 1)
        self.events_stored = 0
        self.events_duplicate = 0
        self.declared_lost = 0
        self.refused_batches = 0
        #: ALARMs waiting for the next commit, and the batch-less wait an alarm cuts short.
        self._alarms: list[_QueuedAlarm] = []
        self._alarms_queued: dict[int, int] = {}
        self._idle: trio.CancelScope | None = None
        self.alarms_stored = 0

    def __repr__(self) -> str:
        return f"<Ingest {sum(self._queued.values())} batches of {len(self._queued)} panels queued>"

    def hwm(self, panel_id: int) -> int:
        """Everything of this panel up to here is durable in the store."""
        return self._hwms.get(panel_id, 0)

    async def load_hwms(self) -> None:
        """Once the node's epoch is claimed: every panel's hwm, in one read."""
        store = self.node.store
        assert store is not None
        self._hwms = await self.node.db(store.hwms)

    def queued(self, panel_id: int) -> int:
        return self._queued.get(panel_id, 0)

    def queued_total(self) -> int:
        """Batches queued for commit, every panel together."""
        return sum(self._queued.values())

    async def put(self, session: _Session, batch: EventBatch) -> None:
        """Queue a batch for commit once its panel has room in its window (its ALARMs queued
        apart: a panel's reader must not wait behind them, or an ALARM after this batch would)."""
        pid = session.panel_id
        while self._queued.get(pid, 0) - self._alarms_queued.get(pid, 0) >= self.window:
            await self._wait_change(pid)
        if session.driver.ending:
            return  # see put_alarm: a replaced session queues nothing after its replacement
        self._queued[pid] = self._queued.get(pid, 0) + 1
        queued = _Queued(
            panel_id=pid,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            records=batch.records,
            received_us=self.node.now_us(),
            session=session,
        )
        try:
            await self._send.send(queued)
        except BaseException:
            self._through(pid)
            raise

    async def put_alarm(self, session: _Session, alarm: Alarm) -> None:
        """Queue an ALARM for the next commit, ahead of every batch. It waits for no batch's
        room, only while its panel has ``ALARM_WINDOW`` ALARMs queued (a bound on what one
        panel can make the node hold: TCP pushes back on that panel)."""
        pid = session.panel_id
        while self._alarms_queued.get(pid, 0) >= ALARM_WINDOW:
            await self._wait_change(pid)
        if session.driver.ending:
            # Ended (REPLACED, say) while its handler was on its way here: it acknowledges
            # nothing more, and its replacement waited only for what was queued before. A
            # renumbering panel's lane copy committed after the replacement set copies aside
            # stood for a record that never reached the store (P2, seen under load).
            return
        self._alarms_queued[pid] = self._alarms_queued.get(pid, 0) + 1
        self._queued[pid] = self._queued.get(pid, 0) + 1
        self._alarms.append(
            _QueuedAlarm(
                panel_id=pid,
                records=alarm.records,
                received_us=self.node.now_us(),
                session=session,
                last_seq=alarm.last_seq,
            )
        )
        if self._idle is not None:
            self._idle.cancel()

    async def wait_drained(self, panel_id: int) -> None:
        """Until every batch queued for this panel is committed or refused."""
        while self._queued.get(panel_id, 0):
            await self._wait_change(panel_id)

    async def _wait_change(self, panel_id: int) -> None:
        await self._waiting.setdefault(panel_id, trio.Event()).wait()

    def _through(self, panel_id: int) -> None:
        left = self._queued[panel_id] - 1
        if left:
            self._queued[panel_id] = left
        else:
            del self._queued[panel_id]
        event = self._waiting.pop(panel_id, None)
        if event is not None:
            event.set()

    async def run(self) -> None:
        """Commit whatever is queued, from every session, in one transaction at a time.

        No artificial delay: while a commit runs, the next batches queue up, so the
        commit grows with the load (up to ``max_commit_events``).
        """
        node = self.node
        store = node.store
        assert store is not None
        limit = self.max_commit_events
        to_log = node.settings.ingest == "log"
        commit = store.append if to_log else store.ingest
        materializer = node.materializer
        receive, receive_nowait = self._recv.receive, self._recv.receive_nowait
        while True:
            batches: list[_Queued] = []
            if not self._alarms:
                with trio.CancelScope() as self._idle:
                    batches.append(await receive())
                self._idle = None
            alarms, self._alarms = self._alarms, []
            events = sum(len(b.records) // RECORD_SIZE for b in batches)
            while events < limit:
                try:
                    batch = receive_nowait()
                except trio.WouldBlock:
                    break
                batches.append(batch)
                events += len(batch.records) // RECORD_SIZE
            if to_log and not materializer.has_room(events):
                if alarms:  # alarms add no lag: they do not wait for the materializer
                    await self._commit_alarms(alarms)
                    alarms = []
                await materializer.room(events)  # the lag's bound: push back, never drop
            try:
                result = await node.db(commit, batches, node.epoch, alarms)
            except StaleEpoch as exc:
                # Another node took over: nothing of ours may be stored or acked (P5).
                node.last_error = str(exc)
                log.error("fenced: %s", exc)
                self._answer_all([*batches, *alarms], ErrorCode.STALE_EPOCH, str(exc))
                node.fenced.set()
                return
            except StoreError as exc:
                node.last_error = str(exc)
                log.error("store refused a commit: %s", exc)
                self._answer_all([*batches, *alarms], ErrorCode.STORE_REFUSED, str(exc))
                continue
            self.alarms_stored += result.alarms_stored
            for alarm in alarms:
                alarm.session.alarm_answered(alarm.last_seq)
                self._alarm_through(alarm.panel_id)
            self.commits += 1
            self.commit_s += result.commit_s
            self.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS, result.commit_s)] += 1
            self._hwms.update(result.hwms)  # before any session is woken to ACK from it
            if to_log:
                materializer.logged(result.stored)
            for batch, outcome in zip(batches, result.outcomes, strict=True):
                self.events_stored += outcome.stored
                self.events_duplicate += outcome.duplicates
                self.declared_lost += outcome.declared_lost
                if outcome.error is not None:
                    self.refused_batches += 1
                    batch.session.fail(ErrorCode.SEQ_GAP, outcome.error)
                else:
                    batch.session.answered()
                self._through(batch.panel_id)

    async def _commit_alarms(self, alarms: list[_QueuedAlarm]) -> None:
        """A commit of alarms alone (while the batches wait for the materializer's room)."""
        node = self.node
        store = node.store
        assert store is not None
        try:
            result = await node.db(store.append, [], node.epoch, alarms)
        except StaleEpoch as exc:
            node.last_error = str(exc)
            self._answer_all(list(alarms), ErrorCode.STALE_EPOCH, str(exc))
            node.fenced.set()
            return
        except StoreError as exc:
            node.last_error = str(exc)
            self._answer_all(list(alarms), ErrorCode.STORE_REFUSED, str(exc))
            return
        self.alarms_stored += result.alarms_stored
        for alarm in alarms:
            alarm.session.alarm_answered(alarm.last_seq)
            self._alarm_through(alarm.panel_id)

    def _alarm_through(self, panel_id: int) -> None:
        left = self._alarms_queued.get(panel_id, 0) - 1
        if left > 0:
            self._alarms_queued[panel_id] = left
        else:
            self._alarms_queued.pop(panel_id, None)
        self._through(panel_id)

    def _answer_all(self, batches: list[_Queued | _QueuedAlarm], code: ErrorCode, text: str) -> None:
        for batch in batches:
            batch.session.fail(code, text)
            if isinstance(batch, _QueuedAlarm):
                self._alarm_through(batch.panel_id)
            else:
                self._through(batch.panel_id)
