"""Backlog replay: panels come back with a backlog; how fast is it acknowledged?

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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import protocol as p
from benchmarks import cpu_seconds, node_process, write_json
from benchmarks.storage import _fresh_schema
from emulator import Fleet, LinkMode, PanelSettings
from fieldsync.site import pki
from storage import open_event_store

VIP = "127.0.0.100"


def bound_rows_per_s(rows: int, panels: int, workdir: Path, per_txn: int) -> float:
    """Raw multi-row INSERT of ``rows`` rows (same schema, pragmas), timing only the SQL."""
    conn = _fresh_schema(workdir / "bound.db")
    k = 500
    stmt = "INSERT INTO events VALUES " + ",".join(["(" + ",".join("?" * 11) + ")"] * k)
    per_panel = rows // panels
    elapsed = 0.0
    done = 0
    seq = {pid: 1 for pid in range(1, panels + 1)}
    pid = 1
    while done < rows:
        params: list[int] = []
        n = 0
        while n < per_txn and done + n < rows:
            take = min(k, per_txn - n, rows - done - n)
            chunk: list[int] = []
            for _ in range(take):
                s = seq[pid]
                chunk += (pid, s, 1_764_000_000_000_000 + s, 1, s % 4, 1, 0, 12345 + s, 0, 1, 1)
                seq[pid] = s + 1
                if seq[pid] > per_panel:
                    pid = pid % panels + 1
            params.append(chunk)  # type: ignore[arg-type]
            n += take
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for chunk in params:
            rows_in = len(chunk) // 11  # type: ignore[arg-type]
            sql = (
                stmt
                if rows_in == k
                else "INSERT INTO events VALUES " + ",".join(["(" + ",".join("?" * 11) + ")"] * rows_in)
            )
            conn.execute(sql, chunk)
        conn.execute("COMMIT")
        elapsed += time.perf_counter() - start
        done += n
    conn.close()
    return rows / elapsed


def log_bound_events_per_s(rows: int, panels: int, workdir: Path, per_txn: int, batch: int) -> float:
    """Raw append of ``rows`` records as one batch_log row per ``batch`` records, in
    transactions of ``per_txn`` records (same schema, pragmas), timing only the SQL."""
    conn = _fresh_schema(workdir / "log-bound.db")
    record = p.EventRecord(seq=1, time_us=1_764_000_000_000_000, kind=p.EventKind.ACCESS_GRANTED, card=12345).pack()
    blob = record * batch
    per_panel = rows // panels
    elapsed = 0.0
    done = 0
    while done < rows:
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        in_txn = 0
        while in_txn < per_txn and done < rows:
            n = min(batch, rows - done, per_panel)
            conn.execute(
                "INSERT INTO batch_log (panel_id, received_us, epoch, events, records) VALUES (?, ?, ?, ?, ?)",
                (1 + done // per_panel, 1, 1, n, blob if n == batch else record * n),
            )
            done += n
            in_txn += n
        conn.execute("COMMIT")
        elapsed += time.perf_counter() - start
    conn.close()
    return rows / elapsed


async def _watch_log(db: Path, samples: list[tuple[float, int]], start: float) -> None:
    """The batch log's backlog every 0.1 s, through a reader's connection of its own."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while True:
            await trio.sleep(0.1)
            with contextlib.suppress(sqlite3.OperationalError):  # the schema may not be there yet
                (events,) = conn.execute("SELECT coalesce(sum(events), 0) FROM batch_log").fetchone()
                samples.append((time.perf_counter() - start, int(events)))
    finally:
        conn.close()


async def replay(args: argparse.Namespace, workdir: Path, db: Path | str | None = None) -> dict[str, object]:
    """One replay into ``db`` (a SQLite file, default ``workdir/site.db``, or a PostgreSQL URL)."""
    port = args.port
    db = db if db is not None else workdir / "site.db"
    pki_dir = workdir / "pki"
    settings = []
    if args.tls:
        pki.init_ca(pki_dir)
        pki.issue(pki_dir, "node", "A")
    for pid in range(1, args.panels + 1):
        tls = pki.issue(pki_dir, "panel", pid) if args.tls else None
        settings.append(
            PanelSettings(
                panel_id=pid,
                mode=LinkMode.PUNCH_OUT,
                server=(VIP, port),
                tls=tls,
                buffer_bytes=(args.backlog + 64) * p.RECORD_SIZE,
                batch_records=args.batch,
                window=args.window,
                backoff_initial=0.01,
                backoff_cap=0.2,
            )
        )
    fleet = Fleet(settings, seed=1)
    for panel in fleet.panels.values():
        t0 = 1_764_000_000_000_000
        for i in range(args.backlog):
            panel.buffer.append(t0 + i, p.EventKind.ACCESS_GRANTED, door=i % 4, card=12345 + i)
    total = fleet.statistics().emitted

    command = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", str(db), "--listen", f"{VIP}:{port}"]
    command += ["--pki", str(pki_dir)] if args.tls else ["--insecure"]
    ingest = args.ingest
    if ingest == "log":
        site = workdir / "site.toml"  # the site file carries what the CLI does not
        site.write_text(
            f'[site]\ningest = "log"\nmaterialize_idle = {args.materialize_idle}\n'
            f"max_log_age = {args.max_log_age}\n[fleet]\npanels = {args.panels}\n"
        )
        command += ["--site", str(site)]
    log_path = workdir / "node.log"
    samples: list[tuple[float, int]] = []
    visible_s = float("nan")
    async with node_process(command, log_path) as node:
        connected_s = float("nan")
        node_cpu_start, fleet_cpu_start = cpu_seconds(node.pid), time.process_time()
        loop_cpu_start = cpu_seconds(node.pid, node.pid)  # the main thread: the event loop

        async def all_connected() -> None:
            nonlocal connected_s
            await fleet.wait_connected()  # not fleet.statistics(): that cost the fleet a fifth of its CPU
            connected_s = time.perf_counter() - start

        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            await nursery.start(fleet.run)
            nursery.start_soon(all_connected)
            if ingest == "log" and isinstance(db, Path):
                nursery.start_soon(_watch_log, db, samples, start)
            with trio.fail_after(args.timeout):
                await fleet.wait_drained(poll=0.05)  # checking 1000 panels costs CPU
            drain = time.perf_counter() - start
            node_cpu, fleet_cpu = cpu_seconds(node.pid) - node_cpu_start, time.process_time() - fleet_cpu_start
            loop_cpu = cpu_seconds(node.pid, node.pid) - loop_cpu_start
            if ingest == "log":  # until the last acknowledged event is visible in ``events``
                with trio.fail_after(args.timeout):
                    while not samples or samples[-1][0] < drain or samples[-1][1]:
                        await trio.sleep(0.05)
                visible_s = samples[-1][0]
            nursery.cancel_scope.cancel()
    # The node prints its writer's busy share every 5 s: where the drain's time went.
    busy = [int(m) for m in re.findall(r"writer busy (\d+)%", log_path.read_text())]
    store = open_event_store(db)
    stored = store.count_events()
    store.close()
    if stored < total - 2 * args.panels:  # HOST_ONLINE/OFFLINE events come and go
        raise SystemExit(f"only {stored} of {total} events stored")
    return {
        "acked_events_per_s": total / drain,
        "drain_s": drain,
        "ingest": ingest,  # type: ignore[dict-item]
        "visible_s": visible_s,
        "log_peak_events": float(max((n for _, n in samples), default=0)),
        "events": float(total),
        "connected_s": connected_s,
        "writer_busy_pct": busy,  # type: ignore[dict-item]
        "node_cpu_s": node_cpu,
        "node_loop_cpu_s": loop_cpu,
        "fleet_cpu_s": fleet_cpu,
    }


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
        result = dict(trio.run(replay, args, workdir, _fresh_database(server)))
        bound = pg_bound(_batches(args.panels, per_panel, per_txn), server)
    return result, bound


def side_by_side(args: argparse.Namespace) -> dict[str, object]:
    """``--engine``: the same replay into each engine in turn, each against its own bound."""
    results: dict[str, dict[str, object]] = {}
    for engine in args.engine:
        with tempfile.TemporaryDirectory(prefix=f"fieldsync-replay-{engine}-") as tmp:
            workdir = Path(tmp)
            if engine == "sqlite":
                result = dict(trio.run(replay, args, workdir))
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
            f"ratio {float(result['ratio_to_bound']):.3f}",  # type: ignore[arg-type]
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
        "--ingest", choices=["rows", "log"], default="rows", help="what an ACK waits for (SQLite engine)"
    )
    parser.add_argument(
        "--materialize-idle", type=float, default=0.05, help="--ingest log: quiet seconds before the materializer goes"
    )
    parser.add_argument(
        "--max-log-age", type=float, default=2.0, help="--ingest log: the oldest batch's age at which it goes anyway"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.engine != ["sqlite"]:
        if args.ingest != "rows":
            parser.error("--ingest log is built on the SQLite engine only")
        return side_by_side(args)
    with tempfile.TemporaryDirectory(prefix="fieldsync-replay-") as tmp:
        workdir = Path(tmp)
        result: dict[str, object] = dict(trio.run(replay, args, workdir))
        events = int(result["events"])  # type: ignore[call-overload]
        # The bound starts with the replay's database gone and written back: measured right
        # after a drain, it paid for the kernel's writeback of that file and read up to
        # 40 % low, which flattered the ratio.
        for leftover in workdir.glob("site.db*"):
            leftover.unlink()
        os.sync()
        result["row_bound_events_per_s"] = bound_rows_per_s(events, args.panels, workdir, args.bound_txn)
        result["log_bound_events_per_s"] = log_bound_events_per_s(
            events, args.panels, workdir, args.bound_txn, args.batch
        )
    result["ratio_to_log_bound"] = float(result["acked_events_per_s"]) / float(result["log_bound_events_per_s"])  # type: ignore[arg-type]
    result["ratio_to_row_bound"] = float(result["acked_events_per_s"]) / float(result["row_bound_events_per_s"])  # type: ignore[arg-type]
    # What the CPU alone allows: the drain cannot be shorter than both processes' CPU
    # spread perfectly over every core (the fleet shares the machine with the node).
    cores = os.cpu_count() or 1
    cpu_floor_s = (float(result["node_cpu_s"]) + float(result["fleet_cpu_s"])) / cores  # type: ignore[arg-type]
    result["cpu_floor_s"] = cpu_floor_s
    result["ratio_cpu_allows"] = min(1.0, result["events"] / cpu_floor_s / float(result["row_bound_events_per_s"]))  # type: ignore[operator, arg-type]
    result.update(panels=args.panels, backlog=args.backlog, tls=args.tls, batch=args.batch, window=args.window)
    print(
        f"replay: {args.panels} panel(s) x {args.backlog:,} events, {'TLS 1.3' if args.tls else 'plain TCP'}, "
        f"batch {args.batch}, window {args.window}"
    )
    print(f"  drain            : {result['drain_s']:.2f} s")
    print(f"  all connected at : {result['connected_s']:.2f} s (every panel had a session; the drain includes this)")
    print(f"  node writer busy : {result['writer_busy_pct']} % per 5 s (the store's commits)")
    print(f"  acked            : {result['acked_events_per_s']:>12,.0f} events/s")
    print(f"  row bound        : {result['row_bound_events_per_s']:>12,.0f} rows/s")
    print(f"  ratio to bound   : {result['ratio_to_row_bound']:.3f}  (goal >= 0.6 with TLS; with --ingest log >= 2.5)")
    log_bound, log_ratio = result["log_bound_events_per_s"], result["ratio_to_log_bound"]
    print(f"  log bound        : {log_bound:>12,.0f} events/s (ratio {log_ratio:.3f})")
    if args.ingest == "log":
        print(
            f"  ingest log       : every event visible in events at {result['visible_s']:.2f} s "
            f"({float(result['visible_s']) - float(result['drain_s']):.2f} s after the last ACK), "  # type: ignore[arg-type]
            f"log peak {result['log_peak_events']:,.0f} events"
        )
    print(
        f"  CPU in the drain : node {result['node_cpu_s']:.1f} s (event loop {result['node_loop_cpu_s']:.1f} s, "
        f"writer and other threads {float(result['node_cpu_s']) - float(result['node_loop_cpu_s']):.1f} s), "  # type: ignore[arg-type]
        f"fleet {result['fleet_cpu_s']:.1f} s; "
        f"on {os.cpu_count()} cores no drain is shorter than {result['cpu_floor_s']:.1f} s, "
        f"ratio {result['ratio_cpu_allows']:.3f} at most"
    )
    write_json(args.json, result, sqlite=sqlite3.sqlite_version)
    return result


if __name__ == "__main__":
    main()
