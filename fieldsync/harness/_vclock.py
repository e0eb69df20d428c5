"""A virtual clock for the in-process tier: waits fast-forwarded, the loop's own work barely.

Trio's ``MockClock(rate=10)`` runs virtual time ten times faster than the wall
clock all the time. That is right while the loop waits (on sockets, on a store
thread) and wrong while it computes: forty TLS handshakes that keep the one
core busy for a second then take ten virtual seconds, every handshake and
heartbeat times out, the panels reconnect, and the run collapses under its own
load (seen with 40 panels under coverage). ``fast_forward_clock`` returns a
``MockClock`` and an instrument that runs it at ``busy_rate`` (2x) while a task
runs and at ``idle_rate`` (20x) between tasks, where the loop waits; with
nothing at all to do it autojumps. A busy second then costs two virtual ones,
not ten, and a timeout means nearly what it means on a real machine with one
core for everything.

    clock, instrument = fast_forward_clock()
    trio.run(main, clock=clock, instruments=[instrument])
"""

from __future__ import annotations

import trio
import trio.testing

__all__ = [
    "fast_forward_clock",
]


class _Switch(trio.abc.Instrument):
    def __init__(self, clock: trio.testing.MockClock, idle_rate: float, busy_rate: float) -> None:
        self.clock = clock
        self.idle_rate = idle_rate
        self.busy_rate = busy_rate

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.clock.rate = self.busy_rate

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        # Idle rate outside task steps, so the loop's sleep before a deadline is computed at it.
        self.clock.rate = self.idle_rate


def fast_forward_clock(
    *, idle_rate: float = 20.0, busy_rate: float = 2.0, autojump_threshold: float = 0.02
) -> tuple[trio.testing.MockClock, trio.abc.Instrument]:
    """A MockClock and the instrument that drives its rate; pass both to ``trio.run``."""
    clock = trio.testing.MockClock(rate=idle_rate, autojump_threshold=autojump_threshold)
    return clock, _Switch(clock, idle_rate, busy_rate)
