"""Alarms in a replay: how long an operator waits for the alarms a fleet's backlog holds,
with the alarm lane (docs/protocol.md 7.6) and without it, in one run.

A thousand panels come back from an outage, each with a backlog of access events among
which it recorded alarms: ``HOST_OFFLINE`` when it lost the host, a door forced a minute
in, a tamper half-way, a door held at the end. An alarm is stored when its panel sees an
ALARM_ACK or an ACK at or past its seq (both mean durable: 7.4, 7.6). Half-way through
the replay a subset of the panels raise a live alarm (a door forced now): how long until
it is stored?

The bounds, measured in the same run: the drain (every event acknowledged) for the offline
alarms, and for the live alarm the same panels' live alarm once the replay is over, with
nothing ahead of it. Then the same run again with the panels' lane off
(``PanelSettings.alarm_outbox = 0``): one sequence per panel, each alarm behind every access
event its panel recorded before it.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import trio

import protocol as p
from emulator import Fleet, Panel
from protocol.streams import sparing_gc

from ._common import cpu_seconds, node_process, ratio, save_figure
from ._failover import percentile
from ._replay import ReplayOptions, empty_fleet, serve_command

__all__ = ["AlarmOptions", "alarm_lines", "measure_alarms", "plot_alarms"]

#: Where in each panel's backlog its offline alarms are (fraction of the backlog), and what.
OFFLINE_ALARMS = (
    (0.0, p.EventKind.HOST_OFFLINE),
    (0.01, p.EventKind.DOOR_FORCED),
    (0.5, p.EventKind.TAMPER),
    (0.99, p.EventKind.DOOR_HELD),
)
#: How often the offline alarms are looked at, and the live ones (fewer, and the bound is short).
POLL = 0.02
LIVE_POLL = 0.002


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AlarmOptions:
    panels: int = 1000
    backlog: int = 10_000
    #: Panels that raise a live alarm, once ``live_at`` of the fleet's backlog is acknowledged.
    live_panels: int = 100
    live_at: float = 0.5
    tls: bool = True
    batch: int = 4096
    window: int = 4
    port: int = 30002
    timeout: float = 600.0

    def replay(self) -> ReplayOptions:
        return ReplayOptions(
            panels=self.panels, backlog=self.backlog, tls=self.tls, batch=self.batch, window=self.window, port=self.port
        )


def _fleet(opts: AlarmOptions, pki_dir: Path, lane: bool) -> tuple[Fleet, dict[int, list[int]]]:
    """The fleet, each panel's backlog filled, and each panel's offline alarms' seqs."""
    fleet = empty_fleet(opts.replay(), pki_dir, lane=lane)
    at = {min(opts.backlog - 1, int(fraction * opts.backlog)): kind for fraction, kind in OFFLINE_ALARMS}
    t0 = 1_764_000_000_000_000
    alarms: dict[int, list[int]] = {}
    for pid, panel in fleet.panels.items():
        seqs = alarms[pid] = []
        for i in range(opts.backlog):
            kind = at.get(i, p.EventKind.ACCESS_GRANTED)
            alarm = kind != p.EventKind.ACCESS_GRANTED
            if alarm:  # recorded as the panel records one: its copy goes in the lane's outbox
                seq = panel.record(kind, door=i % 4)
            else:
                seq = panel.buffer.append(t0 + i, kind, door=i % 4, card=12345 + i)
            if alarm and seq is not None:
                seqs.append(seq)
    return fleet, alarms


class _Watch:
    """Every ``poll`` s: which of its alarms each panel has seen acknowledged, and when."""

    def __init__(self, start: float, poll: float) -> None:
        self.start = start
        self.poll = poll
        #: (panel, seq, raised at) of alarms not yet acknowledged.
        self.pending: list[tuple[Panel, int, float]] = []
        #: Seconds from its raise (the start, for an offline alarm) to each alarm's ACK.
        self.stored: list[float] = []
        self.done = trio.Event()

    def expect(self, panel: Panel, seq: int, raised_at: float) -> None:
        self.pending.append((panel, seq, raised_at))

    def raise_now(self, panels: list[Panel]) -> None:
        """A door-forced alarm now at each of ``panels``."""
        now = time.perf_counter() - self.start
        for panel in panels:
            seq = panel.record(p.EventKind.DOOR_FORCED, door=1)
            if seq is None:
                raise RuntimeError(f"panel {panel.panel_id} refused a live alarm: its buffer is full")
            self.expect(panel, seq, now)

    async def wait(self) -> list[float]:
        """Until every alarm expected is acknowledged; the waits, then none pending."""
        while self.pending:  # a look at a few panels' acks: no event per ACK
            await trio.sleep(self.poll)
            now = time.perf_counter() - self.start
            left = []
            for panel, seq, raised_at in self.pending:
                if panel.acked_seq >= seq or panel.alarm_acked_seq >= seq:
                    self.stored.append(now - raised_at)
                else:
                    left.append((panel, seq, raised_at))
            self.pending = left
        stored, self.stored = self.stored, []
        return stored


async def measure_alarms(
    opts: AlarmOptions, workdir: Path, *, on_progress: Callable[[str, int, int], None] = lambda _n, _a, _t: None
) -> dict[str, object]:
    """Both runs, with the lane and without, and how the lane's figures compare."""
    runs: dict[str, dict[str, object]] = {}
    for name, lane in (("lane", True), ("no_lane", False)):
        runs[name] = await _measure(opts, workdir / name, lane, functools.partial(on_progress, name))
    with_lane, without = runs["lane"], runs["no_lane"]
    compare = {
        f"ratio_{key}_lane_to_no_lane": ratio(float(with_lane[key]), float(without[key]))  # type: ignore[arg-type]
        for key in ("offline_all_stored_s", "offline_p50_s", "live_p50_s", "live_p99_s")
    }
    return {"panels": opts.panels, "backlog": opts.backlog, "tls": opts.tls, **runs, **compare}


async def _measure(
    opts: AlarmOptions, workdir: Path, lane: bool, on_progress: Callable[[int, int], None]
) -> dict[str, object]:
    """One run: the offline alarms' waits, the live alarms' mid-replay and after it."""
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    fleet, offline = _fleet(opts, workdir / "pki", lane)
    total = fleet.statistics().emitted
    step = max(1, opts.panels // max(1, min(opts.live_panels, opts.panels)))
    live = [fleet.panels[pid] for pid in range(1, opts.panels + 1, step)][: opts.live_panels]
    rep = opts.replay()
    command = serve_command(rep, workdir, workdir / "site.db", workdir / "pki")
    offline_waits: list[float] = []
    offline_done = trio.Event()

    async with node_process(command, workdir / "node.log") as node:
        node_cpu_start, fleet_cpu_start = cpu_seconds(node.pid), time.process_time()
        async with sparing_gc(), trio.open_nursery() as nursery:
            start = time.perf_counter()
            slow = _Watch(start, POLL)
            for pid, seqs in offline.items():
                for seq in seqs:
                    slow.expect(fleet.panels[pid], seq, 0.0)
            await nursery.start(fleet.run)

            async def offline_alarms() -> None:
                offline_waits.extend(await slow.wait())
                offline_done.set()

            nursery.start_soon(offline_alarms)
            with trio.fail_after(opts.timeout):
                while True:  # until live_at of the backlog is acknowledged
                    acked = total - sum(len(panel.buffer) for panel in fleet.panels.values())
                    on_progress(acked, total)
                    if acked >= opts.live_at * total:
                        break
                    await trio.sleep(POLL)
            fast = _Watch(start, LIVE_POLL)
            behind = [len(panel.buffer) for panel in live]  # events ahead of each live alarm
            raised_at = time.perf_counter() - start
            fast.raise_now(live)
            with trio.fail_after(opts.timeout):
                mid_replay = await fast.wait()
                await fleet.wait_drained(poll=POLL)
            drain = time.perf_counter() - start
            on_progress(total, total)
            node_cpu, fleet_cpu = cpu_seconds(node.pid) - node_cpu_start, time.process_time() - fleet_cpu_start
            fast.raise_now(live)  # the bound: the same alarms with nothing ahead of them
            with trio.fail_after(opts.timeout):
                after = await fast.wait()
                await offline_done.wait()  # all in by the drain
            nursery.cancel_scope.cancel()
    figures = _figures(opts, offline_waits, mid_replay, after, behind, drain, raised_at, node_cpu, fleet_cpu)
    return {"lanes": lane, "alarms_in_lane": sum(p.alarms_sent for p in fleet.panels.values()), **figures}


def _figures(
    opts: AlarmOptions,
    offline: list[float],
    mid: list[float],
    after: list[float],
    behind: list[int],
    drain: float,
    raised_at: float,
    node_cpu: float,
    fleet_cpu: float,
) -> dict[str, object]:
    all_stored = max(offline, default=float("nan"))
    idle_p50, idle_p99 = percentile(after, 50), percentile(after, 99)
    return {
        "offline_alarms": len(offline),
        "offline_all_stored_s": all_stored,
        "offline_p50_s": percentile(offline, 50),
        "drain_s": drain,
        "ratio_offline_all_stored_to_drain": ratio(all_stored, drain),
        "live_alarms": len(mid),
        "live_raised_at_s": raised_at,
        "live_events_ahead_mean": statistics.fmean(behind) if behind else 0.0,
        "live_p50_s": percentile(mid, 50),
        "live_p99_s": percentile(mid, 99),
        "idle_alarm_p50_s": idle_p50,
        "idle_alarm_p99_s": idle_p99,
        "ratio_live_p50_to_idle": ratio(percentile(mid, 50), idle_p50),
        "ratio_live_p99_to_idle": ratio(percentile(mid, 99), idle_p99),
        "node_cpu_s": node_cpu,
        "fleet_cpu_s": fleet_cpu,
        "offline_waits_s": sorted(offline),
        "live_waits_s": sorted(mid),
    }


def _r(value: object) -> str:
    return "missing (its bound is)" if value is None else f"{float(value):.3f}"  # type: ignore[arg-type]


def _run_lines(name: str, run: dict[str, object]) -> list[str]:
    return [
        f"  {name}: {run['alarms_in_lane']:,} alarm copies went in the lane",
        f"    drain (bound)     : {run['drain_s']:.2f} s (every event acknowledged)",
        f"    offline alarms    : {run['offline_alarms']:,}, all stored at {run['offline_all_stored_s']:.2f} s, "
        f"p50 {run['offline_p50_s']:.2f} s; ratio of all stored to the drain "
        f"{_r(run['ratio_offline_all_stored_to_drain'])}",
        f"    live alarms       : {run['live_alarms']} raised at {run['live_raised_at_s']:.2f} s, "
        f"{run['live_events_ahead_mean']:,.0f} events ahead on average: "
        f"p50 {run['live_p50_s']:.3f} s, p99 {run['live_p99_s']:.3f} s",
        f"    idle alarm (bound): the same panels after the drain: p50 {run['idle_alarm_p50_s']:.3f} s, "
        f"p99 {run['idle_alarm_p99_s']:.3f} s",
        f"    ratio live/idle   : p50 {_r(run['ratio_live_p50_to_idle'])}, p99 {_r(run['ratio_live_p99_to_idle'])}",
        f"    CPU in the drain  : node {run['node_cpu_s']:.1f} s, fleet {run['fleet_cpu_s']:.1f} s",
    ]


def alarm_lines(result: dict[str, object]) -> list[str]:
    """Both runs' figures, each beside its bound and ratio, and the lane against no lane."""
    lines = [
        f"alarms: {result['panels']} panel(s) x {result['backlog']:,} events, "
        f"{'TLS 1.3' if result['tls'] else 'plain TCP'}; with the alarm lane, then one sequence per panel"
    ]
    lines += _run_lines("with the lane", result["lane"])  # type: ignore[arg-type]
    lines += _run_lines("without it", result["no_lane"])  # type: ignore[arg-type]
    ratios = {key: _r(result[f"ratio_{key}_lane_to_no_lane"]) for key in ("offline_all_stored_s", "offline_p50_s")}
    live = {key: _r(result[f"ratio_{key}_lane_to_no_lane"]) for key in ("live_p50_s", "live_p99_s")}
    lines.append(
        f"  lane / no lane    : offline all stored {ratios['offline_all_stored_s']}, offline p50 "
        f"{ratios['offline_p50_s']}, live p50 {live['live_p50_s']}, live p99 {live['live_p99_s']}"
    )
    return lines


def plot_alarms(result: dict[str, object], path: Path) -> None:
    """PNG: the share of offline alarms stored over time, and the live alarms' waits, both runs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    left, right = fig.subplots(1, 2)
    for name, label in (("lane", "alarm lane"), ("no_lane", "no lane")):
        run: dict[str, object] = result[name]  # type: ignore[assignment]
        offline: list[float] = run["offline_waits_s"]  # type: ignore[assignment]
        line = left.step(offline, [(i + 1) / len(offline) for i in range(len(offline))], where="post", label=label)
        left.axvline(float(run["drain_s"]), color=line[0].get_color(), linestyle="--")  # type: ignore[arg-type]
        live: list[float] = run["live_waits_s"]  # type: ignore[assignment]
        right.hist(live, bins=30, alpha=0.6, label=label)
    left.set_xlabel("seconds since the fleet started (dashed: the drain)")
    left.set_ylabel("offline alarms stored (share)")
    left.legend()
    right.set_xlabel("live alarm raised mid-replay: seconds to its ACK")
    right.set_ylabel("alarms")
    right.legend()
    save_figure(fig, path)
