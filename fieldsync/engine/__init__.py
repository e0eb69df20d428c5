"""The product's engine: a node's sessions, ingest and config push; the cluster's lease, heartbeats and
failover; the supervisor that restarts node processes. It never imports the harness.
"""

from ._cluster import ClusterNode as ClusterNode
from ._cluster_settings import ClusterSettings as ClusterSettings
from ._cluster_settings import Role as Role
from ._failover import ActiveDecision as ActiveDecision
from ._failover import ActiveView as ActiveView
from ._failover import FailoverRules as FailoverRules
from ._failover import HandOver as HandOver
from ._failover import HolderProcess as HolderProcess
from ._failover import KeepServing as KeepServing
from ._failover import LeaveVip as LeaveVip
from ._failover import ReadStoreBeat as ReadStoreBeat
from ._failover import RequestFailback as RequestFailback
from ._failover import StandbyDecision as StandbyDecision
from ._failover import StandbyView as StandbyView
from ._failover import StepDown as StepDown
from ._failover import Stonith as Stonith
from ._failover import Take as Take
from ._failover import Wait as Wait
from ._failover import beats_allowed as beats_allowed
from ._failover import decide_active as decide_active
from ._failover import decide_standby as decide_standby
from ._http import HttpRequest as HttpRequest
from ._http import http_request as http_request
from ._http import send_response as send_response
from ._http import serve_http as serve_http
from ._metrics import MetricsError as MetricsError
from ._metrics import ReplicationWatch as ReplicationWatch
from ._metrics import fleet_render as fleet_render
from ._metrics import metrics_registry as metrics_registry
from ._metrics import replication_watch as replication_watch
from ._metrics import serve_metrics as serve_metrics
from ._node import Node as Node
from ._node import NodeSettings as NodeSettings
from ._node import NodeStatistics as NodeStatistics
from ._processes import process_is_fieldsync as process_is_fieldsync
from ._processes import stonith as stonith
from ._processes import vrrp_master as vrrp_master
from ._supervisor import Supervised as Supervised
from ._supervisor import Supervisor as Supervisor
from ._supervisor import node_command as node_command
from ._witness import WitnessError as WitnessError
from ._witness import WitnessRecord as WitnessRecord
from ._witness import serve_witness as serve_witness
from ._witness import witness_cas as witness_cas
from ._witness import witness_get as witness_get

__all__ = [
    "HttpRequest",
    "http_request",
    "send_response",
    "serve_http",
    "ActiveDecision",
    "ActiveView",
    "ClusterNode",
    "ClusterSettings",
    "FailoverRules",
    "HandOver",
    "HolderProcess",
    "KeepServing",
    "LeaveVip",
    "MetricsError",
    "ReplicationWatch",
    "Node",
    "NodeSettings",
    "NodeStatistics",
    "ReadStoreBeat",
    "RequestFailback",
    "Role",
    "StandbyDecision",
    "StandbyView",
    "StepDown",
    "Stonith",
    "Supervised",
    "Supervisor",
    "Take",
    "Wait",
    "WitnessError",
    "WitnessRecord",
    "beats_allowed",
    "decide_active",
    "decide_standby",
    "fleet_render",
    "metrics_registry",
    "node_command",
    "process_is_fieldsync",
    "replication_watch",
    "serve_metrics",
    "serve_witness",
    "stonith",
    "vrrp_master",
    "witness_cas",
    "witness_get",
]
