"""Card-swipe workloads: Poisson arrivals, shift-change bursts, scripted lists. Seeded."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Protocol

import trio

__all__ = ["Burst", "Scripted", "Swipe", "Workload", "run_workload"]


class _Swiper(Protocol):
    panel_id: int
    doors: int

    async def swipe_wait(self, card: int, door: int, *, reader: int = 1, pin: int | None = None) -> object: ...

    def known_cards(self) -> Sequence[int]: ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Swipe:
    at: float
    card: int
    door: int = 0
    pin: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Burst:
    """``count`` swipes spread over ``spread`` seconds, starting at ``at`` (a shift change)."""

    at: float
    count: int
    spread: float = 10.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scripted:
    swipes: tuple[Swipe, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """What a panel's readers see.

    Args:
        rate: Poisson swipes per second per panel (0 for none).
        unknown_share: share of swipes by cards the panel does not know.
        bursts: shift changes on top of the Poisson stream.
        script: exact swipes (times relative to the start).
        limit: stop after this many swipes (None: run until cancelled).
    """

    rate: float = 1.0
    unknown_share: float = 0.05
    bursts: tuple[Burst, ...] = ()
    script: Scripted | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.rate < 0 or not 0 <= self.unknown_share <= 1:
            raise ValueError("rate must be >= 0 and unknown_share within 0..1")


def _card(panel: _Swiper, rng: random.Random, unknown_share: float) -> int:
    cards = panel.known_cards()
    if cards and rng.random() >= unknown_share:
        return cards[rng.randrange(len(cards))]
    return rng.randrange(10**9, 2 * 10**9)


async def run_workload(panel: _Swiper, workload: Workload, seed: int) -> int:
    """Drive a panel's swipes until the limit (or cancellation); return the count."""
    rng = random.Random(seed)
    start = trio.current_time()
    plan: list[tuple[float, int, int, int | None]] = []
    if workload.script is not None:
        plan += [(s.at, s.card, s.door, s.pin) for s in workload.script.swipes]
    for burst in workload.bursts:
        for _ in range(burst.count):
            plan.append((burst.at + rng.random() * burst.spread, -1, rng.randrange(panel.doors), None))
    plan.sort(key=lambda item: item[0])
    done = 0
    next_poisson = rng.expovariate(workload.rate) if workload.rate > 0 else float("inf")
    while workload.limit is None or done < workload.limit:
        if plan and plan[0][0] <= next_poisson:
            at, card, door, pin = plan.pop(0)
            if card < 0:
                card = _card(panel, rng, workload.unknown_share)
        elif next_poisson != float("inf"):
            at, card, door, pin = (
                next_poisson,
                _card(panel, rng, workload.unknown_share),
                rng.randrange(panel.doors),
                None,
            )
            next_poisson += rng.expovariate(workload.rate)
        else:
            break
        await trio.sleep_until(start + at)
        await panel.swipe_wait(card, door, pin=pin)
        done += 1
    return done
