"""`fieldsync bench`: benchmarks that measure their bound in the same run (``fieldsync.bench``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._common import friendly, run_trio
from ._defaults import SiteCommand, SiteGroup

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["bench"]


@click.group("bench", cls=SiteGroup)
def bench() -> None:
    """Benchmarks: every figure beside the bound measured in the same run, and its ratio."""


@bench.command("replay", cls=SiteCommand)
@click.option("--panels", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--backlog", type=click.IntRange(min=1), default=1_000_000, show_default=True, help="Events per panel.")
@click.option("--tls/--no-tls", default=True, show_default=True)
@click.option("--batch", type=click.IntRange(1, 65_535), default=4096, show_default=True, help="Records per batch.")
@click.option("--window", type=click.IntRange(min=1), default=4, show_default=True, help="Batches in flight per panel.")
@click.option("--port", type=click.IntRange(1, 65_535), default=30002, show_default=True, help="The node's port.")
@click.option(
    "--ingest",
    type=click.Choice(["rows", "log"]),
    default="rows",
    show_default=True,
    help="What an ACK waits for: every event's row, or the batch in the batch log.",
)
@click.option("--materialize-idle", type=click.FloatRange(min=0), default=0.05, show_default=True)
@click.option("--max-log-age", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option(
    "--max-log-lag", type=click.IntRange(min=1), default=4_000_000, show_default=True, help="Events the log may hold."
)
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write every figure here.")
@click.option(
    "--plot", type=click.Path(path_type=Path, dir_okay=False), help="PNG: acked events/s and the backlog over time."
)
@friendly
def replay_cmd(
    panels: int,
    backlog: int,
    tls: bool,
    batch: int,
    window: int,
    port: int,
    ingest: str,
    materialize_idle: float,
    max_log_age: float,
    max_log_lag: int,
    timeout: float,
    json_path: Path | None,
    plot: Path | None,
) -> None:
    """Panels come back with a backlog: how fast is it acknowledged, against the store's row
    bound and its batch log's bound, both measured in the same run."""
    from ..bench import ReplayOptions, Sample, measure_replay, plot_replay, report_lines

    opts = ReplayOptions(
        panels=panels,
        backlog=backlog,
        tls=tls,
        batch=batch,
        window=window,
        port=port,
        timeout=timeout,
        ingest=ingest,
        materialize_idle=materialize_idle,
        max_log_age=max_log_age,
        max_log_lag=max_log_lag,
    )
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-replay-") as tmp, _progress() as progress:
        acked = progress.add_task("acked", total=panels * backlog, rate="")
        logged = progress.add_task("in the batch log", total=None, rate="", visible=ingest == "log")
        last: list[Sample] = []

        def on_sample(sample: Sample) -> None:
            rate = (sample.acked - last[0].acked) / (sample.t - last[0].t) if last else 0.0
            last[:] = [sample]
            progress.update(acked, completed=sample.acked, rate=f"{rate:,.0f} events/s")
            if sample.logged is not None:
                progress.update(logged, completed=max(0, sample.logged), rate="events not yet in events")

        async def run() -> None:
            result.update(await measure_replay(opts, Path(tmp), on_sample=on_sample))

        run_trio(run)
    _report(result, report_lines, plot_replay, json_path, plot)


@bench.command("alarms", cls=SiteCommand)
@click.option("--panels", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--backlog", type=click.IntRange(min=100), default=10_000, show_default=True, help="Events per panel.")
@click.option(
    "--live-panels", type=click.IntRange(min=1), default=100, show_default=True, help="Panels raising a live alarm."
)
@click.option(
    "--live-at",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Share of the backlog acknowledged when the live alarms are raised.",
)
@click.option("--tls/--no-tls", default=True, show_default=True)
@click.option("--port", type=click.IntRange(1, 65_535), default=30002, show_default=True, help="The node's port.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write every figure here.")
@click.option(
    "--plot", type=click.Path(path_type=Path, dir_okay=False), help="PNG: offline alarms stored over time, live waits."
)
@friendly
def alarms_cmd(
    panels: int,
    backlog: int,
    live_panels: int,
    live_at: float,
    tls: bool,
    port: int,
    timeout: float,
    json_path: Path | None,
    plot: Path | None,
) -> None:
    """Panels come back with alarms among their backlog, and raise live ones mid-replay: how
    long until each is stored, against the drain and an alarm with nothing ahead of it; with
    the alarm lane, then without it, in one run."""
    from ..bench import AlarmOptions, alarm_lines, measure_alarms, plot_alarms

    opts = AlarmOptions(
        panels=panels,
        backlog=backlog,
        live_panels=min(live_panels, panels),
        live_at=live_at,
        tls=tls,
        port=port,
        timeout=timeout,
    )
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-alarms-") as tmp, _progress() as progress:
        tasks = {
            name: progress.add_task(f"acked, {label}", total=panels * backlog, rate="")
            for name, label in (("lane", "with the lane"), ("no_lane", "without it"))
        }

        def on_progress(name: str, done: int, total: int) -> None:
            progress.update(tasks[name], completed=done, total=total)

        async def run() -> None:
            result.update(await measure_alarms(opts, Path(tmp), on_progress=on_progress))

        run_trio(run)
    _report(result, alarm_lines, plot_alarms, json_path, plot)


@bench.command("idle", cls=SiteCommand)
@click.option("--panels", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1), default=10.0, show_default=True, help="The measured window.")
@click.option("--settle", type=click.FloatRange(min=0), default=3.0, show_default=True, help="After the last session.")
@click.option("--heartbeat-ms", type=click.IntRange(10, 60_000), default=1000, show_default=True)
@click.option(
    "--idle-ms",
    type=click.IntRange(10, 600_000),
    default=10_000,
    show_default=True,
    help="A quiet panel's probe interval.",
)
@click.option(
    "--ramp", type=click.FloatRange(min=1), default=100.0, show_default=True, help="Panels started per second."
)
@click.option("--port", type=click.IntRange(1, 65_535), default=30002, show_default=True, help="The node's port.")
@click.option(
    "--gc",
    type=click.Choice(["sparing", "python"]),
    default="sparing",
    show_default=True,
    help="Both ends' cyclic GC: freeze the survivors of each full collection, or CPython's own policy.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write every figure here.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="PNG: each end's cost beside the bound.")
@friendly
def idle_cmd(
    panels: int,
    seconds: float,
    settle: float,
    heartbeat_ms: int,
    idle_ms: int,
    ramp: float,
    port: int,
    gc: str,
    json_path: Path | None,
    plot: Path | None,
) -> None:
    """Idle TLS sessions: each end's CPU per session-second, in small frames' worth (the bound:
    one frame sent and received through trio.SSLStream, measured in the same run)."""
    from ..bench import IdleOptions, idle_lines, measure_idle, plot_idle

    opts = IdleOptions(
        panels=panels,
        seconds=seconds,
        settle=settle,
        heartbeat_ms=heartbeat_ms,
        idle_ms=idle_ms,
        ramp=ramp,
        port=port,
        gc=gc,
    )
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-idle-") as tmp, _progress() as progress:
        task = progress.add_task("sessions up", total=panels, rate="")

        async def run() -> None:
            def connected(n: int) -> None:
                progress.update(task, completed=n)

            result.update(await measure_idle(opts, Path(tmp), on_connected=connected))

        run_trio(run)
    _report(result, idle_lines, plot_idle, json_path, plot)


@bench.command("failover", cls=SiteCommand)
@click.option("--runs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--panels", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--backlog", type=click.IntRange(min=0), default=2000, show_default=True, help="Events per panel.")
@click.option("--rate", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Swipes/s per panel.")
@click.option("--mode", type=click.Choice(["punch-out", "host-initiated", "mixed"]), default="mixed", show_default=True)
@click.option("--port", type=click.IntRange(1, 65_535), default=30002, show_default=True, help="The VIP's port.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write every figure here.")
@click.option(
    "--park", is_flag=True, help="Every panel's session parked at the standby (docs/protocol.md 6.3) before the kill."
)
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="PNG: each panel's outage, per run.")
@friendly
def failover_cmd(
    runs: int,
    panels: int,
    backlog: int,
    rate: float,
    mode: str,
    port: int,
    json_path: Path | None,
    park: bool,
    plot: Path | None,
) -> None:
    """kill -9 of the active under a replaying fleet: each panel's time to its first ACK from
    the new node, against the same fleet's cold connection measured in the same run."""
    from ..bench import FailoverOptions, FailoverRun, RunFailed, failover_lines, measure_failover, plot_failover

    opts = FailoverOptions(runs=runs, panels=panels, backlog=backlog, rate=rate, mode=mode, port=port, park=park)
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-failover-") as tmp, _progress() as progress:
        task = progress.add_task("runs", total=runs, rate="")

        def done(run: int, one: FailoverRun) -> None:
            progress.update(task, completed=run + 1, rate=f"last: outage max {max(one.outage_s):.3f} s")

        async def run() -> None:
            try:
                result.update(await measure_failover(opts, Path(tmp), on_run=done))
            except RunFailed as exc:
                raise click.ClickException(str(exc)) from None

        run_trio(run)
    _report(result, failover_lines, plot_failover, json_path, plot)


@bench.command("memory", cls=SiteCommand)
@click.option(
    "--events", type=click.IntRange(min=1000), default=1_000_000, show_default=True, help="The buffer's size."
)
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write every figure here.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), help="PNG: the resident set as events go in.")
@friendly
def memory_cmd(events: int, json_path: Path | None, plot: Path | None) -> None:
    """The panel's buffer: bytes per event against the record's 32, and the resident set
    after 10x its budget has gone through it against the set when it was first full."""
    from ..bench import measure_memory, memory_lines, plot_memory

    with _progress() as progress:
        task = progress.add_task("appended", total=events * 11, rate="")
        result = measure_memory(events, on_progress=lambda n: progress.update(task, completed=n))
    _report(result, memory_lines, plot_memory, json_path, plot)


def _progress() -> Progress:
    """A progress display on stderr (stdout keeps only the figures), gone once it is done.
    (rich is imported here: every other command would pay for its import.)"""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _report(
    result: dict[str, object],
    lines: Callable[[dict[str, object]], list[str]],
    plotter: Callable[[dict[str, object], Path], None],
    json_path: Path | None,
    plot: Path | None,
) -> None:
    if not result:  # stopped by a signal before the end: run_trio said so
        return
    from ..bench import write_json

    for line in lines(result):
        click.echo(line)
    write_json(json_path, result)
    if json_path is not None:
        click.echo(f"  figures : {json_path}")
    if plot is not None:
        plotter(result, plot)
        click.echo(f"  plot    : {plot}")
