"""The PNG timeline of a scenario run (matplotlib, no display needed).

Four panels sharing the time axis: events acknowledged per second, events
buffered at the panels, panels connected, and the cluster epoch with the node
holding the VIP; every fault window is shaded across all four and labelled.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._runner import RunResult

__all__ = [
    "FAULT_COLOUR",
    "SERIES",
    "plot_timeline",
    "timeline_figure",
]

#: The y-axis labels of the four panels, top to bottom.
SERIES = ("stored events/s", "buffered events", "panels connected", "epoch / VIP holder")
FAULT_COLOUR = "tab:red"


def plot_timeline(result: RunResult, path: Path) -> Path:
    """Write the timeline of ``result`` as a PNG."""
    fig = timeline_figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def timeline_figure(result: RunResult) -> Figure:
    """The timeline as a matplotlib figure (no pyplot, no global state): what the PNG shows."""
    from matplotlib.figure import Figure

    samples = result.samples
    t = [s.t for s in samples]
    # From the store's high-water marks, which never go back (a panel's ack counter does).
    rates = [0.0] + [(b.stored - a.stored) / (b.t - a.t) if b.t > a.t else 0.0 for a, b in itertools.pairwise(samples)]
    fig = Figure(figsize=(10, 8), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    verdict = "every promise held" if result.ok else "PROMISE BROKEN"
    fig.suptitle(f"{result.scenario.name} (seed {result.seed}): {verdict}")
    series = [
        (SERIES[0], rates, "tab:green"),
        (SERIES[1], [s.buffered for s in samples], "tab:orange"),
        (SERIES[2], [s.connected for s in samples], "tab:blue"),
    ]
    for ax, (label, values, colour) in zip(axes, series, strict=False):
        ax.plot(t, values, color=colour, linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax = axes[3]
    ax.step(t, [s.epoch for s in samples], where="post", color="black", linewidth=1.2)
    ax.set_ylabel(SERIES[3])
    ax.grid(alpha=0.3)
    holders = {"A": "tab:purple", "B": "tab:cyan"}
    for a, b in itertools.pairwise(samples):
        if a.holder in holders:
            ax.axvspan(a.t, b.t, ymin=0, ymax=0.12, color=holders[a.holder], alpha=0.8, linewidth=0)
    ax.text(0.01, 0.16, "VIP: A purple, B cyan, none blank", transform=ax.transAxes, fontsize=7)
    ax.set_xlabel("seconds since the panels came online")
    end = t[-1] if t else result.scenario.duration
    for index, window in enumerate(result.windows):
        stop = window.end if window.end is not None else end
        for axis in axes:
            axis.axvspan(window.start, max(stop, window.start + 0.05), color=FAULT_COLOUR, alpha=0.12, linewidth=0)
        axes[0].annotate(
            window.label,
            xy=(window.start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10 - 9 * (index % 4)),
            textcoords="offset points",
            fontsize=7,
            color="tab:red",
        )
    for at, what in result.log:
        if what.startswith(("kill", "cancel", "switchover", "power-cycle", "operator", "SIGCONT")):
            for axis in axes:
                axis.axvline(at, color="tab:red", linewidth=0.6, linestyle=":")
    return fig
