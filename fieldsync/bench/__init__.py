"""Benchmarks users run (``fieldsync bench ...``; ``benchmarks/`` calls them too).

Each measures its bound in the same run and gives every figure as a ratio to it: two
machines of our kind differ by about 3x in absolute speed, so an absolute time is not a
result. A bound that could not be measured is reported missing, never as a ratio.
"""

from ._alarms import AlarmOptions as AlarmOptions
from ._alarms import alarm_lines as alarm_lines
from ._alarms import measure_alarms as measure_alarms
from ._alarms import plot_alarms as plot_alarms
from ._common import cpu_seconds as cpu_seconds
from ._common import fresh_schema as fresh_schema
from ._common import node_process as node_process
from ._common import ratio as ratio
from ._common import write_json as write_json
from ._failover import FailoverOptions as FailoverOptions
from ._failover import FailoverRun as FailoverRun
from ._failover import RunFailed as RunFailed
from ._failover import failover_lines as failover_lines
from ._failover import measure_failover as measure_failover
from ._failover import percentile as percentile
from ._failover import plot_failover as plot_failover
from ._idle import IdleOptions as IdleOptions
from ._idle import idle_lines as idle_lines
from ._idle import measure_idle as measure_idle
from ._idle import plot_idle as plot_idle
from ._memory import measure_memory as measure_memory
from ._memory import memory_lines as memory_lines
from ._memory import plot_memory as plot_memory
from ._replay import VIP as VIP
from ._replay import ReplayOptions as ReplayOptions
from ._replay import Sample as Sample
from ._replay import bound_rows_per_s as bound_rows_per_s
from ._replay import log_bound_events_per_s as log_bound_events_per_s
from ._replay import measure_replay as measure_replay
from ._replay import plot_replay as plot_replay
from ._replay import replay as replay
from ._replay import report_lines as report_lines

__all__ = [
    "VIP",
    "AlarmOptions",
    "alarm_lines",
    "measure_alarms",
    "plot_alarms",
    "FailoverOptions",
    "FailoverRun",
    "RunFailed",
    "failover_lines",
    "measure_failover",
    "percentile",
    "plot_failover",
    "IdleOptions",
    "idle_lines",
    "measure_idle",
    "measure_memory",
    "memory_lines",
    "plot_idle",
    "plot_memory",
    "ReplayOptions",
    "Sample",
    "bound_rows_per_s",
    "cpu_seconds",
    "fresh_schema",
    "log_bound_events_per_s",
    "measure_replay",
    "node_process",
    "plot_replay",
    "ratio",
    "replay",
    "report_lines",
    "write_json",
]
