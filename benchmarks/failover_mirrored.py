"""Failover on mirrored storage: promotion of the standby's replica, and the old primary's rejoin.

Each run starts nodes A and B on their own PostgreSQL (``running_mirror``: A's the primary,
B's its synchronous replica; real ``fieldsync node`` processes, TLS), a fleet swiping
steadily, then kills the active: ``kill`` is kill -9 of its node (its database goes on),
``host`` is its host's loss (kill -9 of the node and an immediate stop of its database). It
records, in the same run:

- **takeover**: from the kill until the new epoch is in the standby's (now promoted) database;
- **outage** per panel: from its last ACK under the old epoch to its first under the new;
- **rejoin**: the killed node (and its database) started again, until its database streams
  in sync from the new primary (it finds itself the stale primary and rewinds), and how many
  events the new primary had taken meanwhile.

    python benchmarks/failover_mirrored.py [--runs 10] [--panels 24] [--faults kill host] [--json OUT]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from benchmarks import write_json
from emulator import Fleet, Workload
from fieldsync.bench import percentile
from fieldsync.site import load_site, pki, write_pair_site
from storage import open_cluster_store
from storage.postgres import Mirror, running_mirror


def _site(path: Path, mirror: Mirror, pki_dir: Path, panels: int, port: int) -> None:
    write_pair_site(
        path,
        name="bench",
        pki_dir=pki_dir,
        port=port,
        panels=panels,
        mode="punch-out",
        mirror="sync",
        node_dbs={n: s.url() for n, s in mirror.servers.items()},
        pg_data={n: s.datadir for n, s in mirror.servers.items()},
    )


def _epoch(mirror: Mirror, node: str) -> tuple[str | None, int]:
    try:
        store = open_cluster_store(mirror.servers[node].url())
    except Exception:
        return None, 0
    try:
        lease = store.lease()
        return lease.holder, lease.epoch
    except Exception:
        return None, 0
    finally:
        store.close()


async def one_run(args: argparse.Namespace, fault: str, run: int, pki_dir: Path) -> dict[str, object]:
    with running_mirror() as mirror, tempfile.TemporaryDirectory(prefix="fieldsync-fomir-") as tmp:
        site_path = Path(tmp) / "site.toml"
        _site(site_path, mirror, pki_dir, args.panels, args.port)
        site = load_site(site_path)
        logs = {n: (Path(tmp) / f"node-{n}.log").open("w") for n in ("A", "B")}
        procs: dict[str, subprocess.Popen[bytes]] = {}

        def start(name: str) -> None:
            command = [sys.executable, "-m", "fieldsync.cli", "node", "--id", name, "--site", str(site_path)]
            procs[name] = subprocess.Popen(command, stdout=logs[name], stderr=subprocess.STDOUT)

        async def until(predicate, what: str, bound: float = 60.0) -> None:  # type: ignore[no-untyped-def]
            with trio.move_on_after(bound) as scope:
                while not await trio.to_thread.run_sync(predicate):
                    await trio.sleep(0.01)
            if scope.cancelled_caught:
                raise SystemExit(f"run {run}: {what} within {bound:g} s (logs in {tmp})")

        fleet = Fleet([site.panel_settings(p) for p in site.panel_ids()], Workload(rate=args.rate), seed=run)
        try:
            start("A")
            await until(lambda: _epoch(mirror, "A")[0] == "A", "A never took the lease")
            await trio.to_thread.run_sync(mirror.wait_replayed, "A", "B")
            start("B")
            async with trio.open_nursery() as nursery:
                await nursery.start(fleet.run)
                epoch = _epoch(mirror, "A")[1]
                await until(
                    lambda: all(epoch in p.first_ack_at for p in fleet.panels.values()), "not every panel acked"
                )
                await trio.sleep(0.8)  # a steady stream of ACKs under the old epoch
                killed_at = trio.current_time()
                procs["A"].kill()
                if fault == "host":
                    await trio.to_thread.run_sync(lambda: mirror.servers["A"].stop(mode="immediate"))
                procs["A"].wait()
                await until(lambda: _epoch(mirror, "B")[1] > epoch, "B never took over")
                took_over = trio.current_time() - killed_at
                new = _epoch(mirror, "B")[1]
                await until(
                    lambda: all(new in p.first_ack_at for p in fleet.panels.values()), "not every panel acked B"
                )
                outages = [p.first_ack_at[new] - p.last_ack_at.get(epoch, killed_at) for p in fleet.panels.values()]
                stored_before = sum(p.statistics().acked for p in fleet.panels.values())
                await trio.sleep(args.away)  # the old primary stays away while B takes events alone
                taken = sum(p.statistics().acked for p in fleet.panels.values()) - stored_before
                rejoin_at = trio.current_time()
                if fault == "host":
                    await trio.to_thread.run_sync(mirror.servers["A"].start)
                start("A")
                await until(
                    lambda: (
                        mirror.role("A") == "standby"
                        and any(r.node == "A" and r.in_sync for r in mirror.replication("B"))
                    ),
                    "A never rejoined",
                )
                rejoined = trio.current_time() - rejoin_at
                nursery.cancel_scope.cancel()
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
            for out in logs.values():
                out.close()
        log = (Path(tmp) / "node-A.log").read_text()
        how = "rewind" if "rejoined by pg_rewind" in log else "basebackup" if "base backup" in log else "?"
    print(
        f"{fault:<5} run {run + 1:>2}: takeover {took_over:.3f} s, outage p50 {statistics.median(outages):.3f} s "
        f"max {max(outages):.3f} s; rejoin by {how} after {taken} events alone: in sync {rejoined:.2f} s after start",
        flush=True,
    )
    return {
        "fault": fault,
        "takeover_s": took_over,
        "outage_s": outages,
        "rejoin_s": rejoined,
        "rejoin_how": how,
        "events_while_away": taken,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--panels", type=int, default=24)
    parser.add_argument("--rate", type=float, default=20.0, help="swipes per second per panel")
    parser.add_argument("--away", type=float, default=2.0, help="seconds the killed node stays down")
    parser.add_argument("--faults", nargs="+", choices=["kill", "host"], default=["kill", "host"])
    parser.add_argument("--port", type=int, default=30002)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    summary: dict[str, dict[str, float]] = {}
    cycles: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="fieldsync-fomir-pki-") as tmp:
        pki_dir = Path(tmp)
        pki.init_ca(pki_dir)
        for node in ("A", "B"):
            pki.issue(pki_dir, "node", node)
        for panel in range(1, args.panels + 1):
            pki.issue(pki_dir, "panel", panel)
        for fault in args.faults:
            mine = [trio.run(one_run, args, fault, run, pki_dir) for run in range(args.runs)]
            cycles += mine
            outages = [o for c in mine for o in c["outage_s"]]  # type: ignore[attr-defined]
            takeovers = [float(c["takeover_s"]) for c in mine]  # type: ignore[arg-type]
            rejoins = [float(c["rejoin_s"]) for c in mine]  # type: ignore[arg-type]
            summary[fault] = {
                "takeover_p50_s": percentile(takeovers, 50),
                "takeover_max_s": max(takeovers),
                "outage_p50_s": percentile(outages, 50),
                "outage_p99_s": percentile(outages, 99),
                "outage_max_s": max(outages),
                "rejoin_p50_s": percentile(rejoins, 50),
                "rejoin_max_s": max(rejoins),
                "events_while_away_p50": statistics.median(float(c["events_while_away"]) for c in mine),  # type: ignore[arg-type]
            }
    print(f"\nmirrored (sync) failover, {args.panels} punch-out panels at {args.rate:g}/s, {args.runs} runs per fault")
    for fault, s in summary.items():
        print(
            f"  {fault:<5} takeover p50 {s['takeover_p50_s']:.3f} s (max {s['takeover_max_s']:.3f}); panel outage "
            f"p50 {s['outage_p50_s']:.3f} s, p99 {s['outage_p99_s']:.3f} s, max {s['outage_max_s']:.3f} s; rejoin "
            f"p50 {s['rejoin_p50_s']:.2f} s (max {s['rejoin_max_s']:.2f}) "
            f"after ~{s['events_while_away_p50']:.0f} events"
        )
    result: dict[str, object] = {"panels": args.panels, "runs": args.runs, "summary": summary, "cycles": cycles}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
