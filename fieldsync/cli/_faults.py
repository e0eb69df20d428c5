"""`fieldsync faults`: fault proxies with their HTTP API, in front of any node or cluster."""

from __future__ import annotations

import sys

import click
import trio

from ..site import SiteError
from ._common import friendly, run_trio
from ._defaults import SiteCommand

__all__ = ["faults_cmd"]


@click.command("faults", cls=SiteCommand)
@click.option("--api-port", type=int, default=8474, show_default=True, help="The HTTP JSON API (Toxiproxy's port).")
@click.option(
    "--proxy",
    "proxies",
    multiple=True,
    help="NAME=LISTEN_HOST:PORT=UPSTREAM_HOST:PORT, repeatable; more can be made through the API.",
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@friendly
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

    run_trio(run)
