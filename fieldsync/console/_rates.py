"""Events/s and commit latency from the nodes' Prometheus endpoints (``fieldsync node --metrics``).

The node already counts what the console shows (``fieldsync_events_stored``, the
``fieldsync_commit_duration_seconds`` histogram); the console scrapes each node once a
second and turns two scrapes into a rate: events stored per second, and the mean and the
99th-percentile bucket of the commits between them. A node's serving counts start from 0
at each takeover, so a counter that went down is a restart: its new value is the delta.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from ..engine import http_request

__all__ = ["NodeRates", "Scrape", "scrape"]

MAX_RESPONSE = 1 << 20
SCRAPE_TIMEOUT = 2.0
#: Seconds of history the page draws.
HISTORY = 120


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scrape:
    """What one scrape of a node said (the serving counts; all zero on a standby)."""

    at: float
    stored: float = 0.0
    commits: float = 0.0
    commit_s: float = 0.0
    #: The commit histogram's cumulative buckets, (upper bound, count), ascending.
    buckets: tuple[tuple[float, float], ...] = ()
    queued: float = 0.0
    vip_held: bool = False


async def scrape(host: str, port: int, *, now: float) -> Scrape:
    """GET /metrics from a node and read the samples the console needs.

    Raises:
        OSError, trio.TooSlowError, h11.ProtocolError, ValueError: the node did not answer
        with metrics (the caller shows the node's endpoint as down).
    """
    with trio.fail_after(SCRAPE_TIMEOUT):
        status, body = await http_request(host, port, "GET", "/metrics", max_response=MAX_RESPONSE)
    if status != 200:
        raise ValueError(f"{host}:{port}/metrics answered {status}")
    return _read(body.decode("utf-8", "replace"), now)


def _read(text: str, now: float) -> Scrape:
    values: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fieldsync_commit_duration_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            else:
                values[sample.name] = sample.value
    return Scrape(
        at=now,
        stored=values.get("fieldsync_events_stored_total", 0.0),
        commits=values.get("fieldsync_commit_duration_seconds_count", 0.0),
        commit_s=values.get("fieldsync_commit_duration_seconds_sum", 0.0),
        buckets=tuple(sorted(buckets)),
        queued=values.get("fieldsync_ingest_queue_batches", 0.0),
        vip_held=values.get("fieldsync_node_vip_held", 0.0) == 1.0,
    )


def _delta(new: float, old: float) -> float:
    return new - old if new >= old else new  # a counter that went down restarted from 0


class NodeRates:
    """One node's rates from its last two scrapes."""

    def __init__(self) -> None:
        self.last: Scrape | None = None
        self.error: str | None = None
        self.events_s = 0.0
        self.commits_s = 0.0
        self.commit_mean_ms: float | None = None
        self.commit_p99_ms: float | None = None

    def took(self, now: Scrape) -> None:
        before, self.last, self.error = self.last, now, None
        if before is None or now.at <= before.at:
            return
        dt = now.at - before.at
        commits = _delta(now.commits, before.commits)
        self.events_s = _delta(now.stored, before.stored) / dt
        self.commits_s = commits / dt
        if commits <= 0:
            self.commit_mean_ms = self.commit_p99_ms = None
            return
        restarted = now.commits < before.commits
        self.commit_mean_ms = 1000 * _delta(now.commit_s, 0 if restarted else before.commit_s) / commits
        old = {} if restarted else dict(before.buckets)
        self.commit_p99_ms = None
        for bound, count in now.buckets:  # the first bucket holding 99 % of the commits between the scrapes
            if count - old.get(bound, 0.0) >= 0.99 * commits:
                self.commit_p99_ms = None if math.isinf(bound) else 1000 * bound
                break

    def failed(self, reason: str) -> None:
        self.last, self.error = None, reason
        self.events_s = self.commits_s = 0.0
        self.commit_mean_ms = self.commit_p99_ms = None

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "events_s": round(self.events_s, 1),
            "commits_s": round(self.commits_s, 1),
            "commit_mean_ms": None if self.commit_mean_ms is None else round(self.commit_mean_ms, 3),
            "commit_p99_ms": self.commit_p99_ms,
            "queued_batches": None if self.last is None else self.last.queued,
            "vip_held": None if self.last is None else self.last.vip_held,
        }


class History:
    """The last ``HISTORY`` seconds of the site's events/s and mean commit latency."""

    def __init__(self) -> None:
        self.points: collections.deque[tuple[float, float, float | None]] = collections.deque(maxlen=HISTORY)

    def add(self, at: float, events_s: float, commit_ms: float | None) -> None:
        self.points.append((round(at, 2), round(events_s, 1), None if commit_ms is None else round(commit_ms, 3)))
