"""The access-control configuration a server pushes to its panels.

These are the record types of the configuration: who may open which door when
(cardholders, access levels, schedules) and how each door behaves (door mode).
A change travels as a tuple of operations (``ConfigOp``); a snapshot is the
tuple of ``Put*`` operations that rebuilds the whole state from empty.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TypeAlias

from ._records import U64_MAX, _check_range

__all__ = [
    "MAX_LEVELS_PER_CARDHOLDER",
    "AccessLevel",
    "Cardholder",
    "ConfigOp",
    "DeleteAccessLevel",
    "DeleteCardholder",
    "DeleteSchedule",
    "Door",
    "DoorMode",
    "Interval",
    "LevelEntry",
    "PutAccessLevel",
    "PutCardholder",
    "PutDoor",
    "PutSchedule",
    "Schedule",
]

MAX_LEVELS_PER_CARDHOLDER = 32
MAX_INTERVALS_PER_SCHEDULE = 16
MAX_ENTRIES_PER_LEVEL = 64
MINUTES_PER_DAY = 24 * 60


class DoorMode(enum.IntEnum):
    """How a door reacts to a card (u8 on the wire)."""

    CARD = 1  # card alone opens, subject to levels and schedules
    CARD_AND_PIN = 2
    LOCKED = 3  # nobody opens (lockdown)
    UNLOCKED = 4  # free passage; cards are still logged as granted


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """A daily time window: on the weekdays in ``days`` (bit 0 = Monday), ``start``..``end`` minutes."""

    days: int
    start: int
    end: int

    def __post_init__(self) -> None:
        _check_range("days", self.days, 0, 0x7F)
        _check_range("start", self.start, 0, MINUTES_PER_DAY)
        _check_range("end", self.end, 0, MINUTES_PER_DAY)
        if self.end <= self.start:
            raise ValueError(f"interval end {self.end} must be after start {self.start}")

    def contains(self, weekday: int, minute: int) -> bool:
        return bool(self.days >> weekday & 1) and self.start <= minute < self.end


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    id: int
    intervals: tuple[Interval, ...]

    def __post_init__(self) -> None:
        _check_range("schedule id", self.id, 1, 0xFFFF)
        _check_len("intervals", self.intervals, MAX_INTERVALS_PER_SCHEDULE)

    def contains(self, weekday: int, minute: int) -> bool:
        return any(i.contains(weekday, minute) for i in self.intervals)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LevelEntry:
    door: int
    schedule: int

    def __post_init__(self) -> None:
        _check_range("door", self.door, 0, 255)
        _check_range("schedule", self.schedule, 1, 0xFFFF)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AccessLevel:
    """Which doors a level opens, each during which schedule."""

    id: int
    entries: tuple[LevelEntry, ...]

    def __post_init__(self) -> None:
        _check_range("level id", self.id, 1, 0xFFFF)
        _check_len("entries", self.entries, MAX_ENTRIES_PER_LEVEL)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cardholder:
    """A card the panel knows. ``valid_until == 0`` means no expiry; ``pin == 0`` none."""

    card: int
    levels: tuple[int, ...]
    pin: int = 0
    valid_from_us: int = 0
    valid_until_us: int = 0

    def __post_init__(self) -> None:
        _check_range("card", self.card, 1, U64_MAX)
        _check_range("pin", self.pin, 0, 99_999_999)
        _check_range("valid_from_us", self.valid_from_us, 0, U64_MAX)
        _check_range("valid_until_us", self.valid_until_us, 0, U64_MAX)
        _check_len("levels", self.levels, MAX_LEVELS_PER_CARDHOLDER)
        for level in self.levels:
            _check_range("level", level, 1, 0xFFFF)

    def valid_at(self, now_us: int) -> bool:
        if now_us < self.valid_from_us:
            return False
        return self.valid_until_us == 0 or now_us < self.valid_until_us


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Door:
    door: int
    mode: DoorMode = DoorMode.CARD

    def __post_init__(self) -> None:
        _check_range("door", self.door, 0, 255)
        object.__setattr__(self, "mode", DoorMode(self.mode))


# Operations -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PutCardholder:
    cardholder: Cardholder


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteCardholder:
    card: int

    def __post_init__(self) -> None:
        _check_range("card", self.card, 1, U64_MAX)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PutSchedule:
    schedule: Schedule


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteSchedule:
    id: int

    def __post_init__(self) -> None:
        _check_range("schedule id", self.id, 1, 0xFFFF)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PutDoor:
    door: Door


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PutAccessLevel:
    level: AccessLevel


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAccessLevel:
    id: int

    def __post_init__(self) -> None:
        _check_range("level id", self.id, 1, 0xFFFF)


ConfigOp: TypeAlias = (
    PutCardholder | DeleteCardholder | PutSchedule | DeleteSchedule | PutDoor | PutAccessLevel | DeleteAccessLevel
)


def _check_len(name: str, items: tuple[object, ...], limit: int) -> None:
    if not isinstance(items, tuple):
        raise TypeError(f"{name} must be a tuple, got {type(items).__name__}")
    if len(items) > limit:
        raise ValueError(f"{len(items)} {name} exceed the limit of {limit}")
