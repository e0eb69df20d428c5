"""`fieldsync pki`: the site CA and the panel and node certificates."""

from __future__ import annotations

from pathlib import Path

import click

from ..site import pki as pki_mod
from ._common import friendly
from ._defaults import SiteGroup

__all__ = ["pki"]


@click.group("pki", cls=SiteGroup)
def pki() -> None:
    """Make the site CA and issue panel and node certificates."""


@pki.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--site-name", default="fieldsync site", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (every certificate must be issued again).")
@friendly
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
@friendly
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
