"""The witness of a mirrored pair: a third party that says which node's database may serve alone.

A synchronous pair without one has a hard choice when a commit cannot reach the other
database: wait (then one failed node, even the standby, stops the site: measured, a crashed
standby host froze every panel until it came back), or acknowledge alone (then a partition
lets both sides acknowledge, and the rewind at the heal discards one side's events). The
witness removes the choice the way Patroni's synchronous mode does with its DCS: it holds
one record, ``(generation, primary, in_sync)``, changed only by compare-and-set, and

- the primary's node may stop waiting for its standby (clear ``synchronous_standby_names``)
  only after the witness took the standby out of ``in_sync``;
- a standby may promote its replica only while the witness lists it in ``in_sync``, and
  only by taking ``primary`` for itself in the same compare-and-set;
- the primary puts a standby back in ``in_sync`` only once it has flushed past the WAL
  position the primary had when it was waited for again (``_mirrored.decide_mirror``);
- a standby may not promote before the first record: only a primary's node makes it (a
  witness whose state file is gone must not let a replica that may be behind promote).

The two sides of a partition race for the same generation and exactly one wins: the
primary keeps serving alone and the standby promotes nothing, or the standby promotes and
the old primary's degrade is refused (it goes on waiting, and steps down). A witness that
cannot be reached changes nothing: the pair stays synchronous and strict.

The wire: one JSON object per line over TCP, at most 4 KiB, one request per connection:
``{"op": "get"}`` or ``{"op": "cas", "generation": G, "primary": "A", "in_sync": ["A"]}``;
the answer ``{"ok": true|false, "generation": N, "primary": ..., "in_sync": [...]}`` (the
record after the request), or ``{"error": "..."}`` for a request it refuses. The record is
written to its state file (atomically, fsynced) before the answer goes out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import trio

__all__ = ["WitnessError", "WitnessRecord", "serve_witness", "witness_cas", "witness_get"]

log = logging.getLogger("fieldsync.witness")

_MAX_LINE = 4096
_NODE_NAME_MAX = 32


class WitnessError(Exception):
    """The witness did not answer, or answered what is not a witness's answer; names which and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class WitnessRecord:
    generation: int = 0
    primary: str | None = None
    in_sync: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "primary": self.primary, "in_sync": list(self.in_sync)}

    @classmethod
    def from_json(cls, data: object, *, where: str) -> WitnessRecord:
        if not isinstance(data, dict):
            raise WitnessError(f"{where}: not a witness record: {data!r}")
        generation, primary, in_sync = data.get("generation"), data.get("primary"), data.get("in_sync")
        if (
            not isinstance(generation, int)
            or isinstance(generation, bool)
            or generation < 0
            or not (primary is None or _a_name(primary))
            or not isinstance(in_sync, list)
            or not all(_a_name(n) for n in in_sync)
        ):
            raise WitnessError(f"{where}: not a witness record: {data!r}")
        return cls(generation, primary, tuple(sorted(set(in_sync))))


def _a_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _NODE_NAME_MAX and value.isprintable()


# -- the service ----------------------------------------------------------------------------------


class _State:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.record = WitnessRecord.from_json(json.loads(path.read_text()), where=str(path))
        except FileNotFoundError:
            self.record = WitnessRecord()
        except ValueError as exc:
            raise WitnessError(f"{path}: the witness's state file is not JSON: {exc}") from None

    def save(self, record: WitnessRecord) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w") as out:
            out.write(json.dumps(record.to_json()) + "\n")
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):  # the rename itself made durable
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.record = record

    def answer(self, request: object) -> dict[str, Any]:
        if not isinstance(request, dict) or request.get("op") not in ("get", "cas"):
            return {"error": 'a request is {"op": "get"} or {"op": "cas", ...}'}
        if request["op"] == "get":
            return {"ok": True, **self.record.to_json()}
        try:
            new = WitnessRecord.from_json(request, where="the request")
        except WitnessError as exc:
            return {"error": str(exc)}
        if new.generation != self.record.generation:
            return {"ok": False, **self.record.to_json()}
        changed = WitnessRecord(self.record.generation + 1, new.primary, new.in_sync)
        try:
            self.save(changed)
        except OSError as exc:  # a full disk, say: nothing changed, and the asker is told
            return {"error": f"the witness could not record it: {exc}"}
        log.warning(
            "witness: generation %d: primary %s, in sync %s", changed.generation, changed.primary, changed.in_sync
        )
        return {"ok": True, **changed.to_json()}


async def serve_witness(
    host: str, port: int, state_file: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the witness on ``host:port``, its record kept in ``state_file``, until cancelled.

    Raises:
        WitnessError: the state file is unreadable, or the address cannot be bound (in use).
    """
    state = _State(state_file)
    # One change at a time: ``answer`` does not yield (its fsync blocks the loop for a moment,
    # which a witness, one small record, can afford), and the lock keeps it so if it ever does.
    lock = trio.Lock()

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(5):
                data = b""
                while b"\n" not in data and len(data) <= _MAX_LINE:
                    chunk = await stream.receive_some(_MAX_LINE + 1)
                    if not chunk:
                        return
                    data += chunk
                if len(data) > _MAX_LINE:
                    answer: dict[str, Any] = {"error": f"a request is one line of at most {_MAX_LINE} bytes"}
                else:
                    try:
                        request = json.loads(data.split(b"\n", 1)[0])
                    except ValueError as exc:
                        answer = {"error": f"not JSON: {exc}"}
                    else:
                        async with lock:
                            answer = state.answer(request)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(json.dumps(answer).encode() + b"\n")

    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise WitnessError(f"the witness cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    async with trio.open_nursery() as nursery:
        task_status.started()
        await nursery.start(trio.serve_listeners, handle, listeners)


# -- the client (blocking: the nodes call it from their store threads) -----------------------------


def _ask(address: tuple[str, int], request: dict[str, Any], *, timeout: float) -> WitnessRecord | None:
    """The record after ``request``; None if a compare-and-set was refused (the record moved on)."""
    where = f"the witness at {address[0]}:{address[1]}"
    try:
        with socket.create_connection(address, timeout=timeout) as conn:
            conn.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while b"\n" not in data and len(data) <= _MAX_LINE:
                chunk = conn.recv(_MAX_LINE + 1)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise WitnessError(f"{where} does not answer: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise WitnessError(f"{where} answered what is not JSON: {data[:80]!r}") from None
    if isinstance(answer, dict) and "error" in answer:
        raise WitnessError(f"{where} refused the request: {answer['error']}")
    record = WitnessRecord.from_json(answer, where=where)
    return record if answer.get("ok") is True else None


def witness_get(address: tuple[str, int], *, timeout: float = 0.5) -> WitnessRecord:
    """The witness's record now."""
    record = _ask(address, {"op": "get"}, timeout=timeout)
    assert record is not None
    return record


def witness_cas(
    address: tuple[str, int],
    seen: WitnessRecord,
    *,
    primary: str | None,
    in_sync: tuple[str, ...],
    timeout: float = 0.5,
) -> bool:
    """Change the record from ``seen`` (by its generation) to ``primary`` and ``in_sync``;
    False if it had changed meanwhile (someone else won)."""
    request = {"op": "cas", "generation": seen.generation, "primary": primary, "in_sync": sorted(set(in_sync))}
    return _ask(address, request, timeout=timeout) is not None
