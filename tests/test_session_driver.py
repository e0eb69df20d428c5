"""The session driver both sides share: every way a session ends, seen from the peer.

Our end is a panel on a ``MessageStream`` run by a ``SessionDriver``; the peer is a
bare ``HostConnection`` the test drives by hand, so each test reads exactly the
frames that went out, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import protocol as p
from protocol.streams import EndReason, MessageStream, SessionDriver


class _GatedStream(trio.abc.Stream):
    """Writes the first half of a frame, then waits for ``gate`` while ``gated``: a
    writer stuck half-way through a frame (a peer that reads slowly)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.gated = False
        self.gate = trio.Event()
        self.half_written = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.gated:
            half = len(data) // 2
            await self.inner.send_all(data[:half])
            self.half_written.set()
            await self.gate.wait()
            data = data[half:]
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Peer:
    """The node's end, by hand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = p.HostConnection(now=trio.current_time())

    async def next(self) -> p.Message | p.ConnectionClosed:
        while True:
            event = self.conn.next_event()
            if not isinstance(event, p.NeedData):
                return event
            self.conn.receive_data(await self.stream.receive_some(65536), trio.current_time())

    async def send(self, message: p.Message) -> None:
        await self.stream.send_all(self.conn.send(message, trio.current_time()))


class _Handler:
    """Sends what the test puts in ``outbox``; records what it is handed."""

    def __init__(self, ms: MessageStream) -> None:
        self.ms = ms
        self.outbox_send, self.outbox = trio.open_memory_channel[p.Message](8)
        self.handled: list[p.Message] = []
        self.refuse_with: p.RemoteProtocolError | None = None
        self.drained = False

    async def send_loop(self) -> None:
        async for message in self.outbox:
            await self.ms.send(message)

    async def handle(self, message: p.Message) -> bool:
        if self.refuse_with is not None:
            raise self.refuse_with
        self.handled.append(message)
        return not isinstance(message, p.ConfigSnapshot)  # a snapshot says: stop (the test's rule)

    async def drain(self) -> None:
        await self.ms.send(batch(1, 3))  # what must go out before the BYE
        self.drained = True


def batch(first: int, count: int) -> p.EventBatch:
    return p.EventBatch.of(
        [p.EventRecord(seq=s, time_us=s, kind=p.EventKind.TAMPER) for s in range(first, first + count)]
    )


@asynccontextmanager
async def streaming() -> AsyncIterator[tuple[SessionDriver, _Handler, _Peer, _GatedStream]]:
    ours, theirs = trio.testing.memory_stream_pair()
    gated = _GatedStream(ours)
    ms = MessageStream(gated, p.PanelConnection(now=trio.current_time()), name="panel 5")
    peer = _Peer(theirs)
    hello = p.Hello(
        panel_id=5,
        boot_id=1,
        firmware="t",
        oldest_seq=0,
        newest_seq=0,
        config_version=0,
        config_digest=p.EMPTY_DIGEST,
        max_epoch=0,
    )
    await ms.send(hello)
    assert isinstance(await peer.next(), p.Hello)
    await peer.send(
        p.Welcome(
            node_id="A", epoch=4, hwm=0, config_version=0, config_digest=p.EMPTY_DIGEST, heartbeat_ms=1000, idle_ms=5000
        )
    )
    assert isinstance(await ms.receive(), p.Welcome)
    handler = _Handler(ms)
    try:
        with trio.fail_after(5):  # a cut frame would leave the peer waiting for the rest
            yield SessionDriver(ms, handler), handler, peer, gated
    finally:
        await ms.aclose()


async def test_a_planned_stop_drains_then_says_bye_as_its_last_frame() -> None:
    async with streaming() as (driver, handler, peer, _):
        driver.stop(p.ErrorCode.SHUTTING_DOWN)
        end = await driver.run()
        assert end.reason is EndReason.STOPPED and handler.drained
        assert isinstance(end.message, p.Bye) and end.message.epoch == 4
        sent = await peer.next()
        assert isinstance(sent, p.EventBatch) and sent.last_seq == 3
        bye = await peer.next()
        assert isinstance(bye, p.Bye) and bye.reason == p.ErrorCode.SHUTTING_DOWN
    assert await peer.next() == p.ConnectionClosed(clean=True)


async def test_an_end_asked_for_while_a_frame_is_half_written_lets_it_finish_then_says_error() -> None:
    # Cancelling the writer there would cut the frame, and the ERROR after it would be garbage.
    async with streaming() as (driver, handler, peer, gated):
        async with trio.open_nursery() as nursery:
            result: list[object] = []

            async def run() -> None:
                result.append(await driver.run())

            nursery.start_soon(run)
            gated.gated = True
            await handler.outbox_send.send(batch(1, 10))
            await gated.half_written.wait()
            driver.end(p.ErrorCode.INTERNAL, "told to end")
            await handler.outbox_send.send(batch(11, 1))  # after the end: must never go out
            await trio.testing.wait_all_tasks_blocked()
            gated.gate.set()
        (end,) = result
        assert getattr(end, "reason", None) is EndReason.ENDED
        whole = await peer.next()
        assert isinstance(whole, p.EventBatch) and whole.last_seq == 10
        error = await peer.next()
        assert isinstance(error, p.Error) and error.code == p.ErrorCode.INTERNAL and error.text == "told to end"
    assert await peer.next() == p.ConnectionClosed(clean=True)


async def test_a_handler_that_refuses_a_message_sends_that_error_and_raises_it_alone() -> None:
    async with streaming() as (driver, handler, peer, _):
        handler.refuse_with = p.RemoteProtocolError(p.ErrorCode.CONFIG_VERSION, "not that one")
        await peer.send(p.Heartbeat(epoch=4))
        with pytest.raises(p.RemoteProtocolError) as caught:  # not an exception group
            await driver.run()
        assert caught.value.code is p.ErrorCode.CONFIG_VERSION
        error = await peer.next()
        assert isinstance(error, p.Error) and error.code == p.ErrorCode.CONFIG_VERSION


@pytest.mark.parametrize("how", ["bye", "error", "close", "handler"])
async def test_the_peer_ends_a_session_and_the_driver_says_how(how: str) -> None:
    async with streaming() as (driver, handler, peer, _):
        await peer.send(p.Heartbeat(epoch=4))
        if how == "bye":
            await peer.send(p.Bye(epoch=4, reason=0))
        elif how == "error":
            await peer.send(p.Error(epoch=4, code=int(p.ErrorCode.REPLACED), text="newer session"))
        elif how == "close":
            await peer.stream.aclose()
        else:
            await peer.send(p.ConfigSnapshot(epoch=4, version=1, digest=p.EMPTY_DIGEST, part=0, parts=1, ops=()))
        end = await driver.run()
        expected = {
            "bye": EndReason.PEER_BYE,
            "error": EndReason.PEER_ERROR,
            "close": EndReason.PEER_CLOSED,
            "handler": EndReason.HANDLER,
        }[how]
        assert end.reason is expected
        assert isinstance(handler.handled[0], p.Heartbeat)
        if how == "error":
            assert isinstance(end.message, p.Error) and end.message.code == p.ErrorCode.REPLACED
        if how != "close":
            await handler.outbox_send.send(batch(1, 1))  # the session is over: nothing more goes out
            await trio.testing.wait_all_tasks_blocked()
    if how != "close":
        # Our end closed with nothing after the end: a frame would come before the close.
        assert isinstance(await peer.next(), p.ConnectionClosed)
