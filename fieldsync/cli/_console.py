"""`fieldsync console`: the web console of a site (docs/console.md); also started by `cluster up --console`."""

from __future__ import annotations

import functools
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import trio

from ..site import Site, SiteError, load_site, parse_address
from ._common import friendly, run_trio
from ._defaults import SiteCommand, site_option

if TYPE_CHECKING:
    from ..console import ConsoleSettings

__all__ = ["console_cmd", "console_options", "console_settings", "console_started", "run_console_trio"]

F = TypeVar("F", bound=Callable[..., Any])
TOKEN_ENV = "FIELDSYNC_CONSOLE_TOKEN"


def console_token_option(name: str) -> Callable[[F], F]:
    return click.option(
        name,
        "token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="Every request must carry this token (at least 16 characters); required off loopback.",
    )


def console_options(fn: F) -> F:
    """`cluster up`'s options for a console beside the nodes."""
    fn = console_token_option("--console-token")(fn)
    return click.option(
        "--console",
        "console_at",
        metavar="HOST:PORT",
        help="Also serve the web console here (docs/console.md).",
    )(fn)


def _address(text: str, what: str) -> tuple[str, int]:
    if ":" not in text:
        raise SiteError(f"{what} {text!r}: expected HOST:PORT")
    return parse_address(text, 0)


def _metrics(items: tuple[str, ...], site: Site) -> dict[str, tuple[str, int]]:
    names = {n.name for n in site.nodes}
    found: dict[str, tuple[str, int]] = {}
    for item in items:
        node, equals, where = item.partition("=")
        if not equals or node not in names:
            raise SiteError(f"--metrics {item!r}: expected NODE=HOST:PORT with NODE one of {', '.join(sorted(names))}")
        found[node] = _address(where, "--metrics")
    return found


def console_settings(
    site: Site, listen: str, token: str | None, metrics: Mapping[str, tuple[str, int]], every: float = 0.1
) -> ConsoleSettings:
    """The console's settings, the address and the token checked.

    Raises:
        click.ClickException: the address or the token is refused (``ConsoleError``'s line).
    """
    from ..console import ConsoleError, ConsoleSettings, check_listen

    host, port = _address(listen, "--listen")
    try:
        check_listen(host, token)
    except ConsoleError as exc:
        raise click.ClickException(str(exc)) from None
    return ConsoleSettings(site=site, host=host, port=port, token=token or None, metrics=metrics, every=every)


def console_started(settings: ConsoleSettings) -> str:
    """The line printed once the console serves: where to open it."""
    url = f"http://{settings.host}:{settings.port}/"
    if settings.token:
        return f"console (pid {os.getpid()}) on {url}; open {url}?token={urllib.parse.quote(settings.token, safe='')}"
    return f"console (pid {os.getpid()}) on {url}"


def _console_leaves(exc: BaseException) -> list[BaseException]:
    from ..console import ConsoleError

    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _console_leaves(inner)]
    return [exc] if isinstance(exc, ConsoleError) else []


def run_console_trio(fn: Callable[[], Any]) -> None:
    """``run_trio``, with the console's own errors as one clear line too."""
    from ..console import ConsoleError

    try:
        run_trio(fn)
    except ConsoleError as exc:
        raise click.ClickException(str(exc)) from None
    except BaseExceptionGroup as group:
        leaves = _console_leaves(group)
        if leaves:
            raise click.ClickException("; ".join(str(e) for e in leaves)) from None
        raise


@click.command("console", cls=SiteCommand)
@site_option
@click.option(
    "--listen", default="127.0.0.1:8480", show_default=True, metavar="HOST:PORT", help="Where the page is served."
)
@console_token_option("--token")
@click.option(
    "--metrics",
    "metrics",
    multiple=True,
    metavar="NODE=HOST:PORT",
    help="A node's metrics endpoint (fieldsync node --metrics), for events/s and commit latency; once per node.",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0.02),
    default=0.1,
    show_default=True,
    help="Seconds between two reads of the pair (the lease and the nodes' beats).",
)
@click.option(
    "--netns",
    metavar="NAME",
    help="Reach the site's addresses from inside this network namespace (root only), the page "
    "staying on --listen here: what `fieldsync lab up --console` runs.",
)
@friendly
def console_cmd(
    site_path: Path | None,
    listen: str,
    token: str | None,
    metrics: tuple[str, ...],
    every: float,
    netns: str | None,
) -> None:
    """Serve the web console: the pair, the fleet, events/s, the alarms, live; switchover and changes."""
    site = load_site(site_path)
    settings = console_settings(site, listen, token, _metrics(metrics, site), every)
    bound = () if netns is None else (_bound_in(settings, netns),)
    run_console_trio(functools.partial(_serve, settings, bound))


def _bound_in(settings: ConsoleSettings, netns: str) -> socket.socket:
    """The page's socket bound here, then the process moved to ``netns`` (before any thread starts)."""
    from ..console import ConsoleError, bind_console
    from ..lab import LabError, enter_network_namespace

    try:
        bound = bind_console(settings)
    except ConsoleError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        enter_network_namespace(netns)
    except LabError as exc:
        bound.close()
        raise click.ClickException(str(exc)) from None
    return bound


async def _serve(settings: ConsoleSettings, bound: tuple[socket.socket, ...] = ()) -> None:
    from ..console import serve_console

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_console, settings, bound=bound))
        click.echo(console_started(settings))
        sys.stdout.flush()
