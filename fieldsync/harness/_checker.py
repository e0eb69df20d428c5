"""Check the promises from what the panels generated against what the store holds.

The panels' journals are the ground truth of what was generated (seq, kind,
door, card per boot); the store is what survived. An event the store lacks is
*lost* only if the panel had it acknowledged; otherwise it is still buffered,
declared dropped, or unknown (in flight when a fault hit). Jepsen's total-queue
checker is the model.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path

from emulator import Panel
from protocol import ALARM_KINDS, GAP_KINDS, EventKind
from storage import EventStoreInterface, Loss, StoredEvent, open_config_store, open_event_store

from ._rogue import ROGUE_CARD, RogueOutcome

#: The name under which an asynchronous mirror's loss is reported (never as P1 holding).
RPO = "RPO asynchronous mirror"

__all__ = [
    "RPO",
    "PanelVerdict",
    "Report",
    "check",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PanelVerdict:
    """One panel's events, every boot of it. Each generated event is in exactly one of
    ``generated_stored``, ``buffered``, ``declared_lost``, ``lost``, ``lost_with_power`` and
    ``unknown``, so they add up to ``generated`` (``accounted()`` checks it)."""

    panel_id: int
    generated: int
    acked: int
    #: Rows the store holds for the panel (duplicates and its own refusal reports included).
    stored: int
    #: Generated events found in the store, matched by identity (time, kind, door, card).
    generated_stored: int
    buffered: int
    declared_lost: int
    #: Acknowledged in some boot and not in the store: P1 broken.
    lost: int
    #: Not acknowledged, in a RAM buffer when the panel's power went: gone with it, by design.
    lost_with_power: int
    #: Generated, not acknowledged, and now neither stored, buffered nor declared: an
    #: outcome the checker cannot know (in flight when a fault hit). Not lost; after a
    #: full drain it should be 0, or the panel dropped an event silently.
    unknown: int
    #: Events the buffer refused (refuse_newest): never numbered, counted and reported.
    refused: int
    #: What the panel's EVENTS_REFUSED reports in the store add up to.
    reported_refusals: int
    unexpected: int
    duplicated: int
    reordered: int
    undeclared_gaps: int
    config_version: int
    #: The digest of the panel's configuration (docs/protocol.md 8.1): P4 compares content.
    config_digest: bytes
    over_budget: bool
    max_epoch: int
    boots: int
    #: Protocol errors and bad frames this panel counted in its sessions (P6: counted, attributed).
    protocol_errors: int = 0
    bad_frames: int = 0
    #: Rows stored under this panel's id that a rogue peer sent (P7: must be 0).
    rogue_rows: int = 0
    #: The alarm lane (docs/protocol.md 7.6). ``alarms``: rows of the store's alarms.
    alarms: int = 0
    #: Alarms an ALARM_ACK covered that the store's alarms do not hold as the lane's (P1).
    alarms_lane_lost: int = 0
    #: Stored alarm events (and declared gaps) the store's alarms lack, or hold otherwise (P1).
    alarms_missing: int = 0
    #: Alarm rows that are no stored alarm event nor declared gap, or one twice (P2).
    alarms_unexpected: int = 0
    #: The lane's rows stored out of their seqs' order (P2).
    alarms_reordered: int = 0

    def accounted(self) -> bool:
        parts = (self.generated_stored, self.buffered, self.declared_lost, self.lost, self.lost_with_power)
        return sum(parts) + self.unknown == self.generated


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    panels: tuple[PanelVerdict, ...]
    server_config_version: int
    server_config_digest: bytes
    store_epoch: int
    integrity: str
    #: Events committed under an older epoch after a newer one had committed (P5).
    stale_writes: int = 0
    #: What each rogue peer of the run got (P6 for garbage, P7 for the rest).
    rogues: tuple[RogueOutcome, ...] = ()
    #: Node processes that ended other than by a signal of the run or a clean stop (P6).
    crashes: int = 0
    #: Mirrored storage's mode (``sync``, ``async``); None: one shared store. With ``async``
    #: nothing promises that an acknowledged event survives a failover: what is missing is
    #: the run's RPO, reported under that name in place of P1.
    mirror: str | None = None
    #: Acknowledged events the batch log still held when the run ended (``ingest = log``): the
    #: check first finishes them as any node's restart does, then reads ``events``.
    log_finished: int = 0

    def totals(self) -> dict[str, int]:
        keys = (
            "generated",
            "acked",
            "stored",
            "generated_stored",
            "buffered",
            "declared_lost",
            "lost",
            "lost_with_power",
            "unknown",
            "refused",
            "reported_refusals",
            "unexpected",
            "duplicated",
            "reordered",
            "undeclared_gaps",
            "protocol_errors",
            "bad_frames",
            "rogue_rows",
            "alarms",
            "alarms_lane_lost",
            "alarms_missing",
            "alarms_unexpected",
            "alarms_reordered",
        )
        return {k: sum(getattr(p, k) for p in self.panels) for k in keys}

    def promises(self) -> dict[str, tuple[bool, str]]:
        t = self.totals()
        server = (self.server_config_version, self.server_config_digest)
        diverged = [p.panel_id for p in self.panels if (p.config_version, p.config_digest) != server]
        over = [p.panel_id for p in self.panels if p.over_budget]
        stale = [p.panel_id for p in self.panels if p.max_epoch > self.store_epoch]
        durability: dict[str, tuple[bool, str]]
        if self.mirror == "async":
            durability = {
                RPO: (
                    True,
                    f"{t['lost']} acknowledged events and {t['alarms_lane_lost']} alarms acknowledged by the lane "
                    "lost to the asynchronous mirror at failovers (ACK after the local commit: P1 is not promised "
                    f"in this mode); {t['alarms_missing']} stored alarm events missing from the alarms",
                )
            }
        else:
            lost_alarms = t["alarms_lane_lost"] + t["alarms_missing"]
            durability = {
                "P1 nothing acknowledged is lost": (
                    t["lost"] == lost_alarms == 0,
                    f"{t['lost']} acknowledged events missing; alarms: {t['alarms_lane_lost']} acknowledged by "
                    f"the lane missing from it, {t['alarms_missing']} stored events missing from the alarms",
                )
            }
        return {
            **durability,
            "P2 exactly once, in order": (
                t["duplicated"] == t["reordered"] == t["undeclared_gaps"] == t["unexpected"] == 0
                and t["alarms_unexpected"] == t["alarms_reordered"] == 0
                and self.integrity == "ok",
                f"{t['duplicated']} duplicated, {t['reordered']} reordered, {t['undeclared_gaps']} undeclared gaps, "
                f"{t['unexpected']} never generated, integrity {self.integrity}; alarms {t['alarms']}: "
                f"{t['alarms_unexpected']} unexpected or twice, {t['alarms_reordered']} out of order in the lane",
            ),
            "P3 bounded": (
                not over and t["unknown"] == 0 and all(p.accounted() for p in self.panels),
                f"{len(over)} panels over budget, {t['unknown']} events dropped without a declaration, "
                f"{t['declared_lost']} declared dropped, {t['refused']} refused ({t['reported_refusals']} reported)",
            ),
            "P4 converged": (
                not diverged,
                f"{len(diverged)} panels not at config version {self.server_config_version} "
                f"(digest {self.server_config_digest.hex()[:12]})",
            ),
            "P5 fenced": (
                not stale and self.stale_writes == 0,
                f"{len(stale)} panels saw an epoch newer than the store's {self.store_epoch}, "
                f"{self.stale_writes} events stored under a stale epoch",
            ),
            "P6 robust": self._robust(t),
            "P7 authenticated": self._authenticated(t),
        }

    def _robust(self, t: dict[str, int]) -> tuple[bool, str]:
        hostile = [r for r in self.rogues if r.kind.promise == "P6"]
        refused = sum(1 for r in hostile if r.got_nothing)
        ok = refused == len(hostile) and self.crashes == 0 and self.integrity == "ok"
        return ok, (
            f"{refused} of {len(hostile)} hostile inputs refused, {self.crashes} node crashes, "
            f"panels counted {t['protocol_errors']} protocol errors and {t['bad_frames']} bad frames, "
            f"integrity {self.integrity}"
        )

    def _authenticated(self, t: dict[str, int]) -> tuple[bool, str]:
        rogues = [r for r in self.rogues if r.kind.promise == "P7"]
        if not rogues:
            return True, "not exercised: no rogue peer in this scenario"
        got = [r for r in rogues if not r.got_nothing]
        kinds = ", ".join(sorted({str(r.kind) for r in rogues}))
        return not got and t["rogue_rows"] == 0, (
            f"{len(rogues)} rogue peers ({kinds}): {len(got)} got a welcome, an ack or a config, "
            f"{t['rogue_rows']} of their events stored"
        )

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.promises().values())


def check(
    db: Path | str,
    panels: Iterable[Panel],
    *,
    rogues: Iterable[RogueOutcome] = (),
    crashes: int = 0,
    mirror: str | None = None,
) -> Report:
    """The verdict on a still world: the panels must not run while this reads them."""
    store = open_event_store(db)  # a SQLite file or a postgresql:// URL
    config = open_config_store(db)
    try:
        # What the batch log holds is acknowledged and durable: finished here as a restart would.
        # (Only when it holds any: an empty log costs the checker no write lock.)
        finished = 0
        if store.log_backlog().batches:
            finished = store.materialize_all().events
        with store.snapshot():  # one instant of the store, however busy its writers
            verdicts = tuple(_panel(store, panel) for panel in panels)
            store_epoch = store.epoch
            stale_writes = store.stale_writes()
        version, digest = config.current()
        return Report(
            panels=verdicts,
            server_config_version=version,
            server_config_digest=digest,
            store_epoch=store_epoch,
            integrity=store.integrity_check(),
            stale_writes=stale_writes,
            rogues=tuple(rogues),
            crashes=crashes,
            mirror=mirror,
            log_finished=finished,
        )
    finally:
        store.close()
        config.close()


def _panel(store: EventStoreInterface, panel: Panel) -> PanelVerdict:
    if panel.journal is None:
        raise ValueError(f"panel {panel.panel_id} keeps no journal; build it with journal=True")
    stats = panel.statistics()
    events = store.events(panel.panel_id)
    rows = [(e.record.time_us, int(e.record.kind), e.record.door, e.record.card) for e in events]
    losses = store.losses(panel.panel_id)
    declared = {s for loss in losses for s in range(loss.first_seq, loss.last_seq + 1)}
    # What the panel itself dropped or lost (drop_oldest, a power loss) is declared; what it
    # declares the server lost (SERVER_LOST, after an asynchronous mirror's failover) had been
    # acknowledged: saying so honestly does not make it any less lost (P1, or the RPO).
    dropped = {
        s for loss in losses if loss.kind != EventKind.SERVER_LOST for s in range(loss.first_seq, loss.last_seq + 1)
    }
    # Identity, not the store's key: an event stored twice under two seqs is a duplicate.
    in_store = collections.Counter(rows)
    generated_ids = collections.Counter(e.identity for e in panel.journal)
    duplicated = sum(max(0, n - generated_ids[key]) for key, n in in_store.items() if key in generated_ids)
    # EVENTS_REFUSED records are the buffer's own report of what it refused (refuse_newest):
    # generated by the buffer, not by a swipe, so not in the journal.
    refused_kind = int(EventKind.EVENTS_REFUSED)
    rogue_rows = sum(n for key, n in in_store.items() if key[3] >= ROGUE_CARD)
    unexpected = sum(n for key, n in in_store.items() if key not in generated_ids and key[1] != refused_kind)
    reported_refusals = sum(e.record.aux for e in events if int(e.record.kind) == refused_kind)
    # Seq order is the key order; arrival order must agree with it (a later seq
    # never committed before an earlier one).
    arrivals = [e.received_us for e in events]
    reordered = sum(1 for a, b in itertools.pairwise(arrivals) if b < a)
    seqs = {e.record.seq for e in events}
    hwm = store.hwm(panel.panel_id)
    undeclared = sum(1 for s in range(1, hwm + 1) if s not in seqs and s not in declared)
    lane = _alarm_lane(store, panel, events, losses, declared, generated_ids)
    promised, died, alive = _promises(panel, current=max(stats.acked_seq, stats.promised_seq))
    buffered_from = panel.buffer.oldest_seq if len(panel.buffer) else panel.buffer.next_seq
    counts: collections.Counter[str] = collections.Counter()
    unmatched = collections.Counter(in_store)
    for entry in panel.journal:
        if unmatched[entry.identity] > 0:
            unmatched[entry.identity] -= 1
            counts["stored"] += 1
        elif entry.seq in dropped:
            counts["declared"] += 1
        elif entry.seq <= promised[entry.boot_id]:
            counts["lost"] += 1
        elif entry.boot_id in alive and entry.seq >= buffered_from:
            counts["buffered"] += 1
        elif entry.boot_id in died:
            counts["lost_with_power"] += 1
        else:
            counts["unknown"] += 1
    return PanelVerdict(
        panel_id=panel.panel_id,
        generated=len(panel.journal),
        acked=stats.acked,
        stored=len(rows),
        generated_stored=counts["stored"],
        buffered=counts["buffered"],
        declared_lost=counts["declared"],
        lost=counts["lost"],
        lost_with_power=counts["lost_with_power"],
        unknown=counts["unknown"],
        refused=stats.refused,
        reported_refusals=reported_refusals,
        unexpected=unexpected,
        duplicated=duplicated,
        reordered=reordered,
        undeclared_gaps=undeclared,
        config_version=panel.config.version,
        config_digest=panel.config.digest,
        over_budget=stats.buffer_bytes > panel.settings.buffer_bytes,
        max_epoch=panel.max_epoch,
        boots=len(panel.past_boots) + 1,
        protocol_errors=stats.protocol_errors,
        bad_frames=stats.bad_frames,
        rogue_rows=rogue_rows,
        **lane,
    )


_ALARMS = frozenset(int(k) for k in ALARM_KINDS)
_GAPS = frozenset(int(k) for k in GAP_KINDS)


def _alarm_lane(
    store: EventStoreInterface,
    panel: Panel,
    events: list[StoredEvent],
    losses: list[Loss],
    declared: set[int],
    generated: collections.Counter[tuple[int, int, int, int]],
) -> dict[str, int]:
    """The alarm lane's check (docs/protocol.md 7.6): the store's alarms hold every stored
    alarm event and declared gap once, the lane's rows in their seqs' order, and every alarm
    an ALARM_ACK covered as the lane's. A lane's alarm whose event the panel dropped later
    (a declared gap over it) is one it generated: the lane got it to the operator anyway."""
    rows = store.alarms(panel.panel_id)
    expected = {e.record.seq: e.record for e in events if int(e.record.kind) in _ALARMS}
    # A declared gap's alarm is keyed apart (it may take the seq of an alarm the lane brought)
    # and stands for the part of the gap above the hwm, as its loss row does.
    gaps = {(int(loss.kind), loss.first_seq, loss.last_seq) for loss in losses}
    seen: set[tuple[int, bool]] = set()
    unexpected = 0
    for row in rows:
        record = row.record
        gap = int(record.kind) in _GAPS
        identity = (record.time_us, int(record.kind), record.door, record.card)
        if gap:
            ok = (int(record.kind), record.seq, record.card) in gaps
        elif row.lane and (row.orphan or record.seq in declared):
            # A lane's alarm whose record the panel dropped later, or lost with its counter.
            ok = identity in generated
        else:
            ok = expected.get(record.seq) == record
        key = (record.seq, gap)
        if not ok or (not row.orphan and key in seen):
            unexpected += 1
        if not row.orphan:
            seen.add(key)
    held = {row.record.seq: row.record for row in rows if not row.orphan and int(row.record.kind) not in _GAPS}
    missing = sum(1 for seq, record in expected.items() if held.get(seq) != record)
    held_gaps = {(int(r.record.kind), r.record.seq, r.record.card) for r in rows if int(r.record.kind) in _GAPS}
    missing += len(gaps - held_gaps)
    by_lane = [row.record.seq for row in rows if row.lane and not row.orphan]  # rows come in the order stored
    reordered = sum(1 for a, b in itertools.pairwise(by_lane) if b < a)
    lane_held = collections.Counter(
        (r.record.time_us, int(r.record.kind), r.record.door, r.record.card) for r in rows if r.lane
    )
    lane_lost = sum(max(0, n - lane_held[key]) for key, n in collections.Counter(panel.alarms_lane_acked).items())
    return {
        "alarms": len(rows),
        "alarms_lane_lost": lane_lost,
        "alarms_missing": missing,
        "alarms_unexpected": unexpected,
        "alarms_reordered": reordered,
    }


def _promises(panel: Panel, *, current: int) -> tuple[dict[int, int], set[int], set[int]]:
    """What each boot was promised (the ACKs it got itself), the boots that ended with a
    power loss, and the boots whose events the buffer may still hold.

    A flash buffer carries a boot's synced events into the next boot, where they are
    matched in the store by identity like any other; what it had not synced died with
    the power, and its seqs may be numbered again by the next boot. So an event of an
    ended boot counts as acknowledged only by that boot's own ACKs.
    """
    promised = {b.boot_id: b.promised_seq for b in panel.past_boots}
    promised[panel.boot_id] = current
    died = {b.boot_id for b in panel.past_boots}
    alive = {panel.boot_id}
    for boot in reversed(panel.past_boots):  # flash carried these boots' events into this one
        if boot.ram:
            break
        alive.add(boot.boot_id)
    return promised, died, alive
