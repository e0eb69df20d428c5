"""Flash-backed buffers across power-cycles, and config versions/deltas/snapshots."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from storage import ConfigChange, ConfigState, FlashBackedBuffer, NeedSnapshot, PanelConfig, open_config_store
from tests.store_engines import StoreEngine

from .strategies import config_ops

ROOT = Path(__file__).parent.parent


def test_flash_keeps_synced_records_and_hides_unsynced_ones(tmp_path: Path) -> None:
    path = tmp_path / "panel.flash"
    buf = FlashBackedBuffer(path, 16 * p.RECORD_SIZE)
    for t in range(10):
        buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
    assert buf.read(1, 100) == b""  # nothing synced: nothing may leave the panel
    buf.sync()
    for t in range(10, 13):
        buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
    assert p.check_records(1, buf.read(1, 100)) == 10
    buf.release(4)
    buf.close()  # power-cut: the last three were never synced

    again = FlashBackedBuffer(path, 16 * p.RECORD_SIZE)
    assert again.boots == 2
    body = again.read(0, 100)
    assert p.check_records(1, body) == 10  # release after the sync is not durable either
    assert again.next_seq == 11


def test_appends_during_a_sync_are_not_marked_synced(tmp_path: Path) -> None:
    # The emulator takes the plan on its event loop and writes it in a thread while
    # swipes keep coming: those must wait for the next sync (found by the e2e test).
    path = tmp_path / "panel.flash"
    buf = FlashBackedBuffer(path, 64 * p.RECORD_SIZE)
    for t in range(5):
        buf.append(t, p.EventKind.TAMPER)
    plan = buf.sync_plan()
    for t in range(5, 9):
        buf.append(t, p.EventKind.TAMPER)  # arrives while the plan is being written
    buf.write_sync(plan)
    assert buf.synced_seq == 5
    buf.close()
    again = FlashBackedBuffer(path, 64 * p.RECORD_SIZE)
    body = again.records()
    assert p.check_records(1, body) == 5
    assert again.next_seq == 6


def test_a_marker_over_synced_records_reloads_contiguous(tmp_path: Path) -> None:
    path = tmp_path / "panel.flash"
    buf = FlashBackedBuffer(path, 4 * p.RECORD_SIZE)
    for t in range(4):
        buf.append(t, p.EventKind.TAMPER)
    buf.sync()  # seqs 1..4 on flash
    for t in range(4, 7):
        buf.append(t, p.EventKind.TAMPER)  # drop_oldest folds 1..4 into a marker
    buf.sync()
    buf.close()
    again = FlashBackedBuffer(path, 4 * p.RECORD_SIZE)
    body = again.records()
    assert p.check_records(int.from_bytes(body[:8], "big"), body) == 7
    assert again.statistics().depth == 4


@pytest.mark.slow
def test_sigkill_keeps_every_event_before_the_last_sync_point(tmp_path: Path) -> None:
    path = tmp_path / "panel.flash"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _round in range(5):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.flash_child", str(path), str(rng.randint(1, 300))],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        synced = acked = 0
        try:
            for _ in range(rng.randint(1, 30)):
                synced, acked = map(int, child.stdout.readline().split())
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            child.stdout.close()
        buf = FlashBackedBuffer(path, 4096 * p.RECORD_SIZE)
        stats = buf.statistics()
        body = buf.records()
        assert stats.next_seq > synced
        if stats.depth:
            first = int.from_bytes(body[:8], "big")
            assert first <= acked + 1 or stats.dropped
            assert p.check_records(first, body) >= synced
        assert stats.emitted == stats.acked + stats.buffered + stats.dropped
        buf.close()


# -- config -------------------------------------------------------------------------


@given(st.lists(st.lists(config_ops, min_size=1, max_size=5), min_size=1, max_size=12), st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_snapshot_plus_delta_equals_latest(engine: StoreEngine, history, data) -> None:  # type: ignore[no-untyped-def]
    # The engine fixture only hands out a fresh, empty store per example.
    store = open_config_store(engine.fresh_target())
    try:
        states = [ConfigState()]
        for ops in history:
            version = store.change(ops)
            states.append(states[-1].apply(ops))
            assert version == len(states) - 1
        latest_version, latest = store.snapshot()
        assert latest == states[-1]
        v = data.draw(st.integers(0, latest_version))
        change = store.delta(v)
        assert isinstance(change, ConfigChange)
        panel = PanelConfig()
        panel.apply_snapshot(v, states[v].snapshot_ops())
        if change.ops:
            panel.apply_delta(change.from_version, change.to_version, change.ops)
        assert panel.state == latest
        assert panel.version == latest_version or not change.ops
        # Compaction past v forces a snapshot.
        if v + 1 < latest_version:
            store.compact(v + 2)
            assert isinstance(store.delta(v), NeedSnapshot)
            assert isinstance(store.delta(v + 1), ConfigChange)
    finally:
        store.close()


def test_a_panel_ahead_of_the_server_needs_a_snapshot(engine: StoreEngine) -> None:
    store = open_config_store(engine.target)
    store.change([p.PutDoor(door=p.Door(door=1))])
    need = store.delta(7)
    assert isinstance(need, NeedSnapshot) and "claims version 7" in need.reason
    store.close()


def test_panel_apply_is_atomic() -> None:
    panel = PanelConfig()
    panel.apply_snapshot(3, [p.PutDoor(door=p.Door(door=1, mode=p.DoorMode.LOCKED))])
    before = panel.state
    with pytest.raises(ValueError, match="does not apply to version 3"):
        panel.apply_delta(2, 4, [p.DeleteCardholder(card=1)])
    with pytest.raises(TypeError):
        panel.apply_delta(3, 4, [p.PutDoor(door=p.Door(door=2)), "garbage"])  # type: ignore[list-item]
    assert panel.state is before and panel.version == 3


def test_config_survives_reopen_and_big_cards(engine: StoreEngine) -> None:
    store = open_config_store(engine.target)
    big = p.Cardholder(card=2**64 - 1, levels=(1,), pin=1234)
    store.change([p.PutCardholder(cardholder=big)])
    store.change([p.DeleteCardholder(card=2**64 - 1), p.PutCardholder(cardholder=p.Cardholder(card=5, levels=()))])
    store.close()
    again = open_config_store(engine.target)
    assert again.version == 2
    assert set(again.state().cardholders) == {5}
    assert again.current() == (2, again.digest_at(2)) and again.digest_at(1) != again.digest_at(2)
    again.close()


def test_a_power_cut_during_a_threaded_sync_is_safe(tmp_path: Path) -> None:
    """Found by `fieldsync scenario fuzz --fast --seed 3`: a power-cycle closed the flash
    while its sync was being written in a worker thread, and the interpreter crashed."""
    import threading

    from storage import FlashBackedBuffer, StoreError

    outcomes: list[str] = []
    for round_ in range(30):
        buffer = FlashBackedBuffer(tmp_path / f"flash-{round_}.db", 1 << 20)
        for i in range(3000):
            buffer.append(1_764_000_000_000_000 + i, p.EventKind.ACCESS_GRANTED, card=i)
        plan = buffer.sync_plan()

        def write(buffer: FlashBackedBuffer = buffer, plan: object = plan) -> None:
            try:
                buffer.write_sync(plan)  # type: ignore[arg-type]
                outcomes.append("written")
            except StoreError as exc:
                assert "closed" in str(exc)
                outcomes.append("refused")

        writer = threading.Thread(target=write)
        writer.start()
        buffer.close()  # the power goes now
        writer.join()
    assert len(outcomes) == 30
