"""Start node processes and restart them when they die (VMware-HA-style restart).

It stops only the processes it started, by their pid, and only when asked to
stop or cancelled.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence

import trio

__all__ = [
    "Supervised",
    "Supervisor",
    "node_command",
]

log = logging.getLogger("fieldsync.supervisor")


@dataclasses.dataclass(slots=True)
class Supervised:
    name: str
    command: list[str]
    restart: bool = True
    restart_delay: float = 0.5
    process: trio.Process | None = None
    starts: int = 0
    exits: list[int] = dataclasses.field(default_factory=list)
    #: True while the supervisor looks after it (running, or waiting to restart it).
    kept: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None


class Supervisor:
    def __init__(
        self, children: Sequence[Supervised], *, stdout: int | None = None, first: Sequence[str] | None = None
    ) -> None:
        """``first``: the children ``run`` starts (None: all); ``start`` starts the others."""
        self.children = {c.name: c for c in children}
        self._first = list(first) if first is not None else list(self.children)
        self._stdout = stdout
        self.restarted = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name in self._first:
                await nursery.start(self._keep, self.children[name])
            task_status.started()
            await trio.sleep_forever()  # start() may add children's keepers later

    async def start(self, name: str) -> None:
        """Start a child that is not running and not about to be restarted."""
        child = self.children[name]
        if child.kept or self._nursery is None:
            return
        await self._nursery.start(self._keep, child)

    async def _keep(self, child: Supervised, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        child.kept = True
        try:
            await self._keep_loop(child, task_status)
        finally:
            child.kept = False

    async def _keep_loop(self, child: Supervised, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            child.process = await trio.lowlevel.open_process(
                child.command, stdout=self._stdout, stderr=self._stdout, start_new_session=True
            )
            child.starts += 1
            if not started:
                task_status.started()
                started = True
            try:
                code = await child.process.wait()
            except trio.Cancelled:
                with trio.CancelScope(shield=True):
                    await _stop(child.process)
                raise
            child.exits.append(code)
            log.warning("%s (pid %d) exited with %d", child.name, child.process.pid, code)
            if not child.restart:
                return
            await trio.sleep(child.restart_delay)
            self.restarted.set()


async def _stop(process: trio.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    with trio.move_on_after(3):
        await process.wait()
        return
    process.kill()
    await process.wait()


def node_command(node_id: str, site: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fieldsync.cli", "node", "--id", node_id, "--site", site, *extra]
