"""OSDP readers (libosdp) on a panel's reader bus over a real pty line.

libosdp keeps its own real-time clock (poll and response timeouts), so these
tests run on trio's real clock, bounded by ``fail_after``; each takes seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import protocol as p
from emulator import BusSwiper, Fleet, LinkMode, Panel, PanelSettings, ReaderBus, ReaderSpec, Workload, run_workload
from fieldsync.engine import Node, NodeSettings
from fieldsync.harness import VirtualLine
from protocol.streams import SerialLine
from storage import ConfigStore, EventStore

# libosdp's timers are real time, and the CLI test runs real processes.
pytestmark = pytest.mark.slow

VIP = "127.0.0.100"
ACCESS_KINDS = {int(k) for k in p.EventKind if k.name.startswith(("ACCESS", "DENIED"))}


def readers(count: int) -> list[ReaderSpec]:
    # Two readers per door (in and out), each with its own Secure Channel key.
    return [ReaderSpec(address=a, key=bytes([a, 0x5A] * 8), door=(a - 1) // 2) for a in range(1, count + 1)]


def site_config(db: Path) -> ConfigStore:
    cfg = ConfigStore(db)
    cfg.change([p.PutSchedule(schedule=p.Schedule(id=1, intervals=(p.Interval(days=0x7F, start=0, end=1440),)))])
    cfg.change([p.PutAccessLevel(level=p.AccessLevel(id=1, entries=(p.LevelEntry(door=0, schedule=1),)))])
    cfg.change([p.PutCardholder(cardholder=p.Cardholder(card=5000 + i, levels=(1,))) for i in range(10)])
    return cfg


@asynccontextmanager
async def osdp_panel(
    tmp_path: Path, port: int, *, bus_readers: list[ReaderSpec], panel_readers: list[ReaderSpec]
) -> AsyncIterator[tuple[Panel, ReaderBus, Fleet, Node, ConfigStore]]:
    db = tmp_path / "site.db"
    cfg = site_config(db)
    with VirtualLine(link_dir=tmp_path / "readers") as line:
        settings = PanelSettings(
            panel_id=61,
            mode=LinkMode.PUNCH_OUT,
            server=(VIP, port),
            doors=2,
            reader_line=SerialLine(path=line.a),
            readers=tuple(panel_readers),
        )
        fleet = Fleet([settings], journal=True)
        node = Node(NodeSettings(db=db, listen=(VIP, port)))
        with ReaderBus(SerialLine(path=line.b), bus_readers) as bus:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                await nursery.start(fleet.run)
                panel = fleet.panels[61]
                with trio.fail_after(20):
                    await fleet.wait_connected()
                    while panel.config.version != cfg.version:
                        await trio.sleep(0.02)
                yield panel, bus, fleet, node, cfg
                nursery.cancel_scope.cancel()
    cfg.close()


async def _until(predicate: Callable[[], object], within: float) -> None:
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.02)


async def test_card_reads_cross_osdp_and_reach_the_store_in_order(tmp_path: Path) -> None:
    specs = readers(4)
    async with osdp_panel(tmp_path, 31310, bus_readers=specs, panel_readers=specs) as (panel, bus, fleet, node, _):
        port = panel.reader_port
        assert port is not None
        await _until(lambda: len(port.statistics().online) == 4, 10)
        stats = port.statistics()
        assert stats.secure == stats.online == (1, 2, 3, 4)  # Secure Channel on every reader
        swiper = BusSwiper(panel, bus)
        presented = await run_workload(swiper, Workload(rate=30.0, limit=120, unknown_share=0.3), seed=5)
        assert presented == 120
        await _until(lambda: port.statistics().card_reads == 120, 30)
        await _until(lambda: all(len(bus.commands(a)) >= 1 for a in (1, 2, 3, 4)), 5)
        with trio.fail_after(20):
            await fleet.wait_drained()
        # The panel answered every read on the reader it came from: green or red LED.
        for address in (1, 2, 3, 4):
            decided = [kind for a, _, kind in port.decisions if a == address]
            await _until(
                lambda address=address, decided=decided: (
                    len([c for c in bus.commands(address) if "on_color" in c]) == len(decided)
                ),
                5,
            )
            colours = [c["on_color"] for c in bus.commands(address) if "on_color" in c]
            expected = [2 if kind is p.EventKind.ACCESS_GRANTED else 1 for kind in decided]
            assert colours == expected
        assert any(kind is p.EventKind.ACCESS_GRANTED for _, _, kind in port.decisions)
        assert any(kind is p.EventKind.DENIED_UNKNOWN_CARD for _, _, kind in port.decisions)
        assert node.statistics().events_stored == panel.statistics().acked
    store = EventStore(tmp_path / "site.db")
    try:
        events = store.events(61)
    finally:
        store.close()
    assert [e.record.seq for e in events] == list(range(1, len(events) + 1))
    access = [e.record for e in events if int(e.record.kind) in ACCESS_KINDS]
    assert len(access) == 120
    for address in (1, 2, 3, 4):
        stored = [r.card for r in access if r.reader == address]
        assert stored == [card for a, card in swiper.presented if a == address], f"reader {address}: order"
        assert all(r.door == (address - 1) // 2 for r in access if r.reader == address)
    online = [e.record.card for e in events if e.record.kind is p.EventKind.READER_ONLINE]
    assert sorted(online) == [1, 2, 3, 4]


async def test_a_reader_with_a_wrong_key_is_refused_and_reported(tmp_path: Path) -> None:
    panel_side = readers(3)
    bus_side = [*panel_side[:1], ReaderSpec(address=2, key=bytes(16), door=0), panel_side[2]]
    async with osdp_panel(tmp_path, 31320, bus_readers=bus_side, panel_readers=panel_side) as (panel, bus, *_):
        port = panel.reader_port
        assert port is not None
        await _until(lambda: port.statistics().online == (1, 3) and port.statistics().auth_failures[2] >= 1, 10)
        for address in (1, 2, 3):
            bus.swipe(address, 5001)
        await _until(lambda: port.statistics().card_reads == 2, 10)
        await trio.sleep(0.5)
        stats = port.statistics()
        assert stats.card_reads == 2  # the read at reader 2 never reached the panel
        assert 2 not in stats.secure and not bus.is_secure(2)
        assert {a for a, _, _ in port.decisions} == {1, 3}
        assert "reader 2" in (port.last_error or "")
        assert panel.journal is not None
        failed = [(e.kind, e.card) for e in panel.journal if e.kind == p.EventKind.READER_AUTH_FAILED]
        assert failed == [(int(p.EventKind.READER_AUTH_FAILED), 2)]  # reported once, not per retry


async def test_a_silent_reader_is_reported_and_comes_back_without_waiting_300_s(tmp_path: Path) -> None:
    specs = readers(3)
    async with osdp_panel(tmp_path, 31330, bus_readers=specs, panel_readers=specs) as (panel, bus, *_):
        port = panel.reader_port
        assert port is not None
        await _until(lambda: len(port.statistics().online) == 3, 10)
        bus.silence(3)
        await _until(lambda: 3 not in port.statistics().online, 5)  # silent_after is 1 s
        assert port.statistics().offline_reports == 1
        await trio.sleep(2)
        bus.resume(3)
        back_from = trio.current_time()
        await _until(lambda: 3 in port.statistics().online, 10)
        assert trio.current_time() - back_from < 5
        bus.swipe(3, 5002)
        await _until(lambda: port.statistics().card_reads == 1, 5)
        assert port.decisions[-1][:2] == (3, 5002)
        assert port.statistics().auth_failures[3] == 0  # silence is not a key problem
        assert panel.journal is not None
        kinds = [(e.kind, e.card) for e in panel.journal if e.card == 3 and e.kind >= int(p.EventKind.READER_OFFLINE)]
        assert kinds == [
            (int(p.EventKind.READER_ONLINE), 3),
            (int(p.EventKind.READER_OFFLINE), 3),
            (int(p.EventKind.READER_ONLINE), 3),
        ]


def test_reader_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="127 is broadcast"):
        ReaderSpec(address=127, key=bytes(16))
    with pytest.raises(ValueError, match="16 bytes"):
        ReaderSpec(address=1, key=b"short")
    with pytest.raises(ValueError, match=r"1\.\.32 readers"):
        ReaderBus(SerialLine(path=Path("/dev/x")), [ReaderSpec(address=a, key=bytes(16)) for a in range(33)])
    with pytest.raises(ValueError, match="repeat"):
        ReaderBus(SerialLine(path=Path("/dev/x")), [ReaderSpec(address=1, key=bytes(16))] * 2)


def test_emulate_with_osdp_readers_from_the_cli(tmp_path: Path) -> None:
    """`fieldsync emulate --osdp-readers 4`: the swipes of the workload travel libosdp."""
    import subprocess
    import sys

    db = tmp_path / "site.db"
    cli = [sys.executable, "-m", "fieldsync.cli"]
    serve = subprocess.Popen(
        [*cli, "serve", "--insecure", "--db", str(db), "--listen", f"{VIP}:31350"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert serve.stdout is not None
        assert "listening on" in serve.stdout.readline()
        emulate = subprocess.run(
            [
                *cli,
                "emulate",
                "--panels",
                "2",
                "--server",
                f"{VIP}:31350",
                "--insecure",
                "--osdp-readers",
                "4",
                "--rate",
                "10",
                "--duration",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert emulate.returncode == 0, emulate.stderr
    finally:
        serve.terminate()  # only the process this test started
        serve.wait(10)
        serve.stdout.close()  # type: ignore[union-attr]
    store = EventStore(db)
    try:
        records = [e.record for pid in (1, 2) for e in store.events(pid)]
    finally:
        store.close()
    readers_seen = {r.reader for r in records if int(r.kind) in ACCESS_KINDS}
    assert readers_seen == {1, 2, 3, 4}  # every read came in through one of the OSDP readers
    assert sum(r.kind is p.EventKind.READER_ONLINE for r in records) == 8
