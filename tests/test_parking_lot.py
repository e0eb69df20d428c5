"""A standby's ParkingLot (fieldsync/engine/_parking.py) against panels played by the test.

Real loopback sockets, plain text: a panel parks (HELLO, STANDBY), parks again (the older
one gets REPLACED), is refused, or is caught half-way by the takeover; ``hand_over`` gives
the node every parked session still open, and nothing stays parked at a node that took
over (docs/protocol.md 6.3 rules 1 and 2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import protocol as p
from fieldsync.engine import _parking
from fieldsync.engine._cluster_settings import ClusterSettings
from protocol.streams import MessageStream, PeerClosed

PORT = 31298


def _hello(panel_id: int) -> p.Hello:
    return p.Hello(
        panel_id=panel_id,
        boot_id=1,
        firmware="t",
        oldest_seq=0,
        newest_seq=0,
        config_version=0,
        config_digest=p.EMPTY_DIGEST,
        max_epoch=1,
    )


@pytest.fixture
async def lot(tmp_path: Path) -> AsyncIterator[_parking.ParkingLot]:
    settings = ClusterSettings(
        node_id="B",
        address="127.0.0.1",
        db=tmp_path / "site.db",
        park=("127.0.0.1", PORT),
        known_panels=frozenset({1, 2, 3}),
        heartbeat_ms=200,
        idle_ms=1000,
    )
    lot = _parking.ParkingLot(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(lot.run)
        listening = trio.CancelScope()

        async def listen() -> None:
            with listening:
                await lot.listening()

        nursery.start_soon(listen)
        await trio.sleep(0.05)
        yield lot
        nursery.cancel_scope.cancel()


async def _panel(panel_id: int) -> MessageStream:
    stream = await trio.open_tcp_stream("127.0.0.1", PORT)
    ms = MessageStream(stream, p.PanelConnection(now=trio.current_time(), epoch_floor=1, park=True))
    await ms.send(_hello(panel_id))
    return ms


async def test_a_hello_is_parked_and_a_second_park_of_the_panel_replaces_the_first(lot: _parking.ParkingLot) -> None:
    first = await _panel(1)
    with trio.fail_after(5):
        assert isinstance(await first.receive(), p.Standby)
    assert set(lot.parked) == {1} and first.conn.state is p.State.PARKED
    second = await _panel(1)
    with trio.fail_after(5):
        assert isinstance(await second.receive(), p.Standby)
        replaced = await first.receive()
    assert isinstance(replaced, p.Error) and replaced.error_code is p.ErrorCode.REPLACED and replaced.epoch == 0
    assert lot.parked[1].ms.conn.state is p.State.PARKED and lot.parked_total == 2
    await first.aclose()
    await second.aclose()


async def test_a_panel_not_in_the_site_and_a_silent_one_are_refused(
    lot: _parking.ParkingLot, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = await _panel(9)
    with trio.fail_after(5):
        refused = await stranger.receive()
    assert isinstance(refused, p.Error) and refused.error_code is p.ErrorCode.UNKNOWN_PANEL
    monkeypatch.setattr(_parking, "HELLO_TIMEOUT", 0.2)
    silent = MessageStream(
        await trio.open_tcp_stream("127.0.0.1", PORT),
        p.PanelConnection(now=trio.current_time(), epoch_floor=1, park=True),
    )
    silent.conn.send(_hello(2), trio.current_time())  # the state machine's view: HELLO sent, none written
    with trio.fail_after(5):
        timed_out = await silent.receive()
    assert isinstance(timed_out, p.Error) and timed_out.error_code is p.ErrorCode.TIMEOUT
    assert lot.parked == {}
    await stranger.aclose()
    await silent.aclose()


async def test_hand_over_gives_the_node_open_parked_streams_and_parks_nobody_after(lot: _parking.ParkingLot) -> None:
    panels = [await _panel(pid) for pid in (1, 2, 3)]
    with trio.fail_after(5):
        for ms in panels:
            assert isinstance(await ms.receive(), p.Standby)
    handed = await lot.hand_over()
    assert sorted(h.panel_id for h in handed) == [1, 2, 3] and lot.parked == {}
    # The node owns them now: open, and a TAKEOVER reaches each panel (the listener's task
    # that accepted the connection returned without closing it).
    await trio.sleep(0.1)
    for parked in handed:
        await parked.ms.send(p.Takeover(epoch=2))
    with trio.fail_after(5):
        for ms in panels:
            assert await ms.receive() == p.Takeover(epoch=2)
    # A park after the hand-over is not answered with STANDBY (6.3 rule 1).
    late = await _panel(1)
    with trio.fail_after(5), pytest.raises(PeerClosed):
        await late.receive()
    assert lot.parked == {}
    for parked in handed:
        await parked.ms.aclose()
    for ms in (*panels, late):
        await ms.aclose()


async def test_a_park_caught_by_the_takeover_before_its_standby_is_closed_not_left_parked(
    lot: _parking.ParkingLot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a review found: the takeover came while a STANDBY was on its way. The session
    is listed before the STANDBY goes out, so the hand-over finds it; with its STANDBY never
    written, it is closed rather than handed over (or, before the fix, left PARKED at an
    active node, outside the list the hand-over read)."""
    send = MessageStream.send
    in_flight = trio.Event()

    async def slow_standby(self: MessageStream, message: p.Message) -> None:
        if isinstance(message, p.Standby):
            in_flight.set()
            await trio.sleep(0.3)
        await send(self, message)

    monkeypatch.setattr(MessageStream, "send", slow_standby)
    panel = await _panel(3)
    with trio.fail_after(5):
        await in_flight.wait()
    handed = await lot.hand_over()
    assert handed == [] and lot.parked == {}
    with trio.fail_after(5), pytest.raises(PeerClosed):
        await panel.receive()
    await trio.sleep(0.4)  # past the STANDBY's delay: still nothing parked
    assert lot.parked == {}
    await panel.aclose()
