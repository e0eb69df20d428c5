"""A scenario run's timeline samples: four a second, what the fleet and the store hold."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._runner import ScenarioRun

__all__ = ["Sample", "Sampler"]


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    t: float
    #: Events the store holds up to the panels' high-water marks: monotonic, whatever the
    #: panels' power does (their own ack counters restart with a boot).
    stored: int
    acked: int
    buffered: int
    connected: int
    holder: str | None
    epoch: int


class Sampler:
    """Samples a run into ``samples`` (the run's own list) until cancelled; ``close()`` after."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self._reader: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def stored(self, path: Path | str) -> int:
        """The sum of the store's high-water marks: O(panels), read-only, never goes back."""
        if isinstance(path, str):  # mirrored: the current primary's database
            return self._stored_pg(path)
        if self._reader is None:
            try:
                self._reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            except sqlite3.Error:
                return self.samples[-1].stored if self.samples else 0
        try:
            return int(self._reader.execute("SELECT coalesce(sum(hwm), 0) FROM panels").fetchone()[0])
        except sqlite3.Error:  # a writer holds the lock for a moment: keep the last figure
            return self.samples[-1].stored if self.samples else 0

    def _stored_pg(self, url: str) -> int:
        from storage.postgres import MirrorError, query

        try:
            rows = query(url, "SELECT coalesce(sum(hwm), 0) FROM panels", what="the primary")
        except MirrorError:  # a failover under way: keep the last figure
            return self.samples[-1].stored if self.samples else 0
        return int(rows[0][0])

    async def run(self, run: ScenarioRun) -> None:
        while True:
            s = run.fleet.statistics()
            self.samples.append(
                Sample(
                    t=run.now(),
                    stored=await trio.to_thread.run_sync(self.stored, run.store_target()),
                    acked=s.acked,
                    buffered=s.buffered_events,
                    connected=s.connected,
                    holder=run._holder(),
                    epoch=run.cluster.epoch() if run.cluster is not None else 0,
                )
            )
            await trio.sleep(0.25)
