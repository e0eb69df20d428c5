"""`fieldsync demo`: the main demo, or the protocol narrated."""

from __future__ import annotations

from pathlib import Path

import click

from ._defaults import SiteCommand

__all__ = ["demo"]


@click.command("demo", cls=SiteCommand)
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
