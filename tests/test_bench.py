"""`fieldsync bench replay` as a user runs it: a node process, a fleet, both bounds, JSON and a plot.

Speed is not asserted here (speed goals live in the benchmarks); what is asserted is that every
figure is there, that each ratio is its figure over the bound measured in the same run, and that
a bound that cannot be measured is reported missing, never as a ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fieldsync.bench import ReplayOptions, report_lines
from fieldsync.bench._replay import _bounds

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_replay_prints_writes_and_plots_every_figure_beside_its_bound(tmp_path: Path) -> None:
    out, png = tmp_path / "replay.json", tmp_path / "replay.png"
    command = [sys.executable, "-m", "fieldsync.cli", "bench", "replay", "--panels", "2", "--backlog", "30000"]
    # The materializer waits half a second after the last commit, so the sampler (every 0.1 s)
    # sees the log fill even when so small a drain takes less than one sample.
    command += ["--no-tls", "--batch", "256", "--port", "31250", "--ingest", "log", "--materialize-idle", "0.5"]
    command += ["--json", str(out), "--plot", str(png)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = ("acked", "row bound", "log bound", "every event visible in events", "queries' lag", "CPU in the drain")
    for words in shown:
        assert words in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert (result["panels"], result["backlog"], result["tls"], result["ingest"]) == (2, 30000, False, "log")
    assert result["missing_bounds"] == {}
    acked = result["acked_events_per_s"]
    assert result["ratio_to_row_bound"] == pytest.approx(acked / result["row_bound_events_per_s"])
    assert result["ratio_to_log_bound"] == pytest.approx(acked / result["log_bound_events_per_s"])
    assert result["drain_s"] > 0 and result["node_cpu_s"] > 0 and result["fleet_cpu_s"] > 0
    assert result["visible_s"] >= result["drain_s"] and result["log_peak_events"] > 0
    assert result["stated_lag_s"] == 2.0 and 0 < result["worst_lag_s"] <= result["visible_s"]
    samples = result["samples"]
    assert samples[-1][1] >= result["events"] - 4 and [s[0] for s in samples] == sorted(s[0] for s in samples)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bound_that_cannot_be_measured_is_missing_not_a_ratio(tmp_path: Path) -> None:
    opts = ReplayOptions(panels=1, backlog=100)
    measured = {"events": 100, "acked_events_per_s": 5000.0, "node_cpu_s": 0.5, "fleet_cpu_s": 0.5}
    bounds = _bounds(opts, tmp_path / "gone", measured)  # no such directory: neither bound can be taken
    assert bounds["row_bound_events_per_s"] is None and bounds["ratio_to_row_bound"] is None
    assert bounds["log_bound_events_per_s"] is None and bounds["ratio_to_log_bound"] is None
    assert set(bounds["missing_bounds"]) == {"row_bound", "log_bound"}  # type: ignore[arg-type]
    result = {
        **measured,
        **bounds,
        "drain_s": 0.02,
        "connected_s": 0.01,
        "writer_busy_pct": [],
        "node_loop_cpu_s": 0.2,
        "ingest": "rows",
        "visible_s": float("nan"),
    }
    text = "\n".join(report_lines(result))
    assert "row bound        : missing (" in text and "ratio to bound   : missing" in text, text
    assert "log bound        : missing (" in text, text


def test_bench_idle_says_when_not_every_session_came_up() -> None:
    """A fleet whose set-ups cannot keep up (10,000 panels from one process) is reported, per
    session that was up, with how many came up: not a traceback."""
    from fieldsync.bench import idle_lines

    result: dict[str, object] = {
        "panels": 10_000, "idle_ms": 10_000, "heartbeat_ms": 1000, "window_s": 30.0, "frame_bound_us": 300.0,
        "node_cpu_s": 9.0, "node_loop_cpu_s": 8.0, "node_cores": 0.3, "node_us_per_session_s": 40.0,
        "fleet_cpu_s": 12.0, "fleet_cores": 0.4, "fleet_us_per_session_s": 50.0,
        "node_frames_per_session_s": 0.133, "fleet_frames_per_session_s": 0.167,
        "connected_at_start": 7431, "connected_at_end": 7012, "sessions_set_up_in_window": 380,
        "all_connected": False, "connect_wait_s": 220.0,
    }  # fmt: skip
    text = "\n".join(idle_lines(result))
    assert "not every session came up within 220 s" in text and "7431 up when the window began" in text, text
    result["all_connected"] = True
    assert "not every session" not in "\n".join(idle_lines(result))


@pytest.mark.slow
def test_bench_idle_gives_each_ends_cost_in_frames_of_the_bound_taken_in_the_same_run(tmp_path: Path) -> None:
    out, png = tmp_path / "idle.json", tmp_path / "idle.png"
    command = [sys.executable, "-m", "fieldsync.cli", "bench", "idle", "--panels", "20", "--seconds", "2"]
    # Probes every 0.2 s, so the window holds ten per session (at the default 10 s, none).
    command += ["--settle", "0.5", "--heartbeat-ms", "100", "--idle-ms", "200", "--port", "31260"]
    command += ["--json", str(out), "--plot", str(png)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "frame bound" in done.stdout and "frames (goal <= 0.25)" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert result["panels"] == 20 and result["window_s"] >= 2 and result["frame_bound_us"] > 0 < result["own_frame_us"]
    assert (result["heartbeat_ms"], result["idle_ms"]) == (100, 200)
    assert result["connected_at_end"] == result["connected_at_start"] == 20 and result["all_connected"]
    assert result["sessions_set_up_in_window"] == 0
    for end in ("node", "fleet"):
        per_session = result[f"{end}_us_per_session_s"]
        assert per_session > 0  # probes cost something: 0 would mean nothing was measured
        assert result[f"{end}_frames_per_session_s"] == pytest.approx(per_session / result["frame_bound_us"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_memory_gives_bytes_per_event_against_the_record(tmp_path: Path) -> None:
    out, png = tmp_path / "memory.json", tmp_path / "memory.png"
    command = [sys.executable, "-m", "fieldsync.cli", "bench", "memory", "--events", "50000"]
    done = subprocess.run(
        [*command, "--json", str(out), "--plot", str(png)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    # Everything past the budget was dropped (one more: the gap marker takes a record's room).
    assert result["record_bytes"] == 32 and 10 * 50_000 <= result["dropped"] <= 10 * 50_000 + 1
    assert result["ratio_to_record"] == pytest.approx(result["buffer_bytes_per_event"] / 32)
    assert result["rss_growth_ratio"] == pytest.approx(result["rss_after_10x_mib"] / result["rss_full_mib"])
    assert "bytes per event" in done.stdout and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bench_failover_gives_the_p99_against_the_cold_connection_of_the_same_run(tmp_path: Path) -> None:
    out, png = tmp_path / "failover.json", tmp_path / "failover.png"
    command = [sys.executable, "-m", "fieldsync.cli", "bench", "failover", "--runs", "1", "--panels", "12"]
    command += ["--backlog", "200", "--port", "31270", "--json", str(out), "--plot", str(png)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cold connection" in done.stdout and "p99 / bound" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    (run,) = result["per_run"]
    assert len(run["outage_s"]) == 12 and all(t > 0 for t in run["outage_s"])  # after the kill, every panel
    assert run["takeover_s"] is not None and run["cold_s"] > 0
    assert result["ratio_p99_to_cold"] == pytest.approx(result["p99_s"] / result["cold_connect_s"])
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bench_alarms_shows_the_lane_ahead_of_the_backlog_beside_the_same_run_without_it(tmp_path: Path) -> None:
    out, png = tmp_path / "alarms.json", tmp_path / "alarms.png"
    # Each live alarm has about 70,000 events (17 batches) ahead of it, far more than the 4
    # batches in flight that the lane, on the same connection, still waits behind.
    command = [sys.executable, "-m", "fieldsync.cli", "bench", "alarms", "--panels", "4", "--backlog", "100000"]
    command += ["--live-panels", "4", "--live-at", "0.3", "--no-tls", "--port", "31252"]
    command += ["--json", str(out), "--plot", str(png)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for words in ("with the lane", "without it", "drain (bound)", "idle alarm (bound)", "lane / no lane"):
        assert words in done.stdout, done.stdout
    result = json.loads(out.read_text())
    lane, none = result["lane"], result["no_lane"]
    assert (lane["lanes"], none["lanes"]) == (True, False)
    assert lane["offline_alarms"] == none["offline_alarms"] == 4 * 4 and lane["live_alarms"] == 4
    assert lane["alarms_in_lane"] >= 4 * 4 + 4 and none["alarms_in_lane"] == 0
    # One sequence per panel: the door held at 99 % of a backlog is stored with the drain's end;
    # with the lane every offline alarm is in long before it.
    assert none["offline_all_stored_s"] >= 0.9 * none["drain_s"]
    assert lane["offline_all_stored_s"] < 0.5 * lane["drain_s"]
    assert none["live_events_ahead_mean"] > 0 and lane["live_events_ahead_mean"] > 0  # raised mid-replay
    assert lane["live_p99_s"] < none["live_p99_s"]
    assert result["ratio_live_p99_s_lane_to_no_lane"] == pytest.approx(lane["live_p99_s"] / none["live_p99_s"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
