"""Two state machines linked back to back (h11's ConnectionPair), in virtual time."""

from __future__ import annotations

import pytest

import protocol as p


class ConnectionPair:
    """A panel and a host whose bytes go straight to each other."""

    def __init__(self, *, epoch_floor: int = 0) -> None:
        self.now = 0.0
        self.panel = p.PanelConnection(now=0.0, epoch_floor=epoch_floor)
        self.host = p.HostConnection(now=0.0)
        self.log: list[tuple[float, str, p.Message]] = []

    def _deliver(self, data: bytes, to: p.PanelConnection | p.HostConnection, label: str) -> list[p.Message]:
        to.receive_data(data, self.now)
        got: list[p.Message] = []
        while not isinstance(event := to.next_event(), p.NeedData):
            assert not isinstance(event, p.ConnectionClosed)
            got.append(event)
            self.log.append((self.now, label, event))
        return got

    def panel_sends(self, message: p.Message) -> list[p.Message]:
        return self._deliver(self.panel.send(message, self.now), self.host, "panel->host")

    def host_sends(self, message: p.Message) -> list[p.Message]:
        return self._deliver(self.host.send(message, self.now), self.panel, "host->panel")

    def advance_to(self, when: float) -> None:
        """Run both timers up to ``when``, in deadline order, like a trio loop would."""
        while True:
            deadlines = [(d, c) for c in (self.panel, self.host) if (d := c.next_deadline()) is not None and d <= when]
            if not deadlines:
                break
            deadline, conn = min(deadlines, key=lambda x: x[0])
            self.now = deadline
            data = conn.handle_timer(self.now)
            if data:
                other = self.host if conn is self.panel else self.panel
                self._deliver(data, other, "panel->host" if conn is self.panel else "host->panel")
        self.now = when


def test_full_session_with_ten_thousand_events() -> None:
    pair = ConnectionPair(epoch_floor=2)
    hello = p.Hello(
        config_digest=p.EMPTY_DIGEST,
        panel_id=4,
        boot_id=77,
        firmware="emu",
        oldest_seq=1,
        newest_seq=10_000,
        config_version=5,
        max_epoch=2,
    )
    assert pair.panel_sends(hello) == [hello]
    assert pair.host.state is p.State.HELLO_RECEIVED
    pair.host_sends(
        p.Welcome(
            config_digest=p.EMPTY_DIGEST, node_id="B", epoch=3, hwm=0, config_version=6, heartbeat_ms=500, idle_ms=2500
        )
    )
    assert pair.panel.state is pair.host.state is p.State.STREAMING
    assert pair.panel.epoch_floor == 3

    window, size, seq, stored = 4, 250, 1, 0
    in_flight: list[p.EventBatch] = []
    while stored < 10_000:
        while seq <= 10_000 and len(in_flight) < window:
            batch = p.EventBatch.of(
                [
                    p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED, card=s)
                    for s in range(seq, seq + size)
                ]
            )
            assert pair.panel_sends(batch) == [batch]
            in_flight.append(batch)
            seq += size
        pair.now += 0.002  # one group commit
        done = in_flight.pop(0)
        stored = done.last_seq
        pair.host_sends(p.Ack(epoch=3, up_to_seq=stored))
        assert pair.panel.acked_seq == stored
    assert pair.panel.sent_seq == pair.host.sent_seq == 10_000
    assert pair.now == pytest.approx(40 * 0.002)

    delta = p.ConfigDelta(
        digest=p.EMPTY_DIGEST,
        epoch=3,
        from_version=5,
        to_version=6,
        ops=(p.PutDoor(door=p.Door(door=1, mode=p.DoorMode.LOCKED)),),
    )
    assert pair.host_sends(delta) == [delta]
    pair.panel_sends(p.ConfigAck(digest=p.EMPTY_DIGEST, version=6))
    assert pair.host.config_acked == 6

    # Liveness (docs/protocol.md 9.1): H 0.5 s, I 2.5 s from WELCOME. Nothing is outstanding
    # (both sides last sent at 0.08 s): the quiet panel probes once per I (due at 2.58 s, put
    # off to the next 0.1 s of the clock: rule 2's slack), the node answers each probe at once
    # and sends nothing of its own.
    assert not pair.panel.busy and not pair.host.busy
    pair.advance_to(6.0)
    beats = [(t, who) for t, who, m in pair.log if isinstance(m, p.Heartbeat)]
    assert beats == [
        (pytest.approx(2.6), "panel->host"),
        (pytest.approx(2.6), "host->panel"),
        (pytest.approx(5.1), "panel->host"),
        (pytest.approx(5.1), "host->panel"),
    ]
    assert pair.panel.state is p.State.STREAMING

    # The host goes silent: the panel's next probe makes it busy; it repeats the probe every H
    # and declares the node dead 3 x H after the first unanswered one.
    last_heard = max(t for t, who, _ in pair.log if who == "host->panel")
    probes = []
    with pytest.raises(p.PeerTimeout, match="while this end waited"):
        while True:
            deadline = pair.panel.next_deadline()
            assert deadline is not None
            pair.now = deadline
            if pair.panel.handle_timer(pair.now):
                probes.append(pair.now)
    assert probes == pytest.approx([last_heard + 2.5, last_heard + 3.0, last_heard + 3.5])
    assert pair.now == pytest.approx(last_heard + 2.5 + 1.5)
    assert pair.panel.state is p.State.ERROR


def test_handshake_timeout_is_exact() -> None:
    panel = p.PanelConnection(now=10.0)
    panel.send(
        p.Hello(
            config_digest=p.EMPTY_DIGEST,
            panel_id=1,
            boot_id=1,
            firmware="",
            oldest_seq=0,
            newest_seq=0,
            config_version=0,
            max_epoch=0,
        ),
        12.0,
    )
    assert panel.next_deadline() == 17.0
    assert panel.handle_timer(16.999) == b""
    with pytest.raises(p.PeerTimeout):
        panel.handle_timer(17.0)
    host = p.HostConnection(now=3.0, handshake_timeout=2.0)
    assert host.next_deadline() == 5.0


def _streaming_pair() -> ConnectionPair:
    pair = ConnectionPair()
    pair.panel_sends(
        p.Hello(
            config_digest=p.EMPTY_DIGEST,
            panel_id=4,
            boot_id=1,
            firmware="e",
            oldest_seq=0,
            newest_seq=0,
            config_version=0,
            max_epoch=0,
        )
    )
    pair.host_sends(
        p.Welcome(
            config_digest=p.EMPTY_DIGEST, node_id="A", epoch=1, hwm=0, config_version=9, heartbeat_ms=1000, idle_ms=5000
        )
    )
    return pair


def test_snapshot_in_parts_is_acked_only_when_complete() -> None:
    pair = _streaming_pair()
    for part in range(2):
        pair.host_sends(p.ConfigSnapshot(digest=p.EMPTY_DIGEST, epoch=1, version=9, part=part, parts=3, ops=()))
    assert pair.panel.config_version == 0
    with pytest.raises(p.LocalProtocolError) as info:
        pair.panel.send(p.ConfigAck(digest=p.EMPTY_DIGEST, version=9), pair.now)
    assert info.value.code is p.ErrorCode.CONFIG_VERSION

    pair = _streaming_pair()
    for part in range(3):
        pair.host_sends(p.ConfigSnapshot(digest=p.EMPTY_DIGEST, epoch=1, version=9, part=part, parts=3, ops=()))
    assert pair.panel.config_version == 9
    pair.panel_sends(p.ConfigAck(digest=p.EMPTY_DIGEST, version=9))
    assert pair.host.config_acked == 9


def test_a_paused_reader_does_not_blame_the_peer() -> None:
    pair = _streaming_pair()  # heartbeat 1 s, dead after 3 s of silence while busy
    records = [p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED) for s in (1, 2)]
    pair.panel_sends(p.EventBatch.of(records))  # the host owes an ACK: busy from 0.0
    assert pair.host.busy
    pair.host.pause_reading()
    assert pair.host.next_deadline() == 1.0  # only its own heartbeat is due
    pair.host.handle_timer(10.0)  # ten seconds deaf by its own choice: still alive
    assert pair.host.state is p.State.STREAMING
    pair.host.resume_reading(10.0)
    assert pair.host.next_deadline() == 11.0  # next own heartbeat (sent at 10.0)
    with pytest.raises(p.PeerTimeout):
        pair.host.handle_timer(13.0)  # three seconds after resuming


class LossyPair(ConnectionPair):
    """Both ends as on a serial line: resynchronizing decoders and a 3 s reply timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.panel = p.PanelConnection(now=0.0, resync=True, reply_timeout=3.0)
        self.host = p.HostConnection(now=0.0, resync=True, reply_timeout=3.0)
        self.panel_sends(
            p.Hello(
                config_digest=p.EMPTY_DIGEST,
                panel_id=9,
                boot_id=1,
                firmware="emu",
                oldest_seq=1,
                newest_seq=50,
                config_version=0,
                max_epoch=0,
            )
        )
        self.host_sends(
            p.Welcome(
                config_digest=p.EMPTY_DIGEST,
                node_id="A",
                epoch=1,
                hwm=0,
                config_version=1,
                heartbeat_ms=1000,
                idle_ms=5000,
            )
        )

    def batch(self, first: int, count: int) -> p.EventBatch:
        return p.EventBatch.of(
            [p.EventRecord(seq=s, time_us=s, kind=p.EventKind.ACCESS_GRANTED) for s in range(first, first + count)]
        )


def test_a_lost_ack_on_a_line_ends_the_session_at_the_exact_reply_timeout() -> None:
    pair = LossyPair()
    pair.now = 1.0
    pair.panel_sends(pair.batch(1, 10))
    pair.now = 2.0
    pair.panel_sends(pair.batch(11, 10))  # a second batch does not restart the wait
    pair.now = 2.5
    pair.host_sends(p.Ack(epoch=1, up_to_seq=10))  # progress: the wait for 11..20 starts now
    assert pair.panel.next_deadline() == pytest.approx(3.0)  # heartbeats still come first
    # The ACK for 11..20 is lost on the line; heartbeats keep both ends "alive".
    pair.host.send(p.Ack(epoch=1, up_to_seq=20), pair.now)
    with pytest.raises(p.PeerTimeout, match=r"no ACK for seqs 11\.\.20 within 3 s") as caught:
        pair.advance_to(10.0)
    assert pair.now == pytest.approx(5.5)
    assert caught.value.code is p.ErrorCode.TIMEOUT
    assert pair.panel.state is p.State.ERROR


def test_a_lost_config_ack_on_a_line_ends_the_host_session() -> None:
    pair = LossyPair()
    pair.now = 1.0
    pair.host_sends(p.ConfigDelta(digest=p.EMPTY_DIGEST, epoch=1, from_version=0, to_version=1, ops=()))
    pair.panel.send(p.ConfigAck(digest=p.EMPTY_DIGEST, version=1), pair.now)  # lost on the line
    # The host waits from 1.0 and the quiet panel owes it nothing it knows of: 3 s later the
    # host ends the session (its silence limit and the reply timeout fall together).
    with pytest.raises(p.PeerTimeout, match="while this end waited"):
        pair.advance_to(10.0)
    assert pair.now == pytest.approx(4.0)


def test_acks_that_keep_coming_keep_a_lossy_session_up() -> None:
    pair = LossyPair()
    seq = 1
    for step in range(1, 40):
        pair.now = step * 0.5
        pair.panel_sends(pair.batch(seq, 5))
        seq += 5
        pair.advance_to(step * 0.5 + 0.4)
        pair.host_sends(p.Ack(epoch=1, up_to_seq=seq - 1))
    pair.advance_to(60.0)  # all acked: nothing awaited, heartbeats only
    assert pair.panel.state is pair.host.state is p.State.STREAMING


def test_a_reliable_stream_has_no_reply_timeout_and_cannot_drop_partial_frames() -> None:
    pair = ConnectionPair()
    pair.panel_sends(
        p.Hello(
            config_digest=p.EMPTY_DIGEST,
            panel_id=9,
            boot_id=1,
            firmware="emu",
            oldest_seq=0,
            newest_seq=0,
            config_version=0,
            max_epoch=0,
        )
    )
    pair.host_sends(
        p.Welcome(
            config_digest=p.EMPTY_DIGEST, node_id="A", epoch=1, hwm=0, config_version=0, heartbeat_ms=1000, idle_ms=5000
        )
    )
    pair.panel_sends(p.EventBatch.of([p.EventRecord(seq=1, time_us=1, kind=p.EventKind.ACCESS_GRANTED)]))
    pair.advance_to(100.0)  # slow commits are fine on TCP; heartbeats keep it up
    assert pair.panel.state is p.State.STREAMING
    with pytest.raises(p.LocalProtocolError, match="only a resync"):
        pair.panel.drop_partial_frame()


def test_a_partial_frame_is_dropped_and_counted_on_a_line() -> None:
    pair = LossyPair()
    frame = pair.panel.send(pair.batch(1, 3), 0.0)
    pair.host.receive_data(frame[:40], 0.0)  # the rest never comes: the line went quiet
    assert isinstance(pair.host.next_event(), p.NeedData)
    assert pair.host.pending_bytes == 40
    assert pair.host.drop_partial_frame() == 40
    assert pair.host.statistics().bytes_skipped == 40
    # The same frame, whole this time, decodes: the dropped part left no trace.
    pair.host.receive_data(frame, 0.0)
    assert isinstance(pair.host.next_event(), p.EventBatch)
