"""The alarm lane (docs/protocol.md 7.6): ALARM and ALARM_ACK on the wire, the store's alarms
on both engines, and a panel whose alarms reach the store ahead of its backlog."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import protocol as p
from emulator import Fleet, LinkMode
from fieldsync.engine import Node
from fieldsync.harness import check
from storage import AlarmCursor, EventStore, EventStoreInterface, IngestAlarm, IngestBatch, open_event_store
from tests.store_engines import StoreEngine
from tests.strategies import frame_of
from tests.test_e2e import clock, node_settings, panel_settings
from tests.test_state_machines import HELLO, WELCOME

K = p.EventKind


def rec(seq: int, kind: p.EventKind = K.DOOR_FORCED, **kw: int) -> p.EventRecord:
    return p.EventRecord(seq=seq, time_us=1_000 + seq, kind=kind, **kw)  # type: ignore[arg-type]


def streaming_pair() -> tuple[p.PanelConnection, p.HostConnection]:
    panel, host = p.PanelConnection(now=0.0, epoch_floor=HELLO.max_epoch), p.HostConnection(now=0.0)
    host.receive_data(panel.send(HELLO, 0.0), 0.0)
    assert host.next_event() == HELLO
    panel.receive_data(host.send(WELCOME, 0.0), 0.0)
    assert panel.next_event() == WELCOME
    return panel, host


def deliver(
    src: p.PanelConnection | p.HostConnection, dst: p.PanelConnection | p.HostConnection, m: p.Message
) -> object:
    dst.receive_data(src.send(m, 0.0), 0.0)
    return dst.next_event()


# -- the wire -----------------------------------------------------------------------------


def test_an_alarm_goes_out_and_is_acknowledged_apart_from_the_batches() -> None:
    panel, host = streaming_pair()
    alarm = p.Alarm.of([rec(WELCOME.hwm + 40), rec(WELCOME.hwm + 90, K.TAMPER)])
    assert deliver(panel, host, alarm) == alarm
    assert panel.busy and host.busy  # an ALARM awaiting its ALARM_ACK keeps both ends busy (9.1)
    assert deliver(host, panel, p.AlarmAck(epoch=WELCOME.epoch, up_to_seq=alarm.last_seq)) is not None
    assert not panel.busy and not host.busy and panel.alarm_acked_seq == alarm.last_seq
    assert panel.acked_seq == WELCOME.hwm  # the event sequence did not move


@pytest.mark.parametrize(
    ("records", "code"),
    [
        ([rec(5, K.ACCESS_GRANTED)], p.ErrorCode.FIELD_OUT_OF_RANGE),  # not an alarm kind
        ([rec(7), rec(7, K.TAMPER)], p.ErrorCode.SEQ_ORDER),  # seqs must rise
        ([rec(9), rec(8)], p.ErrorCode.SEQ_ORDER),
        ([rec(9), rec(8), rec(20, K.ACCESS_GRANTED)], p.ErrorCode.FIELD_OUT_OF_RANGE),  # check 3 before 4
        ([p.RECORD_STRUCT.pack(4, 1, int(K.BUFFER_OVERFLOW), 0, 0, 0, 3, 1)], p.ErrorCode.FIELD_OUT_OF_RANGE),
    ],
)
def test_an_alarm_the_lane_does_not_allow_is_refused(records: list[p.EventRecord | bytes], code: p.ErrorCode) -> None:
    # (the last: a gap marker whose count is not its range's, packed raw: EventRecord refuses to build it)
    body = len(records).to_bytes(2, "big") + b"".join(r if isinstance(r, bytes) else r.pack() for r in records)
    with pytest.raises(p.RemoteProtocolError) as caught:
        p.decode_payload(p.MessageType.ALARM, body)
    assert caught.value.code == code


def test_alarm_framing_and_an_unknown_kind() -> None:
    with pytest.raises(p.RemoteProtocolError) as caught:
        p.decode_payload(p.MessageType.ALARM, (2).to_bytes(2, "big") + rec(3).pack())
    assert caught.value.code == p.ErrorCode.MALFORMED  # says 2, carries 1
    bad = bytearray(rec(3).pack())
    bad[16] = 99
    with pytest.raises(p.RemoteProtocolError) as caught:
        p.decode_payload(p.MessageType.ALARM, (1).to_bytes(2, "big") + bytes(bad))
    assert caught.value.code == p.ErrorCode.UNKNOWN_EVENT_KIND
    marker = rec(20, K.BUFFER_OVERFLOW, card=29, aux=10)  # a gap marker's copy is an alarm
    assert p.decode_payload(p.MessageType.ALARM, (1).to_bytes(2, "big") + marker.pack()) == p.Alarm.of([marker])


def test_the_sessions_alarms_rise_and_their_acks_stay_within_what_was_sent() -> None:
    panel, host = streaming_pair()
    deliver(panel, host, p.Alarm.of([rec(30)]))
    with pytest.raises(p.RemoteProtocolError) as caught:
        host.receive_data(frame_of(p.Alarm.of([rec(30, K.TAMPER)])), 0.0)  # not above the previous ALARM
        host.next_event()
    assert caught.value.code == p.ErrorCode.SEQ_ORDER
    panel, host = streaming_pair()
    deliver(panel, host, p.Alarm.of([rec(30)]))
    with pytest.raises(p.RemoteProtocolError) as caught:
        panel.receive_data(frame_of(p.AlarmAck(epoch=WELCOME.epoch, up_to_seq=31)), 0.0)  # above what was sent
        panel.next_event()
    assert caught.value.code == p.ErrorCode.BAD_ACK
    panel, host = streaming_pair()
    deliver(panel, host, p.Alarm.of([rec(30)]))
    deliver(host, panel, p.AlarmAck(epoch=WELCOME.epoch, up_to_seq=30))
    with pytest.raises(p.RemoteProtocolError) as caught:
        panel.receive_data(frame_of(p.AlarmAck(epoch=WELCOME.epoch, up_to_seq=29)), 0.0)  # goes back
        panel.next_event()
    assert caught.value.code == p.ErrorCode.BAD_ACK
    with pytest.raises(p.LocalProtocolError):  # and a node cannot send one either
        host.send(p.AlarmAck(epoch=WELCOME.epoch, up_to_seq=31), 0.0)


def test_alarms_in_picks_the_alarms_out_of_a_batch() -> None:
    records = [rec(1, K.ACCESS_GRANTED), rec(2), rec(3, K.DENIED_PIN), rec(4, K.HOST_OFFLINE)]
    packed = b"".join(r.pack() for r in records)
    assert p.alarms_in(packed) == records[1].pack() + records[3].pack()
    assert p.alarms_in(records[0].pack() + records[2].pack()) == b""


# -- the store, both engines ----------------------------------------------------------------


@pytest.fixture
def store(engine: StoreEngine) -> Iterator[EventStoreInterface]:
    store = open_event_store(engine.target)
    store.advance_epoch()
    yield store
    store.close()


def batch_of(panel: int, records: list[p.EventRecord], received_us: int) -> IngestBatch:
    packed = b"".join(r.pack() for r in records)
    return IngestBatch(
        panel_id=panel, first_seq=records[0].seq, last_seq=records[-1].seq, records=packed, received_us=received_us
    )


@pytest.mark.parametrize("mode", ["ingest", "append"])
def test_the_store_keeps_each_alarm_once_from_the_lane_or_from_its_batch(store: EventStoreInterface, mode: str) -> None:
    commit = store.ingest if mode == "ingest" else store.append
    lane = IngestAlarm(panel_id=7, records=rec(3).pack() + rec(5, K.TAMPER).pack(), received_us=10)
    first = commit([], 1, [lane])  # the lane's copies ahead of the backlog: a commit of alarms alone
    assert first.alarms_stored == 2 and first.hwms == {}
    backlog = [rec(1, K.ACCESS_GRANTED), rec(2, K.ACCESS_GRANTED), rec(3), rec(4, K.HOST_OFFLINE), rec(5, K.TAMPER)]
    second = commit([batch_of(7, backlog, 20)], 1, [IngestAlarm(panel_id=7, records=rec(3).pack(), received_us=20)])
    assert second.alarms_stored == 1  # the HOST_OFFLINE only its batch carried; the copies were there
    assert second.hwms == {7: 5}
    got = [(a.record.seq, a.record.kind, a.lane, a.received_us) for a in store.alarms(7)]
    assert got == [(3, K.DOOR_FORCED, True, 10), (5, K.TAMPER, True, 10), (4, K.HOST_OFFLINE, False, 20)]
    assert [a.order for a in store.alarms()] == sorted(a.order for a in store.alarms())
    store.materialize_all()
    assert store.seqs(7) == [1, 2, 3, 4, 5]  # the event sequence holds every record, alarms too
    third = commit([batch_of(7, backlog, 30)], 1)  # the same batch again: duplicates, no new alarm
    assert third.alarms_stored == 0 and len(store.alarms()) == 3


def test_a_declared_gap_is_an_alarm_too(store: EventStoreInterface) -> None:
    marker = rec(1, K.BUFFER_OVERFLOW, card=10, aux=10)
    store.ingest([batch_of(3, [marker, rec(11, K.ACCESS_GRANTED)], 5)], 1)
    assert [(a.record.kind, a.record.card, a.lane) for a in store.alarms(3)] == [(K.BUFFER_OVERFLOW, 10, False)]


def test_a_gap_that_took_the_seq_of_an_alarm_the_lane_brought_is_kept_beside_it(store: EventStoreInterface) -> None:
    # The lane brought the door forced at seq 1; then the buffer dropped seqs 1..4 and its
    # marker took seq 1. Both are alarms, each kept once.
    store.ingest([], 1, [IngestAlarm(panel_id=5, records=rec(1).pack(), received_us=1)])
    store.ingest([batch_of(5, [rec(1, K.BUFFER_OVERFLOW, card=4, aux=4), rec(5, K.ACCESS_GRANTED)], 2)], 1)
    got = [(a.record.seq, a.record.kind, a.record.card, a.lane) for a in store.alarms(5)]
    assert got == [(1, K.DOOR_FORCED, 0, True), (1, K.BUFFER_OVERFLOW, 4, False)]
    # A marker reaching below the hwm: its alarm is the part it records as lost, as its loss is.
    store.ingest([batch_of(5, [rec(3, K.BUFFER_OVERFLOW, card=9, aux=7), rec(10, K.ACCESS_GRANTED)], 3)], 1)
    loss = store.losses(5)[-1]
    gap = store.alarms(5)[-1].record
    assert (loss.first_seq, loss.last_seq) == (6, 9) and (gap.seq, gap.card, gap.aux) == (6, 9, 4)


def test_the_copies_of_a_panel_that_lost_its_counter_are_set_aside_not_in_the_way(store: EventStoreInterface) -> None:
    store.ingest([batch_of(8, [rec(s, K.ACCESS_GRANTED) for s in range(1, 41)], 1)], 1)
    store.ingest([], 1, [IngestAlarm(panel_id=8, records=rec(50, K.TAMPER).pack(), received_us=2)])  # ALARM_ACKed
    # Its power went before seq 50 was stored; the new boot numbers from 41 and records a
    # door forced at the seq 50 names now.
    assert store.orphan_alarms(8, 40) == 1
    renumbered = [rec(s, K.ACCESS_GRANTED) for s in range(41, 50)] + [rec(50, K.DOOR_FORCED)]
    assert store.ingest([batch_of(8, renumbered, 3)], 1).alarms_stored == 1
    got = [(a.record.seq, a.record.kind, a.lane, a.orphan) for a in store.alarms(8)]
    assert got == [(50, K.TAMPER, True, True), (50, K.DOOR_FORCED, False, False)]
    assert store.orphan_alarms(8, 50) == 0  # nothing of the new boot above its hwm


def test_the_alarm_feed_reads_only_what_is_new_and_acknowledgements_by_row(store: EventStoreInterface) -> None:
    store.ingest([], 1, [IngestAlarm(panel_id=5, records=rec(1).pack() + rec(2, K.TAMPER).pack(), received_us=1)])
    store.ingest([batch_of(5, [rec(1, K.BUFFER_OVERFLOW, card=4, aux=4), rec(5, K.ACCESS_GRANTED)], 2)], 1)
    feed = store.alarm_feed(AlarmCursor())
    assert [(a.panel_id, a.record.seq, a.record.kind) for a in feed.alarms] == [
        (5, 1, K.DOOR_FORCED),
        (5, 2, K.TAMPER),
        (5, 1, K.BUFFER_OVERFLOW),  # the gap marker at the door forced's seq: a row of its own
    ]
    assert feed.losses == ((5, K.BUFFER_OVERFLOW, 4),) and feed.acked == () and not feed.more
    assert store.alarm_feed(feed.cursor).alarms == ()  # nothing new
    forced, tamper, gap = (a.order for a in feed.alarms)
    door_forced = (forced, 5, 1, int(K.DOOR_FORCED))
    # Acknowledged by the row: the door forced, not the gap that shares its seq; a key that
    # names a row as something it is not (another database's listing) acknowledges nothing.
    wrong = [(gap, 5, 1, int(K.DOOR_FORCED)), (tamper, 5, 3, int(K.TAMPER)), (10**9, 5, 1, int(K.DOOR_FORCED))]
    assert store.acknowledge_alarms([door_forced, door_forced, *wrong], by="test", at_us=7) == 1
    assert store.acknowledge_alarms([door_forced], by="again", at_us=8) == 0  # once
    later = store.alarm_feed(feed.cursor)
    assert later.acked == (forced,) and later.alarms == () and later.losses == ()
    assert store.alarm_feed(later.cursor).acked == ()
    store.ingest([], 1, [IngestAlarm(panel_id=6, records=b"".join(rec(s).pack() for s in range(1, 6)), received_us=3)])
    first = store.alarm_feed(later.cursor, limit=2)  # a reader behind takes the rest next time
    assert len(first.alarms) == 2 and first.more
    rest = store.alarm_feed(first.cursor, limit=10)
    assert [a.record.seq for a in first.alarms + rest.alarms] == [1, 2, 3, 4, 5] and not rest.more
    assert {tamper, gap}.isdisjoint(later.acked)


def test_the_acknowledgements_an_earlier_console_kept_are_carried_over(tmp_path: Path) -> None:
    # Before migration m009 the console kept them in console_acks, by (panel, seq), outside
    # the migrations: a store of then, made by taking m009 back.
    path = tmp_path / "old.db"
    store = EventStore(path)
    store.advance_epoch()
    store.ingest([], 1, [IngestAlarm(panel_id=5, records=rec(1).pack() + rec(2, K.TAMPER).pack(), received_us=1)])
    store.ingest([batch_of(5, [rec(1, K.BUFFER_OVERFLOW, card=4, aux=4), rec(5, K.ACCESS_GRANTED)], 2)], 1)
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE alarm_acks")
        db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm009_alarm_acks'")
        db.execute("PRAGMA user_version = 8")
        db.execute(
            "CREATE TABLE console_acks (panel_id INTEGER NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL, "
            "acked_us INTEGER NOT NULL, acked_by TEXT NOT NULL, PRIMARY KEY (panel_id, seq))"
        )
        # The old console listed the gap marker at seq 1 (it took the door forced's key), and
        # its operator acknowledged that; and the tamper at seq 2, before it was stored.
        db.execute("INSERT INTO console_acks VALUES (5, 1, 14, 99, 'console 127.0.0.1')")
        db.execute("INSERT INTO console_acks VALUES (5, 2, 9, 0, 'console 127.0.0.1')")
    store = EventStore(path)
    try:
        feed = store.alarm_feed(AlarmCursor())
        gap = next(a.order for a in feed.alarms if a.record.kind is K.BUFFER_OVERFLOW)
        assert feed.acked == (gap,)  # the gap marker it acknowledged, not the door forced at its seq
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT name FROM sqlite_master WHERE name = 'console_acks'").fetchall() == []
            assert db.execute("SELECT acked_us, acked_by FROM alarm_acks").fetchall() == [(99, "console 127.0.0.1")]
    finally:
        store.close()


# -- end to end: a panel's alarms ahead of its backlog ---------------------------------------


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "no-lane"])
def test_offline_and_live_alarms_reach_the_store_ahead_of_the_backlog(
    site_pki: Path, tmp_path: Path, lane: bool
) -> None:
    port = 31330 if lane else 31340
    db = tmp_path / "site.db"

    async def main() -> None:
        # One batch in flight of 64 records: a backlog of 3,000 takes about 47 commits.
        settings = panel_settings(site_pki, 39, LinkMode.PUNCH_OUT, port, window=1, alarm_outbox=256 if lane else 0)
        fleet = Fleet([settings], seed=2, journal=True)
        panel = fleet.panels[39]
        for i in range(3000):
            if i == 2500:
                panel.record(K.DOOR_FORCED, door=2)
            else:
                panel.record(K.DENIED_PIN, door=1, card=i)
        node = Node(node_settings(site_pki, db, port))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(fleet.run)
            with trio.fail_after(60):
                await fleet.wait_connected()
                while panel.acked_seq < 1000:  # mid-replay: a live alarm behind 2,000 events
                    await trio.sleep(0.01)
            panel.record(K.TAMPER, door=3)
            with trio.fail_after(120):
                await fleet.wait_drained()
            nursery.cancel_scope.cancel()
        store = EventStore(db)
        try:
            alarms = {a.record.kind: a for a in store.alarms(39)}
            events = {e.record.seq: e for e in store.events(39)}
        finally:
            store.close()
        assert {K.DOOR_FORCED, K.TAMPER} <= set(alarms)
        for kind in (K.DOOR_FORCED, K.TAMPER):
            alarm = alarms[kind]
            event = events[alarm.record.seq]
            assert alarm.record == event.record  # the copy is the record
            assert alarm.lane is lane
            if lane:  # stored ahead of the batch that carried the record: commits earlier
                assert alarm.received_us < event.received_us, (kind, alarm, event)
            else:
                assert alarm.received_us == event.received_us
        assert panel.alarms_sent == (2 if lane else 0)
        # Left for the next session: the HOST_OFFLINE the panel recorded as this one ended.
        waiting = [p.EventRecord.unpack(r).kind for r in panel.alarm_outbox]
        assert waiting == ([K.HOST_OFFLINE] if lane else [])
        if lane:
            check_the_checker_on_the_lane(db, fleet)

    trio.run(main, clock=clock())


def check_the_checker_on_the_lane(db: Path, fleet: Fleet) -> None:
    """The checker's view of the lane holds on the real run, and each way of breaking the
    store's alarms breaks the promise it belongs to (its negative controls)."""
    import sqlite3

    def verdict() -> dict[str, tuple[bool, str]]:
        report = check(db, fleet.panels.values())
        return report.promises()

    promises = verdict()
    assert promises["P1 nothing acknowledged is lost"][0] and promises["P2 exactly once, in order"][0], promises
    assert "alarms 2: 0 unexpected" in promises["P2 exactly once, in order"][1]
    panel = fleet.panels[39]
    assert len(panel.alarms_lane_acked) == 2  # both went by the lane and were acknowledged by it

    def broken(sql: str, promise: str, words: str) -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(sql)
            conn.commit()
        try:
            ok, text = verdict()[promise]
            assert not ok and words in text, (sql, text)
        finally:
            with sqlite3.connect(db) as conn:  # put it back for the next control
                conn.execute("DELETE FROM alarms")
                conn.executemany("INSERT INTO alarms VALUES (" + ", ".join("?" * len(saved[0])) + ")", saved)

    with sqlite3.connect(db) as conn:
        saved = conn.execute("SELECT * FROM alarms ORDER BY id").fetchall()
    ids = [row[0] for row in saved]
    p1, p2 = "P1 nothing acknowledged is lost", "P2 exactly once, in order"
    broken(f"DELETE FROM alarms WHERE id = {ids[0]}", p1, "1 acknowledged by the lane missing from it")
    broken(f"UPDATE alarms SET lane = 0 WHERE id = {ids[0]}", p1, "1 acknowledged by the lane missing")
    broken(f"UPDATE alarms SET id = 1000 - id WHERE id IN ({ids[0]}, {ids[1]})", p2, "1 out of order in the lane")
    broken(
        "INSERT INTO alarms (panel_id, seq, time_us, kind, door, reader, flags, card, aux, received_us, epoch, "
        "lane, gap) VALUES (39, 7, 1, 9, 0, 0, 0, 0, 0, 1, 1, 1, 0)",
        p2,
        "1 unexpected or twice",
    )
    assert verdict()[p1][0] and verdict()[p2][0]  # restored: both hold again


def test_a_panels_queued_alarms_leave_its_batch_window_alone(site_pki: Path, tmp_path: Path) -> None:
    # Eight ALARMs of one panel await their commit (nothing commits: the node does not run);
    # its reader must still take the batches of its window, or an ALARM behind them waits.
    import types

    from fieldsync.engine._ingest import ALARM_WINDOW

    node = Node(node_settings(site_pki, tmp_path / "n.db", 31345))
    session = types.SimpleNamespace(panel_id=4, driver=types.SimpleNamespace(ending=False))

    async def main() -> None:
        for seq in range(1, ALARM_WINDOW + 1):
            await node.ingest.put_alarm(session, p.Alarm(records=rec(seq).pack()))  # type: ignore[arg-type]
        with trio.fail_after(5):  # the MockClock: a put that waits never returns, and this fails in 0.5 s
            for seq in range(1, node.ingest.window + 1):
                batch = p.EventBatch(first_seq=100 + seq, records=rec(100 + seq, K.ACCESS_GRANTED).pack())
                await node.ingest.put(session, batch)  # type: ignore[arg-type]

    trio.run(main, clock=clock())
    assert node.ingest.queued(4) == ALARM_WINDOW + node.ingest.window


def test_a_replaced_session_queues_nothing_after_its_replacement(site_pki: Path, tmp_path: Path) -> None:
    """A session ended (REPLACED by a new session of its panel) while its handler was on its way
    to the ingest queues neither an ALARM nor a batch: the new session waited only for what
    was queued before, and set aside the lane copies above its hwm then. Committed after, a
    RAM panel's copy from before its power cut stood for a record that never reached the store
    (power-cycle-during-replay-ram broke P2 under load)."""
    import types

    node = Node(node_settings(site_pki, tmp_path / "n.db", 31346))
    driver = types.SimpleNamespace(ending=False)
    session = types.SimpleNamespace(panel_id=4, driver=driver)

    async def main() -> None:
        await node.ingest.put_alarm(session, p.Alarm(records=rec(1).pack()))  # type: ignore[arg-type]
        await node.ingest.put(session, p.EventBatch(first_seq=2, records=rec(2, K.ACCESS_GRANTED).pack()))  # type: ignore[arg-type]
        assert node.ingest.queued(4) == 2
        driver.ending = True  # replaced: what comes now is dropped
        await node.ingest.put_alarm(session, p.Alarm(records=rec(3).pack()))  # type: ignore[arg-type]
        await node.ingest.put(session, p.EventBatch(first_seq=4, records=rec(4, K.ACCESS_GRANTED).pack()))  # type: ignore[arg-type]

    trio.run(main, clock=clock())
    assert node.ingest.queued(4) == 2
