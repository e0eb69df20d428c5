"""The test harness around the product: fault proxies and their toxics and HTTP API, scenario files, the
runner and its cluster backends, the promise checker, reports, random schedules, the virtual clock, the
virtual serial line.
"""

from ._checker import PanelVerdict as PanelVerdict
from ._checker import Report as Report
from ._checker import check as check
from ._fault_api import DEFAULT_API_PORT as DEFAULT_API_PORT
from ._fault_api import serve_api as serve_api
from ._flaws import FLAWS as FLAWS
from ._flaws import flawed_cluster_class as flawed_cluster_class
from ._flaws import flawed_node_class as flawed_node_class
from ._fuzz import fuzz as fuzz
from ._fuzz import random_scenario as random_scenario
from ._fuzz import replay_command as replay_command
from ._fuzz import scenario_toml as scenario_toml
from ._proxy import DatagramProxy as DatagramProxy
from ._proxy import FaultHub as FaultHub
from ._proxy import Proxy as Proxy
from ._report import FAULT_COLOUR as FAULT_COLOUR
from ._report import SERIES as SERIES
from ._report import plot_timeline as plot_timeline
from ._report import timeline_figure as timeline_figure
from ._rogue import ROGUE_CARD as ROGUE_CARD
from ._rogue import RogueKind as RogueKind
from ._rogue import RogueOutcome as RogueOutcome
from ._rogue import attempt as attempt_rogue
from ._runner import RunResult as RunResult
from ._runner import ScenarioRun as ScenarioRun
from ._runner import run_scenario as run_scenario
from ._runner import write_reports as write_reports
from ._sampling import Sample as Sample
from ._scenario import ClusterSpec as ClusterSpec
from ._scenario import GroupSpec as GroupSpec
from ._scenario import Scenario as Scenario
from ._scenario import ScenarioError as ScenarioError
from ._scenario import SiteSpec as SiteSpec
from ._scenario import load_scenario as load_scenario
from ._scenario import parse_scenario as parse_scenario
from ._serial_line import Direction as Direction
from ._serial_line import LineCounters as LineCounters
from ._serial_line import VirtualLine as VirtualLine
from ._steps import ACTIONS as ACTIONS
from ._steps import NODES_GROUP as NODES_GROUP
from ._steps import BurstStep as BurstStep
from ._steps import ClockStep as ClockStep
from ._steps import ConfigStep as ConfigStep
from ._steps import ConfigStormStep as ConfigStormStep
from ._steps import ContStep as ContStep
from ._steps import CrashStep as CrashStep
from ._steps import DiskFullStep as DiskFullStep
from ._steps import DownStep as DownStep
from ._steps import FaultWindow as FaultWindow
from ._steps import HealStep as HealStep
from ._steps import KillKeepalivedStep as KillKeepalivedStep
from ._steps import KillStep as KillStep
from ._steps import NicDownStep as NicDownStep
from ._steps import NicUpStep as NicUpStep
from ._steps import OutageStep as OutageStep
from ._steps import PartitionStep as PartitionStep
from ._steps import PowerCycleStep as PowerCycleStep
from ._steps import PowerOffStep as PowerOffStep
from ._steps import PowerOnStep as PowerOnStep
from ._steps import RemoveToxicStep as RemoveToxicStep
from ._steps import ResetPeerStep as ResetPeerStep
from ._steps import RestartStep as RestartStep
from ._steps import RogueStep as RogueStep
from ._steps import Step as Step
from ._steps import StepBase as StepBase
from ._steps import StopStep as StopStep
from ._steps import SwitchoverStep as SwitchoverStep
from ._steps import ToxicStep as ToxicStep
from ._steps import UpStep as UpStep
from ._steps import parse_time as parse_time
from ._toxics import TOXIC_CLASSES as TOXIC_CLASSES
from ._toxics import TOXIC_TYPES as TOXIC_TYPES
from ._toxics import FaultError as FaultError
from ._toxics import Toxic as Toxic
from ._vclock import fast_forward_clock as fast_forward_clock

__all__ = [
    "ACTIONS",
    "BurstStep",
    "ClockStep",
    "ClusterSpec",
    "ConfigStep",
    "ConfigStormStep",
    "ContStep",
    "CrashStep",
    "DEFAULT_API_PORT",
    "DatagramProxy",
    "Direction",
    "DiskFullStep",
    "DownStep",
    "FAULT_COLOUR",
    "FLAWS",
    "FaultError",
    "FaultHub",
    "FaultWindow",
    "GroupSpec",
    "HealStep",
    "KillKeepalivedStep",
    "KillStep",
    "LineCounters",
    "NODES_GROUP",
    "NicDownStep",
    "NicUpStep",
    "OutageStep",
    "PanelVerdict",
    "PartitionStep",
    "PowerCycleStep",
    "PowerOffStep",
    "PowerOnStep",
    "Proxy",
    "ROGUE_CARD",
    "RemoveToxicStep",
    "Report",
    "ResetPeerStep",
    "RestartStep",
    "RogueKind",
    "RogueOutcome",
    "RogueStep",
    "RunResult",
    "SERIES",
    "Sample",
    "Scenario",
    "ScenarioError",
    "ScenarioRun",
    "SiteSpec",
    "Step",
    "StepBase",
    "StopStep",
    "SwitchoverStep",
    "TOXIC_CLASSES",
    "TOXIC_TYPES",
    "Toxic",
    "ToxicStep",
    "UpStep",
    "VirtualLine",
    "attempt_rogue",
    "check",
    "fast_forward_clock",
    "flawed_cluster_class",
    "flawed_node_class",
    "fuzz",
    "load_scenario",
    "parse_scenario",
    "parse_time",
    "plot_timeline",
    "random_scenario",
    "replay_command",
    "run_scenario",
    "scenario_toml",
    "serve_api",
    "timeline_figure",
    "write_reports",
]
