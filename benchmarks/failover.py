"""Failover: time from kill -9 of the active node to each panel's first ACK from the new one.

The measurement is ``fieldsync.bench`` (``fieldsync bench failover`` runs it with a progress
bar and ``--plot``): fresh two-node clusters (real processes, shared store, TLS), 200
panels replaying a backlog while they swipe; the bound, the same fleet's cold connection to
the serving node, is taken in each run before the kill.

    python benchmarks/failover.py [--runs 10] [--panels 200] [--json OUT]

On real hosts (network namespaces, keepalived moving the VIP; root), each fault beside the
time keepalived took to move the VIP: ``--backend netns`` runs ``benchmarks/failover_hosts.py``
with the remaining arguments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from fieldsync.bench import FailoverOptions, RunFailed, failover_lines, measure_failover, write_json


def main(argv: list[str] | None = None) -> dict[str, object]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--backend", "netns"]:
        from benchmarks import failover_hosts

        return failover_hosts.main(argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--panels", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=2000, help="events each panel holds when the run starts")
    parser.add_argument("--rate", type=float, default=2.0, help="swipes per second per panel during the run")
    parser.add_argument("--mode", default="mixed", choices=["punch-out", "host-initiated", "mixed"])
    parser.add_argument("--port", type=int, default=30002)
    parser.add_argument("--park", action="store_true", help="panels parked at the standby (docs/protocol.md 6.3)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--node-log", type=argparse.FileType("w"), help="write the node processes' output here")
    args = parser.parse_args(argv)
    opts = FailoverOptions(
        runs=args.runs,
        panels=args.panels,
        backlog=args.backlog,
        rate=args.rate,
        mode=args.mode,
        port=args.port,
        park=args.park,
        node_log=args.node_log.fileno() if args.node_log else None,
    )
    with tempfile.TemporaryDirectory(prefix="fieldsync-failover-") as tmp:
        try:
            result = trio.run(measure_failover, opts, Path(tmp))
        except RunFailed as exc:
            raise SystemExit(str(exc)) from None
    for line in failover_lines(result):
        print(line)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
