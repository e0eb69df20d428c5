"""Running cases one after another, each bounded in time, and reporting them."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ._base import Case, CaseResult, Fail, Skip
from ._cases_panel import PanelCtx, PanelState, PanelTarget, panel_case
from ._cases_server import ServerCtx, ServerState, ServerTarget, server_case

CASE_TIMEOUT = 30.0


class TargetUnreachable(Exception):
    """The target cannot be reached at all."""


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{text!r} has no host")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def parse_ids(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out += range(int(a), int(b) + 1)
        elif part:
            out.append(int(part))
    if not out or any(i < 1 or i > 0xFFFFFFFF for i in out):
        raise ValueError(f"{text!r}: panel ids are 1..2^32-1")
    return tuple(out)


async def _reachable(host: str, port: int, what: str) -> None:
    try:
        with trio.fail_after(3):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise TargetUnreachable(f"cannot reach the {what} at {host}:{port}: {exc or 'no answer in 3 s'}") from None
    await trio.aclose_forcefully(stream)


async def _run(
    cases: Sequence[Case],
    make_ctx: Callable[[trio.Nursery], Any],
    tls: bool,
    progress: Callable[[CaseResult], None] | None,
) -> list[CaseResult]:
    results: list[CaseResult] = []
    for case in cases:
        t0 = trio.current_time()
        result, detail = "fail", ""
        if case.tls_only and not tls:
            result, detail = "skip", "needs --pki (TLS)"
        else:
            async with trio.open_nursery() as nursery:
                ctx = make_ctx(nursery)
                try:
                    with trio.fail_after(CASE_TIMEOUT):
                        detail = await case.fn(ctx)
                    result = "pass"
                except Fail as exc:
                    detail = str(exc)
                except Skip as exc:
                    result, detail = "skip", str(exc)
                except trio.TooSlowError:
                    detail = f"the case did not finish within {CASE_TIMEOUT:g} s"
                except Exception as exc:  # a crash of the battery itself is reported, not raised
                    detail = f"battery error: {type(exc).__name__}: {exc}"
                finally:
                    with trio.move_on_after(1) as cs:
                        cs.shield = True
                        for link in ctx.links:
                            await link.aclose()
                    nursery.cancel_scope.cancel()
            await trio.sleep(0.05)
        r = CaseResult(case.name, case.section, result, detail, trio.current_time() - t0)  # type: ignore[arg-type]
        results.append(r)
        if progress is not None:
            progress(r)
    return results


async def run_server_cases(
    server: str,
    *,
    pki: Path | str | None = None,
    panel_ids: Sequence[int] = (1, 2, 3, 4),
    unknown_panel_id: int | None = None,
    cases: Sequence[str] = (),
    progress: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Play panels against the node at `server` (HOST:PORT); raises TargetUnreachable if it cannot be reached."""
    host, port = parse_hostport(server)
    target = ServerTarget(host, port, Path(pki) if pki is not None else None, tuple(panel_ids), unknown_panel_id)
    await _reachable(host, port, "node")
    state = ServerState()
    return await _run(
        server_case.select(list(cases)), lambda n: ServerCtx(target, state, n), target.pki is not None, progress
    )


async def run_panel_cases(
    panel: str,
    panel_id: int,
    *,
    pki: Path | str | None = None,
    node_name: str = "A",
    epoch: int | None = None,
    cases: Sequence[str] = (),
    progress: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Play a node against the host-initiated panel at `panel` (HOST:PORT)."""
    host, port = parse_hostport(panel)
    target = PanelTarget(host, port, panel_id, Path(pki) if pki is not None else None, node_name, epoch)
    await _reachable(host, port, "panel")
    state = PanelState()
    return await _run(
        panel_case.select(list(cases)), lambda n: PanelCtx(target, state, n), target.pki is not None, progress
    )


def table(results: Sequence[CaseResult]) -> str:
    rows = [("section", "case", "result", "detail")] + [(r.section, r.name, r.result, r.detail) for r in results]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{w[0]}} | {b:<{w[1]}} | {c:<{w[2]}} | {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * w[0] + "-+-" + "-" * w[1] + "-+-" + "-" * w[2] + "-+-" + "-" * 6)
    return "\n".join(lines)


def summary(results: Sequence[CaseResult]) -> tuple[int, int, int]:
    return (
        sum(r.result == "pass" for r in results),
        sum(r.result == "fail" for r in results),
        sum(r.result == "skip" for r in results),
    )


def write_json(path: Path, target: str, mode: str, results: Sequence[CaseResult]) -> None:
    p, f, s = summary(results)
    doc = {
        "target": target,
        "mode": mode,
        "cases": [r.as_json() for r in results],
        "passed": p,
        "failed": f,
        "skipped": s,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
