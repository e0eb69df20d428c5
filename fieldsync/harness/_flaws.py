"""Deliberately broken engine builds: the negative controls of the promise checker.

A check is only worth what its negative control shows, so each promise the checker
asserts has a build that breaks it. They live here, in the harness, and nowhere in
the product: no setting and no flag of the shipped ``fieldsync`` can select one. The
harness injects a flaw by subclassing the engine at its seams (``Node.store_class``,
``Node._resume_hwm``, ``Node._admit``, ``Node._peer_broke_protocol``,
``ClusterNode.node_class``, ``ClusterNode._step_down``, ``ClusterNode._serve``,
``ClusterNode._mirror_action``, ``EventStore._check_fence``,
``EventStore._ingest_one``, ``EventStore.log_backlog``), in-process for the fast tier
and through ``python -m fieldsync.harness.flawed`` for node processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import trio

from protocol import GAP_KINDS, RECORD_SIZE, ErrorCode, Hello, RemoteProtocolError
from protocol.streams import Link
from storage import EventStore, IngestAlarm, IngestBatch, IngestOutcome, IngestResult, LogBacklog

from ..engine import ClusterNode, Node

__all__ = ["FLAWS", "flawed_cluster_class", "flawed_command", "flawed_node_class"]

#: Each flaw and the promise whose check must catch it.
FLAWS = {
    "ack-before-commit": "P1",
    "fence-the-log": "P1",
    "degrade-to-async": "P1",
    "trust-the-walsender": "P1",
    "no-dedupe": "P2",
    "no-epoch-check": "P5",
    "crash-on-bad-frame": "P6",
    "no-id-binding": "P7",
}
_GAP_VALUES = frozenset(int(k) for k in GAP_KINDS)


class _AckBeforeCommit(EventStore):
    """Answers every ingest as committed but writes each call's batches only on the next
    call: an ACK then goes out for events that are not yet durable (P1)."""

    def __init__(self, path: Path | str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self._pending: tuple[list[IngestBatch], list[IngestAlarm]] = ([], [])

    def ingest(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
        (earlier, earlier_alarms), self._pending = self._pending, (list(batches), list(alarms))
        if earlier or earlier_alarms:
            super().ingest(earlier, epoch, earlier_alarms)
        hwms: dict[int, int] = {}
        outcomes = []
        for batch in batches:
            hwms[batch.panel_id] = max(hwms.get(batch.panel_id, 0), batch.last_seq)
            outcomes.append(
                IngestOutcome(
                    panel_id=batch.panel_id, hwm=hwms[batch.panel_id], stored=len(batch.records) // RECORD_SIZE
                )
            )
        stored = sum(o.stored for o in outcomes)
        told = sum(len(a.records) // RECORD_SIZE for a in alarms)
        return IngestResult(
            epoch=epoch, outcomes=tuple(outcomes), hwms=hwms, stored=stored, commit_s=0.0, alarms_stored=told
        )


class _NoDedupe(EventStore):
    """Stores what is sent again as new events, numbered on from the hwm (P2)."""

    def _ingest_one(self, batch: IngestBatch, hwm: int, epoch: int) -> IngestOutcome:
        if batch.first_seq <= hwm and batch.records[16] not in _GAP_VALUES:
            shift = hwm + 1 - batch.first_seq
            renumbered = bytearray(batch.records)
            for at in range(0, len(renumbered), RECORD_SIZE):
                seq = int.from_bytes(renumbered[at : at + 8], "big") + shift
                renumbered[at : at + 8] = seq.to_bytes(8, "big")
            batch = dataclasses.replace(
                batch, first_seq=hwm + 1, last_seq=batch.last_seq + shift, records=bytes(renumbered)
            )
        return super()._ingest_one(batch, hwm, epoch)


class _NoEpochCheck(EventStore):
    """Writes whatever epoch the node says it has (P5)."""

    def _check_fence(self, epoch: int) -> None:
        return None


class _FenceTheLog(EventStore):
    """Takes batch-log rows written under an older epoch for a fenced node's and drops them
    instead of materializing them: what the previous active acknowledged and had not yet
    materialized when it died is lost at the takeover (P1)."""

    def log_backlog(self) -> LogBacklog:
        # What the materializer asks first when its node starts.
        with self._gate.bulk():
            self._conn.execute("DELETE FROM batch_log WHERE epoch < (SELECT epoch FROM cluster WHERE id = 1)")
        return super().log_backlog()


_STORES: dict[str, type[EventStore]] = {
    "ack-before-commit": _AckBeforeCommit,
    "fence-the-log": _FenceTheLog,
    "no-dedupe": _NoDedupe,
    "no-epoch-check": _NoEpochCheck,
}


def _trust_the_panel(self: Node, hello: Hello) -> int:
    # Resume where the panel says its buffer starts, so what it holds is sent (and stored) again.
    hwm = Node._resume_hwm(self, hello)
    return min(hwm, hello.oldest_seq - 1) if hello.oldest_seq else hwm


def _believe_the_hello(self: Node, link: Link, hello: Hello, expected: int | None) -> tuple[ErrorCode, str] | None:
    # Checks the certificate's chain (TLS did) but not whose it is: any genuine certificate
    # may speak for any panel (P7).
    if link.peer is not None:
        link = Link(link.stream, f"panel-{hello.panel_id}", link.remote, lossy=link.lossy)
    return Node._admit(self, link, hello, expected)


def _crash(self: Node, link: Link, exc: RemoteProtocolError) -> None:
    # A bad frame takes the whole node down at once (P6), as a fault in native code would.
    # (An exception would do it too, but its unwinding can take long enough for the peer's
    # STONITH to finish the process with SIGKILL: a kill, which P6 does not count.)
    sys.stderr.write(f"flaw: {link.remote} sent a bad frame ({exc}): the node crashes\n")
    sys.stderr.flush()
    os._exit(70)


def _keep_serving(self: ClusterNode, node: Node) -> bool:
    return False  # a node that lost its lease goes on serving under its old epoch


async def _serve_degrading(self: ClusterNode, epoch: int) -> None:
    # Mirrored storage: while active, whenever a commit waits for the synchronous standby
    # (gone, or cut off by a partition), stop waiting for it: clear synchronous_standby_names.
    # The waiting commits then succeed, and every later one is acknowledged from the primary's
    # disk alone: the availability a naive pair buys with acknowledged events (P1).
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_degrade_when_waiting, self)
        await ClusterNode._serve(self, epoch)
        nursery.cancel_scope.cancel()


def _trust_the_walsender(self: ClusterNode, look: Any, **given: Any) -> Any:
    # With a witness: count the standby in sync again as soon as the primary's walsender calls
    # it streaming and sync, and wait for it again on any reply: no catch-up past what was
    # acknowledged alone. A partition leaves the walsender saying both, so the standby is
    # counted back, promotes by the witness, and the events acknowledged alone are lost (P1).
    from ..engine._mirrored import decide_mirror

    return decide_mirror(look, **{**given, "mark": 0, "since_degrade": float("inf")})


async def _degrade_when_waiting(self: ClusterNode) -> None:
    from storage.postgres import MirrorError, list_sync_standby, query

    url, what = str(self.settings.db), f"node {self.node_id}'s database"

    def degrade() -> bool:
        waiting = query(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'", what=what)
        if not waiting[0][0]:
            return False
        list_sync_standby(url, "", what=what)
        return True

    while True:
        await trio.sleep(0.1)
        with contextlib.suppress(MirrorError):
            if await trio.to_thread.run_sync(degrade):
                sys.stderr.write(f"flaw: node {self.node_id} stopped waiting for its standby (async)\n")


def _check(flaws: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(flaws)
    unknown = chosen - set(FLAWS)
    if unknown:
        raise ValueError(f"unknown flaw(s) {sorted(unknown)}; known: {sorted(FLAWS)}")
    return chosen


def flawed_node_class(flaws: Iterable[str]) -> type[Node]:
    """A ``Node`` with the given flaws (the real one when there are none)."""
    chosen = _check(flaws)
    if not chosen:
        return Node
    members: dict[str, object] = {}
    bases = tuple(_STORES[f] for f in sorted(chosen) if f in _STORES)
    if bases:
        members["store_class"] = cast(type[EventStore], type("FlawedStore", bases, {}))
    if "no-dedupe" in chosen:
        members["_resume_hwm"] = _trust_the_panel
    if "no-id-binding" in chosen:
        members["_admit"] = _believe_the_hello
    if "crash-on-bad-frame" in chosen:
        members["_peer_broke_protocol"] = _crash
    return cast(type[Node], type("FlawedNode", (Node,), members))


def flawed_cluster_class(flaws: Iterable[str]) -> type[ClusterNode]:
    """A ``ClusterNode`` whose nodes have the given flaws."""
    chosen = _check(flaws)
    if not chosen:
        return ClusterNode
    members: dict[str, object] = {"node_class": flawed_node_class(chosen)}
    if "no-epoch-check" in chosen:
        members["_step_down"] = _keep_serving
    if "degrade-to-async" in chosen:
        members["_serve"] = _serve_degrading
    if "trust-the-walsender" in chosen:
        members["_mirror_action"] = _trust_the_walsender
    return cast(type[ClusterNode], type("FlawedClusterNode", (ClusterNode,), members))


def flawed_command(command: list[str], flaws: Iterable[str]) -> list[str]:
    """A ``python -m fieldsync.cli node ...`` command run as a broken build instead."""
    chosen = _check(flaws)
    if not chosen:
        return command
    at = command.index("fieldsync.cli")
    assert command[at + 1] == "node", command
    options = [part for flaw in sorted(chosen) for part in ("--flaw", flaw)]
    return [*command[:at], "fieldsync.harness.flawed", *options, *command[at + 1 :]]
