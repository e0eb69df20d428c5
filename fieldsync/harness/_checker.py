"""Check the promises from what the panels generated against what the store holds.

The panels' journals are the ground truth of what was generated (seq, kind,
door, card per boot); the store is what survived. An event the store lacks is
*lost* only if the panel had it acknowledged; otherwise it is still buffered,
declared dropped, or unknown (in flight when a fault hit). Jepsen's total-queue
checker is the model.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from pathlib import Path

from emulator import Panel
from protocol import EventKind
from storage import ConfigStore, EventStore

__all__ = [
    "PanelVerdict",
    "Report",
    "check",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PanelVerdict:
    panel_id: int
    generated: int
    acked: int
    stored: int
    buffered: int
    declared_lost: int
    lost: int
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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    panels: tuple[PanelVerdict, ...]
    server_config_version: int
    server_config_digest: bytes
    store_epoch: int
    integrity: str
    #: Events committed under an older epoch after a newer one had committed (P5).
    stale_writes: int = 0

    def totals(self) -> dict[str, int]:
        keys = (
            "generated",
            "acked",
            "stored",
            "buffered",
            "declared_lost",
            "lost",
            "unknown",
            "refused",
            "reported_refusals",
            "unexpected",
            "duplicated",
            "reordered",
            "undeclared_gaps",
        )
        return {k: sum(getattr(p, k) for p in self.panels) for k in keys}

    def promises(self) -> dict[str, tuple[bool, str]]:
        t = self.totals()
        server = (self.server_config_version, self.server_config_digest)
        diverged = [p.panel_id for p in self.panels if (p.config_version, p.config_digest) != server]
        over = [p.panel_id for p in self.panels if p.over_budget]
        stale = [p.panel_id for p in self.panels if p.max_epoch > self.store_epoch]
        return {
            "P1 nothing acknowledged is lost": (t["lost"] == 0, f"{t['lost']} acknowledged events missing"),
            "P2 exactly once, in order": (
                t["duplicated"] == t["reordered"] == t["undeclared_gaps"] == t["unexpected"] == 0
                and self.integrity == "ok",
                f"{t['duplicated']} duplicated, {t['reordered']} reordered, {t['undeclared_gaps']} undeclared gaps, "
                f"{t['unexpected']} never generated, integrity {self.integrity}",
            ),
            "P3 bounded": (
                not over and t["unknown"] == 0,
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
        }

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.promises().values())


def check(db: Path | str, panels: Iterable[Panel]) -> Report:
    store = EventStore(db)
    config = ConfigStore(db)
    try:
        verdicts = tuple(_panel(store, panel) for panel in panels)
        version, digest = config.current()
        return Report(
            panels=verdicts,
            server_config_version=version,
            server_config_digest=digest,
            store_epoch=store.epoch,
            integrity=store.integrity_check(),
            stale_writes=store.stale_writes(),
        )
    finally:
        store.close()
        config.close()


def _panel(store: EventStore, panel: Panel) -> PanelVerdict:
    if panel.journal is None:
        raise ValueError(f"panel {panel.panel_id} keeps no journal; build it with journal=True")
    stats = panel.statistics()
    events = store.events(panel.panel_id)
    rows = [(e.record.seq, int(e.record.kind), e.record.door, e.record.card) for e in events]
    losses = store.losses(panel.panel_id)
    declared = {s for loss in losses for s in range(loss.first_seq, loss.last_seq + 1)}
    # The current boot's events, by seq (earlier boots of a RAM panel restart their seqs).
    generated = {seq: (kind, door, card) for boot, seq, kind, door, card in panel.journal if boot == panel.boot_id}
    every = {(seq, kind, door, card) for _, seq, kind, door, card in panel.journal}
    seqs = [r[0] for r in rows]
    duplicated = len(seqs) - len(set(seqs))
    # Seq order is the key order; arrival order must agree with it (a later seq
    # never committed before an earlier one).
    arrivals = [e.received_us for e in events]
    reordered = sum(1 for a, b in itertools.pairwise(arrivals) if b < a)
    stored = set(seqs)
    hwm = store.hwm(panel.panel_id)
    undeclared = sum(1 for s in range(1, hwm + 1) if s not in stored and s not in declared)
    # EVENTS_REFUSED records are the buffer's own report of what it refused (refuse_newest):
    # generated by the buffer, not by a swipe, so not in the journal.
    refused_kind = int(EventKind.EVENTS_REFUSED)
    unexpected = sum(1 for r in rows if r not in every and r[1] != refused_kind)
    reported_refusals = sum(e.record.aux for e in events if int(e.record.kind) == refused_kind)
    # Acknowledged means any ACK this boot ever got, not where the last session resumed.
    promised = max(stats.acked_seq, stats.promised_seq)
    lost = sum(1 for seq in generated if seq <= promised and seq not in stored and seq not in declared)
    buffered_from = panel.buffer.oldest_seq if len(panel.buffer) else panel.buffer.next_seq
    unknown = sum(
        1 for seq in generated if seq > promised and seq not in stored and seq not in declared and seq < buffered_from
    )
    return PanelVerdict(
        panel_id=panel.panel_id,
        generated=len(panel.journal),
        acked=stats.acked,
        stored=len(rows),
        buffered=stats.buffer_depth,
        declared_lost=len(declared),
        lost=lost,
        unknown=unknown,
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
    )
