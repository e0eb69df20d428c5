"""The site file (TOML): panels, nodes, addresses, keys; every CLI flag's default.

Unknown keys and bad values are errors that name the file and the key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import protocol as p
from emulator import LinkMode, PanelSettings, panel_address
from protocol.streams import SerialLine, TlsFiles, check_plaintext_allowed, check_plaintext_serial
from storage import ConfigStore, OverflowPolicy

from ..engine import ClusterSettings
from . import pki

__all__ = [
    "FleetSpec",
    "NodeSpec",
    "Site",
    "SiteError",
    "heartbeat_port",
    "issue_pair_pki",
    "load_site",
    "parse_address",
    "parse_size",
    "seed_config",
    "write_pair_site",
]


class SiteError(Exception):
    """The site file (or a flag) says something fieldsync cannot use."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """``"32MiB"`` -> 33554432. Plain numbers are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise SiteError(f"{text!r} is not a size (examples: 65536, 64KiB, 32MiB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep:
        return str(text), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SiteError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(port)


def heartbeat_port(port: int) -> int:
    """The UDP port of the node-to-node heartbeat, beside the VIP's ``port``."""
    return port + 5


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    name: str
    address: str
    #: Where the other nodes send this node's heartbeats (a fault proxy); default: ``address``.
    heartbeat_via: str | None = None
    # VRRP (issue 17): keepalived's notify script's state file and its VRRP process's pid file.
    vrrp_state: Path | None = None
    vrrp_pid: Path | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    panels: int = 10
    first_id: int = 1
    mode: str = "punch-out"
    buffer: int = 1 << 20
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    flash_dir: Path | None = None
    rate: float = 1.0
    doors: int = 4
    batch: int = 4096
    window: int = 4


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    path: Path | None
    name: str = "fieldsync site"
    db: Path = Path("fieldsync.db")
    pki: Path = Path("pki")
    insecure: bool = False
    vip: str = "127.0.0.100"
    port: int = 30002
    panel_port: int = 3001
    heartbeat_ms: int = 1000
    nodes: tuple[NodeSpec, ...] = (NodeSpec(name="A", address="127.0.0.11"), NodeSpec(name="B", address="127.0.0.12"))
    fleet: FleetSpec = FleetSpec()
    overrides: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def panel_ids(self) -> list[int]:
        ids = set(range(self.fleet.first_id, self.fleet.first_id + self.fleet.panels))
        return sorted(ids | set(self.overrides))

    def dials(self) -> tuple[tuple[int, str, int], ...]:
        """The host-initiated panels a node of this site dials: (panel id, address, port)."""
        out = []
        for pid in self.panel_ids():
            ps = self.panel_settings(pid)
            if ps.mode is LinkMode.HOST_INITIATED and ps.listen is not None:
                out.append((pid, ps.listen[0], ps.listen[1]))
        return tuple(out)

    def cluster_settings(
        self, node_id: str, *, stonith: bool = True, failback: bool = False, lease: float = 1.0, dead_after: float = 0.3
    ) -> ClusterSettings:
        """What node ``node_id`` of this site's pair runs with.

        Raises:
            SiteError: the node is not in the site, or an address breaks the transport rules.
        """
        spec = {n.name: n for n in self.nodes}.get(node_id)
        if spec is None:
            raise SiteError(f"node {node_id!r} is not in the site (nodes: {', '.join(n.name for n in self.nodes)})")
        dials = self.dials()
        self.check_transport(spec.address, *(h for _, h, _ in dials))
        return ClusterSettings(
            node_id=node_id,
            address=spec.address,
            db=self.db,
            vip=self.vip,
            port=self.port,
            dial=dials,
            tls=self.tls_for("node", node_id),
            heartbeat_ms=self.heartbeat_ms,
            stonith=stonith,
            failback=failback,
            vrrp_state=spec.vrrp_state,
            vrrp_pid=spec.vrrp_pid,
            lease=lease,
            dead_after=dead_after,
            beat_interval=min(0.1, dead_after / 3),
            peers=tuple((n.name, n.heartbeat_via or n.address) for n in self.nodes if n.name != node_id),
            beat_port=heartbeat_port(self.port),
            # A site file lists the panels; without one, any panel with a site certificate is served.
            known_panels=frozenset(self.panel_ids()) if self.path is not None else None,
        )

    def tls_for(self, role: str, name: str | int) -> TlsFiles | None:
        if self.insecure:
            return None
        return pki.tls_files(self.pki, role, name)

    def panel_settings(self, panel_id: int) -> PanelSettings:
        fleet = self.fleet
        over = self.overrides.get(panel_id, {})
        mode_name = over.get("mode", fleet.mode)
        if "serial" in over:
            mode_name = "serial"
        if mode_name == "mixed":
            mode = LinkMode.HOST_INITIATED if panel_id % 2 == 0 else LinkMode.PUNCH_OUT
        else:
            mode = LinkMode(mode_name)
        address = over.get("address", panel_address(panel_id))
        flash = None
        if "flash" in over:
            flash = Path(over["flash"])
        elif fleet.flash_dir is not None:
            flash = fleet.flash_dir / f"panel-{panel_id}.flash"
        return PanelSettings(
            panel_id=panel_id,
            mode=mode,
            server=(self.vip, self.port),
            listen=(address, self.panel_port),
            serial=self.serial_line(panel_id, "serial"),
            tls=self.tls_for("panel", panel_id),
            buffer_bytes=parse_size(over.get("buffer", fleet.buffer)),
            policy=OverflowPolicy(over.get("policy", fleet.policy.value)),
            flash=flash,
            doors=int(over.get("doors", fleet.doors)),
            batch_records=int(over.get("batch", fleet.batch)),
            window=int(over.get("window", fleet.window)),
        )

    def serial_line(self, panel_id: int, end: str = "serial") -> SerialLine | None:
        """A panel's serial line: its own end (``serial``) or the node's (``node_serial``)."""
        over = self.overrides.get(panel_id, {})
        if end not in over:
            return None
        try:
            return SerialLine(
                path=Path(over[end]),
                baud=int(over.get("baud", 115_200)),
                parity=over.get("parity", "none"),
                throttle=bool(over.get("throttle", False)),
            )
        except (ValueError, TypeError) as exc:
            raise SiteError(f"{self.path}: panel {panel_id}: {exc}") from None

    def node_serial_lines(self) -> list[tuple[int, SerialLine]]:
        """The lines a node serves: every panel with a ``node_serial`` device."""
        lines = []
        for pid in sorted(self.overrides):
            line = self.serial_line(pid, "node_serial")
            if line is not None:
                lines.append((pid, line))
        return lines

    def check_transport(self, *addresses: str, serial: tuple[str | Path, ...] = ()) -> None:
        if self.insecure:
            check_plaintext_allowed(self.vip, *addresses)
            check_plaintext_serial(*serial)


_SITE_KEYS = {"name", "db", "pki", "insecure", "vip", "port", "panel_port", "heartbeat_ms"}
_FLEET_KEYS = {f.name for f in dataclasses.fields(FleetSpec)}
_PANEL_KEYS = {
    "id",
    "mode",
    "address",
    "buffer",
    "policy",
    "flash",
    "doors",
    "batch",
    "window",
    # A serial panel: its end of the line, the node's end, and the line's settings.
    "serial",
    "node_serial",
    "baud",
    "parity",
    "throttle",
}
_MODES = {"punch-out", "host-initiated", "mixed"}


def _check_keys(where: str, table: dict[str, Any], allowed: set[str], path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SiteError(f"{path}: unknown key {where}{unknown[0]!r} (known: {', '.join(sorted(allowed))})")


_VRRP_KEYS = ("vrrp_state", "vrrp_pid")


def _vrrp_keys(path: Path, name: str, table: dict[str, Any]) -> dict[str, Path]:
    """A node's VRRP source (issue 17): both files or neither, relative to the site file."""
    given = [k for k in _VRRP_KEYS if k in table]
    if given and len(given) != len(_VRRP_KEYS):
        missing = next(k for k in _VRRP_KEYS if k not in table)
        raise SiteError(f"{path}: nodes.{name}.{given[0]} needs nodes.{name}.{missing} too")
    return {k: path.parent / str(table[k]) for k in given}


def load_site(path: Path | str | None) -> Site:
    """Read a site file; None gives the embedded loopback default."""
    if path is None:
        return Site(path=None)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SiteError(f"{path}: no such site file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{path}: not valid TOML: {exc}") from None
    _check_keys("", data, {"site", "nodes", "fleet", "panels"}, path)
    base = path.parent
    site_t = data.get("site", {})
    _check_keys("site.", site_t, _SITE_KEYS, path)
    fleet_t = data.get("fleet", {})
    _check_keys("fleet.", fleet_t, _FLEET_KEYS, path)
    try:
        fleet = FleetSpec(
            panels=int(fleet_t.get("panels", 10)),
            first_id=int(fleet_t.get("first_id", 1)),
            mode=str(fleet_t.get("mode", "punch-out")),
            buffer=parse_size(fleet_t.get("buffer", 1 << 20)),
            policy=OverflowPolicy(fleet_t.get("policy", "drop_oldest")),
            flash_dir=base / fleet_t["flash_dir"] if fleet_t.get("flash_dir") else None,
            rate=float(fleet_t.get("rate", 1.0)),
            doors=int(fleet_t.get("doors", 4)),
            batch=int(fleet_t.get("batch", 1024)),
            window=int(fleet_t.get("window", 4)),
        )
    except (ValueError, TypeError, SiteError) as exc:
        raise SiteError(f"{path}: [fleet]: {exc}") from None
    if fleet.mode not in _MODES:
        raise SiteError(f"{path}: fleet.mode {fleet.mode!r} is not one of {', '.join(sorted(_MODES))}")
    nodes = []
    for name, table in data.get("nodes", {}).items():
        _check_keys(f"nodes.{name}.", table, {"address", "heartbeat_via", *_VRRP_KEYS}, path)
        via = table.get("heartbeat_via")
        nodes.append(
            NodeSpec(
                name=name,
                address=str(table.get("address", "127.0.0.1")),
                heartbeat_via=None if via is None else str(via),
                **_vrrp_keys(path, name, table),
            )
        )
    overrides: dict[int, dict[str, Any]] = {}
    for index, table in enumerate(data.get("panels", [])):
        _check_keys(f"panels[{index}].", table, _PANEL_KEYS, path)
        if "id" not in table:
            raise SiteError(f"{path}: panels[{index}] has no 'id'")
        mode = table.get("mode")
        if mode is not None and mode not in (_MODES - {"mixed"}) | {"serial"}:
            raise SiteError(f"{path}: panels[{index}].mode {mode!r} is not punch-out, host-initiated or serial")
        if mode == "serial" and "serial" not in table:
            raise SiteError(f"{path}: panels[{index}] is a serial panel without 'serial' (its device path)")
        overrides[int(table["id"])] = {
            k: str(base / v) if k in ("serial", "node_serial") else v for k, v in table.items() if k != "id"
        }
    try:
        return Site(
            path=path,
            name=str(site_t.get("name", "fieldsync site")),
            db=base / site_t.get("db", "fieldsync.db"),
            pki=base / site_t.get("pki", "pki"),
            insecure=bool(site_t.get("insecure", False)),
            vip=str(site_t.get("vip", "127.0.0.100")),
            port=int(site_t.get("port", 30002)),
            panel_port=int(site_t.get("panel_port", 3001)),
            heartbeat_ms=int(site_t.get("heartbeat_ms", 1000)),
            nodes=tuple(nodes) or Site.__dataclass_fields__["nodes"].default,  # type: ignore[arg-type]
            fleet=fleet,
            overrides=overrides,
        )
    except (ValueError, TypeError) as exc:
        raise SiteError(f"{path}: [site]: {exc}") from None


def write_pair_site(
    path: Path,
    *,
    pki_dir: Path | str = "pki",
    port: int = 30002,
    panels: int = 10,
    mode: str = "mixed",
    buffer: str = "1MiB",
    batch: int = 1024,
    rate: float = 1.0,
    name: str = "fieldsync site",
    heartbeat_proxies: bool = False,
) -> Path:
    """Write a site file for the embedded default: nodes A and B on 127.0.0.11/.12 sharing
    ``site.db`` beside the file, the VIP on ``port``, panels listening on ``port + 1``.
    With ``heartbeat_proxies`` each node's beats reach it through 127.0.0.21/.22 (a fault proxy)."""
    via_a, via_b = (
        ('heartbeat_via = "127.0.0.21"\n', 'heartbeat_via = "127.0.0.22"\n') if heartbeat_proxies else ("", "")
    )
    path.write_text(
        f"""[site]
name = "{name}"
db = "site.db"
pki = "{pki_dir}"
port = {port}
panel_port = {port + 1}

[nodes.A]
address = "127.0.0.11"
{via_a}[nodes.B]
address = "127.0.0.12"
{via_b}
[fleet]
panels = {panels}
mode = "{mode}"
rate = {rate}
buffer = "{buffer}"
batch = {batch}
"""
    )
    return path


def issue_pair_pki(site: Site, name: str) -> None:
    """A site CA and certificates for nodes A and B and every panel of the site."""
    pki.init_ca(site.pki, site=name)
    for node in ("A", "B"):
        pki.issue(site.pki, "node", node)
    for pid in site.panel_ids():
        pki.issue(site.pki, "panel", pid)


def seed_config(db: Path, *, doors: int, cardholders: int) -> ConfigStore:
    """The starting configuration: an always-open schedule, a level to every door, cardholders."""
    config = ConfigStore(db)
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
