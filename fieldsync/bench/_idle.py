"""Idle sessions: what a connected panel with nothing to send costs each end, per second.

The node runs as its own process (``fieldsync serve``), the panels in this one, with TLS,
started ``ramp`` per second (panels coming back one by one, not a storm). Once every panel
has its session and a settling pause has passed, the CPU of both
processes is read over a window in which nothing happens but liveness (and the node's
once-a-second status write). The bound, measured in the same run: the CPU of one small
frame sent and received through ``trio.SSLStream`` (``_frames``), so an idle session's
cost is given in frames per session-second (issue 19's goal: at most 0.25 at each end).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from emulator import Fleet, LinkMode, PanelSettings
from protocol.streams import GcTime, sparing_gc

from ..site import pki
from ._common import cpu_seconds, node_process, ratio, save_figure
from ._frames import frame_cost
from ._replay import VIP

__all__ = ["IdleOptions", "idle_lines", "measure_idle", "plot_idle"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IdleOptions:
    panels: int = 1000
    #: The measured window, and the pause after the last session starts.
    seconds: float = 10.0
    settle: float = 3.0
    #: The node's intervals, which the panels adopt from its WELCOME (docs/protocol.md 9.1):
    #: idle sessions are quiet, so ``idle_ms`` sets their cost.
    heartbeat_ms: int = 1000
    idle_ms: int = 10_000
    port: int = 30002
    #: Loopback pairs for the frame bound (each end one frame a second).
    bound_pairs: int = 500
    #: Panels started per second, below what one fleet process can set up (about 120 TLS
    #: sessions a second here). All at once, or 500 a second, 10,000 panels' set-ups timed
    #: out faster than they completed (16 to 71 sessions up after 2-3 minutes).
    ramp: float = 100.0
    #: Each panel's event buffer: an idle panel buffers nothing, and 1 MiB each is 10 GiB
    #: for 10,000 panels.
    buffer_bytes: int = 64 * 1024
    #: Both processes' cyclic GC (protocol.streams.sparing_gc), or ``python``: CPython's own.
    gc: str = "sparing"


async def measure_idle(
    opts: IdleOptions, workdir: Path, *, on_connected: Callable[[int], None] = lambda _: None
) -> dict[str, object]:
    """The idle window, then the frame bound, and the idle cost as a ratio to it."""
    pki_dir = workdir / "pki"
    pki.init_ca(pki_dir)
    pki.issue(pki_dir, "node", "A")
    settings = [
        PanelSettings(
            panel_id=pid,
            mode=LinkMode.PUNCH_OUT,
            server=(VIP, opts.port),
            tls=pki.issue(pki_dir, "panel", pid),
            buffer_bytes=opts.buffer_bytes,
        )
        for pid in range(1, opts.panels + 1)
    ]
    fleet = Fleet(settings, seed=1, start_rate=opts.ramp)
    command = [sys.executable, "-m", "fieldsync.cli", "serve", "--db", str(workdir / "site.db")]
    command += ["--listen", f"{VIP}:{opts.port}", "--pki", str(pki_dir), "--heartbeat-ms", str(opts.heartbeat_ms)]
    command += ["--idle-ms", str(opts.idle_ms), "--gc", opts.gc]
    async with (
        node_process(command, workdir / "node.log") as node,
        sparing_gc(enabled=opts.gc == "sparing"),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(fleet.run)  # the ramp runs while the loop below shows progress
        # A fleet whose set-ups cannot keep up never has every session up: past the wait the
        # window measures those that are, and the report says how many came up.
        wait_s = 120 + opts.panels / opts.ramp
        with trio.move_on_after(wait_s):
            while (connected := sum(p.is_connected for p in fleet.panels.values())) < opts.panels:
                on_connected(connected)
                await trio.sleep(0.1)
        connected = sum(p.is_connected for p in fleet.panels.values())
        on_connected(connected)
        await trio.sleep(opts.settle)
        at_start = fleet.statistics().connected
        node_0, loop_0, fleet_0 = cpu_seconds(node.pid), cpu_seconds(node.pid, node.pid), time.process_time()
        before = sum(panel.statistics().sessions for panel in fleet.panels.values())
        start = time.perf_counter()
        with GcTime() as fleet_gc:
            await trio.sleep(opts.seconds)
        elapsed = time.perf_counter() - start
        node_cpu = cpu_seconds(node.pid) - node_0
        loop_cpu = cpu_seconds(node.pid, node.pid) - loop_0
        fleet_cpu = time.process_time() - fleet_0
        renewed = sum(panel.statistics().sessions for panel in fleet.panels.values()) - before
        up = fleet.statistics().connected
        nursery.cancel_scope.cancel()
    # Sessions lost in the window (a timeout, a refusal) are reported, not hidden: their
    # set-ups are then in the figures, which say more than liveness alone costs.
    # The bound, once the node and the fleet are gone: it has the machine to itself.
    pairs, window = min(opts.bound_pairs, opts.panels), min(opts.seconds, 8.0)
    frame_us = await frame_cost("trio", pairs, window, pki_dir) * 1e6
    # Beside it, a frame through the stream the sessions run on (SocketTLSStream): the goal
    # is set in SSLStream frames; this says what a probe cycle costs in our own stack's.
    own_frame_us = await frame_cost("socket", pairs, window, pki_dir) * 1e6
    # Per session that was up: the mean of the counts at the window's start and end.
    session_seconds = max(1.0, (at_start + up) / 2) * elapsed
    node_us, fleet_us = node_cpu / session_seconds * 1e6, fleet_cpu / session_seconds * 1e6
    return {
        "panels": opts.panels,
        "heartbeat_ms": opts.heartbeat_ms,
        "idle_ms": opts.idle_ms,
        "ramp_panels_per_s": opts.ramp,
        "buffer_bytes": opts.buffer_bytes,
        "gc": opts.gc,
        "window_s": elapsed,
        "node_cpu_s": node_cpu,
        "node_loop_cpu_s": loop_cpu,
        "fleet_cpu_s": fleet_cpu,
        "fleet_gc_s": sum(fleet_gc.seconds),
        "fleet_gc_full_collections": fleet_gc.collections[2],
        "fleet_gc_s_by_generation": fleet_gc.seconds,
        "fleet_gc_collections_by_generation": fleet_gc.collections,
        "node_us_per_session_s": node_us,
        "fleet_us_per_session_s": fleet_us,
        "node_cores": node_cpu / elapsed,
        "fleet_cores": fleet_cpu / elapsed,
        "frame_bound_us": frame_us,
        "node_frames_per_session_s": ratio(node_us, frame_us),
        "fleet_frames_per_session_s": ratio(fleet_us, frame_us),
        "own_frame_us": own_frame_us,
        "node_own_frames_per_session_s": ratio(node_us, own_frame_us),
        "fleet_own_frames_per_session_s": ratio(fleet_us, own_frame_us),
        "all_connected": at_start == opts.panels,
        "connect_wait_s": wait_s,
        "connected_at_start": at_start,
        "connected_at_end": up,
        "sessions_set_up_in_window": renewed,
    }


def idle_lines(result: dict[str, object]) -> list[str]:
    """The run's figures, each beside the frame bound and its ratio."""

    def frames(key: str) -> str:
        value = result[key]
        return "missing (no frame bound)" if value is None else f"{float(value):.3f} frames"  # type: ignore[arg-type]

    def own(end: str) -> str:
        value = result.get(f"{end}_own_frames_per_session_s")
        return "" if value is None else f"; {float(value):.3f} of a SocketTLSStream frame"  # type: ignore[arg-type]

    gc_part = (
        f"{float(result['fleet_gc_s']):.2f} s in the cyclic GC, {result['fleet_gc_full_collections']} full "  # type: ignore[arg-type]
        f"collections; GC {result.get('gc', 'sparing')}"
        if "fleet_gc_s" in result
        else "GC time not measured"
    )
    short = (
        []
        if result.get("all_connected", True)
        else [
            f"  set-up      : not every session came up within {float(result['connect_wait_s']):.0f} s "  # type: ignore[arg-type]
            f"(the set-ups did not keep up with the ramp): {result['connected_at_start']} up when the window "
            "began; the figures are per session that was up"
        ]
    )
    return [
        f"idle: {result['panels']} TLS sessions, idle interval {result['idle_ms']} ms "
        f"(heartbeat {result['heartbeat_ms']} ms), {result['window_s']:.1f} s window",
        f"  frame bound : {result['frame_bound_us']:.0f} us per small frame sent and received (trio.SSLStream)"
        + (
            f"; {float(result['own_frame_us']):.0f} us through SocketTLSStream (the sessions' stream)"  # type: ignore[arg-type]
            if result.get("own_frame_us")
            else ""
        ),
        f"  node        : {result['node_cpu_s']:.2f} s CPU (event loop {result['node_loop_cpu_s']:.2f} s), "
        f"{result['node_cores']:.2f} cores, {result['node_us_per_session_s']:.0f} us per session-second = "
        f"{frames('node_frames_per_session_s')} (goal <= 0.25){own('node')}",
        f"  fleet       : {result['fleet_cpu_s']:.2f} s CPU ({gc_part}), {result['fleet_cores']:.2f} cores, "
        f"{result['fleet_us_per_session_s']:.0f} us per session-second = "
        f"{frames('fleet_frames_per_session_s')} (goal <= 0.25){own('fleet')}",
        f"  sessions    : {result['connected_at_end']} of {result['panels']} up at the end, "
        f"{result['sessions_set_up_in_window']} set up again in the window"
        + ("" if not result["sessions_set_up_in_window"] else " (their set-ups are in the figures above)"),
        *short,
    ]


def plot_idle(result: dict[str, object], path: Path) -> None:
    """Each end's CPU per session-second beside one frame's (the bound) and the goal."""
    from matplotlib.figure import Figure

    frame = float(result["frame_bound_us"])  # type: ignore[arg-type]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.bar(["node", "fleet"], [float(result["node_us_per_session_s"]), float(result["fleet_us_per_session_s"])])  # type: ignore[arg-type]
    ax.axhline(frame, color="grey", linestyle="--", label=f"one frame sent and received ({frame:.0f} us)")
    ax.axhline(frame * 0.25, color="green", linestyle=":", label="goal: 0.25 of a frame")
    ax.set_ylabel("CPU us per session-second")
    ax.set_title(f"idle: {result['panels']} TLS sessions, idle interval {result['idle_ms']} ms")
    ax.legend(loc="upper right")
    save_figure(fig, path)
