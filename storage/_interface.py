"""What the engine, the checker and the CLI use of a store, whatever its engine.

Two engines implement these: SQLite (``EventStore``, ``ConfigStore``,
``ClusterStore``: the embedded default) and PostgreSQL (``PgEventStore``,
``PgConfigStore``, ``PgClusterStore``). ``open_event_store`` and its siblings pick
one from the target: a path for SQLite, a ``postgresql://`` URL for PostgreSQL.

The semantics are the same on both and the store tests run on both: ``ingest``
commits every batch of a call in one transaction with the epoch checked inside it,
dedupes by (panel, seq) against the panel's high-water mark, records a declared gap
as a loss, and returns only once the commit is durable (on PostgreSQL with a
synchronous standby: on both nodes); ``append`` does the same into the batch log,
which ``materialize`` moves into ``events`` behind the ACK. Every failure is a ``StoreError`` naming the
file or database and the cause, and nothing of a failed call is acknowledged.

The private seams the harness's deliberately broken builds override
(``_check_fence``, ``_ingest_one``) are not part of the interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from protocol import ConfigOp

from ._cluster import Lease, NodeBeat
from ._config_model import ConfigState
from ._config_store import ConfigChange, NeedSnapshot
from ._records import (
    ALARM_FEED_LIMIT,
    AlarmCursor,
    AlarmFeed,
    IngestAlarm,
    IngestBatch,
    IngestResult,
    LogBacklog,
    Loss,
    StoredAlarm,
    StoredEvent,
)

__all__ = ["ConfigStoreInterface", "EventStoreInterface", "LeaseStoreInterface"]


@runtime_checkable
class EventStoreInterface(Protocol):
    """The server's event store: exactly once, in order, fenced, durable before the ACK."""

    def close(self) -> None: ...

    @property
    def epoch(self) -> int:
        """The store's cluster epoch (only writes carrying it are accepted)."""
        ...

    def advance_epoch(self, expected: int | None = None) -> int:
        """Raise the epoch by one (compare and set against ``expected``); return it."""
        ...

    def ingest(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
        """Store batches of many panels in one transaction (see ``EventStore.ingest``)."""
        ...

    def append(self, batches: Sequence[IngestBatch], epoch: int, alarms: Sequence[IngestAlarm] = ()) -> IngestResult:
        """``ingest``, each batch's new records one row of the batch log (``EventStore.append``)."""
        ...

    def log_backlog(self) -> LogBacklog:
        """What is acknowledged but not yet in ``events``."""
        ...

    def materialize(self, max_events: int = 16_384) -> LogBacklog:
        """Move the oldest logged batches into ``events``, in one transaction."""
        ...

    def materialize_all(self) -> LogBacklog:
        """Materialize until the log is empty."""
        ...

    def write_status(
        self,
        rows: Sequence[tuple[int, int, str, int, int, int, int, int]],
        *,
        sessions: Sequence[tuple[int, int, int]] = (),
        config_acks: Sequence[tuple[int, int]] = (),
    ) -> None: ...

    def status(self) -> list[dict[str, object]]: ...

    def hwm(self, panel_id: int) -> int: ...

    def hwms(self) -> dict[int, int]: ...

    def panels(self) -> list[dict[str, int | None]]: ...

    def count_events(self, panel_id: int | None = None) -> int: ...

    def events(
        self,
        panel_id: int,
        *,
        from_seq: int = 0,
        to_seq: int = 2**63 - 1,
        since_us: int | None = None,
        until_us: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]: ...

    def seqs(self, panel_id: int) -> list[int]: ...

    def losses(self, panel_id: int | None = None) -> list[Loss]: ...

    def orphan_alarms(self, panel_id: int, above: int) -> int:
        """Set aside the lane copies above ``above`` of a panel that lost its counter (7.6)."""
        ...

    def alarms(self, panel_id: int | None = None) -> list[StoredAlarm]:
        """Every alarm stored once per (panel, seq), in the order stored (docs/protocol.md 7.6)."""
        ...

    def alarm_feed(self, after: AlarmCursor, *, limit: int = ALARM_FEED_LIMIT) -> AlarmFeed:
        """The alarms, declared losses and acknowledgements stored after ``after``, in one
        snapshot (an operator's view reads only what is new; ``EventStore.alarm_feed``)."""
        ...

    def acknowledge_alarms(self, alarms: Sequence[tuple[int, int, int, int]], *, by: str, at_us: int) -> int:
        """Record an operator's acknowledgement of these alarms, each (row id, panel, seq, kind):
        a row that does not match all four is left alone. How many were new."""
        ...

    def stale_writes(self) -> int:
        """Events committed under an older epoch after a newer one had committed (P5)."""
        ...

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Every read inside sees the store as of one instant."""
        ...

    def integrity_check(self) -> str:
        """``"ok"``, or what is wrong."""
        ...


@runtime_checkable
class ConfigStoreInterface(Protocol):
    """The versioned site configuration with its change log."""

    def close(self) -> None: ...

    @property
    def version(self) -> int: ...

    def current(self) -> tuple[int, bytes]: ...

    def digest_at(self, version: int) -> bytes | None: ...

    def change(self, ops: Sequence[ConfigOp], *, at_us: int | None = None) -> int: ...

    def request_resync(self, panel_id: int, *, at_us: int | None = None) -> int:
        """Ask that the panel be sent its whole configuration again (``ConfigStore.request_resync``)."""
        ...

    def resyncs_pending(self) -> dict[int, int]: ...

    def resync_done(self, panel_id: int, requested_us: int, *, at_us: int | None = None) -> None: ...

    def snapshot(self) -> tuple[int, ConfigState]: ...

    def state(self) -> ConfigState: ...

    def delta(self, from_version: int) -> ConfigChange | NeedSnapshot: ...

    def compact(self, keep_from: int) -> int: ...


@runtime_checkable
class LeaseStoreInterface(Protocol):
    """The cluster's lease and epoch (one row, moved together) and the nodes' heartbeats."""

    def close(self) -> None: ...

    def lease(self) -> Lease: ...

    def acquire(
        self, node_id: str, *, pid: int, address: str, now_us: int, lease_us: int, force: bool = False
    ) -> int | None: ...

    def renew(self, node_id: str, epoch: int, *, now_us: int, lease_us: int) -> Lease | None: ...

    def release(self, node_id: str, epoch: int, *, hand_to: str | None = None) -> bool: ...

    def request_switchover(self, to_node: str) -> Lease: ...

    def beat(self, beat: NodeBeat) -> None: ...

    def nodes(self) -> dict[str, NodeBeat]: ...


if TYPE_CHECKING:  # mypy proves the SQLite classes satisfy the interfaces, unchanged
    from ._cluster import ClusterStore
    from ._config_store import ConfigStore
    from ._store import EventStore

    def _sqlite_events(store: EventStore) -> EventStoreInterface:
        return store

    def _sqlite_config(store: ConfigStore) -> ConfigStoreInterface:
        return store

    def _sqlite_lease(store: ClusterStore) -> LeaseStoreInterface:
        return store

    from ._pg_cluster import PgClusterStore
    from ._pg_config import PgConfigStore
    from ._pg_store import PgEventStore

    def _pg_events(store: PgEventStore) -> EventStoreInterface:
        return store

    def _pg_config(store: PgConfigStore) -> ConfigStoreInterface:
        return store

    def _pg_lease(store: PgClusterStore) -> LeaseStoreInterface:
        return store
