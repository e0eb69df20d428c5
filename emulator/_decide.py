"""Local access decisions: the panel's own judgement, with or without a host."""

from __future__ import annotations

import datetime

from protocol import DoorMode, EventFlags, EventKind
from storage import ConfigState

__all__ = ["decide"]


def decide(
    state: ConfigState, *, card: int, door: int, now_us: int, pin: int | None = None
) -> tuple[EventKind, EventFlags]:
    """Grant or deny ``card`` at ``door`` from the panel's configuration alone.

    Order of checks follows how panels report: door mode first (a locked-down
    door denies everyone), then the card, its validity, the PIN, then whether
    any of its access levels opens this door now.
    """
    flags = EventFlags.PIN_USED if pin is not None else EventFlags.NONE
    door_cfg = state.doors.get(door)
    mode = door_cfg.mode if door_cfg is not None else DoorMode.CARD
    if mode is DoorMode.LOCKED:
        return EventKind.DENIED_DOOR_MODE, flags
    if mode is DoorMode.UNLOCKED:
        return EventKind.ACCESS_GRANTED, flags
    holder = state.cardholders.get(card)
    if holder is None:
        return EventKind.DENIED_UNKNOWN_CARD, flags
    if not holder.valid_at(now_us):
        return EventKind.DENIED_EXPIRED, flags
    if mode is DoorMode.CARD_AND_PIN and (pin is None or pin != holder.pin):
        return EventKind.DENIED_PIN, flags
    when = datetime.datetime.fromtimestamp(now_us / 1e6, tz=datetime.UTC)
    weekday, minute = when.weekday(), when.hour * 60 + when.minute
    for level_id in holder.levels:
        level = state.levels.get(level_id)
        if level is None:
            continue
        for entry in level.entries:
            if entry.door != door:
                continue
            schedule = state.schedules.get(entry.schedule)
            if schedule is not None and schedule.contains(weekday, minute):
                return EventKind.ACCESS_GRANTED, flags
    return EventKind.DENIED_SCHEDULE, flags
