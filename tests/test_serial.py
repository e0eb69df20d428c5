"""Serial lines: the Stream wrapper, end to end over real pseudo-terminals, noise, bad devices."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

import protocol as p
from emulator import Fleet, LinkMode, PanelSettings, Workload
from fieldsync.engine import Node, NodeSettings
from fieldsync.harness import Direction, VirtualLine
from fieldsync.site import pki
from protocol.streams import LinkError, SerialLine, SerialStream, is_pseudo_terminal, open_serial, records_per_batch
from storage import ConfigStore

from .test_e2e import check_store_matches_journals, clock


def serial_panel(site_pki: Path | None, panel_id: int, path: Path, **kw: object) -> PanelSettings:
    line = SerialLine(path=path, **kw)  # type: ignore[arg-type]
    return PanelSettings(
        panel_id=panel_id,
        mode=LinkMode.SERIAL,
        serial=line,
        tls=pki.tls_files(site_pki, "panel", panel_id) if site_pki else None,
        batch_records=64,
        handshake_timeout=30.0,
        connect_timeout=30.0,
    )


def serial_node(site_pki: Path | None, db: Path, lines: list[tuple[int | None, Path]]) -> NodeSettings:
    return NodeSettings(
        node_id="A",
        db=db,
        listen=None,
        serial=tuple((pid, SerialLine(path=path)) for pid, path in lines),
        tls=pki.tls_files(site_pki, "node", "A") if site_pki else None,
        handshake_timeout=30.0,
    )


# -- the Stream wrapper --------------------------------------------------------------------


async def _pair(line: VirtualLine) -> tuple[SerialStream, SerialStream]:
    return open_serial(SerialLine(path=line.a)), open_serial(SerialLine(path=line.b))


async def test_serial_stream_conformance() -> None:
    """trio's stream contract, as far as a line can keep it.

    ``trio.testing.check_two_way_stream`` also demands that closing one end be seen
    by the other (BrokenResourceError, or b"" after a graceful close). A serial
    line cannot tell: there is no connection, only a wire. Everything else it
    checks is checked here, on both ends of a real pseudo-terminal line.
    """
    with VirtualLine() as line:
        a, b = await _pair(line)
        # Bytes arrive whole and in order, both ways at once, whatever the chunking.
        rng = random.Random(7)
        payload = {s: rng.randbytes(300_000) for s in (a, b)}

        async def sender(s: SerialStream) -> None:
            data = payload[s]
            i = 0
            while i < len(data):
                n = rng.randint(1, 5000)
                await s.send_all(data[i : i + n])
                i += n

        async def receiver(s: SerialStream, expected: bytes) -> None:
            got = bytearray()
            while len(got) < len(expected):
                chunk = await s.receive_some(rng.randint(1, 7000))
                assert chunk, "a line never reports end of stream"
                got += chunk
            assert got == expected

        async with trio.open_nursery() as nursery:
            for s, peer in ((a, b), (b, a)):
                nursery.start_soon(sender, s)
                nursery.start_soon(receiver, peer, payload[s])

        # send_all(b"") sends nothing and does not block; max_bytes is honoured.
        await a.send_all(b"")
        await a.send_all(b"xyz")
        assert await b.receive_some(1) == b"x"
        assert await b.receive_some(10) == b"yz"
        with pytest.raises(ValueError):
            await b.receive_some(0)
        await a.wait_send_all_might_not_block()

        # One reader and one writer at a time.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await b.receive_some()
            nursery.cancel_scope.cancel()

        # A cancelled receive loses nothing.
        with trio.move_on_after(0.05):
            await b.receive_some()
        await a.send_all(b"after")
        assert await b.receive_some() == b"after"

        # aclose wakes a blocked reader with ClosedResourceError; then everything refuses.
        async def blocked_reader() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await b.receive_some()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_reader)
            await trio.testing.wait_all_tasks_blocked()
            await b.aclose()
        await b.aclose()  # idempotent
        for call in (b.receive_some(), b.send_all(b"x"), b.wait_send_all_might_not_block()):
            with pytest.raises(trio.ClosedResourceError):
                await call
        # The port is free again: it can be reopened.
        b = open_serial(SerialLine(path=line.b))
        await a.send_all(b"again")
        assert await b.receive_some() == b"again"

        # The device disappears: a clear error, not a silent end of stream.
        line.hang_up()
        with pytest.raises(LinkError, match=r"hung up|disappeared"):
            await b.receive_some()
        await a.aclose()
        await b.aclose()


def test_bad_devices_are_named() -> None:
    with pytest.raises(LinkError, match="/dev/fieldsync-none does not exist"):
        open_serial(SerialLine(path=Path("/dev/fieldsync-none")))
    with pytest.raises(LinkError, match="is not a serial device"):
        open_serial(SerialLine(path=Path(__file__)))
    with VirtualLine() as line:
        first = open_serial(SerialLine(path=line.a))
        with pytest.raises(LinkError, match="in use by another process"):
            open_serial(SerialLine(path=line.a))
        first._port.close()
        assert is_pseudo_terminal(line.a)
    assert not is_pseudo_terminal("/dev/null")
    with pytest.raises(ValueError, match="baud rate"):
        SerialLine(path=Path("/dev/x"), baud=10)
    with pytest.raises(ValueError, match="parity"):
        SerialLine(path=Path("/dev/x"), parity="weird")  # type: ignore[arg-type]


def test_throttled_writes_take_line_time() -> None:
    line_115k = SerialLine(path=Path("/dev/x"), baud=115_200, throttle=True)
    assert line_115k.bytes_per_second == 11_520
    # A batch should occupy the line about a quarter of a second.
    assert records_per_batch(line_115k) == 90
    assert records_per_batch(SerialLine(path=Path("/dev/x"), baud=9_600, throttle=True)) == 7
    assert records_per_batch(SerialLine(path=Path("/dev/x"))) == 4096
    assert SerialLine(path=Path("/dev/x"), parity="even", stopbits=2).bits_per_byte == 12

    async def main() -> None:
        with VirtualLine() as vl:
            a = open_serial(SerialLine(path=vl.a, baud=115_200, throttle=True))
            b = open_serial(SerialLine(path=vl.b))
            received = 0

            async def drain() -> None:
                nonlocal received
                while received < 23_040:
                    received += len(await b.receive_some())

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await a.send_all(b"\x55" * 23_040)
            took = trio.current_time() - start
            # 23,040 bytes at 11,520 bytes/s: 2 s of line time (virtual clock).
            assert 1.99 <= took < 2.1
            await a.aclose()
            await b.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_noise_generator_counts_what_it_does() -> None:
    line = VirtualLine(seed=1)
    line.set_noise(garbage_rate=0.01, drop_rate=0.01, direction=Direction.A_TO_B)
    data = bytes(100_000)
    out = line._apply(Direction.A_TO_B, data)
    c = line.counters[Direction.A_TO_B]
    assert c.dropped > 500 and c.garbage > 500
    assert len(out) == len(data) - c.dropped + c.garbage
    assert c.forwarded == len(data) - c.dropped
    assert line._apply(Direction.B_TO_A, data) == data  # the other way is clean
    line.cut()
    assert line._apply(Direction.B_TO_A, b"abc") == b""
    assert line.totals().silenced == 3
    with pytest.raises(ValueError, match="probability"):
        line.set_noise(drop_rate=1.5)


# -- end to end over a pty line ------------------------------------------------------------


def test_outage_replay_and_config_over_a_tls_serial_line(site_pki: Path, tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    cfg = ConfigStore(db)
    cfg.change([p.PutSchedule(schedule=p.Schedule(id=1, intervals=(p.Interval(days=0x7F, start=0, end=1440),)))])

    async def main() -> None:
        with VirtualLine(link_dir=tmp_path / "line") as line:
            fleet = Fleet([serial_panel(site_pki, 21, line.b)], Workload(rate=20.0, limit=600), seed=4, journal=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(fleet.run)
                await trio.sleep(15)  # no host on the line: the panel buffers
                panel = fleet.panels[21]
                assert panel.statistics().emitted > 200 and panel.statistics().acked == 0
                # The operator changes the site meanwhile.
                await trio.to_thread.run_sync(
                    cfg.change,
                    [p.PutCardholder(cardholder=p.Cardholder(card=4000 + i, levels=())) for i in range(30)],
                )
                node = Node(serial_node(site_pki, db, [(21, line.a)]))
                await nursery.start(node.run)
                with trio.fail_after(120):
                    await fleet.workload_done.wait()
                    await fleet.wait_drained()
                    while panel.config.version != cfg.version:
                        await trio.sleep(0.1)
                assert panel.config.state == cfg.snapshot()[1]
                assert panel.statistics().sessions == 1
                assert node.statistics().events_stored == panel.statistics().acked
                nursery.cancel_scope.cancel()
            check_store_matches_journals(db, fleet)

    trio.run(main, clock=clock())


def test_noise_on_the_line_breaks_no_promise(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    cfg = ConfigStore(db)

    async def main() -> None:
        with VirtualLine(seed=11) as line:
            # About one noise burst every 4 KB and one lost byte every 20 KB, both ways.
            line.set_noise(garbage_rate=1 / 4096, drop_rate=1 / 20_000)
            fleet = Fleet([serial_panel(None, 31, line.b)], Workload(rate=200.0, limit=6000), seed=8, journal=True)
            node = Node(serial_node(None, db, [(31, line.a)]))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                await nursery.start(fleet.run)
                for i in range(5):  # config pushes cross the noisy line too
                    await trio.sleep(3)
                    await trio.to_thread.run_sync(
                        cfg.change, [p.PutCardholder(cardholder=p.Cardholder(card=7000 + i, levels=()))]
                    )
                panel = fleet.panels[31]
                with trio.fail_after(600):
                    await fleet.workload_done.wait()
                    line.set_noise()  # a clean line at the end, so the last frames get through
                    await fleet.wait_drained()
                    while panel.config.version != cfg.version:
                        await trio.sleep(0.1)
                assert panel.config.state == cfg.snapshot()[1]
                nursery.cancel_scope.cancel()
            totals = line.totals()
            assert totals.garbage > 0 and totals.dropped > 0
            ps, ns = panel.statistics(), node.statistics()
            # The decoders skipped noise (counted) and some frames failed: sessions restarted.
            assert ps.bytes_skipped + ns.bytes_skipped > 0
            assert ps.sessions > 1
            assert ns.events_stored == ps.acked
            check_store_matches_journals(db, fleet)

    trio.run(main, clock=clock())


def test_a_device_that_disappears_and_comes_back(tmp_path: Path) -> None:
    db = tmp_path / "site.db"
    ConfigStore(db).close()

    async def main() -> None:
        line = VirtualLine(link_dir=tmp_path / "line").open()
        try:
            fleet = Fleet([serial_panel(None, 41, line.b)], Workload(rate=50.0, limit=3000), seed=2, journal=True)
            node = Node(serial_node(None, db, [(41, line.a)]))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                await nursery.start(fleet.run)
                panel = fleet.panels[41]
                with trio.fail_after(60):
                    while panel.statistics().acked < 500:
                        await trio.sleep(0.1)
                line.hang_up()  # unplugged: both ends' devices vanish
                assert not line.a.exists()
                await trio.sleep(10)
                assert not panel.is_connected
                assert "does not exist" in (node.last_error or "")
                line.restore_device()  # plugged in again, same names
                with trio.fail_after(120):
                    await fleet.workload_done.wait()
                    await fleet.wait_drained()
                nursery.cancel_scope.cancel()
            assert panel.statistics().sessions >= 2
            check_store_matches_journals(db, fleet)
        finally:
            line.close()

    trio.run(main, clock=clock())


# -- the site file and the CLI ---------------------------------------------------------------


def test_site_file_describes_serial_panels(tmp_path: Path) -> None:
    from fieldsync.site import SiteError, load_site

    site = tmp_path / "site.toml"
    site.write_text(
        "[site]\ninsecure = true\n[fleet]\npanels = 0\n"
        "[[panels]]\nid = 7\nserial = '/dev/ttyS9'\nnode_serial = '/dev/ttyS8'\nbaud = 9600\nthrottle = true\n"
    )
    loaded = load_site(site)
    settings = loaded.panel_settings(7)
    assert settings.mode is LinkMode.SERIAL and settings.serial is not None
    assert settings.serial.baud == 9600 and settings.serial.throttle
    assert [(pid, line.path) for pid, line in loaded.node_serial_lines()] == [(7, Path("/dev/ttyS8"))]
    # Plain text over a line that may leave the machine is refused, naming it.
    with pytest.raises(LinkError, match=r"/dev/ttyS8 does not exist|/dev/ttyS8: not a pseudo-terminal"):
        loaded.check_transport(serial=(Path("/dev/ttyS8"),))
    site.write_text("[[panels]]\nid = 7\nmode = 'serial'\n")
    with pytest.raises(SiteError, match=r"site\.toml:1: panels\[0\]: a serial panel needs 'serial'"):
        load_site(site)
    site.write_text("[[panels]]\nid = 7\nserial = '/dev/x'\nbaud = 7\n")
    with pytest.raises(SiteError, match=r"site\.toml:4: panels\[0\]\.baud: .*baud rate 7"):
        load_site(site).panel_settings(7)


@pytest.mark.slow
def test_cli_serve_and_emulate_over_a_virtual_line(tmp_path: Path) -> None:
    """The tour's commands as real processes: a line, a node on one end, a panel on the other."""
    import subprocess
    import sys
    import time

    from storage import EventStore

    line_dir, db = tmp_path / "line", tmp_path / "site.db"
    cli = [sys.executable, "-m", "fieldsync.cli"]
    started: list[subprocess.Popen[str]] = []
    try:
        line = subprocess.Popen([*cli, "line", "--link-dir", str(line_dir), "--duration", "30"], text=True)
        started.append(line)
        deadline = time.monotonic() + 15
        while not (line_dir / "b").exists():
            assert time.monotonic() < deadline, "the line did not come up"
            time.sleep(0.05)
        serve = subprocess.Popen(
            [*cli, "serve", "--serial", f"1={line_dir / 'a'}", "--insecure", "--no-listen", "--db", str(db)],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(serve)
        assert serve.stdout is not None
        assert "1 serial line(s)" in serve.stdout.readline()
        emulate = subprocess.run(
            [*cli, "emulate", "--serial", str(line_dir / "b"), "--insecure", "--rate", "40", "--duration", "4"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert emulate.returncode == 0, emulate.stderr
        assert "1 panels (serial)" in emulate.stdout
        last = emulate.stdout.strip().splitlines()[-1]
        acked = int(last.split("acked ")[1].split()[0])
        assert acked > 40
    finally:
        for proc in reversed(started):  # only the processes this test started, by their handle
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    store = EventStore(db)
    try:
        assert store.count_events() >= acked
    finally:
        store.close()
