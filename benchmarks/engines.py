"""Ingest into each store engine against its own bound, side by side in one run.

* SQLite (WAL, synchronous=FULL): ``EventStore.ingest`` vs the faster of
  ``executemany`` and multi-row ``INSERT ... VALUES`` of the same rows
  (benchmarks/storage.py's bound).
* PostgreSQL, one local server: ``PgEventStore.ingest`` vs raw binary COPY of the
  same rows into the same table, with the same session settings and rows per
  transaction, the COPY payload built before the clock starts.
* PostgreSQL with a synchronous standby (``synchronous_commit = on``, a
  ``pg_basebackup`` standby on loopback): the same pair of measurements.
* PostgreSQL with an asynchronous standby (the WAN edition's storage: the standby
  streams, a commit waits for the local flush only): the same pair again.

Every measurement gets a fresh file or database; each is run ``--rounds`` times,
the ingest and its bound in turn, and the best of each is kept (the machine is shared:
the best is the least disturbed).

    python benchmarks/engines.py [--events 400000] [--panels 10] [--batch 1000] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

import protocol as p
from benchmarks import write_json
from benchmarks.storage import _batches, bench_bound, bench_ingest
from storage import IngestBatch
from storage._pg_store import _COPY_HEADER, _COPY_TRAILER, copy_rows
from storage.postgres import LocalPostgres, PgEventStore, running_instance, running_pair

_names = itertools.count(1)


def _fresh_database(server: LocalPostgres) -> str:
    name = f"bench{next(_names)}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.url(name)


def pg_ingest(txns: list[list[IngestBatch]], server: LocalPostgres) -> float:
    store = PgEventStore(_fresh_database(server))
    epoch = store.advance_epoch()
    events = sum(len(b.records) // p.RECORD_SIZE for txn in txns for b in txn)
    start = time.perf_counter()
    for txn in txns:
        store.ingest(txn, epoch)
    elapsed = time.perf_counter() - start
    assert store.count_events() == events
    store.close()
    return events / elapsed


def pg_bound(txns: list[list[IngestBatch]], server: LocalPostgres) -> float:
    """Raw binary COPY of the same rows: same schema (made by the store), session settings, transactions."""
    url = _fresh_database(server)
    PgEventStore(url).close()
    payloads = [
        b"".join([_COPY_HEADER, *(copy_rows(b.panel_id, b.received_us, 1, b.records) for b in txn), _COPY_TRAILER])
        for txn in txns
    ]
    events = sum(len(b.records) // p.RECORD_SIZE for txn in txns for b in txn)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        start = time.perf_counter()
        for payload in payloads:
            conn.execute("BEGIN")
            with conn.cursor().copy("COPY events FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(payload)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        assert row is not None and row[0] == events
    return events / elapsed


def _best_pair(rounds: int, ingest: Callable[[], float], bound: Callable[[], float]) -> tuple[float, float]:
    """The best of ``rounds`` of each, the two taken in turn so that both meet the same disturbances."""
    ingests, bounds = [], []
    for _ in range(rounds):
        ingests.append(ingest())
        bounds.append(bound())
    return max(ingests), max(bounds)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000, help="events ingested per measurement")
    parser.add_argument("--panels", type=int, default=10, help="panels per group commit")
    parser.add_argument("--batch", type=int, default=1000, help="records per panel batch")
    parser.add_argument("--rows-per-statement", type=int, default=500, help="for SQLite's multi-row VALUES bound")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each; the best is kept")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    per_panel = args.events // args.panels
    txns = _batches(args.panels, per_panel, args.batch)
    events = args.panels * per_panel
    result: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-engines-") as tmp:
        workdir = Path(tmp)
        runs = itertools.count()

        def sqlite_ingest() -> float:
            directory = workdir / f"run{next(runs)}"
            directory.mkdir()
            return bench_ingest(txns, directory)

        def sqlite_bound() -> float:
            directory = workdir / f"run{next(runs)}"
            directory.mkdir()
            return bench_bound(txns, directory, args.rows_per_statement)[0]

        result["sqlite_ingest"], result["sqlite_bound"] = _best_pair(args.rounds, sqlite_ingest, sqlite_bound)

    with running_instance(prefix="fieldsync-bench-pg-") as server:
        result["pg_local_ingest"], result["pg_local_bound"] = _best_pair(
            args.rounds, lambda: pg_ingest(txns, server), lambda: pg_bound(txns, server)
        )
    with running_pair(prefix="fieldsync-bench-pair-") as (primary, _standby):
        result["pg_sync_ingest"], result["pg_sync_bound"] = _best_pair(
            args.rounds, lambda: pg_ingest(txns, primary), lambda: pg_bound(txns, primary)
        )
    with running_pair(synchronous=False, prefix="fieldsync-bench-async-") as (primary, _standby):
        result["pg_async_ingest"], result["pg_async_bound"] = _best_pair(
            args.rounds, lambda: pg_ingest(txns, primary), lambda: pg_bound(txns, primary)
        )

    print(
        f"ingest: {events:,} events, {args.panels} panels x {args.batch} records per transaction, best of {args.rounds}"
    )
    print(f"  {'engine':<36} {'ingest/s':>12} {'bound/s':>12} {'ratio':>7}  bound")
    rows = (
        ("sqlite", "SQLite (WAL, synchronous=FULL)", "raw multi-row INSERT / executemany"),
        ("pg_local", "PostgreSQL local", "raw binary COPY"),
        ("pg_sync", "PostgreSQL + sync standby (on)", "raw binary COPY, same standby"),
        ("pg_async", "PostgreSQL + async standby", "raw binary COPY, same standby"),
    )
    for key, label, bound_name in rows:
        ingest, bound = result[f"{key}_ingest"], result[f"{key}_bound"]
        result[f"{key}_ratio"] = ingest / bound
        print(f"  {label:<36} {ingest:>12,.0f} {bound:>12,.0f} {ingest / bound:>7.3f}  {bound_name}")
    result["pg_sync_over_local"] = result["pg_sync_ingest"] / result["pg_local_ingest"]
    result["pg_async_over_local"] = result["pg_async_ingest"] / result["pg_local_ingest"]
    result["pg_local_over_sqlite"] = result["pg_local_ingest"] / result["sqlite_ingest"]
    print(
        f"  PostgreSQL local / SQLite: {result['pg_local_over_sqlite']:.3f}; "
        f"sync standby / local: {result['pg_sync_over_local']:.3f}; "
        f"async standby / local: {result['pg_async_over_local']:.3f}"
    )
    write_json(args.json, result, sqlite=sqlite3.sqlite_version, psycopg=psycopg.__version__)
    return result


if __name__ == "__main__":
    main()
