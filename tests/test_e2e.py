"""End to end over real loopback sockets: outage, replay, config, auth, stuck peers."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

import protocol as p
from emulator import Fleet, LinkMode, Panel, PanelSettings, Workload, panel_address
from fieldsync.engine import Node, NodeSettings
from fieldsync.site import pki
from protocol.streams import LinkError, MessageStream, SocketTLSStream, TlsFiles, client_context, dial
from storage import ConfigStore, EventStore

VIP = "127.0.0.100"


def clock() -> trio.testing.MockClock:
    # Virtual time runs 10x real time and jumps ahead after 20 ms of real
    # idleness. Not autojump at 0: a wait on SQLite's worker thread looks idle
    # to trio, and a zero threshold would jump timers past it.
    return trio.testing.MockClock(rate=10, autojump_threshold=0.02)


def panel_settings(site_pki: Path, panel_id: int, mode: LinkMode, port: int, **kw: object) -> PanelSettings:
    # Generous timeouts: the clock runs 10x, so 2 virtual seconds are 0.2 real ones,
    # less than a TLS handshake takes under coverage on a busy 2-core machine.
    fields: dict[str, object] = {"batch_records": 64, "handshake_timeout": 30.0, "connect_timeout": 30.0, **kw}
    return PanelSettings(
        panel_id=panel_id,
        mode=mode,
        server=(VIP, port),
        listen=(panel_address(panel_id), port + 1),
        tls=pki.tls_files(site_pki, "panel", panel_id),
        **fields,  # type: ignore[arg-type]
    )


def node_settings(site_pki: Path, db: Path, port: int, dial_ids: list[int] = (), **kw: object) -> NodeSettings:  # type: ignore[assignment]
    return NodeSettings(
        node_id="A",
        db=db,
        listen=(VIP, port),
        dial=tuple((pid, panel_address(pid), port + 1) for pid in dial_ids),
        tls=pki.tls_files(site_pki, "node", "A"),
        handshake_timeout=30.0,
        **kw,  # type: ignore[arg-type]
    )


def check_store_matches_journals(db: Path, fleet: Fleet) -> None:
    store = EventStore(db)
    try:
        for pid, panel in fleet.panels.items():
            assert panel.journal is not None
            stored = store.events(pid)
            seqs = [e.record.seq for e in stored]
            assert seqs == list(range(1, len(seqs) + 1)), f"panel {pid}: gap or disorder"
            assert store.losses(pid) == []
            generated = [(e.seq, e.kind, e.door, e.card) for e in panel.journal]
            got = [(e.record.seq, int(e.record.kind), e.record.door, e.record.card) for e in stored]
            assert got == generated[: len(got)], f"panel {pid}: stored events differ from generated"
            stats = panel.statistics()
            assert stats.emitted == len(got) + stats.buffer_depth
    finally:
        store.close()


def test_outage_then_replay_every_event_once_in_order(site_pki: Path, tmp_path: Path) -> None:
    port = 31010

    async def main() -> None:
        punch = [panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port) for i in range(1, 5)]
        hosted = [panel_settings(site_pki, i, LinkMode.HOST_INITIATED, port) for i in range(5, 9)]
        fleet = Fleet(punch + hosted, Workload(rate=2.0, limit=120), seed=3, journal=True)
        db = tmp_path / "site.db"
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            await trio.sleep(40)  # the server is down for 40 s; panels keep deciding
            offline = fleet.statistics()
            assert offline.connected == 0 and offline.emitted > 300 and offline.acked == 0
            node = Node(node_settings(site_pki, db, port, dial_ids=[s.panel_id for s in hosted]))
            await nursery.start(node.run)
            with trio.fail_after(120):
                await fleet.workload_done.wait()
                await fleet.wait_drained()
            assert fleet.statistics().buffered_events == 0
            assert node.statistics().events_stored == fleet.statistics().acked
            assert node.statistics().commit_s > 0  # the writer's busy time is counted
            nursery.cancel_scope.cancel()
        check_store_matches_journals(db, fleet)
        for panel in fleet.panels.values():
            assert panel.statistics().sessions == 1
            # The WELCOME came first, then the first ACK of the same epoch.
            assert list(panel.welcome_at) == list(panel.first_ack_at) == [node.epoch]
            assert panel.welcome_at[node.epoch] <= panel.first_ack_at[node.epoch]

    trio.run(main, clock=clock())


def test_config_changed_during_outage_converges(site_pki: Path, tmp_path: Path) -> None:
    port = 31020
    db = tmp_path / "site.db"
    cfg = ConfigStore(db)
    cfg.change([p.PutSchedule(schedule=p.Schedule(id=1, intervals=(p.Interval(days=0x7F, start=0, end=1440),)))])
    cfg.change([p.PutAccessLevel(level=p.AccessLevel(id=1, entries=(p.LevelEntry(door=0, schedule=1),)))])

    async def main() -> None:
        settings = [panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port) for i in range(11, 15)]
        fleet = Fleet(settings, seed=5)
        node = Node(node_settings(site_pki, db, port))
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            await nursery.start(node.run)
            with trio.fail_after(30):
                await fleet.wait_connected()
                while any(pn.config.version != 2 for pn in fleet.panels.values()):
                    await trio.sleep(0.1)
            # Outage: the node stops; the operator changes the site meanwhile.
            await _stop(node)
            changes = [
                [p.PutCardholder(cardholder=p.Cardholder(card=1000 + i, levels=(1,))) for i in range(20)],
                [p.PutDoor(door=p.Door(door=0, mode=p.DoorMode.LOCKED))],
                [p.DeleteCardholder(card=1003)],
            ]
            for ops in changes:
                await trio.to_thread.run_sync(cfg.change, ops)
            # Panel 11 gets a snapshot: the log it would need is compacted away.
            await trio.to_thread.run_sync(cfg.compact, 4)
            node2 = Node(node_settings(site_pki, db, port))
            await nursery.start(node2.run)
            latest_version, latest = cfg.snapshot()
            with trio.fail_after(30):
                while any(pn.config.version != latest_version for pn in fleet.panels.values()):
                    await trio.sleep(0.1)
            for pn in fleet.panels.values():
                assert pn.config.state == latest
                # ... and the panel decides with it: door 0 is locked now.
                assert pn.swipe(1000, 0) is p.EventKind.DENIED_DOOR_MODE
            nursery.cancel_scope.cancel()

    async def _stop(node: Node) -> None:
        node.stop()
        while node.sessions:
            await trio.sleep(0.05)

    trio.run(main, clock=clock())


def test_a_rogue_client_gets_nothing(site_pki: Path, tmp_path: Path) -> None:
    port = 31030
    db = tmp_path / "site.db"
    ConfigStore(db).change([p.PutDoor(door=p.Door(door=1, mode=p.DoorMode.LOCKED))])
    foreign = tmp_path / "foreign"
    pki.init_ca(foreign, site="another site")
    pki.issue(foreign, "panel", 8)
    expired_dir = tmp_path / "expired"
    expired_dir.mkdir()
    (expired_dir / "ca.pem").write_bytes((site_pki / "ca.pem").read_bytes())
    (expired_dir / "ca.key").write_bytes((site_pki / "ca.key").read_bytes())
    pki.issue(expired_dir, "panel", 8, expired=True)

    async def attempt(ctx: ssl.SSLContext | None, claim: int) -> list[p.Message]:
        got: list[p.Message] = []
        try:
            link = await dial(VIP, port, ctx)
        except LinkError:
            return got
        ms = MessageStream(link.stream, p.PanelConnection(now=trio.current_time()), name="rogue")
        try:
            await ms.send(
                p.Hello(
                    config_digest=p.EMPTY_DIGEST,
                    panel_id=claim,
                    boot_id=1,
                    firmware="x",
                    oldest_seq=0,
                    newest_seq=0,
                    config_version=0,
                    max_epoch=0,
                )
            )
            while True:
                got.append(await ms.receive())
        except (LinkError, p.ProtocolError):
            return got
        finally:
            await ms.aclose()

    async def main() -> None:
        node = Node(node_settings(site_pki, db, port))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            # Panel 7's certificate claiming to be panel 8.
            got = await attempt(client_context(pki.tls_files(site_pki, "panel", 7)), 8)
            assert len(got) == 1 and isinstance(got[0], p.Error)
            assert got[0].code == p.ErrorCode.PANEL_ID_MISMATCH
            # No certificate at all, a foreign CA's, an expired one: the handshake fails.
            bare = ssl.create_default_context(cafile=str(site_pki / "ca.pem"))
            bare.check_hostname = False
            assert await attempt(bare, 8) == []
            assert await attempt(client_context(pki.tls_files(foreign, "panel", 8)), 8) == []
            expired = TlsFiles(
                cert=expired_dir / "panel-8.pem", key=expired_dir / "panel-8.key", ca=site_pki / "ca.pem"
            )
            assert await attempt(client_context(expired), 8) == []
            assert node.statistics().rejected == 4
            nursery.cancel_scope.cancel()
        store = EventStore(db)
        assert store.count_events() == 0 and store.hwms() == {}

    trio.run(main, clock=clock())


def test_a_stuck_panel_does_not_stall_the_others(site_pki: Path, tmp_path: Path) -> None:
    port = 31040
    db = tmp_path / "site.db"

    async def stuck_panel(started: trio.Event) -> None:
        link = await dial(VIP, port, client_context(pki.tls_files(site_pki, "panel", 30)))
        # A small receive buffer that never grows: the node's ACKs fill it, and then its sends
        # to this panel block (with loopback's autotuned buffers the "stuck" panel went on
        # flooding for the whole test: 305,000 TAMPER events committed beside the others').
        assert isinstance(link.stream, SocketTLSStream)
        link.stream.transport_stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn = p.PanelConnection(now=trio.current_time())
        ms = MessageStream(link.stream, conn, name="stuck")
        await ms.send(
            p.Hello(
                config_digest=p.EMPTY_DIGEST,
                panel_id=30,
                boot_id=1,
                firmware="x",
                oldest_seq=1,
                newest_seq=10**6,
                config_version=0,
                max_epoch=0,
            )
        )
        try:
            await ms.receive()  # WELCOME; from here on it never reads again
            seq = 1
            while True:  # floods batches until TCP backpressure stops it
                records = [p.EventRecord(seq=s, time_us=s, kind=p.EventKind.TAMPER) for s in range(seq, seq + 10)]
                await ms.send(p.EventBatch.of(records))
                seq += 10
                started.set()
        except LinkError:
            started.set()  # the node gave up on it (missed heartbeats): also fine
        finally:
            await ms.aclose()

    async def main() -> None:
        settings = [panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port) for i in range(21, 25)]
        fleet = Fleet(settings, Workload(rate=5, limit=200), seed=9, journal=True)
        node = Node(node_settings(site_pki, db, port, session_window=4))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            started = trio.Event()
            nursery.start_soon(stuck_panel, started)
            await started.wait()
            await nursery.start(fleet.run)
            begin = trio.current_time()
            with trio.fail_after(200):
                await fleet.workload_done.wait()
                await fleet.wait_drained()
            # 200 swipes at 5/s take ~40 s; the others drain right behind their workload.
            assert trio.current_time() - begin < 60
            nursery.cancel_scope.cancel()
        # The stuck panel's batches that were committed are in order; nothing else of it is.
        store = EventStore(db)
        seqs = store.seqs(30)
        assert seqs == list(range(1, len(seqs) + 1))
        # And it was stuck: its flood stopped once the node's sends to it backed up (8,850
        # events in a run; with the buffers autotuned it went on, 305,000).
        assert len(seqs) < 50_000, len(seqs)
        store.close()
        check_store_matches_journals(db, fleet)

    trio.run(main, clock=clock())


def test_a_port_in_use_is_a_clear_error(site_pki: Path, tmp_path: Path) -> None:
    port = 31050

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            first = Node(node_settings(site_pki, tmp_path / "a.db", port))
            await nursery.start(first.run)
            second = Node(node_settings(site_pki, tmp_path / "b.db", port))
            with pytest.raises(LinkError, match="address already in use"):
                try:
                    await nursery.start(second.run)
                except BaseExceptionGroup as group:  # raised through the node's nursery
                    raise group.exceptions[0] from None
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock())


def test_an_unreachable_node_is_a_clear_error() -> None:
    """Nothing listens: the error names the address and the cause."""

    async def main() -> None:
        with pytest.raises(LinkError, match=r"connecting to 127\.0\.0\.1:31099: .*Connection refused"):
            await dial("127.0.0.1", 31099, None)

    trio.run(main)


def test_garbage_from_one_peer_leaves_the_node_up(site_pki: Path, tmp_path: Path) -> None:
    port = 31060
    db = tmp_path / "site.db"

    async def main() -> None:
        node = Node(node_settings(site_pki, db, port))
        panel = Panel(panel_settings(site_pki, 31, LinkMode.PUNCH_OUT, port), journal=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            link = await dial(VIP, port, client_context(pki.tls_files(site_pki, "panel", 32)))
            await link.stream.send_all(b"\xf5\x5c" + b"\x01\x01\x00" + (2**31).to_bytes(4, "big") + b"\0\0")
            with trio.fail_after(10):
                await link.stream.receive_some(100)  # the node answers with an ERROR and closes
            await link.stream.aclose()
            await nursery.start(panel.run)
            for i in range(50):
                panel.swipe(i, 0)
            with trio.fail_after(30):
                while panel.buffer.statistics().depth:
                    await trio.sleep(0.1)
            assert node.statistics().protocol_errors >= 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock())


@pytest.mark.slow
def test_kill_9_of_the_node_mid_replay_loses_and_duplicates_nothing(site_pki: Path, tmp_path: Path) -> None:
    """A real node process, SIGKILLed while panels replay, restarted on the same DB (P1, P2)."""
    import os
    import signal
    import subprocess
    import sys

    port = 31070
    db = tmp_path / "site.db"
    command = [
        sys.executable,
        "-m",
        "fieldsync.cli",
        "serve",
        "--pki",
        str(site_pki),
        "--db",
        str(db),
        "--listen",
        f"{VIP}:{port}",
        "--node-id",
        "A",
    ]
    root = Path(__file__).parent.parent

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def main() -> None:
        settings = [
            panel_settings(site_pki, i, LinkMode.PUNCH_OUT, port, buffer_bytes=4 << 20, batch_records=500)
            for i in range(33, 39)
        ]
        fleet = Fleet(settings, seed=11, journal=True)
        for panel in fleet.panels.values():  # a backlog built while the server was away
            for i in range(20_000):
                panel.swipe(i % 5000, i % 4)
        total = fleet.statistics().emitted
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            node = start()
            try:
                with trio.fail_after(60):
                    while fleet.statistics().acked < total // 5:
                        await trio.sleep(0.005)
                os.kill(node.pid, signal.SIGKILL)
                node.wait(timeout=10)
                acked_at_kill = {pid: pn.statistics().acked_seq for pid, pn in fleet.panels.items()}
                assert fleet.statistics().acked < total, "replay finished before the kill; make the backlog bigger"
                node = start()
                with trio.fail_after(60):
                    await fleet.wait_drained()
            finally:
                node.kill()
                node.wait(timeout=10)
            nursery.cancel_scope.cancel()
        store = EventStore(db)
        for pid, acked in acked_at_kill.items():
            assert store.hwm(pid) >= acked  # everything acked before the kill survived it
        assert store.epoch == 2  # the restarted node serves with a new epoch
        store.close()
        check_store_matches_journals(db, fleet)

    trio.run(main)


def test_power_cycles_ram_and_flash(site_pki: Path, tmp_path: Path) -> None:
    """A RAM panel loses its buffer and counter (declared by the boot id) and continues after
    the store's hwm; a flash panel keeps everything synced before the cut."""
    port = 31080
    db = tmp_path / "site.db"

    async def main() -> None:
        ram = Panel(panel_settings(site_pki, 35, LinkMode.PUNCH_OUT, port), journal=True)
        flash = Panel(
            panel_settings(
                site_pki, 36, LinkMode.PUNCH_OUT, port, flash=tmp_path / "p36.flash", flash_sync_interval=0.05
            ),
            journal=True,
        )
        node = Node(node_settings(site_pki, db, port))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            for panel in (ram, flash):
                await nursery.start(panel.run)
            for i in range(100):
                ram.swipe(i, 0)
                flash.swipe(i, 0)
            with trio.fail_after(30):
                while ram.buffer.statistics().depth or flash.buffer.statistics().depth:
                    await trio.sleep(0.05)
            ram_boot = ram.boot_id
            node.stop()  # the server goes away; both panels queue
            await trio.sleep(5)
            for i in range(50):
                ram.swipe(1000 + i, 0)
                flash.swipe(1000 + i, 0)
            await trio.sleep(0.5)  # flash syncs
            ram.power_cycle()  # the 50 queued events are gone with the RAM
            flash.power_cycle()  # the flash copy survives
            assert ram.boot_id != ram_boot and ram.buffer.statistics().depth == 1  # POWER_RESTORE
            for i in range(20):
                ram.swipe(2000 + i, 0)
                flash.swipe(2000 + i, 0)
            node2 = Node(node_settings(site_pki, db, port))
            await nursery.start(node2.run)
            with trio.fail_after(30):
                while ram.buffer.statistics().depth or flash.buffer.statistics().depth:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        store = EventStore(db)
        ram_seqs = store.seqs(35)
        assert ram_seqs == list(range(1, len(ram_seqs) + 1))  # renumbered after the hwm: no gap, no duplicate
        cards = [e.record.card for e in store.events(35)]
        assert all(1000 + i not in cards for i in range(50))  # lost with the RAM (the new boot id says so)
        assert all(2000 + i in cards for i in range(20))
        flash_cards = [e.record.card for e in store.events(36)]
        assert all(1000 + i in flash_cards for i in range(50)) and all(2000 + i in flash_cards for i in range(20))
        flash_seqs = store.seqs(36)
        assert flash_seqs == list(range(1, len(flash_seqs) + 1))
        store.close()

    trio.run(main, clock=clock())


def test_a_fleet_with_a_start_rate_starts_its_panels_that_many_a_second(site_pki: Path) -> None:
    async def main() -> None:
        settings = [panel_settings(site_pki, i, LinkMode.PUNCH_OUT, 31289) for i in range(31, 35)]
        fleet = Fleet(settings, seed=1, start_rate=2.0)  # nobody listens: each panel just keeps dialing
        async with trio.open_nursery() as nursery:
            begin = trio.current_time()
            await nursery.start(fleet.run)  # started once the last of the four has begun
            # Not sooner than the rate allows (the fourth at 3 / 2.0 s). Later only by the time
            # starting a panel takes, which this clock multiplies by 10: 6 ms of a loaded
            # machine's real time made 1.56 s.
            assert 1.5 - 1e-6 <= trio.current_time() - begin < 2.0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock())
