"""`fieldsync config`: operator changes to the site configuration (each one a new version)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from protocol import (
    AccessLevel,
    Cardholder,
    DeleteAccessLevel,
    DeleteCardholder,
    Door,
    DoorMode,
    Interval,
    LevelEntry,
    PutAccessLevel,
    PutCardholder,
    PutDoor,
    PutSchedule,
    Schedule,
)
from storage import ConfigStoreInterface, open_config_store

from ..site import load_site
from ._common import db_option, friendly
from ._defaults import SiteGroup, site_option

__all__ = ["config"]


@click.group("config", cls=SiteGroup)
def config() -> None:
    """Operator changes to the site configuration (each one is a new version)."""


def _config_store(site_path: Path | None, db: Path | str | None) -> ConfigStoreInterface:
    return open_config_store(db or load_site(site_path).db)


def _change(site_path: Path | None, db: Path | str | None, ops: list[Any]) -> None:
    store = _config_store(site_path, db)
    try:
        version = store.change(ops)
    finally:
        store.close()
    click.echo(f"configuration version {version}")


@config.command("add-cardholder")
@site_option
@db_option
@click.option("--card", type=int, required=True)
@click.option("--levels", default="", help="Comma-separated access level ids.")
@click.option("--pin", type=int, default=0)
@click.option("--valid-until-us", type=int, default=0, help="Expiry, UTC microseconds (0 = never).")
@friendly
def add_cardholder(
    site_path: Path | None, db: Path | str | None, card: int, levels: str, pin: int, valid_until_us: int
) -> None:
    """Add or replace a cardholder."""
    level_ids = tuple(int(x) for x in levels.split(",") if x.strip())
    holder = Cardholder(card=card, levels=level_ids, pin=pin, valid_until_us=valid_until_us)
    _change(site_path, db, [PutCardholder(cardholder=holder)])


@config.command("remove-cardholder")
@site_option
@db_option
@click.option("--card", type=int, required=True)
@friendly
def remove_cardholder(site_path: Path | None, db: Path | str | None, card: int) -> None:
    """Remove a cardholder."""
    _change(site_path, db, [DeleteCardholder(card=card)])


@config.command("set-door-mode")
@site_option
@db_option
@click.option("--door", type=int, required=True)
@click.option("--mode", type=click.Choice([m.name.lower() for m in DoorMode]), required=True)
@friendly
def set_door_mode(site_path: Path | None, db: Path | str | None, door: int, mode: str) -> None:
    """Change a door's mode (card, card_and_pin, locked, unlocked)."""
    _change(site_path, db, [PutDoor(door=Door(door=door, mode=DoorMode[mode.upper()]))])


_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def _days(text: str) -> int:
    mask = 0
    for part in text.lower().split(","):
        if "-" in part:
            a, b = part.split("-")
            for d in range(_DAYS[a], _DAYS[b] + 1):
                mask |= 1 << d
        else:
            mask |= 1 << _DAYS[part]
    return mask


def _minute(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes or 0)


@config.command("set-schedule")
@site_option
@db_option
@click.option("--id", "ident", type=int, required=True)
@click.option("--days", default="mon-sun", show_default=True, help="e.g. mon-fri or sat,sun")
@click.option("--from", "start", default="00:00", show_default=True)
@click.option("--to", "end", default="24:00", show_default=True)
@friendly
def set_schedule(site_path: Path | None, db: Path | str | None, ident: int, days: str, start: str, end: str) -> None:
    """Set a schedule to one daily window."""
    try:
        interval = Interval(days=_days(days), start=_minute(start), end=_minute(end))
    except KeyError as exc:
        raise click.BadParameter(f"unknown day {exc}", param_hint="--days") from None
    _change(site_path, db, [PutSchedule(schedule=Schedule(id=ident, intervals=(interval,)))])


@config.command("set-level")
@site_option
@db_option
@click.option("--id", "ident", type=int, required=True)
@click.option("--door", "doors", type=int, multiple=True, required=True)
@click.option("--schedule", type=int, required=True)
@friendly
def set_level(site_path: Path | None, db: Path | str | None, ident: int, doors: tuple[int, ...], schedule: int) -> None:
    """Set an access level: these doors, during this schedule."""
    entries = tuple(LevelEntry(door=d, schedule=schedule) for d in doors)
    _change(site_path, db, [PutAccessLevel(level=AccessLevel(id=ident, entries=entries))])


@config.command("remove-level")
@site_option
@db_option
@click.option("--id", "ident", type=int, required=True)
@friendly
def remove_level(site_path: Path | None, db: Path | str | None, ident: int) -> None:
    """Remove an access level."""
    _change(site_path, db, [DeleteAccessLevel(id=ident)])


@config.command("resync")
@site_option
@db_option
@click.option("--panel", "panel_id", type=click.IntRange(1, 2**32 - 1), required=True)
@friendly
def resync(site_path: Path | None, db: Path | str | None, panel_id: int) -> None:
    """Send a panel its whole configuration again (a snapshot), at its session now or when it
    next connects; the node marks the request done once the snapshot went out."""
    store = _config_store(site_path, db)
    try:
        store.request_resync(panel_id)
    finally:
        store.close()
    click.echo(f"resync of panel {panel_id} requested: its node sends it a snapshot at its session")


@config.command("show")
@site_option
@db_option
@friendly
def config_show(site_path: Path | None, db: Path | str | None) -> None:
    """Print the current configuration version and counts."""
    store = _config_store(site_path, db)
    try:
        version, state = store.snapshot()
    finally:
        store.close()
    click.echo(
        f"version {version}: {len(state.cardholders)} cardholders, {len(state.levels)} access levels, "
        f"{len(state.schedules)} schedules, {len(state.doors)} doors configured"
    )
