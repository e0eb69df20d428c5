"""Rogue peers against a real ``fieldsync serve`` over mutual TLS on loopback (P6, P7)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fieldsync.harness import RogueKind, RogueOutcome, attempt_rogue
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
