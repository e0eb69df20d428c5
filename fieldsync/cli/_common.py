"""What several command modules share: the user-error boundary, --db, the site with overrides, trio."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from protocol.streams import LinkError
from storage import StoreError

from ..harness import FaultError, ScenarioError
from ..lab import LabError
from ..site import Site, SiteError, load_site
from ..site import pki as pki_mod

__all__ = ["db_option", "friendly", "run_trio", "site_with"]

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn the errors a user can cause into one clear line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SiteError, StoreError, LinkError, pki_mod.PkiError, ValueError, ScenarioError, LabError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


db_option = click.option("--db", type=click.Path(path_type=Path, dir_okay=False), help="SQLite store [site: site.db].")


def site_with(site_path: Path | None, *, pki_dir: Path | None, insecure: bool) -> Site:
    """The site file (or the loopback default) with --pki and --insecure applied."""
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


def run_trio(fn: Callable[[], Any]) -> None:
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
