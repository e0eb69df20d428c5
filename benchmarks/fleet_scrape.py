"""What a scrape of a fleet's metrics costs the fleet's event loop (`fieldsync emulate --metrics`).

A 1 ms ticker runs in the fleet's trio loop beside the scrapes; its longest gap is the
time the loop could not run. Two ways in one run: ``fleet_render`` as the endpoint serves
it (the panels' counters read in the loop, formatted in a thread), and its bound, the same
samples formatted in the loop (prometheus_client's ``generate_latest``, what a plain
registry would do). The ratio is the first's longest gap to the second's.

    python benchmarks/fleet_scrape.py [--panels 1000] [--scrapes 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from prometheus_client import CollectorRegistry, generate_latest

from benchmarks import write_json
from emulator import Fleet, LinkMode, PanelSettings
from fieldsync.engine import fleet_render
from fieldsync.engine._metrics import _FleetCollector


async def _longest_gap(scrape: Callable[[], Awaitable[bytes]], scrapes: int) -> tuple[float, float, int]:
    """The ticker's longest gap while ``scrapes`` scrapes run, the mean scrape, the text's size."""
    worst = 0.0
    done = False

    async def tick() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done:
            await trio.sleep(0.001)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    size = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(0.05)
        started = time.perf_counter()
        for _ in range(scrapes):
            size = len(await scrape())
            await trio.sleep(0.005)  # the ticker runs between two scrapes: a gap is one scrape's
        took = (time.perf_counter() - started) / scrapes - 0.005
        done = True
    return worst, took, size


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--panels", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    settings = [
        PanelSettings(panel_id=p, mode=LinkMode.PUNCH_OUT, server=("127.0.0.1", 9)) for p in range(1, args.panels + 1)
    ]
    fleet = Fleet(settings)
    for panel in fleet.panels.values():  # a backlog each: the counters are not all zero
        for i in range(10):
            panel.swipe(1000 + i, 1)

    async def in_loop() -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FleetCollector(fleet.panel_statistics()))
        return generate_latest(registry)

    async def measure() -> dict[str, float]:
        served = fleet_render(fleet)
        await served()  # the thread and the imports, before the clock
        gap, took, size = await _longest_gap(served, args.scrapes)
        bound_gap, bound_took, _ = await _longest_gap(in_loop, args.scrapes)
        started = time.perf_counter()
        for _ in range(args.scrapes):
            fleet.panel_statistics()
        snapshot = (time.perf_counter() - started) / args.scrapes
        return {
            "panels": args.panels,
            "bytes": size,
            "scrape_s": took,
            "longest_gap_s": gap,
            "in_loop_scrape_s": bound_took,
            "in_loop_longest_gap_s": bound_gap,
            "snapshot_s": snapshot,
            "ratio": gap / bound_gap,
        }

    result = trio.run(measure)
    print(f"a fleet of {args.panels} panels, {args.scrapes} scrapes of {result['bytes']:,.0f} bytes each")
    print(
        f"  fleet_render (counters in the loop, text in a thread): scrape {result['scrape_s'] * 1000:.0f} ms, "
        f"the loop's longest gap {result['longest_gap_s'] * 1000:.1f} ms"
    )
    print(
        f"  bound, formatted in the loop: scrape {result['in_loop_scrape_s'] * 1000:.0f} ms, "
        f"the loop's longest gap {result['in_loop_longest_gap_s'] * 1000:.1f} ms"
    )
    print(f"  the counters' snapshot alone {result['snapshot_s'] * 1000:.1f} ms")
    print(f"  ratio longest gap / bound's: {result['ratio']:.3f}")
    write_json(args.json, result, machine=platform.machine())
    return result


if __name__ == "__main__":
    main()
