"""Backlog replay over a serial line (a real pseudo-terminal pair), unthrottled and at a baud rate.

The node runs as its own process (``fieldsync serve --serial``) on one end of a
virtual line (``fieldsync.harness.VirtualLine``); one panel with a backlog runs in this
process on the other end. The clock starts when the panel opens its end and
stops when its buffer is empty (every event committed and acknowledged).

The line's theoretical limit is baud / bits per byte (10 for 8N1) / 32 bytes per
event record: framing, batch headers, ACKs and heartbeats only take from it.

    python benchmarks/serial_replay.py --events 100000 --baud 115200 [--tls] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import protocol as p
from benchmarks import node_process, write_json
from emulator import Fleet, LinkMode, PanelSettings
from fieldsync.harness import VirtualLine
from fieldsync.site import pki
from protocol.streams import SerialLine, records_per_batch
from storage import EventStore


async def replay_once(args: argparse.Namespace, workdir: Path, *, throttle: bool) -> dict[str, float]:
    name = "throttled" if throttle else "unthrottled"
    db = workdir / f"{name}.db"
    pki_dir = workdir / "pki"
    with VirtualLine(link_dir=workdir / name) as line:
        panel_line = SerialLine(path=line.b, baud=args.baud, throttle=throttle)
        settings = PanelSettings(
            panel_id=1,
            mode=LinkMode.SERIAL,
            serial=panel_line,
            tls=pki.tls_files(pki_dir, "panel", 1) if args.tls else None,
            buffer_bytes=(args.events + 64) * p.RECORD_SIZE,
            batch_records=args.batch,
            window=args.window,
        )
        fleet = Fleet([settings], seed=1)
        panel = fleet.panels[1]
        t0 = 1_764_000_000_000_000
        for i in range(args.events):
            panel.buffer.append(t0 + i, p.EventKind.ACCESS_GRANTED, door=i % 4, card=12345 + i)
        total = panel.statistics().emitted

        command = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", str(db), "--no-listen"]
        command += ["--serial", f"1={line.a}", "--baud", str(args.baud)]
        command += ["--pki", str(pki_dir)] if args.tls else ["--insecure"]
        log_path = workdir / f"node-{name}.log"
        async with node_process(command, log_path), trio.open_nursery() as nursery:
            start = time.perf_counter()
            await nursery.start(fleet.run)
            with trio.fail_after(args.timeout):
                await fleet.wait_drained(poll=0.05)
            drain = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        stats = panel.statistics()
        carried = line.totals().forwarded
    store = EventStore(db)
    stored = store.count_events()
    store.close()
    if stored < total:
        raise SystemExit(f"{name}: only {stored} of {total} events stored")
    batch = min(args.batch, records_per_batch(panel_line))
    result = {
        "events": float(total),
        "drain_s": drain,
        "events_per_s": total / drain,
        "batch_records": float(batch),
        "line_bytes_per_event": carried / total,
        "sessions": float(stats.sessions),
    }
    if throttle:
        limit = panel_line.bytes_per_second / p.RECORD_SIZE
        result["line_limit_events_per_s"] = limit
        result["ratio_to_line_limit"] = result["events_per_s"] / limit
    return result


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    if args.tls:
        pki.init_ca(workdir / "pki")
        pki.issue(workdir / "pki", "node", "A")
        pki.issue(workdir / "pki", "panel", 1)
    out: dict[str, object] = {}
    for mode in args.modes.split(","):
        out[mode] = await replay_once(args, workdir, throttle=mode == "throttled")
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--baud", type=int, default=115_200)
    parser.add_argument("--modes", default="unthrottled,throttled", help="comma-separated: unthrottled, throttled")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--batch", type=int, default=4096, help="records per batch (a throttled line takes fewer)")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fieldsync-serial-") as tmp:
        result = trio.run(run, args, Path(tmp))
    print(f"serial replay: {args.events:,} events over a pty pair, {'TLS 1.3' if args.tls else 'plain'}")
    for mode, r in result.items():
        assert isinstance(r, dict)
        line = (
            f"  {mode:<12}: {r['events_per_s']:>10,.0f} events/s  drain {r['drain_s']:.2f} s  "
            f"batch {r['batch_records']:.0f}  {r['line_bytes_per_event']:.2f} line bytes/event"
        )
        if "ratio_to_line_limit" in r:
            line += (
                f"\n  {'':<12}  line limit at {args.baud} baud: {r['line_limit_events_per_s']:,.0f} events/s; "
                f"ratio {r['ratio_to_line_limit']:.3f}"
            )
        print(line)
    write_json(args.json, {**result, "baud": args.baud, "tls": args.tls})
    return result


if __name__ == "__main__":
    main()
