"""`fieldsync node` and `fieldsync cluster`: the active/standby pair."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import trio

from ..site import Site, SiteError, load_site
from ._common import friendly, metrics_address, metrics_options, run_trio, show, watch_options
from ._console import console_options, console_settings, console_started, run_console_trio
from ._defaults import SiteCommand, SiteGroup, site_option

if TYPE_CHECKING:
    from storage.postgres import Mirror

    from ..console import ConsoleSettings

__all__ = ["cluster", "node_cmd", "witness_cmd"]


@click.command("node", cls=SiteCommand)
@click.option("--id", "node_id", required=True, help="This node's name in the site file (A or B).")
@site_option
@click.option("--no-stonith", is_flag=True, help="Never SIGKILL a silent active; wait for its lease to expire.")
@click.option("--failback", is_flag=True, help="Take the VIP back once this node is back and in sync.")
@click.option("--lease", type=float, default=1.0, show_default=True, help="Lease length, seconds.")
@click.option(
    "--dead-after", type=float, default=0.3, show_default=True, help="Heartbeat silence that makes a node dead."
)
@metrics_options
@friendly
def node_cmd(
    node_id: str,
    site_path: Path | None,
    no_stonith: bool,
    failback: bool,
    lease: float,
    dead_after: float,
    metrics: str | None,
    metrics_anywhere: bool,
) -> None:
    """Run one node of the active/standby pair (shared store, VIP on 30002)."""
    from protocol.streams import sparing_gc

    from ..engine import ClusterNode, metrics_registry, replication_watch, serve_metrics

    metrics_at = metrics_address(metrics, anywhere=metrics_anywhere)
    site = load_site(site_path)
    settings = site.cluster_settings(
        node_id, stonith=not no_stonith, failback=failback, lease=lease, dead_after=dead_after
    )
    node = ClusterNode(settings)
    watch = replication_watch(node) if metrics_at is not None else None

    async def run() -> None:
        async with sparing_gc(), trio.open_nursery() as nursery:
            if metrics_at is not None:
                await nursery.start(serve_metrics, metrics_registry(node, replication=watch), *metrics_at)
            if watch is not None:  # mirrored: the database's replication, read once a second
                nursery.start_soon(watch.run)
            await nursery.start(node.run)
            click.echo(
                f"node {node_id} (pid {os.getpid()}) up as standby; VIP {site.vip}:{site.port}"
                + (f"; metrics on http://{metrics_at[0]}:{metrics_at[1]}/metrics" if metrics_at else "")
            )
            sys.stdout.flush()

    run_trio(run)


@click.command("witness", cls=SiteCommand)
@click.option(
    "--listen",
    required=True,
    help="HOST:PORT to serve on (a third host's address; the site file's [site] witness names it).",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The file the witness keeps its record in (written before every answer).",
)
@friendly
def witness_cmd(listen: str, state_file: Path) -> None:
    """The witness of a mirrored pair: says which node's database may serve alone (docs/architecture.md)."""
    from ..engine import WitnessError, serve_witness

    host, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit():
        raise click.BadParameter(f"{listen!r}: HOST:PORT", param_hint="--listen")

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_witness, host, int(port), state_file)
            click.echo(f"witness (pid {os.getpid()}) on {host}:{port}, its record in {state_file}")
            sys.stdout.flush()

    try:
        run_trio(run)
    except WitnessError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("cluster", cls=SiteGroup)
def cluster() -> None:
    """The active/standby pair: start it, see it, switch it over."""


@cluster.command("status")
@site_option
@click.option("--json", "as_json", is_flag=True)
@watch_options
@friendly
def cluster_status(site_path: Path | None, as_json: bool, watch: bool, every: float) -> None:
    """Who holds the VIP, the epoch, the lease, each node's health."""
    import time as _time

    from storage import ClusterStore

    from ..console import pair_view, site_mirror

    site = load_site(site_path)
    mirror = site_mirror(site) if site.mirror is not None else None
    store = ClusterStore(site.db_file) if mirror is None else None

    def render() -> str:
        view = pair_view(site, store=store, mirror=mirror)
        if as_json:
            return json.dumps(view.to_json(), indent=2)
        lease, now = view.lease, _time.time_ns() // 1000
        lines = [
            f"VIP {site.vip}:{site.port} held by {view.holder_at(now) or 'nobody'}; epoch {lease.epoch}; "
            f"lease {view.lease_left_s(now):.2f} s left"
            + (f"; switchover to {lease.switchover_to} requested" if lease.switchover_to else "")
        ]
        for name, beat in sorted(view.nodes.items()):
            health = "alive" if view.alive(name, now) else f"silent {view.silent_s(name, now):.1f} s"
            lines.append(
                f"  node {name}: {beat.role:<8} pid {beat.pid:<7} {beat.address:<12} epoch {beat.epoch:<4} {health}"
            )
        for name, db in sorted(view.databases.items()):
            replicas: list[dict[str, object]] = db["replicas"]
            streams = ", ".join(
                f"{r['node']} {r['state']} {r['sync_state']}, {r['flush_lag_bytes']} B behind" for r in replicas
            )
            lines.append(
                f"  database {name}: {db['role']:<8} {db['where']:<21} epoch {db['epoch']}"
                + (f"; replicas: {streams}" if streams else "; no replica streaming" if db["role"] == "primary" else "")
            )
        return "\n".join(lines)

    show(render, watch=watch, every=every)


def _site_mirror(site: Site) -> Mirror:
    from ..console import site_mirror

    return site_mirror(site)


@cluster.command("switchover")
@site_option
@click.option("--to", "to_node", required=True, help="The node that should hold the VIP.")
@friendly
def cluster_switchover(site_path: Path | None, to_node: str) -> None:
    """Hand the VIP to the other node in an orderly way (the active releases its lease)."""
    from ..console import request_switchover

    lease = request_switchover(load_site(site_path), to_node)
    click.echo(f"switchover to {to_node} requested (holder {lease.holder}, epoch {lease.epoch})")


@cluster.command("rejoin")
@site_option
@click.argument("node_name", metavar="NODE")
@friendly
def cluster_rejoin(site_path: Path | None, node_name: str) -> None:
    """Mirrored storage: make NODE's database the replica of the other's primary again
    (pg_rewind of what diverged, or a base backup), on the machine that holds its pg_data."""
    site = load_site(site_path)
    if site.mirror is None:
        raise SiteError(f"{site.path}: cluster rejoin is for mirrored storage ([site] mirror)")
    if node_name not in {n.name for n in site.nodes}:
        raise SiteError(f"node {node_name!r} is not in the site")
    report = _site_mirror(site).rejoin(node_name)
    how = "pg_rewind" if report.how == "rewind" else f"a base backup ({report.fallback_reason})"
    click.echo(
        f"node {node_name}'s database rejoined node {report.source}'s by {how} in {report.seconds:.2f} s; "
        f"streaming{' in sync' if site.mirror == 'sync' else ''} after {report.in_sync_after:.2f} s"
    )


@cluster.command("up")
@site_option
@click.option("--panels", type=int, default=0, show_default=True, help="Also run a fleet of this many panels.")
@click.option("--no-restart", is_flag=True, help="Do not restart a node process that dies.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Each node serves its Prometheus metrics on its own address at this port (and --console reads them); "
    "the fleet of --panels on 127.0.0.1 at this port.",
)
@console_options
@friendly
def cluster_up(
    site_path: Path | None,
    panels: int,
    no_restart: bool,
    metrics_port: int | None,
    console_at: str | None,
    token: str | None,
) -> None:
    """Start both nodes (restarted if they die) and optionally a fleet, for a local try-out."""
    from ..engine import Supervised, Supervisor, node_command

    if site_path is None:
        raise SiteError("cluster up needs --site (the nodes share its store)")
    site = load_site(site_path)
    if metrics_port and panels and any(n.address == "127.0.0.1" for n in site.nodes):
        raise SiteError(
            f"--metrics-port {metrics_port}: the fleet's metrics go to 127.0.0.1, a node's own address here"
        )
    metrics = {n.name: (n.address, metrics_port) for n in site.nodes} if metrics_port else {}
    children = [
        Supervised(
            name=n.name,
            command=node_command(
                n.name, str(site_path), *(("--metrics", f"{n.address}:{metrics_port}") if metrics_port else ())
            ),
            restart=not no_restart,
        )
        for n in site.nodes
    ]
    supervisor = Supervisor(children)
    console = console_settings(site, console_at, token, metrics) if console_at else None  # refused before any start

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            click.echo(f"nodes {', '.join(c.name for c in children)} started; Ctrl-C stops them")
            if console is not None:
                await _start_console(nursery, console)
            if panels:
                import dataclasses as _dc

                from emulator import Fleet, Workload

                fleet_site = _dc.replace(site, fleet=_dc.replace(site.fleet, panels=panels))
                fleet = Fleet(
                    [fleet_site.panel_settings(pid) for pid in fleet_site.panel_ids()], Workload(rate=site.fleet.rate)
                )
                if metrics_port:
                    from ..engine import fleet_render, serve_metrics

                    await nursery.start(serve_metrics, fleet_render(fleet), "127.0.0.1", metrics_port)
                    click.echo(f"the fleet's metrics on http://127.0.0.1:{metrics_port}/metrics")
                await nursery.start(fleet.run)
            while True:
                await trio.sleep(2)
                pids = ", ".join(f"{c.name}={c.pid}" for c in children)
                click.echo(f"processes {pids}" + (f"; {fleet.statistics()!r}" if panels else ""))

    run_console_trio(run)


async def _start_console(nursery: trio.Nursery, settings: ConsoleSettings) -> None:
    """The console waits for the nodes to make the store (a fresh site has none before)."""
    from ..console import serve_console

    if settings.site.mirror is None:
        with trio.move_on_after(10):
            while not settings.site.db_file.exists():  # noqa: ASYNC110 (another process makes it: no event)
                await trio.sleep(0.1)
    await nursery.start(serve_console, settings)
    click.echo(console_started(settings))
