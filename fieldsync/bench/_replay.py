"""Backlog replay: panels come back with a backlog; how fast is it acknowledged?

The node runs as its own process (``fieldsync serve``), as a user runs it; the panels
run in this process. The clock starts when the fleet starts dialing and stops when
every panel's buffer is empty, i.e. every event is committed and acknowledged.

Two bounds, each measured in the same run once the replay's files are gone: the **row
bound**, a raw multi-row INSERT of the same number of rows into the same schema with the
same pragmas, and the **log bound**, a raw append of the same records as one batch-log
row per batch, in the same transactions. A bound that could not be measured is reported
as missing, with why, and no ratio is made from it.

With ``ingest = "log"`` the run goes on until the last acknowledged event is visible in
``events`` (``visible_s``) and reports the most events the batch log held.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import protocol as p
from emulator import Fleet, LinkMode, PanelSettings
from protocol.streams import sparing_gc
from storage import StoreError, open_event_store

from ..site import pki
from ._common import cpu_seconds, fresh_schema, node_process, ratio, save_figure

__all__ = ["VIP", "ReplayOptions", "Sample", "bound_rows_per_s", "log_bound_events_per_s", "measure_replay", "replay"]

VIP = "127.0.0.100"
#: How often the run samples the panels' buffers (and the batch log): the progress and the plot.
SAMPLE_EVERY = 0.1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOptions:
    panels: int = 1
    #: Events buffered per panel before the node starts.
    backlog: int = 1_000_000
    tls: bool = True
    #: Records per EVENT_BATCH, and batches in flight per panel.
    batch: int = 4096
    window: int = 4
    port: int = 30002
    timeout: float = 600.0
    #: Rows per transaction of the bounds.
    bound_txn: int = 16_384
    #: The node's ``ingest`` (``rows`` or ``log``) and, for ``log``, its materializer's timing.
    ingest: str = "rows"
    materialize_idle: float = 0.05
    max_log_age: float = 2.0
    max_log_lag: int = 4_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One look at the run: seconds since the start, events acknowledged, still buffered at
    the panels, and in the batch log (None when the node does not log)."""

    t: float
    acked: int
    buffered: int
    logged: int | None


def bound_rows_per_s(rows: int, panels: int, workdir: Path, per_txn: int) -> float:
    """Raw multi-row INSERT of ``rows`` rows (same schema, pragmas), timing only the SQL."""
    conn = fresh_schema(workdir / "bound.db")
    k = 500
    stmt = "INSERT INTO events VALUES " + ",".join(["(" + ",".join("?" * 11) + ")"] * k)
    per_panel = rows // panels
    elapsed = 0.0
    done = 0
    seq = {pid: 1 for pid in range(1, panels + 1)}
    pid = 1
    while done < rows:
        params: list[list[int]] = []
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
            params.append(chunk)
            n += take
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for chunk in params:
            rows_in = len(chunk) // 11
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
    conn = fresh_schema(workdir / "log-bound.db")
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


class _Sampler:
    """A ``Sample`` every ``SAMPLE_EVERY`` s: the panels' buffers (cheap: a length each) and the
    batch log's backlog through a read-only connection of its own; ``visible`` is set at the
    first sample after ``drained_at`` that finds the log empty."""

    def __init__(
        self, fleet: Fleet, total: int, log_db: Path | str | None, on_sample: Callable[[Sample], None]
    ) -> None:
        self.panels = list(fleet.panels.values())
        self.total = total
        self.log_db = log_db
        self.on_sample = on_sample
        self.samples: list[Sample] = []
        self.drained_at: float | None = None
        self.visible = trio.Event()

    async def run(self, start: float) -> None:
        read_log = _log_reader(self.log_db) if self.log_db is not None else None
        try:
            while True:
                await trio.sleep(SAMPLE_EVERY)
                buffered = sum(len(panel.buffer) for panel in self.panels)
                logged = read_log() if read_log is not None else None
                sample = Sample(time.perf_counter() - start, self.total - buffered, buffered, logged)
                self.samples.append(sample)
                self.on_sample(sample)
                if self.drained_at is not None and sample.t >= self.drained_at and logged == 0:
                    self.visible.set()
        finally:
            if read_log is not None:
                read_log(close=True)


def _log_reader(db: Path | str) -> Callable[..., int]:
    """Events in the store's batch log, read on a connection of its own; -1 while it cannot be
    read yet (the node is still making the schema). ``close=True`` closes it."""
    query = "SELECT coalesce(sum(events), 0) FROM batch_log"
    if isinstance(db, str):  # PostgreSQL: psycopg only when asked for
        import psycopg

        pg: list[psycopg.Connection[Any]] = []

        def read_pg(close: bool = False) -> int:
            if close:
                for conn in pg:
                    conn.close()
                return 0
            try:
                if not pg:
                    pg.append(psycopg.connect(db, autocommit=True, connect_timeout=2))
                row = pg[0].execute(query).fetchone()
                return int(row[0]) if row else -1
            except psycopg.Error:  # not there yet, or gone: a new connection next time
                for conn in pg:
                    conn.close()
                pg.clear()
                return -1

        return read_pg
    lite = sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    def read_sqlite(close: bool = False) -> int:
        if close:
            lite.close()
            return 0
        try:
            return int(lite.execute(query).fetchone()[0])
        except sqlite3.OperationalError:
            return -1

    return read_sqlite


def _fleet(opts: ReplayOptions, pki_dir: Path) -> Fleet:
    fleet = empty_fleet(opts, pki_dir)
    t0 = 1_764_000_000_000_000
    for panel in fleet.panels.values():
        for i in range(opts.backlog):
            panel.buffer.append(t0 + i, p.EventKind.ACCESS_GRANTED, door=i % 4, card=12345 + i)
    return fleet


#: A panel's alarm outbox as it ships (``PanelSettings``' own default).
_LANE_OUTBOX = PanelSettings(panel_id=1).alarm_outbox


def empty_fleet(opts: ReplayOptions, pki_dir: Path, *, lane: bool = True) -> Fleet:
    """The run's panels (and the PKI when TLS), each with room for its backlog, none in it yet.
    ``lane``: the panels' alarm lane (off: ``PanelSettings.alarm_outbox = 0``)."""
    if opts.tls:
        pki.init_ca(pki_dir)
        pki.issue(pki_dir, "node", "A")
    settings = [
        PanelSettings(
            panel_id=pid,
            mode=LinkMode.PUNCH_OUT,
            server=(VIP, opts.port),
            tls=pki.issue(pki_dir, "panel", pid) if opts.tls else None,
            buffer_bytes=(opts.backlog + 64) * p.RECORD_SIZE,
            batch_records=opts.batch,
            window=opts.window,
            backoff_initial=0.01,
            backoff_cap=0.2,
            alarm_outbox=_LANE_OUTBOX if lane else 0,
        )
        for pid in range(1, opts.panels + 1)
    ]
    return Fleet(settings, seed=1)


def serve_command(opts: ReplayOptions, workdir: Path, db: Path | str, pki_dir: Path) -> list[str]:
    """`fieldsync serve` as the run starts it: the node process, on the VIP."""
    command = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", str(db), "--listen", f"{VIP}:{opts.port}"]
    command += ["--pki", str(pki_dir)] if opts.tls else ["--insecure"]
    if opts.ingest == "log":
        site = workdir / "site.toml"  # the site file carries what the CLI does not
        site.write_text(
            f'[site]\ningest = "log"\nmaterialize_idle = {opts.materialize_idle}\n'
            f"max_log_age = {opts.max_log_age}\nmax_log_lag = {opts.max_log_lag}\n[fleet]\npanels = {opts.panels}\n"
        )
        command += ["--site", str(site)]
    return command


async def replay(
    opts: ReplayOptions,
    workdir: Path,
    db: Path | str | None = None,
    *,
    on_sample: Callable[[Sample], None] = lambda _: None,
) -> dict[str, object]:
    """One replay into ``db`` (a SQLite file, default ``workdir/site.db``, or a PostgreSQL URL)."""
    db = db if db is not None else workdir / "site.db"
    pki_dir = workdir / "pki"
    fleet = _fleet(opts, pki_dir)
    total = fleet.statistics().emitted
    log_path = workdir / "node.log"
    visible_s = float("nan")
    log_db = db if opts.ingest == "log" else None
    sampler = _Sampler(fleet, total, log_db, on_sample)
    # Checking 1000 panels costs CPU; one panel's drain of 0.3 s must not be 0.05 s late.
    poll = min(0.05, max(0.005, opts.panels * 0.00005))
    async with node_process(serve_command(opts, workdir, db, pki_dir), log_path) as node:
        connected_s = float("nan")
        node_cpu_start, fleet_cpu_start = cpu_seconds(node.pid), time.process_time()
        loop_cpu_start = cpu_seconds(node.pid, node.pid)  # the main thread: the event loop

        async def all_connected() -> None:
            nonlocal connected_s
            await fleet.wait_connected(poll=poll)  # not fleet.statistics(): that cost the fleet a fifth of its CPU
            connected_s = time.perf_counter() - start

        async with sparing_gc(), trio.open_nursery() as nursery:  # as `fieldsync emulate` runs a fleet
            start = time.perf_counter()
            await nursery.start(fleet.run)
            nursery.start_soon(all_connected)
            nursery.start_soon(sampler.run, start)
            with trio.fail_after(opts.timeout):
                await fleet.wait_drained(poll=poll)
            drain = time.perf_counter() - start
            node_cpu, fleet_cpu = cpu_seconds(node.pid) - node_cpu_start, time.process_time() - fleet_cpu_start
            loop_cpu = cpu_seconds(node.pid, node.pid) - loop_cpu_start
            if log_db is not None:  # until the last acknowledged event is visible in ``events``
                sampler.drained_at = drain
                with trio.fail_after(opts.timeout):
                    await sampler.visible.wait()
                visible_s = sampler.samples[-1].t
            nursery.cancel_scope.cancel()
    # The node prints its writer's busy share every 5 s: where the drain's time went.
    busy = [int(m) for m in re.findall(r"writer busy (\d+)%", log_path.read_text())]
    store = open_event_store(db)
    stored = store.count_events()
    store.close()
    if stored < total - 2 * opts.panels:  # HOST_ONLINE/OFFLINE events come and go
        raise SystemExit(f"only {stored} of {total} events stored")
    # No event waits longer from its ACK to its row in ``events`` than from the first ACK of
    # the run to the sample that found the log empty: the queries' worst lag, at most.
    first_ack = next((s.t for s in sampler.samples if s.acked > 0), 0.0)
    at_drain = next((s.logged for s in sampler.samples if s.t >= drain and s.logged is not None), None)
    return {
        "acked_events_per_s": total / drain,
        "drain_s": drain,
        "ingest": opts.ingest,
        "visible_s": visible_s,
        "stated_lag_s": opts.max_log_age if log_db is not None else None,
        "worst_lag_s": visible_s - first_ack if log_db is not None else None,
        "log_at_drain_events": at_drain,
        "log_peak_events": max((max(0, s.logged or 0) for s in sampler.samples), default=0),
        "events": total,
        "connected_s": connected_s,
        "writer_busy_pct": busy,
        "node_cpu_s": node_cpu,
        "node_loop_cpu_s": loop_cpu,
        "fleet_cpu_s": fleet_cpu,
        "samples": [dataclasses.astuple(s) for s in sampler.samples],
    }


def _bound(missing: dict[str, str], key: str, measure: Callable[[], float]) -> float | None:
    try:
        return measure()
    except (sqlite3.Error, OSError, StoreError) as exc:
        missing[key] = f"{type(exc).__name__}: {exc}"
        return None


async def measure_replay(
    opts: ReplayOptions, workdir: Path, *, on_sample: Callable[[Sample], None] = lambda _: None
) -> dict[str, object]:
    """The replay into a SQLite store in ``workdir``, then both bounds, and every figure as a
    ratio to them (None where a bound is missing, named under ``missing_bounds``)."""
    result = await replay(opts, workdir, on_sample=on_sample)
    result.update(await trio.to_thread.run_sync(_bounds, opts, workdir, result))
    return result


def _bounds(opts: ReplayOptions, workdir: Path, result: dict[str, object]) -> dict[str, object]:
    events = int(result["events"])  # type: ignore[call-overload]
    # The bounds start with the replay's database gone and written back: measured right
    # after a drain, the bound paid for the kernel's writeback of that file and read up to
    # 40 % low, which flattered the ratio.
    for leftover in workdir.glob("site.db*"):
        leftover.unlink()
    os.sync()
    missing: dict[str, str] = {}
    row = _bound(missing, "row_bound", lambda: bound_rows_per_s(events, opts.panels, workdir, opts.bound_txn))
    log = _bound(
        missing, "log_bound", lambda: log_bound_events_per_s(events, opts.panels, workdir, opts.bound_txn, opts.batch)
    )
    acked = float(result["acked_events_per_s"])  # type: ignore[arg-type]
    # What the CPU alone allows: the drain cannot be shorter than both processes' CPU
    # spread perfectly over every core (the fleet shares the machine with the node).
    # How fast the log went into ``events`` once the ACKs were done: what the queries waited for.
    after = float(result.get("visible_s", math.nan)) - float(result.get("drain_s", math.nan))  # type: ignore[arg-type]
    left = result.get("log_at_drain_events")
    materialized = float(left) / after if isinstance(left, int) and left > 0 and after > 0 else None
    cores = os.cpu_count() or 1
    cpu_floor_s = (float(result["node_cpu_s"]) + float(result["fleet_cpu_s"])) / cores  # type: ignore[arg-type]
    cpu_ratio = ratio(events / cpu_floor_s, row) if cpu_floor_s > 0 else None
    return dict(
        row_bound_events_per_s=row,
        log_bound_events_per_s=log,
        ratio_to_row_bound=ratio(acked, row),
        ratio_to_log_bound=ratio(acked, log),
        missing_bounds=missing,
        cpu_floor_s=cpu_floor_s,
        ratio_cpu_allows=cpu_ratio,
        materialized_after_drain_events_per_s=materialized,
        ratio_materialized_to_row_bound=None if materialized is None else ratio(materialized, row),
        panels=opts.panels,
        backlog=opts.backlog,
        tls=opts.tls,
        batch=opts.batch,
        window=opts.window,
    )


def _figure(value: object, unit: str, missing: str | None) -> str:
    if value is None:
        return f"missing ({missing or 'not measured'})"
    return f"{float(value):>12,.0f} {unit}"  # type: ignore[arg-type]


def _ratio(value: object) -> str:
    return "missing (its bound is)" if value is None else f"{float(value):.3f}"  # type: ignore[arg-type]


def report_lines(result: dict[str, object]) -> list[str]:
    """The run's figures, each beside its bound and ratio, as the CLI and benchmarks print them."""
    missing: dict[str, str] = result["missing_bounds"]  # type: ignore[assignment]
    node_cpu, loop_cpu = float(result["node_cpu_s"]), float(result["node_loop_cpu_s"])  # type: ignore[arg-type]
    lines = [
        f"replay: {result['panels']} panel(s) x {result['backlog']:,} events, "
        f"{'TLS 1.3' if result['tls'] else 'plain TCP'}, batch {result['batch']}, window {result['window']}, "
        f"ingest {result['ingest']}",
        f"  drain            : {result['drain_s']:.2f} s",
        f"  all connected at : {result['connected_s']:.2f} s (every panel had a session; the drain includes this)",
        f"  node writer busy : {result['writer_busy_pct']} % per 5 s (the store's commits)",
        f"  acked            : {float(result['acked_events_per_s']):>12,.0f} events/s",  # type: ignore[arg-type]
        f"  row bound        : {_figure(result['row_bound_events_per_s'], 'rows/s', missing.get('row_bound'))}",
        f"  ratio to bound   : {_ratio(result['ratio_to_row_bound'])}",
        f"  log bound        : {_figure(result['log_bound_events_per_s'], 'events/s', missing.get('log_bound'))}",
        f"  ratio to log     : {_ratio(result['ratio_to_log_bound'])}",
    ]
    visible = float(result["visible_s"])  # type: ignore[arg-type]
    if not math.isnan(visible):
        lines.append(
            f"  ingest log       : every event visible in events at {visible:.2f} s "
            f"({visible - float(result['drain_s']):.2f} s after the last ACK), "  # type: ignore[arg-type]
            f"log peak {result['log_peak_events']:,} events"
        )
        worst, stated = float(result["worst_lag_s"]), float(result["stated_lag_s"])  # type: ignore[arg-type]
        line = f"  queries' lag     : at most {worst:.2f} s from an ACK to its event's row; max_log_age {stated:g} s "
        if worst <= stated:
            line += "held"
        else:  # docs/architecture.md, "The batch log": an outpaced materializer waits for the burst's end
            line += "is for traffic the materializer follows: this burst outpaced it"
        lines.append(line)
        rate = result.get("materialized_after_drain_events_per_s")
        if rate is not None:
            to_row = _ratio(result["ratio_materialized_to_row_bound"])
            lines.append(
                f"  materialized     : {result['log_at_drain_events']:,} events left at the last ACK, "
                f"{float(rate):,.0f} events/s (ratio to the row bound {to_row})"  # type: ignore[arg-type]
            )
    allows = result["ratio_cpu_allows"]
    lines.append(
        f"  CPU in the drain : node {node_cpu:.1f} s (event loop {loop_cpu:.1f} s, writer and other threads "
        f"{node_cpu - loop_cpu:.1f} s), fleet {result['fleet_cpu_s']:.1f} s; on {os.cpu_count()} cores no drain is "
        f"shorter than {result['cpu_floor_s']:.1f} s, ratio to the row bound {_ratio(allows)} at most"
    )
    return lines


def plot_replay(result: dict[str, object], path: Path) -> None:
    """Acknowledged events/s and the backlog (at the panels, in the batch log) over time."""
    from matplotlib.figure import Figure

    samples = [Sample(*s) for s in result["samples"]]  # type: ignore[attr-defined]
    fig = Figure(figsize=(9, 6))
    rate_ax, backlog_ax = fig.subplots(2, 1, sharex=True)
    pairs = list(itertools.pairwise(samples))
    rate_ax.plot([b.t for _, b in pairs], [(b.acked - a.acked) / (b.t - a.t) for a, b in pairs], label="acked")
    row = result["row_bound_events_per_s"]
    if row is not None:
        rate_ax.axhline(float(row), color="grey", linestyle="--", label="row bound")  # type: ignore[arg-type]
    rate_ax.set_ylabel("events/s")
    rate_ax.legend(loc="upper right")
    backlog_ax.plot([s.t for s in samples], [s.buffered for s in samples], label="buffered at the panels")
    if any(s.logged is not None for s in samples):
        backlog_ax.plot([s.t for s in samples], [max(0, s.logged or 0) for s in samples], label="in the batch log")
    backlog_ax.set_ylabel("events")
    backlog_ax.set_xlabel("seconds since the fleet started dialing")
    backlog_ax.legend(loc="upper right")
    fig.suptitle(
        f"replay: {result['panels']} panel(s) x {result['backlog']:,}, ingest {result['ingest']}, "
        f"ratio to the row bound {_ratio(result['ratio_to_row_bound'])}"
    )
    save_figure(fig, path)
