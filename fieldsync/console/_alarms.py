"""Unacknowledged alarms: the store's ``alarms`` (docs/protocol.md 7.6: every alarm once per
panel and seq, the alarm lane's copies as they arrive, ahead of their panels' backlogs, and
the alarms of every batch), less the operator's acknowledgements (the store's ``alarm_acks``).

The acknowledgements live in the site's store, on either engine, by the alarm's row: they
stay with the alarms they acknowledge, in the same backup and (mirrored storage) on the
replica, and every console of the site sees the same ones.

The scan is incremental so that a busy store costs little: ``alarm_feed`` returns what was
stored after the last scan's cursor (alarms, losses for each panel's tally of what it
declared lost, acknowledgements), in one snapshot. A book reads one database under one
epoch: its ids mean nothing on another database (a mirrored pair's other node, which may
have numbered different alarms with them) nor after a takeover (a rewound primary), so the
console reads a new book from the start when either changes (``generation``) and swaps it
in whole. An acknowledgement names the alarm by row, panel, seq and kind, and the store
records it only where all four match. Calls come from one thread at a time (the caller's
CapacityLimiter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import protocol
from protocol import EventKind
from storage import AlarmCursor, EventStoreInterface, StoredAlarm, StoreError, open_event_store

__all__ = ["ALARM_KINDS", "LOSS_KINDS", "Alarm", "AlarmBook"]

#: Records that need an operator's eye: the protocol's alarm kinds (7.6); the declared gaps
#: among them count events (``Alarm.count``).
ALARM_KINDS = protocol.ALARM_KINDS
LOSS_KINDS = protocol.GAP_KINDS
#: The kinds whose ``aux`` counts events: the gaps, and what a full buffer refused.
_COUNTED = frozenset(int(k) for k in (*LOSS_KINDS, EventKind.EVENTS_REFUSED))
#: The most open alarms kept in memory; older ones are counted, not listed.
MAX_OPEN = 10_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Alarm:
    """One alarm: an event (``seq`` its seq) or a declared loss (``seq`` its first seq, ``count`` events).

    ``id`` is its row in the store's ``alarms``: the key, as a gap marker may share an alarm's
    seq and a panel that lost its counter numbers new alarms with the seqs of old ones."""

    id: int
    panel_id: int
    seq: int
    kind: EventKind
    time_us: int
    received_us: int
    door: int = 0
    count: int = 0

    @classmethod
    def from_stored(cls, stored: StoredAlarm) -> Alarm:
        record = stored.record
        return cls(
            id=stored.order,
            panel_id=stored.panel_id,
            seq=record.seq,
            kind=record.kind,
            time_us=record.time_us,
            received_us=stored.received_us,
            door=record.door,
            count=record.aux if record.kind in _COUNTED else 0,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "panel_id": self.panel_id,
            "seq": self.seq,
            "kind": self.kind.name,
            "time_us": self.time_us,
            "received_us": self.received_us,
            "door": self.door,
            "count": self.count,
        }


@dataclasses.dataclass(slots=True)
class PanelTally:
    """What a panel declared it lost or refused, summed over every record seen."""

    dropped: int = 0
    lost: int = 0
    refused: int = 0


class AlarmBook:
    """The open alarms of one site's store, and the operator's acknowledgements.

    Raises (from every method):
        StoreError: the store cannot be read or written (the message names the file or database).
    """

    def __init__(self, target: Path | str) -> None:
        if isinstance(target, Path) and not target.exists():
            raise StoreError(target, "the site's store does not exist (no node has run on this site, or db is wrong)")
        self.target = target
        # A short wait for a synchronous standby: an acknowledgement on a primary whose
        # standby is gone is told so in seconds, not held for the nodes' 10.
        self._store: EventStoreInterface = open_event_store(target, commit_timeout=3.0)
        try:
            #: The store's epoch when this book began reading: ``(target, epoch)`` is its generation.
            self.epoch = self._store.epoch
        except BaseException:
            self._store.close()
            raise
        self._cursor = AlarmCursor()
        self._acked: set[int] = set()
        self.open: dict[int, Alarm] = {}
        self.trimmed = 0
        self.tally: dict[int, PanelTally] = {}

    def __repr__(self) -> str:
        return f"<AlarmBook {self.target} epoch {self.epoch}: {len(self.open)} open>"

    def close(self) -> None:
        self._store.close()

    def current(self, target: Path | str) -> bool:
        """Whether this book still reads the site's store: the same database, the same epoch."""
        return target == self.target and self._store.epoch == self.epoch

    def scan(self) -> None:
        """Take in what was stored since the last scan."""
        while True:
            feed = self._store.alarm_feed(self._cursor)
            self._cursor = feed.cursor
            for alarm_id in feed.acked:
                self._acked.add(alarm_id)
                self.open.pop(alarm_id, None)
            for stored in feed.alarms:
                alarm = Alarm.from_stored(stored)
                if alarm.kind is EventKind.EVENTS_REFUSED:
                    self.tally.setdefault(alarm.panel_id, PanelTally()).refused += stored.record.aux
                if alarm.id not in self._acked:
                    self.open[alarm.id] = alarm
            for panel_id, kind, count in feed.losses:
                tally = self.tally.setdefault(panel_id, PanelTally())
                if kind is EventKind.BUFFER_OVERFLOW:
                    tally.dropped += count
                else:
                    tally.lost += count
            self._trim()
            if not feed.more:
                return

    def _trim(self) -> None:
        if len(self.open) > MAX_OPEN:
            oldest = sorted(self.open.values(), key=lambda a: a.received_us)[: len(self.open) - MAX_OPEN]
            for alarm in oldest:
                del self.open[alarm.id]
            self.trimmed += len(oldest)

    def acknowledge(self, keys: Iterable[tuple[int, int, int, EventKind]], *, by: str, now_us: int) -> int:
        """Record the operator's acknowledgement of these open alarms, each (id, panel, seq,
        kind) as the page listed it: one this book lists otherwise (a listing of before a
        failover) is left alone, here and by the store (which this book may no longer read
        as it is: a failover, a takeover since its last scan). How many the store recorded."""
        alarms = []
        for alarm_id, panel_id, seq, kind in dict.fromkeys(keys):
            alarm = self.open.get(alarm_id)
            if alarm is not None and (alarm.panel_id, alarm.seq, alarm.kind) == (panel_id, seq, kind):
                alarms.append(alarm)
        if not alarms:
            return 0
        recorded = self._store.acknowledge_alarms(
            [(a.id, a.panel_id, a.seq, int(a.kind)) for a in alarms], by=by, at_us=now_us
        )
        for alarm in alarms:  # acknowledged now, or before by another console
            self._acked.add(alarm.id)
            del self.open[alarm.id]
        return recorded

    def newest(self, limit: int) -> list[Alarm]:
        return sorted(self.open.values(), key=lambda a: (a.received_us, a.id), reverse=True)[:limit]
