"""`fieldsync node` and `fieldsync cluster`: the active/standby pair."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import trio

from ..site import SiteError, load_site
from ._common import friendly, metrics_address, metrics_options, run_trio, show, watch_options
from ._defaults import SiteCommand, SiteGroup, site_option

__all__ = ["cluster", "node_cmd"]


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
    from ..engine import ClusterNode, metrics_registry, serve_metrics

    metrics_at = metrics_address(metrics, anywhere=metrics_anywhere)
    site = load_site(site_path)
    settings = site.cluster_settings(
        node_id, stonith=not no_stonith, failback=failback, lease=lease, dead_after=dead_after
    )
    node = ClusterNode(settings)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if metrics_at is not None:
                await nursery.start(serve_metrics, metrics_registry(node), *metrics_at)
            await nursery.start(node.run)
            click.echo(
                f"node {node_id} (pid {os.getpid()}) up as standby; VIP {site.vip}:{site.port}"
                + (f"; metrics on http://{metrics_at[0]}:{metrics_at[1]}/metrics" if metrics_at else "")
            )
            sys.stdout.flush()

    run_trio(run)


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

    site = load_site(site_path)
    store = ClusterStore(site.db_file)

    def render() -> str:
        lease, nodes = store.lease(), store.nodes()
        now = _time.time_ns() // 1000
        if as_json:
            lease_d = dataclasses_asdict(lease)
            return json.dumps(
                {"lease": lease_d, "nodes": {k: dataclasses_asdict(v) for k, v in nodes.items()}}, indent=2
            )
        holder = lease.holder if lease.held_at(now) else "nobody"
        left = max(0, lease.lease_until_us - now) / 1e6
        lines = [
            f"VIP {site.vip}:{site.port} held by {holder}; epoch {lease.epoch}; lease {left:.2f} s left"
            + (f"; switchover to {lease.switchover_to} requested" if lease.switchover_to else "")
        ]
        for name, beat in sorted(nodes.items()):
            age = (now - beat.heartbeat_us) / 1e6
            health = "alive" if age < 1.0 else f"silent {age:.1f} s"
            lines.append(
                f"  node {name}: {beat.role:<8} pid {beat.pid:<7} {beat.address:<12} epoch {beat.epoch:<4} {health}"
            )
        return "\n".join(lines)

    show(render, watch=watch, every=every)


def dataclasses_asdict(obj: object) -> dict[str, object]:
    import dataclasses as _dc

    return _dc.asdict(obj)  # type: ignore[call-overload, no-any-return]


@cluster.command("switchover")
@site_option
@click.option("--to", "to_node", required=True, help="The node that should hold the VIP.")
@friendly
def cluster_switchover(site_path: Path | None, to_node: str) -> None:
    """Hand the VIP to the other node in an orderly way (the active releases its lease)."""
    from storage import ClusterStore

    site = load_site(site_path)
    if to_node not in {n.name for n in site.nodes}:
        raise SiteError(f"node {to_node!r} is not in the site")
    lease = ClusterStore(site.db_file).request_switchover(to_node)
    click.echo(f"switchover to {to_node} requested (holder {lease.holder}, epoch {lease.epoch})")


@cluster.command("up")
@site_option
@click.option("--panels", type=int, default=0, show_default=True, help="Also run a fleet of this many panels.")
@click.option("--no-restart", is_flag=True, help="Do not restart a node process that dies.")
@friendly
def cluster_up(site_path: Path | None, panels: int, no_restart: bool) -> None:
    """Start both nodes (restarted if they die) and optionally a fleet, for a local try-out."""
    from ..engine import Supervised, Supervisor, node_command

    if site_path is None:
        raise SiteError("cluster up needs --site (the nodes share its store)")
    site = load_site(site_path)
    children = [
        Supervised(name=n.name, command=node_command(n.name, str(site_path)), restart=not no_restart)
        for n in site.nodes
    ]
    supervisor = Supervisor(children)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            click.echo(f"nodes {', '.join(c.name for c in children)} started; Ctrl-C stops them")
            if panels:
                import dataclasses as _dc

                from emulator import Fleet, Workload

                fleet_site = _dc.replace(site, fleet=_dc.replace(site.fleet, panels=panels))
                fleet = Fleet(
                    [fleet_site.panel_settings(pid) for pid in fleet_site.panel_ids()], Workload(rate=site.fleet.rate)
                )
                await nursery.start(fleet.run)
            while True:
                await trio.sleep(2)
                pids = ", ".join(f"{c.name}={c.pid}" for c in children)
                click.echo(f"processes {pids}" + (f"; {fleet.statistics()!r}" if panels else ""))

    run_trio(run)
