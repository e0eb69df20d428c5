"""`fieldsync status`: per panel, what the store knows."""

from __future__ import annotations

import json
from pathlib import Path

import click

from storage import describe_target, open_config_store, open_event_store

from ..site import load_site
from ._common import db_option, friendly, show, watch_options
from ._defaults import SiteCommand, site_option

__all__ = ["status"]


@click.command("status", cls=SiteCommand)
@site_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@watch_options
@friendly
def status(site_path: Path | None, db: Path | str | None, as_json: bool, watch: bool, every: float) -> None:
    """Per panel: connected, stored high-water mark, config version, backlog."""
    target = db or load_site(site_path).db
    store = open_event_store(target)
    config = open_config_store(target)

    def render() -> str:
        rows = store.status()
        version = config.version
        if as_json:
            return json.dumps({"epoch": store.epoch, "config_version": version, "panels": rows}, indent=2)
        lines = [
            f"store {describe_target(target)}: epoch {store.epoch}, config version {version}, {len(rows)} panels",
            f"{'panel':>7} {'conn':>5} {'node':>5} {'hwm':>10} {'backlog':>9} {'config':>7}",
        ]
        for r in rows:
            newest = r.get("newest_seq") or r["hwm"]
            backlog = max(0, int(newest) - int(r["hwm"]))  # type: ignore[call-overload]
            conn = "yes" if r.get("connected") else "no"
            node = r.get("node_id") or "-"
            lines.append(f"{r['panel_id']:>7} {conn:>5} {node:>5} {r['hwm']:>10} {backlog:>9} {r['config_acked']:>7}")
        return "\n".join(lines)

    try:
        show(render, watch=watch, every=every)
    finally:
        store.close()
        config.close()
