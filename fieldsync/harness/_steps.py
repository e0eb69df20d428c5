"""The steps of a scenario's timeline: one type per action (``do``), each with its typed keys,
its checks against the scenario, what it does to a run (``apply``) and its line in the log.

A ``[[timeline]]`` entry is read into the type its ``do`` names (a pydantic discriminated
union), so the runner never looks at a string to decide what to do: it awaits
``step.apply(run, nursery)``. Work that outlasts the step (a toxic's expiry, an outage,
a burst) goes to ``nursery``, which the runner cancels at the end of the timeline.

Why one module of this size: twenty-six small step types, each 10-50 lines, the value types
they share, and the union that must list every one (asserted at the bottom); one module keeps
the union and its members in one view.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

import pydantic
import trio
from pydantic import AfterValidator, BeforeValidator, Field, StrictFloat, StrictInt, StrictStr, ValidationInfo

import protocol as p

from ..site import TomlTable, refuse, toml_table
from ._proxy import DatagramProxy, FaultError, Toxic
from ._rogue import RogueKind
from ._rogue import attempt as attempt_rogue

if TYPE_CHECKING:
    from emulator import Panel

    from ._clusters import ClusterBackend
    from ._lab_cluster import LabCluster
    from ._runner import ScenarioRun
    from ._scenario import SiteSpec

__all__ = [
    "ACTIONS",
    "BurstStep",
    "ClockStep",
    "ConfigStep",
    "ConfigStormStep",
    "ContStep",
    "CrashStep",
    "DiskFullStep",
    "DownStep",
    "FaultWindow",
    "HealStep",
    "KillKeepalivedStep",
    "KillStep",
    "NODES_GROUP",
    "REPLICATION_GROUP",
    "NicDownStep",
    "NicUpStep",
    "OutageStep",
    "PartitionStep",
    "PowerOffStep",
    "PowerOnStep",
    "PowerCycleStep",
    "RemoveToxicStep",
    "ResetPeerStep",
    "RestartStep",
    "RogueStep",
    "Step",
    "StepBase",
    "StopStep",
    "SwitchoverStep",
    "ToxicStep",
    "UpStep",
    "parse_panels",
    "parse_time",
]

#: The built-in group of the heartbeat link between the nodes (UDP fault proxies).
NODES_GROUP = "nodes"
#: Mirrored storage's built-in group: the replication link from node A's database to node B's
#: replica (a TCP fault proxy the replica streams through).
REPLICATION_GROUP = "replication"


@dataclasses.dataclass(slots=True)
class FaultWindow:
    """A fault's span on the run's clock (shaded in the timeline); ``end`` None while it lasts."""

    start: float
    end: float | None
    label: str


# -- the value types of a timeline -------------------------------------------------------------

_TIME = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(text: Any) -> float:
    """``"12s"`` -> 12.0, ``"500ms"`` -> 0.5, ``"-2m"`` -> -120.0 (a unit is required)."""
    if isinstance(text, str):
        match = _TIME.match(text)
        if match:
            return float(match.group(1)) * _TIME_UNITS[match.group(2)]
    raise ValueError(f'{text!r} is not a time (examples: "12s", "500ms", "2m")')


def _time(value: Any, info: ValidationInfo) -> Any:
    # A file spells a time with its unit; code passes seconds.
    if isinstance(value, int | float) and not isinstance(value, bool) and not (info.context or {}).get("from_file"):
        return float(value)
    return parse_time(value)


def _not_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be positive")
    return value


class _Seconds:
    """Marks a time field: written back as ``"12s"``, shown with its unit."""


_SECONDS = _Seconds()
#: A moment or a length: ``"12s"``, ``"500ms"``, ``"2m"``; never negative.
Time = Annotated[float, BeforeValidator(_time), AfterValidator(_not_negative), _SECONDS]
#: A length that must be positive (``for``, ``every``, ``spread``).
Span = Annotated[float, BeforeValidator(_time), AfterValidator(_positive), _SECONDS]
#: A signed offset (a clock's ``skew`` and ``jump``).
Offset = Annotated[float, BeforeValidator(_time), _SECONDS]


def _whole(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be a whole number >= 0, not {value!r}")
    return value


Count = Annotated[StrictInt, AfterValidator(_whole)]


def _panel_ids(text: Any) -> tuple[int, ...]:
    """``"1-20"``, ``"3"``, ``3``, ``"1-5,9"`` -> panel ids (whether they exist is the site's question)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'{text!r} is not a panel list (examples: "1-20", "3,7", "all")')
    ids: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f'{text!r} is not a panel list (examples: "1-20", "3,7", "all")')
        ids.extend(range(int(lo), int(hi if sep else lo) + 1))
    return tuple(dict.fromkeys(ids))


def _missing_panel(ids: tuple[int, ...], known: range) -> str | None:
    missing = sorted(set(ids) - set(known))
    if missing:
        return f"panel {missing[0]} does not exist (the site has panels {known.start}..{known.stop - 1})"
    return None


def parse_panels(text: Any, known: range) -> tuple[int, ...]:
    """``"1-20"``, ``"3"``, ``"1-5,9"`` or ``"all"`` -> panel ids, each of which must exist."""
    if text == "all":
        return tuple(known)
    ids = _panel_ids(text)
    problem = _missing_panel(ids, known)
    if problem:
        raise ValueError(problem)
    return ids


def _selection(value: Any) -> Any:
    if value == "all":
        return value
    if isinstance(value, tuple | list):
        return tuple(value)
    return _panel_ids(value)


#: Some panels (``"1-5,9"``, by id) or ``"all"`` of the site's.
Panels = Annotated[tuple[StrictInt, ...] | Literal["all"], BeforeValidator(_selection)]
NodeTarget = Literal["active", "standby", "A", "B"]


def _is_seconds(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated:
        return any(m is _SECONDS for m in annotation.__metadata__) or _is_seconds(get_args(annotation)[0])
    return any(_is_seconds(a) for a in get_args(annotation))


def _seconds_text(value: float) -> str:
    for places in range(18):
        text = f"{value:.{places}f}"
        if float(text) == value:
            return f"{text}s"
    return f"{value!r}s"


def _panels_text(ids: tuple[int, ...]) -> str:
    """(1, 2, 3, 5) -> ``"1-3,5"``."""
    runs: list[list[int]] = []
    for pid in ids:
        if runs and runs[-1][1] == pid - 1:
            runs[-1][1] = pid
        else:
            runs.append([pid, pid])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


# -- the steps ---------------------------------------------------------------------------------


@toml_table
class StepBase(TomlTable):
    """What every step has: ``at``, a time from the moment every panel is online, and
    ``active_for``: the step first waits until the node holding the lease has held it that long
    (the replay under way after an outage's restart, whatever the restart took)."""

    at: Time
    active_for: Time = 0.0

    @classmethod
    def action(cls) -> str:
        """The ``do`` of this type of step."""
        do = cls.__pydantic_fields__["do"].default  # type: ignore[attr-defined]
        assert isinstance(do, str)
        return do

    @classmethod
    def noun(cls) -> str:
        return f"action {cls.action()!r}"

    @property
    def needs_two_nodes(self) -> bool:
        """Only the process cluster can take this step (SIGSTOP/SIGCONT, switchover, the heartbeat link)."""
        return False

    def backend_problem(self, backend: str) -> str | None:
        """Why the cluster backend ``backend`` (process, in-process, netns) cannot take this step; None if it can."""
        return None

    @property
    def needs_mirror(self) -> bool:
        """Only mirrored storage (``[cluster] mirror``) has what this step acts on."""
        return False

    def check(self, site: SiteSpec, duration: float) -> None:
        """What the step needs of its scenario.

        Raises:
            PydanticCustomError: (``refuse``) naming the key at fault.
        """
        if self.at > duration:
            raise refuse(f"{_seconds_text(self.at)} is after the scenario's duration ({duration:g}s)", "at")

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        """Take the step now; what lasts beyond it runs in ``nursery``."""
        raise NotImplementedError

    def file_values(self) -> dict[str, Any]:
        """The step as its ``[[timeline]]`` table (times as ``"12s"``, panels as ``"1-5,9"``)."""
        seconds = {
            (info.validation_alias if isinstance(info.validation_alias, str) else name)
            for name, info in type(self).__pydantic_fields__.items()  # type: ignore[attr-defined]
            if _is_seconds(info.annotation) or any(m is _SECONDS for m in info.metadata)
        }
        items = self.file_items()
        out: dict[str, Any] = {"at": _seconds_text(items.pop("at")), "do": items.pop("do")}
        if not items.get("active_for"):
            items.pop("active_for", None)  # the default, no wait: left out of the file and the log
        for key, value in items.items():
            if key in seconds:
                value = _seconds_text(value)
            elif key == "panels" and isinstance(value, tuple):
                value = _panels_text(value)
            out[key] = value
        return out

    def describe(self) -> str:
        """``kill(node=active)``: the step for the log."""
        items = self.file_values()
        do = items.pop("do")
        del items["at"]
        items.pop("attributes", None)
        shown = ", ".join(f"{k}={v}" for k, v in items.items())
        return f"{do}({shown})" if shown else str(do)


def _cluster(run: ScenarioRun) -> ClusterBackend:
    assert run.cluster is not None, "steps run while the cluster does"
    return run.cluster


def _hosts(run: ScenarioRun) -> LabCluster:
    """The run's lab (the netns backend): the runner refused host steps on any other."""
    from ._lab_cluster import LabCluster

    cluster = _cluster(run)
    assert isinstance(cluster, LabCluster), "the runner refuses host steps without the netns backend"
    return cluster


@toml_table
class _NodeStep(StepBase):
    node: NodeTarget = "active"


@toml_table
class KillStep(_NodeStep):
    """``kill -9`` of a node's process (a cancel in the in-process tier); the supervisor may restart it."""

    do: Literal["kill"] = "kill"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        await self.kill(run, self.node)

    @staticmethod
    async def kill(run: ScenarioRun, target: str) -> str:
        """Kill ``target``'s node now and log it; returns the node's name."""
        cluster = _cluster(run)
        name = await cluster.resolve(target)
        done = await cluster.kill(name)
        run.note(f"{cluster.kill_words} node {name}" + ("" if done else " (not running)"))
        return name


@toml_table
class RestartStep(_NodeStep):
    """A kill, then the node started again at once."""

    do: Literal["restart"] = "restart"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        await _cluster(run).ensure_running(await KillStep.kill(run, self.node))


@toml_table
class StopStep(_NodeStep):
    """SIGSTOP: the node hangs (a zombie primary while its lease runs out)."""

    do: Literal["stop"] = "stop"
    #: Pause only where the node holds no write lock on the shared store (so that, with
    #: STONITH off, the other node can take over: the shared-disk limit).
    outside_transaction: bool = False

    @property
    def needs_two_nodes(self) -> bool:
        return True

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        cluster = _cluster(run)
        name = await cluster.resolve(self.node)
        if await cluster.stop(name, outside_transaction=self.outside_transaction):
            run.open_window(f"SIGSTOP {name}")
        where = " (outside a write transaction)" if self.outside_transaction else ""
        run.note(f"SIGSTOP node {name}{where}")


@toml_table
class ContStep(_NodeStep):
    """SIGCONT."""

    do: Literal["cont"] = "cont"

    @property
    def needs_two_nodes(self) -> bool:
        return True

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        cluster = _cluster(run)
        # No wait for a holder: with both nodes paused none comes until this step.
        name = await cluster.resolve(self.node, wait=False)
        await cluster.cont(name)
        run.close_windows(f"SIGSTOP {name}")
        run.note(f"SIGCONT node {name}")


@toml_table
class CrashStep(_NodeStep):
    """The node's host crashes on mirrored storage: ``kill -9`` of the node and an immediate stop
    of its own database (what was only in the host's memory, and what the mirror had not yet
    received, is gone); on the netns backend, kill -9 of everything the host runs (node,
    keepalived, PostgreSQL). The host stays down until a ``restart`` step or the end starts it;
    its database, now the stale primary, is then rewound by its node to rejoin."""

    do: Literal["crash"] = "crash"

    @property
    def needs_mirror(self) -> bool:
        return True

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        from ._clusters import ProcessCluster
        from ._lab_cluster import LabCluster

        cluster = _cluster(run)
        name = await cluster.resolve(self.node)
        assert isinstance(cluster, ProcessCluster | LabCluster), "the runner refuses a mirror in-process"
        await cluster.crash(name)
        if isinstance(cluster, LabCluster):
            run.note(f"crash of host {name}: kill -9 of its node, keepalived and PostgreSQL at once")
        else:
            run.note(f"crash of node {name}'s host: kill -9 of the node, immediate stop of its database")


@toml_table
class OutageStep(StepBase):
    """Every node killed and kept down for ``for``, then started: the server outage."""

    do: Literal["outage"] = "outage"
    for_: Span = Field(validation_alias="for")

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._outage, run)

    async def _outage(self, run: ScenarioRun) -> None:
        cluster = _cluster(run)
        window = run.open_window("server outage")
        await cluster.all_down()
        run.note(f"outage: every node killed for {self.for_:g}s; panels decide and buffer alone")
        await trio.sleep(self.for_)
        await cluster.all_up(restart=run.scenario.cluster.restart)
        window.end = run.now()
        run.note("outage over: the nodes are starting")


@toml_table
class SwitchoverStep(StepBase):
    """An operator's switchover to node ``to``."""

    do: Literal["switchover"] = "switchover"
    to: Literal["A", "B"]

    @property
    def needs_two_nodes(self) -> bool:
        return True

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        await _cluster(run).switchover(self.to)
        run.note(f"switchover to {self.to} requested")


@toml_table
class _GroupStep(StepBase):
    #: A ``[[site.groups]]`` group, or ``nodes`` (the heartbeat link).
    group: StrictStr

    @property
    def needs_two_nodes(self) -> bool:
        return self.group in (NODES_GROUP, REPLICATION_GROUP)

    @property
    def needs_mirror(self) -> bool:
        return self.group == REPLICATION_GROUP

    def backend_problem(self, backend: str) -> str | None:
        if backend == "netns" and self.group == REPLICATION_GROUP:
            return (
                "on the netns backend the replication link is the lab's switch between hosts A and B, "
                "with no proxy on it: 'partition' (or 'down nodes') cuts it with the heartbeat link"
            )
        return super().backend_problem(backend)

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        groups = {g.name for g in site.groups} | {NODES_GROUP, REPLICATION_GROUP}
        if self.group not in groups:
            known = ", ".join(sorted(groups))
            raise refuse(f"no panel group {self.group!r} (groups: {known}; define others in [[site.groups]])", "group")


@toml_table
class DownStep(_GroupStep):
    """The group's proxies refuse connections and close the ones they had."""

    do: Literal["down"] = "down"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        if self.group == NODES_GROUP and _cluster(run).kind == "netns":
            await _hosts(run).partition("A", "B")  # the heartbeat link is the switch between them
        else:
            await run.hub.set_group_enabled(self.group, False)
        run.open_window(f"{self.group} down")
        run.note(f"group {self.group} down")


@toml_table
class UpStep(_GroupStep):
    """The group's proxies accept connections again."""

    do: Literal["up"] = "up"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        if self.group == NODES_GROUP and _cluster(run).kind == "netns":
            await _hosts(run).heal()
        else:
            await run.hub.set_group_enabled(self.group, True)
        run.close_windows(f"{self.group} down")
        run.note(f"group {self.group} up")


def _toxic_check(part: dict[str, Any]) -> None:
    """``Toxic.from_json``'s own rules, on the part of a toxic given."""
    try:
        Toxic.from_json(part)
    except FaultError as exc:
        key = next(k for k in part if k != "type") if len(part) > 1 else "type"
        raise refuse(str(exc), key) from None


@toml_table
class ToxicStep(_GroupStep):
    """A toxic on every proxy of the group at once; removed after ``for`` if given. ``None``:
    ``Toxic``'s default (stream ``downstream``, toxicity 1, the type's attributes)."""

    do: Literal["toxic"] = "toxic"
    type: StrictStr
    stream: Literal["upstream", "downstream"] | None = None
    name: StrictStr | None = None
    toxicity: StrictFloat | None = None
    attributes: dict[str, StrictFloat] | None = None
    for_: Span | None = Field(default=None, validation_alias="for")

    @pydantic.model_validator(mode="after")
    def _a_toxic(self) -> ToxicStep:
        _toxic_check({"type": self.type})
        for key in ("toxicity", "attributes", "name"):
            if getattr(self, key) is not None:
                _toxic_check({"type": self.type, key: getattr(self, key)})
        return self

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        if self.group == NODES_GROUP and self.type not in DatagramProxy.toxic_types:
            kinds = ", ".join(sorted(DatagramProxy.toxic_types))
            raise refuse(f"the heartbeat link between the nodes is UDP: a toxic there is one of {kinds}", "type")

    def backend_problem(self, backend: str) -> str | None:
        if backend == "netns" and self.group == NODES_GROUP:
            return (
                "on the netns backend the heartbeat link is the lab's switch between hosts A and B: "
                "'down'/'up' (a partition) work there; toxics act on the run's own proxies, and none sits on that link"
            )
        return super().backend_problem(backend)

    def toxic(self) -> Toxic:
        given = self.file_items()
        keys = ("type", "stream", "toxicity", "attributes", "name")
        return Toxic.from_json({k: given[k] for k in keys if k in given})

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        toxic = self.toxic()
        run.hub.add_toxic(self.group, toxic)
        label = f"{toxic.type} {toxic.stream} on {self.group}"
        window = run.open_window(label)
        run.toxic_windows[self.group, toxic.name] = window
        run.note(f"toxic {toxic.name}: {label} {toxic.attributes or ''}".rstrip())
        if self.for_ is not None:
            nursery.start_soon(self._expire, run, toxic.name, self.for_, window)

    async def _expire(self, run: ScenarioRun, name: str, after: float, window: FaultWindow) -> None:
        await trio.sleep(after)
        try:
            run.hub.remove_toxic(self.group, name)
        except FaultError:
            return  # removed meanwhile by a remove_toxic step, which closed the window
        window.end = run.now()
        run.note(f"toxic {name} removed from {self.group}")


@toml_table
class RemoveToxicStep(_GroupStep):
    """Removes the group's toxic ``name``."""

    do: Literal["remove_toxic"] = "remove_toxic"
    name: Annotated[StrictStr, Field(min_length=1)]

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        run.hub.remove_toxic(self.group, self.name)
        run.note(f"toxic {self.name} removed from {self.group}")
        window = run.toxic_windows.pop((self.group, self.name), None)
        if window is not None and window.end is None:
            window.end = run.now()


@toml_table
class ResetPeerStep(_GroupStep):
    """A TCP RST on every connection of the group now."""

    do: Literal["reset_peer"] = "reset_peer"

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        if self.group == NODES_GROUP:
            raise refuse("the heartbeat link between the nodes is UDP: it has no connection to reset", "group")

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        run.hub.reset_peers(self.group)
        run.note(f"TCP reset of every connection of {self.group}")


# -- the faults of real hosts (the netns backend) -----------------------------------------------

HostTarget = Literal["active", "standby", "A", "B", "panels"]


@toml_table
class _HostStep(StepBase):
    """A fault of one of the lab's hosts: only the netns backend has hosts."""

    def backend_problem(self, backend: str) -> str | None:
        if backend != "netns":
            return f'{self.noun()} needs hosts: the netns backend ([cluster] backend = "netns", or --backend netns)'
        return None


@toml_table
class PowerOffStep(_HostStep):
    """The node's host loses power: every process on it freezes and its switch port goes down, so
    the panels and the other host hear nothing (no RST). Its processes resume at ``power-on``."""

    do: Literal["power-off"] = "power-off"
    node: NodeTarget = "active"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        hosts = _hosts(run)
        name = await hosts.resolve(self.node)
        await hosts.power(name, on=False)
        run.open_window(f"power off {name}")
        run.note(f"host {name} lost power (its processes frozen, its link down)")


@toml_table
class PowerOnStep(_HostStep):
    """Power back: the host's processes carry on where they froze, its port comes up. No
    ``node``: every host without power (the one a ``power-off`` of the active took down)."""

    do: Literal["power-on"] = "power-on"
    node: Literal["A", "B"] | None = None

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        hosts = _hosts(run)
        for name in [self.node] if self.node is not None else hosts.powered_off():
            await hosts.power(name, on=True)
            run.close_windows(f"power off {name}")
            run.note(f"host {name} powered on")


@toml_table
class NicDownStep(_HostStep):
    """The host's own NIC goes down (keepalived sees it and goes to FAULT; the node stays up)."""

    do: Literal["nic-down"] = "nic-down"
    host: HostTarget = "active"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        hosts = _hosts(run)
        name = self.host if self.host == "panels" else await hosts.resolve(self.host)
        await hosts.nic(name, up=False)
        run.open_window(f"NIC down {name}")
        run.note(f"host {name}: NIC down")


@toml_table
class NicUpStep(_HostStep):
    do: Literal["nic-up"] = "nic-up"
    host: Literal["A", "B", "panels"]

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        await _hosts(run).nic(self.host, up=True)
        run.close_windows(f"NIC down {self.host}")
        run.note(f"host {self.host}: NIC up")


@toml_table
class PartitionStep(_HostStep):
    """The switch stops forwarding between two hosts, both ways; each still reaches the third.
    ``between = ["A", "B"]`` is a split brain (both become MASTER); ``["panels", "active"]``
    cuts the panels off the VIP's host. One partition at a time; ``heal`` ends it."""

    do: Literal["partition"] = "partition"
    between: tuple[HostTarget, HostTarget]

    @pydantic.field_validator("between")
    @classmethod
    def _two_hosts(cls, between: tuple[str, str]) -> tuple[str, str]:
        if between[0] == between[1]:
            raise ValueError("a partition is between two different hosts")
        return between

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        hosts = _hosts(run)
        a, b = [h if h == "panels" else await hosts.resolve(h) for h in self.between]
        if a == b:
            raise ValueError(f"partition {self.between}: both name host {a} now")
        await hosts.partition(a, b)
        run.open_window(f"partition {a}|{b}")
        run.note(f"partition between hosts {a} and {b}")


@toml_table
class HealStep(_HostStep):
    """The switch forwards between every pair of hosts again."""

    do: Literal["heal"] = "heal"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        joined = await _hosts(run).heal()
        for w in run.windows:
            if w.end is None and w.label.startswith("partition "):
                w.end = run.now()
        run.note(f"partition healed ({' and '.join(joined) or 'none'})")


@toml_table
class KillKeepalivedStep(_HostStep):
    """SIGKILL of keepalived on the node's host (not of the node): the VIP stays on its NIC, the
    other host becomes MASTER, and the node must stop serving on its own (the VRRP gate)."""

    do: Literal["kill-keepalived"] = "kill-keepalived"
    node: NodeTarget = "active"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        hosts = _hosts(run)
        name = await hosts.resolve(self.node)
        killed = await hosts.kill_keepalived(name)
        run.note(f"kill -9 keepalived on host {name}" + ("" if killed else " (not running)"))


@toml_table
class _PanelStep(StepBase):
    panels: Panels

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        if self.panels != "all":
            problem = _missing_panel(self.panels, site.ids)
            if problem:
                raise refuse(problem, "panels")

    def panel_ids(self, run: ScenarioRun) -> tuple[int, ...]:
        return tuple(run.scenario.site.ids) if self.panels == "all" else self.panels


@toml_table
class PowerCycleStep(_PanelStep):
    """The panels lose power: a RAM buffer is lost (declared by the new boot), flash kept to its last sync."""

    do: Literal["power_cycle"] = "power_cycle"

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        ids = self.panel_ids(run)
        for pid in ids:
            run.fleet.panels[pid].power_cycle()
        kept = "flash kept" if run.scenario.site.flash else "RAM buffer lost"
        run.note(f"power-cycle of {len(ids)} panels ({kept})")


@toml_table
class ClockStep(_PanelStep):
    """Sets the panels' clock offset to ``skew`` and/or moves it by ``jump``."""

    do: Literal["clock"] = "clock"
    skew: Offset | None = None
    jump: Offset | None = None

    @pydantic.model_validator(mode="after")
    def _a_change(self) -> ClockStep:
        if self.skew is None and self.jump is None:
            raise refuse("a clock step needs 'skew' or 'jump'")
        return self

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        ids = self.panel_ids(run)
        for pid in ids:
            panel = run.fleet.panels[pid]
            if self.skew is not None:
                panel.clock_skew_us = int(self.skew * 1e6)
            if self.jump is not None:
                panel.clock_skew_us += int(self.jump * 1e6)
        run.note(f"clock of {len(ids)} panels: skew {self.skew or 0:+g}s jump {self.jump or 0:+g}s")


@toml_table
class ConfigStep(StepBase):
    """One operator change (one new configuration version)."""

    do: Literal["config"] = "config"
    #: Cardholders added.
    cardholders: Count = 0
    #: Cardholders removed, chosen at random.
    remove: Count = 0
    lock_door: Count | None = None
    unlock_door: Count | None = None

    @pydantic.model_validator(mode="after")
    def _a_change(self) -> ConfigStep:
        if not (self.cardholders or self.remove) and self.lock_door is None and self.unlock_door is None:
            raise refuse("a config step needs cardholders, remove, lock_door or unlock_door")
        return self

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        for key in ("lock_door", "unlock_door"):
            door = getattr(self, key)
            if door is not None and door >= site.doors:
                raise refuse(f"door {door} does not exist (the panels have doors 0..{site.doors - 1})", key)

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        version = await run.in_config_thread(lambda: run.config.change(self._ops(run)))
        run.note(f"operator change: {self.describe()} -> version {version}")

    def _ops(self, run: ScenarioRun) -> list[p.ConfigOp]:
        ops: list[p.ConfigOp] = []
        for _ in range(self.cardholders):
            ops.append(p.PutCardholder(cardholder=p.Cardholder(card=run.new_card(), levels=(1,))))
        for _ in range(self.remove):
            cards = sorted(run.config.snapshot()[1].cardholders)
            if cards:
                ops.append(p.DeleteCardholder(card=cards[run.rng.randrange(len(cards))]))
        if self.lock_door is not None:
            ops.append(p.PutDoor(door=p.Door(door=self.lock_door, mode=p.DoorMode.LOCKED)))
        if self.unlock_door is not None:
            ops.append(p.PutDoor(door=p.Door(door=self.unlock_door, mode=p.DoorMode.CARD)))
        return ops


@toml_table
class ConfigStormStep(StepBase):
    """``count`` operator changes, one every ``every``."""

    do: Literal["config_storm"] = "config_storm"
    count: Count
    every: Span = 0.1

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._storm, run)

    async def _storm(self, run: ScenarioRun) -> None:
        run.note(f"config storm: {self.count} operator changes, one every {self.every:g}s")
        for _ in range(self.count):
            op = p.PutCardholder(cardholder=p.Cardholder(card=run.new_card(), levels=(1,)))
            await run.in_config_thread(functools.partial(run.config.change, [op]))
            await trio.sleep(self.every)


@toml_table
class BurstStep(_PanelStep):
    """A shift change: ``count`` extra swipes on each panel over ``spread``."""

    do: Literal["burst"] = "burst"
    panels: Panels = "all"
    count: Count
    spread: Span = 10.0

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        ids = self.panel_ids(run)
        for pid in ids:
            nursery.start_soon(self._burst, run, run.fleet.panels[pid])
        run.note(f"shift change: {self.count} swipes on each of {len(ids)} panels over {self.spread:g}s")

    async def _burst(self, run: ScenarioRun, panel: Panel) -> None:
        rng = random.Random(run.rng.random())
        times = sorted(rng.random() * self.spread for _ in range(self.count))
        start = trio.current_time()
        for at in times:
            await trio.sleep_until(start + at)
            cards = panel.known_cards()
            card = cards[rng.randrange(len(cards))] if cards else rng.randrange(10**9, 2 * 10**9)
            await panel.swipe_wait(card, rng.randrange(panel.doors))


@toml_table
class DiskFullStep(StepBase):
    """Fills the store's filesystem to the last byte (``[site] store_size``) for ``for``."""

    do: Literal["disk_full"] = "disk_full"
    for_: Span = Field(validation_alias="for")

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        if not site.store_size:
            raise refuse("disk_full needs [site] store_size (the store on a size-limited tmpfs)")

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        assert run.store_dir is not None, "checked: the scenario has a store_size"
        nursery.start_soon(self._fill, run, run.store_dir)

    async def _fill(self, run: ScenarioRun, store_dir: Path) -> None:
        filler = store_dir / "filler"
        window = run.open_window("store disk full")

        def fill() -> int:
            written = 0
            block = bytes(1 << 16)
            with filler.open("wb", buffering=0) as f:
                for size in (1 << 16, 4096, 512, 1):
                    while True:
                        try:
                            f.write(block[:size])
                        except OSError:
                            break
                        written += size
            return written

        try:
            written = await trio.to_thread.run_sync(fill)
            run.note(f"store disk full: {written} bytes of filler, the store cannot grow for {self.for_:g}s")
            await trio.sleep(self.for_)
        finally:
            filler.unlink(missing_ok=True)  # healed however the step ends
            window.end = run.now()
        run.note("store disk freed")


def _punch_out(site: SiteSpec, pid: int) -> bool:
    return site.mode == "punch-out" or (site.mode == "mixed" and pid % 2 == 1)


@toml_table
class RogueStep(StepBase):
    """Rogue peers dial the VIP claiming to be ``panel`` (P7), or send garbage (P6); each
    records what it got. ``replay`` sends a genuine session recorded on ``group``'s VIP
    proxy (a group with punch-out panels) on a new connection."""

    do: Literal["rogue"] = "rogue"
    kinds: tuple[RogueKind, ...] = tuple(RogueKind)
    #: The panel a rogue claims to be (default: the site's first).
    panel: StrictInt | None = None
    #: Where ``replay`` finds its recording (default: the first group with a punch-out panel).
    group: StrictStr | None = None

    def check(self, site: SiteSpec, duration: float) -> None:
        super().check(site, duration)
        if not self.kinds:
            raise refuse("name at least one kind of rogue", "kinds")
        if not site.tls and any(k.needs_tls for k in self.kinds):
            tls_only = ", ".join(str(k) for k in self.kinds if k.needs_tls)
            raise refuse(f"{tls_only} need a TLS site ([site] tls = true); without TLS only garbage applies", "kinds")
        if self.panel is not None:
            problem = _missing_panel((self.panel,), site.ids)
            if problem:
                raise refuse(problem, "panel")
        if len(site.ids) < 2 and RogueKind.ID_MISMATCH in self.kinds:
            raise refuse("id-mismatch needs a second panel whose certificate it presents", "kinds")

    def _replay_group(self, run: ScenarioRun) -> str:
        site = run.scenario.site
        for group in run.scenario.groups:
            if (self.group in (None, group.name)) and any(_punch_out(site, pid) for pid in group.panels):
                return group.name
        raise ValueError(
            f"rogue replay: {'group ' + repr(self.group) if self.group else 'no group'} has a punch-out panel "
            "whose session the VIP proxy could record"
        )

    async def apply(self, run: ScenarioRun, nursery: trio.Nursery) -> None:
        site = run.scenario.site
        claimed = self.panel if self.panel is not None else site.ids.start
        other = next(pid for pid in site.ids if pid != claimed) if len(site.ids) > 1 else claimed
        for index, kind in enumerate(self.kinds):
            recording = b""
            if kind is RogueKind.REPLAY:
                recording = run.hub.proxy(f"{self._replay_group(run)}.vip").recording()
            outcome = await attempt_rogue(
                kind,
                address=run.vip_address,
                panel_id=claimed,
                pki_dir=None if run.site.insecure else run.site.pki,
                other_panel=other,
                workdir=run.workdir,
                recording=recording,
                seed=run.seed * 100 + index,
            )
            run.rogues.append(outcome)
            run.note(f"rogue {outcome.describe()}")


_STEP_TYPES = (
    KillStep,
    StopStep,
    ContStep,
    RestartStep,
    OutageStep,
    SwitchoverStep,
    DownStep,
    UpStep,
    ToxicStep,
    RemoveToxicStep,
    ResetPeerStep,
    PowerCycleStep,
    ClockStep,
    ConfigStep,
    ConfigStormStep,
    BurstStep,
    DiskFullStep,
    RogueStep,
    PowerOffStep,
    PowerOnStep,
    NicDownStep,
    NicUpStep,
    PartitionStep,
    HealStep,
    KillKeepalivedStep,
    CrashStep,
)

#: A ``[[timeline]]`` entry: the type its ``do`` names.
Step = Annotated[
    KillStep
    | StopStep
    | ContStep
    | RestartStep
    | OutageStep
    | SwitchoverStep
    | DownStep
    | UpStep
    | ToxicStep
    | RemoveToxicStep
    | ResetPeerStep
    | PowerCycleStep
    | ClockStep
    | ConfigStep
    | ConfigStormStep
    | BurstStep
    | DiskFullStep
    | RogueStep
    | PowerOffStep
    | PowerOnStep
    | NicDownStep
    | NicUpStep
    | PartitionStep
    | HealStep
    | KillKeepalivedStep
    | CrashStep,
    Field(discriminator="do"),
]

#: Each action (``do``) and its step type; docs/scenarios.md has the table.
ACTIONS: dict[str, type[StepBase]] = {t.action(): t for t in _STEP_TYPES}

# The union and the table must agree (a type left out of one is a step nobody can write).
assert set(get_args(get_args(Step)[0])) == set(_STEP_TYPES)
