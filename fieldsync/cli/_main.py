"""The ``fieldsync`` command. Every flag's default can come from a site file (--site)."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio
import trio.testing

from protocol import (
    AccessLevel,
    Cardholder,
    DeleteAccessLevel,
    DeleteCardholder,
    Door,
    DoorMode,
    Interval,
    LevelEntry,
    PutAccessLevel,
    PutCardholder,
    PutDoor,
    PutSchedule,
    Schedule,
)
from protocol.streams import LinkError
from storage import ConfigStore, EventStore, StoreError

from ..harness import FaultError, ScenarioError
from ..site import Site, SiteError, load_site, parse_address, parse_size
from ..site import pki as pki_mod

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn the errors a user can cause into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SiteError, StoreError, LinkError, pki_mod.PkiError, ValueError, ScenarioError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


site_option = click.option(
    "--site", "site_path", type=click.Path(path_type=Path, dir_okay=False), help="Site file (TOML) with the defaults."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fieldsync")
@click.option(
    "--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def main(log_level: str) -> None:
    """fieldsync: field panels, a sync-engine cluster, faults, and the promises P1-P7."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")


# -- demo --------------------------------------------------------------------------------


@main.command()
@click.option("--panels", default=200, show_default=True, help="Emulated panels (half punch-out, half host-initiated).")
@click.option("--rate", default=2.0, show_default=True, help="Card swipes per second per panel.")
@click.option(
    "--port", default=30002, show_default=True, help="VIP port (panels listen on port + 1... for host-initiated)."
)
@click.option("--keep", type=click.Path(path_type=Path, file_okay=False), help="Work in this directory and keep it.")
@click.option("--protocol-only", is_flag=True, help="Instead: narrate one panel/node session, no I/O.")
def demo(panels: int, rate: float, port: int, keep: Path | None, protocol_only: bool) -> None:
    """The main demo: a two-node cluster, 200 panels, kill -9, failover, replay, switchover, promise report."""
    if protocol_only:
        from ..demo import run_protocol_demo as run

        if run(click.echo) != 1000:
            raise click.ClickException("the protocol demo did not get every event acknowledged")
        return
    from ..demo import run_demo

    if not run_demo(panels=panels, rate=rate, port=port, keep=keep):
        raise click.ClickException("a promise broke; see the report above")


# -- pki ---------------------------------------------------------------------------------


@main.group()
def pki() -> None:
    """Make the site CA and issue panel and node certificates."""


@pki.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--site-name", default="fieldsync site", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (every certificate must be issued again).")
@_friendly
def pki_init(directory: Path, site_name: str, force: bool) -> None:
    """Make a site CA in DIRECTORY."""
    cert = pki_mod.init_ca(directory, site=site_name, force=force)
    click.echo(f"site CA written: {cert}")


@pki.command("issue")
@click.argument("role", type=click.Choice(["panel", "node"]))
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=Path("pki"), show_default=True
)
@_friendly
def pki_issue(role: str, names: tuple[str, ...], directory: Path) -> None:
    """Issue certificates: `pki issue panel 17 18`, `pki issue panel 1-200`, `pki issue node A`."""
    expanded: list[str] = []
    for name in names:
        if role == "panel" and "-" in name:
            lo, hi = name.split("-", 1)
            expanded += [str(i) for i in range(int(lo), int(hi) + 1)]
        else:
            expanded.append(name)
    for name in expanded:
        files = pki_mod.issue(directory, role, name)
    click.echo(f"issued {len(expanded)} {role} certificate(s) in {directory} (last: {files.cert.name})")


# -- serve -------------------------------------------------------------------------------


@main.command()
@site_option
@click.option("--node-id", default="A", show_default=True)
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False), help="SQLite store [site: site.db].")
@click.option("--listen", help="HOST:PORT panels punch out to [site: vip:port].")
@click.option("--no-listen", is_flag=True, help="Accept no inbound sessions (dial only).")
@click.option(
    "--dial",
    multiple=True,
    help="ID=HOST[:PORT] of a host-initiated panel; repeatable [site: its host-initiated panels].",
)
@click.option(
    "--pki",
    "pki_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory with ca.pem, node-ID.pem/.key.",
)
@click.option(
    "--serial",
    "serial_paths",
    multiple=True,
    help="[ID=]DEVICE: serve the panel on this serial line; repeatable [site: panels' node_serial].",
)
@click.option("--baud", type=int, default=115_200, show_default=True, help="Baud rate of --serial lines.")
@click.option("--parity", type=click.Choice(["none", "even", "odd"]), default="none", show_default=True)
@click.option(
    "--insecure", is_flag=True, help="Plain text; refused unless every address is loopback and every line a pty."
)
@click.option("--heartbeat-ms", type=int)
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@_friendly
def serve(
    site_path: Path | None,
    node_id: str,
    db: Path | None,
    listen: str | None,
    no_listen: bool,
    dial: tuple[str, ...],
    pki_dir: Path | None,
    serial_paths: tuple[str, ...],
    baud: int,
    parity: str,
    insecure: bool,
    heartbeat_ms: int | None,
    duration: float | None,
) -> None:
    """Run a sync-engine node: accept panels on :30002, dial host-initiated ones on :3001,
    serve panels on serial lines."""
    from protocol.streams import SerialLine

    from ..engine import Node, NodeSettings

    site = _site(site_path, pki_dir=pki_dir, insecure=insecure)
    lines: list[tuple[int | None, SerialLine]] = []
    for item in serial_paths:
        ident, sep, device = item.partition("=")
        if not sep:
            ident, device = "", item
        if ident and not ident.isdigit():
            raise SiteError(f"--serial {item!r}: expected [ID=]DEVICE")
        lines.append((int(ident) if ident else None, SerialLine(path=Path(device), baud=baud, parity=parity)))  # type: ignore[arg-type]
    if not serial_paths:
        lines.extend(site.node_serial_lines())
    listen_addr = None if no_listen else parse_address(listen or f"{site.vip}:{site.port}", site.port)
    dials: list[tuple[int, str, int]] = []
    if dial:
        for item in dial:
            ident, _, addr = item.partition("=")
            if not ident.isdigit() or not addr:
                raise SiteError(f"--dial {item!r}: expected ID=HOST[:PORT]")
            host, port = parse_address(addr, site.panel_port)
            dials.append((int(ident), host, port))
    elif site.path is not None:
        dials = list(site.dials())
    site.check_transport(
        *([listen_addr[0]] if listen_addr else []), *(h for _, h, _ in dials), serial=tuple(ln.path for _, ln in lines)
    )
    settings = NodeSettings(
        node_id=node_id,
        db=db or site.db,
        listen=listen_addr,
        dial=tuple(dials),
        serial=tuple(lines),
        tls=site.tls_for("node", node_id),
        heartbeat_ms=heartbeat_ms or site.heartbeat_ms,
        # A site file lists the panels; without one, any panel with a site certificate is served.
        known_panels=frozenset(site.panel_ids()) if site.path is not None else None,
    )
    node = Node(settings)

    async def report(task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            busy_before, since = 0.0, time.perf_counter()
            while True:
                await trio.sleep(5)
                s = node.statistics()
                now = time.perf_counter()
                busy = (s.commit_s - busy_before) / (now - since)
                busy_before, since = s.commit_s, now
                click.echo(
                    f"sessions {s.sessions} stored {s.events_stored} dup {s.events_duplicate} "
                    f"lost(declared) {s.declared_lost} commits {s.commits} (writer busy {busy:.0%}) "
                    f"rejected {s.rejected} errors {s.protocol_errors}/{s.link_errors}"
                    + (f" line noise skipped {s.bytes_skipped} B, bad frames {s.bad_frames}" if lines else "")
                )

    async def run() -> None:
        # SIGINT and SIGTERM (and the end of --duration) are a planned stop: the node
        # stores and acknowledges what it received and says BYE(SHUTTING_DOWN) to every panel.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                click.echo(
                    f"node {node_id} epoch {node.epoch}: listening on {listen_addr or '-'}, "
                    f"dialing {len(dials)} panel(s), {len(lines)} serial line(s), "
                    f"{'plain (loopback)' if settings.tls is None else 'mutual TLS'}, store {settings.db}"
                )
                sys.stdout.flush()
                reporting = await nursery.start(report)
                with trio.move_on_after(duration if duration is not None else float("inf")):
                    async for signum in signals:
                        click.echo(f"{signal.Signals(signum).name}: stopping", err=True)
                        break
                reporting.cancel()
                node.stop()
                with trio.move_on_after(settings.drain_timeout + 3):
                    await node.stopped.wait()
                nursery.cancel_scope.cancel()
        stats = node.statistics()
        click.echo(f"node {node_id} stopped: {stats.events_stored} events stored, said BYE to every session")

    _run_trio(run)


@main.command("line")
@click.option(
    "--link-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Make DIR/a and DIR/b stable symlinks to the two ends.",
)
@click.option("--garbage-rate", type=float, default=0.0, show_default=True, help="Noise bursts per byte carried.")
@click.option("--drop-rate", type=float, default=0.0, show_default=True, help="Bytes lost per byte carried.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@_friendly
def line_cmd(link_dir: Path | None, garbage_rate: float, drop_rate: float, seed: int, duration: float | None) -> None:
    """Make a virtual serial line (two joined pseudo-terminals, optionally noisy) and keep it up.

    Open one end with `fieldsync serve --serial` and the other with `fieldsync emulate --serial`.
    """
    from ..harness import VirtualLine

    with VirtualLine(link_dir=link_dir, seed=seed) as line:
        line.set_noise(garbage_rate=garbage_rate, drop_rate=drop_rate)
        click.echo(f"end a: {line.a}  ({line.a_device})")
        click.echo(f"end b: {line.b}  ({line.b_device})")
        sys.stdout.flush()

        async def run() -> None:
            with trio.move_on_after(duration if duration is not None else float("inf")):
                while True:
                    await trio.sleep(5)
                    t = line.totals()
                    click.echo(f"carried {t.forwarded} B, noise {t.garbage} B, lost {t.dropped} B")

        _run_trio(run)


# -- cluster -----------------------------------------------------------------------------


@main.command("node")
@click.option("--id", "node_id", required=True, help="This node's name in the site file (A or B).")
@site_option
@click.option("--no-stonith", is_flag=True, help="Never SIGKILL a silent active; wait for its lease to expire.")
@click.option("--failback", is_flag=True, help="Take the VIP back once this node is back and in sync.")
@click.option("--lease", type=float, default=1.0, show_default=True, help="Lease length, seconds.")
@click.option(
    "--dead-after", type=float, default=0.3, show_default=True, help="Heartbeat silence that makes a node dead."
)
@_friendly
def node_cmd(
    node_id: str,
    site_path: Path | None,
    no_stonith: bool,
    failback: bool,
    lease: float,
    dead_after: float,
) -> None:
    """Run one node of the active/standby pair (shared store, VIP on 30002)."""
    from ..engine import ClusterNode

    site = load_site(site_path)
    settings = site.cluster_settings(
        node_id, stonith=not no_stonith, failback=failback, lease=lease, dead_after=dead_after
    )
    node = ClusterNode(settings)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            click.echo(f"node {node_id} (pid {os.getpid()}) up as standby; VIP {site.vip}:{site.port}")
            sys.stdout.flush()

    _run_trio(run)


@main.group()
def cluster() -> None:
    """The active/standby pair: start it, see it, switch it over."""


@cluster.command("status")
@site_option
@click.option("--json", "as_json", is_flag=True)
@_friendly
def cluster_status(site_path: Path | None, as_json: bool) -> None:
    """Who holds the VIP, the epoch, the lease, each node's health."""
    import time as _time

    from storage import ClusterStore

    site = load_site(site_path)
    store = ClusterStore(site.db)
    lease, nodes = store.lease(), store.nodes()
    now = _time.time_ns() // 1000
    if as_json:
        click.echo(
            json.dumps(
                {"lease": dataclasses_asdict(lease), "nodes": {k: dataclasses_asdict(v) for k, v in nodes.items()}},
                indent=2,
            )
        )
        return
    holder = lease.holder if lease.held_at(now) else "nobody"
    left = max(0, lease.lease_until_us - now) / 1e6
    click.echo(
        f"VIP {site.vip}:{site.port} held by {holder}; epoch {lease.epoch}; lease {left:.2f} s left"
        + (f"; switchover to {lease.switchover_to} requested" if lease.switchover_to else "")
    )
    for name, beat in sorted(nodes.items()):
        age = (now - beat.heartbeat_us) / 1e6
        health = "alive" if age < 1.0 else f"silent {age:.1f} s"
        click.echo(f"  node {name}: {beat.role:<8} pid {beat.pid:<7} {beat.address:<12} epoch {beat.epoch:<4} {health}")


def dataclasses_asdict(obj: object) -> dict[str, object]:
    import dataclasses as _dc

    return _dc.asdict(obj)  # type: ignore[call-overload, no-any-return]


@cluster.command("switchover")
@site_option
@click.option("--to", "to_node", required=True, help="The node that should hold the VIP.")
@_friendly
def cluster_switchover(site_path: Path | None, to_node: str) -> None:
    """Hand the VIP to the other node in an orderly way (the active releases its lease)."""
    from storage import ClusterStore

    site = load_site(site_path)
    if to_node not in {n.name for n in site.nodes}:
        raise SiteError(f"node {to_node!r} is not in the site")
    lease = ClusterStore(site.db).request_switchover(to_node)
    click.echo(f"switchover to {to_node} requested (holder {lease.holder}, epoch {lease.epoch})")


@cluster.command("up")
@site_option
@click.option("--panels", type=int, default=0, show_default=True, help="Also run a fleet of this many panels.")
@click.option("--no-restart", is_flag=True, help="Do not restart a node process that dies.")
@_friendly
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

    _run_trio(run)


# -- emulate -----------------------------------------------------------------------------


@main.command()
@site_option
@click.option("--panels", type=int, help="How many panels [site: fleet.panels].")
@click.option("--first-id", type=int, help="First panel id [site: fleet.first_id].")
@click.option("--mode", type=click.Choice(["punch-out", "host-initiated", "mixed"]))
@click.option("--server", help="HOST:PORT a punch-out panel dials [site: vip:port].")
@click.option(
    "--serial",
    "serial_paths",
    multiple=True,
    help="DEVICE: one serial panel on this line (ids from --first-id); repeatable; replaces --panels.",
)
@click.option("--baud", type=int, default=115_200, show_default=True, help="Baud rate of --serial lines.")
@click.option("--throttle", is_flag=True, help="Write no faster than the baud rate allows.")
@click.option(
    "--osdp-readers",
    type=click.IntRange(0, 32),
    default=0,
    show_default=True,
    help="Give each panel this many libosdp card readers on a virtual OSDP line; swipes go through them.",
)
@click.option("--rate", type=float, help="Swipes per second per panel.")
@click.option("--buffer", "buffer_size", help="Buffer budget per panel, e.g. 32MiB.")
@click.option("--policy", type=click.Choice(["drop_oldest", "refuse_newest", "block"]))
@click.option("--flash-dir", type=click.Path(path_type=Path, file_okay=False), help="Keep buffers in flash files here.")
@click.option("--pki", "pki_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--insecure", is_flag=True, help="Plain TCP; refused unless every address is loopback.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("--seed", type=int, default=0, show_default=True)
@_friendly
def emulate(
    site_path: Path | None,
    panels: int | None,
    first_id: int | None,
    mode: str | None,
    server: str | None,
    serial_paths: tuple[str, ...],
    baud: int,
    throttle: bool,
    osdp_readers: int,
    rate: float | None,
    buffer_size: str | None,
    policy: str | None,
    flash_dir: Path | None,
    pki_dir: Path | None,
    insecure: bool,
    duration: float | None,
    seed: int,
) -> None:
    """Run a fleet of emulated panels with card-swipe traffic."""
    import dataclasses

    from emulator import BusSwiper, Fleet, Workload
    from storage import OverflowPolicy

    site = _site(site_path, pki_dir=pki_dir, insecure=insecure)
    given: dict[str, Any] = {
        "panels": panels,
        "first_id": first_id,
        "mode": mode,
        "rate": rate,
        "buffer": parse_size(buffer_size) if buffer_size else None,
        "policy": OverflowPolicy(policy) if policy else None,
        "flash_dir": flash_dir,
    }
    fleet_spec = dataclasses.replace(site.fleet, **{k: v for k, v in given.items() if v is not None})
    if server:
        host, port = parse_address(server, site.port)
        site = dataclasses.replace(site, vip=host, port=port)
    if serial_paths:
        overrides = dict(site.overrides)
        for i, device in enumerate(serial_paths):
            pid = fleet_spec.first_id + i
            overrides[pid] = {**overrides.get(pid, {}), "serial": device, "baud": baud, "throttle": throttle}
        fleet_spec = dataclasses.replace(fleet_spec, panels=len(serial_paths))
        site = dataclasses.replace(site, overrides=overrides)
    site = dataclasses.replace(site, fleet=fleet_spec)
    settings = [site.panel_settings(pid) for pid in site.panel_ids()]
    site.check_transport(
        *(s.listen[0] for s in settings if s.listen and s.serial is None),
        serial=tuple(s.serial.path for s in settings if s.serial is not None),
    )
    buses: list[Any] = []
    if osdp_readers:
        if len(settings) > 64:
            raise SiteError(f"--osdp-readers: at most 64 panels get OSDP readers (a thread each), not {len(settings)}")
        settings, buses = _with_osdp_readers(settings, osdp_readers)
    fleet = Fleet(settings, Workload(rate=fleet_spec.rate), seed=seed)
    if buses:
        for panel, (_, bus) in zip(fleet.panels.values(), buses, strict=True):
            fleet.swipers[panel.panel_id] = BusSwiper(panel, bus)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for line, bus in buses:
                line.open()
                bus.start()
                nursery.start_soon(_close_on_cancel, line, bus)
            await nursery.start(fleet.run)
            where = ", ".join(serial_paths) if serial_paths else f"{site.vip}:{site.port}"
            kind = "serial" if serial_paths else fleet_spec.mode
            click.echo(f"{len(fleet)} panels ({kind}) -> {where}, {fleet_spec.rate}/s each")
            with trio.move_on_after(duration if duration is not None else float("inf")):
                while True:
                    await trio.sleep(1)
                    s = fleet.statistics()
                    click.echo(
                        f"connected {s.connected}/{s.panels} emitted {s.emitted} acked {s.acked} "
                        f"buffered {s.buffered_events} dropped {s.dropped} refused {s.refused}"
                    )
            nursery.cancel_scope.cancel()

    _run_trio(run)


def _with_osdp_readers(settings: list[Any], count: int) -> tuple[list[Any], list[Any]]:
    """Each panel gets ``count`` readers (two per door, a fresh Secure Channel key each)
    on a virtual line of its own; returns the new settings and (line, bus) pairs."""
    import dataclasses
    import secrets
    import tempfile

    from emulator import ReaderBus, ReaderSpec
    from protocol.streams import SerialLine

    from ..harness import VirtualLine

    out, buses = [], []
    base = Path(tempfile.mkdtemp(prefix="fieldsync-osdp-"))
    for s in settings:
        specs = tuple(
            ReaderSpec(address=a, key=secrets.token_bytes(16), door=((a - 1) // 2) % s.doors)
            for a in range(1, count + 1)
        )
        line = VirtualLine(link_dir=base / f"panel-{s.panel_id}")
        buses.append((line, ReaderBus(SerialLine(path=line.b), specs)))
        out.append(dataclasses.replace(s, reader_line=SerialLine(path=line.a), readers=specs))
    return out, buses


async def _close_on_cancel(line: Any, bus: Any) -> None:
    try:
        await trio.sleep_forever()
    finally:
        bus.stop()
        line.close()


# -- scenarios ---------------------------------------------------------------------------


@main.group()
def scenario() -> None:
    """Fault scenarios (TOML timelines, docs/scenarios.md) run against a real cluster and checked."""


@main.command("faults")
@click.option("--api-port", type=int, default=8474, show_default=True, help="The HTTP JSON API (Toxiproxy's port).")
@click.option(
    "--proxy",
    "proxies",
    multiple=True,
    help="NAME=LISTEN_HOST:PORT=UPSTREAM_HOST:PORT, repeatable; more can be made through the API.",
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@_friendly
def faults_cmd(api_port: int, proxies: tuple[str, ...], duration: float | None) -> None:
    """Run fault proxies with their HTTP API on loopback, in front of any node or cluster."""
    from ..harness import FaultHub
    from ..harness._fault_api import _address, serve_api

    wanted = []
    for item in proxies:
        parts = item.split("=")
        if len(parts) != 3:
            raise SiteError(f"--proxy {item!r}: expected NAME=LISTEN_HOST:PORT=UPSTREAM_HOST:PORT")
        wanted.append((parts[0], _address(parts[1], "listen"), _address(parts[2], "upstream")))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            hub = await nursery.start(FaultHub().run)
            for name, listen, upstream in wanted:
                await hub.create(name, listen, upstream)
            await nursery.start(serve_api, hub, "127.0.0.1", api_port)
            click.echo(f"fault API on http://127.0.0.1:{api_port}/proxies; {len(wanted)} proxies")
            sys.stdout.flush()
            await trio.sleep(duration if duration is not None else float("inf"))
            nursery.cancel_scope.cancel()

    _run_trio(run)


@scenario.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@_friendly
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
@_friendly
def scenario_run(
    file: Path,
    seed: int | None,
    port: int,
    api_port: int | None,
    json_path: Path | None,
    png_path: Path | None,
    keep: Path | None,
) -> None:
    """Run a scenario and print the verdict; the exit code is 0 only if every promise held."""
    from ..harness import ScenarioRun, load_scenario, write_reports

    loaded = load_scenario(file)

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    run = ScenarioRun(loaded, seed=seed, workdir=keep, port=port, api_port=api_port, say=say)

    async def main_run() -> Any:
        async with trio.open_nursery() as nursery:

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

    result = trio.run(main_run)
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
@_friendly
def scenario_fuzz(
    count: int,
    seed: int,
    fast: bool,
    panels: int,
    duration: float,
    port: int,
    save: Path | None,
) -> None:
    """Run seeded random fault schedules; print any failing seed with the command that replays it."""
    from ..harness import fuzz

    if fuzz(count, seed, fast=fast, panels=panels, duration=duration, port=port, save=save, echo=click.echo):
        raise SystemExit(1)


# -- config ------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Operator changes to the site configuration (each one is a new version)."""


def _config_store(site_path: Path | None, db: Path | None) -> ConfigStore:
    return ConfigStore(db or load_site(site_path).db)


db_option = click.option("--db", type=click.Path(path_type=Path, dir_okay=False), help="SQLite store [site: site.db].")


def _change(site_path: Path | None, db: Path | None, ops: list[Any]) -> None:
    store = _config_store(site_path, db)
    version = store.change(ops)
    click.echo(f"configuration version {version}")


@config.command("add-cardholder")
@site_option
@db_option
@click.option("--card", type=int, required=True)
@click.option("--levels", default="", help="Comma-separated access level ids.")
@click.option("--pin", type=int, default=0)
@click.option("--valid-until-us", type=int, default=0, help="Expiry, UTC microseconds (0 = never).")
@_friendly
def add_cardholder(
    site_path: Path | None, db: Path | None, card: int, levels: str, pin: int, valid_until_us: int
) -> None:
    """Add or replace a cardholder."""
    level_ids = tuple(int(x) for x in levels.split(",") if x.strip())
    holder = Cardholder(card=card, levels=level_ids, pin=pin, valid_until_us=valid_until_us)
    _change(site_path, db, [PutCardholder(cardholder=holder)])


@config.command("remove-cardholder")
@site_option
@db_option
@click.option("--card", type=int, required=True)
@_friendly
def remove_cardholder(site_path: Path | None, db: Path | None, card: int) -> None:
    """Remove a cardholder."""
    _change(site_path, db, [DeleteCardholder(card=card)])


@config.command("set-door-mode")
@site_option
@db_option
@click.option("--door", type=int, required=True)
@click.option("--mode", type=click.Choice([m.name.lower() for m in DoorMode]), required=True)
@_friendly
def set_door_mode(site_path: Path | None, db: Path | None, door: int, mode: str) -> None:
    """Change a door's mode (card, card_and_pin, locked, unlocked)."""
    _change(site_path, db, [PutDoor(door=Door(door=door, mode=DoorMode[mode.upper()]))])


_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def _days(text: str) -> int:
    mask = 0
    for part in text.lower().split(","):
        if "-" in part:
            a, b = part.split("-")
            for d in range(_DAYS[a], _DAYS[b] + 1):
                mask |= 1 << d
        else:
            mask |= 1 << _DAYS[part]
    return mask


def _minute(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes or 0)


@config.command("set-schedule")
@site_option
@db_option
@click.option("--id", "ident", type=int, required=True)
@click.option("--days", default="mon-sun", show_default=True, help="e.g. mon-fri or sat,sun")
@click.option("--from", "start", default="00:00", show_default=True)
@click.option("--to", "end", default="24:00", show_default=True)
@_friendly
def set_schedule(site_path: Path | None, db: Path | None, ident: int, days: str, start: str, end: str) -> None:
    """Set a schedule to one daily window."""
    try:
        interval = Interval(days=_days(days), start=_minute(start), end=_minute(end))
    except KeyError as exc:
        raise click.BadParameter(f"unknown day {exc}", param_hint="--days") from None
    _change(site_path, db, [PutSchedule(schedule=Schedule(id=ident, intervals=(interval,)))])


@config.command("set-level")
@site_option
@db_option
@click.option("--id", "ident", type=int, required=True)
@click.option("--door", "doors", type=int, multiple=True, required=True)
@click.option("--schedule", type=int, required=True)
@_friendly
def set_level(site_path: Path | None, db: Path | None, ident: int, doors: tuple[int, ...], schedule: int) -> None:
    """Set an access level: these doors, during this schedule."""
    entries = tuple(LevelEntry(door=d, schedule=schedule) for d in doors)
    _change(site_path, db, [PutAccessLevel(level=AccessLevel(id=ident, entries=entries))])


@config.command("remove-level")
@site_option
@db_option
@click.option("--id", "ident", type=int, required=True)
@_friendly
def remove_level(site_path: Path | None, db: Path | None, ident: int) -> None:
    """Remove an access level."""
    _change(site_path, db, [DeleteAccessLevel(id=ident)])


@config.command("show")
@site_option
@db_option
@_friendly
def config_show(site_path: Path | None, db: Path | None) -> None:
    """Print the current configuration version and counts."""
    version, state = _config_store(site_path, db).snapshot()
    click.echo(
        f"version {version}: {len(state.cardholders)} cardholders, {len(state.levels)} access levels, "
        f"{len(state.schedules)} schedules, {len(state.doors)} doors configured"
    )


# -- status ------------------------------------------------------------------------------


@main.command()
@site_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_friendly
def status(site_path: Path | None, db: Path | None, as_json: bool) -> None:
    """Per panel: connected, stored high-water mark, config version, backlog."""
    store = EventStore(db or load_site(site_path).db)
    rows = store.status()
    version = ConfigStore(store.path).version
    if as_json:
        click.echo(json.dumps({"epoch": store.epoch, "config_version": version, "panels": rows}, indent=2))
        return
    click.echo(f"store {store.path}: epoch {store.epoch}, config version {version}, {len(rows)} panels")
    click.echo(f"{'panel':>7} {'conn':>5} {'node':>5} {'hwm':>10} {'backlog':>9} {'config':>7}")
    for r in rows:
        newest = r.get("newest_seq") or r["hwm"]
        backlog = max(0, int(newest) - int(r["hwm"]))  # type: ignore[call-overload]
        conn = "yes" if r.get("connected") else "no"
        node = r.get("node_id") or "-"
        click.echo(f"{r['panel_id']:>7} {conn:>5} {node:>5} {r['hwm']:>10} {backlog:>9} {r['config_acked']:>7}")


# -- helpers -----------------------------------------------------------------------------


def _site(site_path: Path | None, *, pki_dir: Path | None, insecure: bool) -> Site:
    import dataclasses

    site = load_site(site_path)
    if pki_dir is not None:
        site = dataclasses.replace(site, pki=pki_dir)
    if insecure:
        site = dataclasses.replace(site, insecure=True)
    return site


_USER_ERRORS = (StoreError, LinkError, SiteError, pki_mod.PkiError, ScenarioError, FaultError)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _run_trio(fn: Callable[[], Any]) -> None:
    """Run ``fn`` under trio; the errors a user can cause become one clear line."""
    try:
        trio.run(fn)
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            click.echo("stopped", err=True)
            return
        user = [leaf for leaf in leaves if isinstance(leaf, _USER_ERRORS)]
        if user:
            raise click.ClickException("; ".join(str(e) for e in user)) from None
        raise


def _add_conformance() -> None:
    # Imported here like every command's machinery; the battery shares no code with the rest.
    from ..conformance import command

    main.add_command(command, "conformance")


_add_conformance()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
