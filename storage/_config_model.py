"""The configuration as a value: apply operations, take snapshots, compare.

``ConfigState`` is immutable; ``apply`` returns a new state or raises and
leaves the old one untouched, which is what makes a panel's apply atomic. The
JSON form is what the server's config store keeps in SQLite, so the change log
is readable with the sqlite3 shell.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from protocol import (
    AccessLevel,
    Cardholder,
    ConfigOp,
    DeleteAccessLevel,
    DeleteCardholder,
    DeleteSchedule,
    Door,
    DoorMode,
    Interval,
    LevelEntry,
    PutAccessLevel,
    PutCardholder,
    PutDoor,
    PutSchedule,
    Schedule,
    config_digest,
)

__all__ = ["ConfigState", "op_from_json", "op_to_json"]


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigState:
    """Cardholders, schedules, access levels and doors at one version."""

    cardholders: Mapping[int, Cardholder] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    schedules: Mapping[int, Schedule] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    levels: Mapping[int, AccessLevel] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    doors: Mapping[int, Door] = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def apply(self, ops: Iterable[ConfigOp]) -> ConfigState:
        cardholders = dict(self.cardholders)
        schedules = dict(self.schedules)
        levels = dict(self.levels)
        doors = dict(self.doors)
        for op in ops:
            match op:
                case PutCardholder(cardholder=c):
                    cardholders[c.card] = c
                case DeleteCardholder(card=card):
                    cardholders.pop(card, None)
                case PutSchedule(schedule=s):
                    schedules[s.id] = s
                case DeleteSchedule(id=ident):
                    schedules.pop(ident, None)
                case PutAccessLevel(level=lv):
                    levels[lv.id] = lv
                case DeleteAccessLevel(id=ident):
                    levels.pop(ident, None)
                case PutDoor(door=d):
                    doors[d.door] = d
                case _:
                    raise TypeError(f"not a config operation: {op!r}")
        return ConfigState(
            MappingProxyType(cardholders),
            MappingProxyType(schedules),
            MappingProxyType(levels),
            MappingProxyType(doors),
        )

    def snapshot_ops(self) -> tuple[ConfigOp, ...]:
        """``Put*`` operations that rebuild this state from empty, in a stable order."""
        ops: list[ConfigOp] = []
        ops += [PutSchedule(schedule=self.schedules[k]) for k in sorted(self.schedules)]
        ops += [PutAccessLevel(level=self.levels[k]) for k in sorted(self.levels)]
        ops += [PutDoor(door=self.doors[k]) for k in sorted(self.doors)]
        ops += [PutCardholder(cardholder=self.cardholders[k]) for k in sorted(self.cardholders)]
        return tuple(ops)

    def digest(self) -> bytes:
        """SHA-256 of the canonical form (docs/protocol.md 8.1): equal states, equal digests."""
        return config_digest(self.snapshot_ops())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigState):
            return NotImplemented
        return (
            dict(self.cardholders) == dict(other.cardholders)
            and dict(self.schedules) == dict(other.schedules)
            and dict(self.levels) == dict(other.levels)
            and dict(self.doors) == dict(other.doors)
        )

    def __hash__(self) -> int:
        return hash(self.snapshot_ops())


def op_to_json(op: ConfigOp) -> dict[str, Any]:
    body = dataclasses.asdict(op)
    return {"op": type(op).__name__, **body}


_OPS: dict[str, Any] = {
    cls.__name__: cls
    for cls in (
        PutCardholder,
        DeleteCardholder,
        PutSchedule,
        DeleteSchedule,
        PutDoor,
        PutAccessLevel,
        DeleteAccessLevel,
    )
}


def op_from_json(data: Mapping[str, Any]) -> ConfigOp:
    name = data["op"]
    if name == "PutCardholder":
        c = data["cardholder"]
        return PutCardholder(cardholder=Cardholder(**{**c, "levels": tuple(c["levels"])}))
    if name == "PutSchedule":
        s = data["schedule"]
        return PutSchedule(schedule=Schedule(id=s["id"], intervals=tuple(Interval(**i) for i in s["intervals"])))
    if name == "PutAccessLevel":
        lv = data["level"]
        return PutAccessLevel(level=AccessLevel(id=lv["id"], entries=tuple(LevelEntry(**e) for e in lv["entries"])))
    if name == "PutDoor":
        d = data["door"]
        return PutDoor(door=Door(door=d["door"], mode=DoorMode(d["mode"])))
    if name in _OPS:
        fields = {k: v for k, v in data.items() if k != "op"}
        op: ConfigOp = _OPS[name](**fields)
        return op
    raise ValueError(f"unknown config operation {name!r}")


def ops_to_text(ops: Iterable[ConfigOp]) -> str:
    return json.dumps([op_to_json(op) for op in ops], separators=(",", ":"))


def ops_from_text(text: str) -> tuple[ConfigOp, ...]:
    return tuple(op_from_json(item) for item in json.loads(text))
