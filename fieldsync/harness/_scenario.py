"""Scenario files: a site, a cluster, workloads and a timeline of faults, in TOML.

Every key is documented in ``docs/scenarios.md``. A file is checked in full
before anything runs: an unknown key, a bad time, an action on a panel or a
group that does not exist is a ``ScenarioError`` that names the file, the line
and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from storage import OverflowPolicy

__all__ = [
    "ACTIONS",
    "GroupSpec",
    "NODES_GROUP",
    "Scenario",
    "ScenarioError",
    "SiteSpec",
    "Step",
    "load_scenario",
    "parse_scenario",
    "parse_time",
]


class ScenarioError(Exception):
    """A scenario file says something the runner cannot do; the message names file, line and key."""


_TIME = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(text: Any) -> float:
    """``"12s"`` -> 12.0, ``"500ms"`` -> 0.5, ``"-2m"`` -> -120.0 (a unit is required)."""
    if isinstance(text, str):
        match = _TIME.match(text)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f'{text!r} is not a time (examples: "12s", "500ms", "2m")')


def parse_panels(text: Any, known: range) -> tuple[int, ...]:
    """``"1-20"``, ``"3"``, ``"1-5,9"`` or ``"all"`` -> panel ids, each of which must exist."""
    if text == "all":
        return tuple(known)
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'{text!r} is not a panel list (examples: "1-20", "3,7", "all")')
    ids: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f'{text!r} is not a panel list (examples: "1-20", "3,7", "all")')
        first, last = int(lo), int(hi) if sep else int(lo)
        ids.extend(range(first, last + 1))
    missing = sorted(set(ids) - set(known))
    if missing:
        raise ValueError(f"panel {missing[0]} does not exist (the site has panels {known.start}..{known.stop - 1})")
    return tuple(dict.fromkeys(ids))


#: The built-in group of the heartbeat link between the nodes (UDP fault proxies).
NODES_GROUP = "nodes"
#: Actions the in-process tier (one node) cannot take.
TWO_NODE_ACTIONS = frozenset({"stop", "cont", "switchover"})

#: Each action and its keys (beside ``at`` and ``do``); documented in docs/scenarios.md.
ACTIONS: dict[str, dict[str, str]] = {
    "kill": {"node": "active"},
    "stop": {"node": "active"},
    "cont": {"node": "active"},
    "restart": {"node": "active"},
    "outage": {"for": ""},
    "switchover": {"to": ""},
    "down": {"group": ""},
    "up": {"group": ""},
    "toxic": {"group": "", "type": "", "stream": "downstream", "name": "", "toxicity": "", "attributes": "", "for": ""},
    "remove_toxic": {"group": "", "name": ""},
    "reset_peer": {"group": ""},
    "power_cycle": {"panels": ""},
    "clock": {"panels": "", "skew": "", "jump": ""},
    "config": {"cardholders": "", "remove": "", "lock_door": "", "unlock_door": ""},
    "config_storm": {"count": "", "every": ""},
    "burst": {"panels": "all", "count": "", "spread": "10s"},
    "disk_full": {"for": ""},
}
_NODE_TARGETS = {"active", "standby", "A", "B"}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    at: float
    do: str
    args: dict[str, Any]
    line: int

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.args.items() if k not in ("attributes",))
        return f"{self.do}({shown})" if shown else self.do


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    name: str
    panels: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SiteSpec:
    panels: int = 20
    first_id: int = 1
    mode: str = "mixed"
    buffer: int = 256 * 1024
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    flash: bool = False
    tls: bool = True
    rate: float = 2.0
    cardholders: int = 50
    doors: int = 4
    #: The store on a tmpfs of this many bytes (root only); 0: the work directory's disk.
    store_size: int = 0

    @property
    def ids(self) -> range:
        return range(self.first_id, self.first_id + self.panels)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    stonith: bool = True
    failback: bool = False
    restart: bool = True
    restart_delay: float = 1.0
    lease: float = 1.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    path: Path | None
    description: str = ""
    duration: float = 20.0
    seed: int = 1
    drain_timeout: float = 60.0
    site: SiteSpec = SiteSpec()
    cluster: ClusterSpec = ClusterSpec()
    groups: tuple[GroupSpec, ...] = ()
    timeline: tuple[Step, ...] = ()

    @property
    def needs_two_nodes(self) -> bool:
        """Steps only the process cluster can take: SIGSTOP/SIGCONT, switchover, the heartbeat link."""
        return any(s.do in TWO_NODE_ACTIONS or s.args.get("group") == NODES_GROUP for s in self.timeline)

    def group(self, name: str) -> GroupSpec:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)


_TOP = {"name", "description", "duration", "seed", "drain_timeout", "site", "cluster", "timeline"}
_SITE = {f.name for f in dataclasses.fields(SiteSpec)} | {"groups"}
_CLUSTER = {f.name for f in dataclasses.fields(ClusterSpec)}
_MODES = {"punch-out", "host-initiated", "mixed"}


class _Locator:
    """Line numbers for keys, from the raw text (tomllib keeps none)."""

    def __init__(self, text: str, where: str) -> None:
        self.where = where
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if stripped.startswith("["):
                self.headers.append((number, stripped.strip("[] ").split("#")[0].strip()))

    def _span(self, table: str, index: int | None) -> tuple[int, int]:
        starts = [n for n, name in self.headers if name == table] if table else [0]
        if not starts:
            return 1, len(self.lines)
        start = starts[index or 0] if (index or 0) < len(starts) else starts[-1]
        following = [n for n, _ in self.headers if n > start]
        return start, (following[0] - 1 if following else len(self.lines))

    def line(self, table: str, key: str | None = None, index: int | None = None) -> int:
        start, end = self._span(table, index)
        if key is not None:
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            for number in range(max(start, 1), end + 1):
                if pattern.match(self.lines[number - 1]):
                    return number
        return max(start, 1)

    def error(self, table: str, key: str | None, message: str, index: int | None = None) -> ScenarioError:
        shown = ".".join(p for p in (table + (f"[{index}]" if index is not None else ""), key or "") if p)
        return ScenarioError(f"{self.where}:{self.line(table, key, index)}: {shown}: {message}")


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
    where = str(path) if path is not None else "<scenario>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    loc = _Locator(text, where)
    for key in data:
        if key not in _TOP:
            raise loc.error("", key, f"unknown key (known: {', '.join(sorted(_TOP))})")

    def get_time(table: str, tbl: dict[str, Any], key: str, default: float, index: int | None = None) -> float:
        if key not in tbl:
            return default
        try:
            value = parse_time(tbl[key])
        except ValueError as exc:
            raise loc.error(table, key, str(exc), index) from None
        if value < 0:
            raise loc.error(table, key, "must not be negative", index)
        return value

    site_t = data.get("site", {})
    for key in site_t:
        if key not in _SITE:
            raise loc.error("site", key, f"unknown key (known: {', '.join(sorted(_SITE))})")
    try:
        site = SiteSpec(
            panels=int(site_t.get("panels", 20)),
            first_id=int(site_t.get("first_id", 1)),
            mode=str(site_t.get("mode", "mixed")),
            buffer=_size(site_t.get("buffer", 256 * 1024)),
            policy=OverflowPolicy(site_t.get("policy", "drop_oldest")),
            flash=bool(site_t.get("flash", False)),
            tls=bool(site_t.get("tls", True)),
            rate=float(site_t.get("rate", 2.0)),
            cardholders=int(site_t.get("cardholders", 50)),
            doors=int(site_t.get("doors", 4)),
            store_size=_size(site_t.get("store_size", 0)),
        )
    except (ValueError, TypeError) as exc:
        bad = next((k for k in ("policy", "buffer", "panels", "rate") if k in site_t and k in str(exc)), None)
        raise loc.error("site", bad or _guess_key(site_t, exc), str(exc)) from None
    if site.mode not in _MODES:
        raise loc.error("site", "mode", f"{site.mode!r} is not one of {', '.join(sorted(_MODES))}")
    if not 1 <= site.panels <= 2000 or site.first_id < 1 or site.rate < 0:
        raise loc.error("site", "panels", "panels must be 1..2000, first_id >= 1 and rate >= 0")

    groups: list[GroupSpec] = []
    for index, g in enumerate(site_t.get("groups", [])):
        table = "site.groups"
        for key in g:
            if key not in ("name", "panels"):
                raise loc.error(table, key, "unknown key (known: name, panels)", index)
        name = g.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise loc.error(table, "name", "a group needs a name of letters, digits, '_', '.', '-'", index)
        try:
            ids = parse_panels(g.get("panels"), site.ids)
        except ValueError as exc:
            raise loc.error(table, "panels", str(exc), index) from None
        if any(x.name == name for x in groups):
            raise loc.error(table, "name", f"group {name!r} is defined twice", index)
        if name == NODES_GROUP:
            raise loc.error(table, "name", f"{NODES_GROUP!r} is the heartbeat link between the nodes", index)
        taken = {pid for x in groups for pid in x.panels} & set(ids)
        if taken:
            raise loc.error(table, "panels", f"panel {min(taken)} is already in another group", index)
        groups.append(GroupSpec(name=name, panels=ids))

    cluster_t = data.get("cluster", {})
    for key in cluster_t:
        if key not in _CLUSTER:
            raise loc.error("cluster", key, f"unknown key (known: {', '.join(sorted(_CLUSTER))})")
    cluster = ClusterSpec(
        stonith=_bool(loc, "cluster", cluster_t, "stonith", True),
        failback=_bool(loc, "cluster", cluster_t, "failback", False),
        restart=_bool(loc, "cluster", cluster_t, "restart", True),
        restart_delay=get_time("cluster", cluster_t, "restart_delay", 1.0),
        lease=get_time("cluster", cluster_t, "lease", 1.0),
    )

    duration = get_time("", data, "duration", 20.0)
    steps: list[Step] = []
    group_names = {g.name for g in groups} | {NODES_GROUP}
    for index, raw in enumerate(data.get("timeline", [])):
        table = "timeline"
        if not isinstance(raw, dict):
            raise loc.error(table, None, "each [[timeline]] entry is a table", index)
        do = raw.get("do")
        if do not in ACTIONS:
            raise loc.error(table, "do", f"unknown action {do!r} (known: {', '.join(ACTIONS)})", index)
        if "at" not in raw:
            raise loc.error(table, None, "a step needs 'at'", index)
        at = get_time(table, raw, "at", 0.0, index)
        if at > duration:
            raise loc.error(table, "at", f"{raw['at']} is after the scenario's duration ({duration:g}s)", index)
        allowed = ACTIONS[do]
        args: dict[str, Any] = {}
        for key, value in raw.items():
            if key in ("at", "do"):
                continue
            if key not in allowed:
                raise loc.error(
                    table, key, f"action {do!r} has no key {key!r} (it has: {', '.join(allowed) or 'none'})", index
                )
            args[key] = value
        for key, default in allowed.items():
            if key not in args and default:
                args[key] = default
        _check_step(loc, index, do, args, site, group_names, get_time)
        steps.append(Step(at=at, do=do, args=args, line=loc.line(table, "do", index)))
    name = data.get("name") or (path.stem if path is not None else "scenario")
    return Scenario(
        name=str(name),
        path=path,
        description=str(data.get("description", "")),
        duration=duration,
        seed=int(data.get("seed", 1)),
        drain_timeout=get_time("", data, "drain_timeout", 60.0),
        site=site,
        cluster=cluster,
        groups=tuple(groups),
        timeline=tuple(sorted(steps, key=lambda s: s.at)),
    )


def _check_step(
    loc: _Locator, index: int, do: str, args: dict[str, Any], site: SiteSpec, groups: set[str], get_time: Any
) -> None:
    table = "timeline"

    def fail(key: str | None, message: str) -> ScenarioError:
        return loc.error(table, key, message, index)

    if "node" in args and args["node"] not in _NODE_TARGETS:
        raise fail("node", f"{args['node']!r} is not one of active, standby, A, B")
    if do == "switchover" and args.get("to") not in ("A", "B"):
        raise fail("to", 'switchover needs to = "A" or "B"')
    if "group" in ACTIONS[do]:
        if "group" not in args:
            raise fail(None, f"action {do!r} needs 'group'")
        if args["group"] not in groups:
            known = ", ".join(sorted(groups)) or "none defined in [[site.groups]]"
            raise fail("group", f"no panel group {args['group']!r} (groups: {known})")
    if "panels" in args:
        try:
            args["panels"] = parse_panels(args["panels"], site.ids)
        except ValueError as exc:
            raise fail("panels", str(exc)) from None
    elif do in ("power_cycle", "clock"):
        raise fail(None, f"action {do!r} needs 'panels'")
    for key in ("for", "every", "spread", "skew", "jump"):
        if key in args:
            try:
                args[key] = parse_time(args[key])
            except ValueError as exc:
                raise fail(key, str(exc)) from None
            if key in ("for", "every", "spread") and args[key] <= 0:
                raise fail(key, "must be positive")
    if do == "disk_full":
        if "for" not in args:
            raise fail(None, "disk_full needs 'for' (how long the store's disk stays full)")
        if not site.store_size:
            raise fail(None, "disk_full needs [site] store_size (the store on a size-limited tmpfs)")
    if do == "outage" and "for" not in args:
        raise fail(None, "an outage needs 'for' (how long both nodes are down)")
    if do == "toxic":
        from ._proxy import DatagramProxy, FaultError, Toxic

        if "type" not in args:
            raise fail(None, "a toxic needs 'type'")
        try:
            Toxic.from_json(
                {
                    k: args[k]
                    for k in ("type", "stream", "toxicity", "attributes", "name")
                    if k in args and args[k] != ""
                }
            )
        except FaultError as exc:
            raise fail("type" if "type" in str(exc) else "attributes", str(exc)) from None
        if args["group"] == NODES_GROUP and args["type"] not in DatagramProxy.toxic_types:
            kinds = ", ".join(sorted(DatagramProxy.toxic_types))
            raise fail("type", f"the heartbeat link between the nodes is UDP: a toxic there is one of {kinds}")
    if do == "reset_peer" and args.get("group") == NODES_GROUP:
        raise fail("group", "the heartbeat link between the nodes is UDP: it has no connection to reset")
    if do == "remove_toxic" and not args.get("name"):
        raise fail(None, "remove_toxic needs the toxic's 'name'")
    if do == "clock" and "skew" not in args and "jump" not in args:
        raise fail(None, "a clock step needs 'skew' or 'jump'")
    for key in ("count", "cardholders", "remove", "lock_door", "unlock_door"):
        if key in args and (isinstance(args[key], bool) or not isinstance(args[key], int) or args[key] < 0):
            raise fail(key, f"must be a whole number >= 0, not {args[key]!r}")
    for key in ("lock_door", "unlock_door"):
        if key in args and args[key] >= site.doors:
            raise fail(key, f"door {args[key]} does not exist (the panels have doors 0..{site.doors - 1})")
    if do == "config" and not args:
        raise fail(None, "a config step needs cardholders, remove, lock_door or unlock_door")
    if do in ("config_storm", "burst") and "count" not in args:
        raise fail(None, f"{do} needs 'count'")
    if do == "config_storm" and "every" not in args:
        args["every"] = 0.1


def _bool(loc: _Locator, table: str, tbl: dict[str, Any], key: str, default: bool) -> bool:
    value = tbl.get(key, default)
    if not isinstance(value, bool):
        raise loc.error(table, key, f"must be true or false, not {value!r}")
    return value


def _size(value: Any) -> int:
    from ..site import SiteError, parse_size

    try:
        return parse_size(value)
    except SiteError as exc:
        raise ValueError(f"buffer: {exc}") from None


def _guess_key(table: dict[str, Any], exc: Exception) -> str | None:
    text = str(exc)
    for key, value in table.items():
        if repr(value) in text or str(value) in text:
            return key
    return None
