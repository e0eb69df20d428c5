"""A fleet inside a lab's panel namespace, through a host's power loss: run by tests/test_lab.py.

    ip netns exec fsl-N-panels python tests/lab_panels.py --dir D --out OUT.json

The panels replay a backlog and swipe; once replay is under way the active host loses power
(``Lab.power_off``: what ``fieldsync lab power-off`` does, without an interpreter's start-up
between the fault's time and the fault); the panels reconnect to the VIP on the other host, drain, and the
checker judges the store against their journals. OUT.json holds the verdict and the times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trio

from emulator import Fleet, Workload
from fieldsync.harness import check
from fieldsync.lab import Lab
from fieldsync.site import load_site
from storage import ClusterStore, Lease


def _lease(db: Path) -> Lease:
    store = ClusterStore(db)
    try:
        return store.lease()
    finally:
        store.close()


def _state(directory: Path, host: str) -> str:
    try:
        return (directory / f"vrrp-{host}.state").read_text().strip()
    except OSError:
        return "-"


async def main(args: argparse.Namespace) -> dict[str, object]:
    directory: Path = args.dir
    site = load_site(directory / "site.toml")
    fleet = Fleet(
        [site.panel_settings(p) for p in site.panel_ids()], Workload(rate=args.rate), seed=args.seed, journal=True
    )
    for panel in fleet.panels.values():
        for i in range(args.backlog):
            panel.swipe(1000 + i % 100, i % 4)
    before = await trio.to_thread.run_sync(_lease, site.db)
    old, epoch = before.holder, before.epoch
    assert old is not None, f"nobody holds the lease: {before}"
    other = next(n.name for n in site.nodes if n.name != old)
    vip_at: float | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)

        async def watch() -> None:
            """Every 5 ms: when the other host turned MASTER."""
            nonlocal vip_at
            while vip_at is None:
                if fault_at is not None and _state(directory, other) == "MASTER":
                    vip_at = trio.current_time()
                await trio.sleep(0.005)

        fault_at: float | None = None
        nursery.start_soon(watch)
        with trio.fail_after(30):  # the replay under way: a tenth acknowledged, most still buffered
            while fleet.statistics().acked < fleet.statistics().emitted * 0.1:
                await trio.sleep(0.002)
        lab = Lab.load(directory)
        buffered_at_fault = fleet.statistics().buffered_events
        fault_at = trio.current_time()
        await trio.to_thread.run_sync(lab.power_off, old)  # SIGSTOP of its processes, then its port down
        power_off_took = trio.current_time() - fault_at
        with trio.fail_after(30):
            while True:
                now = await trio.to_thread.run_sync(_lease, site.db)
                if now.epoch > epoch and all(now.epoch in p.first_ack_at for p in fleet.panels.values()):
                    break
                await trio.sleep(0.02)
        fleet.stop_workload()
        with trio.fail_after(30):
            await fleet.wait_drained()
        nursery.cancel_scope.cancel()
    report = check(site.db, fleet.panels.values())
    assert fault_at is not None
    return {
        "ok": report.ok,
        "promises": report.promises(),
        "old_holder": old,
        "old_epoch": epoch,
        "new_holder": now.holder,
        "new_epoch": now.epoch,
        "store_epoch": report.store_epoch,
        "buffered_at_fault": buffered_at_fault,
        "power_off_took_s": power_off_took,
        "max_epochs": {str(p.panel_id): p.max_epoch for p in fleet.panels.values()},
        "modes": {str(pid): p.settings.mode.value for pid, p in fleet.panels.items()},
        "vip_moved_s": None if vip_at is None else vip_at - fault_at,
        "outage_s": {
            str(pid): p.first_ack_at[now.epoch] - p.last_ack_at.get(epoch, fault_at) for pid, p in fleet.panels.items()
        },
        "fault_to_first_ack_s": {str(pid): p.first_ack_at[now.epoch] - fault_at for pid, p in fleet.panels.items()},
        "totals": report.totals(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backlog", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    arguments.out.write_text(json.dumps(trio.run(main, arguments), indent=2))
