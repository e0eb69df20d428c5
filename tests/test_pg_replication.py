"""PostgreSQL with a synchronous standby: an ack means the commit is on both nodes.

Each test gets a fresh primary and a ``pg_basebackup`` standby listed in the
primary's ``synchronous_standby_names`` (``synchronous_commit = on``: the standby has
flushed the commit to its disk, which is what a failover needs; ``remote_apply``
would also wait for it to be replayed, for reads on the standby that nothing here
makes). Each test stays well under 30 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from storage import StaleEpoch, StoreNotReplicated, open_event_store
from tests.store_engines import ensure_postgres
from tests.test_store import batch

pytestmark = pytest.mark.slow


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    missing = ensure_postgres()
    if missing is not None:
        pytest.skip(missing)
    from storage.postgres import running_pair

    with running_pair() as nodes:
        yield nodes


def _sql(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def bounded() -> Iterator[None]:
    start = time.monotonic()
    yield
    assert time.monotonic() - start < 30


def test_every_acknowledged_row_is_on_the_standby_when_the_primary_dies(pair, bounded) -> None:  # type: ignore[no-untyped-def]
    primary, standby = pair
    store = open_event_store(primary.url(), commit_timeout=5)
    epoch = store.advance_epoch()
    acked = 0
    for first in range(1, 2001, 200):
        acked = store.ingest([batch(1, first, first + 199), batch(2, first, first + 199)], epoch).hwms[1]
    store.close()
    primary.stop(mode="immediate")  # a crash: whatever was only in its memory is gone
    standby.promote()
    _sql(standby.url(), "ALTER SYSTEM SET synchronous_standby_names = ''")
    _sql(standby.url(), "SELECT pg_reload_conf()")
    promoted = open_event_store(standby.url())
    assert promoted.hwms() == {1: acked, 2: acked}
    assert promoted.seqs(1) == list(range(1, acked + 1)) and promoted.count_events() == 2 * acked
    assert promoted.integrity_check() == "ok"
    promoted.close()


def test_with_the_standby_gone_a_commit_is_refused_after_the_timeout_and_never_acked(pair, bounded) -> None:  # type: ignore[no-untyped-def]
    primary, standby = pair
    store = open_event_store(primary.url(), commit_timeout=1.0)
    epoch = store.advance_epoch()
    assert store.ingest([batch(1, 1, 10)], epoch).hwms == {1: 10}
    standby.stop(mode="immediate")
    started = time.monotonic()
    with pytest.raises(StoreNotReplicated, match=r"did not confirm the commit after 1 s; not acknowledged") as info:
        store.ingest([batch(1, 11, 20)], epoch)
    waited = time.monotonic() - started
    assert 1.0 <= waited < 5.0
    assert str(primary.port) in str(info.value) and "synchronous replication" in str(info.value)
    # The primary alone holds 11..20: the panel, never acked, sends them again and the
    # store counts them as duplicates (the resend's commit is refused in turn until a standby is back).
    assert store.hwm(1) == 20
    with pytest.raises(StoreNotReplicated):
        store.ingest([batch(1, 11, 25)], epoch)
    standby.start()
    primary.wait_sync_standby("fieldsync_standby")
    again = store.ingest([batch(1, 11, 30)], epoch)
    assert again.outcomes[0].duplicates == 15 and again.outcomes[0].stored == 5 and again.hwms == {1: 30}
    store.close()


def test_a_cancel_from_anywhere_during_the_wait_is_a_failure_not_an_ack(pair, bounded) -> None:  # type: ignore[no-untyped-def]
    """pg_cancel_backend makes COMMIT return success with only a WARNING: that must not ack."""
    primary, standby = pair
    store = open_event_store(primary.url(), commit_timeout=30)
    epoch = store.advance_epoch()
    standby.stop(mode="immediate")

    def cancel_the_waiting_commit() -> None:
        with psycopg.connect(primary.url(), autocommit=True) as admin:
            for _ in range(200):
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'fieldsync' AND wait_event = 'SyncRep'"
                ).fetchone()
                if row is not None:
                    admin.execute("SELECT pg_cancel_backend(%s)", (row[0],))
                    return
                time.sleep(0.02)

    canceller = threading.Thread(target=cancel_the_waiting_commit)
    canceller.start()
    try:
        with pytest.raises(StoreNotReplicated, match="canceling wait for synchronous replication") as info:
            store.ingest([batch(1, 1, 10)], epoch)
    finally:
        canceller.join()
    assert "after" not in info.value.cause.split(";")[0]  # cancelled by someone else, before our timeout
    store.close()


def test_after_promotion_the_new_primary_fences_the_old_one(pair, bounded) -> None:  # type: ignore[no-untyped-def]
    primary, standby = pair
    old = open_event_store(primary.url(), commit_timeout=1.0)
    epoch = old.advance_epoch()
    acked = old.ingest([batch(1, 1, 100)], epoch).hwms[1]

    promote_started = time.monotonic()
    standby.promote()
    # The new primary inherits synchronous_standby_names: its first write waits for a
    # standby it does not have, and is refused, until the setting is cleared.
    new = open_event_store(standby.url(), commit_timeout=0.5)
    with pytest.raises(StoreNotReplicated):
        new.advance_epoch(expected=epoch)
    _sql(standby.url(), "ALTER SYSTEM SET synchronous_standby_names = ''")
    _sql(standby.url(), "SELECT pg_reload_conf()")
    time.sleep(0.1)  # the reload reaches the backends at their next command
    # The refused advance committed locally (the epoch is 2 already): take it from there.
    new_epoch = new.advance_epoch()
    assert new_epoch > epoch
    assert new.ingest([batch(1, acked + 1, acked + 50)], new_epoch).hwms == {1: acked + 50}
    took = time.monotonic() - promote_started

    # The old primary's late commit: its standby is gone, so it is never acknowledged...
    with pytest.raises(StoreNotReplicated):
        old.ingest([batch(1, acked + 1, acked + 20)], epoch)
    # ...and a write under the old epoch reaching the new primary is refused by the fence.
    with pytest.raises(StaleEpoch, match=f"epoch {epoch} refused"):
        new.ingest([batch(2, 1, 5)], epoch)
    assert new.seqs(1) == list(range(1, acked + 51)) and new.hwms() == {1: acked + 50}
    assert new.stale_writes() == 0
    assert took < 10
    old.close()
    new.close()


def test_a_node_serves_on_postgresql_and_every_promise_holds(postgres_server, site_pki: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`fieldsync serve --db postgresql://...` as a user runs it (a real process, mutual TLS):
    panels punch out, swipe, lose their session to a kill -9 of the node and come back to a
    new one; the checker, reading the same database, finds every promise held."""
    import signal
    import subprocess
    import sys

    import psycopg
    import trio

    from emulator import Fleet, LinkMode, PanelSettings
    from fieldsync.harness import check
    from fieldsync.site import pki

    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE served_node")
    url = postgres_server.url("served_node")
    port, vip = 31990, "127.0.0.100"
    command = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", url, "--listen", f"{vip}:{port}"]
    command += ["--pki", str(site_pki)]

    def start() -> subprocess.Popen[str]:
        node = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert node.stdout is not None
        line = node.stdout.readline()
        assert "listening on" in line and "served_node" in line, line + (node.stderr.read() if node.stderr else "")
        return node

    settings = [
        PanelSettings(
            panel_id=pid, mode=LinkMode.PUNCH_OUT, server=(vip, port), tls=pki.tls_files(site_pki, "panel", pid)
        )
        for pid in (1, 2, 3)
    ]
    fleet = Fleet(settings, seed=3, journal=True)
    nodes = [start()]
    try:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(fleet.run)
                for round_ in range(2):
                    for panel in fleet.panels.values():
                        for i in range(300):
                            panel.swipe(1000 + i, i % 4)
                    with trio.fail_after(60):
                        await fleet.wait_drained()
                    if round_ == 0:
                        nodes[0].send_signal(signal.SIGKILL)  # its acks were durable in PostgreSQL
                        nodes[0].communicate()
                        nodes.append(await trio.to_thread.run_sync(start))
                nursery.cancel_scope.cancel()

        trio.run(main)
        report = check(url, list(fleet.panels.values()))
        assert report.ok, report.promises()
        assert report.store_epoch == 2 and report.totals()["stored"] >= 1800
    finally:
        for node in nodes:
            if node.poll() is None:
                node.terminate()
                node.communicate(timeout=10)
