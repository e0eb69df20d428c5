"""The site file (TOML): panels, nodes, addresses, keys; every CLI flag's default.

Each table is a model (``_toml.toml_table``) that declares its keys and their defaults
once. Unknown keys and bad values are errors that name the file, the line and the key
(and the key meant, for a typo), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from emulator import LinkMode, PanelSettings, panel_address
from protocol.streams import SerialLine, TlsFiles, check_plaintext_allowed, check_plaintext_serial
from storage import OverflowPolicy, is_database_url

from ..engine import ClusterSettings
from . import pki
from ._toml import TomlDocument, TomlFileError, TomlTable, refuse, toml_table

__all__ = [
    "FleetSpec",
    "NodeSpec",
    "PanelSpec",
    "Site",
    "SiteError",
    "Size",
    "heartbeat_port",
    "load_site",
    "parse_address",
    "parse_site",
    "parse_size",
]


class SiteError(TomlFileError):
    """The site file (or a flag) says something fieldsync cannot use; from a file, ``line`` and
    ``key`` say where."""


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


def _size(value: Any) -> Any:
    try:
        return parse_size(value) if isinstance(value, str | int) and not isinstance(value, bool) else value
    except SiteError as exc:
        raise ValueError(str(exc)) from None


def _resolved(base: Path, db: Path | str) -> Path | str:
    return db if isinstance(db, str) else base / db


def _store_target(value: Any) -> Any:
    # A URL stays text (a Path would fold its "//"); anything else is a path.
    return value if is_database_url(value) else Path(value) if isinstance(value, str) else value


#: A size in bytes: ``65536``, ``"64KiB"``, ``"32MiB"``.
Size = Annotated[StrictInt, BeforeValidator(_size), Field(ge=0)]
Mode = Literal["punch-out", "host-initiated", "mixed"]


@toml_table
class _NodeTable(TomlTable):
    """``[nodes.NAME]``."""

    address: StrictStr = "127.0.0.1"
    #: Where the other nodes send this node's heartbeats (a fault proxy); default: ``address``.
    heartbeat_via: StrictStr | None = None
    #: VRRP (issue 17): keepalived's notify script's state file and its VRRP process's pid
    #: file, both or neither; relative to the site file's directory.
    vrrp_state: Path | None = None
    vrrp_pid: Path | None = None
    #: Mirrored storage (``[site] mirror``): this node's own PostgreSQL, a ``postgresql://`` URL
    #: naming its host and port.
    db: StrictStr | None = None
    #: Mirrored storage: this node's PostgreSQL data directory when it is on the node's machine
    #: (a stale primary rewinds it to rejoin); relative to the site file's directory.
    pg_data: Path | None = None

    @field_validator("db")
    @classmethod
    def _a_database_url(cls, value: str | None) -> str | None:
        if value is not None and not is_database_url(value):
            raise ValueError("a node's own database is a postgresql:// URL (mirrored storage)")
        return value

    @model_validator(mode="after")
    def _both_vrrp_files_or_neither(self) -> _NodeTable:
        if (self.vrrp_state is None) != (self.vrrp_pid is None):
            given, missing = ("vrrp_state", "vrrp_pid") if self.vrrp_pid is None else ("vrrp_pid", "vrrp_state")
            raise refuse(f"{given} needs {missing} too (keepalived's state file and its pid file)", given)
        return self


@toml_table
class NodeSpec(_NodeTable):
    """A node of the site: its ``[nodes.NAME]`` table and its name."""

    name: StrictStr


#: The embedded default pair: nodes A and B on loopback.
_PAIR = {"A": "127.0.0.11", "B": "127.0.0.12"}
_PAIR_NODES = tuple(NodeSpec(name=name, address=address) for name, address in _PAIR.items())


@toml_table
class FleetSpec(TomlTable):
    """``[fleet]``: the panels of the site and what each gets unless its ``[[panels]]`` entry says otherwise."""

    panels: StrictInt = Field(default=10, ge=0)
    first_id: StrictInt = Field(default=1, ge=1)
    mode: Mode = "punch-out"
    buffer: Size = 1 << 20
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    #: Relative to the site file's directory.
    flash_dir: Path | None = None
    rate: StrictFloat = Field(default=1.0, ge=0)
    doors: StrictInt = Field(default=4, ge=1)
    batch: StrictInt = Field(default=4096, ge=1)
    window: StrictInt = Field(default=4, ge=1)


@toml_table
class PanelSpec(TomlTable):
    """A ``[[panels]]`` entry: one panel's settings where they differ from ``[fleet]`` (``None``:
    the fleet's), or a serial panel (its end of the line, the node's end, the line's settings;
    ``None``: ``SerialLine``'s defaults)."""

    id: StrictInt = Field(ge=1)
    mode: Literal["punch-out", "host-initiated", "serial"] | None = None
    address: StrictStr | None = None
    buffer: Size | None = None
    policy: OverflowPolicy | None = None
    flash: Path | None = None
    doors: StrictInt | None = Field(default=None, ge=1)
    batch: StrictInt | None = Field(default=None, ge=1)
    window: StrictInt | None = Field(default=None, ge=1)
    #: Relative to the site file's directory.
    serial: Path | None = None
    node_serial: Path | None = None
    baud: StrictInt | None = None
    parity: StrictStr | None = None
    throttle: StrictBool | None = None

    @model_validator(mode="after")
    def _a_line_that_opens(self) -> PanelSpec:
        if self.mode == "serial" and self.serial is None:
            raise refuse("a serial panel needs 'serial' (its device path)")
        device = self.serial or self.node_serial
        if device is not None:
            for key in ("baud", "parity", "throttle"):  # each by SerialLine's own rules, at its own key
                if getattr(self, key) is not None:
                    try:
                        SerialLine(path=device, **{key: getattr(self, key)})
                    except ValueError as exc:
                        raise refuse(str(exc), key) from None
        return self

    def line_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("baud", "parity", "throttle") if getattr(self, k) is not None}


def _host_port(value: str) -> str:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: HOST:PORT, e.g. 198.18.0.200:5440")
    return value


@toml_table
class _SiteTable(TomlTable):
    """``[site]``. Paths are relative to the site file's directory."""

    name: StrictStr = "fieldsync site"
    #: A SQLite file (relative to the site file's directory) or a ``postgresql://`` URL.
    db: Annotated[Path | str, BeforeValidator(_store_target)] = Path("fieldsync.db")
    pki: Path = Path("pki")
    insecure: StrictBool = False
    vip: StrictStr = "127.0.0.100"
    port: StrictInt = Field(default=30002, ge=1, le=65535)
    panel_port: StrictInt = Field(default=3001, ge=1, le=65535)
    #: Parked sessions (docs/protocol.md 6.3): each node listens on ``address:park_port``
    #: while it stands by, and every TCP panel keeps a session parked at each node it is not
    #: in session with, so that a takeover is one round trip, not a TCP and TLS set-up.
    park: StrictBool = False
    park_port: StrictInt = Field(default=30003, ge=1, le=65535)
    #: H and I of docs/protocol.md 9.1: a busy session's heartbeat, a quiet panel's probe.
    heartbeat_ms: StrictInt = Field(default=1000, ge=1)
    idle_ms: StrictInt = Field(default=10_000, ge=1, lt=2**32)
    #: What an ACK waits for: ``rows`` (every event's row in the store) or ``log`` (the batch
    #: in the store's batch log, its rows materialized behind it; either engine).
    ingest: Literal["rows", "log"] = "rows"
    #: ``log``: seconds without a commit before the materializer takes a step (0: at once),
    #: unless the log's oldest batch is ``max_log_age`` seconds old.
    materialize_idle: StrictFloat | StrictInt = Field(default=0.05, ge=0)
    max_log_age: StrictFloat | StrictInt = Field(default=2.0, ge=0)
    #: ``log``: the most events acknowledged and not yet materialized; past it commits wait
    #: (the panels' reads pause). 4,000,000 events is 128 MB of log.
    max_log_lag: StrictInt = Field(default=4_000_000, ge=1)
    #: Mirrored storage: each node on its own PostgreSQL (``[nodes.NAME] db``), the active's the
    #: primary and the other's its replica: ``sync`` (an ACK once the commit is on both) or
    #: ``async`` (once it is on the primary: the WAN edition). None: one shared store (``db``).
    mirror: Literal["sync", "async"] | None = None
    #: Mirrored storage's witness (``fieldsync witness``), ``HOST:PORT`` on a third host: with
    #: one, the primary may serve alone when its standby is gone, and a standby promotes only
    #: if the witness says it is in sync. None: the pair waits for both (strict).
    witness: Annotated[str, AfterValidator(_host_port)] | None = None

    @model_validator(mode="after")
    def _idle_at_least_heartbeat(self) -> _SiteTable:
        check_intervals(self.heartbeat_ms, self.idle_ms)
        return self

    def witness_address(self) -> tuple[str, int] | None:
        if self.witness is None:
            return None
        host, _, port = self.witness.rpartition(":")
        return host, int(port)


def check_intervals(heartbeat_ms: int, idle_ms: int) -> None:
    """A file's ``idle_ms`` is at least its ``heartbeat_ms`` (docs/protocol.md 9.1), or refused at ``idle_ms``."""
    if idle_ms < heartbeat_ms:
        raise refuse(
            f"idle_ms {idle_ms} (10000 unless set) is below heartbeat_ms {heartbeat_ms}: a quiet panel's probe "
            "interval is at least the heartbeat interval (docs/protocol.md 9.1)",
            "idle_ms",
        )


@toml_table
class Site(_SiteTable):
    """A site: its ``[site]`` table (paths resolved), nodes, fleet, panels and CLI defaults.

    ``Site(path=None)`` is the embedded loopback default.
    """

    path: Path | None
    #: A site file without ``[nodes]``: the embedded pair.
    nodes: tuple[NodeSpec, ...] = _PAIR_NODES
    fleet: FleetSpec = FleetSpec()
    #: Each ``[[panels]]`` entry by panel id: the keys it gave (validated as a ``PanelSpec``).
    overrides: dict[int, dict[str, Any]] = Field(default_factory=dict)
    #: ``[defaults]``: CLI command paths (``serve``, ``cluster.up``) to option values, as written.
    defaults: dict[str, Any] = Field(default_factory=dict)
    #: The line of each key under ``[defaults]``, by its path below it (``("cluster", "up", "panels")``).
    defaults_lines: dict[tuple[str | int, ...], int] = Field(default_factory=dict)

    def panel_spec(self, panel_id: int) -> PanelSpec:
        """Panel ``panel_id``'s own settings (its ``overrides`` entry, typed).

        Raises:
            SiteError: the entry (given by code, say a CLI flag) is not a valid panel.
        """
        try:
            return PanelSpec(id=panel_id, **self.overrides.get(panel_id, {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            what = ".".join(str(p) for p in first["loc"])
            reason = (first.get("ctx") or {}).get("reason") or first["msg"]
            raise SiteError(f"{self.path}: panel {panel_id}: {what + ': ' if what else ''}{reason}") from None

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

    @property
    def db_file(self) -> Path:
        """The store as a SQLite file, for what runs only on one (the pair's shared store).

        Raises:
            SiteError: the site's store is a PostgreSQL URL.
        """
        if self.mirror is not None:
            raise SiteError(f"{self.path}: mirrored storage: each node has its own database ([nodes.NAME] db)")
        if isinstance(self.db, str):
            raise SiteError(
                f"{self.path}: db is a PostgreSQL URL; a pair on PostgreSQL is mirrored ([site] mirror, "
                "[nodes.NAME] db); one PostgreSQL server under both nodes is not built: use fieldsync serve"
            )
        return self.db

    def node_db(self, node_id: str) -> Path | str:
        """Where node ``node_id`` keeps its events: the shared store, or its own database (mirrored)."""
        if self.mirror is None:
            return self.db_file
        spec = {n.name: n for n in self.nodes}[node_id]
        assert spec.db is not None  # parse_site checked it
        return spec.db

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
        peer = next((n for n in self.nodes if n.name != node_id), None)
        return ClusterSettings(
            node_id=node_id,
            address=spec.address,
            db=self.node_db(node_id),
            mirror=self.mirror,
            peer_db=peer.db if self.mirror is not None and peer is not None else None,
            pg_data=spec.pg_data if self.mirror is not None else None,
            witness=self.witness_address() if self.mirror is not None else None,
            vip=self.vip,
            port=self.port,
            dial=dials,
            tls=self.tls_for("node", node_id),
            heartbeat_ms=self.heartbeat_ms,
            idle_ms=self.idle_ms,
            ingest=self.ingest,
            materialize_idle=float(self.materialize_idle),
            max_log_age=float(self.max_log_age),
            max_log_lag=self.max_log_lag,
            stonith=stonith,
            failback=failback,
            vrrp_state=spec.vrrp_state,
            vrrp_pid=spec.vrrp_pid,
            lease=lease,
            dead_after=dead_after,
            beat_interval=min(0.1, dead_after / 3),
            peers=tuple((n.name, n.heartbeat_via or n.address) for n in self.nodes if n.name != node_id),
            beat_port=heartbeat_port(self.port),
            park=(spec.address, self.park_port) if self.park else None,
            # A site file lists the panels; without one, any panel with a site certificate is served.
            known_panels=frozenset(self.panel_ids()) if self.path is not None else None,
        )

    def tls_for(self, role: str, name: str | int) -> TlsFiles | None:
        if self.insecure:
            return None
        return pki.tls_files(self.pki, role, name)

    def panel_settings(self, panel_id: int) -> PanelSettings:
        fleet = self.fleet
        spec = self.panel_spec(panel_id)
        mode_name = "serial" if spec.serial is not None else spec.mode or fleet.mode
        if mode_name == "mixed":
            mode = LinkMode.HOST_INITIATED if panel_id % 2 == 0 else LinkMode.PUNCH_OUT
        else:
            mode = LinkMode(mode_name)
        flash = spec.flash
        if flash is None and fleet.flash_dir is not None:
            flash = fleet.flash_dir / f"panel-{panel_id}.flash"
        return PanelSettings(
            panel_id=panel_id,
            mode=mode,
            server=(self.vip, self.port),
            listen=(spec.address or panel_address(panel_id), self.panel_port),
            serial=self.serial_line(panel_id, "serial"),
            tls=self.tls_for("panel", panel_id),
            buffer_bytes=fleet.buffer if spec.buffer is None else spec.buffer,
            policy=spec.policy or fleet.policy,
            flash=flash,
            doors=spec.doors or fleet.doors,
            batch_records=spec.batch or fleet.batch,
            window=spec.window or fleet.window,
            park=self.park_addresses() if mode is not LinkMode.SERIAL else (),
        )

    def park_addresses(self) -> tuple[tuple[str, str, int], ...]:
        """Each node's park address (docs/protocol.md 6.3) as (name, host, port); empty without ``park``."""
        return tuple((n.name, n.address, self.park_port) for n in self.nodes) if self.park else ()

    def serial_line(self, panel_id: int, end: Literal["serial", "node_serial"] = "serial") -> SerialLine | None:
        """A panel's serial line: its own end (``serial``) or the node's (``node_serial``)."""
        spec = self.panel_spec(panel_id)
        device = spec.serial if end == "serial" else spec.node_serial
        if device is None:
            return None
        return SerialLine(path=device, **spec.line_settings())

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


@toml_table
class _SiteFile(TomlTable):
    """A site file, as written."""

    site: _SiteTable = _SiteTable()
    nodes: dict[str, _NodeTable] = Field(default_factory=dict)
    fleet: FleetSpec = FleetSpec()
    panels: tuple[PanelSpec, ...] = ()
    #: Read by the CLI (its commands' option defaults); kept as written.
    defaults: dict[str, Any] = Field(default_factory=dict)


def load_site(path: Path | str | None) -> Site:
    """Read a site file; None gives the embedded loopback default.

    Raises:
        SiteError: no such file, not TOML, or the first problem in it at its line.
    """
    if path is None:
        return Site(path=None)
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SiteError(f"{path}: no such site file") from None
    return parse_site(text, path)


def parse_site(text: str, path: Path) -> Site:
    """The site file ``path`` whose text is ``text``; its paths are relative to ``path``'s directory.

    Raises:
        SiteError: naming the file, the line and the key of the first problem.
    """
    doc = TomlDocument.parse(text, str(path), error=SiteError)
    file = doc.validate(_SiteFile)
    base = path.parent
    overrides: dict[int, dict[str, Any]] = {}
    for index, panel in enumerate(file.panels):
        if panel.id in overrides:
            raise doc.fail(("panels", index, "id"), f"panel {panel.id} has another [[panels]] entry before this one")
        given = panel.file_items()
        del given["id"]
        for end in ("serial", "node_serial"):
            if end in given:
                given[end] = str(base / given[end])
        overrides[panel.id] = given
    table = {f.name: getattr(file.site, f.name) for f in dataclasses.fields(file.site)}
    fleet = file.fleet
    if fleet.flash_dir is not None:
        fleet = dataclasses.replace(fleet, flash_dir=base / fleet.flash_dir)
    nodes = tuple(
        NodeSpec(
            name=n,
            address=t.address,
            heartbeat_via=t.heartbeat_via,
            vrrp_state=None if t.vrrp_state is None else base / t.vrrp_state,
            vrrp_pid=None if t.vrrp_pid is None else base / t.vrrp_pid,
            db=t.db,
            pg_data=None if t.pg_data is None else base / t.pg_data,
        )
        for n, t in file.nodes.items()
    )
    for n, t in file.nodes.items():
        if file.site.mirror is not None and t.db is None:
            raise doc.fail(("nodes", n), f"[site] mirror = {file.site.mirror!r}: node {n} needs its own database (db)")
        if file.site.mirror is None and t.db is not None:
            raise doc.fail(("nodes", n, "db"), 'a node\'s own database needs [site] mirror = "sync" or "async"')
    if file.site.mirror is not None and len(file.nodes) != 2:
        raise doc.fail(("site", "mirror"), "mirrored storage is a pair: exactly two [nodes]")
    if file.site.witness is not None and file.site.mirror != "sync":
        raise doc.fail(("site", "witness"), 'a witness serves a synchronous mirror: [site] mirror = "sync"')
    return Site(
        **{
            **table,
            "db": file.site.db if isinstance(file.site.db, str) else base / file.site.db,
            "pki": base / file.site.pki,
        },
        path=path,
        nodes=nodes or _PAIR_NODES,
        fleet=fleet,
        overrides=overrides,
        defaults=file.defaults,
        defaults_lines={k[1:]: line for k, line in doc.lines.items() if k[:1] == ("defaults",) and len(k) > 1},
    )
