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
from collections.abc import Iterable, Iterator

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ._cluster import ClusterNode
from ._cluster_settings import Role
from ._http import HttpRequest, send_response, serve_http
from ._ingest import COMMIT_BUCKETS
from ._node import Node, NodeStatistics

__all__ = ["MetricsError", "metrics_registry", "serve_metrics"]

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


def metrics_registry(target: Node | ClusterNode) -> CollectorRegistry:
    """A registry whose one collector reads ``target`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(target) if isinstance(target, Node) else _ClusterCollector(target))
    return registry


async def _serve_connection(registry: CollectorRegistry, stream: trio.SocketStream) -> None:
    text = [("content-type", "text/plain; charset=utf-8")]

    async def respond(conn: h11.Connection, request: HttpRequest) -> bool:
        path = request.target.split("?", 1)[0]
        if request.method != "GET":
            await send_response(conn, stream, 405, b"only GET\n", [*text, ("allow", "GET")])
        elif path != "/metrics":
            await send_response(conn, stream, 404, b"the metrics are at /metrics\n", text)
        else:
            await send_response(conn, stream, 200, generate_latest(registry), [("content-type", CONTENT_TYPE_LATEST)])
        return True

    async def error(conn: h11.Connection, status: int, message: str) -> None:
        await send_response(conn, stream, status, f"{message}\n".encode(), text)

    await serve_http(stream, respond, error, max_request=MAX_REQUEST, idle_timeout=IDLE_TIMEOUT)


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled. No authentication: the
    caller decides whether the address may be other than loopback.

    Raises:
        MetricsError: the address cannot be bound (in use, not local).
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise MetricsError(f"the metrics endpoint cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    task_status.started(listeners)
    await trio.serve_listeners(functools.partial(_serve_connection, registry), listeners)
