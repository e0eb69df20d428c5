"""What `fieldsync cluster status`, `fieldsync status` and the console show: read once, here.

The pair's view (lease, each node's beat, and on mirrored storage each database's role and
replicas) and the switchover request used to live inside the CLI's commands; the console
serves the same facts, so they are functions of a site here and the commands call them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from protocol import RECORD_SIZE
from storage import ClusterStore, EventStoreInterface, Lease, NodeBeat, StoreError, open_cluster_store

from ..site import Site, SiteError

if TYPE_CHECKING:
    from storage.postgres import Mirror

__all__ = ["PairView", "fleet_rows", "pair_view", "request_switchover", "site_mirror"]

#: A node whose last beat is older than this is shown silent (the text of `cluster status`).
ALIVE_WITHIN_S = 1.0


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PairView:
    """The pair as its store says: what `cluster status` prints."""

    lease: Lease
    nodes: Mapping[str, NodeBeat]
    #: Mirrored storage only: each node's database (role, where, epoch, replicas).
    databases: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """`cluster status --json`."""
        return {
            "lease": as_dict(self.lease),
            "nodes": {k: as_dict(v) for k, v in self.nodes.items()},
            "databases": dict(self.databases),
        }

    def holder_at(self, now_us: int) -> str | None:
        """The node holding the VIP at ``now_us``: the lease's holder while the lease runs."""
        return self.lease.holder if self.lease.held_at(now_us) else None

    def lease_left_s(self, now_us: int) -> float:
        return max(0, self.lease.lease_until_us - now_us) / 1e6

    def silent_s(self, node: str, now_us: int) -> float:
        return (now_us - self.nodes[node].heartbeat_us) / 1e6

    def alive(self, node: str, now_us: int) -> bool:
        return self.silent_s(node, now_us) < ALIVE_WITHIN_S


def site_mirror(site: Site) -> Mirror:
    """The mirrored pair's two databases, as the site names them."""
    from storage.postgres import Mirror

    urls = {n.name: str(site.node_db(n.name)) for n in site.nodes}
    return Mirror.from_urls(urls, {n.name: n.pg_data for n in site.nodes}, mode=site.mirror or "sync")


def pair_view(site: Site, *, store: ClusterStore | None = None, mirror: Mirror | None = None) -> PairView:
    """Read the pair's state now. ``store`` / ``mirror``: opened once by a caller that reads
    often (a watch, the console); None opens them for this read.

    Raises:
        StoreError: the shared store cannot be read.
        SiteError: on mirrored storage, neither node's database answers.
    """
    if site.mirror is not None:
        return _mirrored_view(site, mirror or site_mirror(site))
    own = store is None
    store = store or ClusterStore(site.db_file)
    try:
        return PairView(lease=store.lease(), nodes=store.nodes())
    finally:
        if own:
            store.close()


def _mirrored_view(site: Site, mirror: Mirror) -> PairView:
    """The newest lease and beats of the two databases, and each database's role and replicas."""
    from storage.postgres import MirrorError

    lease: Lease | None = None
    beats: dict[str, NodeBeat] = {}
    databases: dict[str, dict[str, Any]] = {}
    for name, server in mirror.servers.items():
        role: str = mirror.role(name)
        epoch: int | None = None
        replicas: list[dict[str, Any]] = []
        if role != "down":
            try:
                store = open_cluster_store(server.url())
                try:
                    here = store.lease()
                    epoch = here.epoch
                    if lease is None or here.epoch > lease.epoch:
                        lease, beats = here, store.nodes()
                finally:
                    store.close()
                if role == "primary":
                    replicas = [as_dict(r) for r in mirror.replication(name)]
            except (StoreError, MirrorError) as exc:
                role = f"{role} ({exc})"
        databases[name] = {"role": role, "where": f"{server.host}:{server.port}", "epoch": epoch, "replicas": replicas}
    if lease is None:
        raise SiteError(f"{site.path}: neither node's database answers ({', '.join(databases)})")
    return PairView(lease=lease, nodes=beats, databases=databases)


def request_switchover(site: Site, to_node: str) -> Lease:
    """Ask the active node to hand the VIP to ``to_node`` (it releases its lease to it):
    what `cluster switchover --to` does.

    Raises:
        SiteError: ``to_node`` is not in the site, or no database answers as the one primary.
        StoreError: the store cannot be written.
    """
    if to_node not in {n.name for n in site.nodes}:
        raise SiteError(f"node {to_node!r} is not in the site")
    if site.mirror is not None:
        primary = site_mirror(site).newest_primary()
        if primary is None:
            raise SiteError(f"{site.path}: no node's database answers as the one primary")
        lease_store = open_cluster_store(site.node_db(primary))
        try:
            return lease_store.request_switchover(to_node)
        finally:
            lease_store.close()
    store = ClusterStore(site.db_file)
    try:
        return store.request_switchover(to_node)
    finally:
        store.close()


def fleet_rows(store: EventStoreInterface, budgets: Mapping[int, int]) -> list[dict[str, Any]]:
    """`fieldsync status`'s rows (``EventStore.status``) with each panel's backlog, the one
    `status` prints (its newest reported seq less the stored hwm), and the buffer fill that
    backlog means against the panel's byte budget (``budgets``, from the site; None when
    the site does not list the panel)."""
    rows = []
    for r in store.status():
        newest = r.get("newest_seq") or r["hwm"]
        backlog = max(0, int(newest) - int(r["hwm"]))  # type: ignore[call-overload]
        budget = budgets.get(int(r["panel_id"]))  # type: ignore[call-overload]
        fill = None if not budget else min(1.0, backlog * RECORD_SIZE / budget)
        rows.append({**r, "backlog": backlog, "buffer_fill": fill})
    return rows
