"""`fieldsync line`: a virtual serial line to join `serve --serial` and `emulate --serial`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import trio

from ._common import friendly, run_trio
from ._defaults import SiteCommand

__all__ = ["line_cmd"]


@click.command("line", cls=SiteCommand)
@click.option(
    "--link-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Make DIR/a and DIR/b stable symlinks to the two ends.",
)
@click.option("--garbage-rate", type=float, default=0.0, show_default=True, help="Noise bursts per byte carried.")
@click.option("--drop-rate", type=float, default=0.0, show_default=True, help="Bytes lost per byte carried.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@friendly
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

        run_trio(run)
