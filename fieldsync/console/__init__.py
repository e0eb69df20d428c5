"""The web console: one page that shows the pair, the fleet and the alarms live, and the
operator's actions (switchover, a door's mode, acknowledging alarms). docs/console.md.

Also what `fieldsync cluster status` and the console both read (``pair_view``,
``request_switchover``): one function each, so the page and the command never disagree.
"""

from ._alarms import ALARM_KINDS as ALARM_KINDS
from ._alarms import LOSS_KINDS as LOSS_KINDS
from ._alarms import Alarm as Alarm
from ._alarms import AlarmBook as AlarmBook
from ._live import Console as Console
from ._live import ConsoleError as ConsoleError
from ._live import ConsoleSettings as ConsoleSettings
from ._serve import MIN_TOKEN as MIN_TOKEN
from ._serve import bind_console as bind_console
from ._serve import check_listen as check_listen
from ._serve import serve_console as serve_console
from ._views import PairView as PairView
from ._views import fleet_rows as fleet_rows
from ._views import pair_view as pair_view
from ._views import request_switchover as request_switchover
from ._views import site_mirror as site_mirror

__all__ = [
    "ALARM_KINDS",
    "Alarm",
    "AlarmBook",
    "Console",
    "ConsoleError",
    "ConsoleSettings",
    "LOSS_KINDS",
    "MIN_TOKEN",
    "PairView",
    "bind_console",
    "check_listen",
    "fleet_rows",
    "pair_view",
    "request_switchover",
    "serve_console",
    "site_mirror",
]
