"""An operator's resync of one panel (`fieldsync config resync`, the console's button): its
node sends it its whole configuration again, now or at its next session."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

import protocol as p
from emulator import Fleet, LinkMode
from fieldsync.engine import Node
from storage import ConfigStore
from tests.test_e2e import clock, node_settings, panel_settings


def applied(fleet: Fleet, pid: int) -> int:
    """How many configuration pushes the panel applied (its CONFIG_APPLIED records)."""
    journal = fleet.panels[pid].journal
    assert journal is not None
    return sum(1 for e in journal if e.kind == p.EventKind.CONFIG_APPLIED)


def test_a_resync_sends_a_connected_panel_a_snapshot_and_a_later_one_at_its_session(
    site_pki: Path, tmp_path: Path
) -> None:
    port = 31350
    db = tmp_path / "site.db"
    config = ConfigStore(db)
    config.change([p.PutDoor(door=p.Door(door=1, mode=p.DoorMode.LOCKED))])

    async def main() -> None:
        fleet = Fleet([panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port) for i in (21, 22)], seed=4, journal=True)
        node = Node(node_settings(site_pki, db, port, config_poll=0.2))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(fleet.run)
            with trio.fail_after(30):
                await fleet.wait_connected()
                while applied(fleet, 21) < 1 or applied(fleet, 22) < 1:  # the first sync
                    await trio.sleep(0.05)
            before = {pid: applied(fleet, pid) for pid in (21, 22)}
            # Through the CLI, as an operator does it.
            command = [sys.executable, "-m", "fieldsync.cli", "config", "resync", "--db", str(db), "--panel", "21"]
            done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
            assert done.returncode == 0, done.stderr
            assert b"resync of panel 21 requested" in done.stdout
            with trio.fail_after(30):
                while config.resyncs_pending():
                    await trio.sleep(0.05)
            assert applied(fleet, 21) == before[21] + 1  # one snapshot more, the same version
            assert applied(fleet, 22) == before[22]  # the other panel was left alone
            # A panel that is not connected gets it at its next session.
            fleet.panels[22].power_cycle()
            config.request_resync(99)  # no such panel here: it stays pending, harmless
            config.request_resync(22)
            with trio.fail_after(30):
                while 22 in config.resyncs_pending():
                    await trio.sleep(0.05)
            assert config.resyncs_pending() == {99: config.resyncs_pending()[99]}
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=clock())
    finally:
        config.close()
