"""Failover: from kill -9 of the active node to each panel's first ACK from the new one.

Each run starts a fresh two-node cluster (real processes, shared store, TLS) and a fleet
with a backlog that swipes on. The **bound** is taken in the same run, before the fault:
the time the same fleet takes to connect from cold to the serving node, from the fleet's
start until its last panel has its first ACK. Once every panel is acknowledged and the
replay is in flight, the active is killed with SIGKILL; per panel the run records the time
from the kill to its first ACK under the new epoch. Percentiles are over all panels of all
runs, and the p99 is given as a ratio to the cold connection (issue 19's goal: <= 0.3).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import trio

from emulator import Fleet, Workload
from protocol.streams import sparing_gc
from storage import ClusterStore, Lease

from ..engine import Supervised, Supervisor, node_command
from ..site import load_site, pki, write_pair_site
from ._common import ratio, save_figure

__all__ = [
    "FailoverOptions",
    "FailoverRun",
    "RunFailed",
    "failover_lines",
    "measure_failover",
    "percentile",
    "plot_failover",
]


class RunFailed(Exception):
    """A run could not take its measurement (a panel never acknowledged before the kill)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverOptions:
    runs: int = 10
    panels: int = 200
    #: Events each panel holds when a run starts, and its swipes per second during the run.
    backlog: int = 2000
    rate: float = 2.0
    mode: str = "mixed"
    port: int = 30002
    #: Parked sessions (docs/protocol.md 6.3): every panel parked at the standby before the
    #: kill, so the takeover is a TAKEOVER on connections already up.
    park: bool = False
    #: Where the node processes' output goes (a file descriptor); None: nowhere.
    node_log: int | None = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _lease(db: Path | str) -> Lease:
    store = ClusterStore(db)
    try:
        return store.lease()
    finally:
        store.close()


@dataclasses.dataclass(frozen=True, slots=True)
class FailoverRun:
    """One run: every panel's outage and WELCOME after the kill, the cold connection before it."""

    outage_s: list[float]
    welcome_s: list[float]
    cold_s: float
    takeover_s: float | None


async def one_run(workdir: Path, pki_dir: Path, opts: FailoverOptions, run: int) -> FailoverRun:
    """One cluster, one cold connection, one kill -9: every panel's outage, in seconds."""
    site_path = workdir / f"run{run}" / "site.toml"
    site_path.parent.mkdir(parents=True)
    write_pair_site(site_path, pki_dir=pki_dir, port=opts.port, panels=opts.panels, mode=opts.mode, park=opts.park)
    site = load_site(site_path)
    children = [Supervised(name=n, command=node_command(n, str(site_path)), restart=False) for n in ("A", "B")]
    fleet = Fleet([site.panel_settings(p) for p in site.panel_ids()], Workload(rate=opts.rate), seed=run)
    for panel in fleet.panels.values():
        for i in range(opts.backlog):
            panel.swipe(i, i % 4)
    async with sparing_gc(), trio.open_nursery() as nursery:  # as `fieldsync emulate` runs a fleet
        output = opts.node_log if opts.node_log is not None else os.open(os.devnull, os.O_WRONLY)
        await nursery.start(Supervisor(children, stdout=output).run)
        with trio.fail_after(60):
            # Another process's state: polled (as in every wait on the store here).
            while (lease := await trio.to_thread.run_sync(_lease, site.db)).holder_pid is None:  # noqa: ASYNC110
                await trio.sleep(0.05)
        dialed_at = trio.current_time()
        await nursery.start(fleet.run)
        epoch = lease.epoch
        with trio.move_on_after(60):
            # Each panel records its first ACK as it comes: the polling only decides when to go on.
            while not all(epoch in pn.first_ack_at for pn in fleet.panels.values()):  # noqa: ASYNC110
                await trio.sleep(0.05)
        waiting = [pn for pn in fleet.panels.values() if epoch not in pn.first_ack_at]
        if waiting:
            now = await trio.to_thread.run_sync(_lease, site.db)
            moved = (
                f"; the epoch moved from {epoch} to {now.epoch} (holder {now.holder}) with no fault injected"
                if now.epoch != epoch
                else ""
            )
            raise RunFailed(
                f"run {run}: {len(waiting)} panels never acknowledged before the kill, e.g. {waiting[0]!r}: "
                f"{waiting[0].last_error}{moved}"
            )
        # The bound: from the fleet's start to its last panel's first ACK (the ACK itself is
        # recorded as it arrives, so the 50 ms polling above does not count).
        cold = [pn.first_ack_at[epoch] - dialed_at for pn in fleet.panels.values()]
        if opts.park:
            with trio.move_on_after(30):
                while not all(pn.parked_at for pn in fleet.panels.values()):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            unparked = [pn for pn in fleet.panels.values() if not pn.parked_at]
            if unparked:
                raise RunFailed(
                    f"run {run}: {len(unparked)} panels not parked at the standby after 30 s, e.g. panel "
                    f"{unparked[0].panel_id}: {unparked[0].last_park_error}"
                )
        await trio.sleep(0.5)  # replay in flight
        killed_at = trio.current_time()
        assert lease.holder_pid is not None
        os.kill(lease.holder_pid, signal.SIGKILL)
        took_over: float | None = None
        # One open store for the polling: opening it costs 1.75 ms, 50 times a second, in
        # the process whose panels are being measured.
        store = ClusterStore(site.db)
        try:
            with trio.fail_after(60):
                while True:
                    new = await trio.to_thread.run_sync(store.lease)
                    if new.epoch > epoch and took_over is None:
                        took_over = trio.current_time() - killed_at
                    if new.epoch > epoch and all(new.epoch in pn.first_ack_at for pn in fleet.panels.values()):
                        break
                    await trio.sleep(0.02)
        finally:
            store.close()
        nursery.cancel_scope.cancel()
    return FailoverRun(
        outage_s=[pn.first_ack_at[new.epoch] - killed_at for pn in fleet.panels.values()],
        welcome_s=[pn.welcome_at[new.epoch] - killed_at for pn in fleet.panels.values()],
        cold_s=max(cold),
        takeover_s=took_over,
    )


async def measure_failover(
    opts: FailoverOptions, workdir: Path, *, on_run: Callable[[int, FailoverRun], None] = lambda *_: None
) -> dict[str, object]:
    """``opts.runs`` runs; every panel's outage, and its percentiles as ratios to the cold bound."""
    pki_dir = workdir / "pki"
    pki.init_ca(pki_dir)
    for node in ("A", "B"):
        pki.issue(pki_dir, "node", node)
    for panel in range(1, opts.panels + 1):
        pki.issue(pki_dir, "panel", panel)
    runs: list[FailoverRun] = []
    for run in range(opts.runs):
        try:
            one = await one_run(workdir, pki_dir, opts, run)
        except BaseExceptionGroup as group:
            failed = group.subgroup(RunFailed)
            if failed is None:
                raise
            first: BaseException = failed
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        runs.append(one)
        on_run(run, one)
    outages = [t for one in runs for t in one.outage_s]
    cold = statistics.median(one.cold_s for one in runs)
    p99 = percentile(outages, 99)
    return {
        "runs": opts.runs,
        "panels": opts.panels,
        "mode": opts.mode,
        "park": opts.park,
        "p50_s": percentile(outages, 50),
        "p95_s": percentile(outages, 95),
        "p99_s": p99,
        "max_s": max(outages),
        "cold_connect_s": cold,
        "ratio_p99_to_cold": ratio(p99, cold),
        "per_run": [dataclasses.asdict(one) for one in runs],
    }


def _runs(result: dict[str, object]) -> list[FailoverRun]:
    return [FailoverRun(**one) for one in cast(list[dict[str, Any]], result["per_run"])]


def failover_lines(result: dict[str, object]) -> list[str]:
    lines = []
    for i, one in enumerate(_runs(result)):
        took = "-" if one.takeover_s is None else f"{one.takeover_s:.3f} s"
        lines.append(
            f"run {i + 1:>2}: cold connection {one.cold_s:.3f} s; after the kill: new epoch at {took}, "
            f"WELCOME median {statistics.median(one.welcome_s):.3f} s, "
            f"first ACK p50 {statistics.median(one.outage_s):.3f} s, max {max(one.outage_s):.3f} s"
        )
    cold_ratio = result["ratio_p99_to_cold"]
    lines.append(
        f"failover, {result['runs']} runs x {result['panels']} panels ({result['mode']}"
        f"{', parked at the standby' if result.get('park') else ''}), kill -9 -> first ACK from "
        f"the new node: p50 {result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s, p99 {result['p99_s']:.3f} s, "
        f"max {result['max_s']:.3f} s"
    )
    lines.append(
        f"  bound: the same fleet connecting from cold, median of the runs {result['cold_connect_s']:.3f} s; "
        f"p99 / bound {'missing' if cold_ratio is None else f'{float(cold_ratio):.3f}'} (goal <= 0.3)"  # type: ignore[arg-type]
    )
    return lines


def plot_failover(result: dict[str, object], path: Path) -> None:
    """Each panel's outage, sorted, per run, beside each run's cold connection."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for i, one in enumerate(_runs(result)):
        outage = sorted(one.outage_s)
        ax.plot(range(1, len(outage) + 1), outage, linewidth=1, label=f"run {i + 1}" if i < 10 else None)
    ax.axhline(float(result["cold_connect_s"]), color="grey", linestyle="--", label="cold connection (bound)")  # type: ignore[arg-type]
    ax.set_xlabel("panels, by outage")
    ax.set_ylabel("kill -9 -> first ACK from the new node, s")
    ax.set_title(f"failover: {result['runs']} runs x {result['panels']} panels ({result['mode']})")
    ax.legend(loc="upper left", fontsize="small")
    save_figure(fig, path)
