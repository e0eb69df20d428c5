"""`fieldsync scenario`: fault scenarios checked, run against a real cluster, fuzzed."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
import trio

from ._common import _leaves, friendly
from ._defaults import SiteGroup

__all__ = ["scenario"]


@click.group("scenario", cls=SiteGroup)
def scenario() -> None:
    """Fault scenarios (TOML timelines, docs/scenarios.md) run against a real cluster and checked."""


@scenario.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@friendly
def scenario_check(files: tuple[Path, ...]) -> None:
    """Check scenario files without running them (unknown keys, bad times, missing panels)."""
    from ..harness import load_scenario

    for path in files:
        s = load_scenario(path)
        click.echo(f"{path}: ok ({s.site.panels} panels, {len(s.timeline)} steps over {s.duration:g}s)")


@scenario.command("run")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--seed", type=int, help="Seed for the workload and the faults [file: seed].")
@click.option("--port", type=int, default=30002, show_default=True, help="VIP port (node beats use PORT+5).")
@click.option("--api-port", type=int, help="Also serve the fault HTTP API on 127.0.0.1:PORT during the run.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="JSON report path.")
@click.option("--png", "png_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the PNG timeline here.")
@click.option("--keep", type=click.Path(path_type=Path, file_okay=False), help="Work in this directory and keep it.")
@click.option(
    "--backend",
    type=click.Choice(["process", "netns"]),
    help="Where the nodes run: processes on loopback, or the lab's namespace hosts with keepalived (root) "
    "[file: cluster.backend].",
)
@friendly
def scenario_run(
    file: Path,
    seed: int | None,
    port: int,
    api_port: int | None,
    json_path: Path | None,
    png_path: Path | None,
    keep: Path | None,
    backend: str | None,
) -> None:
    """Run a scenario and print the verdict; the exit code is 0 only if every promise held."""
    from ..harness import ScenarioRun, load_scenario, write_reports

    loaded = load_scenario(file)

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    run = ScenarioRun(loaded, seed=seed, workdir=keep, port=port, api_port=api_port, say=say, backend=backend)

    async def main_run() -> Any:
        async with trio.open_nursery() as nursery:

            async def on_sigterm() -> None:
                # SIGTERM ends the run like Ctrl-C: everything it started is stopped on the way out.
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        raise KeyboardInterrupt

            nursery.start_soon(on_sigterm)

            async def progress() -> None:
                while True:
                    await trio.sleep(2)
                    fleet = getattr(run, "fleet", None)
                    if fleet is not None and run.samples:
                        s = fleet.statistics()
                        say(
                            f"        t={run.now():5.1f}s VIP {run._holder() or '-'} epoch "
                            f"{run.cluster.epoch() if run.cluster else 0}: {s.connected}/{s.panels} connected, "
                            f"acked {s.acked}, buffered {s.buffered_events}"
                        )

            nursery.start_soon(progress)
            result = await run.run()
            nursery.cancel_scope.cancel()
        return result

    try:
        result = trio.run(main_run)
    except BaseException as exc:
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc)):
            # Ctrl-C or SIGTERM: the run's nodes, proxies and lab are stopped on the way out.
            click.echo("stopped: everything the run started is stopped (no verdict)", err=True)
            raise SystemExit(130) from None
        raise
    written = write_reports(result, json_path=json_path, png_path=png_path)
    click.echo(result.text())
    click.echo(f"reports: {', '.join(map(str, written))}")
    replay = f"fieldsync scenario run {file} --seed {result.seed}"
    if not result.ok:
        click.echo(f"replay: {replay}")
        raise SystemExit(1)


@scenario.command("fuzz")
@click.option("--count", type=int, default=10, show_default=True, help="How many random schedules.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first schedule (then +1 each).")
@click.option("--fast", is_flag=True, help="The in-process tier: one node in this process, virtual time.")
@click.option("--panels", type=int, default=8, show_default=True)
@click.option("--duration", type=float, default=15.0, show_default=True, help="Timeline length, seconds.")
@click.option("--port", type=int, default=30002, show_default=True)
@click.option("--save", type=click.Path(path_type=Path, file_okay=False), help="Write each schedule's TOML here.")
@click.option(
    "--backend",
    type=click.Choice(["process", "netns"]),
    default="process",
    show_default=True,
    help="netns: on the lab's hosts (root), with the faults of hosts in the schedules.",
)
@friendly
def scenario_fuzz(
    count: int,
    seed: int,
    fast: bool,
    panels: int,
    duration: float,
    port: int,
    save: Path | None,
    backend: str,
) -> None:
    """Run seeded random fault schedules; print any failing seed with the command that replays it."""
    from ..harness import fuzz

    if fast and backend == "netns":
        raise click.UsageError("--fast is the in-process tier: it has no hosts (leave out --backend netns)")
    hosts = backend == "netns"
    if fuzz(
        count, seed, fast=fast, panels=panels, duration=duration, port=port, save=save, echo=click.echo, hosts=hosts
    ):
        raise SystemExit(1)
