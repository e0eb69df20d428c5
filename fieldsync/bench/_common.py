"""What every benchmark shares: a node process for the length of a measurement, a
process's CPU from ``/proc``, the store's schema for a bound, and the JSON file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from storage import EventStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["cpu_seconds", "fresh_schema", "node_process", "ratio", "save_figure", "write_json"]


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU so far of a process (all its threads) or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def node_process(command: list[str], log_path: Path) -> AsyncIterator[trio.Process]:
    """Run a node (``fieldsync serve ...``) with its output in ``log_path``, from when it
    serves until the block ends; then SIGINT, and SIGKILL if it is not gone in 10 s.

    The output goes to a file: a pipe nobody drains would block the node once full.
    """
    with log_path.open("w") as output:
        node = await trio.lowlevel.open_process(command, stdout=output, stderr=subprocess.STDOUT)
    log = trio.Path(log_path)
    try:
        with trio.fail_after(30):
            while not any(line.startswith("node A epoch") for line in (await log.read_text()).splitlines()):
                if node.poll() is not None:
                    raise SystemExit(f"node did not start: {await log.read_text()}")
                await trio.sleep(0.05)
        yield node
    finally:
        with trio.CancelScope(shield=True):
            node.send_signal(signal.SIGINT)
            with trio.move_on_after(10):
                await node.wait()
            if node.returncode is None:
                node.kill()
                await node.wait()


def fresh_schema(path: Path) -> sqlite3.Connection:
    """A new store file with the event store's schema and pragmas, for a raw bound."""
    EventStore(path).close()  # the same schema, made by the same migrations
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def ratio(figure: float, bound: float | None) -> float | None:
    """``figure / bound``, or None when the bound could not be measured (never a made-up ratio)."""
    if bound is None or not math.isfinite(bound) or bound <= 0:
        return None
    return figure / bound


def write_json(path: Path | None, result: Mapping[str, object], **meta: object) -> None:
    """Write ``result`` to ``path`` (if given) with the Python, the cores, the arguments and ``meta``."""
    if path is None:
        return
    about = {"python": platform.python_version(), "cpus": os.cpu_count(), "argv": sys.argv[1:], **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "meta": about}, indent=2) + "\n")


def save_figure(fig: Figure, path: Path) -> None:
    """Write a plot as a PNG (a matplotlib ``Figure``: no pyplot, no display, no global state)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
