"""What lab to build (``LabSpec``) and where everything of it lives: namespaces, files, addresses."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from storage.postgres import DatabaseHost, Mirror, mirror_servers

from ..site import PairHosts
from ._system import LabError, Recognised

__all__ = ["HOSTS", "NODE_HOSTS", "VIP", "LabSpec", "node_address", "panel_lab_address"]

NODE_HOSTS = ("A", "B")
HOSTS = ("sw", *NODE_HOSTS, "panels")
VIP = "198.18.0.100"
_PREFIX = 16
_NODE_ADDRESS = {"A": "198.18.0.11", "B": "198.18.0.12"}
_PANEL_HOST_ADDRESS = "198.18.0.200"
#: Each node host's PostgreSQL (mirrored storage) listens on its address at its own port: the
#: two Unix sockets share the lab's ``pg`` directory, where the harness reaches them.
_PG_PORT = {"A": 5441, "B": 5442}
#: The witness of mirrored storage listens on the panel host's address at this port.
WITNESS_PORT = 5440
#: With a console, each node serves its metrics on its host's address at this port.
METRICS_PORT = 9100
#: A is preferred at a cold start; with ``nopreempt`` a returning A does not take the VIP back.
_PRIORITY = {"A": 110, "B": 100}
_MARK = "fieldsync-lab "
_NAME = re.compile(r"^[a-z0-9]{1,12}$")
_PANELS_PER_OCTET = 250
_MAX_PANELS = _PANELS_PER_OCTET * 200


def node_address(host: str) -> str:
    return _NODE_ADDRESS[host]


def panel_lab_address(panel_id: int) -> str:
    """Panel N's own address on the panel host: 198.18.1.1 for panel 1, 250 panels per third octet."""
    if not 0 < panel_id <= _MAX_PANELS:
        raise LabError(f"panel id {panel_id} has no lab address (1..{_MAX_PANELS})")
    return f"198.18.{1 + (panel_id - 1) // _PANELS_PER_OCTET}.{1 + (panel_id - 1) % _PANELS_PER_OCTET}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LabSpec:
    """What lab to build: its name (namespaces ``fsl-<name>-<host>``), its directory, the panels."""

    name: str
    directory: Path
    panels: int = 4
    #: The first panel's id (panels ``first_id .. first_id + panels - 1``).
    first_id: int = 1
    #: VRRP advertisement interval, seconds (VRRPv3: centiseconds, 0.01 .. 40.95).
    advert_int: float = 0.1
    virtual_router_id: int = 51
    port: int = 30002
    mode: str = "mixed"
    stonith: bool = True
    #: The nodes follow VRRP (serve only while their host is MASTER); False is the negative control.
    vrrp_gate: bool = True
    #: The sessions' heartbeat interval (the WELCOME's); an end gives up after 3 silent intervals.
    heartbeat_ms: int = 1000
    #: A quiet panel's probe interval (the WELCOME's ``idle_ms``), at least ``heartbeat_ms``.
    idle_ms: int = 10_000
    #: Mirrored storage: ``sync`` or ``async``, each node host with its own PostgreSQL; None:
    #: the shared SQLite store (one filesystem under both hosts).
    mirror: str | None = None
    #: Mirrored storage with a witness (``fieldsync witness``) on the panel host, the third
    #: place both node hosts reach (``WITNESS_PORT``).
    witness: bool = False
    #: ``HOST:PORT`` in the machine's own (root) namespace where ``lab up`` serves the web
    #: console, which reaches the lab from the panel host (``fieldsync console --netns``);
    #: the nodes then serve metrics on ``METRICS_PORT``. None: no console.
    console: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise LabError(f"lab name {self.name!r}: use 1-12 lower-case letters or digits")
        if self.panels < 1 or self.first_id < 1 or self.first_id + self.panels - 1 > _MAX_PANELS:
            raise LabError(f"--panels {self.panels}: a lab has panel ids 1..{_MAX_PANELS}")
        if not 0.01 <= self.advert_int <= 40.95 or abs(round(self.advert_int * 100) - self.advert_int * 100) > 1e-6:
            raise LabError(f"--advert-int {self.advert_int}: VRRPv3 takes 0.01 .. 40.95 s in steps of 0.01")
        if not 1 <= self.virtual_router_id <= 255:
            raise LabError(f"virtual_router_id {self.virtual_router_id}: VRRP takes 1 .. 255")
        if not 10 <= self.heartbeat_ms <= 60_000:
            raise LabError(f"--heartbeat-ms {self.heartbeat_ms}: 10 .. 60000")
        if not self.heartbeat_ms <= self.idle_ms <= 600_000:
            raise LabError(f"--idle-ms {self.idle_ms}: --heartbeat-ms ({self.heartbeat_ms}) .. 600000")
        if self.mode not in ("punch-out", "host-initiated", "mixed"):
            raise LabError(f"mode {self.mode!r}: punch-out, host-initiated or mixed")
        if self.mirror not in (None, "sync", "async"):
            raise LabError(f"--mirror {self.mirror!r}: sync or async")
        if self.witness and self.mirror != "sync":
            raise LabError("--witness serves a synchronous mirror: add --mirror sync")
        if self.console is not None and not re.match(r"^[^\s:]+:\d{1,5}$", self.console):
            raise LabError(f"--console {self.console!r}: expected HOST:PORT")

    def panel_ids(self) -> range:
        return range(self.first_id, self.first_id + self.panels)

    def pair_hosts(self) -> PairHosts:
        """The lab's addresses and VRRP files as a site file says them (``pair_site_toml(hosts=)``)."""
        vrrp = {h: (self.vrrp_state(h).name, self.vrrp_pid(h).name) for h in NODE_HOSTS} if self.vrrp_gate else {}
        return PairHosts(
            vip=VIP,
            nodes=dict(_NODE_ADDRESS),
            panels={p: panel_lab_address(p) for p in self.panel_ids()},
            vrrp=vrrp,
        )

    def namespace(self, host: str) -> str:
        return f"fsl-{self.name}-{host}"

    @property
    def pg_dir(self) -> Path:
        """The node hosts' PostgreSQL data directories (``pg-A``, ``pg-B``) and sockets (mirrored).

        In the system's temp directory, by the lab's name: the server user must reach it
        (the lab's own directory may sit below one only root can enter, pytest's for one),
        and a Unix socket's path must stay under 108 bytes. ``down`` removes it, keeping the
        servers' logs in the lab's directory."""
        return Path(tempfile.gettempdir()) / f"fieldsync-lab-{self.name}-pg"

    def database_hosts(self) -> dict[str, DatabaseHost]:
        """Where each node host's PostgreSQL listens, and in which namespace it runs."""
        return {h: DatabaseHost(_NODE_ADDRESS[h], _PG_PORT[h], self.namespace(h)) for h in NODE_HOSTS}

    def databases(self) -> Mirror:
        """The node hosts' databases as a ``Mirror`` that this process reaches (their Unix sockets)."""
        mode: Literal["sync", "async"] = "sync" if self.mirror == "sync" else "async"
        return Mirror(mirror_servers(self.pg_dir, self.database_hosts()), mode=mode)

    def metrics_address(self, host: str) -> str:
        """Where ``host``'s node serves its metrics (with a console), as the panel host reaches it."""
        return f"{_NODE_ADDRESS[host]}:{METRICS_PORT}"

    def witness_address(self) -> str | None:
        """The witness's ``HOST:PORT`` (on the panel host), as the site file names it."""
        return f"{_PANEL_HOST_ADDRESS}:{WITNESS_PORT}" if self.witness else None

    def database_urls(self) -> dict[str, str]:
        """Each node's database as its node reaches it (its site file's ``db``)."""
        return {h: f"postgresql://postgres@{d.address}:{d.port}/postgres" for h, d in self.database_hosts().items()}

    def file(self, kind: str, host: str, suffix: str) -> Path:
        return self.directory / f"{kind}-{host}.{suffix}"

    @property
    def site_path(self) -> Path:
        return self.directory / "site.toml"

    @property
    def record_path(self) -> Path:
        return self.directory / "lab.json"

    def vrrp_state(self, host: str) -> Path:
        return self.file("vrrp", host, "state")

    def node_track(self, host: str) -> Path:
        """keepalived's track file for ``host``: 0 while its node runs, 1 once it ended."""
        return self.file("node", host, "track")

    def vrrp_pid(self, host: str) -> Path:
        """The pid file of keepalived's VRRP process (``-r``): the process that speaks VRRP."""
        return self.file("keepalived", host, "vrrp.pid")

    def recognised_on(self, kind: str, host: str) -> Recognised:
        if kind == "keepalived":
            return Recognised(program="keepalived", marker=str(self.file("keepalived", host, "conf")))
        if kind == "witness":
            return Recognised(program="fieldsync", marker=str(self.file("witness", host, "json")))
        if kind == "console":
            return Recognised(program="fieldsync", marker=self.namespace(host))
        return Recognised(program="fieldsync", marker=str(self.site_path))

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["directory"] = str(self.directory)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in fields}
        kept["directory"] = Path(kept["directory"])
        return cls(**kept)
