"""EventStore: exactly once, in order, declared gaps, fencing, crashes, bad files."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import protocol as p
from storage import (
    ClusterStore,
    EventStore,
    IngestBatch,
    SchemaTooNew,
    StaleEpoch,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    write_gate,
)

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
def store(tmp_path: Path) -> EventStore:
    s = EventStore(tmp_path / "events.db")
    s.advance_epoch()
    return s


def test_reingest_is_idempotent(store: EventStore) -> None:
    first = store.ingest([batch(1, 1, 100)], 1)
    again = store.ingest([batch(1, 1, 100), batch(1, 50, 120)], 1)
    assert first.hwms == {1: 100}
    assert again.outcomes[0].duplicates == 100 and again.outcomes[0].stored == 0
    assert again.outcomes[1].duplicates == 51 and again.outcomes[1].stored == 20
    assert store.seqs(1) == list(range(1, 121))


def test_a_snapshot_reads_one_instant_while_another_writer_commits(store: EventStore, tmp_path: Path) -> None:
    """The checker's reads (rows, then losses, then the hwm) must agree with each other even
    while a node commits: without one read transaction, a seq committed between the reads
    counts in the hwm but not among the rows (an undeclared gap that is not there)."""
    store.ingest([batch(1, 1, 10)], 1)
    writer = EventStore(tmp_path / "events.db")
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


def test_a_gap_is_refused_naming_the_expected_seq(store: EventStore) -> None:
    store.ingest([batch(1, 1, 10)], 1)
    result = store.ingest([batch(1, 15, 20), batch(2, 1, 3)], 1)
    refused, other = result.outcomes
    assert refused.error is not None and "expected seq 11" in refused.error
    assert refused.expected_seq == 11 and refused.hwm == 10
    assert other.error is None and other.stored == 3  # one bad panel does not stall another
    assert store.hwm(1) == 10 and store.count_events(1) == 10


def test_a_declared_gap_becomes_a_loss_and_moves_the_hwm(store: EventStore) -> None:
    store.ingest([batch(1, 1, 10)], 1)
    result = store.ingest([batch(1, 11, 60, gap_to=40)], 1)
    assert result.outcomes[0].declared_lost == 30
    assert store.hwm(1) == 60
    (loss,) = store.losses(1)
    assert (loss.first_seq, loss.last_seq, loss.count, loss.kind) == (11, 40, 30, p.EventKind.BUFFER_OVERFLOW)
    assert store.seqs(1) == list(range(1, 11)) + list(range(41, 61))


def test_a_marker_overlapping_stored_events_is_clipped(store: EventStore) -> None:
    # The panel dropped 1..30 after sending 1..20, which the store already has.
    store.ingest([batch(1, 1, 20)], 1)
    store.ingest([batch(1, 1, 35, gap_to=30)], 1)
    (loss,) = store.losses(1)
    assert (loss.first_seq, loss.last_seq, loss.count) == (21, 30, 10)
    stored = len(store.seqs(1))
    assert stored + loss.count == 35  # every seq is stored or declared lost, once


def test_many_panels_in_one_transaction(store: EventStore) -> None:
    result = store.ingest([batch(panel, 1, 50 + panel) for panel in range(1, 101)], 1)
    assert result.stored == sum(50 + panel for panel in range(1, 101))
    assert store.hwms() == {panel: 50 + panel for panel in range(1, 101)}


def test_a_stale_epoch_writes_nothing(store: EventStore, tmp_path: Path) -> None:
    other = EventStore(tmp_path / "events.db")  # a second node on the shared file
    assert other.advance_epoch(expected=1) == 2
    with pytest.raises(StaleEpoch, match="epoch 1 refused: the store's epoch is 2"):
        store.ingest([batch(1, 1, 10)], 1)
    assert store.count_events() == 0
    with pytest.raises(StaleEpoch):
        store.advance_epoch(expected=1)  # the compare-and-set loses too
    other.ingest([batch(1, 1, 10)], 2)
    assert store.events(1)[0].epoch == 2


def test_queries_give_back_u64_fields_and_time_ranges(store: EventStore) -> None:
    rec = p.EventRecord(seq=1, time_us=50, kind=p.EventKind.DOOR_FORCED, door=3, card=2**64 - 1, flags=p.EventFlags(3))
    body = rec.pack() + p.EventRecord(seq=2, time_us=10, kind=p.EventKind.TAMPER).pack()
    store.ingest([IngestBatch(panel_id=9, first_seq=1, last_seq=2, records=body, received_us=123)], 1)
    got = store.events(9)
    assert got[0].record == rec and got[0].received_us == 123
    assert [e.record.seq for e in store.events(9, until_us=11)] == [2]
    assert [e.record.seq for e in store.events(9, since_us=11)] == [1]


def test_a_time_beyond_2_63_is_stored_bit_for_bit_and_never_blocks_the_queue(store: EventStore) -> None:
    # docs/protocol.md 7.1: version 1 refused this batch on every try, so the panel's queue stuck.
    wild = p.EventRecord(seq=1, time_us=2**64 - 1, kind=p.EventKind.TAMPER)
    after = p.EventRecord(seq=2, time_us=2**63, kind=p.EventKind.DOOR_HELD)
    body = wild.pack() + after.pack()
    result = store.ingest([IngestBatch(panel_id=9, first_seq=1, last_seq=2, records=body, received_us=77)], 1)
    assert result.outcomes[0].error is None and result.outcomes[0].stored == 2
    assert store.hwm(9) == 2
    assert [(e.record, e.received_us) for e in store.events(9)] == [(wild, 77), (after, 77)]


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_committed(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    EventStore(db).advance_epoch()
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
        store = EventStore(db)
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


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    EventStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaTooNew, match="newer than this fieldsync's"):
        EventStore(path)


def test_a_full_disk_acknowledges_nothing(store: EventStore) -> None:
    store.ingest([batch(1, 1, 10)], 1)
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the size limit SQLite enforces
    with pytest.raises(StoreFull, match="disk or size limit full"):
        store.ingest([batch(1, 11, 20_000)], 1)
    assert store.hwm(1) == 10 and store.count_events() == 10
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.ingest([batch(1, 11, 20)], 1).hwms == {1: 20}  # the in-memory hwm was not advanced


def test_a_lock_held_elsewhere_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = EventStore(path, busy_timeout=0.05)
    store.advance_epoch()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreLocked, match=r"locked\.db"):
            store.ingest([batch(1, 1, 5)], 1)
    finally:
        holder.execute("ROLLBACK")
    assert store.ingest([batch(1, 1, 5)], 1).hwms == {1: 5}


def test_lease_renewals_go_before_back_to_back_group_commits(tmp_path: Path) -> None:
    # A replay's writer commits back to back on its own connection while the heart thread
    # of the same process renews the lease on another. SQLite alone gives the lock to
    # whoever asks the instant it is free, and its busy handler sleeps between asks: the
    # renewals can miss gap after gap between commits (without the write gate, one or two
    # of these forty waited out the half-second busy timeout, in each of four runs) and a
    # one-second lease can lapse on a healthy node.
    db = tmp_path / "site.db"
    store = EventStore(db)
    cluster = ClusterStore(db, busy_timeout=0.5)
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
