"""The root ``fieldsync`` group; each command group is a module of its own (``cli/_<group>.py``).

The root and every command are SiteGroup / SiteCommand (``_defaults``): a site file's
``[defaults.<command path>]`` table gives their options' defaults, and their --help names the keys.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

import click

from ..conformance import command as conformance_command
from ._bench import bench
from ._cluster import cluster, node_cmd, witness_cmd
from ._config import config
from ._console import console_cmd
from ._defaults import SiteCommand, SiteGroup, root_site_option
from ._demo import demo
from ._emulate import emulate
from ._faults import faults_cmd
from ._lab import lab
from ._line import line_cmd
from ._pki import pki
from ._scenario import scenario
from ._serve import serve
from ._status import status

__all__ = ["JsonLogFormatter", "main"]

_TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for a log shipper: no parsing of free text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


@click.group(cls=SiteGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fieldsync")
@click.option(
    "--log-level", default="warning", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line (time, level, logger, message, and the exception if any).",
)
@root_site_option
def main(log_level: str, log_format: str) -> None:
    """fieldsync: field panels, a sync-engine cluster, faults, and the promises P1-P7."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)


for _command in (
    demo,
    bench,
    pki,
    serve,
    line_cmd,
    node_cmd,
    witness_cmd,
    cluster,
    lab,
    emulate,
    scenario,
    faults_cmd,
    config,
    status,
    console_cmd,
):
    main.add_command(_command)
# The battery shares no code with the rest (an import contract); it is built as a plain click
# command and adopted here, so its --help names its [defaults.conformance] keys too.
main.add_command(SiteCommand.adopt(conformance_command), "conformance")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
