"""Idle sessions: what a connected panel with nothing to send costs each end, per second.

The measurement is ``fieldsync.bench`` (``fieldsync bench idle`` runs it with a progress
bar and ``--plot``): the idle window, then the bound in the same run, one small frame sent
and received through trio.SSLStream, and each end's cost in frames per session-second.

    python benchmarks/idle.py [--panels 1000] [--seconds 10] [--heartbeat-ms 1000] [--idle-ms 10000] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from fieldsync.bench import IdleOptions, idle_lines, measure_idle, write_json


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after the last session starts")
    parser.add_argument("--heartbeat-ms", type=int, default=1000, help="the node's interval, which panels adopt")
    parser.add_argument("--idle-ms", type=int, default=10_000, help="a quiet panel's probe interval (WELCOME)")
    parser.add_argument("--port", type=int, default=30002)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    opts = IdleOptions(
        panels=args.panels,
        seconds=args.seconds,
        settle=args.settle,
        heartbeat_ms=args.heartbeat_ms,
        idle_ms=args.idle_ms,
        port=args.port,
    )
    with tempfile.TemporaryDirectory(prefix="fieldsync-idle-") as tmp:
        result = trio.run(measure_idle, opts, Path(tmp))
    for line in idle_lines(result):
        print(line)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
