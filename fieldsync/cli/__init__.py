"""The `fieldsync` command line: one module per command group; option defaults from the site file."""

from ._defaults import DefaultsError as DefaultsError
from ._defaults import SiteCommand as SiteCommand
from ._defaults import SiteGroup as SiteGroup
from ._defaults import read_defaults as read_defaults
from ._main import main as main

__all__ = [
    "DefaultsError",
    "SiteCommand",
    "SiteGroup",
    "main",
    "read_defaults",
]
