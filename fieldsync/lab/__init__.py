"""The lab: the pair on real hosts (network namespaces joined by a bridge), the VIP moved by
keepalived (VRRPv3), and the faults of real hosts (power lost, a NIC down, a crash).
"""

from ._lab import HostStatus as HostStatus
from ._lab import Lab as Lab
from ._lab import LabStatus as LabStatus
from ._lab import describe as describe
from ._spec import HOSTS as HOSTS
from ._spec import NODE_HOSTS as NODE_HOSTS
from ._spec import VIP as VIP
from ._spec import LabSpec as LabSpec
from ._spec import node_address as node_address
from ._spec import panel_lab_address as panel_lab_address
from ._system import LabError as LabError
from ._system import enter_network_namespace as enter_network_namespace
from ._system import find_keepalived as find_keepalived
from ._system import group_members as group_members
from ._system import missing_prerequisites as missing_prerequisites

__all__ = [
    "HOSTS",
    "NODE_HOSTS",
    "VIP",
    "HostStatus",
    "Lab",
    "LabError",
    "LabSpec",
    "LabStatus",
    "describe",
    "enter_network_namespace",
    "find_keepalived",
    "group_members",
    "missing_prerequisites",
    "node_address",
    "panel_lab_address",
]
