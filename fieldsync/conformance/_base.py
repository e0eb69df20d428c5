"""Cases, their results and the registry both modes share."""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

Result = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class CaseResult:
    name: str
    section: str
    result: Result
    detail: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "section": self.section,
            "result": self.result,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


class Fail(Exception):
    """The case found the target violating its section."""


class Skip(Exception):
    """The case cannot run against this target (no PKI, option not given, precondition not met)."""


def check(ok: bool, detail: str) -> None:
    if not ok:
        raise Fail(detail)


def slack(interval: float) -> float:
    """What a checker allows a peer's timer (9.1): a quarter of the interval plus 100 ms for delay and scheduling."""
    return interval / 4 + 0.1


CaseFn = Callable[[Any], Awaitable[str]]


@dataclass(frozen=True)
class Case:
    name: str
    section: str
    fn: CaseFn
    doc: str
    tls_only: bool = False
    park: bool = False  # a case of parked sessions (6.3): needs the park address (--park, --park-listen)
    timeout: float | None = None  # s: the runner's bound for this case, if not its default


class Registry:
    def __init__(self) -> None:
        self.cases: list[Case] = []

    def __call__(
        self, name: str, section: str, *, tls_only: bool = False, park: bool = False, timeout: float | None = None
    ) -> Callable[[CaseFn], CaseFn]:
        def deco(fn: CaseFn) -> CaseFn:
            doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            self.cases.append(Case(name, section, fn, doc, tls_only, park, timeout))
            return fn

        return deco

    def select(self, patterns: tuple[str, ...] | list[str]) -> list[Case]:
        if not patterns:
            return list(self.cases)
        return [c for c in self.cases if any(fnmatch.fnmatch(c.name, p) or p in c.name for p in patterns)]
