"""`fieldsync conformance`: the command."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import trio

from ._base import CaseResult
from ._cases_panel import panel_case
from ._cases_server import server_case
from ._runner import (
    TargetUnreachable,
    is_loopback,
    parse_hostport,
    parse_ids,
    run_panel_cases,
    run_server_cases,
    summary,
    table,
    write_json,
)


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.command("conformance", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", metavar="HOST:PORT", help="Play panels against the node listening here.")
@click.option(
    "--park",
    metavar="HOST:PORT",
    help="Server mode: the park address (6.3) of the node that is the standby; runs the parked-session cases "
    "against it (with or without --server).",
)
@click.option("--panel", metavar="HOST:PORT", help="Play a node against the (host-initiated) panel listening here.")
@click.option(
    "--park-listen",
    metavar="HOST:PORT",
    help="Panel mode: listen here (with --pki as the TLS server, with the node certificate) and play a standby node "
    "for a panel configured to park at this address (6.3); runs the parked-session cases (with or without --panel).",
)
@click.option(
    "--pki",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="DIR with ca.pem and panel-<id>.pem/.key (server mode) or node-<name>.pem/.key (panel mode).",
)
@click.option("--insecure", is_flag=True, help="Plain TCP (the default without --pki); loopback addresses only.")
@click.option("--panel-ids", default="1-4", show_default=True, help="Panel ids the battery may use (server mode).")
@click.option("--unknown-panel-id", type=int, help="A panel id the node must refuse with UNKNOWN_PANEL.")
@click.option("--panel-id", type=int, help="The panel's id (panel mode).")
@click.option("--node-name", default="A", show_default=True, help="Node certificate to use (panel mode).")
@click.option("--epoch", type=int, help="Epoch the battery's node claims (panel mode; default HELLO max_epoch or 1).")
@click.option("--case", "patterns", multiple=True, metavar="PATTERN", help="Run only matching cases (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON.")
@click.option("--list", "list_only", is_flag=True, help="List the cases with their sections and exit.")
def command(
    server: str | None,
    park: str | None,
    panel: str | None,
    park_listen: str | None,
    pki: Path | None,
    insecure: bool,
    panel_ids: str,
    unknown_panel_id: int | None,
    panel_id: int | None,
    node_name: str,
    epoch: int | None,
    patterns: tuple[str, ...],
    json_path: Path | None,
    list_only: bool,
) -> None:
    """Check a node (--server, --park) or a panel (--panel, --park-listen) against docs/protocol.md, version 5, and
    that page alone.

    Server mode plays panels against a node; with --park also against the park address of the node that is the
    standby (parked sessions, 6.3). Panel mode plays a node against a host-initiated panel; with --park-listen also
    a standby node that the panel parks at. Cases marked [--park] or [--park-listen] need that option.

    Prints `section | case | result | detail` and a count; exit code 0 only if no case failed, 2 if the target
    cannot be reached.
    """
    server_mode = server is not None or park is not None
    panel_mode = panel is not None or park_listen is not None
    if list_only:
        for mode, reg, park_opt in (("server", server_case, "--park"), ("panel", panel_case, "--park-listen")):
            if (mode == "server" and panel_mode) or (mode == "panel" and server_mode):
                continue
            click.echo(f"# {mode} cases (--{mode})")
            for case in reg.select(list(patterns)):
                tags = (" [TLS]" if case.tls_only else "") + (f" [{park_opt}]" if case.park else "")
                click.echo(f"{case.section:<14} {case.name:<40} {case.doc}{tags}")
        return
    if server_mode == panel_mode:
        _fail(
            "give --server and/or --park HOST:PORT (server mode), or --panel and/or --park-listen HOST:PORT "
            "(panel mode), not both modes"
        )
    named = (
        [("--server", server), ("--park", park)]
        if server_mode
        else [("--panel", panel), ("--park-listen", park_listen)]
    )
    addrs = [(opt, addr) for opt, addr in named if addr is not None]
    hosts: list[str] = []
    for _opt, addr in addrs:
        try:
            hosts.append(parse_hostport(addr)[0])
        except ValueError as exc:
            _fail(str(exc))
    if pki is not None and insecure:
        _fail("--insecure and --pki exclude each other")
    for host in hosts:
        if pki is None and not is_loopback(host):
            _fail(f"plain text to {host} refused: without --pki only loopback addresses (2.2)")
    if pki is not None and not (pki / "ca.pem").exists():
        _fail(f"{pki / 'ca.pem'} not found")
    target = addrs[0][1]
    given = ", ".join(f"{opt} {addr}" for opt, addr in addrs)

    def progress(r: CaseResult) -> None:
        click.echo(f"  {r.result:<4} {r.name} ({r.seconds:.1f} s)", err=True)

    t0 = time.monotonic()
    try:
        if server_mode:
            try:
                ids = parse_ids(panel_ids)
            except ValueError as exc:
                _fail(str(exc))
            results = trio.run(
                lambda: run_server_cases(
                    server,
                    pki=pki,
                    panel_ids=ids,
                    unknown_panel_id=unknown_panel_id,
                    cases=patterns,
                    progress=progress,
                    park=park,
                )
            )
            mode = "server"
        else:
            if panel_id is None:
                _fail("--panel and --park-listen need --panel-id N")
            assert panel_id is not None
            results = trio.run(
                lambda: run_panel_cases(
                    panel,
                    panel_id,
                    pki=pki,
                    node_name=node_name,
                    epoch=epoch,
                    cases=patterns,
                    progress=progress,
                    park_listen=park_listen,
                )
            )
            mode = "panel"
    except TargetUnreachable as exc:
        _fail(str(exc))
        return
    if not results:
        _fail(f"no case matches {' '.join(patterns)}")
    click.echo(table(results))
    p, f, s = summary(results)
    click.echo(f"{p} passed, {f} failed, {s} skipped ({time.monotonic() - t0:.1f} s, {mode}: {given})")
    if json_path is not None:
        write_json(json_path, target, mode, results)
    sys.exit(1 if f else 0)
