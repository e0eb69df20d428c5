"""What several command modules share: the user-error boundary, --db, the site with overrides, trio."""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import pydantic
import trio

from protocol.streams import LinkError, is_loopback
from storage import MirrorError, StoreError, is_database_url

from ..engine import MetricsError
from ..harness import FaultError, ScenarioError
from ..lab import LabError
from ..site import Site, SiteError, load_site, parse_address
from ..site import pki as pki_mod

__all__ = [
    "db_option",
    "friendly",
    "metrics_address",
    "metrics_options",
    "run_trio",
    "show",
    "site_with",
    "watch_options",
]

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn the errors a user can cause into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except pydantic.ValidationError as exc:  # a flag's value a model refused (the site file names its own)
            raise click.ClickException(_flag_errors(exc)) from None
        except (
            SiteError,
            StoreError,
            LinkError,
            pki_mod.PkiError,
            ValueError,
            ScenarioError,
            LabError,
            MetricsError,
        ) as exc:
            raise click.ClickException(str(exc)) from None
        except BaseExceptionGroup as group:  # raised inside a nursery (a scenario run's, say)
            user = [leaf for leaf in _leaves(group) if isinstance(leaf, (*_USER_ERRORS, LabError))]
            if user and not any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(group)):
                raise click.ClickException("; ".join(str(e) for e in user)) from None
            raise

    return wrapper  # type: ignore[return-value]


def _flag_errors(exc: pydantic.ValidationError) -> str:
    """One line: each refused value under the flag it came from, e.g. ``--panels: ... (got -1)``."""
    parts = []
    for error in exc.errors():
        name = "--" + str(error["loc"][-1]).replace("_", "-") if error["loc"] else exc.title
        parts.append(f"{name}: {error['msg'].lower()} (got {error.get('input')!r})")
    return "; ".join(parts)


class _StoreTarget(click.Path):
    """A SQLite file (a path) or a PostgreSQL database (a ``postgresql://`` URL, kept as text)."""

    name = "path|url"

    def __init__(self) -> None:
        super().__init__(path_type=Path, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and is_database_url(value):
            return value
        return super().convert(value, param, ctx)


db_option = click.option(
    "--db", type=_StoreTarget(), help="The store: a SQLite file or a postgresql:// URL [site: site.db]."
)


def metrics_options(fn: F) -> F:
    """--metrics and --metrics-anywhere: the node's Prometheus endpoint."""
    fn = click.option(
        "--metrics-anywhere",
        is_flag=True,
        help="Allow --metrics on an address other than loopback (the endpoint has no authentication).",
    )(fn)
    return click.option(
        "--metrics", "metrics", metavar="HOST:PORT", help="Serve Prometheus metrics on http://HOST:PORT/metrics."
    )(fn)


def metrics_address(text: str | None, *, anywhere: bool) -> tuple[str, int] | None:
    """The --metrics address; loopback only unless --metrics-anywhere (no authentication)."""
    if text is None:
        return None
    if ":" not in text:
        raise SiteError(f"--metrics {text!r}: expected HOST:PORT")
    host, port = parse_address(text, 0)
    if not (anywhere or is_loopback(host)):
        raise SiteError(
            f"--metrics {text}: {host} is not a loopback address and the endpoint has no authentication; "
            "add --metrics-anywhere to serve it there"
        )
    return host, port


def site_with(site_path: Path | None, *, pki_dir: Path | None, insecure: bool) -> Site:
    """The site file (or the loopback default) with --pki and --insecure applied."""
    site = load_site(site_path)
    if pki_dir is not None:
        site = dataclasses.replace(site, pki=pki_dir)
    if insecure:
        site = dataclasses.replace(site, insecure=True)
    return site


_USER_ERRORS = (
    StoreError,
    MirrorError,
    LinkError,
    SiteError,
    pki_mod.PkiError,
    ScenarioError,
    FaultError,
    MetricsError,
)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def _until_sigterm(fn: Callable[[], Any]) -> bool:
    """Run ``fn`` until it returns or SIGTERM comes; True if SIGTERM ended it.

    SIGTERM is what a service manager sends. Left to its default action it would kill
    this process at once, and whatever the command started (node processes run in
    sessions of their own) would live on as orphans, still holding the VIP. As a
    cancellation it runs the same clean-up as Ctrl-C: each child is stopped by its pid
    (``Supervisor``: SIGINT, SIGKILL after 3 s). A command with its own SIGTERM handling
    (``serve``: a planned stop with BYE) opens its receiver inside, which takes precedence.
    """
    terminated = False
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal terminated
                async for _ in signals:
                    terminated = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await fn()
            nursery.cancel_scope.cancel()
    return terminated


def run_trio(fn: Callable[[], Any]) -> None:
    """Run ``fn`` under trio; the errors a user can cause become one clear line. SIGINT and
    SIGTERM stop it and everything it started."""
    try:
        if trio.run(_until_sigterm, fn):
            click.echo("SIGTERM: stopped", err=True)
    except BaseException as exc:
        leaves = _leaves(exc)
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            click.echo("stopped", err=True)
            return
        user = [leaf for leaf in leaves if isinstance(leaf, _USER_ERRORS)]
        if user:
            raise click.ClickException("; ".join(str(e) for e in user)) from None
        raise


def watch_options(fn: F) -> F:
    """--watch and --every: a status that refreshes itself until Ctrl-C or SIGTERM."""
    fn = click.option(
        "--every", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between refreshes."
    )(fn)
    return click.option(
        "--watch", is_flag=True, help="Refresh in place until Ctrl-C (a new block per refresh when not a terminal)."
    )(fn)


def show(render: Callable[[], str], *, watch: bool, every: float) -> None:
    """Print ``render()`` once, or keep it on screen, refreshed every ``every`` seconds.

    On a terminal the view is redrawn in place (rich's Live); piped to a file or another
    program, each refresh is a block of its own under a time stamp, so nothing is lost.
    """
    if not watch:
        click.echo(render())
        return
    import time as _time

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()

    async def loop() -> None:
        if console.is_terminal:
            with Live(Text(render()), console=console, auto_refresh=False) as live:
                while True:
                    await trio.sleep(every)
                    live.update(Text(render()), refresh=True)
        while True:
            click.echo(f"-- {_time.strftime('%H:%M:%S')}\n{render()}\n")  # click.echo flushes
            await trio.sleep(every)

    run_trio(loop)
