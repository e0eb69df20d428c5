"""Backlog replay: panels come back with a backlog; how fast is it acknowledged?

The measurement itself is ``fieldsync.bench`` (``fieldsync bench replay`` runs it with a
progress bar and ``--plot``); this script adds ``--engine``, the PostgreSQL engines side by side.

The node runs as its own process (``fieldsync serve``), as a user runs it; the
panels run in this process. The clock starts when the fleet starts dialing and
stops when every panel's buffer is empty, i.e. every event is committed and
acknowledged. The bound is the storage benchmark's raw insert of the same number
of rows into the same schema with the same pragmas, measured in the same run.

``--ingest log``: the node acknowledges a batch once it is one row of the store's batch
log and materializes the events behind the ACK (docs/architecture.md, "The batch log").
Its second bound is the log's own: a raw append of the same records as one row per
batch, in the same transactions. The run also reports when the last event became
visible in ``events`` (``visible_s``) and the most events the log held (``log_peak_events``).

``--engine``: the store the node replays into, several side by side in one run: ``sqlite``
(the shared store's SQLite file), ``pg-local`` (one PostgreSQL), ``pg-sync`` (PostgreSQL
with a synchronous standby: an ACK once the commit is on both), ``pg-async`` (with an
asynchronous standby: the WAN edition's). Each PostgreSQL engine's bound is a raw binary
COPY of the same number of rows into the same table on the same server, in transactions
of ``--bound-txn`` rows (benchmarks/engines.py's ``pg_bound``).

    python benchmarks/replay.py --panels 1 --backlog 1000000 [--tls/--no-tls] [--json OUT]
    python benchmarks/replay.py --panels 1000 --backlog 10000
    python benchmarks/replay.py --panels 1 --backlog 1000000 --ingest log [--materialize-idle 0.5]
    python benchmarks/replay.py --panels 10 --backlog 100000 --engine sqlite pg-sync pg-async
    python benchmarks/replay.py --panels 1 --backlog 1000000 --engine pg-local pg-sync --ingest log
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from fieldsync.bench import VIP, ReplayOptions, bound_rows_per_s, measure_replay, replay, report_lines, write_json

__all__ = ["VIP", "main"]


def options(args: argparse.Namespace) -> ReplayOptions:
    names = {f.name for f in dataclasses.fields(ReplayOptions)}
    return ReplayOptions(**{k: v for k, v in vars(args).items() if k in names})


ENGINES = {
    "sqlite": "SQLite (the shared store)",
    "pg-local": "PostgreSQL, one server",
    "pg-sync": "PostgreSQL + sync standby",
    "pg-async": "PostgreSQL + async standby",
}


def _pg_replay(args: argparse.Namespace, engine: str, workdir: Path) -> tuple[dict[str, object], float]:
    """One replay into a fresh database of the engine's server(s), then its COPY bound there."""
    from benchmarks.engines import _fresh_database, pg_bound
    from benchmarks.storage import _batches
    from storage.postgres import running_instance, running_pair

    per_panel = args.backlog
    per_txn = max(1, args.bound_txn // args.panels)
    with contextlib.ExitStack() as stack:
        if engine == "pg-local":
            server = stack.enter_context(running_instance(prefix="fieldsync-replay-pg-"))
        else:
            server, _standby = stack.enter_context(
                running_pair(synchronous=engine == "pg-sync", prefix="fieldsync-replay-pair-")
            )
        result = dict(trio.run(replay, options(args), workdir, _fresh_database(server)))
        bound = pg_bound(_batches(args.panels, per_panel, per_txn), server)
    return result, bound


def side_by_side(args: argparse.Namespace) -> dict[str, object]:
    """``--engine``: the same replay into each engine in turn, each against its own bound."""
    results: dict[str, dict[str, object]] = {}
    for engine in args.engine:
        with tempfile.TemporaryDirectory(prefix=f"fieldsync-replay-{engine}-") as tmp:
            workdir = Path(tmp)
            if engine == "sqlite":
                result = dict(trio.run(replay, options(args), workdir))
                for leftover in workdir.glob("site.db*"):
                    leftover.unlink()
                os.sync()
                bound = bound_rows_per_s(int(result["events"]), args.panels, workdir, args.bound_txn)  # type: ignore[call-overload]
            else:
                result, bound = _pg_replay(args, engine, workdir)
        result["bound_per_s"] = bound
        result["ratio_to_bound"] = float(result["acked_events_per_s"]) / bound  # type: ignore[arg-type]
        results[engine] = result
        print(
            f"  {ENGINES[engine]:<28} acked {float(result['acked_events_per_s']):>10,.0f} events/s "  # type: ignore[arg-type]
            f"(drain {float(result['drain_s']):.2f} s), bound {bound:>10,.0f} rows/s, "  # type: ignore[arg-type]
            f"ratio {float(result['ratio_to_bound']):.3f}"  # type: ignore[arg-type]
            + (
                f"; all visible in events {float(result['visible_s']) - float(result['drain_s']):.2f} s after "  # type: ignore[arg-type]
                f"the last ACK, the log's peak {int(result['log_peak_events']):,} events"  # type: ignore[call-overload]
                if args.ingest == "log"
                else ""
            ),
            flush=True,
        )
    print(
        f"replay: {args.panels} panel(s) x {args.backlog:,} events, {'TLS 1.3' if args.tls else 'plain TCP'}, "
        f"batch {args.batch}, window {args.window}; bounds: SQLite raw multi-row INSERT, PostgreSQL raw binary COPY"
    )
    out: dict[str, object] = {"engines": results, "panels": args.panels, "backlog": args.backlog, "tls": args.tls}
    write_json(args.json, out, sqlite=sqlite3.sqlite_version)
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panels", type=int, default=1)
    parser.add_argument("--backlog", type=int, default=1_000_000, help="events buffered per panel")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch", type=int, default=4096, help="records per EVENT_BATCH")
    parser.add_argument("--window", type=int, default=4, help="batches in flight per panel")
    parser.add_argument("--port", type=int, default=30002)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--bound-txn", type=int, default=16_384, help="rows per transaction for the bound")
    parser.add_argument(
        "--engine",
        nargs="+",
        choices=list(ENGINES),
        default=["sqlite"],
        help="the stores to replay into, side by side, each against its own bound",
    )
    parser.add_argument(
        "--ingest", choices=["rows", "log"], default="rows", help="what an ACK waits for (either engine)"
    )
    parser.add_argument(
        "--materialize-idle", type=float, default=0.05, help="--ingest log: quiet seconds before the materializer goes"
    )
    parser.add_argument(
        "--max-log-age", type=float, default=2.0, help="--ingest log: the oldest batch's age at which it goes anyway"
    )
    parser.add_argument(
        "--max-log-lag", type=int, default=4_000_000, help="--ingest log: the most events the log holds ahead"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.engine != ["sqlite"]:
        return side_by_side(args)
    with tempfile.TemporaryDirectory(prefix="fieldsync-replay-") as tmp:
        result = trio.run(measure_replay, options(args), Path(tmp))
    for line in report_lines(result):
        print(line)
    write_json(args.json, result, sqlite=sqlite3.sqlite_version)
    return result


if __name__ == "__main__":
    main()
