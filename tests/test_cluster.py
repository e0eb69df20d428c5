"""The active/standby pair as real processes: kill -9, SIGSTOP, repeated kills, switchover."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio

from emulator import Fleet
from fieldsync.engine import Supervised, Supervisor, node_command
from fieldsync.harness._clusters import _write_locked as write_locked
from fieldsync.site import load_site, write_pair_site
from storage import ClusterStore, EventStore

from .test_e2e import check_store_matches_journals

pytestmark = pytest.mark.slow


def write_site(tmp_path: Path, site_pki: Path, port: int, panels: int, mode: str = "mixed") -> Path:
    return write_pair_site(
        tmp_path / "site.toml", pki_dir=site_pki, port=port, panels=panels, mode=mode, buffer="2MiB", batch=512
    )


class Harness:
    def __init__(
        self, site_path: Path, *, restart: bool = True, extra: tuple[str, ...] = (), log_fd: int | None = None
    ) -> None:
        self.site_path = site_path
        self.site = load_site(site_path)
        self.children = [
            Supervised(name=n, command=node_command(n, str(site_path), *extra), restart=restart, restart_delay=0.3)
            for n in ("A", "B")
        ]
        self.supervisor = Supervisor(self.children, stdout=log_fd)
        self.fleet = Fleet([self.site.panel_settings(pid) for pid in self.site.panel_ids()], seed=7, journal=True)

    def lease(self):  # type: ignore[no-untyped-def]
        store = ClusterStore(self.site.db)
        try:
            return store.lease()
        finally:
            store.close()

    async def wait_active(
        self, *, other_than: str | None = None, epoch_above: int = 0, limit: float = 20
    ) -> tuple[str, int, int]:
        with trio.fail_after(limit):
            while True:
                lease = await trio.to_thread.run_sync(self.lease)
                if lease.holder not in (None, other_than) and lease.epoch > epoch_above and lease.holder_pid:
                    return lease.holder, lease.holder_pid, lease.epoch
                await trio.sleep(0.05)

    async def start(self, nursery: trio.Nursery, *, backlog: int, acked: float = 0.2) -> tuple[str, int, int]:
        """Queue a backlog, start both nodes and the fleet, and wait until replay is under way."""
        self.backlog(backlog)
        await nursery.start(self.supervisor.run)
        active = await self.wait_active()
        await nursery.start(self.fleet.run)
        await self.wait_acked(acked)
        return active

    def backlog(self, per_panel: int) -> None:
        for panel in self.fleet.panels.values():
            for i in range(per_panel):
                panel.swipe(i % 1000, i % 4)

    async def wait_acked(self, fraction: float) -> None:
        total = self.fleet.statistics().emitted
        with trio.fail_after(30):
            while self.fleet.statistics().acked < total * fraction:
                await trio.sleep(0.01)

    async def drain(self, limit: float = 40) -> None:
        with trio.fail_after(limit):
            await self.fleet.wait_drained()

    def check(self) -> None:
        check_store_matches_journals(self.site.db, self.fleet)
        store = EventStore(self.site.db)
        assert store.integrity_check() == "ok"
        store.close()


def test_kill_9_of_the_active_during_replay(site_pki: Path, tmp_path: Path) -> None:
    h = Harness(write_site(tmp_path, site_pki, 31200, panels=8), restart=False)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first, pid, epoch = await h.start(nursery, backlog=3000)
            os.kill(pid, signal.SIGKILL)
            second, _, new_epoch = await h.wait_active(other_than=first, epoch_above=epoch)
            assert second != first and new_epoch == epoch + 1
            await h.drain()
            assert all(pn.max_epoch == new_epoch for pn in h.fleet.panels.values())
            nursery.cancel_scope.cancel()
        h.check()

    trio.run(main)


def test_an_exited_holder_is_dead_without_waiting_for_its_silence(site_pki: Path, tmp_path: Path) -> None:
    """kill -9 with a silence limit and a lease far longer than the test may wait: the
    standby can only take over because it sees the holder's process gone."""
    slow = ("--dead-after", "60", "--lease", "120")
    h = Harness(write_site(tmp_path, site_pki, 31250, panels=4), restart=False, extra=slow)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first, pid, epoch = await h.start(nursery, backlog=1000)
            lease = await trio.to_thread.run_sync(h.lease)
            assert lease.lease_until_us - time.time_ns() // 1000 > 30e6  # the lease alone would hold it for long
            os.kill(pid, signal.SIGKILL)
            second, _, new_epoch = await h.wait_active(other_than=first, epoch_above=epoch, limit=20)
            assert second != first and new_epoch == epoch + 1
            await h.drain()
            nursery.cancel_scope.cancel()
        h.check()

    trio.run(main)


def test_sigstop_with_stonith_the_standby_kills_and_takes_over(site_pki: Path, tmp_path: Path) -> None:
    h = Harness(write_site(tmp_path, site_pki, 31210, panels=6), restart=False)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first, pid, epoch = await h.start(nursery, backlog=2000)
            os.kill(pid, signal.SIGSTOP)  # a hang: it still holds VIP:port
            await h.wait_active(other_than=first, epoch_above=epoch)
            with trio.fail_after(5):
                while not _gone(pid):  # STONITH killed it
                    await trio.sleep(0.05)
            await h.drain()
            nursery.cancel_scope.cancel()
        h.check()

    trio.run(main)


def test_sigstop_without_stonith_the_woken_node_is_fenced(site_pki: Path, tmp_path: Path) -> None:
    h = Harness(write_site(tmp_path, site_pki, 31220, panels=6), restart=False, extra=("--no-stonith",))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first, pid, epoch = await h.start(nursery, backlog=2000)
            # Shared SQLite: a node paused inside a transaction holds the file's write
            # lock, and without STONITH nobody can take over until it wakes. This test
            # is about the zombie that wakes up after a takeover, so pause it until the
            # pause lands outside a transaction.
            for _attempt in range(20):
                os.kill(pid, signal.SIGSTOP)
                stopped_at_store = await trio.to_thread.run_sync(lambda: EventStore(h.site.db).count_events())
                try:
                    _, _, new_epoch = await h.wait_active(other_than=first, epoch_above=epoch, limit=4)
                    break
                except trio.TooSlowError:
                    os.kill(pid, signal.SIGCONT)
                    await trio.sleep(0.2 + _attempt * 0.07)
                    # Its lease ran out while it slept: the other node may have taken over as
                    # soon as the lock was free. Pause whoever holds the VIP now, never a standby
                    # (a standby paused inside its heartbeat write blocks the active's renewals).
                    first, pid, epoch = await h.wait_active()
            else:
                pytest.fail("every pause landed inside a transaction")
            await trio.sleep(2)  # host-initiated panels now talk to the new node; the old one sleeps
            os.kill(pid, signal.SIGCONT)
            # The woken node finds its lease gone and steps down; every panel ends up
            # with the new node (an idle panel may not have noticed the pause at all).
            with trio.fail_after(30):
                while not all(pn.is_connected and pn.max_epoch == new_epoch for pn in h.fleet.panels.values()):
                    await trio.sleep(0.05)
            await h.drain(60)
            assert not _gone(pid)  # nobody killed it: it stepped down by itself
            nursery.cancel_scope.cancel()
        h.check()
        store = EventStore(h.site.db)
        old = store._conn.execute("SELECT count(*) FROM events WHERE epoch = ?", (epoch,)).fetchone()[0]
        assert old <= stopped_at_store  # nothing the old node tried after waking was stored
        for panel in h.fleet.panels.values():
            assert panel.max_epoch == new_epoch
        store.close()

    trio.run(main)


def test_the_shared_disk_limit_a_paused_writer_without_stonith_keeps_the_vip(site_pki: Path, tmp_path: Path) -> None:
    """The limit docs/architecture.md states, asserted: on a shared disk with STONITH off, an
    active paused inside a write transaction holds the store's lock, so nobody can take over
    for as long as it sleeps; the standby says why; after the wake one node serves (the woken one
    with its epoch, or the standby, whose takeover was waiting for the lock), and nothing is lost
    or stored twice."""
    log_path = tmp_path / "nodes.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    h = Harness(write_site(tmp_path, site_pki, 31260, panels=6), restart=False, extra=("--no-stonith",), log_fd=log_fd)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first, pid, epoch = await h.start(nursery, backlog=4000, acked=0.05)
            # The precondition is observed, not hoped for: pause, and keep the pause only if
            # the paused process holds the write lock (the standby's own short writes free it
            # within milliseconds; a lock still held 0.3 s later is the sleeper's).
            for attempt in range(200):
                os.kill(pid, signal.SIGSTOP)
                if write_locked(h.site.db):
                    await trio.sleep(0.3)
                    if write_locked(h.site.db):
                        break
                os.kill(pid, signal.SIGCONT)
                await trio.sleep(0.002 * (attempt % 7))
            else:
                pytest.fail("no pause of the active landed inside a write transaction in 200 tries")
            paused_at = time.monotonic()
            await trio.sleep(4)  # four lease lengths
            lease = await trio.to_thread.run_sync(h.lease)
            os.kill(pid, signal.SIGCONT)
            assert (lease.holder, lease.epoch) == (first, epoch), "someone took over from a writer holding the lock"
            assert time.monotonic() - paused_at >= 4
            await h.drain(60)
            # At the wake the lock is free again, and the race is open: the woken node renews and
            # carries on, or the standby's waiting takeover gets in first (its lease had run out) and
            # the woken node is fenced. Either way one node serves and nothing is lost (h.check()).
            lease = await trio.to_thread.run_sync(h.lease)
            assert (lease.holder, lease.epoch, lease.holder_pid) == (first, epoch, pid) or lease.epoch == epoch + 1
            nursery.cancel_scope.cancel()
        h.check()

    try:
        trio.run(main)
    finally:
        os.close(log_fd)
    assert "STONITH is off: only that process can free it" in log_path.read_text()


def test_five_kills_in_a_row_with_restarts(site_pki: Path, tmp_path: Path) -> None:
    h = Harness(write_site(tmp_path, site_pki, 31230, panels=6), restart=True)

    async def main() -> None:
        h.backlog(4000)
        async with trio.open_nursery() as nursery:
            await nursery.start(h.supervisor.run)
            _, pid, epoch = await h.wait_active()
            await nursery.start(h.fleet.run)
            total = h.fleet.statistics().emitted
            for kill in range(5):
                await h.wait_acked(min(0.9, 0.1 + kill * 0.15))
                os.kill(pid, signal.SIGKILL)
                # Whichever node takes over (the killed one may be back already), with a new epoch.
                _, new_pid, epoch = await h.wait_active(epoch_above=epoch)
                assert new_pid != pid
                pid = new_pid
            await h.drain(60)
            assert h.fleet.statistics().acked >= total
            nursery.cancel_scope.cancel()
        h.check()

    trio.run(main)


def test_switchover_and_back_under_load(site_pki: Path, tmp_path: Path) -> None:
    h = Harness(write_site(tmp_path, site_pki, 31240, panels=6), restart=False)

    async def main() -> None:
        h.backlog(3000)
        async with trio.open_nursery() as nursery:
            await nursery.start(h.supervisor.run)
            first, _, epoch = await h.wait_active()
            other = "B" if first == "A" else "A"
            await nursery.start(h.fleet.run)
            await h.wait_acked(0.2)
            await trio.to_thread.run_sync(lambda: ClusterStore(h.site.db).request_switchover(other))
            holder, _, epoch2 = await h.wait_active(other_than=first, epoch_above=epoch)
            assert holder == other
            await h.wait_acked(0.6)
            await trio.to_thread.run_sync(lambda: ClusterStore(h.site.db).request_switchover(first))
            holder, _, _ = await h.wait_active(other_than=other, epoch_above=epoch2)
            assert holder == first
            await h.drain()
            nursery.cancel_scope.cancel()
        h.check()

    trio.run(main)


def _gone(pid: int) -> bool:
    from fieldsync.engine import process_is_fieldsync

    return not process_is_fieldsync(pid)
