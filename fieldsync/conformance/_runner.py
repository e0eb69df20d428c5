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
from ._link import Listener

CASE_TIMEOUT = 30.0


class TargetUnreachable(Exception):
    """The target cannot be reached at all (or, --park-listen, its address cannot be listened on)."""


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


def _needs(tls: bool, *, main: str, main_given: bool, park: str, park_given: bool) -> Callable[[Case], str | None]:
    """Why a case cannot run (None: it can). `main` names the option of the mode's target ("--server"), `park` the
    option of its park address ("--park"); the parked-session cases (6.3) need the latter, the others the former."""

    def why(case: Case) -> str | None:
        if case.tls_only and not tls:
            return "needs --pki (TLS)"
        if case.park and not park_given:
            return f"a parked-session case (6.3): needs {park} HOST:PORT"
        if not case.park and not main_given:
            return f"needs {main} HOST:PORT"
        return None

    return why


async def _run(
    cases: Sequence[Case],
    make_ctx: Callable[[trio.Nursery], Any],
    needs: Callable[[Case], str | None],
    progress: Callable[[CaseResult], None] | None,
) -> list[CaseResult]:
    results: list[CaseResult] = []
    for case in cases:
        t0 = trio.current_time()
        result, detail = "fail", ""
        timeout = case.timeout or CASE_TIMEOUT
        why = needs(case)
        if why is not None:
            result, detail = "skip", why
        else:
            async with trio.open_nursery() as nursery:
                ctx = make_ctx(nursery)
                try:
                    with trio.fail_after(timeout):
                        detail = await case.fn(ctx)
                    result = "pass"
                except Fail as exc:
                    detail = str(exc)
                except Skip as exc:
                    result, detail = "skip", str(exc)
                except trio.TooSlowError:
                    detail = f"the case did not finish within {timeout:g} s"
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
    server: str | None,
    *,
    pki: Path | str | None = None,
    panel_ids: Sequence[int] = (1, 2, 3, 4),
    unknown_panel_id: int | None = None,
    cases: Sequence[str] = (),
    progress: Callable[[CaseResult], None] | None = None,
    park: str | None = None,
) -> list[CaseResult]:
    """Play panels against the node at `server` (HOST:PORT) and, with `park`, against the park address of the node
    that is the standby (6.3); either may be None. Raises TargetUnreachable if one cannot be reached."""
    host, port = parse_hostport(server) if server is not None else (None, 0)
    park_addr = parse_hostport(park) if park is not None else None
    target = ServerTarget(
        host, port, Path(pki) if pki is not None else None, tuple(panel_ids), unknown_panel_id, park_addr
    )
    if host is not None:
        await _reachable(host, port, "node")
    if park_addr is not None:
        await _reachable(*park_addr, "standby's park address (6.3 rule 1: only a standby listens there)")
    state = ServerState()
    needs = _needs(
        target.pki is not None, main="--server", main_given=host is not None, park="--park", park_given=park is not None
    )
    return await _run(server_case.select(list(cases)), lambda n: ServerCtx(target, state, n), needs, progress)


async def run_panel_cases(
    panel: str | None,
    panel_id: int,
    *,
    pki: Path | str | None = None,
    node_name: str = "A",
    epoch: int | None = None,
    cases: Sequence[str] = (),
    progress: Callable[[CaseResult], None] | None = None,
    park_listen: str | None = None,
) -> list[CaseResult]:
    """Play a node against the host-initiated panel at `panel` (HOST:PORT) and, with `park_listen`, a standby node
    listening there for the panel's park connections (6.3); either may be None."""
    host, port = parse_hostport(panel) if panel is not None else (None, 0)
    target = PanelTarget(host, port, panel_id, Path(pki) if pki is not None else None, node_name, epoch)
    if host is not None:
        await _reachable(host, port, "panel")
    listener = None
    if park_listen is not None:
        listener = Listener(*parse_hostport(park_listen))
        try:
            await listener.bind()
        except OSError as exc:
            raise TargetUnreachable(f"cannot listen on {park_listen} (--park-listen): {exc}") from None
    state = PanelState()
    needs = _needs(
        target.pki is not None,
        main="--panel",
        main_given=host is not None,
        park="--park-listen",
        park_given=listener is not None,
    )
    async with trio.open_nursery() as nursery:
        if listener is not None:
            listener.serve(nursery)
        try:
            results = await _run(
                panel_case.select(list(cases)), lambda n: PanelCtx(target, state, n, listener), needs, progress
            )
        finally:
            if listener is not None:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            nursery.cancel_scope.cancel()
    return results


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
