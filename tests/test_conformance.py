"""`fieldsync conformance` against our own node and our own emulated panel, as a user runs it.

Real processes over mutual TLS on loopback: ``fieldsync serve`` from a site file,
``fieldsync emulate`` as a host-initiated panel, and the battery, which shares no code
with either (an import-linter contract keeps it so).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

VIP = "127.0.0.100"
CLI = [sys.executable, "-m", "fieldsync.cli"]


@contextmanager
def running(command: list[str], ready: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert ready in line, f"{command[3]} did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
        yield process
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)  # also closes the pipes
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def battery(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "conformance.json"
    done = subprocess.run([*CLI, "conformance", *args, "--json", str(out)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result: dict[str, object] = json.loads(out.read_text())
    assert result["failed"] == 0
    return result


@pytest.mark.slow
def test_our_node_passes_the_battery(site_pki: Path, tmp_path: Path) -> None:
    port = 31195
    db = tmp_path / "site.db"
    site = tmp_path / "site.toml"
    # idle_ms 3000: the quiet silence limit (I + 3 H = 6 s) fits the battery's longest case.
    site.write_text(
        f'[site]\ndb = "{db}"\npki = "{site_pki}"\nvip = "{VIP}"\nport = {port}\nidle_ms = 3000\n[fleet]\npanels = 4\n'
    )
    for mode in ("locked", "card"):  # a configuration to push: deltas and snapshots
        subprocess.run([*CLI, "config", "set-door-mode", "--db", str(db), "--door", "1", "--mode", mode], check=True)
    with running([*CLI, "serve", "--site", str(site)], "listening on"):
        result = battery(
            tmp_path,
            "--server",
            f"{VIP}:{port}",
            "--pki",
            str(site_pki),
            "--panel-ids",
            "1-4",
            "--unknown-panel-id",
            "5",
        )
    cases = result["cases"]
    assert isinstance(cases, list)
    skipped = [c["name"] for c in cases if c["result"] == "skip"]
    assert "peer-silence-timeout-quiet" not in skipped  # rule 5's quiet limit ran
    assert result["passed"] >= 60, f"too few cases ran: {result['passed']} passed, skipped {skipped}"


def panel_site(site_pki: Path, tmp_path: Path, *, port: int, panel_id: int, rate: float) -> Path:
    """The site file of one host-initiated panel listening on ``port``, swiping ``rate`` a second."""
    site = tmp_path / "site.toml"
    site.write_text(
        f'[site]\ndb = "{tmp_path / "site.db"}"\npki = "{site_pki}"\nvip = "{VIP}"\nport = {port - 1}\n'
        f"panel_port = {port}\n"
        f'[fleet]\npanels = 1\nfirst_id = {panel_id}\nmode = "host-initiated"\nrate = {rate}\n'
    )
    return site


@pytest.mark.slow
def test_our_panel_passes_the_battery(site_pki: Path, tmp_path: Path) -> None:
    port = 31197
    site = panel_site(site_pki, tmp_path, port=port, panel_id=7, rate=20)
    with running([*CLI, "emulate", "--site", str(site)], "panel"):
        result = battery(
            tmp_path, "--panel", f"127.1.0.7:{port}", "--panel-id", "7", "--pki", str(site_pki), "--node-name", "A"
        )
    assert result["passed"] >= 30


@pytest.mark.slow
def test_our_quiet_panel_probes_as_the_spec_says(site_pki: Path, tmp_path: Path) -> None:
    """A panel with no events is quiet: the battery's liveness cases (9.1), which skip on a busy one."""
    port = 31199
    site = panel_site(site_pki, tmp_path, port=port, panel_id=8, rate=0)
    liveness = ("panel-probe-quiet", "probe-unanswered-timeout", "node-heartbeat-not-answered", "node-silence-timeout")
    with running([*CLI, "emulate", "--site", str(site)], "panel"):
        result = battery(
            tmp_path,
            "--panel",
            f"127.1.0.8:{port}",
            "--panel-id",
            "8",
            "--pki",
            str(site_pki),
            *(arg for case in liveness for arg in ("--case", case)),
        )
    cases = result["cases"]
    assert isinstance(cases, list)
    assert sorted(c["name"] for c in cases if c["result"] == "pass") == sorted(liveness)


def _wait_for_holder(db: Path, holder: str, timeout: float = 20.0) -> None:
    import time

    from storage import ClusterStore

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = ClusterStore(db)
        try:
            if store.lease().holder == holder:
                return
        finally:
            store.close()
        time.sleep(0.05)
    raise AssertionError(f"node {holder} never held the lease")


@pytest.mark.slow
def test_our_standby_parks_as_the_spec_says(site_pki: Path, tmp_path: Path) -> None:
    """docs/protocol.md 6.3 against a real standby: node A active, node B standing by with
    its park address open; the battery parks panels at B."""
    port, park_port = 31290, 31292
    db = tmp_path / "site.db"
    site = tmp_path / "site.toml"
    # idle_ms 2000: the parked silence case (I + 3 H = 5 s) fits the battery's bound.
    site.write_text(
        f'[site]\ndb = "{db}"\npki = "{site_pki}"\nvip = "{VIP}"\nport = {port}\nidle_ms = 2000\n'
        f"park = true\npark_port = {park_port}\n[fleet]\npanels = 4\n"
    )
    with running([*CLI, "node", "--id", "A", "--site", str(site)], "up as standby"):
        _wait_for_holder(db, "A")
        with running([*CLI, "node", "--id", "B", "--site", str(site)], "up as standby"):
            result = battery(
                tmp_path,
                "--park",
                f"127.0.0.12:{park_port}",
                "--pki",
                str(site_pki),
                "--panel-ids",
                "1-4",
                "--unknown-panel-id",
                "5",
            )
    cases = result["cases"]
    assert isinstance(cases, list)
    ran = {c["name"] for c in cases if c["result"] == "pass"}
    assert {"park-hello-standby", "park-heartbeat-answer", "park-event-batch-illegal", "park-silence-timeout"} <= ran


@pytest.mark.slow
def test_our_panel_parks_and_takes_a_takeover_as_the_spec_says(site_pki: Path, tmp_path: Path) -> None:
    """The panel side of 6.3: our host-initiated panel parks at node B's park address, where
    the battery plays a standby (and, through --panel, the node in session)."""
    port, park_port = 31294, 31296
    site = panel_site(site_pki, tmp_path, port=port, panel_id=9, rate=0)
    text = site.read_text().replace("[fleet]", f"park = true\npark_port = {park_port}\n[fleet]")
    site.write_text(text + '[nodes.A]\naddress = "127.0.0.13"\n[nodes.B]\naddress = "127.0.0.14"\n')
    with running([*CLI, "emulate", "--site", str(site)], "panel"):
        result = battery(
            tmp_path,
            "--panel",
            f"127.1.0.9:{port}",
            "--panel-id",
            "9",
            "--pki",
            str(site_pki),
            "--node-name",
            "B",
            "--park-listen",
            f"127.0.0.14:{park_port}",
            "--case",
            "park-*",
            "--case",
            "standby-off-park",
            "--case",
            "takeover-in-streaming",
        )
    cases = result["cases"]
    assert isinstance(cases, list)
    ran = {c["name"] for c in cases if c["result"] == "pass"}
    assert {"park-hello", "park-probe-interval", "park-takeover-hello", "park-takeover-stale"} <= ran, cases
