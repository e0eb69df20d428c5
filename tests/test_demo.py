"""The README's main command, end to end: two node processes, a fleet, kill -9, switchover."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fieldsync.demo import run_demo

pytestmark = pytest.mark.slow


def test_the_demo_tells_its_story_and_every_promise_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = run_demo(panels=20, rate=2.0, port=31400, keep=tmp_path / "demo")
    out = capsys.readouterr().out
    assert held, out
    for step in ("kill -9", "holds the VIP with epoch 2", "every panel reconnected", "switchover", "Promise report"):
        assert step in out, (step, out)
    assert len(re.findall(r"\bheld\b", out)) == 7 and "BROKEN" not in out  # P1-P7
    assert re.search(r"takeover seen \d+\.\d+ s after the kill", out), out
    # The takeover reached the panels on their parked sessions (docs/protocol.md 6.3).
    assert "every panel has a session parked at the standby" in out, out
    taken = re.search(r"(\d+) of 20 panels were taken over on their parked sessions", out)
    assert taken is not None and int(taken.group(1)) >= 18, out
    assert (tmp_path / "demo" / "site.db").exists()
