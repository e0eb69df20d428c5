"""`fieldsync lab`: the pair on real hosts (network namespaces), the VIP moved by keepalived, host faults."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from ..lab import NODE_HOSTS, VIP, Lab, LabError, LabSpec, LabStatus, node_address, panel_lab_address
from ._common import friendly
from ._console import console_token_option
from ._defaults import SiteGroup

__all__ = ["lab"]

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=".",
    show_default=True,
    help="The lab's directory (its lab.json, site file, logs).",
)
_node_host = click.argument("host", type=click.Choice(NODE_HOSTS))


def _load(directory: Path) -> Lab:
    return Lab.load(directory.resolve())


@click.group("lab", cls=SiteGroup)
def lab() -> None:
    """The pair on real hosts: network namespaces, a bridge, keepalived moving the VIP (root only)."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Once: the clean-up that follows must not be interrupted in turn.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@lab.command("up")
@click.option("--name", required=True, help="The lab's name: namespaces fsl-<name>-<host> (1-12 of a-z, 0-9).")
@_dir_option
@click.option("--panels", type=int, default=4, show_default=True, help="Panels of the site (addresses 198.18.1.x).")
@click.option("--mode", type=click.Choice(["punch-out", "host-initiated", "mixed"]), default="mixed", show_default=True)
@click.option("--advert-int", type=float, default=0.1, show_default=True, help="VRRP advertisement interval, s.")
@click.option("--vrid", type=click.IntRange(1, 255), default=51, show_default=True, help="VRRP virtual router id.")
@click.option(
    "--heartbeat-ms",
    type=int,
    default=1000,
    show_default=True,
    help="The sessions' heartbeat interval; a busy panel gives up on a silent node after 3 of them.",
)
@click.option(
    "--idle-ms",
    type=int,
    default=10_000,
    show_default=True,
    help="A quiet panel's probe interval (>= --heartbeat-ms); it gives up after it and 3 heartbeats.",
)
@click.option("--port", type=int, default=30002, show_default=True, help="The VIP's port.")
@click.option("--no-stonith", is_flag=True, help="The nodes never SIGKILL each other (the lease is the only fence).")
@click.option(
    "--no-vrrp-gate", is_flag=True, help="The nodes ignore VRRP (a negative control: the lease and the VIP part)."
)
@click.option(
    "--mirror",
    type=click.Choice(["sync", "async"]),
    default=None,
    help="Mirrored storage: each node host runs its own PostgreSQL (A's the primary, B's its replica); "
    "default: the shared SQLite store.",
)
@click.option(
    "--witness",
    is_flag=True,
    help="With --mirror: a witness on the panel host (198.18.0.200:5440), so the primary may serve alone.",
)
@click.option(
    "--console",
    "console_at",
    metavar="HOST:PORT",
    help="Also serve the web console here, on this machine (docs/console.md): it reads the lab from the "
    "panel host, the nodes serving metrics for it; `lab down` stops it.",
)
@console_token_option("--console-token")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for a host to serve.")
@friendly
def lab_up(
    name: str,
    directory: Path,
    panels: int,
    mode: str,
    advert_int: float,
    vrid: int,
    heartbeat_ms: int,
    idle_ms: int,
    port: int,
    no_stonith: bool,
    no_vrrp_gate: bool,
    mirror: str | None,
    witness: bool,
    console_at: str | None,
    token: str | None,
    timeout: float,
) -> None:
    """Build the lab, start keepalived and a node on hosts A and B, wait until one serves on the VIP."""
    if console_at is not None:
        _check_console(console_at, token)
    spec = LabSpec(
        name=name,
        directory=directory.resolve(),
        panels=panels,
        mode=mode,
        advert_int=advert_int,
        virtual_router_id=vrid,
        heartbeat_ms=heartbeat_ms,
        idle_ms=idle_ms,
        port=port,
        stonith=not no_stonith,
        vrrp_gate=not no_vrrp_gate,
        mirror=mirror,
        witness=witness,
        console=console_at,
    )
    started = time.monotonic()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        the_lab = Lab(spec, console_token=token)
        status = the_lab.up(timeout=timeout)
    except KeyboardInterrupt:
        raise click.ClickException("interrupted: everything the lab had made is removed") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    d, ns = spec.directory, spec.namespace
    last = panel_lab_address(panels)
    click.echo(f"lab {name} up in {time.monotonic() - started:.1f} s ({d})")
    click.echo(f"  switch  {ns('sw')}: br0, ports A, B, panels")
    for host in NODE_HOSTS:
        logs = f"{d}/keepalived-{host}.log, node-{host}.log"
        click.echo(f"  host    {ns(host)}: eth0 {node_address(host)}/16; logs {logs}")
        if mirror is not None:
            url = spec.database_urls()[host]
            click.echo(f"          PostgreSQL {url} ({mirror} mirror), data {spec.pg_dir}/pg-{host}")
    click.echo(f"  panels  {ns('panels')}: eth0 198.18.0.200/16, panels 198.18.1.1 .. {last} (:3001)")
    if witness:
        click.echo(f"          witness {spec.witness_address()}; its record {spec.file('witness', 'panels', 'json')}")
    click.echo(
        f"  VIP     {VIP}:{port} on {', '.join(status.masters())} (VRRP MASTER); "
        f"lease held by {status.holder}, epoch {status.epoch}"
    )
    click.echo(f"  site    {spec.site_path}")
    if console_at is not None:
        url = f"http://{console_at}/"
        link = f"; open {url}?token={urllib.parse.quote(token, safe='')}" if token else ""
        click.echo(f"  console {url} (pid {the_lab.processes[-1]['pid']}){link}; log {d}/console-panels.log")
    click.echo("run the panels in the panel host:")
    click.echo(f"  fieldsync lab exec panels --dir {d} -- fieldsync emulate --site {spec.site_path}")
    click.echo(f"  (the same: ip netns exec {ns('panels')} fieldsync emulate --site {spec.site_path})")
    click.echo(f"faults: fieldsync lab power-off|power-on|kill|start A --dir {d}")
    click.echo(f"        fieldsync lab nic A down|up --dir {d}")
    click.echo(f"see it: fieldsync lab status --dir {d}; remove it: fieldsync lab down --dir {d}")


def _check_console(console_at: str, token: str | None) -> None:
    """The console's address and token, and that it can bind there now: before the lab is
    built, not after (the console itself binds it once the lab serves)."""
    import socket

    from ..console import ConsoleError, check_listen
    from ..site import parse_address

    if ":" not in console_at:
        raise click.ClickException(f"--console {console_at!r}: expected HOST:PORT")
    host, port = parse_address(console_at, 0)
    if not 0 < port < 65536:
        raise click.ClickException(f"--console {console_at}: the port must be 1..65535")
    try:
        check_listen(host, token)
        socket.create_server((host, port)).close()
    except ConsoleError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # create_server's strerror names the address again
        raise click.ClickException(f"the console cannot listen on {host}:{port}: {why}") from None


def _status_json(status: LabStatus) -> dict[str, Any]:
    return {
        "hosts": [dataclasses.asdict(h) | {"master": h.master} for h in status.hosts],
        "holder": status.holder,
        "epoch": status.epoch,
        "lease_left_s": round(status.lease_left, 3),
        "serving": status.serving(),
    }


@lab.command("status")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@friendly
def lab_status(directory: Path, as_json: bool) -> None:
    """Each host's VRRP state, keepalived, VIP and node; the lease holder and its epoch."""
    the_lab = _load(directory)
    status = the_lab.status()
    console = the_lab.console_url()
    if as_json:
        click.echo(json.dumps(_status_json(status) | {"console": console}, indent=2))
        return
    click.echo(f"lab {the_lab.spec.name} ({the_lab.spec.directory})")
    for h in status.hosts:
        if h.host not in NODE_HOSTS:
            click.echo(f"  {h.host:<6} {h.namespace:<20} link {'up' if h.link else 'DOWN'}")
            continue
        click.echo(
            f"  {h.host:<6} {h.namespace:<20} VRRP {h.vrrp_state:<7}"
            f" keepalived {'alive' if h.keepalived else 'DEAD ':<5}"
            f"  VIP {'yes' if h.vip else 'no ':<3}  node {'alive' if h.node else 'DEAD ':<5}"
            f"  link {'up' if h.link else 'DOWN'}{'  POWERED OFF' if h.powered_off else ''}"
        )
    left = f", {status.lease_left:.2f} s left" if status.holder else ""
    click.echo(f"  lease held by {status.holder or 'nobody'}, epoch {status.epoch}{left}")
    if the_lab.spec.console is not None:
        click.echo(f"  console {console or 'DEAD (' + str(the_lab.spec.file('console', 'panels', 'log')) + ')'}")
    masters = status.masters()
    if len(masters) > 1:
        click.echo(f"  SPLIT BRAIN: {' and '.join(masters)} are both VRRP MASTER")


@lab.command("down")
@_dir_option
@friendly
def lab_down(directory: Path) -> None:
    """Stop every process the lab started (by recorded pid) and remove its namespaces."""
    stopped, removed = _load(directory).down()
    click.echo(f"stopped {len(stopped)} processes; removed {', '.join(removed) or 'no namespaces'}")


def _fault(help_text: str) -> Callable[[Callable[[Lab, str], str]], Any]:
    """A host fault as a subcommand: HOST, --dir, the one line of what was done."""

    def wrap(fn: Callable[[Lab, str], str]) -> Any:
        @_node_host
        @_dir_option
        @friendly
        def command(host: str, directory: Path) -> None:
            click.echo(fn(_load(directory), host))

        command.__doc__ = help_text
        return lab.command(fn.__name__.replace("_", "-"))(command)

    return wrap


@_fault("HOST loses power: its processes freeze (SIGSTOP), its switch port goes down; panels hear silence.")
def power_off(the_lab: Lab, host: str) -> str:
    the_lab.power_off(host)
    return f"{host} powered off (processes stopped, switch port down)"


@_fault("The reverse of power-off: HOST's processes carry on (SIGCONT), its switch port comes up.")
def power_on(the_lab: Lab, host: str) -> str:
    the_lab.power_on(host)
    return f"{host} powered on (processes continued, switch port up)"


@_fault("HOST crashes: SIGKILL of its node's and its keepalived's process groups (the VIP stays on its eth0).")
def kill(the_lab: Lab, host: str) -> str:
    pids = the_lab.kill(host)
    return f"{host}: killed {', '.join(map(str, pids)) or 'nothing (nothing ran)'}"


@_fault("Start what of HOST is not running (after kill, or a node shot by STONITH).")
def start(the_lab: Lab, host: str) -> str:
    started = the_lab.start(host)
    return f"{host}: started {', '.join(started) or 'nothing (all running)'}"


@lab.command("nic")
@click.argument("host", type=click.Choice([*NODE_HOSTS, "panels"]))
@click.argument("state", type=click.Choice(["up", "down"]))
@_dir_option
@friendly
def lab_nic(host: str, state: str, directory: Path) -> None:
    """Set HOST's own eth0 down or up (keepalived on a node host goes to FAULT and back)."""
    _load(directory).nic(host, up=state == "up")
    click.echo(f"{host}: eth0 {state}")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("host", type=click.Choice(["A", "B", "panels", "sw"]))
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@_dir_option
@friendly
def lab_exec(host: str, argv: tuple[str, ...], directory: Path) -> None:
    """Run a command inside HOST's namespace (e.g. -- fieldsync emulate --site DIR/site.toml)."""
    the_lab = _load(directory)
    program = list(argv)
    if program[0] == "fieldsync":  # this installation's, whatever PATH says inside
        program = [sys.executable, "-m", "fieldsync.cli", *program[1:]]
    try:
        os.execvp("ip", ["ip", "netns", "exec", the_lab.spec.namespace(host), *program])
    except OSError as exc:
        raise LabError(f"cannot run ip netns exec: {exc.strerror}") from None
