"""`fieldsync serve`: one sync-engine node (TCP, dialled panels, serial lines)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click
import trio

from ..site import SiteError, parse_address
from ._common import db_option, friendly, metrics_address, metrics_options, run_trio, site_with
from ._defaults import SiteCommand, site_option

__all__ = ["serve"]


@click.command("serve", cls=SiteCommand)
@site_option
@click.option("--node-id", default="A", show_default=True)
@db_option
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
@click.option(
    "--heartbeat-ms", type=click.IntRange(min=1), help="H: how often a busy session's ends send [site: heartbeat_ms]."
)
@click.option(
    "--idle-ms",
    type=click.IntRange(min=1),
    help="I (>= H): how often a quiet panel probes; an idle session costs a HEARTBEAT each way per I [site: idle_ms].",
)
@click.option(
    "--ingest",
    type=click.Choice(["rows", "log"]),
    help="What an ACK waits for: every event's row, or the batch in the batch log [site: ingest].",
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option(
    "--gc",
    type=click.Choice(["sparing", "python"]),
    default="sparing",
    show_default=True,
    help="Cyclic GC: freeze what survives each full collection (sparing), or CPython's own policy.",
)
@metrics_options
@friendly
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
    idle_ms: int | None,
    ingest: str | None,
    duration: float | None,
    gc: str,
    metrics: str | None,
    metrics_anywhere: bool,
) -> None:
    """Run a sync-engine node: accept panels on :30002, dial host-initiated ones on :3001,
    serve panels on serial lines."""
    from protocol.streams import SerialLine, sparing_gc

    from ..engine import Node, NodeSettings, metrics_registry, serve_metrics

    metrics_at = metrics_address(metrics, anywhere=metrics_anywhere)
    site = site_with(site_path, pki_dir=pki_dir, insecure=insecure)
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
        idle_ms=idle_ms or site.idle_ms,
        ingest=ingest or site.ingest,
        materialize_idle=float(site.materialize_idle),
        max_log_age=float(site.max_log_age),
        max_log_lag=site.max_log_lag,
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
            async with sparing_gc(enabled=gc == "sparing"), trio.open_nursery() as nursery:
                if metrics_at is not None:  # first: a port in use fails before any panel is served
                    await nursery.start(serve_metrics, metrics_registry(node), *metrics_at)
                await nursery.start(node.run)
                click.echo(
                    f"node {node_id} epoch {node.epoch}: listening on {listen_addr or '-'}, "
                    f"dialing {len(dials)} panel(s), {len(lines)} serial line(s), "
                    f"{'plain (loopback)' if settings.tls is None else 'mutual TLS'}, store {settings.db}"
                    + (f", metrics on http://{metrics_at[0]}:{metrics_at[1]}/metrics" if metrics_at else "")
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

    run_trio(run)
