"""The field-panel emulator: one panel or a fleet of thousands in one process."""

from ._decide import decide as decide
from ._fleet import Fleet as Fleet
from ._fleet import FleetStatistics as FleetStatistics
from ._fleet import panel_address as panel_address
from ._osdp import ReaderSpec as ReaderSpec
from ._osdp_port import ReaderPort as ReaderPort
from ._osdp_port import ReaderPortStatistics as ReaderPortStatistics
from ._osdp_readers import BusSwiper as BusSwiper
from ._osdp_readers import ReaderBus as ReaderBus
from ._panel import BootSummary as BootSummary
from ._panel import JournalEntry as JournalEntry
from ._panel import LinkMode as LinkMode
from ._panel import Panel as Panel
from ._panel import PanelSettings as PanelSettings
from ._panel import PanelStatistics as PanelStatistics
from ._panel import SessionRefused as SessionRefused
from ._workload import Burst as Burst
from ._workload import Scripted as Scripted
from ._workload import Swipe as Swipe
from ._workload import Workload as Workload
from ._workload import run_workload as run_workload

__all__ = [
    "BootSummary",
    "Burst",
    "BusSwiper",
    "Fleet",
    "FleetStatistics",
    "JournalEntry",
    "LinkMode",
    "Panel",
    "PanelSettings",
    "PanelStatistics",
    "ReaderBus",
    "ReaderPort",
    "ReaderPortStatistics",
    "ReaderSpec",
    "Scripted",
    "SessionRefused",
    "Swipe",
    "Workload",
    "decide",
    "panel_address",
    "run_workload",
]
