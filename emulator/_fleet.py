"""Many panels in one trio process, each on its own loopback address."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import trio

from ._panel import Panel, PanelSettings, PanelStatistics
from ._workload import Workload, _Swiper, run_workload

__all__ = ["Fleet", "FleetStatistics", "panel_address"]


def panel_address(panel_id: int) -> str:
    """Panel N's own loopback address, 127.1.x.y, so thousands can each own :3001."""
    if not 0 < panel_id < 65_536:
        raise ValueError(f"panel id {panel_id} has no 127.1.x.y address (1..65535)")
    return f"127.1.{panel_id >> 8}.{panel_id & 0xFF}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FleetStatistics:
    panels: int
    connected: int
    swipes: int
    emitted: int
    acked: int
    buffered_events: int
    dropped: int
    refused: int
    link_errors: int
    protocol_errors: int


class Fleet:
    """Run a set of panels and their workloads until cancelled.

    ``workload_done`` is set when every panel's workload has finished (a
    workload with a ``limit``); the links stay up so the backlog can drain.
    """

    def __init__(
        self,
        settings: Iterable[PanelSettings],
        workload: Workload | None = None,
        *,
        seed: int = 0,
        wall_clock: Callable[[], int] | None = None,
        journal: bool = False,
        start_rate: float | None = None,
    ) -> None:
        self.panels = {
            s.panel_id: Panel(s, seed=seed, journal=journal)
            if wall_clock is None
            else Panel(s, seed=seed, journal=journal, wall_clock=wall_clock)
            for s in settings
        }
        self.workload = workload
        #: Where a panel's workload presents its swipes, when not to the panel itself
        #: (a ``BusSwiper``: through the panel's OSDP readers).
        self.swipers: dict[int, _Swiper] = {}
        self.seed = seed
        #: Panels started per second by ``run`` (None: all at once). One process sets up only
        #: so many TLS sessions a second; past that, a start-up storm times them all out.
        self.start_rate = start_rate
        self.workload_done = trio.Event()
        self._work_scope: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self.panels)

    def __repr__(self) -> str:
        stats = self.statistics()
        return f"<Fleet {stats.panels} panels, {stats.connected} connected, {stats.buffered_events} buffered>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as links:
            begun = trio.current_time()
            for index, panel in enumerate(self.panels.values()):
                if self.start_rate is not None:
                    await trio.sleep_until(begun + index / self.start_rate)
                await links.start(panel.run)
            task_status.started()
            if self.workload is not None:
                async with trio.open_nursery() as work:
                    self._work_scope = work.cancel_scope
                    for panel in self.panels.values():
                        swiper = self.swipers.get(panel.panel_id, panel)
                        work.start_soon(run_workload, swiper, self.workload, self.seed * 1_000_003 + panel.panel_id)
            self.workload_done.set()

    def stop_workload(self) -> None:
        """Stop the swipes (the links stay up so the backlog drains)."""
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def wait_drained(self, *, poll: float = 0.05) -> None:
        """Wait until every panel has every event acknowledged (nothing buffered)."""
        # Polling a thousand panels' state is cheaper than a thousand events; callers bound it.
        while any(len(p.buffer) for p in self.panels.values()):  # noqa: ASYNC110
            await trio.sleep(poll)

    async def wait_connected(self, *, poll: float = 0.05) -> None:
        while not all(p.is_connected for p in self.panels.values()):  # noqa: ASYNC110
            await trio.sleep(poll)

    def statistics(self) -> FleetStatistics:
        per = [p.statistics() for p in self.panels.values()]
        return FleetStatistics(
            panels=len(per),
            connected=sum(s.connected for s in per),
            swipes=sum(s.swipes for s in per),
            emitted=sum(s.emitted for s in per),
            acked=sum(s.acked for s in per),
            buffered_events=sum(s.buffer_depth for s in per),
            dropped=sum(s.dropped for s in per),
            refused=sum(s.refused for s in per),
            link_errors=sum(s.link_errors for s in per),
            protocol_errors=sum(s.protocol_errors for s in per),
        )

    def panel_statistics(self) -> list[PanelStatistics]:
        return [p.statistics() for p in self.panels.values()]
