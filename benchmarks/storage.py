"""Storage speed and memory, each against its bound, in one run.

* ``EventStore.ingest`` events/s vs the raw-insert bound: the same rows, schema
  and pragmas (WAL, synchronous=FULL) and the same rows per transaction, inserted
  by the faster of ``executemany`` and multi-row ``INSERT ... VALUES`` with the
  parameters prepared before the clock starts.
* ``EventBuffer``: bytes per buffered event holding 1,000,000 events, and RSS
  after pushing 10x the budget through ``drop_oldest`` (it must stay flat).

    python benchmarks/storage.py [--events 500000] [--panels 10] [--batch 1000] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

import protocol as p
from benchmarks import write_json
from fieldsync.bench import fresh_schema
from storage import EventBuffer, EventStore, IngestBatch, OverflowPolicy

_COLUMNS = 11


def _batches(panels: int, per_panel: int, batch: int) -> list[list[IngestBatch]]:
    """Transactions: each holds one batch of every panel (a group commit)."""
    txns = []
    for start in range(1, per_panel + 1, batch):
        txn = []
        for panel in range(1, panels + 1):
            records = p.pack_records(
                p.EventRecord(
                    seq=s,
                    time_us=1_764_000_000_000_000 + s,
                    kind=p.EventKind.ACCESS_GRANTED,
                    door=s % 4,
                    card=panel * 7919 + s,
                )
                for s in range(start, start + batch)
            )
            txn.append(
                IngestBatch(panel_id=panel, first_seq=start, last_seq=start + batch - 1, records=records, received_us=1)
            )
        txns.append(txn)
    return txns


def bench_ingest(txns: list[list[IngestBatch]], workdir: Path) -> float:
    store = EventStore(workdir / "ingest.db")
    epoch = store.advance_epoch()
    events = sum(len(b.records) // p.RECORD_SIZE for txn in txns for b in txn)
    start = time.perf_counter()
    for txn in txns:
        store.ingest(txn, epoch)
    elapsed = time.perf_counter() - start
    assert store.count_events() == events
    store.close()
    return events / elapsed


_fresh_schema = fresh_schema  # the bounds' store: the event store's schema and pragmas


def bench_bound(txns: list[list[IngestBatch]], workdir: Path, rows_per_statement: int) -> tuple[float, str]:
    rows_txns = [[(b.panel_id, *r, b.received_us, 1) for b in txn for r in p.iter_rows(b.records)] for txn in txns]
    events = sum(len(t) for t in rows_txns)
    results = {}

    conn = _fresh_schema(workdir / "bound-executemany.db")
    sql = "INSERT INTO events VALUES (" + ",".join("?" * _COLUMNS) + ")"
    start = time.perf_counter()
    for rows in rows_txns:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    results["executemany"] = events / (time.perf_counter() - start)
    conn.close()

    k = rows_per_statement
    conn = _fresh_schema(workdir / "bound-values.db")
    full = "INSERT INTO events VALUES " + ",".join(["(" + ",".join("?" * _COLUMNS) + ")"] * k)
    prepared = []
    for rows in rows_txns:
        statements = []
        for i in range(0, len(rows), k):
            chunk = rows[i : i + k]
            text = (
                full
                if len(chunk) == k
                else "INSERT INTO events VALUES " + ",".join(["(" + ",".join("?" * _COLUMNS) + ")"] * len(chunk))
            )
            statements.append((text, [v for row in chunk for v in row]))
        prepared.append(statements)
    start = time.perf_counter()
    for statements in prepared:
        conn.execute("BEGIN IMMEDIATE")
        for text, params in statements:
            conn.execute(text, params)
        conn.execute("COMMIT")
    results[f"values x{k}"] = events / (time.perf_counter() - start)
    conn.close()
    best = max(results, key=lambda name: results[name])
    for name, rate in results.items():
        print(f"    bound {name:<14}: {rate:>12,.0f} rows/s")
    return results[best], best


def bench_buffer(events: int) -> dict[str, float]:
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    buf = EventBuffer(events * p.RECORD_SIZE, OverflowPolicy.DROP_OLDEST)
    for t in range(events):
        buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
    full = proc.memory_info().rss
    assert buf.statistics().depth == events
    for t in range(events, events * 11):
        buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
    after = proc.memory_info().rss
    stats = buf.statistics()
    assert stats.emitted == stats.acked + stats.buffered + stats.dropped
    assert stats.depth <= stats.capacity
    return {
        "buffer_bytes_per_event": (full - before) / events,
        "buffer_rss_full_mib": full / 2**20,
        "buffer_rss_after_10x_mib": after / 2**20,
        "rss_growth_ratio": after / full,
        "buffer_dropped": float(stats.dropped),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000, help="events ingested in all")
    parser.add_argument("--panels", type=int, default=10, help="panels per group commit")
    parser.add_argument("--batch", type=int, default=1000, help="records per panel batch")
    parser.add_argument("--rows-per-statement", type=int, default=500, help="for the multi-row VALUES bound")
    parser.add_argument("--buffer-events", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    result: dict[str, float] = {}
    # Memory first, in a process that has not yet allocated the ingest data.
    result.update(bench_buffer(args.buffer_events))
    per_panel = args.events // args.panels
    txns = _batches(args.panels, per_panel, args.batch)
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-") as tmp:
        workdir = Path(tmp)
        result["ingest_events_per_s"] = bench_ingest(txns, workdir)
        bound, name = bench_bound(txns, workdir, args.rows_per_statement)
    result["bound_events_per_s"] = bound
    result["ratio"] = result["ingest_events_per_s"] / bound
    events = args.panels * per_panel
    print(
        f"EventStore.ingest: {events:,} events, {args.panels} panels x {args.batch} records per transaction, "
        f"WAL + synchronous=FULL"
    )
    print(f"  ingest            : {result['ingest_events_per_s']:>12,.0f} events/s")
    print(f"  bound ({name:<11}): {bound:>12,.0f} rows/s")
    print(f"  ratio             : {result['ratio']:.3f}  (goal >= 0.85)")
    print(f"EventBuffer, {args.buffer_events:,} events")
    print(f"  bytes per event   : {result['buffer_bytes_per_event']:.1f}  (goal <= 40)")
    print(
        f"  RSS full {result['buffer_rss_full_mib']:.0f} MiB, after 10x more through drop_oldest "
        f"{result['buffer_rss_after_10x_mib']:.0f} MiB: growth ratio {result['rss_growth_ratio']:.3f}"
    )
    write_json(args.json, result, sqlite=sqlite3.sqlite_version)
    return result


if __name__ == "__main__":
    main()
