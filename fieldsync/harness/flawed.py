"""``python -m fieldsync.harness.flawed --flaw NAME ... node|fuzz ...``: a deliberately broken build.

The negative controls' way in, and the only one: the shipped ``fieldsync`` has no
option that breaks a promise. ``node`` runs one node of the pair as ``fieldsync node``
does, with the flaws; ``fuzz`` runs random schedules as ``fieldsync scenario fuzz``
does, against a flawed engine (a failing seed prints a replay through this module).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import trio

from ..site import load_site
from ._flaws import FLAWS, flawed_cluster_class
from ._fuzz import fuzz

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--flaw", "flaws", multiple=True, required=True, type=click.Choice(sorted(FLAWS)))
@click.pass_context
def main(ctx: click.Context, flaws: tuple[str, ...]) -> None:
    """Run a deliberately broken engine (for the promise checker's negative controls only)."""
    ctx.obj = frozenset(flaws)
    click.echo(f"WARNING: a deliberately broken build: {', '.join(sorted(flaws))}", err=True)


@main.command("node")
@click.option("--id", "node_id", required=True)
@click.option("--site", "site_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--no-stonith", is_flag=True)
@click.option("--failback", is_flag=True)
@click.option("--lease", type=float, default=1.0)
@click.option("--dead-after", type=float, default=0.3)
@click.pass_obj
def node(
    flaws: frozenset[str],
    node_id: str,
    site_path: Path,
    no_stonith: bool,
    failback: bool,
    lease: float,
    dead_after: float,
) -> None:
    """One node of the pair, as `fieldsync node`, with the flaws."""
    site = load_site(site_path)
    settings = site.cluster_settings(
        node_id, stonith=not no_stonith, failback=failback, lease=lease, dead_after=dead_after
    )
    cluster_node = flawed_cluster_class(flaws)(settings)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster_node.run)
            click.echo(f"node {node_id} (pid {os.getpid()}) up as standby; VIP {site.vip}:{site.port} (flawed)")
            sys.stdout.flush()

    trio.run(run)


@main.command("fuzz")
@click.option("--count", type=int, default=10)
@click.option("--seed", type=int, default=1)
@click.option("--fast", is_flag=True)
@click.option("--panels", type=int, default=8)
@click.option("--duration", type=float, default=15.0)
@click.option("--port", type=int, default=30002)
@click.pass_obj
def fuzz_cmd(flaws: frozenset[str], count: int, seed: int, fast: bool, panels: int, duration: float, port: int) -> None:
    """Random schedules against the flawed engine, as `fieldsync scenario fuzz`."""
    failed = fuzz(count, seed, fast=fast, panels=panels, duration=duration, port=port, flaws=flaws, echo=click.echo)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
