"""The node's Prometheus endpoint: a real ``fieldsync serve --metrics``, real panels, a real scrape."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from emulator import LinkMode, Panel, PanelSettings
from storage import EventStore

CLI = [sys.executable, "-m", "fieldsync.cli"]
LISTEN = ("127.0.0.51", 25110)
METRICS = ("127.0.0.1", 25111)

pytestmark = pytest.mark.slow


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Path]:
    db = tmp_path / "node.db"
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--insecure",
            "--listen",
            f"{LISTEN[0]}:{LISTEN[1]}",
            "--db",
            str(db),
            "--metrics",
            f"{METRICS[0]}:{METRICS[1]}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"metrics on http://{METRICS[0]}:{METRICS[1]}/metrics" in line, line
        yield db
    finally:
        process.terminate()
        process.communicate(timeout=10)


def _scrape(at: tuple[str, int] = METRICS) -> tuple[dict[str, dict[tuple[tuple[str, str], ...], float]], str]:
    """Every sample by name and labels, and the content type it came with."""
    with urllib.request.urlopen(f"http://{at[0]}:{at[1]}/metrics", timeout=5) as response:
        text = response.read().decode()
        content_type = response.headers["content-type"]
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples, content_type


def test_a_scrape_counts_what_the_store_holds_and_the_panels_connected(node: Path) -> None:
    panels = [Panel(PanelSettings(panel_id=pid, mode=LinkMode.PUNCH_OUT, server=LISTEN)) for pid in (1, 2, 3)]

    async def main() -> tuple[dict[str, dict[tuple[tuple[str, str], ...], float]], str, float]:
        async with trio.open_nursery() as nursery:
            for panel in panels:
                await nursery.start(panel.run)
            for i in range(60):
                for panel in panels:
                    panel.swipe(1000 + i, 1)
            with trio.fail_after(30):
                while any(len(p.buffer) or not p.is_connected for p in panels):
                    await trio.sleep(0.05)
            started = time.perf_counter()
            samples, content_type = await trio.to_thread.run_sync(_scrape)
            took = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        return samples, content_type, took

    samples, content_type, took = trio.run(main)
    print(f"scrape took {took * 1000:.1f} ms")
    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    store = EventStore(node)
    try:
        stored = store.count_events()
        alarms = len(store.alarms())
    finally:
        store.close()
    assert stored >= 180
    assert samples["fieldsync_events_stored_total"][()] == stored
    assert samples["fieldsync_alarms_stored_total"][()] == alarms
    assert samples["fieldsync_sessions_live"][()] == 3
    assert samples["fieldsync_sessions_total"][()] == 3
    assert samples["fieldsync_node_info"] == {(("node", "A"),): 1}
    assert samples["fieldsync_epoch"][()] >= 1
    assert samples["fieldsync_ingest_queue_batches"][()] == 0  # every buffer emptied: all committed
    # ingest = rows: nothing goes through the batch log
    assert samples["fieldsync_batch_log_events"][()] == samples["fieldsync_events_materialized_total"][()] == 0
    commits = samples["fieldsync_commits_total"][()]
    histogram = samples["fieldsync_commit_duration_seconds_bucket"]
    assert commits >= 1
    assert samples["fieldsync_commit_duration_seconds_count"][()] == commits == histogram[(("le", "+Inf"),)]
    assert samples["fieldsync_commit_duration_seconds_sum"][()] > 0
    counts = [histogram[key] for key in sorted(histogram, key=lambda k: float(k[0][1]))]
    assert counts == sorted(counts), "buckets are cumulative"
    assert "fieldsync_protocol_errors_total" not in samples  # none happened; the family has no samples


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    taken = ("127.0.0.1", 25112)
    with socket.socket() as holder:
        # A scrape of the test above may leave 25112 in TIME_WAIT: that is no listener, and
        # without SO_REUSEADDR the holder's own bind failed on it (seen once in a run).
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(taken)
        holder.listen()
        result = subprocess.run(
            [
                *CLI,
                "serve",
                "--insecure",
                "--listen",
                "127.0.0.51:25113",
                "--db",
                str(tmp_path / "n.db"),
                "--metrics",
                f"{taken[0]}:{taken[1]}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: the metrics endpoint cannot listen on 127.0.0.1:25112: Address already in use"
    ), result.stderr


@pytest.mark.parametrize("command", [["serve", "--insecure"], ["node", "--id", "A"]])
def test_a_non_loopback_address_needs_the_flag(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, *command, "--metrics", "0.0.0.0:25114"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: --metrics 0.0.0.0:25114: 0.0.0.0 is not a loopback address and the endpoint has no "
        "authentication; add --metrics-anywhere to serve it there"
    ), result.stderr


def test_a_standby_cluster_node_reports_its_role_and_no_sessions(tmp_path: Path) -> None:
    """Before it takes the lease: the role gauge says standby, no VIP, no node families."""
    from prometheus_client import generate_latest

    from fieldsync.engine import ClusterNode, ClusterSettings, metrics_registry

    cluster = ClusterNode(ClusterSettings(node_id="B", address="127.0.0.12", db=tmp_path / "c.db"))
    text = generate_latest(metrics_registry(cluster)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("fieldsync_node_role", (("role", "standby"),))] == 1
    assert samples[("fieldsync_node_role", (("role", "active"),))] == 0
    assert samples[("fieldsync_node_vip_held", ())] == 0
    assert samples[("fieldsync_node_takeovers_total", ())] == 0
    assert samples[("fieldsync_node_info", (("node", "B"),))] == 1
    assert not any(name == "fieldsync_sessions_live" for name, _ in samples)


async def test_garbage_then_a_reset_does_not_take_the_endpoint_down() -> None:
    """A client that sends what is not HTTP and resets at once (a port scanner): the answer it
    cannot take is dropped; the endpoint, and the node whose nursery runs it, go on."""
    import socket
    import struct

    from prometheus_client import CollectorRegistry

    from fieldsync.engine import http_request, serve_metrics

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_metrics, CollectorRegistry(), "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        for _ in range(20):
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            await sock.send(b"\x16\x03\x01 not http at all\r\n\r\n")
            sock.close()
        await trio.sleep(0.2)
        with trio.fail_after(10):
            status, body = await http_request("127.0.0.1", port, "GET", "/metrics")
        assert status == 200, body
        nursery.cancel_scope.cancel()


def test_a_fleet_serves_its_panels_metrics(node: Path) -> None:
    """`fieldsync emulate --metrics`: the fleet's side, per panel (online, buffer fill, what was
    acknowledged), from the real command against the real node."""
    from storage.postgres import free_port

    fleet_at = ("127.0.0.1", free_port())
    command = [*CLI, "emulate", "--insecure", "--server", f"{LISTEN[0]}:{LISTEN[1]}", "--panels", "3"]
    command += ["--rate", "20", "--duration", "30", "--metrics", f"{fleet_at[0]}:{fleet_at[1]}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"metrics on http://{fleet_at[0]}:{fleet_at[1]}/metrics" in line, line
        deadline = time.monotonic() + 20
        while True:
            samples, content_type = _scrape(fleet_at)
            acked = samples.get("fieldsync_panel_events_acked_total", {})
            if samples["fieldsync_fleet_panels_online"][()] == 3 and len(acked) == 3 and min(acked.values()) > 0:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.2)
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert content_type.startswith("text/plain; version=")
    panels = [(("panel", str(p)),) for p in (1, 2, 3)]
    assert samples["fieldsync_fleet_panels"][()] == 3
    assert sorted(samples["fieldsync_panel_online"]) == panels and set(samples["fieldsync_panel_online"].values()) == {
        1
    }
    assert all(0 <= v < 1 for v in samples["fieldsync_panel_buffer_fill_ratio"].values())
    emitted = samples["fieldsync_panel_events_emitted_total"]
    assert all(emitted[k] >= acked[k] for k in panels)
    dropped = samples["fieldsync_panel_events_dropped_total"]
    reasons = {dict(k)["reason"] for k in dropped}
    assert reasons == {"overflow", "refused", "power_loss", "server_lost"} and set(dropped.values()) == {0}
    assert set(samples["fieldsync_panel_sessions_total"].values()) == {1}


def test_the_fleets_drops_are_counted_by_reason() -> None:
    from emulator import Fleet
    from fieldsync.engine import fleet_render
    from storage import OverflowPolicy

    def settings(pid: int, policy: OverflowPolicy) -> PanelSettings:
        return PanelSettings(panel_id=pid, mode=LinkMode.PUNCH_OUT, server=LISTEN, buffer_bytes=8 * 32, policy=policy)

    fleet = Fleet([settings(1, OverflowPolicy.DROP_OLDEST), settings(2, OverflowPolicy.REFUSE_NEWEST)])
    for panel in fleet.panels.values():  # no server: the buffers fill
        for i in range(20):
            panel.swipe(1000 + i, 1)
    render = fleet_render(fleet)

    def dropped() -> dict[tuple[str, str], float]:
        return {
            (s.labels["panel"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(trio.run(render).decode())
            for s in family.samples
            if s.name == "fieldsync_panel_events_dropped_total"
        }

    full = dropped()
    assert full[("1", "overflow")] > 0 and full[("1", "refused")] == 0
    assert full[("2", "refused")] == 12 and full[("2", "overflow")] == 0  # 8 kept, the 12 newest refused
    fleet.panels[2].power_cycle()  # its RAM buffer lost with the power
    after = dropped()
    assert after[("2", "power_loss")] == 8
    assert after[("1", "power_loss")] == after[("1", "server_lost")] == after[("2", "server_lost")] == 0
