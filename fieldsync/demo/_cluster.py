"""`fieldsync demo`: the seed's story on one laptop, with the promises checked at the end.

Two node processes share a store behind VIP 127.0.0.100; 200 emulated panels
(half dialing the VIP, half waiting for the node on their own 127.1.x.y:3001)
swipe cards over mutual TLS, each with a session parked at the standby
(docs/protocol.md 6.3). The story: normal operation, kill -9 of the active,
the standby takes the VIP and TAKEOVERs the parked sessions, the panels replay, an operator
changes the configuration during the outage, the killed node comes back as
standby, switchover back. Then every panel's journal is checked against the
store.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

import protocol as p
from emulator import Fleet, Workload
from storage import ClusterStore, Lease

from ..engine import Supervised, Supervisor, node_command
from ..harness import Report, check
from ..site import issue_pair_pki, load_site, seed_config, write_pair_site

__all__ = [
    "run_demo",
]


@dataclasses.dataclass
class _State:
    lease: Lease | None = None
    phase: str = "starting"


def _lease(db: Path) -> Lease:
    store = ClusterStore(db)
    try:
        return store.lease()
    finally:
        store.close()


def _table(state: _State, fleet: Fleet, started: float) -> Table:
    s = fleet.statistics()
    lease = state.lease
    table = Table(title=f"fieldsync demo - {state.phase}", expand=False)
    for column in ("t", "VIP holder", "epoch", "panels online", "swipes", "acked", "buffered", "dropped"):
        table.add_column(column, justify="right")
    holder = lease.holder if lease is not None and lease.held_at(time.time_ns() // 1000) else "-"
    table.add_row(
        f"{time.monotonic() - started:5.1f}s",
        str(holder),
        str(lease.epoch if lease else 0),
        f"{s.connected}/{s.panels}",
        str(s.swipes),
        str(s.acked),
        str(s.buffered_events),
        str(s.dropped),
    )
    return table


async def _story(
    workdir: Path,
    panels: int,
    rate: float,
    port: int,
    say: Callable[[str], None],
    state: _State,
    publish: Callable[[Fleet], None],
) -> tuple[Report, Fleet, dict[str, float]]:
    site_path = workdir / "site.toml"
    write_pair_site(site_path, port=port, panels=panels, rate=rate, buffer="256KiB", name="fieldsync demo", park=True)
    site = load_site(site_path)
    say(f"making a site CA and certificates for 2 nodes and {panels} panels in {workdir}")
    issue_pair_pki(site, "fieldsync demo")
    config = seed_config(site.db_file, doors=4, cardholders=50)
    children = [
        Supervised(name=n, command=node_command(n, str(site_path)), restart=True, restart_delay=1.0) for n in ("A", "B")
    ]
    fleet = Fleet([site.panel_settings(pid) for pid in site.panel_ids()], Workload(rate=rate), seed=2026, journal=True)
    publish(fleet)
    figures: dict[str, float] = {}
    epoch_seen_at: dict[int, float] = {}

    async def watch() -> None:
        while True:
            state.lease = lease = await trio.to_thread.run_sync(_lease, site.db_file)
            epoch_seen_at.setdefault(lease.epoch, trio.current_time())
            await trio.sleep(0.05)  # the takeover figure is read to within this

    async def wait_for(predicate: Callable[[], bool], limit: float, what: str) -> float:
        start = trio.current_time()
        with trio.fail_after(limit):
            while not predicate():  # noqa: ASYNC110 - the story watches a fleet and a lease, polling is the point
                await trio.sleep(0.05)
        say(f"{what} after {trio.current_time() - start:.2f} s")
        return trio.current_time() - start

    def holder() -> str | None:
        lease = state.lease
        return lease.holder if lease is not None and lease.held_at(time.time_ns() // 1000) else None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await nursery.start(Supervisor(children, stdout=os.open(os.devnull, os.O_WRONLY)).run)
        state.phase = "normal operation"
        await wait_for(lambda: holder() is not None, 15, "a node holds the VIP")
        first = holder()
        await nursery.start(fleet.run)
        await wait_for(lambda: fleet.statistics().connected == len(fleet), 30, f"all {len(fleet)} panels online")
        await wait_for(
            lambda: all(pn.parked_at for pn in fleet.panels.values()),
            15,
            "every panel has a session parked at the standby",
        )
        await trio.sleep(4)

        lease = state.lease
        assert lease is not None and lease.holder_pid is not None
        state.phase = f"kill -9 of active node {first}"
        say(f"[bold red]kill -9[/] node {first} (pid {lease.holder_pid}); panels keep deciding and buffering")
        killed_epoch = lease.epoch
        os.kill(lease.holder_pid, signal.SIGKILL)
        killed_at = trio.current_time()
        await trio.sleep(0.2)
        say("operator during the outage: door 2 locked, cardholder 1003 removed, 5 new cardholders")
        await trio.to_thread.run_sync(config.change, [p.PutDoor(door=p.Door(door=2, mode=p.DoorMode.LOCKED))])
        await trio.to_thread.run_sync(
            config.change,
            [p.DeleteCardholder(card=1003)]
            + [p.PutCardholder(cardholder=p.Cardholder(card=2000 + i, levels=(1,))) for i in range(5)],
        )
        state.phase = "failover"
        with trio.fail_after(15):
            while not (holder() not in (None, first) and state.lease is not None and state.lease.epoch > killed_epoch):  # noqa: ASYNC110
                await trio.sleep(0.05)
        # From the kill, not from here: the operator's changes above ran meanwhile.
        figures["takeover_s"] = epoch_seen_at[state.lease.epoch] - killed_at
        say(
            f"standby {'B' if first == 'A' else 'A'} holds the VIP with epoch {state.lease.epoch}: "
            f"seen {figures['takeover_s']:.2f} s after the kill (the lease is read every 50 ms)"
        )
        figures["reconnect_s"] = await wait_for(
            lambda: fleet.statistics().connected == len(fleet), 30, "every panel reconnected and is replaying"
        )
        parked = sum(pn.takeovers for pn in fleet.panels.values())
        say(f"{parked} of {len(fleet)} panels were taken over on their parked sessions (no TCP or TLS set-up)")
        version = config.version
        await wait_for(
            lambda: all(pn.config.version == version for pn in fleet.panels.values()),
            20,
            f"every panel applied configuration version {version}",
        )
        state.phase = "old node returns"
        await wait_for(
            lambda: children[0 if first == "A" else 1].pid is not None,
            15,
            f"node {first} restarted by the supervisor (standby)",
        )
        await trio.sleep(3)
        state.phase = f"switchover back to {first}"
        say(f"switchover: the VIP goes back to {first}")
        await trio.to_thread.run_sync(lambda: ClusterStore(site.db_file).request_switchover(first or "A"))
        await wait_for(lambda: holder() == first, 15, f"node {first} holds the VIP again")
        await wait_for(lambda: fleet.statistics().connected == len(fleet), 30, "every panel back online")
        state.phase = "draining"
        fleet.stop_workload()
        with trio.fail_after(30):
            await fleet.wait_drained()
        state.phase = "checking the promises"
        report = await trio.to_thread.run_sync(check, site.db_file, list(fleet.panels.values()))
        nursery.cancel_scope.cancel()
    return report, fleet, figures


def run_demo(*, panels: int = 200, rate: float = 2.0, port: int = 30002, keep: Path | None = None) -> bool:
    """Play the story; print the promise report; True if every promise held."""
    console = Console()
    started = time.monotonic()
    state = _State()
    workdir = keep or Path(tempfile.mkdtemp(prefix="fieldsync-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fleet_box: list[Fleet] = []

    def say(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:5.1f}s[/] {text}")

    async def main() -> tuple[Report, Fleet, dict[str, float]]:
        async with trio.open_nursery() as nursery:
            result: list[tuple[Report, Fleet, dict[str, float]]] = []

            async def story() -> None:
                result.append(await _story(workdir, panels, rate, port, say, state, fleet_box.append))
                nursery.cancel_scope.cancel()

            nursery.start_soon(story)
            if console.is_terminal:
                with Live(console=console, refresh_per_second=4, transient=True) as live:
                    while True:
                        if fleet_box:
                            live.update(_table(state, fleet_box[0], started))
                        await trio.sleep(0.25)
        return result[0]

    report, _, figures = trio.run(main)
    totals = report.totals()
    console.print()
    console.print(
        f"[bold]Promise report[/] ({len(report.panels)} panels, store epoch {report.store_epoch}, "
        f"config version {report.server_config_version}, {time.monotonic() - started:.0f} s)"
    )
    console.print(
        f"  events generated {totals['generated']}, acknowledged {totals['acked']}, stored {totals['stored']}, "
        f"declared lost {totals['declared_lost']}, still buffered {totals['buffered']}"
    )
    console.print(
        f"  takeover seen {figures.get('takeover_s', 0):.2f} s after the kill; all panels back "
        f"{figures.get('reconnect_s', 0):.2f} s after that"
    )
    for name, (ok, detail) in report.promises().items():
        mark = "[green]held[/]" if ok else "[bold red]BROKEN[/]"
        console.print(f"  {name:<34} {mark}  ({detail})")
    console.print(f"site, store and logs kept in {workdir}")
    return report.ok
