"""The web console end to end: a real pair (`fieldsync cluster up`), a real `fieldsync console`
process, and the page in Debian's headless chromium driven by Playwright.

What it proves: the page shows the pair and the fleet; a kill -9 of the active node's process
shows up in the page within a second of `cluster status` seeing the takeover; a switchover
clicked in the page happens; an alarm the panels raised is listed and acknowledged (in the
store's alarm_acks); the token is required when one is set; bad input is one line naming it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fieldsync.console import pair_view
from fieldsync.engine import process_is_fieldsync
from fieldsync.site import load_site, write_pair_site
from storage import ConfigStore, EventStore

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "a-console-token-for-tests"
T = TypeVar("T")


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; `make test` does it as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is missing (pip install -e '.[dev]')"
    return None


def wait_for(what: str, probe: Callable[[], T | None], limit: float, every: float = 0.05) -> T:
    """``probe()`` until it returns something other than None or False, for at most ``limit`` s."""
    deadline = time.monotonic() + limit
    while True:
        found = probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {limit} s")
        time.sleep(every)


class Processes:
    """The processes a test starts: each stopped by its pid at the end (SIGTERM, then SIGKILL),
    and any node process of the site still running after that."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[tuple[subprocess.Popen[bytes], Any]] = []
        self.node_pids: set[int] = set()

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.directory / f"{name}.log"
        out = log.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "fieldsync.cli", *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.directory
        )
        self.started.append((process, out))
        return process, log

    def stop(self) -> None:
        for process, out in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            out.close()
        for pid in self.node_pids:  # a node its supervisor could not stop
            if process_is_fieldsync(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    missing = _browser_missing()
    if missing is not None:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            context.set_default_timeout(15_000)
            yield context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _console_line(log: Path, process: subprocess.Popen[bytes]) -> str:
    def line() -> str | None:
        if process.poll() is not None:
            raise AssertionError(f"the console exited with {process.returncode}: {log.read_text()}")
        return next((x for x in log.read_text().splitlines() if x.startswith("console (pid")), None)

    return wait_for("console start line", line, 30)


def _pair(site_path: Path) -> Any:
    return pair_view(load_site(site_path))


def _holder(site_path: Path) -> tuple[str, int, int] | None:
    view = _pair(site_path)
    holder = view.holder_at(time.time_ns() // 1000)
    return (holder, view.lease.holder_pid, view.lease.epoch) if holder and view.lease.holder_pid else None


def test_the_page_shows_the_pair_the_fleet_a_takeover_and_does_a_switchover(
    site_pki: Path, tmp_path: Path, processes: Processes, page: Any
) -> None:
    site_path = write_pair_site(tmp_path / "site.toml", pki_dir=site_pki, port=26000, panels=4, mode="mixed", rate=5.0)
    up, _ = processes.start(
        "cluster-up", "cluster", "up", "--site", str(site_path), "--panels", "4", "--metrics-port", "26010"
    )
    holder, pid, epoch = wait_for("lease holder", lambda: _holder(site_path), 30)
    processes.node_pids.update(b.pid for b in _pair(site_path).nodes.values())
    console, log = processes.start(
        "console",
        "console",
        "--site",
        str(site_path),
        "--listen",
        "127.0.0.1:26020",
        "--metrics",
        "A=127.0.0.11:26010",
        "--metrics",
        "B=127.0.0.12:26010",
    )
    assert _console_line(log, console) == f"console (pid {console.pid}) on http://127.0.0.1:26020/"

    # The page loads and shows the pair, the fleet, the throughput.
    page.goto("http://127.0.0.1:26020/")
    page.wait_for_function(f"document.getElementById('holder').textContent === {holder!r}")
    assert page.text_content("#epoch") == str(epoch)
    assert page.eval_on_selector_all("#nodes tr", "rows => rows.map(r => r.dataset.node)") == ["A", "B"]
    page.wait_for_function("document.getElementById('fleet-online').textContent === '4'", timeout=30_000)
    assert page.text_content("#fleet-total") == "4"
    assert page.eval_on_selector_all("#panels tr", "rows => rows.map(r => r.dataset.panel)") == ["1", "2", "3", "4"]
    page.wait_for_function("parseFloat(document.getElementById('events-s').textContent) > 0")
    assert page.text_content("#live") == "live"

    # kill -9 of the active node's process: the page names the new holder and epoch, and
    # within a second of `cluster status` (the same pair_view) seeing it.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        view = _pair(site_path)
        new_holder = view.holder_at(time.time_ns() // 1000)
        if new_holder not in (None, holder) and view.lease.epoch > epoch:
            seen_by_status = time.time()
            break
        assert time.monotonic() < deadline, "no takeover within 20 s"
        time.sleep(0.01)
    new_epoch = view.lease.epoch
    shown = page.wait_for_function(
        f"window.pairChanges.find(c => c.holder === {new_holder!r} && c.epoch === {new_epoch})"
    ).json_value()
    delay = shown["at"] / 1000 - seen_by_status
    print(f"takeover: in cluster status at {seen_by_status:.3f}, in the page {delay * 1000:+.0f} ms after")
    assert delay < 1.0
    assert page.text_content("#holder") == new_holder and page.text_content("#epoch") == str(new_epoch)

    # The panels that lost their session raised HOST_OFFLINE: listed, and acknowledged from the page.
    page.wait_for_selector("#alarms tr[data-kind='HOST_OFFLINE']", timeout=30_000)
    open_before = int(page.text_content("#alarms-open").split()[0])
    key = page.get_attribute("#alarms tr[data-kind='HOST_OFFLINE']", "data-key")
    assert key is not None
    page.click(f"#alarms tr[data-key='{key}'] button.ack")
    page.wait_for_selector(f"#alarms tr[data-key='{key}']", state="detached")
    with contextlib.closing(sqlite3.connect(tmp_path / "site.db")) as db:
        acked = db.execute(
            "SELECT kind, acked_by FROM alarm_acks k JOIN alarms a ON a.id = k.alarm_id WHERE k.alarm_id = ?", (key,)
        )
        kind, by = acked.fetchone()
    assert kind == 12 and by == "console 127.0.0.1"  # EventKind.HOST_OFFLINE, from the browser's address
    assert int(page.text_content("#alarms-open").split()[0]) <= open_before - 1

    # The killed node is back (its supervisor restarted it) as standby; a switchover to it
    # clicked in the page (twice: the button asks once more) happens.
    page.wait_for_function(
        f"(() => {{ const r = document.querySelector('#nodes tr[data-node=\"{holder}\"]');"
        " return r && r.textContent.includes('standby') && r.textContent.includes('alive'); })()",
        timeout=30_000,
    )
    processes.node_pids.update(b.pid for b in _pair(site_path).nodes.values())
    button = f"#nodes button.switchover[data-to='{holder}']"
    page.click(button)
    # At an operator's pace the pair's section re-renders meanwhile (the lease left changes):
    # the question stands.
    page.evaluate("render.pair(state.pair)")
    assert (page.text_content(button) or "").startswith("Confirm: switch over to"), page.text_content(button)
    page.click(button)
    back = wait_for("switchover", lambda: (_holder(site_path) or ("",))[0] == holder or None, 20)
    assert back is True
    page.wait_for_function(f"document.getElementById('holder').textContent === {holder!r}")
    assert "switchover to " + holder + " requested" in page.text_content("#messages")

    # A configuration change from the page: a new version in the store, and the panels take it.
    version = ConfigStore(tmp_path / "site.db")
    try:
        before = version.version
    finally:
        version.close()
    page.fill("#door", "2")
    page.select_option("#mode", "locked")
    page.click("#door-form button[type=submit]")
    page.wait_for_function(f"document.getElementById('config-version').textContent === '{before + 1}'")
    assert f"door 2 set to locked: configuration version {before + 1}" in page.text_content("#messages")

    # A panel's resync from the page: its node sends it a snapshot and marks the request done.
    first = int(page.get_attribute("#panels tr", "data-panel") or 0)
    page.click(f"#panels tr[data-panel='{first}'] button.resync")

    def resynced() -> bool | None:
        with contextlib.closing(sqlite3.connect(tmp_path / "site.db")) as conn:
            row = conn.execute("SELECT done_us FROM resync_requests WHERE panel_id = ?", (first,)).fetchone()
        return True if row is not None and row[0] is not None else None

    assert wait_for("resync", resynced, 20) is True
    assert f"resync of panel {first} requested" in page.text_content("#messages")
    assert up.poll() is None and console.poll() is None


def _http(
    method: str, path: str, port: int, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _quiet_site(tmp_path: Path, port: int) -> Path:
    """A site whose store exists (made by the store itself), with no node running."""
    site_path = write_pair_site(tmp_path / "site.toml", pki_dir=tmp_path / "pki", port=port, panels=2)
    EventStore(tmp_path / "site.db").close()
    return site_path


def test_with_a_token_every_request_needs_it(tmp_path: Path, processes: Processes) -> None:
    site_path = _quiet_site(tmp_path, 26050)
    env_token = {"FIELDSYNC_CONSOLE_TOKEN": TOKEN}
    os.environ.update(env_token)  # the token from the environment, as a service manager would give it
    try:
        console, log = processes.start("console", "console", "--site", str(site_path), "--listen", "127.0.0.1:26030")
    finally:
        del os.environ["FIELDSYNC_CONSOLE_TOKEN"]
    line = _console_line(log, console)
    assert line.endswith(f"on http://127.0.0.1:26030/; open http://127.0.0.1:26030/?token={TOKEN}")

    status, headers, body = _http("GET", "/", 26030)
    assert status == 401 and b'action="/login"' in body  # the sign-in form
    status, headers, body = _http("GET", "/api/state", 26030)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert _http("GET", "/api/state", 26030, headers={"authorization": "Bearer wrong-token-0123456789"})[0] == 401
    assert _http("GET", "/api/state", 26030, headers={"cookie": "fieldsync_console=nope"})[0] == 401
    assert (
        _http("POST", "/api/switchover", 26030, body=b'{"to": "A"}', headers={"content-type": "application/json"})[0]
        == 401
    )

    status, _, body = _http("GET", "/api/state", 26030, headers={"authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["pair"]["holder"] is None  # nobody holds the VIP: no node runs

    # The printed link: a cookie and a clean address, then the page with the cookie alone.
    status, headers, _ = _http("GET", f"/?token={TOKEN}", 26030)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie == f"fieldsync_console={TOKEN}" and "HttpOnly" in headers["set-cookie"]
    status, _, body = _http("GET", "/", 26030, headers={"cookie": cookie})
    assert status == 200 and b"<title>fieldsync console</title>" in body
    # The sign-in form sets the same cookie; a wrong token is told so.
    form = {"content-type": "application/x-www-form-urlencoded"}
    status, headers, _ = _http("POST", "/login", 26030, headers=form, body=f"token={TOKEN}".encode())
    assert status == 303 and headers["set-cookie"].startswith(cookie)
    status, _, body = _http("POST", "/login", 26030, headers=form, body=b"token=guess")
    assert status == 401 and b"not the console's token" in body
    # Actions take JSON only (a form from another site cannot post one).
    status, _, body = _http("POST", "/api/switchover", 26030, headers={"cookie": cookie}, body=b"to=A")
    assert status == 415
    status, _, body = _http(
        "POST",
        "/api/switchover",
        26030,
        body=b'{"to": "C"}',
        headers={"cookie": cookie, "content-type": "application/json"},
    )
    assert status == 400 and json.loads(body)["error"] == "node 'C' is not in the site"

    # The event stream with the token: the sections, at once.
    with socket.create_connection(("127.0.0.1", 26030), timeout=10) as stream:
        stream.sendall(f"GET /api/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n".encode())
        got = b""
        while b"event: fleet" not in got:
            chunk = stream.recv(65536)
            assert chunk, got
            got += chunk
    assert got.startswith(b"HTTP/1.1 200") and b"text/event-stream" in got and b"event: meta" in got


def test_a_store_removed_while_the_console_runs_is_said_in_the_page(tmp_path: Path, processes: Processes) -> None:
    site_path = _quiet_site(tmp_path, 26055)
    console, log = processes.start("console", "console", "--site", str(site_path), "--listen", "127.0.0.1:26032")
    _console_line(log, console)
    # Without a token, only loopback host names: a page elsewhere cannot rebind a name to us.
    assert _http("GET", "/api/state", 26032, headers={"Host": "rebound.example:26032"})[0] == 421
    assert _http("GET", "/api/state", 26032, headers={"Host": "localhost:26032"})[0] == 200
    for name in ("site.db", "site.db-wal", "site.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    def pair_error() -> str | None:
        state = json.loads(_http("GET", "/api/state", 26032)[2])
        return state["pair"].get("error")

    error = wait_for("store error in the page's state", pair_error, 10)
    assert error == f"{tmp_path / 'site.db'}: the site's store is gone (the file was removed)"


def _one_line_error(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fieldsync.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def test_bad_input_is_one_line_naming_the_cause(tmp_path: Path) -> None:
    site_path = _quiet_site(tmp_path, 26060)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 26040))
        taken.listen()
        line = _one_line_error("console", "--site", str(site_path), "--listen", "127.0.0.1:26040", cwd=tmp_path)
    assert line == "Error: the console cannot listen on 127.0.0.1:26040: Address already in use"

    line = _one_line_error("console", "--site", str(tmp_path / "nowhere.toml"), cwd=tmp_path)
    assert line == f"Error: {tmp_path / 'nowhere.toml'}: no such site file"
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\nport = 'x'\n")
    line = _one_line_error("console", "--site", str(bad), cwd=tmp_path)
    assert line.startswith(f"Error: {bad}:2: site.port:")

    (tmp_path / "gone").mkdir()
    gone = write_pair_site(tmp_path / "gone" / "site.toml", pki_dir=tmp_path / "pki", port=26065, panels=2)
    line = _one_line_error("console", "--site", str(gone), "--listen", "127.0.0.1:26041", cwd=tmp_path)
    assert line.startswith(f"Error: {tmp_path / 'gone' / 'site.db'}: the site's store does not exist")
    assert not (tmp_path / "gone" / "site.db").exists()  # the console never makes one

    # Off loopback only with a token, and a token long enough (nothing is bound to check this).
    line = _one_line_error("console", "--site", str(site_path), "--listen", "0.0.0.0:26042", cwd=tmp_path)
    assert "0.0.0.0, which is not loopback, without authentication" in line
    line = _one_line_error("console", "--site", str(site_path), "--token", "short", cwd=tmp_path)
    assert line == "Error: the console's token must be at least 16 characters (got 5)"
    line = _one_line_error("console", "--site", str(site_path), "--metrics", "C=127.0.0.1:26043", cwd=tmp_path)
    assert line == "Error: --metrics 'C=127.0.0.1:26043': expected NODE=HOST:PORT with NODE one of A, B"


def test_cluster_up_serves_the_console_beside_the_nodes(site_pki: Path, tmp_path: Path, processes: Processes) -> None:
    site_path = write_pair_site(tmp_path / "site.toml", pki_dir=site_pki, port=26070, panels=2, rate=5.0)
    up, log = processes.start(
        "cluster-up",
        "cluster",
        "up",
        "--site",
        str(site_path),
        "--panels",
        "2",
        "--metrics-port",
        "26011",
        "--console",
        "127.0.0.1:26033",
    )
    assert _console_line(log, up) == f"console (pid {up.pid}) on http://127.0.0.1:26033/"
    processes.node_pids.update(b.pid for b in _pair(site_path).nodes.values())

    def serving() -> dict[str, Any] | None:
        state = json.loads(_http("GET", "/api/state", 26033)[2])
        held = state["pair"].get("holder") and state["fleet"].get("online") == 2
        return state if held and state["rates"]["events_s"] > 0 else None

    state = wait_for("a holder, two panels online and events/s", serving, 30, every=0.2)
    assert state["pair"]["holder"] == _holder(site_path)[0]  # type: ignore[index]
    assert state["rates"]["configured"] and set(state["rates"]["nodes"]) == {"A", "B"}
    # The fleet serves its own metrics beside the nodes' (127.0.0.1 at --metrics-port).
    status, _, body = _http("GET", "/metrics", 26011)
    assert status == 200 and b"fieldsync_fleet_panels 2.0" in body and b'fieldsync_panel_online{panel="2"}' in body


def test_the_alarms_are_read_again_under_a_new_epoch_and_a_stale_click_acknowledges_nothing(tmp_path: Path) -> None:
    # A book's ids mean nothing under another epoch (a rewound primary numbers other alarms
    # with them): the store is made over with the same ids for other alarms, then a takeover.
    import trio

    from fieldsync.console import Console, ConsoleSettings
    from protocol import EventKind, EventRecord
    from storage import IngestAlarm

    site_path = _quiet_site(tmp_path, 26075)
    db = tmp_path / "site.db"

    def raise_alarms(panel: int, kinds: list[EventKind]) -> None:
        store = EventStore(db)
        try:
            records = b"".join(EventRecord(seq=i + 1, time_us=1, kind=k).pack() for i, k in enumerate(kinds))
            store.ingest([], store.advance_epoch(), [IngestAlarm(panel_id=panel, records=records, received_us=5)])
        finally:
            store.close()

    raise_alarms(1, [EventKind.DOOR_FORCED, EventKind.TAMPER])
    console = Console(ConsoleSettings(site=load_site(site_path)))
    console.open()

    def shown() -> list[tuple[int, int, str]]:
        return [(a["id"], a["panel_id"], a["kind"]) for a in console.sections.all()["alarms"]["shown"]]

    async def main() -> None:
        await console._read_alarms()
        before = shown()
        assert sorted(k for _, _, k in before) == ["DOOR_FORCED", "TAMPER"]
        stale = next(a for a in console.sections.all()["alarms"]["shown"] if a["kind"] == "TAMPER")
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("DELETE FROM alarms")  # as a rewind leaves it: the rows gone, ids free again
        raise_alarms(2, [EventKind.DOOR_HELD, EventKind.POWER_FAIL])  # the same ids, other alarms, a new epoch
        # The page still shows the old listing; its click names the tamper by its id.
        assert await console.acknowledge({"alarms": [stale]}, by="test") == "0 alarms acknowledged"
        await console._read_alarms()
        after = shown()
        assert sorted(k for _, _, k in after) == ["DOOR_HELD", "POWER_FAIL"], after
        assert {i for i, _, _ in after} == {i for i, _, _ in before}  # the ids were given again
        assert {p for _, p, _ in after} == {2}

    try:
        trio.run(main)
    finally:
        console.close()
