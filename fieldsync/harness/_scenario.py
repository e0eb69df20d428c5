"""Scenario files: a site, a cluster, workloads and a timeline of faults, in TOML.

Every key is documented in ``docs/scenarios.md``. A file is checked in full
before anything runs: an unknown key, a bad time, an action on a panel or a
group that does not exist is a ``ScenarioError`` that names the file, the line
and the key. Each table is a model (``fieldsync.site.toml_table``) that declares
its keys and their defaults once; the timeline's steps are the types of
``_steps``, one per action.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from storage import OverflowPolicy

from ..site import Size, TomlDocument, TomlFileError, TomlTable, check_intervals, refuse, toml_table
from ._steps import ACTIONS, NODES_GROUP, REPLICATION_GROUP, Step, Time, parse_panels, parse_time

__all__ = [
    "ClusterSpec",
    "GroupSpec",
    "Scenario",
    "ScenarioError",
    "SiteSpec",
    "load_scenario",
    "parse_scenario",
    "parse_time",
]


class ScenarioError(TomlFileError):
    """A scenario file says something the runner cannot do; the message names file, line and key."""


_GROUP_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@toml_table
class GroupSpec(TomlTable):
    """A ``[[site.groups]]`` entry: panels whose links share fault proxies."""

    name: StrictStr
    #: In the file: ``"1-20"``, ``"3,7,9"``, ``"1-5,9"`` or ``"all"`` of the site's panels.
    panels: tuple[StrictInt, ...]

    @field_validator("name")
    @classmethod
    def _a_name(cls, name: str) -> str:
        if not _GROUP_NAME.fullmatch(name):
            raise ValueError("a group needs a name of letters, digits, '_', '.', '-'")
        if name == NODES_GROUP:
            raise ValueError(f"{NODES_GROUP!r} is the heartbeat link between the nodes")
        if name == REPLICATION_GROUP:
            raise ValueError(f"{REPLICATION_GROUP!r} is mirrored storage's replication link")
        return name


@toml_table
class SiteSpec(TomlTable):
    """``[site]``: the scenario's panels and what they run with."""

    panels: StrictInt = Field(default=20, ge=1, le=2000)
    first_id: StrictInt = Field(default=1, ge=1)
    mode: Literal["punch-out", "host-initiated", "mixed"] = "mixed"
    buffer: Size = 256 * 1024
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    flash: StrictBool = False
    tls: StrictBool = True
    rate: StrictFloat = Field(default=2.0, ge=0)
    cardholders: StrictInt = Field(default=50, ge=0)
    doors: StrictInt = Field(default=4, ge=1)
    #: The store on a tmpfs of this many bytes (root only); 0: the work directory's disk.
    store_size: Size = 0
    #: The sessions' heartbeat interval (the node's WELCOME); an end that hears nothing for 3
    #: intervals gives up: how soon a panel notices a silent server.
    heartbeat_ms: StrictInt = Field(default=1000, ge=10, le=60_000)
    #: A quiet panel's probe interval, at least ``heartbeat_ms``: a quiet panel notices a silent
    #: server within ``idle_ms`` + 3 heartbeats, a busy one within 3 heartbeats (docs/protocol.md 9.1).
    idle_ms: StrictInt = Field(default=10_000, ge=10, le=600_000)
    groups: tuple[GroupSpec, ...] = ()

    @property
    def ids(self) -> range:
        return range(self.first_id, self.first_id + self.panels)

    @field_validator("groups", mode="before")
    @classmethod
    def _panels_of_this_site(cls, groups: Any, info: ValidationInfo) -> Any:
        # A file names a group's panels as text ("1-5", "all"): resolved against this site's.
        if not isinstance(groups, list) or "panels" not in info.data or "first_id" not in info.data:
            return groups  # code passes ids; a bad panels or first_id has its own error
        known = range(info.data["first_id"], info.data["first_id"] + info.data["panels"])
        resolved = []
        for index, group in enumerate(groups):
            if isinstance(group, dict) and "panels" in group:
                try:
                    group = {**group, "panels": parse_panels(group["panels"], known)}
                except ValueError as exc:
                    raise refuse(str(exc), index, "panels") from None
            resolved.append(group)
        return resolved

    @field_validator("groups")
    @classmethod
    def _one_group_per_panel(cls, groups: tuple[GroupSpec, ...]) -> tuple[GroupSpec, ...]:
        for index, group in enumerate(groups):
            earlier = groups[:index]
            if any(g.name == group.name for g in earlier):
                raise refuse(f"group {group.name!r} is defined twice", index, "name")
            taken = {pid for g in earlier for pid in g.panels} & set(group.panels)
            if taken:
                raise refuse(f"panel {min(taken)} is already in another group", index, "panels")
        return groups

    @model_validator(mode="after")
    def _idle_at_least_heartbeat(self) -> SiteSpec:
        check_intervals(self.heartbeat_ms, self.idle_ms)
        return self


@toml_table
class ClusterSpec(TomlTable):
    """``[cluster]``: how the two nodes run."""

    stonith: StrictBool = True
    failback: StrictBool = False
    restart: StrictBool = True
    restart_delay: Time = 1.0
    lease: Time = 1.0
    #: Where the nodes run: ``process`` (two processes on loopback) or ``netns`` (the lab's
    #: hosts, keepalived moving the VIP; root). ``fieldsync scenario run --backend`` overrides it.
    backend: Literal["process", "netns"] = "process"
    #: The netns backend's VRRP advertisement interval (VRRPv3: 0.01 .. 40.95 s).
    advert_int: Time = 0.1
    #: Mirrored storage: each node on its own PostgreSQL (started for the run), ``sync`` or
    #: ``async``; None: one shared SQLite store under both nodes.
    mirror: Literal["sync", "async"] | None = None
    #: Mirrored storage with a witness (``fieldsync witness``, a process of the run on a third
    #: address: 127.0.0.33, or the lab's panel host): the primary may then serve alone.
    witness: StrictBool = False
    #: What an ACK waits for (``[site] ingest`` of the run's site): ``rows``, or ``log`` (the
    #: batch log, its rows materialized behind the ACK; on either engine, mirrored too).
    ingest: Literal["rows", "log"] = "rows"
    #: ``log``: how long the commits must be quiet before the materializer takes a step, and
    #: the log's oldest batch's age at which it goes anyway (``[site]`` of a site file).
    materialize_idle: Time = 0.05
    max_log_age: Time = 2.0
    #: Parked sessions (docs/protocol.md 6.3, ``[site] park``): the standby holds a session of
    #: every TCP panel at its own address, and a takeover is a TAKEOVER on it.
    park: StrictBool = False

    @model_validator(mode="after")
    def _witness_needs_a_mirror(self) -> ClusterSpec:
        if self.witness and self.mirror != "sync":
            raise ValueError('a witness serves a synchronous mirror: mirror = "sync"')
        return self

    @field_validator("advert_int")
    @classmethod
    def _a_vrrp_interval(cls, value: float) -> float:
        if not 0.01 <= value <= 40.95:
            raise ValueError("VRRPv3 advertises every 0.01 .. 40.95 s")
        return round(value, 2)


@toml_table
class Scenario(TomlTable):
    """A whole scenario file (``path``: where it was read from; None when made by code)."""

    _not_in_file: ClassVar[frozenset[str]] = frozenset({"path"})

    name: StrictStr
    path: Path | None = None
    description: StrictStr = ""
    duration: Time = 20.0
    seed: StrictInt = 1
    drain_timeout: Time = 60.0
    site: SiteSpec = SiteSpec()
    cluster: ClusterSpec = ClusterSpec()
    #: In time order.
    timeline: tuple[Step, ...] = ()

    @property
    def groups(self) -> tuple[GroupSpec, ...]:
        return self.site.groups

    @property
    def needs_two_nodes(self) -> bool:
        """Steps only the process cluster can take: SIGSTOP/SIGCONT, switchover, the heartbeat link."""
        return any(s.needs_two_nodes for s in self.timeline)

    def group(self, name: str) -> GroupSpec:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @field_validator("timeline", mode="before")
    @classmethod
    def _known_actions(cls, steps: Any) -> Any:
        if not isinstance(steps, list):
            return steps
        for index, raw in enumerate(steps):
            if not isinstance(raw, dict):
                raise refuse("each [[timeline]] entry is a table", index)
            if "do" not in raw:
                raise refuse(f"a step needs 'do' (one of {', '.join(ACTIONS)})", index)
            do = raw["do"]
            if do not in ACTIONS:
                close = difflib.get_close_matches(str(do), list(ACTIONS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(ACTIONS)})"
                raise refuse(f"unknown action {do!r}{hint}", index, "do")
        return steps

    @field_validator("timeline")
    @classmethod
    def _steps_fit_the_scenario(cls, steps: tuple[Step, ...], info: ValidationInfo) -> tuple[Step, ...]:
        site, duration = info.data.get("site"), info.data.get("duration")
        if site is None or duration is None:
            return steps  # their own error is the one to report
        for index, step in enumerate(steps):
            try:
                step.check(site, duration)
            except PydanticCustomError as exc:
                context = exc.context or {}
                raise refuse(str(context["reason"]), index, *context["at"]) from None
        return tuple(sorted(steps, key=lambda s: s.at))


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    return parse_scenario(text, path)


def parse_scenario(text: str, path: Path | None = None) -> Scenario:
    """Check a whole scenario and build it.

    Raises:
        ScenarioError: naming the file, line and key of the first problem.
    """
    doc = TomlDocument.parse(text, str(path) if path is not None else "<scenario>", error=ScenarioError)
    data = dict(doc.data)
    if not data.get("name"):
        data["name"] = path.stem if path is not None else "scenario"
    scenario = doc.validate(Scenario, data)
    return dataclasses.replace(scenario, path=path) if path is not None else scenario
