"""The product's engine: a node's sessions, ingest and config push; the cluster's lease, heartbeats and
failover; the supervisor that restarts node processes. It never imports the harness.
"""

from ._cluster import ClusterNode as ClusterNode
from ._cluster import ClusterSettings as ClusterSettings
from ._cluster import Role as Role
from ._cluster import process_is_fieldsync as process_is_fieldsync
from ._cluster import stonith as stonith
from ._node import Node as Node
from ._node import NodeSettings as NodeSettings
from ._node import NodeStatistics as NodeStatistics
from ._supervisor import Supervised as Supervised
from ._supervisor import Supervisor as Supervisor
from ._supervisor import node_command as node_command

__all__ = [
    "ClusterNode",
    "ClusterSettings",
    "Node",
    "NodeSettings",
    "NodeStatistics",
    "Role",
    "Supervised",
    "Supervisor",
    "node_command",
    "process_is_fieldsync",
    "stonith",
]
