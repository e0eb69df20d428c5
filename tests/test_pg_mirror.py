"""Mirrored storage: each node's own PostgreSQL, promotion, and rejoin by pg_rewind (FastSync).

Each test gets nodes A and B's databases on loopback (``running_mirror``: A the primary, B
its synchronous standby), removed at the end whatever happened. Each stays under 60 s.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import psycopg
import pytest

from storage import StoreNotReplicated, open_event_store
from tests.store_engines import ensure_postgres
from tests.test_store import batch

pytestmark = pytest.mark.slow


@pytest.fixture
def mirror() -> Iterator[object]:
    missing = ensure_postgres()
    if missing is not None:
        pytest.skip(missing)
    from storage.postgres import running_mirror

    started = time.monotonic()
    with running_mirror() as pair:
        yield pair
    assert time.monotonic() - started < 60


def _count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def _ingest(url: str, panel: int, first: int, last: int, *, new_epoch: bool = False) -> int:
    store = open_event_store(url, commit_timeout=5)
    try:
        epoch = store.advance_epoch() if new_epoch else store.epoch
        return store.ingest([batch(panel, first, last)], epoch).hwms[panel]
    finally:
        store.close()


def test_the_standby_streams_in_sync_and_holds_every_acknowledged_row(mirror) -> None:  # type: ignore[no-untyped-def]
    from storage.postgres import MirrorError

    assert mirror.role("A") == "primary" and mirror.role("B") == "standby" and mirror.primary() == "A"
    (replica,) = mirror.replication("A")
    assert replica.node == "B" and replica.in_sync
    assert _ingest(mirror.servers["A"].url(), 1, 1, 500, new_epoch=True) == 500
    mirror.wait_replayed("A", "B")  # acked means flushed on both; a read on the replica needs its replay too
    assert _count(mirror.servers["B"].url()) == 500
    with pytest.raises(MirrorError, match=r"node A's database is not a standby \(primary\): nothing to promote"):
        mirror.promote("A")


def test_a_crashed_primary_rejoins_by_rewind_and_is_in_sync_again(mirror) -> None:  # type: ignore[no-untyped-def]
    a, b = mirror.servers["A"], mirror.servers["B"]
    _ingest(a.url(), 1, 1, 1000, new_epoch=True)
    a.stop(mode="immediate")  # kill -9 of the active's host: whatever was only in memory is gone
    promoted_at = time.monotonic()
    mirror.promote("B")
    assert mirror.role("B") == "primary"
    assert _ingest(b.url(), 1, 1001, 2000, new_epoch=True) == 2000  # no sync standby: not blocked
    promote_took = time.monotonic() - promoted_at

    report = mirror.rejoin("A")
    assert report.how == "rewind" and report.fallback_reason is None, report
    assert mirror.role("A") == "standby"
    (replica,) = mirror.replication("B")
    assert replica.node == "A" and replica.in_sync
    mirror.wait_replayed("B", "A")
    assert _count(a.url()) == 2000  # what B stored while A was away is on A now
    # In sync again: B's commits wait for A, and with A gone they are refused, never acked.
    a.stop(mode="immediate")
    store = open_event_store(b.url(), commit_timeout=1.0)
    with pytest.raises(StoreNotReplicated):
        store.ingest([batch(1, 2001, 2010)], store.epoch)
    store.close()
    assert promote_took < 10 and report.in_sync_after < 20


def test_rewind_discards_what_the_old_primary_wrote_after_the_promotion(mirror) -> None:  # type: ignore[no-untyped-def]
    """The old primary, still running after the promotion, commits a row that blocks (its sync
    standby no longer streams from it) and is cancelled: a WARNING, a commit on its disk alone,
    never acknowledged. The rejoin rewinds it away; every acknowledged row is on both."""
    a, b = mirror.servers["A"], mirror.servers["B"]
    _ingest(a.url(), 1, 1, 300, new_epoch=True)
    mirror.promote("B")
    old = open_event_store(a.url(), commit_timeout=0.5)
    with pytest.raises(StoreNotReplicated):
        old.ingest([batch(2, 1, 50)], old.epoch)  # committed on A's disk, never acked
    old.close()
    with psycopg.connect(a.url(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE panel_id = 2").fetchone()
    assert row is not None and row[0] == 50  # diverged: A holds rows B never had
    _ingest(b.url(), 1, 301, 400, new_epoch=True)

    report = mirror.rejoin("A")
    assert report.how == "rewind", report
    mirror.wait_replayed("B", "A")
    with psycopg.connect(a.url(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE panel_id = 2").fetchone()
    assert row is not None and row[0] == 0
    assert _count(a.url()) == _count(b.url()) == 400


def test_a_node_that_cannot_be_rewound_rejoins_by_a_base_backup(mirror) -> None:  # type: ignore[no-untyped-def]
    a, b = mirror.servers["A"], mirror.servers["B"]
    _ingest(a.url(), 1, 1, 200, new_epoch=True)
    a.stop(mode="immediate")
    mirror.promote("B")
    _ingest(b.url(), 1, 201, 300, new_epoch=True)
    (a.datadir / "global" / "pg_control").unlink()  # a data directory pg_rewind cannot read

    report = mirror.rejoin("A")
    assert report.how == "basebackup" and "pg_rewind" in (report.fallback_reason or ""), report
    assert mirror.role("A") == "standby" and mirror.replication("B")[0].in_sync
    mirror.wait_replayed("B", "A")
    assert _count(a.url()) == 300
    assert (a.datadir.parent / "pg-A.diverged").is_dir()  # the old directory, kept for a post-mortem


def test_a_rejoin_without_a_primary_names_the_cause(mirror) -> None:  # type: ignore[no-untyped-def]
    from storage.postgres import MirrorError

    mirror.servers["A"].stop(mode="immediate")
    with pytest.raises(MirrorError, match="node B cannot rejoin: node A's database is not a primary"):
        mirror.rejoin("B")
    assert mirror.role("A") == "down"
    with pytest.raises(MirrorError, match=r"node A's database at 127\.0\.0\.1:\d+: "):
        mirror.replication("A")


def test_waiting_for_a_standby_that_is_gone_ends_with_a_clear_error(mirror) -> None:  # type: ignore[no-untyped-def]
    from storage.postgres import MirrorError

    mirror.servers["B"].stop(mode="immediate")
    assert mirror.replication("A") == []
    with pytest.raises(MirrorError, match=r"node B's database is not streaming in sync from node A's after 0\.5 s"):
        mirror.wait_replicating("A", "B", timeout=0.5)


def test_a_mirrored_pair_fails_over_and_the_stale_primary_rejoins_by_itself(mirror, site_pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two `fieldsync node` processes, each on its own database ([site] mirror = "sync"): a
    kill -9 of the active mid-traffic; the standby promotes its replica and serves under a new
    epoch; the killed node, started again, finds its database the stale primary and rejoins
    by pg_rewind; then the other way round. The checker, on the final primary, finds every
    promise held."""
    import signal
    import subprocess
    import sys

    import trio

    from emulator import Fleet
    from fieldsync.harness import check
    from fieldsync.site import load_site
    from storage import open_cluster_store

    port = 32410
    site_path = tmp_path / "site.toml"
    _mirrored_site(mirror, site_path, site_pki, port=port)
    site = load_site(site_path)
    logs = {n: (tmp_path / f"node-{n}.log").open("w") for n in ("A", "B")}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    from storage.postgres import free_port

    metrics = {"A": free_port(), "B": free_port()}

    def start(name: str) -> None:
        command = [sys.executable, "-m", "fieldsync.cli", "node", "--id", name, "--site", str(site_path)]
        command += ["--metrics", f"127.0.0.1:{metrics[name]}"]  # with its database's replication
        procs[name] = subprocess.Popen(command, stdout=logs[name], stderr=subprocess.STDOUT)

    def lease(name: str):  # type: ignore[no-untyped-def]
        store = open_cluster_store(mirror.servers[name].url())
        try:
            return store.lease()
        finally:
            store.close()

    def until(predicate, what: str, bound: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + bound
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: " + "".join(
                (tmp_path / f"node-{n}.log").read_text()[-1500:] for n in ("A", "B")
            )
            time.sleep(0.05)

    fleet = Fleet([site.panel_settings(p) for p in site.panel_ids()], seed=5, journal=True)
    try:
        start("A")
        until(lambda: lease("A").holder == "A", "A never took the lease")
        mirror.wait_replayed("A", "B")
        start("B")

        async def traffic(round_: int) -> None:
            for panel in fleet.panels.values():
                for i in range(200):
                    panel.swipe(1000 + i, i % 4)
            with trio.fail_after(60):
                await fleet.wait_drained()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(fleet.run)
                await traffic(0)
                for victim, heir in (("A", "B"), ("B", "A")):
                    procs[victim].send_signal(signal.SIGKILL)
                    procs[victim].wait()
                    await trio.to_thread.run_sync(until, lambda h=heir: lease(h).holder == h, f"{heir} never took over")
                    await traffic(1)
                    start(victim)  # its database is the stale primary now: it rejoins by itself
                    await trio.to_thread.run_sync(
                        until,
                        lambda v=victim, h=heir: (
                            mirror.role(v) == "standby"
                            and any(r.node == v and r.in_sync for r in mirror.replication(h))
                        ),
                        f"{victim} never rejoined {heir}",
                    )
                    await traffic(2)
                nursery.cancel_scope.cancel()

        trio.run(main)
        status = subprocess.run(
            [sys.executable, "-m", "fieldsync.cli", "cluster", "status", "--site", str(site_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "held by A; epoch 3" in status.stdout, status.stdout
        assert "database A: primary" in status.stdout and "replicas: B streaming sync" in status.stdout, status.stdout
        assert "database B: standby" in status.stdout, status.stdout
        final = mirror.primary()
        assert final == "A"
        report = check(mirror.servers[final].url(), list(fleet.panels.values()))
        assert report.ok, report.promises()
        assert report.store_epoch == 3
        assert report.totals()["stored"] >= 4 * 200 * 5  # the swipes above, and the workload's own
        for name in ("A", "B"):
            assert "rejoined by pg_rewind" in (tmp_path / f"node-{name}.log").read_text()
        # Each node's metrics say what its own database is, and the primary's its standby's lag.
        until(lambda: _scrape(metrics["B"]).get(("fieldsync_database_role", (("role", "standby"),))) == 1, "B's role")
        primary = _scrape(metrics["A"])
        assert primary[("fieldsync_database_role", (("role", "primary"),))] == 1
        assert primary[("fieldsync_replication_replicas", ())] == 1
        assert primary[("fieldsync_replication_in_sync", (("replica", "B"),))] == 1
        assert primary[("fieldsync_replication_lag_bytes", (("replica", "B"), ("stage", "flush")))] >= 0
        assert ("fieldsync_replication_lag_bytes", (("replica", "B"), ("stage", "replay"))) in primary
        assert _scrape(metrics["B"])[("fieldsync_replication_replay_behind_bytes", ())] >= 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        for out in logs.values():
            out.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a node's metrics endpoint on 127.0.0.1:``port``, by name and labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _mirrored_site(mirror, path, site_pki, *, port: int) -> None:  # type: ignore[no-untyped-def]
    """The pair's site file on these two databases: nodes A and B on loopback, 4 punch-out panels."""
    from fieldsync.site import write_pair_site

    write_pair_site(
        path,
        name="mirrored",
        pki_dir=site_pki,
        port=port,
        panels=4,
        mode="punch-out",
        mirror="sync",
        node_dbs={n: s.url() for n, s in mirror.servers.items()},
        pg_data={n: s.datadir for n, s in mirror.servers.items()},
    )


def test_cluster_rejoin_rewinds_a_stale_primary_from_the_command_line(mirror, site_pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    site_path = tmp_path / "site.toml"
    _mirrored_site(mirror, site_path, site_pki, port=32440)
    _ingest(mirror.servers["A"].url(), 1, 1, 100, new_epoch=True)
    mirror.servers["A"].stop(mode="immediate")
    mirror.promote("B")
    _ingest(mirror.servers["B"].url(), 1, 101, 200, new_epoch=True)
    cli = [sys.executable, "-m", "fieldsync.cli", "cluster"]
    done = subprocess.run([*cli, "rejoin", "A", "--site", str(site_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "node A's database rejoined node B's by pg_rewind" in done.stdout and "streaming in sync" in done.stdout
    assert mirror.role("A") == "standby"
    again = subprocess.run([*cli, "rejoin", "B", "--site", str(site_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "node B cannot rejoin: node A's database is not a primary" in again.stderr
    status = subprocess.run(
        [*cli, "status", "--site", str(site_path), "--json"], capture_output=True, text=True, timeout=60
    )
    report = json.loads(status.stdout)
    assert report["databases"]["B"]["role"] == "primary" and report["databases"]["A"]["role"] == "standby"
    assert report["databases"]["B"]["replicas"][0]["node"] == "A" and report["lease"]["epoch"] == 2


def test_a_server_whose_port_was_taken_starts_on_another_and_other_failures_name_the_cause() -> None:
    """The fresh-clone CI once lost a mirrored scenario to "pg_ctl: could not start server":
    a port handed out by free_port and taken before the server bound it. That is retried on
    another port; any other reason is raised with what the server's log says."""
    import socket

    missing = ensure_postgres()
    if missing is not None:
        pytest.skip(missing)
    from storage.postgres import LocalPostgres, free_port

    workdir = LocalPostgres.workdir("fieldsync-pg-port-")
    server: LocalPostgres | None = None
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            server = LocalPostgres.init(workdir / "data", port=taken)
            with pytest.raises(RuntimeError, match=r"could not start server; its log: .*Address already in use"):
                server.start()
            server.start_on_a_free_port({})
            assert server.port != taken and server.running()
            with psycopg.connect(server.url(), autocommit=True) as conn:
                row = conn.execute("SHOW port").fetchone()
            assert row is not None and int(row[0]) == server.port
        server.stop(mode="immediate")
        # Not a port: a setting the server refuses. No retry, the log's FATAL line in the error.
        server.configure({"shared_buffers": "nonsense"})
        with pytest.raises(RuntimeError, match=r'its log: .*invalid value for parameter "shared_buffers"'):
            server.start_on_a_free_port({"shared_buffers": "nonsense"})
        assert free_port() > 0
    finally:
        if server is not None and server.running():
            server.stop(mode="immediate")
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _lane_alarm(url: str, panel: int, seq: int, kind: int, *, new_epoch: bool = False) -> None:
    """A copy of an alarm record, as the alarm lane brings one (docs/protocol.md 7.6)."""
    import protocol
    from storage import IngestAlarm

    store = open_event_store(url, commit_timeout=5)
    try:
        epoch = store.advance_epoch() if new_epoch else store.epoch
        record = protocol.EventRecord(seq=seq, time_us=1_000 + seq, kind=protocol.EventKind(kind))
        store.ingest(
            [], epoch, [IngestAlarm(panel_id=panel, records=record.pack(), received_us=time.time_ns() // 1000)]
        )
    finally:
        store.close()


def test_the_console_lists_the_alarms_of_a_mirrored_pair_and_follows_its_failover(  # type: ignore[no-untyped-def]
    mirror, site_pki, tmp_path
) -> None:
    # The console as a user runs it, beside a mirrored pair's databases: the alarms read from
    # the primary, acknowledged there (replicated with them), read again from the new primary.
    import http.client
    import subprocess
    import sys

    from protocol import EventKind
    from storage.postgres import free_port

    port = free_port()  # the console's
    site_path = tmp_path / "site.toml"
    _mirrored_site(mirror, site_path, site_pki, port=32445)
    _lane_alarm(mirror.servers["A"].url(), 1, 7, EventKind.DOOR_FORCED, new_epoch=True)
    _lane_alarm(mirror.servers["A"].url(), 2, 3, EventKind.TAMPER)

    def call(method: str, path: str, body: object = None) -> object:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            return answer
        finally:
            conn.close()

    def alarms_until(done, limit: float = 30):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + limit
        while True:
            with contextlib.suppress(OSError):
                section = call("GET", "/api/state")["alarms"]  # type: ignore[index]
                if section.get("error") is None and done(section):
                    return section
            assert time.monotonic() < deadline, f"the console's alarms never got there: {section}"
            time.sleep(0.1)

    log = (tmp_path / "console.log").open("wb")
    console = subprocess.Popen(
        [sys.executable, "-m", "fieldsync.cli", "console", "--site", str(site_path), "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        section = alarms_until(lambda s: s["open"] == 2)
        kinds = {(a["panel_id"], a["seq"]): a for a in section["shown"]}
        assert kinds[(1, 7)]["kind"] == "DOOR_FORCED" and kinds[(2, 3)]["kind"] == "TAMPER"
        forced = kinds[(1, 7)]
        key = {k: forced[k] for k in ("id", "panel_id", "seq", "kind")}
        answer = call("POST", "/api/alarms/ack", {"alarms": [key]})
        assert answer == {"ok": True, "message": "1 alarm acknowledged"}, answer
        with psycopg.connect(mirror.servers["A"].url(), autocommit=True) as conn:
            row = conn.execute("SELECT acked_by FROM alarm_acks").fetchone()
        assert row is not None and row[0].startswith("console ")

        # A's host dies; B's database is promoted and a panel raises an alarm there.
        mirror.servers["A"].stop(mode="immediate")
        mirror.promote("B")
        _lane_alarm(mirror.servers["B"].url(), 3, 1, EventKind.DOOR_HELD, new_epoch=True)
        section = alarms_until(lambda s: any(a["panel_id"] == 3 for a in s["shown"]))
        # Read from the start on B: the tamper still open, the acknowledged door forced not.
        assert sorted((a["panel_id"], a["kind"]) for a in section["shown"]) == [(2, "TAMPER"), (3, "DOOR_HELD")]
        assert console.poll() is None
    finally:
        console.terminate()
        console.wait(15)
        log.close()
