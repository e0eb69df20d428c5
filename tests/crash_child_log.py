"""Child process for the batch log's crash test: append and materialize forever.

Run as ``python -m tests.crash_child_log TARGET SEED [--split]`` (a SQLite file or a
PostgreSQL URL). Each commit of ``append``
prints the hwm of every panel it touched, after the commit returns; between commits a
materializer on a second connection moves part of the log into ``events`` (as a node's
does, on its own thread). ``--split`` is the negative control's broken materializer: it
deletes the log rows in one transaction and inserts their events in a second, and prints
``between`` when the first is committed and the second not yet begun.
"""

from __future__ import annotations

import json
import random
import sys
import time

from storage import EventStore, EventStoreInterface, LogBacklog, is_database_url, open_event_store
from tests.crash_child import next_batches


class _SplitMaterializer(EventStore):
    """Moves the log in two transactions: a kill between them loses what was moved."""

    def materialize(self, max_events: int = 16_384) -> LogBacklog:
        rows = self._conn.execute(
            "SELECT id, panel_id, received_us, epoch, events, records FROM batch_log ORDER BY id LIMIT 8"
        ).fetchall()
        if not rows:
            return LogBacklog()
        self._conn.execute("DELETE FROM batch_log WHERE id <= ?", (rows[-1][0],))
        print("between", flush=True)
        time.sleep(0.5)  # the parent's kill lands here
        self._conn.execute("BEGIN IMMEDIATE")
        for _id, pid, received_us, epoch, _n, records in rows:
            self._insert_rows(pid, received_us, epoch, records, 0)
        self._conn.execute("COMMIT")
        return LogBacklog(batches=len(rows), events=sum(r[4] for r in rows))


def _split_pg_materializer(url: str) -> EventStoreInterface:
    """PostgreSQL's broken materializer: the DELETE commits alone, the COPY later."""
    from storage._pg_store import _COPY_HEADER, _COPY_TRAILER, PgEventStore, copy_rows

    class _SplitPg(PgEventStore):
        def materialize(self, max_events: int = 16_384) -> LogBacklog:
            rows = (
                self._pg.get()  # autocommit: the DELETE is a transaction of its own
                .execute(
                    "DELETE FROM batch_log WHERE id IN (SELECT id FROM batch_log ORDER BY id LIMIT 8) "
                    "RETURNING id, panel_id, received_us, epoch, events, records"
                )
                .fetchall()
            )
            if not rows:
                return LogBacklog()
            print("between", flush=True)
            time.sleep(0.5)  # the parent's kill lands here
            payload = b"".join([_COPY_HEADER, *(copy_rows(r[1], r[2], r[3], r[5]) for r in rows), _COPY_TRAILER])
            with (
                self._writing("materializing") as conn,
                conn.cursor().copy("COPY events FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.write(payload)
            return LogBacklog(batches=len(rows), events=sum(r[4] for r in rows))

    return _SplitPg(url, durable=False)


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    store = open_event_store(path)
    if "--split" not in sys.argv:
        mover = open_event_store(path, durable=False)
    elif is_database_url(path):
        mover = _split_pg_materializer(path)
    else:
        mover = _SplitMaterializer(path, durable=False)
    epoch = store.epoch
    hwms = store.hwms()
    while True:
        result = store.append(next_batches(rng, hwms), epoch)
        hwms.update(result.hwms)
        print(json.dumps(result.hwms), flush=True)
        if rng.random() < 0.5:
            mover.materialize(rng.randint(1, 2000))


if __name__ == "__main__":
    main()
