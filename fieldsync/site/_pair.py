"""The embedded default pair as files: a site file for nodes A and B on loopback, their PKI,
and a store seeded with a configuration (what the harness, the demo and the tests build on)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

import protocol as p
from storage import ConfigStoreInterface, OverflowPolicy, open_config_store

from . import pki
from ._files import _PAIR, Site
from ._toml import dump_toml

__all__ = ["PairHosts", "PairSiteOptions", "issue_pair_pki", "pair_site_toml", "seed_config", "write_pair_site"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PairHosts:
    """Where the pair lives when it is not on loopback: the lab's hosts (``fieldsync.lab``).

    Each panel has an address of its own (host-initiated ones are dialed there on
    ``panel_port``); a node with VRRP files serves only while its host is MASTER.
    """

    vip: str
    nodes: Mapping[str, str]
    panels: Mapping[int, str]
    #: Node -> (keepalived's state file, its VRRP process's pid file), relative to the site file.
    vrrp: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    panel_port: int = 3001


def pair_site_toml(
    *,
    hosts: PairHosts | None = None,
    pki_dir: Path | str = "pki",
    port: int = 30002,
    panels: int = 10,
    mode: str = "mixed",
    buffer: str | int = "1MiB",
    batch: int = 1024,
    rate: float = 1.0,
    name: str = "fieldsync site",
    heartbeat_proxies: bool = False,
    insecure: bool = False,
    db: Path | str = "site.db",
    first_id: int | None = None,
    policy: OverflowPolicy | None = None,
    doors: int | None = None,
    flash_dir: Path | str | None = None,
    heartbeat_ms: int | None = None,
    idle_ms: int | None = None,
    mirror: str | None = None,
    node_dbs: Mapping[str, str] | None = None,
    pg_data: Mapping[str, Path | str] | None = None,
    witness: str | None = None,
    ingest: str | None = None,
    materialize_idle: float | None = None,
    max_log_age: float | None = None,
    park: bool | None = None,
) -> str:
    """The site file of the embedded default pair: nodes A and B on 127.0.0.11/.12 sharing ``db``
    (beside the file), the VIP on ``port``, panels listening on ``port + 1``. With
    ``heartbeat_proxies`` each node's beats reach it through 127.0.0.21/.22 (a fault proxy).
    ``hosts``: the pair on the lab's hosts instead (its addresses, VRRP files, a ``[[panels]]``
    entry per panel). ``mirror``: each node on its own PostgreSQL (``node_dbs``, their URLs, and
    ``pg_data``, their data directories), mirrored ``sync`` or ``async``, with ``witness``
    (``HOST:PORT``) if given. ``park``: parked sessions (docs/protocol.md 6.3) on ``port + 2``
    of each node's address. ``None``: the site file's default."""
    via = {"A": "127.0.0.21", "B": "127.0.0.22"} if heartbeat_proxies else {}
    addresses = dict(hosts.nodes) if hosts is not None else _PAIR
    vrrp = dict(hosts.vrrp) if hosts is not None else {}
    tables: dict[str, Any] = {
        "site": {
            "name": name,
            "db": db,
            "pki": pki_dir,
            "insecure": insecure or None,
            "vip": hosts.vip if hosts is not None else None,
            "port": port,
            "panel_port": hosts.panel_port if hosts is not None else port + 1,
            "heartbeat_ms": heartbeat_ms,
            "idle_ms": idle_ms,
            "mirror": mirror,
            "witness": witness,
            "ingest": ingest,
            "materialize_idle": materialize_idle,
            "max_log_age": max_log_age,
            "park": park,
            "park_port": port + 2 if park else None,
        },
        "nodes": {
            n: {
                "address": address,
                "heartbeat_via": via.get(n),
                "vrrp_state": vrrp[n][0] if n in vrrp else None,
                "vrrp_pid": vrrp[n][1] if n in vrrp else None,
                "db": (node_dbs or {}).get(n),
                "pg_data": str((pg_data or {})[n]) if n in (pg_data or {}) else None,
            }
            for n, address in addresses.items()
        },
        "fleet": {
            "panels": panels,
            "first_id": first_id,
            "mode": mode,
            "rate": rate,
            "buffer": buffer,
            "batch": batch,
            "policy": policy,
            "doors": doors,
            "flash_dir": flash_dir,
        },
    }
    if hosts is not None:
        tables["panels"] = [{"id": pid, "address": address} for pid, address in sorted(hosts.panels.items())]
    return dump_toml(tables)


class PairSiteOptions(TypedDict, total=False):
    """The keywords of ``pair_site_toml`` (its defaults are there)."""

    hosts: PairHosts | None
    pki_dir: Path | str
    port: int
    panels: int
    mode: str
    buffer: str | int
    batch: int
    rate: float
    name: str
    heartbeat_proxies: bool
    insecure: bool
    db: Path | str
    first_id: int | None
    policy: OverflowPolicy | None
    doors: int | None
    flash_dir: Path | str | None
    heartbeat_ms: int | None
    idle_ms: int | None
    mirror: str | None
    node_dbs: Mapping[str, str] | None
    pg_data: Mapping[str, Path | str] | None
    witness: str | None
    ingest: str | None
    materialize_idle: float | None
    max_log_age: float | None
    park: bool | None


def write_pair_site(path: Path, **options: Unpack[PairSiteOptions]) -> Path:
    """Write ``pair_site_toml(**options)`` to ``path``."""
    path.write_text(pair_site_toml(**options))
    return path


def issue_pair_pki(site: Site, name: str) -> None:
    """A site CA and certificates for nodes A and B and every panel of the site."""
    pki.init_ca(site.pki, site=name)
    for node in ("A", "B"):
        pki.issue(site.pki, "node", node)
    for pid in site.panel_ids():
        pki.issue(site.pki, "panel", pid)


def seed_config(db: Path | str, *, doors: int, cardholders: int) -> ConfigStoreInterface:
    """The starting configuration: an always-open schedule, a level to every door, cardholders
    (in a SQLite file, or a PostgreSQL database by its URL)."""
    config = open_config_store(db)
    config.change([p.PutSchedule(schedule=p.Schedule(id=1, intervals=(p.Interval(days=0x7F, start=0, end=1440),)))])
    config.change(
        [
            p.PutAccessLevel(
                level=p.AccessLevel(id=1, entries=tuple(p.LevelEntry(door=d, schedule=1) for d in range(doors)))
            )
        ]
    )
    config.change([p.PutCardholder(cardholder=p.Cardholder(card=1000 + i, levels=(1,))) for i in range(cardholders)])
    return config
