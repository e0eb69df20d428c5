"""Turns at one SQLite file's write lock for the connections of one process.

SQLite gives its write lock to whichever connection asks at the moment it is
free; a connection that finds it taken sleeps on a backoff (1, 2, 5, 10 ms and
more) and asks again. A writer that commits back to back, such as a replay's
group commits, can so keep another connection of the same process waiting
past its busy timeout time after time. When that connection is the one that
renews the node's lease, the lease lapses and the standby takes over a healthy
node (seen in ``benchmarks/failover.py``: the active's renewal was refused
one to three times per run under replay, and once in some two hundred runs
often enough in a row for its one-second lease to lapse).

Writers of one process therefore take turns here before they ask SQLite: an
``urgent`` writer (the lease, the node heartbeat row) goes before any waiting
``bulk`` one (ingest, bookkeeping), and a ``background`` writer (the batch log's
materializer, ``EventStore.materialize``) only when no other writer waits: the
materializer works in the gaps between commits and never delays an ACK by more
than one of its own (short) transactions. Other processes still meet at SQLite's
own lock; between two nodes, the standby writes only its heartbeat row.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WriteGate", "write_gate"]


class WriteGate:
    """One writer at a time; urgent writers before bulk ones, bulk before background ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._urgent_waiting = 0
        self._bulk_waiting = 0

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Hold the turn for a bulk transaction, after every urgent writer waiting."""
        with self._cond:
            self._bulk_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._held and not self._urgent_waiting)
            finally:
                self._bulk_waiting -= 1
            self._held = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """Hold the turn for a background transaction, once no other writer waits."""
        with self._cond:
            self._cond.wait_for(lambda: not (self._held or self._urgent_waiting or self._bulk_waiting))
            self._held = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def urgent(self, timeout: float) -> Iterator[bool]:
        """Hold the turn for a short transaction, ahead of waiting bulk writers.

        Yields False (without the turn) if the current writer did not finish
        within ``timeout`` seconds: the caller treats that as a busy store.
        """
        with self._cond:
            self._urgent_waiting += 1
            try:
                got = self._cond.wait_for(lambda: not self._held, timeout)
            finally:
                self._urgent_waiting -= 1
            if got:  # else the current writer still holds it: no one else may go either
                self._held = True
        try:
            yield got
        finally:
            if got:
                self._release()

    def _release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


#: A gate lives as long as a store of the file holds it.
_gates: weakref.WeakValueDictionary[str, WriteGate] = weakref.WeakValueDictionary()
_gates_lock = threading.Lock()


def write_gate(path: Path | str) -> WriteGate:
    """The gate every store of this process shares for the SQLite file at ``path``."""
    key = os.path.realpath(path)
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = WriteGate()
        return gate
