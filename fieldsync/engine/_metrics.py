"""The node's Prometheus endpoint: ``GET /metrics`` in the text exposition format.

Read, not instrumented: a custom collector reads the counters the node already keeps
(``Node.statistics()``, the cluster node's role and counts) when it is scraped, so the hot
paths take no lock. The one thing observed as it happens is the commit-latency histogram,
plain ints bumped once per commit by the ingest task (``_Ingest.commit_buckets``).

Served by a small h11 server in the node's own trio loop (the fault API's model), so a
scrape reads the node's state from the thread that writes it: nothing is read half-way
through a change, and no thread is added. A scrape costs the loop the time to format
some thirty samples.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ._cluster import ClusterNode
from ._cluster_settings import Role
from ._http import HttpRequest, send_response, serve_http
from ._ingest import COMMIT_BUCKETS
from ._node import Node, NodeStatistics

if TYPE_CHECKING:
    from emulator import Fleet, PanelStatistics
    from storage.postgres import ReplicationState

__all__ = ["MetricsError", "Render", "ReplicationWatch", "fleet_render", "metrics_registry", "serve_metrics"]

log = logging.getLogger("fieldsync.metrics")

MAX_REQUEST = 16 * 1024
IDLE_TIMEOUT = 10.0


class MetricsError(Exception):
    """The metrics endpoint cannot serve (its address cannot be bound)."""


def _node_families(s: NodeStatistics) -> Iterator[Metric]:
    yield GaugeMetricFamily("fieldsync_sessions_live", "Panel sessions live now.", value=s.sessions)
    yield CounterMetricFamily("fieldsync_sessions", "Panel sessions welcomed.", value=s.sessions_total)
    yield CounterMetricFamily("fieldsync_sessions_rejected", "HELLOs refused (admission).", value=s.rejected)
    yield CounterMetricFamily("fieldsync_events_stored", "Events committed to the store.", value=s.events_stored)
    yield CounterMetricFamily(
        "fieldsync_alarms_stored", "Alarms added to the store's alarms (lane and batches).", value=s.alarms_stored
    )
    yield CounterMetricFamily(
        "fieldsync_events_duplicate", "Events received again, at or below the hwm.", value=s.events_duplicate
    )
    yield CounterMetricFamily(
        "fieldsync_events_declared_lost", "Events panels declared dropped from their buffers.", value=s.declared_lost
    )
    yield CounterMetricFamily(
        "fieldsync_batches_refused", "Batches the store refused (a seq gap).", value=s.refused_batches
    )
    errors = CounterMetricFamily(
        "fieldsync_protocol_errors", "Sessions ended by a peer breaking the protocol.", labels=["code"]
    )
    for code, count in s.protocol_error_codes:
        errors.add_metric([code.name], count)
    yield errors
    yield CounterMetricFamily("fieldsync_bad_frames", "Frames failing their CRC on serial lines.", value=s.bad_frames)
    yield CounterMetricFamily(
        "fieldsync_line_noise_bytes", "Bytes of line noise skipped on serial lines.", value=s.bytes_skipped
    )
    yield CounterMetricFamily("fieldsync_link_errors", "Sessions ended by their link.", value=s.link_errors)
    yield CounterMetricFamily("fieldsync_commits", "Group commits (ingest transactions).", value=s.commits)
    cumulative, buckets = 0, []
    for bound, count in zip((*COMMIT_BUCKETS, float("inf")), s.commit_buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
    yield HistogramMetricFamily(
        "fieldsync_commit_duration_seconds",
        "Seconds inside one ingest transaction, BEGIN to COMMIT returned.",
        buckets=buckets,
        sum_value=s.commit_s,
    )
    yield GaugeMetricFamily(
        "fieldsync_ingest_queue_batches", "Batches queued for commit, every panel.", value=s.queued_batches
    )
    yield GaugeMetricFamily(
        "fieldsync_batch_log_events",
        "Events acknowledged from the batch log and not yet materialized into events (ingest = log).",
        value=s.log_lag_events,
    )
    yield CounterMetricFamily(
        "fieldsync_events_materialized", "Events moved from the batch log into events.", value=s.materialized
    )
    yield GaugeMetricFamily(
        "fieldsync_batch_log_lag_seconds",
        "The oldest logged batch's age when the materializer moved it, the most since the node started.",
        value=s.materialize_lag_s,
    )
    yield GaugeMetricFamily("fieldsync_config_version", "The configuration version served.", value=s.config_version)


def _info(node_id: str) -> Metric:
    info = GaugeMetricFamily("fieldsync_node_info", "This node's name (always 1).", labels=["node"])
    info.add_metric([node_id], 1)
    return info


class _NodeCollector:
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterable[Metric]:
        s = self.node.statistics()
        yield _info(s.node_id)
        yield GaugeMetricFamily("fieldsync_epoch", "The epoch this node serves with.", value=s.epoch)
        yield from _node_families(s)


class _ClusterCollector:
    def __init__(self, cluster: ClusterNode) -> None:
        self.cluster = cluster

    def collect(self) -> Iterable[Metric]:
        c = self.cluster
        yield _info(c.node_id)
        yield GaugeMetricFamily("fieldsync_epoch", "The epoch this node last served with or took.", value=c.epoch)
        role = GaugeMetricFamily("fieldsync_node_role", "1 for this node's role now.", labels=["role"])
        for r in Role:
            role.add_metric([r.value], 1 if c.role is r else 0)
        yield role
        node = c.node
        serving = node is not None and bool(node.listeners) and not node.fenced.is_set()
        yield GaugeMetricFamily("fieldsync_node_vip_held", "1 while this node serves on the VIP.", value=serving)
        yield CounterMetricFamily("fieldsync_node_takeovers", "Times this node became active.", value=c.takeovers)
        yield CounterMetricFamily("fieldsync_node_fenced", "Times this node was fenced.", value=c.fenced_count)
        yield CounterMetricFamily(
            "fieldsync_node_stonith_kills", "Silent actives this node killed.", value=c.stonith_kills
        )
        if node is not None:  # the serving node's counts, from 0 at each takeover
            yield from _node_families(node.statistics())


class ReplicationWatch:
    """A mirrored node's view of its own database's replication, for its metrics: read once a
    second in a thread (a scrape never waits on a database), the last reading served.

    A primary: each standby's state, whether it is the synchronous one, and how far its
    flushed and its replayed WAL are behind the primary's. A standby: how far its replay is
    behind the WAL it has received. A database that does not answer: role ``down``.
    """

    #: Seconds one reading may take (to connect, and each statement).
    TIMEOUT = 2.0

    def __init__(self, url: str, *, node_id: str, nodes: Collection[str], every: float = 1.0) -> None:
        self.url = url
        self.node_id = node_id
        self.nodes = tuple(nodes)
        self.every = every
        self.state: ReplicationState | None = None
        #: trio time of the last reading: one older than ``stale_after`` is no reading.
        self.read_at = 0.0

    @property
    def stale_after(self) -> float:
        return 3 * (self.every + self.TIMEOUT)

    def __repr__(self) -> str:
        return f"<ReplicationWatch node {self.node_id}: {self.state.role if self.state else 'not read yet'}>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read until cancelled; ``started`` after the first reading."""
        from storage.postgres import replication_state

        what = f"node {self.node_id}'s database"
        read = functools.partial(replication_state, self.url, nodes=self.nodes, what=what, timeout=self.TIMEOUT)
        limiter = trio.CapacityLimiter(1)

        async def take() -> None:
            try:
                self.state = await trio.to_thread.run_sync(read, limiter=limiter, abandon_on_cancel=True)
            except Exception as exc:  # the metrics' helper must never take the node down
                log.warning("reading %s's replication: %s", what, exc)
                self.state = ReplicationState(role="down", error=f"{what}: {exc}")
            self.read_at = trio.current_time()

        await take()
        task_status.started()
        while True:
            await trio.sleep(self.every)
            await take()

    def collect(self) -> Iterable[Metric]:
        from storage.postgres import ReplicationState

        state = self.state
        if state is None:
            return
        if trio.current_time() - self.read_at > self.stale_after:  # a reading that hangs: no answer
            state = ReplicationState(role="down", error="no reading")
        role = GaugeMetricFamily(
            "fieldsync_database_role", "1 for what this node's own database is now (mirrored).", labels=["role"]
        )
        for name in ("primary", "standby", "down"):
            role.add_metric([name], 1 if state.role == name else 0)
        yield role
        if state.role == "primary":
            streaming = [r for r in state.replicas if r.state == "streaming"]
            yield GaugeMetricFamily(
                "fieldsync_replication_replicas", "Standbys streaming from this node's database.", value=len(streaming)
            )
            lag = GaugeMetricFamily(
                "fieldsync_replication_lag_bytes",
                "WAL of this node's database that a standby has not flushed / replayed yet.",
                labels=["replica", "stage"],
            )
            in_sync = GaugeMetricFamily(
                "fieldsync_replication_in_sync",
                "1 while the standby streams as the synchronous one.",
                labels=["replica"],
            )
            for r in state.replicas:
                lag.add_metric([r.node, "flush"], r.flush_lag_bytes)
                lag.add_metric([r.node, "replay"], r.replay_lag_bytes)
                in_sync.add_metric([r.node], 1 if r.in_sync else 0)
            for peer in self.nodes:  # a standby that is gone is out of sync, not absent
                if peer != self.node_id and all(r.node != peer for r in state.replicas):
                    in_sync.add_metric([peer], 0)
            yield lag
            yield in_sync
        elif state.role == "standby":
            yield GaugeMetricFamily(
                "fieldsync_replication_receiving",
                "1 while this standby's WAL receiver streams from a primary.",
                value=1 if state.receiving else 0,
            )
            if state.replay_behind_bytes is not None:
                yield GaugeMetricFamily(
                    "fieldsync_replication_replay_behind_bytes",
                    "WAL this standby has received and not yet replayed.",
                    value=state.replay_behind_bytes,
                )


def replication_watch(cluster: ClusterNode) -> ReplicationWatch | None:
    """A mirrored node's ``ReplicationWatch`` (None on a shared store)."""
    s = cluster.settings
    if s.mirror is None:
        return None
    assert isinstance(s.db, str)
    return ReplicationWatch(s.db, node_id=s.node_id, nodes=(s.node_id, *(name for name, _ in s.peers)))


def metrics_registry(target: Node | ClusterNode, *, replication: ReplicationWatch | None = None) -> CollectorRegistry:
    """A registry whose collector reads ``target`` at each scrape (and ``replication``'s last reading)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(target) if isinstance(target, Node) else _ClusterCollector(target))
    if replication is not None:
        registry.register(replication)
    return registry


#: Each panel's gauges and counters: name, help, the value from its ``PanelStatistics``.
_PANEL_GAUGES: tuple[tuple[str, str, Callable[[PanelStatistics], float]], ...] = (
    ("fieldsync_panel_online", "1 while the panel is in a session.", lambda s: 1 if s.connected else 0),
    (
        "fieldsync_panel_buffer_fill_ratio",
        "The buffer's bytes in use over its budget.",
        lambda s: s.buffer_bytes / s.buffer_budget if s.buffer_budget else 0.0,
    ),
    ("fieldsync_panel_buffered_events", "Records in the buffer, not yet acknowledged.", lambda s: s.buffer_depth),
    ("fieldsync_panel_alarms_pending", "Alarm copies queued for the alarm lane.", lambda s: s.alarms_pending),
    ("fieldsync_panel_config_version", "The configuration version the panel holds.", lambda s: s.config_version),
    ("fieldsync_panel_epoch", "The epoch of the panel's session.", lambda s: s.epoch),
)
_PANEL_COUNTERS: tuple[tuple[str, str, Callable[[PanelStatistics], float]], ...] = (
    ("fieldsync_panel_events_emitted", "Events the panel recorded (this boot).", lambda s: s.emitted),
    ("fieldsync_panel_events_acked", "Events acknowledged to the panel (this boot).", lambda s: s.acked),
    ("fieldsync_panel_sessions", "Sessions the panel began.", lambda s: s.sessions),
    ("fieldsync_panel_link_errors", "Sessions the panel's link ended.", lambda s: s.link_errors),
    ("fieldsync_panel_protocol_errors", "Sessions ended by a protocol error.", lambda s: s.protocol_errors),
)
#: Why a panel lost events (``fieldsync_panel_events_dropped``'s ``reason``).
_DROP_REASONS: tuple[tuple[str, Callable[[PanelStatistics], int]], ...] = (
    ("overflow", lambda s: s.dropped),
    ("refused", lambda s: s.refused),
    ("power_loss", lambda s: s.power_lost),
    ("server_lost", lambda s: s.server_lost),
)


class _FleetCollector:
    """The families of one snapshot of a fleet's panels."""

    def __init__(self, per: list[PanelStatistics]) -> None:
        self.per = per

    def collect(self) -> Iterable[Metric]:
        per = self.per
        yield GaugeMetricFamily("fieldsync_fleet_panels", "Panels of this fleet.", value=len(per))
        yield GaugeMetricFamily(
            "fieldsync_fleet_panels_online", "Panels in a session now.", value=sum(s.connected for s in per)
        )
        for name, text, value in _PANEL_GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["panel"])
            for s in per:
                gauge.add_metric([str(s.panel_id)], value(s))
            yield gauge
        for name, text, value in _PANEL_COUNTERS:
            counter = CounterMetricFamily(name, text, labels=["panel"])
            for s in per:
                counter.add_metric([str(s.panel_id)], value(s))
            yield counter
        dropped = CounterMetricFamily(
            "fieldsync_panel_events_dropped",
            "Events the panel lost, by reason: overflow (the oldest, a full buffer), refused (the newest, a full "
            "buffer), power_loss (a RAM buffer), server_lost (acknowledged, then not held by a server).",
            labels=["panel", "reason"],
        )
        for s in per:
            for reason, count in _DROP_REASONS:
                dropped.add_metric([str(s.panel_id), reason], count(s))
        yield dropped


#: What a scrape answers: the exposition text, made now.
Render = Callable[[], Awaitable[bytes]]


def fleet_render(fleet: Fleet) -> Render:
    """``fieldsync emulate --metrics``: each scrape takes the panels' counters in the fleet's
    loop (one consistent snapshot, about 18 ms for 1,000 panels), then formats them in a
    thread: 15,000 samples take prometheus_client about 0.2 s, which the loop, sharing the GIL
    with that thread, no longer spends in one block."""
    limiter = trio.CapacityLimiter(1)

    def text(per: list[PanelStatistics]) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FleetCollector(per))
        return generate_latest(registry)

    async def render() -> bytes:
        per = fleet.panel_statistics()
        return await trio.to_thread.run_sync(text, per, limiter=limiter)

    return render


def _registry_render(registry: CollectorRegistry) -> Render:
    async def render() -> bytes:
        return generate_latest(registry)  # a node's: some thirty samples, read in its own loop

    return render


async def _serve_connection(render: Render, stream: trio.SocketStream) -> None:
    text = [("content-type", "text/plain; charset=utf-8")]

    async def respond(conn: h11.Connection, request: HttpRequest) -> bool:
        path = request.target.split("?", 1)[0]
        if request.method != "GET":
            await send_response(conn, stream, 405, b"only GET\n", [*text, ("allow", "GET")])
        elif path != "/metrics":
            await send_response(conn, stream, 404, b"the metrics are at /metrics\n", text)
        else:
            await send_response(conn, stream, 200, await render(), [("content-type", CONTENT_TYPE_LATEST)])
        return True

    async def error(conn: h11.Connection, status: int, message: str) -> None:
        await send_response(conn, stream, status, f"{message}\n".encode(), text)

    await serve_http(stream, respond, error, max_request=MAX_REQUEST, idle_timeout=IDLE_TIMEOUT)


async def serve_metrics(
    source: CollectorRegistry | Render,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled: ``source``'s samples (a
    registry, read in this loop at each scrape, or a ``Render``). No authentication: the
    caller decides whether the address may be other than loopback.

    Raises:
        MetricsError: the address cannot be bound (in use, not local).
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise MetricsError(f"the metrics endpoint cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    task_status.started(listeners)
    render = _registry_render(source) if isinstance(source, CollectorRegistry) else source
    await trio.serve_listeners(functools.partial(_serve_connection, render), listeners)
