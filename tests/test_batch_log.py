"""The log-structured ingest: an ACK once the batch is in the batch log, events materialized behind.

The store's ``append`` and ``materialize`` on both engines (exactly once, in order, across
kills at any point), the node's materializer (its bounded lag pushes back, a restart
finishes what a predecessor left), and a real node process killed with kill -9 mid-replay.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

import protocol as p
from emulator import Fleet, LinkMode
from fieldsync.engine import Node, NodeSettings
from fieldsync.engine._materialize import _Materializer
from storage import EventStore, EventStoreInterface, IngestBatch, LogBacklog, StoreFull, open_event_store
from tests.store_engines import StoreEngine, wait_for_dead_sessions
from tests.test_e2e import check_store_matches_journals, clock, node_settings, panel_settings

ROOT = Path(__file__).resolve().parent.parent


def batch(panel: int, first: int, last: int, received_us: int = 1) -> IngestBatch:
    records = b"".join(
        p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED, card=s).pack() for s in range(first, last + 1)
    )
    return IngestBatch(panel_id=panel, first_seq=first, last_seq=last, records=records, received_us=received_us)


@pytest.fixture
def store(engine: StoreEngine) -> Iterator[EventStoreInterface]:
    """A fresh store on each engine (SQLite, PostgreSQL), at epoch 1."""
    store = open_event_store(engine.target)
    store.advance_epoch()
    yield store
    store.close()


def test_an_append_is_acknowledged_from_the_log_and_materialized_in_order(store: EventStoreInterface) -> None:
    result = store.append([batch(1, 1, 100, 10), batch(2, 1, 50, 10), batch(1, 101, 150, 20)], 1)
    assert result.hwms == {1: 150, 2: 50} and result.stored == 200
    # Durable and counted in the hwm at once; not yet in the table operators query.
    assert store.hwm(1) == 150 and store.count_events() == 0
    assert store.log_backlog() == LogBacklog(batches=3, events=200, oldest_received_us=10)
    moved = store.materialize(120)  # whole batches, about 120 events: the first two
    assert (moved.batches, moved.events) == (2, 150)
    assert store.seqs(1) == list(range(1, 101)) and store.seqs(2) == list(range(1, 51))
    assert store.materialize_all().events == 50 and store.log_backlog() == LogBacklog()
    assert store.seqs(1) == list(range(1, 151))
    assert [e.received_us for e in store.events(1)] == [10] * 100 + [20] * 50
    assert store.materialize() == LogBacklog()  # an empty log moves nothing


def test_the_log_keeps_the_rules_of_ingest(store: EventStoreInterface) -> None:
    store.append([batch(1, 1, 10)], 1)
    again = store.append([batch(1, 5, 12)], 1)  # 5..10 sent again: only 11, 12 are new
    assert again.outcomes[0].duplicates == 6 and again.outcomes[0].stored == 2
    gap = store.append([batch(1, 20, 30)], 1)
    assert gap.outcomes[0].error is not None and gap.outcomes[0].expected_seq == 13
    marker = p.EventRecord(seq=13, time_us=5, kind=p.EventKind.BUFFER_OVERFLOW, card=19, aux=7).pack()
    declared = IngestBatch(
        panel_id=1, first_seq=13, last_seq=21, records=marker + batch(1, 20, 21).records, received_us=2
    )
    assert store.append([declared], 1).hwms == {1: 21}
    assert [(loss.first_seq, loss.last_seq) for loss in store.losses(1)] == [(13, 19)]  # at once, not behind
    store.materialize_all()
    assert store.seqs(1) == [*range(1, 13), 20, 21]
    assert store.stale_writes() == 0 and store.integrity_check() == "ok"


def test_two_materializers_of_one_store_never_move_a_batch_twice(
    engine: StoreEngine, store: EventStoreInterface
) -> None:
    """A fenced node's materializer and its successor's, taking turns on one store."""
    for start in range(1, 20_001, 500):
        store.append([batch(1, start, start + 499), batch(2, start, start + 499)], 1)
    movers = [open_event_store(engine.target, durable=False) for _ in range(2)]
    # Each reads the log inside its own transaction: a step never sees what the other moved.
    first = movers[0].materialize(700)
    moved = [first.events, 0]
    turn = 1
    while step := movers[turn].materialize(700).events:
        moved[turn] += step
        turn = 1 - turn
    assert sum(moved) == 40_000 and all(moved), moved
    assert store.seqs(1) == store.seqs(2) == list(range(1, 20_001))
    for mover in movers:
        mover.close()


def test_two_materializers_at_once_never_move_a_batch_twice(engine: StoreEngine, store: EventStoreInterface) -> None:
    """The same, the two stepping in threads of their own at the same time (PostgreSQL lets
    them run concurrently: its advisory lock is what makes them take turns)."""
    for start in range(1, 20_001, 250):
        store.append([batch(1, start, start + 249), batch(2, start, start + 249)], 1)
    movers = [open_event_store(engine.target, durable=False) for _ in range(2)]
    moved = [0, 0]
    errors: list[BaseException] = []

    def drain(k: int) -> None:
        try:
            while step := movers[k].materialize(300).events:
                moved[k] += step
        except BaseException as exc:  # reported below, not only printed by the thread
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(k,)) for k in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads) and not errors, errors
        assert sum(moved) == 40_000 and store.log_backlog() == LogBacklog(), moved
        assert store.seqs(1) == store.seqs(2) == list(range(1, 20_001))
    finally:
        for mover in movers:
            mover.close()


def test_a_full_disk_moves_nothing_and_loses_nothing(engine: StoreEngine, store: EventStoreInterface) -> None:
    store.append([batch(1, 1, 20_000)], 1)
    mover = open_event_store(engine.target, durable=False)
    with engine.full(mover), pytest.raises(StoreFull, match="materializing the batch log"):
        mover.materialize(20_000)
    assert store.count_events() == 0 and store.log_backlog().events == 20_000
    assert mover.materialize_all().events == 20_000 and store.seqs(1) == list(range(1, 20_001))
    mover.close()


def _backlog(db: Path | str) -> LogBacklog:
    store = open_event_store(db)
    try:
        return store.log_backlog()
    finally:
        store.close()


def _verify(db: Path | str, committed: dict[int, int]) -> list[str]:
    """After a kill: what a restart finds, once it has finished the log."""
    wait_for_dead_sessions(db)
    store = open_event_store(db)
    try:
        store.materialize_all()
        problems = [] if store.integrity_check() == "ok" else ["integrity"]
        for panel, hwm in committed.items():
            stored = store.hwm(panel)
            if stored < hwm:
                problems.append(f"panel {panel} acked {hwm}, hwm {stored}")
            seqs = store.seqs(panel)
            if seqs != list(range(1, stored + 1)):
                problems.append(f"panel {panel}: {stored - len(set(seqs))} of 1..{stored} missing")
        return problems
    finally:
        store.close()


def _child(db: Path | str, round_: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child_log", str(db), str(round_), *extra],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )


def _acked(line: str, committed: dict[int, int]) -> None:
    if line.startswith("{"):
        for panel, hwm in json.loads(line).items():
            committed[int(panel)] = max(committed.get(int(panel), 0), hwm)


def _fresh(engine: StoreEngine) -> Path | str:
    db = engine.target
    first = open_event_store(db)
    first.advance_epoch()
    first.close()
    return db


@pytest.mark.slow
def test_sigkill_at_random_points_of_appends_and_materializing_loses_nothing(engine: StoreEngine) -> None:
    db = _fresh(engine)
    rng = random.Random(20261201)
    committed: dict[int, int] = {}
    # PostgreSQL's rounds cost three times SQLite's (a child's connections, a server's
    # sessions to wait out): ten of them, as many kill points per second of the suite.
    for round_ in range(20 if engine.name == "sqlite" else 10):
        child = _child(db, round_)
        assert child.stdout is not None
        try:
            for _ in range(rng.randint(1, 12)):
                line = child.stdout.readline()
                assert line, "the child died before it was killed"
                _acked(line, committed)
            threading.Event().wait(rng.random() * 0.02)  # mid-append or mid-materialize some of the time
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            child.stdout.close()
        assert _verify(db, committed) == [], f"round {round_}"


def test_the_crash_check_catches_a_materializer_that_moves_in_two_transactions(engine: StoreEngine) -> None:
    """The negative control of the crash test: a kill between the log's delete and the
    events' insert loses acknowledged events, and the same check finds them missing."""
    db = _fresh(engine)
    committed: dict[int, int] = {}
    child = _child(db, 1, "--split")
    assert child.stdout is not None
    try:
        while (line := child.stdout.readline()) and line.strip() != "between":
            _acked(line, committed)
        assert line, "the child died before its materializer ran"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    problems = _verify(db, committed)
    assert problems and all("missing" in p for p in problems), problems


# -- the node's materializer -------------------------------------------------------------------


class _HeldMaterializer(EventStore):
    """A materializing connection that waits for the test's go before every step."""

    go = threading.Event()

    def materialize(self, max_events: int = 16_384) -> LogBacklog:
        self.go.wait(timeout=30)
        return super().materialize(max_events)


class _HeldNode(Node):
    store_class = _HeldMaterializer


def test_the_lag_is_bounded_the_commits_wait_and_nothing_is_dropped(site_pki: Path, tmp_path: Path) -> None:
    port = 31200
    _HeldMaterializer.go.clear()

    async def main() -> None:
        panels = [panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port, buffer_bytes=1 << 20) for i in (1, 2)]
        fleet = Fleet(panels, seed=2, journal=True)
        for panel in fleet.panels.values():
            for i in range(3000):
                panel.swipe(i % 50, i % 4)
        settings = node_settings(
            site_pki, tmp_path / "site.db", port, ingest="log", max_commit_events=500, max_log_lag=1000
        )
        node = _HeldNode(settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(fleet.run)
            with trio.fail_after(60):
                while node.materializer.lag < 1000 - 500:  # within one commit of the bound
                    await trio.sleep(0.05)
            await trio.sleep(5)  # the materializer is held: the commits must wait, not pass it
            held = node.statistics()
            await trio.sleep(5)
            assert node.statistics().events_stored == held.events_stored  # nothing more acked
            assert held.log_lag_events <= 1000 and held.log_lag_peak <= 1000
            assert fleet.statistics().acked == held.events_stored <= 1000
            emitted = fleet.statistics().emitted
            assert fleet.statistics().buffered_events >= emitted - 1000  # pushed back, kept by the panels
            _HeldMaterializer.go.set()
            with trio.fail_after(120):
                await fleet.wait_drained()
                while node.materializer.lag:
                    await trio.sleep(0.05)
            done = node.statistics()
            assert done.events_stored == done.materialized == emitted and done.log_lag_peak <= 1000
            nursery.cancel_scope.cancel()
        check_store_matches_journals(tmp_path / "site.db", fleet)

    try:
        trio.run(main, clock=clock())
    finally:
        _HeldMaterializer.go.set()


def test_a_node_finishes_the_log_a_predecessor_left(engine: StoreEngine) -> None:
    db = engine.target
    left = open_event_store(db)
    left.advance_epoch()
    left.append([batch(7, 1, 4000), batch(8, 1, 10)], 1)  # acknowledged, then the node died
    left.close()

    async def main() -> None:
        node = Node(NodeSettings(node_id="A", db=db, listen=None))  # ingest = rows: the log is finished anyway
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with trio.fail_after(30):
                while node.statistics().materialized < 4010:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    store = open_event_store(db)
    assert (
        store.log_backlog() == LogBacklog()
        and store.seqs(7) == list(range(1, 4001))
        and store.seqs(8) == list(range(1, 11))
    )
    store.close()


async def test_an_outpaced_materializer_waits_for_the_burst_to_end_not_for_its_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = SimpleNamespace(materialize_step=16_384, max_log_lag=10**8, materialize_idle=0.05, max_log_age=2.0)
    mat = _Materializer(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    for _ in range(250):  # 1M events/s for 2.5 s: the oldest batch is past max_log_age
        mat.logged(10_000)
        await trio.sleep(0.01)
    assert mat._wait() == 0  # no step measured yet: the age starts one
    mat._measured(16_384, 0.1)  # its steps move 164k events/s, a sixth of the commits' rate
    assert mat.outpaced(trio.current_time()) and 0 < mat._wait() <= 0.25
    mat._pressed.set()  # a commit waits for room: the push-back goes first
    assert mat._wait() == 0
    mat._pressed = trio.Event()
    await trio.sleep(0.06)  # the burst ended: quiet for materialize_idle
    assert mat._wait() == 0
    mat._measured(16_384, 0.001)  # a materializer that follows the commits steps on age again
    for _ in range(10):
        mat.logged(10_000)
        await trio.sleep(0.01)
    assert not mat.outpaced(trio.current_time()) and mat._wait() == 0


def test_an_unknown_ingest_mode_is_refused_by_name() -> None:
    assert NodeSettings(db="postgresql://localhost/x", ingest="log").ingest == "log"  # built on both engines
    with pytest.raises(ValueError, match="ingest 'rows-and-log'"):
        NodeSettings(ingest="rows-and-log")


@pytest.mark.slow
def test_kill_9_of_a_node_on_the_batch_log_mid_replay_loses_and_duplicates_nothing(
    site_pki: Path, tmp_path: Path
) -> None:
    """A real node process with ``--ingest log``, SIGKILLed while its log holds acknowledged
    batches (its materializer waits for a quiet spell the replay never gives it), restarted
    on the same file: the new node finishes the log and serves on (P1, P2)."""
    port = 31210
    db = tmp_path / "site.db"
    site = tmp_path / "site.toml"
    site.write_text(
        f'[site]\ningest = "log"\nmaterialize_idle = 30.0\npki = "{site_pki}"\n[fleet]\nfirst_id = 33\npanels = 6\n'
    )
    base = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", str(db), "--listen", f"127.0.0.100:{port}"]

    def start(*extra: str) -> subprocess.Popen[bytes]:
        command = [*base, *extra, "--pki", str(site_pki), "--ingest", "log"]
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def main() -> dict[int, int]:
        settings = [
            panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port, buffer_bytes=4 << 20, batch_records=500)
            for i in range(33, 39)
        ]
        fleet = Fleet(settings, seed=11, journal=True)
        for panel in fleet.panels.values():
            for i in range(20_000):
                panel.swipe(i % 5000, i % 4)
        total = fleet.statistics().emitted
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            node = start("--site", str(site))
            try:
                with trio.fail_after(60):
                    while fleet.statistics().acked < total // 3:
                        await trio.sleep(0.005)
                logged = _backlog(db)
                os.kill(node.pid, signal.SIGKILL)
                node.wait(timeout=10)
                acked_at_kill = {pid: pn.statistics().acked_seq for pid, pn in fleet.panels.items()}
                assert logged.events > 0, "the log was empty at the kill: the test proves nothing"
                node = start()  # no quiet spell asked: finishes the log as soon as it starts
                with trio.fail_after(60):
                    await fleet.wait_drained()
                    while _backlog(db).events:
                        await trio.sleep(0.05)
            finally:
                node.kill()
                node.wait(timeout=10)
            nursery.cancel_scope.cancel()
        check_store_matches_journals(db, fleet)
        return acked_at_kill

    acked_at_kill = trio.run(main)
    store = EventStore(db)
    assert all(store.hwm(pid) >= acked for pid, acked in acked_at_kill.items())
    assert store.epoch == 2 and store.log_backlog() == LogBacklog()
    store.close()
