"""Failover: time from kill -9 of the active node to each panel's first ACK from the new one.

Each run starts a fresh two-node cluster (real processes, shared store, TLS),
200 panels replaying a backlog while they swipe, kills the active with SIGKILL
once every panel is acknowledged, and records per panel the time from the kill
to its first ACK under the new epoch. Percentiles are over all panels of all
runs.

    python benchmarks/failover.py [--runs 10] [--panels 200] [--json OUT]

On real hosts (network namespaces, keepalived moving the VIP; root), each fault beside the
time keepalived took to move the VIP: ``--backend netns`` runs ``benchmarks/failover_hosts.py``
with the remaining arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from benchmarks import write_json
from emulator import Fleet, Workload
from fieldsync.engine import Supervised, Supervisor, node_command
from fieldsync.site import load_site, pki, write_pair_site
from storage import ClusterStore


class _RunFailed(Exception):
    pass


def _lease(db: Path):  # type: ignore[no-untyped-def]
    store = ClusterStore(db)
    try:
        return store.lease()
    finally:
        store.close()


async def one_run(workdir: Path, pki_dir: Path, args: argparse.Namespace, run: int) -> list[float]:
    site_path = workdir / f"run{run}" / "site.toml"
    site_path.parent.mkdir(parents=True)
    write_pair_site(site_path, pki_dir=pki_dir, port=args.port, panels=args.panels, mode=args.mode)
    site = load_site(site_path)
    children = [Supervised(name=n, command=node_command(n, str(site_path)), restart=False) for n in ("A", "B")]
    fleet = Fleet([site.panel_settings(p) for p in site.panel_ids()], Workload(rate=args.rate), seed=run)
    for panel in fleet.panels.values():
        for i in range(args.backlog):
            panel.swipe(i, i % 4)
    async with trio.open_nursery() as nursery:
        output = args.node_log.fileno() if args.node_log else os.open(os.devnull, os.O_WRONLY)
        await nursery.start(Supervisor(children, stdout=output).run)
        with trio.fail_after(60):
            while (lease := await trio.to_thread.run_sync(_lease, site.db)).holder_pid is None:
                await trio.sleep(0.05)
        await nursery.start(fleet.run)
        epoch = lease.epoch
        with trio.move_on_after(60):
            while not all(epoch in pn.first_ack_at for pn in fleet.panels.values()):
                await trio.sleep(0.05)
        waiting = [pn for pn in fleet.panels.values() if epoch not in pn.first_ack_at]
        if waiting:
            now = await trio.to_thread.run_sync(_lease, site.db)
            moved = (
                f"; the epoch moved from {epoch} to {now.epoch} (holder {now.holder}) with no fault injected"
                if now.epoch != epoch
                else ""
            )
            raise _RunFailed(
                f"run {run}: {len(waiting)} panels never acknowledged before the kill, e.g. {waiting[0]!r}: "
                f"{waiting[0].last_error}{moved}"
            )
        await trio.sleep(0.5)  # replay in flight
        killed_at = trio.current_time()
        os.kill(lease.holder_pid, signal.SIGKILL)
        took_over = None
        # One open store for the polling: opening it costs 1.75 ms, 50 times a second, in
        # the process whose panels are being measured.
        store = ClusterStore(site.db)
        try:
            with trio.fail_after(60):
                while True:
                    new = await trio.to_thread.run_sync(store.lease)
                    if new.epoch > epoch and took_over is None:
                        took_over = trio.current_time() - killed_at
                    if new.epoch > epoch and all(new.epoch in pn.first_ack_at for pn in fleet.panels.values()):
                        break
                    await trio.sleep(0.02)
        finally:
            store.close()
        print(f"run {run:2d}: the new epoch was in the store {took_over:.3f} s after the kill", flush=True)
        nursery.cancel_scope.cancel()
    welcomed = sorted(pn.welcome_at[new.epoch] - killed_at for pn in fleet.panels.values())
    print(
        f"run {run:2d}: WELCOME from the new node: median {statistics.median(welcomed):.3f} s, "
        f"last {welcomed[-1]:.3f} s after the kill",
        flush=True,
    )
    return [pn.first_ack_at[new.epoch] - killed_at for pn in fleet.panels.values()]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main(argv: list[str] | None = None) -> dict[str, object]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--backend", "netns"]:
        from benchmarks import failover_hosts

        return failover_hosts.main(argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--panels", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=2000, help="events each panel holds when the run starts")
    parser.add_argument("--rate", type=float, default=2.0, help="swipes per second per panel during the run")
    parser.add_argument("--mode", default="mixed", choices=["punch-out", "host-initiated", "mixed"])
    parser.add_argument("--port", type=int, default=30002)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--node-log", type=argparse.FileType("w"), help="write the node processes' output here")
    args = parser.parse_args(argv)
    samples: list[float] = []
    per_run: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fieldsync-failover-") as tmp:
        workdir = Path(tmp)
        pki_dir = workdir / "pki"
        pki.init_ca(pki_dir)
        for node in ("A", "B"):
            pki.issue(pki_dir, "node", node)
        for panel in range(1, args.panels + 1):
            pki.issue(pki_dir, "panel", panel)
        for run in range(args.runs):
            try:
                times = trio.run(one_run, workdir, pki_dir, args, run)
            except BaseExceptionGroup as group:
                failed = group.subgroup(_RunFailed)
                if failed is None:
                    raise
                first: BaseException = failed
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise SystemExit(str(first)) from None
            samples += times
            per_run.append({"p50_s": statistics.median(times), "max_s": max(times)})
            print(f"run {run + 1:>2}: p50 {statistics.median(times):.3f} s  max {max(times):.3f} s")
    result: dict[str, object] = {
        "runs": args.runs,
        "panels": args.panels,
        "mode": args.mode,
        "p50_s": _percentile(samples, 50),
        "p95_s": _percentile(samples, 95),
        "p99_s": _percentile(samples, 99),
        "max_s": max(samples),
        "per_run": per_run,
    }
    print(
        f"failover, {args.runs} runs x {args.panels} panels ({args.mode}), kill -9 -> first ACK from the new node: "
        f"p50 {result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s, p99 {result['p99_s']:.3f} s, "
        f"max {result['max_s']:.3f} s  (goal p99 < 1.5 s)"
    )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
