"""Rogue peers against a real ``fieldsync serve`` over mutual TLS on loopback (P6, P7)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fieldsync.harness import ROGUE_CARD, RogueKind, RogueOutcome, attempt_rogue
from storage import EventStore

VIP = "127.0.0.100"
CLI = [sys.executable, "-m", "fieldsync.cli"]


@pytest.fixture
def node(site_pki: Path, tmp_path: Path) -> Iterator[tuple[tuple[str, int], Path]]:
    port = 31945
    db = tmp_path / "site.db"
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\ndb = "{db}"\npki = "{site_pki}"\nvip = "{VIP}"\nport = {port}\n[fleet]\npanels = 4\n')
    process = subprocess.Popen([*CLI, "serve", "--site", str(site)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert "listening on" in process.stdout.readline()
        yield (VIP, port), db
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_every_rogue_gets_nothing_and_stores_nothing(
    node: tuple[tuple[str, int], Path], site_pki: Path, tmp_path: Path
) -> None:
    address, db = node

    async def main() -> list[RogueOutcome]:
        return [
            await attempt_rogue(
                kind, address=address, panel_id=1, pki_dir=site_pki, other_panel=2, workdir=tmp_path, seed=7
            )
            for kind in RogueKind
            if kind is not RogueKind.REPLAY
        ]

    outcomes = trio.run(main)
    by_kind = {o.kind: o for o in outcomes}
    assert all(o.got_nothing for o in outcomes), [o.describe() for o in outcomes]
    # Each is stopped where it should be: TLS refuses the certificate-less, the foreign and the
    # downgraded peer; the genuine certificate of another panel gets as far as HELLO, and no further.
    for kind in (RogueKind.NO_CERT, RogueKind.OTHER_CA, RogueKind.TLS12):
        assert by_kind[kind].refused_at == "tls", by_kind[kind].describe()
    assert by_kind[RogueKind.ID_MISMATCH].refused_at == "error"
    assert by_kind[RogueKind.ID_MISMATCH].error_code == 401  # PANEL_ID_MISMATCH
    assert by_kind[RogueKind.GARBAGE].refused_at == "closed"
    store = EventStore(db)
    try:
        assert store.count_events() == 0
    finally:
        store.close()


def test_a_recorded_session_replayed_gets_nothing(
    node: tuple[tuple[str, int], Path], site_pki: Path, tmp_path: Path
) -> None:
    """A genuine panel's session, recorded on the wire by the fault proxy in front of the node,
    then sent again on a new connection: TLS ends it, nothing is stored a second time."""
    from emulator import LinkMode, Panel, PanelSettings
    from fieldsync.harness import FaultHub
    from fieldsync.site import pki

    address, db = node
    tap = ("127.0.0.101", 31946)

    async def main() -> tuple[bytes, RogueOutcome, int]:
        hub = FaultHub(seed=3)
        settings = PanelSettings(
            panel_id=3, mode=LinkMode.PUNCH_OUT, server=tap, tls=pki.tls_files(site_pki, "panel", 3)
        )
        panel = Panel(settings, journal=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            proxy = await hub.create("tap", tap, address)
            await nursery.start(panel.run)
            for i in range(40):
                panel.swipe(1000 + i, 1)
            with trio.fail_after(30):
                while len(panel.buffer) or not panel.is_connected:
                    await trio.sleep(0.05)
            hub.delete("tap")  # the genuine session ends; its recording is kept
            store = EventStore(db)
            stored = store.count_events()
            store.close()
            recording = proxy.recording()
            outcome = await attempt_rogue(
                RogueKind.REPLAY,
                address=address,
                panel_id=3,
                pki_dir=site_pki,
                other_panel=2,
                workdir=tmp_path,
                recording=recording,
            )
            nursery.cancel_scope.cancel()
        return recording, outcome, stored

    recording, outcome, stored_before = trio.run(main)
    assert len(recording) > 1000 and recording[0] == 0x16, recording[:16]  # a TLS handshake and records
    assert outcome.got_nothing and outcome.refused_at == "closed", outcome.describe()
    store = EventStore(db)
    try:
        assert store.count_events() == stored_before >= 40
        assert not [e for e in store.events(3) if e.record.card >= ROGUE_CARD]
    finally:
        store.close()
