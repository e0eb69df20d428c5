"""Child process for the crash test: ingest forever, report each committed hwm.

Run as ``python -m tests.crash_child TARGET SEED`` (a SQLite path or a PostgreSQL URL); prints one JSON line per commit
(the hwm of every panel it touched) after the commit returns.
"""

from __future__ import annotations

import json
import random
import sys

import protocol as p
from storage import IngestBatch, open_event_store


def next_batches(rng: random.Random, hwms: dict[int, int]) -> list[IngestBatch]:
    """One commit's batches: 1-8 of panels 1-8, each 1-400 events on from its hwm."""
    batches = []
    for panel in rng.sample(range(1, 9), rng.randint(1, 8)):
        start = hwms.get(panel, 0) + 1
        n = rng.randint(1, 400)
        records = b"".join(
            p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED, card=panel * 10**9 + s).pack()
            for s in range(start, start + n)
        )
        batches.append(
            IngestBatch(panel_id=panel, first_seq=start, last_seq=start + n - 1, records=records, received_us=1)
        )
    return batches


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = open_event_store(path)
    epoch = store.epoch
    hwms = store.hwms()
    while True:
        result = store.ingest(next_batches(rng, hwms), epoch)
        hwms.update(result.hwms)
        print(json.dumps(result.hwms), flush=True)


if __name__ == "__main__":
    main()
