"""Failover on real hosts: each panel's outage beside the time keepalived took to move the VIP.

For each VRRP advertisement interval a lab is built (``fieldsync.lab``: hosts A and B in
network namespaces, keepalived VRRPv3 ``nopreempt``, the node on each host gated by its
VRRP state) with a fleet inside its panel host, swiping steadily. Then, ``--runs`` times per
fault, the host that serves loses power (its processes frozen, its link down), or its NIC
goes down, or its keepalived is killed (``kill -9`` of its process group); the bench
records, in the same run:

- **VIP move**: from the fault until the other host's keepalived says MASTER (its notify
  script's state file, polled every 2 ms): what keepalived itself takes;
- **outage** per panel: from its last ACK under the old epoch to its first ACK under the
  new one (what the panel lives through);

and prints, per fault and interval, the outage's p50/p99/max and its ratio to the VIP move
of the same cycle (the figure that matters: how much fieldsync adds to keepalived). After
each cycle the fault is healed and the lab settles (one host serving, both nodes and both
keepalived running) before the next.

``--mirror sync|async``: each host runs its own PostgreSQL (the lab's mirrored storage), so
every takeover promotes the other host's replica; the cycle also records the **rejoin**:
from the heal until the old primary, rewound, streams in sync again (the lab settles only
then: a fault before it would find no standby in sync, and rightly no takeover).

    python benchmarks/failover_hosts.py [--runs 10] [--panels 24] [--advert-int 1 0.1 0.05]
        [--faults power-off nic-down kill-keepalived] [--mirror sync] [--json OUT]

Root only (namespaces, keepalived); ``benchmarks/failover.py --backend netns`` runs this.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from benchmarks import write_json
from emulator import Fleet, Workload
from fieldsync.bench import percentile
from fieldsync.harness._lab_cluster import sockets_in
from fieldsync.lab import NODE_HOSTS, Lab, LabError, LabSpec, find_keepalived, missing_prerequisites
from fieldsync.site import load_site
from storage import Lease, LeaseStoreInterface, open_cluster_store

FAULTS = ("power-off", "nic-down", "kill-keepalived")


def _state(lab: Lab, host: str) -> str:
    try:
        return lab.spec.vrrp_state(host).read_text().strip()
    except OSError:
        return "-"


def _fault(lab: Lab, fault: str, host: str) -> None:
    if fault == "power-off":
        lab.power_off(host)
    elif fault == "nic-down":
        lab.nic(host, up=False)
    else:
        lab.kill_keepalived(host)


def _heal(lab: Lab, fault: str, host: str) -> None:
    if fault == "power-off":
        lab.power_on(host)
    elif fault == "nic-down":
        lab.nic(host, up=True)
    lab.start(host)  # what STONITH or the fault left stopped: keepalived, the node


class _Leases:
    """The lease, read where it lives: the shared store, or the newest of the hosts' own
    databases (mirrored; never a frozen host's: its server would keep the read waiting)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.stores: dict[str, LeaseStoreInterface] = {}

    def _targets(self) -> dict[str, Path | str]:
        if self.lab.spec.mirror is None:
            return {"shared": load_site(self.lab.spec.site_path).db_file}
        servers = self.lab.mirror().servers
        return {h: servers[h].admin_url() for h in NODE_HOSTS if h not in self.lab.powered_off}

    def lease(self) -> Lease:
        newest: Lease | None = None
        targets = self._targets()
        for key in [k for k in self.stores if k not in targets]:
            self.stores.pop(key).close()
        for key, target in targets.items():
            try:
                if key not in self.stores:
                    self.stores[key] = open_cluster_store(target)
                lease = self.stores[key].lease()
            except Exception:  # a database restarting for its rejoin: the other one answers
                stale = self.stores.pop(key, None)
                if stale is not None:
                    stale.close()
                continue
            if newest is None or lease.epoch > newest.epoch:
                newest = lease
        if newest is None:
            raise SystemExit(f"no database of the lab answers: {', '.join(map(str, targets.values()))}")
        return newest

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def _settled(lab: Lab) -> str | None:
    """The host that serves once everything runs again (one MASTER, VIP, lease, both nodes;
    on mirrored storage, the other host's database its replica, streaming in sync)."""
    status = lab.status()
    if not all(h.node and h.keepalived for h in status.hosts if h.host in NODE_HOSTS):
        return None
    serving = status.serving()
    if serving is None or lab.spec.mirror is None:
        return serving
    other = "B" if serving == "A" else "A"
    mirror = lab.mirror()
    in_sync = any(r.node == other and r.in_sync for r in mirror.replication(serving))
    return serving if in_sync and mirror.role(other) == "standby" else None


async def _until(predicate: Callable[[], object], bound: float, what: str) -> None:
    """Poll ``predicate`` (other processes' state: polling is the point) for at most ``bound`` s."""
    with trio.move_on_after(bound) as scope:
        while not predicate():
            await trio.sleep(0.01)
    if scope.cancelled_caught:
        raise SystemExit(f"{what} within {bound:g} s")


async def one_interval(lab: Lab, args: argparse.Namespace) -> list[dict[str, object]]:
    """Every fault ``args.runs`` times on one lab; a record per cycle."""
    site = load_site(lab.spec.site_path)
    store = _Leases(lab)
    cycles: list[dict[str, object]] = []
    with sockets_in(lab.spec.namespace("panels")):
        settings = [site.panel_settings(p) for p in site.panel_ids()]
        if args.connect_timeout is not None:  # the panels' own liveness rule: how long one dial may take
            settings = [dataclasses.replace(st, connect_timeout=args.connect_timeout) for st in settings]
        fleet = Fleet(settings, Workload(rate=args.rate), seed=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            with trio.fail_after(60):
                await fleet.wait_connected()
            for fault in args.faults:
                for run in range(args.runs):
                    cycles.append(await _cycle(lab, store, fleet, fault, run))
                    c = cycles[-1]
                    print(
                        f"advert_int {lab.spec.advert_int:g} s, {fault:<15} run {run + 1:>2}: VIP moved in "
                        f"{c['vip_move_s']:.3f} s, outage p50 {c['outage_p50_s']:.3f} s max {c['outage_max_s']:.3f} s "
                        f"({c['epoch_from']} -> {c['epoch_to']} on {c['new_host']})"
                        + (f"; rejoined in sync {c['rejoin_s']:.2f} s after the heal" if "rejoin_s" in c else ""),
                        flush=True,
                    )
            nursery.cancel_scope.cancel()
    store.close()
    return cycles


async def _cycle(lab: Lab, store: _Leases, fleet: Fleet, fault: str, run: int) -> dict[str, object]:
    await _until(lambda: _settled(lab), 60, "the lab did not settle (one host serving, every process up)")
    old = _settled(lab)
    assert old is not None
    epoch = store.lease().epoch
    await _until(lambda: all(epoch in p.first_ack_at for p in fleet.panels.values()), 60, "not every panel acked")
    other = "B" if old == "A" else "A"
    fault_at = vip_at = None

    async def watch() -> None:
        """When the other host's keepalived says MASTER (its state file, every 2 ms)."""
        nonlocal vip_at
        while vip_at is None:
            if fault_at is not None and _state(lab, other) == "MASTER":
                vip_at = trio.current_time()
            await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(0.3)  # a steady stream of ACKs from the old node first
        fault_at = trio.current_time()
        await trio.to_thread.run_sync(_fault, lab, fault, old)

        def moved() -> bool:
            new = store.lease().epoch
            return new > epoch and vip_at is not None and all(new in p.first_ack_at for p in fleet.panels.values())

        with trio.move_on_after(60):
            await _until(moved, 60, "")
        if not moved():
            new = store.lease()
            waiting = [p for p in fleet.panels.values() if new.epoch not in p.first_ack_at]
            raise SystemExit(
                f"{fault} of {old}: {len(waiting)} panels never acked under a new epoch within 60 s "
                f"(lease {new.holder} epoch {new.epoch}, VIP moved: {vip_at is not None}); e.g. panel "
                f"{waiting[0].settings.panel_id if waiting else '-'}: {waiting[0].last_error if waiting else '-'}"
            )
        nursery.cancel_scope.cancel()
    new_epoch = store.lease().epoch
    assert vip_at is not None
    outages = [p.first_ack_at[new_epoch] - p.last_ack_at.get(epoch, fault_at) for p in fleet.panels.values()]
    healed_at = trio.current_time()
    await trio.to_thread.run_sync(_heal, lab, fault, old)
    vip_move = vip_at - fault_at
    rejoin: dict[str, float] = {}
    if lab.spec.mirror is not None:
        await _until(lambda: _settled(lab), 90, f"{old} did not rejoin in sync after the heal")
        rejoin["rejoin_s"] = trio.current_time() - healed_at
    return {
        **rejoin,
        "fault": fault,
        "run": run,
        "old_host": old,
        "new_host": store.lease().holder,
        "epoch_from": epoch,
        "epoch_to": new_epoch,
        "vip_move_s": vip_move,
        "outage_s": outages,
        "outage_p50_s": statistics.median(outages),
        "outage_max_s": max(outages),
    }


def _summary(cycles: list[dict[str, object]], fault: str) -> dict[str, float]:
    mine = [c for c in cycles if c["fault"] == fault]
    outages = [o for c in mine for o in c["outage_s"]]  # type: ignore[attr-defined]
    moves = [float(c["vip_move_s"]) for c in mine]  # type: ignore[arg-type]
    ratios = [o / float(c["vip_move_s"]) for c in mine for o in c["outage_s"]]  # type: ignore[attr-defined, arg-type]
    rejoins = [float(c["rejoin_s"]) for c in mine if "rejoin_s" in c]  # type: ignore[arg-type]
    return {
        "runs": len(mine),
        "vip_move_p50_s": statistics.median(moves),
        "vip_move_max_s": max(moves),
        "outage_p50_s": percentile(outages, 50),
        "outage_p99_s": percentile(outages, 99),
        "outage_max_s": max(outages),
        "ratio_p50": percentile(ratios, 50),
        "ratio_p99": percentile(ratios, 99),
        **({"rejoin_p50_s": percentile(rejoins, 50), "rejoin_max_s": max(rejoins)} if rejoins else {}),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="cycles per fault and interval")
    parser.add_argument("--panels", type=int, default=24)
    parser.add_argument("--mode", default="mixed", choices=["punch-out", "host-initiated", "mixed"])
    parser.add_argument("--rate", type=float, default=10.0, help="swipes per second per panel")
    parser.add_argument("--advert-int", type=float, nargs="+", default=[1.0, 0.1, 0.05])
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument(
        "--connect-timeout",
        type=float,
        help="each panel's bound on one TCP connect (default: PanelSettings', 5 s): a SYN lost to a host "
        "without power is otherwise retransmitted by the kernel after 1 s, then 3 s",
    )
    parser.add_argument(
        "--heartbeat-ms", type=int, default=1000, help="the sessions' heartbeat (a panel gives up after 3 silent ones)"
    )
    parser.add_argument(
        "--mirror", choices=["sync", "async"], help="each host on its own PostgreSQL (default: the shared store)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    why = missing_prerequisites(find_keepalived())
    if why is not None:
        raise SystemExit(f"failover on hosts needs a lab: {why}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    every: list[dict[str, object]] = []
    started = time.monotonic()
    for advert in args.advert_int:
        with tempfile.TemporaryDirectory(prefix="fieldsync-failover-hosts-") as tmp:
            spec = LabSpec(
                name=f"fb{int(advert * 100)}",
                directory=Path(tmp),
                panels=args.panels,
                mode=args.mode,
                advert_int=advert,
                heartbeat_ms=args.heartbeat_ms,
                mirror=args.mirror,
            )
            lab = Lab(spec)
            try:
                lab.up(timeout=60)
                cycles = trio.run(one_interval, lab, args)
            except LabError as exc:
                raise SystemExit(str(exc)) from None
            finally:
                lab.down()
        for c in cycles:
            c["advert_int_s"] = advert
        every += cycles
        results[f"{advert:g}"] = {fault: _summary(cycles, fault) for fault in args.faults}
    print(
        f"\nfailover on hosts, {args.panels} panels ({args.mode}), "
        f"{'the shared store' if args.mirror is None else args.mirror + ' mirror (PostgreSQL per host)'}, "
        f"heartbeat {args.heartbeat_ms} ms, "
        f"connect timeout {args.connect_timeout or 'default'}, "
        f"{args.runs} runs per cell, "
        f"{time.monotonic() - started:.0f} s in all. outage = last ACK from the old node -> first from the new;"
    )
    print("VIP move = the fault -> the other host's keepalived MASTER; ratio = outage / VIP move of the same cycle")
    print(
        f"{'advert_int':>10} {'fault':<16} {'VIP move p50':>12} {'outage p50':>10} {'p99':>7} {'max':>7} "
        f"{'ratio p50':>9} {'p99':>6}"
    )
    for advert, per_fault in results.items():
        for fault, s in per_fault.items():
            print(
                f"{advert + ' s':>10} {fault:<16} {s['vip_move_p50_s']:>10.3f} s {s['outage_p50_s']:>8.3f} s "
                f"{s['outage_p99_s']:>5.2f} s {s['outage_max_s']:>5.2f} s {s['ratio_p50']:>9.2f} {s['ratio_p99']:>6.2f}"
                + (
                    f"  rejoin p50 {s['rejoin_p50_s']:.2f} s, max {s['rejoin_max_s']:.2f} s"
                    if "rejoin_p50_s" in s
                    else ""
                )
            )
    result: dict[str, object] = {
        "mirror": args.mirror,
        "heartbeat_ms": args.heartbeat_ms,
        "connect_timeout_s": args.connect_timeout,
        "panels": args.panels,
        "mode": args.mode,
        "runs": args.runs,
        "summary": results,
        "cycles": every,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
