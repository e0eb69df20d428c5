"""A cluster node's settings and role."""

from __future__ import annotations

import dataclasses
import enum
import time
from pathlib import Path

from protocol.streams import TlsFiles

__all__ = ["ClusterSettings", "Role"]


class Role(enum.Enum):
    STANDBY = "standby"
    ACTIVE = "active"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    node_id: str
    #: This node's own address (127.0.0.11 / .12 on loopback).
    address: str
    #: The shared store (a SQLite file), or in mirrored mode this node's own PostgreSQL URL.
    db: Path | str
    vip: str = "127.0.0.100"
    port: int = 30002
    dial: tuple[tuple[int, str, int], ...] = ()
    tls: TlsFiles | None = None
    heartbeat_ms: int = 1000
    idle_ms: int = 10_000
    #: ``NodeSettings.ingest``: ``rows`` or ``log`` (the batch log, either engine).
    ingest: str = "rows"
    materialize_idle: float = 0.05
    max_log_age: float = 2.0
    max_log_lag: int = 4_000_000
    #: Node-to-node heartbeat (through the shared store) and lease timing.
    beat_interval: float = 0.1
    dead_after: float = 0.3
    lease: float = 1.0
    stonith: bool = True
    #: Take the VIP back from the other node when this one is back and in sync.
    failback: bool = False
    #: How long a returning node must have been a healthy standby before failback.
    failback_after: float = 3.0
    #: Stop heartbeating if this node's own event loop has not run for this long.
    loop_stall: float = 5.0
    #: The other nodes' (name, address); heartbeats go to them as UDP datagrams.
    peers: tuple[tuple[str, str], ...] = ()
    #: UDP port of the node-to-node heartbeat (each node listens on its own address).
    beat_port: int = 30007
    #: The park address (docs/protocol.md 6.3) this node listens on while it stands by, so
    #: that a takeover finds its panels' sessions up; None: no parking.
    park: tuple[str, int] | None = None
    #: The site's panels; others are refused with UNKNOWN_PANEL (None admits any certified panel).
    known_panels: frozenset[int] | None = None
    #: VRRP: the file keepalived's notify script writes the state to, and the pid file of
    #: keepalived's VRRP process. Set, the node serves only while its host is MASTER.
    vrrp_state: Path | None = None
    vrrp_pid: Path | None = None
    #: Mirrored storage (``_mirrored``): ``sync`` or ``async``; None: one shared store.
    mirror: str | None = None
    #: In mirrored mode, the other node's own PostgreSQL URL.
    peer_db: str | None = None
    #: In mirrored mode, this node's PostgreSQL data directory, when it is on this machine
    #: (a stale primary rewinds it to rejoin); None: an operator rejoins it.
    pg_data: Path | None = None
    #: In mirrored mode, the witness's (host, port) (``_witness``): the primary may then serve
    #: alone, and a standby promotes only while the witness lists it in sync. None: strict.
    witness: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.beat_interval < self.dead_after <= self.lease:
            raise ValueError("need 0 < beat_interval < dead_after <= lease")
        if (self.vrrp_state is None) != (self.vrrp_pid is None):
            raise ValueError("vrrp_state and vrrp_pid go together")
        if self.mirror is not None and (self.mirror not in ("sync", "async") or self.peer_db is None):
            raise ValueError("a mirrored node needs mirror = sync or async and the other node's database")


def _now_us() -> int:
    return time.time_ns() // 1000
