"""The PostgreSQL engine of the stores (psycopg 3), and a local PostgreSQL instance.

A module of its own so that ``import storage`` does not import psycopg (about 0.3 s):
``storage.open_event_store`` imports it when it is given a ``postgresql://`` URL.
"""

from ._pg_cluster import PgClusterStore as PgClusterStore
from ._pg_config import PgConfigStore as PgConfigStore
from ._pg_local import STANDBY_NAME as STANDBY_NAME
from ._pg_local import LocalPostgres as LocalPostgres
from ._pg_local import PostgresMissing as PostgresMissing
from ._pg_local import find_pg_bindir as find_pg_bindir
from ._pg_local import free_port as free_port
from ._pg_local import hand_over as hand_over
from ._pg_local import running_instance as running_instance
from ._pg_local import running_pair as running_pair
from ._pg_mirror import DatabaseHost as DatabaseHost
from ._pg_mirror import Mirror as Mirror
from ._pg_mirror import MirrorError as MirrorError
from ._pg_mirror import RejoinReport as RejoinReport
from ._pg_mirror import Replica as Replica
from ._pg_mirror import ReplicationState as ReplicationState
from ._pg_mirror import application_name as application_name
from ._pg_mirror import cancel_sync_waits as cancel_sync_waits
from ._pg_mirror import database_role as database_role
from ._pg_mirror import lease_epoch as lease_epoch
from ._pg_mirror import list_sync_standby as list_sync_standby
from ._pg_mirror import mirror_servers as mirror_servers
from ._pg_mirror import promote_database as promote_database
from ._pg_mirror import query as query
from ._pg_mirror import replication_state as replication_state
from ._pg_mirror import running_mirror as running_mirror
from ._pg_mirror import start_mirror as start_mirror
from ._pg_mirror import stop_mirror as stop_mirror
from ._pg_schema import PG_SCHEMA_VERSION as PG_SCHEMA_VERSION
from ._pg_store import PgEventStore as PgEventStore

__all__ = [
    "PG_SCHEMA_VERSION",
    "STANDBY_NAME",
    "DatabaseHost",
    "LocalPostgres",
    "Mirror",
    "MirrorError",
    "PgClusterStore",
    "PgConfigStore",
    "PgEventStore",
    "PostgresMissing",
    "RejoinReport",
    "Replica",
    "ReplicationState",
    "find_pg_bindir",
    "free_port",
    "hand_over",
    "running_instance",
    "application_name",
    "cancel_sync_waits",
    "database_role",
    "lease_epoch",
    "list_sync_standby",
    "mirror_servers",
    "promote_database",
    "query",
    "replication_state",
    "running_mirror",
    "running_pair",
    "start_mirror",
    "stop_mirror",
]
