"""EVENT_BATCH decoding speed: construct spec vs the fast path vs the bare bound.

The bound is ``struct.iter_unpack`` over the same record bytes into a list of
tuples: the least any decoder that yields rows must do. The fast path adds the
batch checks (seq order, kinds, gap marker) and the message object on top.

    python benchmarks/codec.py [--batch 1000] [--batches 200] [--repeat 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import platform
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol as p
from benchmarks import write_json
from protocol import _wire


def _payloads(batch: int, batches: int) -> list[bytes]:
    out = []
    seq = 1
    for _ in range(batches):
        records = [
            p.EventRecord(
                seq=s, time_us=1_764_000_000_000_000 + s, kind=p.EventKind.ACCESS_GRANTED, door=s % 8, card=s * 7919
            )
            for s in range(seq, seq + batch)
        ]
        out.append(p.encode_payload(p.EventBatch.of(records)))
        seq += batch
    return out


def _rate(fn: Callable[[], int], repeat: int) -> float:
    best = float("inf")
    events = 0
    for _ in range(repeat):
        start = time.perf_counter()
        events = fn()
        best = min(best, time.perf_counter() - start)
    return events / best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1000, help="records per batch")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5, help="runs per path; the best counts")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    payloads = _payloads(args.batch, args.batches)
    records = [payload[10:] for payload in payloads]
    compiled = _wire.COMPILED[p.MessageType.EVENT_BATCH]
    fields = ("seq", "time_us", "kind", "door", "reader", "flags", "card", "aux")
    row = struct.Struct(">QQBBBBQI")

    def construct_path() -> int:
        n = 0
        for payload in payloads:
            parsed = compiled.parse(payload)
            rows = [tuple(r[f] for f in fields) for r in parsed.records]
            n += len(rows)
        return n

    def fast_path() -> int:
        n = 0
        for payload in payloads:
            batch = p.decode_payload(p.MessageType.EVENT_BATCH, payload)
            assert isinstance(batch, p.EventBatch)
            n += len(list(batch.rows()))
        return n

    def bound() -> int:
        n = 0
        for body in records:
            n += len(list(row.iter_unpack(body)))
        return n

    def fast_encode() -> int:
        n = 0
        for payload in payloads:
            batch = p.EventBatch(first_seq=int.from_bytes(payload[:8], "big"), records=payload[10:])
            n += len(p.encode_payload(batch)) // p.RECORD_SIZE
        return n

    result = {
        "construct_events_per_s": _rate(construct_path, max(1, args.repeat // 2)),
        "fast_events_per_s": _rate(fast_path, args.repeat),
        "bound_events_per_s": _rate(bound, args.repeat),
        "fast_encode_events_per_s": _rate(fast_encode, args.repeat),
    }
    result["ratio"] = result["fast_events_per_s"] / result["bound_events_per_s"]
    result["speedup_over_construct"] = result["fast_events_per_s"] / result["construct_events_per_s"]
    print(f"EVENT_BATCH decode, {args.batches} batches x {args.batch} records, best of {args.repeat}")
    print(f"  construct (compiled) : {result['construct_events_per_s']:>14,.0f} events/s")
    print(f"  fast path            : {result['fast_events_per_s']:>14,.0f} events/s")
    print(f"  bound (iter_unpack)  : {result['bound_events_per_s']:>14,.0f} events/s")
    print(f"  ratio fast/bound     : {result['ratio']:.3f}  (goal >= 0.7)")
    print(f"  fast/construct       : {result['speedup_over_construct']:.1f}x")
    print(f"  fast encode (checked): {result['fast_encode_events_per_s']:>14,.0f} events/s")
    write_json(args.json, result, machine=platform.machine())
    return result


if __name__ == "__main__":
    main()
