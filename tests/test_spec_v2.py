"""The ways a panel written from docs/protocol.md got stuck or diverged with version 1.

Each test drives a real node over loopback TCP with a panel that follows the spec
and nothing else (a bare ``PanelConnection``), and fails on the version-1 node:
an idle panel never converged, a panel ahead of the server kept its content, a
wild event time blocked the queue, an all-duplicate batch got no ACK, a resend
from the buffer's start got SEQ_ORDER, and a stopping node said nothing.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import protocol as p
from fieldsync.engine import Node, NodeSettings
from protocol.streams import MessageStream, dial
from storage import ConfigStore, EventStore

VIP = "127.0.0.100"
DOOR_LOCKED = p.PutDoor(door=p.Door(door=1, mode=p.DoorMode.LOCKED))
CARD = p.PutCardholder(cardholder=p.Cardholder(card=4242, levels=(1,)))


def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(rate=10, autojump_threshold=0.02)


def hello(panel_id: int, **kw: object) -> p.Hello:
    fields: dict[str, object] = {
        "panel_id": panel_id,
        "boot_id": 1,
        "firmware": "spec-panel",
        "oldest_seq": 0,
        "newest_seq": 0,
        "config_version": 0,
        "config_digest": p.EMPTY_DIGEST,
        "max_epoch": 0,
        **kw,
    }
    return p.Hello(**fields)  # type: ignore[arg-type]


def records(first: int, n: int, *, time_us: int = 1) -> p.EventBatch:
    return p.EventBatch.of(
        [
            p.EventRecord(seq=s, time_us=time_us, kind=p.EventKind.ACCESS_GRANTED, card=s)
            for s in range(first, first + n)
        ]
    )


@asynccontextmanager
async def serving(db: Path, port: int, **kw: object) -> AsyncIterator[Node]:
    node = Node(NodeSettings(node_id="A", db=db, listen=(VIP, port), tls=None, **kw))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield node
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def session(port: int, greeting: p.Hello) -> AsyncIterator[tuple[MessageStream, p.Welcome]]:
    link = await dial(VIP, port, None)
    ms = MessageStream(link.stream, p.PanelConnection(now=trio.current_time(), epoch_floor=greeting.max_epoch))
    try:
        await ms.send(greeting)
        welcome = await ms.receive()
        assert isinstance(welcome, p.Welcome), welcome
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ms.run_timers)  # heartbeats, as the spec asks of a panel
            yield ms, welcome
            nursery.cancel_scope.cancel()
    finally:
        await ms.aclose()


async def next_message(ms: MessageStream, *, within: float = 5.0) -> p.Message:
    """The next message other than a HEARTBEAT, within ``within`` virtual seconds."""
    with trio.fail_after(within):
        while True:
            message = await ms.receive()
            if not isinstance(message, p.Heartbeat):
                return message


def config_db(tmp_path: Path, *changes: list[p.ConfigOp]) -> Path:
    db = tmp_path / "site.db"
    store = ConfigStore(db)
    for ops in changes:
        store.change(ops)
    store.close()
    return db


def test_an_idle_panel_converges_without_sending_an_event(tmp_path: Path) -> None:
    # Version 1 pushed configuration only after the panel's next EVENT_BATCH.
    db = config_db(tmp_path, [DOOR_LOCKED], [CARD])
    port = 31110

    async def main() -> None:
        async with serving(db, port), session(port, hello(1)) as (ms, welcome):
            assert welcome.config_version == 2
            push = await next_message(ms)
            assert isinstance(push, p.ConfigDelta)
            assert (push.from_version, push.to_version) == (0, 2)
            assert push.digest == welcome.config_digest
            await ms.send(p.ConfigAck(version=2, digest=push.digest))
            with trio.move_on_after(3) as quiet:
                extra = await next_message(ms, within=10)
            assert quiet.cancelled_caught, f"nothing more is owed to a converged panel, got {extra!r}"

    trio.run(main, clock=clock())


@pytest.mark.parametrize("claim", ["ahead", "same version, other content", "behind, other content"])
def test_a_panel_whose_content_differs_gets_a_snapshot(tmp_path: Path, claim: str) -> None:
    # Version 1 compared versions only: a panel ahead kept its content once the server caught up.
    db = config_db(tmp_path, [DOOR_LOCKED], [CARD])
    port = 31120 + ["ahead", "same version, other content", "behind, other content"].index(claim)
    other = p.config_digest([p.PutDoor(door=p.Door(door=9, mode=p.DoorMode.UNLOCKED))])
    version = {"ahead": 7, "same version, other content": 2, "behind, other content": 1}[claim]

    async def main() -> None:
        greeting = hello(2, config_version=version, config_digest=other)
        async with serving(db, port), session(port, greeting) as (ms, welcome):
            push = await next_message(ms)
            assert isinstance(push, p.ConfigSnapshot), push
            assert (push.version, push.part, push.parts) == (2, 0, 1)
            assert push.digest == welcome.config_digest == p.config_digest(push.ops)
            await ms.send(p.ConfigAck(version=2, digest=push.digest))

    trio.run(main, clock=clock())


def test_a_converged_panel_gets_no_push(tmp_path: Path) -> None:
    db = config_db(tmp_path, [DOOR_LOCKED])
    port = 31130
    digest = p.config_digest([DOOR_LOCKED])

    async def main() -> None:
        async with serving(db, port), session(port, hello(3, config_version=1, config_digest=digest)) as (ms, w):
            assert (w.config_version, w.config_digest) == (1, digest)
            with trio.move_on_after(3) as quiet:
                extra = await next_message(ms, within=10)
            assert quiet.cancelled_caught, f"a converged panel was sent {extra!r}"

    trio.run(main, clock=clock())


def test_a_wrong_digest_after_a_delta_gets_a_snapshot_and_after_a_snapshot_an_error(tmp_path: Path) -> None:
    db = config_db(tmp_path, [DOOR_LOCKED])
    port = 31135
    wrong = bytes(32)

    async def main() -> None:
        async with serving(db, port), session(port, hello(4)) as (ms, _):
            delta = await next_message(ms)
            assert isinstance(delta, p.ConfigDelta)
            await ms.send(p.ConfigAck(version=delta.to_version, digest=wrong))
            snapshot = await next_message(ms)
            assert isinstance(snapshot, p.ConfigSnapshot) and snapshot.version == 1
            await ms.send(p.ConfigAck(version=1, digest=wrong))
            error = await next_message(ms)
            assert isinstance(error, p.Error) and error.code == p.ErrorCode.CONFIG_DIGEST

    trio.run(main, clock=clock())


def test_a_wild_event_time_is_stored_and_the_queue_moves_on(tmp_path: Path) -> None:
    # Version 1 refused time_us >= 2**63 with SEQ_GAP on every try: the panel's queue stuck.
    db = tmp_path / "site.db"
    port = 31140

    async def main() -> None:
        async with serving(db, port), session(port, hello(5, oldest_seq=1, newest_seq=3)) as (ms, welcome):
            assert welcome.hwm == 0
            await ms.send(records(1, 1, time_us=2**64 - 1))
            await ms.send(records(2, 2))
            acked = 0
            while acked < 3:
                ack = await next_message(ms)
                assert isinstance(ack, p.Ack), ack
                acked = ack.up_to_seq
        store = EventStore(db)
        try:
            assert [e.record.time_us for e in store.events(5)] == [2**64 - 1, 1, 1]
        finally:
            store.close()

    trio.run(main, clock=clock())


def test_a_batch_of_duplicates_is_acknowledged_and_a_resend_from_the_start_is_served(tmp_path: Path) -> None:
    # Version 1 sent no ACK for an all-duplicate batch, and refused the batch after it with
    # SEQ_ORDER: a panel resending its buffer from its oldest event could never get past hwm.
    db = tmp_path / "site.db"
    port = 31150

    async def main() -> None:
        async with serving(db, port):
            async with session(port, hello(6, oldest_seq=1, newest_seq=10)) as (ms, _):
                await ms.send(records(1, 10))
                ack = await next_message(ms)
                assert isinstance(ack, p.Ack) and ack.up_to_seq == 10
            async with session(port, hello(6, oldest_seq=1, newest_seq=14, max_epoch=1)) as (ms, welcome):
                assert welcome.hwm == 10
                await ms.send(records(1, 5))  # all duplicates
                ack = await next_message(ms)
                assert isinstance(ack, p.Ack) and ack.up_to_seq == 10
                await ms.send(records(6, 5))  # continues the previous batch, still below hwm
                ack = await next_message(ms)
                assert isinstance(ack, p.Ack) and ack.up_to_seq == 10
                await ms.send(records(11, 4))
                ack = await next_message(ms)
                assert isinstance(ack, p.Ack) and ack.up_to_seq == 14
        store = EventStore(db)
        try:
            assert [e.record.seq for e in store.events(6)] == list(range(1, 15))
        finally:
            store.close()

    trio.run(main, clock=clock())


def test_a_stopping_node_stores_acknowledges_and_says_bye(tmp_path: Path) -> None:
    # Version 1 closed the sockets: a planned stop looked like a crash.
    db = tmp_path / "site.db"
    port = 31160

    async def main() -> None:
        node = Node(NodeSettings(node_id="A", db=db, listen=(VIP, port), tls=None))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            async with session(port, hello(7, oldest_seq=1, newest_seq=20)) as (ms, _):
                await ms.send(records(1, 20))
                node.stop()
                got = [await next_message(ms), await next_message(ms)]
                assert isinstance(got[0], p.Ack) and got[0].up_to_seq == 20
                assert isinstance(got[1], p.Bye) and got[1].reason == p.ErrorCode.SHUTTING_DOWN
            # While it drains, a new HELLO is refused as SHUTTING_DOWN (or finds the node gone).
        store = EventStore(db)
        try:
            assert store.hwm(7) == 20
        finally:
            store.close()

    trio.run(main, clock=clock())


def test_a_node_answers_another_version_in_that_version(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    port = 31170

    async def main() -> None:
        async with serving(db, port):
            link = await dial(VIP, port, None)
            head = struct.pack(">2sBBBI", b"\xf5\x5c", 1, 1, 0, 0)
            from crc32c import crc32c

            head += (crc32c(head) & 0xFFFF).to_bytes(2, "big")
            await link.stream.send_all(head + crc32c(head).to_bytes(4, "big"))
            reply = b""
            with trio.fail_after(5):
                while len(reply) < 11 or len(reply) < 15 + int.from_bytes(reply[5:9], "big"):
                    chunk = await link.stream.receive_some(4096)
                    assert chunk, "node closed without answering"
                    reply += chunk
            await link.stream.aclose()
            assert reply[2] == 1, "the answer must carry the peer's version byte"
            assert reply[3] == p.MessageType.ERROR
            _epoch, code = struct.unpack_from(">QH", reply, 11)
            assert code == p.ErrorCode.UNSUPPORTED_VERSION
            assert f"version {p.PROTOCOL_VERSION}".encode() in reply[21:-4]

    trio.run(main, clock=clock())


def test_a_panel_outside_the_site_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    port = 31180

    async def main() -> None:
        async with serving(db, port, known_panels=frozenset({1, 2})):
            link = await dial(VIP, port, None)
            ms = MessageStream(link.stream, p.PanelConnection(now=trio.current_time()))
            await ms.send(hello(3))
            error = await next_message(ms)
            await ms.aclose()
            assert isinstance(error, p.Error) and error.code == p.ErrorCode.UNKNOWN_PANEL

    trio.run(main, clock=clock())


@pytest.mark.slow
def test_serve_from_a_site_file_refuses_strangers_and_says_bye_on_sigterm(tmp_path: Path) -> None:
    """``fieldsync serve`` as a user runs it: a real process, a real SIGTERM."""
    import os
    import signal
    import subprocess
    import sys

    port = 31190
    site = tmp_path / "site.toml"
    site.write_text(
        f'[site]\ndb = "{tmp_path / "site.db"}"\ninsecure = true\nvip = "{VIP}"\nport = {port}\n'
        '[fleet]\npanels = 2\nmode = "punch-out"\n'
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "fieldsync.cli", "serve", "--site", str(site)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()

        async def main() -> None:
            with trio.fail_after(20):
                link = await dial(VIP, port, None)
                stranger = MessageStream(link.stream, p.PanelConnection(now=trio.current_time()))
                await stranger.send(hello(99))
                refused = await next_message(stranger)
                await stranger.aclose()
                assert isinstance(refused, p.Error) and refused.code == p.ErrorCode.UNKNOWN_PANEL
                async with session(port, hello(2, oldest_seq=1, newest_seq=8)) as (ms, _):
                    await ms.send(records(1, 8))
                    ack = await next_message(ms)
                    assert isinstance(ack, p.Ack) and ack.up_to_seq == 8
                    os.kill(server.pid, signal.SIGTERM)
                    bye = await next_message(ms)
                    assert isinstance(bye, p.Bye) and bye.reason == p.ErrorCode.SHUTTING_DOWN

        trio.run(main)
        out, err = server.communicate(timeout=15)
        assert server.returncode == 0, err
        assert "SIGTERM: stopping" in err and "said BYE" in out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_panel_whose_acknowledged_events_the_server_lost_declares_them_and_moves_on(tmp_path: Path) -> None:
    """docs/protocol.md 7.3: after a failover onto an asynchronous mirror the WELCOME's hwm is
    below what the panel saw acknowledged. The panel freed those events, so it sends a
    SERVER_LOST marker for exactly them (never a SEQ_GAP that would refuse its queue forever)
    and goes on; the checker still counts them as acknowledged and lost (P1, or the RPO)."""
    import sqlite3

    from emulator import Fleet, LinkMode, PanelSettings, Workload
    from fieldsync.harness import check

    db, port = tmp_path / "site.db", 31180
    settings = PanelSettings(panel_id=9, mode=LinkMode.PUNCH_OUT, server=(VIP, port))
    fleet = Fleet([settings], Workload(rate=0), seed=1, journal=True)
    panel = fleet.panels[9]
    acked: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            async with serving(db, port):
                for i in range(10):
                    panel.swipe(1000 + i, 0)
                with trio.fail_after(30):
                    await fleet.wait_drained()
            acked.append(panel.statistics().acked_seq)  # the swipes and the panel's HOST_ONLINE
            assert acked[0] >= 10
            # The replica that is promoted next never received 5 and on.
            conn = sqlite3.connect(db)
            with conn:
                conn.execute("DELETE FROM events WHERE panel_id = 9 AND seq > 4")
                conn.execute("UPDATE panels SET hwm = 4 WHERE panel_id = 9")
            conn.close()
            async with serving(db, port):
                for i in range(5):
                    panel.swipe(2000 + i, 1)
                with trio.fail_after(30):
                    await fleet.wait_drained()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock())
    lost = acked[0] - 4
    assert panel.server_lost == lost
    store = EventStore(db)
    try:
        losses = store.losses(9)
        assert [(x.first_seq, x.last_seq, x.kind) for x in losses] == [(5, acked[0], p.EventKind.SERVER_LOST)]
        assert store.hwm(9) == panel.statistics().acked_seq > acked[0] + 5  # the queue moved on
    finally:
        store.close()
    report = check(db, [panel])
    assert report.totals()["lost"] == lost and report.totals()["undeclared_gaps"] == 0
    assert not report.promises()["P1 nothing acknowledged is lost"][0]
    rpo = check(db, [panel], mirror="async").promises()
    assert "P1 nothing acknowledged is lost" not in rpo and rpo["RPO asynchronous mirror"][1].startswith(f"{lost} ")
