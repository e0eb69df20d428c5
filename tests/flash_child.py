"""Child for the power-cycle test: append and sync a flash buffer, report sync points."""

from __future__ import annotations

import sys

import protocol as p
from storage import FlashBackedBuffer, OverflowPolicy


def main() -> None:
    path, per_sync = sys.argv[1], int(sys.argv[2])
    buf = FlashBackedBuffer(path, 4096 * p.RECORD_SIZE, OverflowPolicy.DROP_OLDEST)
    t = 0
    while True:
        for _ in range(per_sync):
            t += 1
            buf.append(t, p.EventKind.ACCESS_GRANTED, card=t)
        buf.sync()
        if buf.synced_seq % 3 == 0:
            buf.release(buf.synced_seq - per_sync)  # acks arrive now and then
        print(buf.synced_seq, buf.statistics().acked, flush=True)


if __name__ == "__main__":
    main()
