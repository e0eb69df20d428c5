"""Idle sessions: what a connected panel with nothing to send costs each end, per second.

The node runs as its own process (``fieldsync serve``), the panels in this one,
with TLS. Once every panel has its session and a settling pause has passed, the
CPU of both processes is read over a window in which nothing happens but
heartbeats (and the node's once-a-second status write). The bound is zero: an
idle link should cost nothing but its liveness frames.

    python benchmarks/idle.py [--panels 1000] [--seconds 10] [--heartbeat-ms 1000] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from benchmarks import cpu_seconds, node_process, write_json
from benchmarks.replay import VIP
from emulator import Fleet, LinkMode, PanelSettings
from fieldsync.site import pki


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    pki_dir = workdir / "pki"
    pki.init_ca(pki_dir)
    pki.issue(pki_dir, "node", "A")
    settings = [
        PanelSettings(
            panel_id=pid, mode=LinkMode.PUNCH_OUT, server=(VIP, args.port), tls=pki.issue(pki_dir, "panel", pid)
        )
        for pid in range(1, args.panels + 1)
    ]
    fleet = Fleet(settings, seed=1)
    command = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", str(workdir / "site.db")]
    command += ["--listen", f"{VIP}:{args.port}", "--pki", str(pki_dir), "--heartbeat-ms", str(args.heartbeat_ms)]
    async with node_process(command, workdir / "node.log") as node, trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        with trio.fail_after(120):
            await fleet.wait_connected(poll=0.1)
        await trio.sleep(args.settle)
        node_0, loop_0, fleet_0 = cpu_seconds(node.pid), cpu_seconds(node.pid, node.pid), time.process_time()
        start = time.perf_counter()
        await trio.sleep(args.seconds)
        elapsed = time.perf_counter() - start
        node_cpu = cpu_seconds(node.pid) - node_0
        loop_cpu = cpu_seconds(node.pid, node.pid) - loop_0
        fleet_cpu = time.process_time() - fleet_0
        connected = fleet.statistics().connected
        nursery.cancel_scope.cancel()
    if connected != args.panels:
        raise SystemExit(f"only {connected} of {args.panels} panels stayed connected through the window")
    session_seconds = args.panels * elapsed
    return {
        "window_s": elapsed,
        "node_cpu_s": node_cpu,
        "node_loop_cpu_s": loop_cpu,
        "fleet_cpu_s": fleet_cpu,
        "node_us_per_session_s": node_cpu / session_seconds * 1e6,
        "fleet_us_per_session_s": fleet_cpu / session_seconds * 1e6,
        "node_cores": node_cpu / elapsed,
        "fleet_cores": fleet_cpu / elapsed,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after the last session starts")
    parser.add_argument("--heartbeat-ms", type=int, default=1000, help="the node's interval, which panels adopt")
    parser.add_argument("--port", type=int, default=30002)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fieldsync-idle-") as tmp:
        result: dict[str, object] = dict(trio.run(measure, args, Path(tmp)))
    result.update(panels=args.panels, heartbeat_ms=args.heartbeat_ms)
    print(f"idle: {args.panels} TLS sessions, heartbeat {args.heartbeat_ms} ms, {result['window_s']:.1f} s window")
    print(
        f"  node  : {result['node_cpu_s']:.2f} s CPU (event loop {result['node_loop_cpu_s']:.2f} s), "
        f"{result['node_cores']:.2f} cores, {result['node_us_per_session_s']:.0f} us per session-second"
    )
    print(
        f"  fleet : {result['fleet_cpu_s']:.2f} s CPU, {result['fleet_cores']:.2f} cores, "
        f"{result['fleet_us_per_session_s']:.0f} us per session-second"
    )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
