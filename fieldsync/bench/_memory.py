"""The panel's buffer in memory: bytes per event, and no growth past its budget.

A buffer of ``events`` records is filled, then 10x as many more go through it under
``drop_oldest``. The bound is the record itself (``protocol.RECORD_SIZE``, 32 bytes):
bytes per event is given as a ratio to it, and the resident set after the 10x as a ratio
to the resident set when the buffer was first full (1.0: nothing grew). The process's
resident set is read from ``/proc/self/statm``, sampled as the events go in.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import protocol as p
from storage import EventBuffer, OverflowPolicy

from ._common import ratio, save_figure

__all__ = ["measure_memory", "memory_lines", "plot_memory"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE


def measure_memory(
    events: int = 1_000_000, *, on_progress: Callable[[int], None] = lambda _: None
) -> dict[str, object]:
    """Fill a buffer of ``events`` records, push 10x more through it; RSS along the way."""
    gc.collect()
    before = _rss()
    buf = EventBuffer(events * p.RECORD_SIZE, OverflowPolicy.DROP_OLDEST)
    every = max(1, events // 50)
    samples: list[tuple[int, int]] = [(0, before)]
    full = before
    for t in range(events * 11):
        buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
        if (t + 1) % every == 0:
            samples.append((t + 1, _rss()))
            on_progress(t + 1)
        if t + 1 == events:
            full = _rss()
            assert buf.statistics().depth == events
    after = _rss()
    stats = buf.statistics()
    assert stats.emitted == stats.acked + stats.buffered + stats.dropped and stats.depth <= stats.capacity
    per_event = (full - before) / events
    return {
        "events": events,
        "buffer_bytes_per_event": per_event,
        "record_bytes": p.RECORD_SIZE,
        "ratio_to_record": ratio(per_event, p.RECORD_SIZE),
        "rss_before_mib": before / 2**20,
        "rss_full_mib": full / 2**20,
        "rss_after_10x_mib": after / 2**20,
        "rss_growth_ratio": ratio(after, full),
        "dropped": stats.dropped,
        "samples": samples,
    }


def memory_lines(result: dict[str, object]) -> list[str]:
    return [
        f"memory: a buffer of {result['events']:,} events, then 10x more through drop_oldest",
        f"  bytes per event : {result['buffer_bytes_per_event']:.1f} (the record: {result['record_bytes']} bytes; "
        f"ratio {result['ratio_to_record']:.3f}, goal <= 1.25)",
        f"  resident set    : {result['rss_full_mib']:.0f} MiB full, {result['rss_after_10x_mib']:.0f} MiB after "
        f"10x more: growth ratio {result['rss_growth_ratio']:.3f} (goal 1.0), {result['dropped']:,} dropped",
    ]


def plot_memory(result: dict[str, object], path: Path) -> None:
    """The resident set as events go in, beside the buffer's budget."""
    from matplotlib.figure import Figure

    samples: list[tuple[int, int]] = result["samples"]  # type: ignore[assignment]
    base = samples[0][1]
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.plot([n for n, _ in samples], [(rss - base) / 2**20 for _, rss in samples], label="resident set growth")
    budget = int(result["events"]) * int(result["record_bytes"]) / 2**20  # type: ignore[call-overload]
    ax.axhline(budget, color="grey", linestyle="--", label=f"the buffer's budget ({budget:.0f} MiB)")
    ax.set_xlabel("events appended")
    ax.set_ylabel("MiB")
    ax.legend(loc="lower right")
    save_figure(fig, path)
