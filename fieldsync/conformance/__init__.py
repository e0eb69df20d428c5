"""`fieldsync conformance`: an independent conformance battery for the fieldsync wire protocol, version 5.

Written from docs/protocol.md alone (like h2spec for HTTP/2): it shares no code with `protocol`, `storage`,
`emulator` or the rest of `fieldsync`. `--server HOST:PORT` plays panels against a node, and `--park HOST:PORT`
against the park address of the node that is the standby (parked sessions, 6.3); `--panel HOST:PORT` plays a node
against a host-initiated panel, and `--park-listen HOST:PORT` listens there as the standby node a panel parks at.
Each case names the section of the spec it checks.
"""

from ._base import CaseResult
from ._cli import command
from ._runner import TargetUnreachable, run_panel_cases, run_server_cases

__all__ = ["CaseResult", "TargetUnreachable", "command", "run_panel_cases", "run_server_cases"]
