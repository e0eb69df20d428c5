"""`fieldsync status`: per panel, what the store knows."""

from __future__ import annotations

import json
from pathlib import Path

import click

from storage import ConfigStore, EventStore

from ..site import load_site
from ._common import db_option, friendly
from ._defaults import SiteCommand, site_option

__all__ = ["status"]


@click.command("status", cls=SiteCommand)
@site_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
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
