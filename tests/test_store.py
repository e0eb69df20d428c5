"""The event store on each engine: exactly once, in order, declared gaps, fencing, crashes, faults.

Tests that take ``engine`` run on SQLite and on PostgreSQL (tests/store_engines.py);
the rest are about one engine's own parts (SQLite's file, its write gate).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import protocol as p
from storage import (
    ClusterStore,
    EventStore,
    EventStoreInterface,
    IngestBatch,
    SchemaTooNew,
    StaleEpoch,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreUnreachable,
    open_cluster_store,
    open_event_store,
    write_gate,
)
from tests.store_engines import StoreEngine

ROOT = Path(__file__).parent.parent


def batch(panel: int, first: int, last: int, *, gap_to: int | None = None, rx: int = 7) -> IngestBatch:
    records = []
    seq = first
    if gap_to is not None:
        records.append(
            p.EventRecord(seq=first, time_us=1, kind=p.EventKind.BUFFER_OVERFLOW, card=gap_to, aux=gap_to - first + 1)
        )
        seq = gap_to + 1
    records += [p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED, card=s) for s in range(seq, last + 1)]
    body = p.pack_records(records)
    return IngestBatch(
        panel_id=panel, first_seq=first, last_seq=p.check_records(first, body), records=body, received_us=rx
    )


@pytest.fixture
def store(engine: StoreEngine) -> Iterator[EventStoreInterface]:
    s = open_event_store(engine.target)
    s.advance_epoch()
    yield s
    s.close()


def test_reingest_is_idempotent(store: EventStoreInterface) -> None:
    first = store.ingest([batch(1, 1, 100)], 1)
    again = store.ingest([batch(1, 1, 100), batch(1, 50, 120)], 1)
    assert first.hwms == {1: 100}
    assert again.outcomes[0].duplicates == 100 and again.outcomes[0].stored == 0
    assert again.outcomes[1].duplicates == 51 and again.outcomes[1].stored == 20
    assert store.seqs(1) == list(range(1, 121))


def test_a_snapshot_reads_one_instant_while_another_writer_commits(
    store: EventStoreInterface, engine: StoreEngine
) -> None:
    """The checker's reads (rows, then losses, then the hwm) must agree with each other even
    while a node commits: without one read transaction, a seq committed between the reads
    counts in the hwm but not among the rows (an undeclared gap that is not there)."""
    store.ingest([batch(1, 1, 10)], 1)
    writer = open_event_store(engine.target)
    try:
        with store.snapshot():
            rows_before = store.seqs(1)
            writer.ingest([batch(1, 11, 20)], 1)
            assert store.hwm(1) == 10 and store.seqs(1) == rows_before == list(range(1, 11))
        assert store.hwm(1) == 20 and store.seqs(1) == list(range(1, 21))
        # The control: the same reads outside a snapshot see the second commit halfway.
        rows = store.seqs(1)
        writer.ingest([batch(1, 21, 30)], 1)
        assert store.hwm(1) == 30 and rows[-1] == 20
    finally:
        writer.close()


def test_a_gap_is_refused_naming_the_expected_seq(store: EventStoreInterface) -> None:
    store.ingest([batch(1, 1, 10)], 1)
    result = store.ingest([batch(1, 15, 20), batch(2, 1, 3)], 1)
    refused, other = result.outcomes
    assert refused.error is not None and "expected seq 11" in refused.error
    assert refused.expected_seq == 11 and refused.hwm == 10
    assert other.error is None and other.stored == 3  # one bad panel does not stall another
    assert store.hwm(1) == 10 and store.count_events(1) == 10


def test_a_declared_gap_becomes_a_loss_and_moves_the_hwm(store: EventStoreInterface) -> None:
    store.ingest([batch(1, 1, 10)], 1)
    result = store.ingest([batch(1, 11, 60, gap_to=40)], 1)
    assert result.outcomes[0].declared_lost == 30
    assert store.hwm(1) == 60
    (loss,) = store.losses(1)
    assert (loss.first_seq, loss.last_seq, loss.count, loss.kind) == (11, 40, 30, p.EventKind.BUFFER_OVERFLOW)
    assert store.seqs(1) == list(range(1, 11)) + list(range(41, 61))


def test_a_marker_overlapping_stored_events_is_clipped(store: EventStoreInterface) -> None:
    # The panel dropped 1..30 after sending 1..20, which the store already has.
    store.ingest([batch(1, 1, 20)], 1)
    store.ingest([batch(1, 1, 35, gap_to=30)], 1)
    (loss,) = store.losses(1)
    assert (loss.first_seq, loss.last_seq, loss.count) == (21, 30, 10)
    stored = len(store.seqs(1))
    assert stored + loss.count == 35  # every seq is stored or declared lost, once


def test_many_panels_in_one_transaction(store: EventStoreInterface) -> None:
    result = store.ingest([batch(panel, 1, 50 + panel) for panel in range(1, 101)], 1)
    assert result.stored == sum(50 + panel for panel in range(1, 101))
    assert store.hwms() == {panel: 50 + panel for panel in range(1, 101)}


def test_a_stale_epoch_writes_nothing(store: EventStoreInterface, engine: StoreEngine) -> None:
    other = open_event_store(engine.target)  # a second node on the shared store
    assert other.advance_epoch(expected=1) == 2
    with pytest.raises(StaleEpoch, match="epoch 1 refused: the store's epoch is 2"):
        store.ingest([batch(1, 1, 10)], 1)
    assert store.count_events() == 0
    with pytest.raises(StaleEpoch):
        store.advance_epoch(expected=1)  # the compare-and-set loses too
    other.ingest([batch(1, 1, 10)], 2)
    assert store.events(1)[0].epoch == 2
    other.close()


def test_queries_give_back_u64_fields_and_time_ranges(store: EventStoreInterface) -> None:
    rec = p.EventRecord(seq=1, time_us=50, kind=p.EventKind.DOOR_FORCED, door=3, card=2**64 - 1, flags=p.EventFlags(3))
    body = rec.pack() + p.EventRecord(seq=2, time_us=10, kind=p.EventKind.TAMPER).pack()
    store.ingest([IngestBatch(panel_id=9, first_seq=1, last_seq=2, records=body, received_us=123)], 1)
    got = store.events(9)
    assert got[0].record == rec and got[0].received_us == 123
    assert [e.record.seq for e in store.events(9, until_us=11)] == [2]
    assert [e.record.seq for e in store.events(9, since_us=11)] == [1]


def test_a_time_beyond_2_63_is_stored_bit_for_bit_and_never_blocks_the_queue(store: EventStoreInterface) -> None:
    # docs/protocol.md 7.1: version 1 refused this batch on every try, so the panel's queue stuck.
    wild = p.EventRecord(seq=1, time_us=2**64 - 1, kind=p.EventKind.TAMPER)
    after = p.EventRecord(seq=2, time_us=2**63, kind=p.EventKind.DOOR_HELD)
    body = wild.pack() + after.pack()
    result = store.ingest([IngestBatch(panel_id=9, first_seq=1, last_seq=2, records=body, received_us=77)], 1)
    assert result.outcomes[0].error is None and result.outcomes[0].stored == 2
    assert store.hwm(9) == 2
    assert [(e.record, e.received_us) for e in store.events(9)] == [(wild, 77), (after, 77)]


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_committed(engine: StoreEngine) -> None:
    db = engine.target
    first = open_event_store(db)
    first.advance_epoch()
    first.close()
    rng = random.Random(20261125)
    committed: dict[int, int] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_child", str(db), str(round_)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        try:
            for _ in range(rng.randint(1, 12)):
                line = child.stdout.readline()
                assert line, "the child died before it was killed"
                for panel, hwm in json.loads(line).items():
                    committed[int(panel)] = max(committed.get(int(panel), 0), hwm)
            time.sleep(rng.random() * 0.02)  # land the kill mid-transaction some of the time
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            child.stdout.close()
        store = open_event_store(db)
        assert store.integrity_check() == "ok"
        for panel, hwm in committed.items():
            stored_hwm = store.hwm(panel)
            assert stored_hwm >= hwm, f"round {round_}: panel {panel} acked {hwm} but store has {stored_hwm}"
            assert store.seqs(panel) == list(range(1, stored_hwm + 1))
        store.close()


def test_a_corrupt_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 400)
    with pytest.raises(StoreCorrupt, match=r"bad\.db") as info:
        EventStore(bad)
    assert "corrupt or not a SQLite database" in str(info.value)


def test_a_newer_schema_is_refused(engine: StoreEngine) -> None:
    open_event_store(engine.target).close()
    engine.make_schema_newer()
    with pytest.raises(SchemaTooNew, match="newer than this fieldsync's"):
        open_event_store(engine.target)


def test_a_full_disk_acknowledges_nothing(store: EventStoreInterface, engine: StoreEngine) -> None:
    store.ingest([batch(1, 1, 10)], 1)
    with engine.full(store), pytest.raises(StoreFull, match=r"disk or size limit full|disk is full"):
        store.ingest([batch(1, 11, 20_000)], 1)
    assert store.hwm(1) == 10 and store.count_events() == 10
    assert store.ingest([batch(1, 11, 20)], 1).hwms == {1: 20}  # the hwm was not advanced


def test_a_lock_held_elsewhere_is_reported(engine: StoreEngine) -> None:
    store = open_event_store(engine.target, busy_timeout=0.05)
    store.advance_epoch()
    name = "events.db" if engine.name == "sqlite" else str(engine.target).rsplit("/", 1)[-1]
    with engine.hold_write_lock(), pytest.raises(StoreLocked, match=name):
        store.ingest([batch(1, 1, 5)], 1)
    assert store.ingest([batch(1, 1, 5)], 1).hwms == {1: 5}
    store.close()


def test_an_unreachable_database_is_named_with_its_cause() -> None:
    from storage.postgres import free_port

    url = f"postgresql://fieldsync:secret@127.0.0.1:{free_port()}/site"
    with pytest.raises(
        StoreUnreachable,
        match=r"postgresql://fieldsync@127\.0\.0\.1:\d+/site: opening the event store: "
        "cannot reach the database .*refused",
    ) as info:
        open_event_store(url)
    assert "secret" not in str(info.value)


def test_lease_renewals_go_before_back_to_back_group_commits(engine: StoreEngine) -> None:
    # A replay's writer commits back to back on its own connection while the heart thread
    # of the same process renews the lease on another. SQLite alone gives the lock to
    # whoever asks the instant it is free, and its busy handler sleeps between asks: the
    # renewals can miss gap after gap between commits (without the write gate, one or two
    # of these forty waited out the half-second busy timeout, in each of four runs) and a
    # one-second lease can lapse on a healthy node.
    # On PostgreSQL a renewal's UPDATE does not conflict with an ingest's FOR KEY SHARE.
    store = open_event_store(engine.target)
    cluster = open_cluster_store(engine.target, busy_timeout=0.5)
    epoch = cluster.acquire("A", pid=os.getpid(), address="127.0.0.11", now_us=0, lease_us=10**12)
    assert epoch is not None
    stop = threading.Event()
    commits = 0

    groups = [[batch(panel, seq, seq + 199) for panel in range(1, 5)] for seq in range(1, 200 * 400, 200)]

    def replay() -> None:
        nonlocal commits
        for group in groups:
            if stop.is_set():
                return
            store.ingest(group, epoch)
            commits += 1

    writer = threading.Thread(target=replay)
    writer.start()
    refused = []
    try:
        deadline = time.monotonic() + 30  # bounded even if the writer fails
        while commits < 3 and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert commits >= 3, "the replay thread stopped before it got going"
        for n in range(40):
            try:
                assert cluster.renew("A", epoch, now_us=n, lease_us=10**12) is not None
            except StoreLocked as exc:
                refused.append(str(exc))
            time.sleep(0.002)
    finally:
        stop.set()
        writer.join()
    assert refused == []
    assert store.hwm(1) == 200 * commits
    store.close()
    cluster.close()


def test_a_writer_of_the_same_process_that_does_not_finish_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    store = EventStore(db)
    cluster = ClusterStore(db, busy_timeout=0.05)
    holding, release = threading.Event(), threading.Event()

    def long_bulk_write() -> None:
        with write_gate(db).bulk():
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=long_bulk_write)
    writer.start()
    try:
        holding.wait(10)
        with pytest.raises(StoreLocked, match=r"renewing the lease: another writer of this process held the store"):
            cluster.renew("A", 1, now_us=0, lease_us=1)
    finally:
        release.set()
        writer.join()
    assert cluster.acquire("A", pid=os.getpid(), address="127.0.0.11", now_us=0, lease_us=10**6) == 1
    assert store.epoch == 1


def test_errors_name_file_and_cause(tmp_path: Path) -> None:
    err = StoreError(tmp_path / "x.db", "boom")
    assert str(err).endswith("x.db: boom")


def test_the_lease_and_the_epoch_move_together_and_fence_the_old_holder(engine: StoreEngine) -> None:
    cluster = open_cluster_store(engine.target)
    store = open_event_store(engine.target)
    try:
        assert cluster.acquire("A", pid=1, address="127.0.0.11", now_us=0, lease_us=1000) == 1
        assert cluster.acquire("B", pid=2, address="127.0.0.12", now_us=500, lease_us=1000) is None  # held
        assert cluster.renew("A", 1, now_us=900, lease_us=1000) is not None
        store.ingest([batch(1, 1, 5)], 1)
        # A's lease lapsed: B takes it under epoch 2, and A's renewal and writes are refused.
        assert cluster.acquire("B", pid=2, address="127.0.0.12", now_us=2000, lease_us=1000) == 2
        assert cluster.renew("A", 1, now_us=2001, lease_us=1000) is None
        with pytest.raises(StaleEpoch):
            store.ingest([batch(1, 6, 10)], 1)
        assert cluster.request_switchover("A").switchover_to == "A"
        assert cluster.release("B", 2, hand_to="A") and not cluster.release("B", 2)
        assert cluster.acquire("B", pid=2, address="127.0.0.12", now_us=2100, lease_us=1000) is None  # reserved
        assert cluster.acquire("A", pid=1, address="127.0.0.11", now_us=2100, lease_us=1000) == 3
        lease = cluster.lease()
        assert (lease.holder, lease.epoch, lease.switchover_to, lease.held_at(2500)) == ("A", 3, None, True)
        assert {n: b.role for n, b in cluster.nodes().items()} == {"A": "active", "B": "active"}
        assert store.epoch == 3 and store.hwm(1) == 5
    finally:
        cluster.close()
        store.close()


def test_status_and_config_commands_open_either_engine_from_db(engine: StoreEngine) -> None:
    from click.testing import CliRunner

    from fieldsync.cli import main

    store = open_event_store(engine.target)
    store.ingest([batch(3, 1, 7)], store.advance_epoch())
    store.close()
    runner = CliRunner()
    changed = runner.invoke(
        main, ["config", "set-door-mode", "--db", str(engine.target), "--door", "1", "--mode", "locked"]
    )
    assert changed.exit_code == 0, changed.output
    shown = runner.invoke(main, ["status", "--db", str(engine.target), "--json"])
    assert shown.exit_code == 0, shown.output
    got = json.loads(shown.output)
    assert (got["epoch"], got["config_version"]) == (1, 1)
    assert [(r["panel_id"], r["hwm"]) for r in got["panels"]] == [(3, 7)]
    plain = runner.invoke(main, ["status", "--db", str(engine.target)])
    assert plain.exit_code == 0 and "secret" not in plain.output
    assert ("events.db" if engine.name == "sqlite" else "postgresql://postgres@127.0.0.1") in plain.output


def _open_at_once(kind: type, path: Path, start: threading.Barrier, errors: list[BaseException]) -> None:
    start.wait()
    try:
        kind(path).close()
    except BaseException as exc:  # reported by the test, whatever it is
        errors.append(exc)


def test_processes_opening_one_fresh_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Both nodes of a pair and a console open a new site's file together: one migrates it,
    the others wait for its write lock and find it done (it once failed 'table events
    already exists' in the CI's `cluster up --console`)."""
    from storage import ClusterStore, ConfigStore

    for attempt in range(5):
        path = tmp_path / f"fresh-{attempt}.db"
        start = threading.Barrier(6)
        errors: list[BaseException] = []
        kinds = (EventStore, ClusterStore, ConfigStore) * 2
        threads = [threading.Thread(target=_open_at_once, args=(k, path, start, errors)) for k in kinds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == [], errors
        store = EventStore(path)
        try:
            assert store.count_events() == 0 and store.alarms() == []
        finally:
            store.close()
