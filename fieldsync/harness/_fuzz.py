"""Seeded random fault schedules: the same seed always makes the same scenario.

``random_scenario(seed)`` mixes every fault the runner knows (process faults,
toxics and group outages on two panel groups, resets, power-cycles, clock
skews and jumps, operator changes and storms, shift-change bursts, faults of
the heartbeat link between the nodes). The in-process tier leaves out what
needs two node processes (SIGSTOP/SIGCONT, switchover, the heartbeat link); on real
hosts (``hosts=True``: the netns backend) the faults of hosts join in (power lost, a NIC
down, a partition between two of the three hosts, keepalived killed), and the heartbeat
link is cut by a partition between the node hosts rather than by toxics.
A failing seed is replayed with the command ``replay_command`` prints.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import trio

from ..site import dump_toml
from ._scenario import ClusterSpec, GroupSpec, Scenario, SiteSpec
from ._steps import (
    BurstStep,
    ClockStep,
    ConfigStep,
    ConfigStormStep,
    ContStep,
    DownStep,
    HealStep,
    HostTarget,
    KillKeepalivedStep,
    KillStep,
    NicDownStep,
    NicUpStep,
    NodeTarget,
    OutageStep,
    PartitionStep,
    PowerCycleStep,
    PowerOffStep,
    PowerOnStep,
    ResetPeerStep,
    RestartStep,
    Step,
    StopStep,
    SwitchoverStep,
    ToxicStep,
    UpStep,
    _panels_text,
    _seconds_text,
)

__all__ = ["fuzz", "random_scenario", "replay_command", "scenario_toml"]

_TOXICS: list[tuple[str, dict[str, tuple[float, float]]]] = [
    ("latency", {"latency": (20, 400), "jitter": (0, 100)}),
    ("bandwidth", {"rate": (5, 200)}),
    ("timeout", {"timeout": (0, 3000)}),
    ("reset_peer", {"timeout": (0, 2000)}),
    ("slow_close", {"delay": (100, 2000)}),
    ("slicer", {"average_size": (1, 64), "size_variation": (0, 16), "delay": (0, 2000)}),
    ("limit_data", {"bytes": (100, 20_000)}),
    ("corrupt", {"rate": (0.00001, 0.001)}),
    ("stall", {"probability": (0.05, 0.5), "duration": (50, 800)}),
    ("half_open", {}),
]


def random_scenario(
    seed: int,
    *,
    in_process: bool = False,
    panels: int = 8,
    duration: float = 15.0,
    tls: bool | None = None,
    hosts: bool = False,
) -> Scenario:
    rng = random.Random(seed)
    half = max(1, panels // 2)
    groups = (
        GroupSpec(name="east", panels=tuple(range(1, half + 1))),
        GroupSpec(name="west", panels=tuple(range(half + 1, panels + 1))),
    )
    site = SiteSpec(
        panels=panels,
        mode=rng.choice(["punch-out", "host-initiated", "mixed"]),
        buffer=rng.choice([16 * 1024, 64 * 1024, 256 * 1024]),
        policy=_policy(rng),
        flash=rng.random() < 0.3,
        tls=(not in_process or hosts) if tls is None else tls,
        rate=rng.choice([2.0, 10.0, 40.0]),
        cardholders=20,
        groups=groups,
    )
    kinds = ["kill", "restart", "outage", "toxic", "toxic", "toxic", "partition", "reset_peer", "power_cycle"]
    kinds += ["clock", "config", "config_storm", "burst"]
    if not in_process:
        kinds += ["pause", "switchover"] + (
            ["power", "nic", "host_partition", "keepalived"] if hosts else ["heartbeat_link"]
        )
    steps: list[Step] = []
    last = duration - 2.0
    cut_until = -1.0  # one host partition at a time
    for _ in range(rng.randint(3, 7)):
        at = round(rng.uniform(0.5, last), 2)
        kind = rng.choice(kinds)
        group = rng.choice(groups).name
        ids = tuple(sorted(rng.sample(range(1, panels + 1), rng.randint(1, max(1, panels // 3)))))
        span = round(rng.uniform(0.5, min(4.0, max(0.6, duration - at - 1))), 2)
        if kind in ("kill", "restart"):
            node: NodeTarget = rng.choice(["active", "standby"]) if not in_process else "active"
            steps.append(KillStep(at=at, node=node) if kind == "kill" else RestartStep(at=at, node=node))
        elif kind == "outage":
            steps.append(OutageStep(at=at, for_=span))
        elif kind == "toxic":
            toxic, ranges = rng.choice(_TOXICS)
            attributes = {k: round(rng.uniform(lo, hi), 5) for k, (lo, hi) in ranges.items()}
            steps.append(
                ToxicStep(
                    at=at,
                    group=group,
                    type=toxic,
                    stream=rng.choice(["upstream", "downstream"]),
                    name=f"{toxic}_{len(steps)}",
                    attributes=attributes,
                    for_=span,
                )
            )
        elif kind == "partition":
            steps.append(DownStep(at=at, group=group))
            steps.append(UpStep(at=round(min(at + span, last + 1), 2), group=group))
        elif kind == "reset_peer":
            steps.append(ResetPeerStep(at=at, group=group))
        elif kind == "power_cycle":
            steps.append(PowerCycleStep(at=at, panels=ids))
        elif kind == "clock":
            steps.append(ClockStep(at=at, panels=ids, skew=rng.choice([-3600.0, -30.0, 0.5, 90.0])))
        elif kind == "config":
            steps.append(ConfigStep(at=at, cardholders=rng.randint(1, 20), remove=rng.randint(0, 3)))
        elif kind == "config_storm":
            steps.append(ConfigStormStep(at=at, count=rng.randint(5, 30), every=0.05))
        elif kind == "burst":
            steps.append(BurstStep(at=at, panels=ids, count=rng.randint(20, 200), spread=span))
        elif kind == "pause":
            node = rng.choice(["active", "standby"])
            steps.append(StopStep(at=at, node=node))
            steps.append(ContStep(at=round(min(at + span, last + 1), 2), node=node))
        elif kind == "switchover":
            steps.append(SwitchoverStep(at=at, to=rng.choice(["A", "B"])))
        elif kind == "power":
            host: Literal["A", "B"] = rng.choice(["A", "B"])
            steps.append(PowerOffStep(at=at, node=host))
            steps.append(PowerOnStep(at=round(min(at + span, last + 1), 2), node=host))
        elif kind == "nic":
            where: Literal["A", "B", "panels"] = rng.choice(["A", "B", "panels"])
            steps.append(NicDownStep(at=at, host=where))
            steps.append(NicUpStep(at=round(min(at + span, last + 1), 2), host=where))
        elif kind == "host_partition" and at > cut_until:
            pairs: list[tuple[HostTarget, HostTarget]] = [
                ("A", "B"),
                ("panels", "A"),
                ("panels", "B"),
                ("panels", "active"),
            ]
            between = rng.choice(pairs)
            cut_until = round(min(at + span, last + 1), 2)
            steps.append(PartitionStep(at=at, between=between))
            steps.append(HealStep(at=cut_until))
        elif kind == "keepalived":
            steps.append(KillKeepalivedStep(at=at, node=rng.choice(["active", "standby"])))
        elif kind == "heartbeat_link":
            toxic, attributes = rng.choice(
                [
                    ("timeout", {}),
                    ("loss", {"probability": round(rng.uniform(0.1, 0.9), 3)}),
                    ("latency", {"latency": round(rng.uniform(20, 400), 1), "jitter": round(rng.uniform(0, 100), 1)}),
                ]
            )
            steps.append(
                ToxicStep(
                    at=at,
                    group="nodes",
                    type=toxic,
                    stream="upstream",
                    name=f"heartbeat_{toxic}_{len(steps)}",
                    attributes=attributes,
                    for_=span,
                )
            )
    return Scenario(
        name=f"fuzz seed {seed}" + (" (in-process)" if in_process else " (hosts)" if hosts else ""),
        path=None,
        duration=duration,
        seed=seed,
        drain_timeout=90.0,
        site=site,
        cluster=ClusterSpec(backend="netns") if hosts else ClusterSpec(),
        timeline=tuple(sorted(steps, key=lambda s: s.at)),
    )


def _policy(rng: random.Random) -> Any:
    from storage import OverflowPolicy

    return rng.choice([OverflowPolicy.DROP_OLDEST, OverflowPolicy.REFUSE_NEWEST, OverflowPolicy.BLOCK])


def replay_command(
    seed: int,
    *,
    in_process: bool,
    panels: int = 8,
    duration: float = 15.0,
    port: int = 30002,
    flaws: tuple[str, ...] | frozenset[str] = (),
    hosts: bool = False,
) -> str:
    """The command that runs this one schedule again, with every option that shapes it.

    A schedule run against a deliberately broken build replays through the harness's
    entry point, since the shipped ``fieldsync`` has no way to break itself.
    """
    if flaws:
        chosen = " ".join(f"--flaw {flaw}" for flaw in sorted(flaws))
        parts = [f"python -m fieldsync.harness.flawed {chosen} fuzz --seed {seed} --count 1"]
    else:
        parts = [f"fieldsync scenario fuzz --seed {seed} --count 1"]
    if in_process:
        parts.append("--fast")
    if hosts:
        parts.append("--backend netns")
    if panels != 8:
        parts.append(f"--panels {panels}")
    if duration != 15.0:
        parts.append(f"--duration {duration:g}")
    if port != 30002:
        parts.append(f"--port {port}")
    return " ".join(parts)


def fuzz(
    count: int,
    seed: int,
    *,
    fast: bool,
    panels: int,
    duration: float,
    port: int,
    save: Path | None = None,
    flaws: frozenset[str] = frozenset(),
    echo: Callable[[str], None] = print,
    hosts: bool = False,
) -> list[int]:
    """Run ``count`` seeded random schedules from ``seed`` on; return the seeds that broke a promise.

    Each schedule's verdict is echoed, and a failing one with its report and the exact
    command that replays it.
    """
    from ._runner import ScenarioRun
    from ._vclock import fast_forward_clock

    failed: list[int] = []
    for s in range(seed, seed + count):
        generated = random_scenario(s, in_process=fast, panels=panels, duration=duration, hosts=hosts)
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            (save / f"fuzz-{s}.toml").write_text(scenario_toml(generated))
        run = ScenarioRun(generated, port=port, in_process=fast, flaws=flaws)
        if fast:
            clock, instrument = fast_forward_clock()
            result = trio.run(run.run, clock=clock, instruments=[instrument])
        else:
            result = trio.run(run.run)
        steps = ", ".join(step.describe() for step in generated.timeline)
        broken = [name.split()[0] for name, (ok, _) in result.report.promises().items() if not ok]
        echo(f"seed {s}: {'ok' if result.ok else 'BROKEN ' + ' '.join(broken)} ({result.wall_s:.1f} s) {steps}")
        if not result.ok:
            failed.append(s)
            echo(result.text())
            replay = replay_command(
                s, in_process=fast, panels=panels, duration=duration, port=port, flaws=flaws, hosts=hosts
            )
            echo(f"replay: {replay}")
    echo(f"{count - len(failed)} of {count} schedules held every promise")
    return failed


def scenario_toml(scenario: Scenario) -> str:
    """The scenario as a file (to keep a failing schedule beside its replay command)."""
    site = scenario.site.file_items()
    site["groups"] = [{"name": g.name, "panels": _panels_text(g.panels)} for g in scenario.groups]
    return dump_toml(
        {
            "name": scenario.name,
            "description": scenario.description or None,
            "duration": _seconds_text(scenario.duration),
            "seed": scenario.seed,
            "drain_timeout": _seconds_text(scenario.drain_timeout),
            "site": site,
            "cluster": {
                k: _seconds_text(v) if isinstance(v, float) else v for k, v in scenario.cluster.file_items().items()
            },
            "timeline": [step.file_values() for step in scenario.timeline],
        }
    )
