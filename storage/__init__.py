"""Panel event buffer, server event store and config store (synchronous code).

Reached from trio through ``trio.to_thread.run_sync`` with a CapacityLimiter(1):
each object owns one connection opened with ``check_same_thread=False``.

Two engines behind one interface (``EventStoreInterface`` and its siblings):
SQLite (``EventStore``, the embedded default) and PostgreSQL (``storage.postgres``:
``PgEventStore`` and its siblings, imported only when used). ``open_event_store``
picks one from its target: a path or a ``postgresql://`` URL.
"""

from ._buffer import BufferStatistics as BufferStatistics
from ._buffer import EventBuffer as EventBuffer
from ._buffer import OverflowPolicy as OverflowPolicy
from ._cluster import ClusterStore as ClusterStore
from ._cluster import Lease as Lease
from ._cluster import NodeBeat as NodeBeat
from ._config_model import ConfigState as ConfigState
from ._config_store import ConfigChange as ConfigChange
from ._config_store import ConfigStore as ConfigStore
from ._config_store import NeedSnapshot as NeedSnapshot
from ._config_store import PanelConfig as PanelConfig
from ._errors import BufferFull as BufferFull
from ._errors import MirrorError as MirrorError
from ._errors import SchemaTooNew as SchemaTooNew
from ._errors import StaleEpoch as StaleEpoch
from ._errors import StoreCorrupt as StoreCorrupt
from ._errors import StoreError as StoreError
from ._errors import StoreFull as StoreFull
from ._errors import StoreLocked as StoreLocked
from ._errors import StoreNotReplicated as StoreNotReplicated
from ._errors import StoreUnreachable as StoreUnreachable
from ._flash import FlashBackedBuffer as FlashBackedBuffer
from ._gate import WriteGate as WriteGate
from ._gate import write_gate as write_gate
from ._interface import ConfigStoreInterface as ConfigStoreInterface
from ._interface import EventStoreInterface as EventStoreInterface
from ._interface import LeaseStoreInterface as LeaseStoreInterface
from ._open import describe_target as describe_target
from ._open import is_database_url as is_database_url
from ._open import open_cluster_store as open_cluster_store
from ._open import open_config_store as open_config_store
from ._open import open_event_store as open_event_store
from ._records import AlarmCursor as AlarmCursor
from ._records import AlarmFeed as AlarmFeed
from ._records import IngestAlarm as IngestAlarm
from ._records import IngestBatch as IngestBatch
from ._records import IngestOutcome as IngestOutcome
from ._records import IngestResult as IngestResult
from ._records import LogBacklog as LogBacklog
from ._records import Loss as Loss
from ._records import StoredAlarm as StoredAlarm
from ._records import StoredEvent as StoredEvent
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import EventStore as EventStore

__all__ = [
    "SCHEMA_VERSION",
    "AlarmCursor",
    "AlarmFeed",
    "BufferFull",
    "BufferStatistics",
    "ClusterStore",
    "ConfigChange",
    "ConfigState",
    "ConfigStore",
    "ConfigStoreInterface",
    "EventBuffer",
    "EventStore",
    "EventStoreInterface",
    "FlashBackedBuffer",
    "IngestAlarm",
    "IngestBatch",
    "IngestOutcome",
    "IngestResult",
    "Lease",
    "LeaseStoreInterface",
    "LogBacklog",
    "MirrorError",
    "Loss",
    "NeedSnapshot",
    "NodeBeat",
    "OverflowPolicy",
    "PanelConfig",
    "SchemaTooNew",
    "StaleEpoch",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreNotReplicated",
    "StoreUnreachable",
    "StoredAlarm",
    "StoredEvent",
    "WriteGate",
    "describe_target",
    "is_database_url",
    "open_cluster_store",
    "open_config_store",
    "open_event_store",
    "write_gate",
]
