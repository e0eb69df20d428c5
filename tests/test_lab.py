"""The pair on real hosts: network namespaces, keepalived moving the VIP, a host's power lost.

The fast tests need nothing special (the VRRP observation over real processes, the site
keys, the lab's argument checks). The slow ones build real labs and need root with
CAP_NET_ADMIN/NET_RAW/SYS_ADMIN, ``ip`` and keepalived; without them they are skipped with
one line naming what is missing. Each lab has a unique name and is removed by its fixture
whatever the test did, and the fixture checks nothing is left: no namespace, no process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldsync.engine import vrrp_master
from fieldsync.lab import VIP, Lab, LabError, LabSpec, describe
from fieldsync.site import SiteError, load_site
from storage import open_config_store
from storage.postgres import free_port

from .lab_support import lab_namespaces, needs_lab, needs_postgres, postgres_of

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "fieldsync.cli"]


# -- fast: what the node reads of VRRP, and the site keys ----------------------------------------


@pytest.fixture
def fake_keepalived() -> Iterator[int]:
    """A real process whose command line says keepalived (argv[0]), as the pid file's process."""
    # argv[0] set by the exec itself, so the command line never shows a shell about to become
    # keepalived (accepted too early, a race seen in CI). Popen returns once the exec closed
    # its error pipe, which the kernel does before it sets up the new command line: wait for it.
    proc = subprocess.Popen(["keepalived", "60"], executable=shutil.which("sleep"))
    try:
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"keepalived\0"):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_master_is_the_state_file_and_a_live_keepalived(tmp_path: Path, fake_keepalived: int) -> None:
    state, pid = tmp_path / "vrrp.state", tmp_path / "keepalived.pid"
    pid.write_text(f"{fake_keepalived}\n")
    state.write_text("MASTER\n")
    assert vrrp_master(state, pid)
    for word in ("BACKUP", "FAULT", "STOP", "INIT", ""):
        state.write_text(word + "\n")
        assert not vrrp_master(state, pid), word
    state.write_text("MASTER\n")
    pid.write_text(f"{os.getpid()}\n")  # alive, but not keepalived: a recycled pid
    assert not vrrp_master(state, pid)
    pid.write_text("not a pid\n")
    assert not vrrp_master(state, pid)
    pid.unlink()  # keepalived stopped gracefully: its pid file is gone
    assert not vrrp_master(state, pid)
    state.unlink()
    assert not vrrp_master(state, pid)


def test_master_with_a_killed_keepalived_is_not_master(tmp_path: Path) -> None:
    proc = subprocess.Popen(["keepalived", "60"], executable=shutil.which("sleep"))
    state, pid = tmp_path / "vrrp.state", tmp_path / "keepalived.pid"
    state.write_text("MASTER\n")  # what a SIGKILLed keepalived leaves behind
    pid.write_text(f"{proc.pid}\n")
    proc.kill()
    proc.wait()
    assert not vrrp_master(state, pid)


def test_the_site_file_gives_a_node_its_vrrp_files_both_or_neither(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\ninsecure = true\n[nodes.A]\naddress = "127.0.0.11"\nvrrp_state = "a.state"\nvrrp_pid = "a.pid"\n'
        '[nodes.B]\naddress = "127.0.0.12"\n'
    )
    loaded = load_site(site)
    a, b = loaded.cluster_settings("A"), loaded.cluster_settings("B")
    assert (a.vrrp_state, a.vrrp_pid) == (tmp_path / "a.state", tmp_path / "a.pid")
    assert (b.vrrp_state, b.vrrp_pid) == (None, None)
    site.write_text('[nodes.A]\naddress = "127.0.0.11"\nvrrp_state = "a.state"\n')
    with pytest.raises(SiteError, match=r"nodes\.A\.vrrp_state: vrrp_state needs vrrp_pid too"):
        load_site(site)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "Bad_Name"}, "lower-case letters or digits"),
        ({"name": "waytoolongname"}, "1-12"),
        ({"advert_int": 0.015}, "steps of 0.01"),
        ({"advert_int": 0.0}, "0.01 .. 40.95"),
        ({"panels": 0}, "1..50000"),
        ({"virtual_router_id": 256}, "1 .. 255"),
    ],
)
def test_a_lab_spec_names_what_is_wrong(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "ok", "directory": tmp_path, **kw}
    with pytest.raises(LabError, match=message):
        LabSpec(**fields)  # type: ignore[arg-type]


# -- slow: real labs ------------------------------------------------------------------------------


def _lab(*args: str, timeout: float = 60) -> str:
    done = subprocess.run([*CLI, "lab", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"fieldsync lab {' '.join(args)}: {done.stderr or done.stdout}"
    return done.stdout


def _live_processes(directory: Path, record: dict[str, object]) -> list[int]:
    lab = Lab(LabSpec.from_json(record["spec"]))  # type: ignore[arg-type]
    procs: list[dict[str, object]] = record["processes"]  # type: ignore[assignment]
    return [
        int(p["pid"])  # type: ignore[call-overload]
        for p in procs
        if lab.spec.recognised_on(str(p["kind"]), str(p["host"])).matches(int(p["pid"]))  # type: ignore[call-overload]
    ]


class LabUnderTest:
    def __init__(self, tmp_path: Path) -> None:
        self.name = "t" + secrets.token_hex(3)
        self.dir = tmp_path / "lab"
        self.vrid = 1 + secrets.randbelow(255)
        self.records: list[dict[str, object]] = []

    def up(self, *extra: str, panels: int = 4, directory: Path | None = None) -> str:
        where = directory or self.dir
        out = _lab(
            "up", "--name", self.name, "--dir", str(where), "--panels", str(panels), "--vrid", str(self.vrid), *extra
        )
        self.records.append(json.loads((where / "lab.json").read_text()))
        return out

    def lab(self) -> Lab:
        return Lab.load(self.dir)


@pytest.fixture
def lab_under_test(tmp_path: Path) -> Iterator[LabUnderTest]:
    under_test = LabUnderTest(tmp_path)
    try:
        yield under_test
    finally:
        for record in under_test.records:
            directory = Path(str(record["spec"]["directory"]))  # type: ignore[index]
            if (directory / "lab.json").exists():
                _lab("down", "--dir", str(directory))
        left = lab_namespaces(under_test.name)
        alive = [pid for record in under_test.records for pid in _live_processes(under_test.dir, record)]
        for ns in left:  # never leave a machine worse than found, even when the assertion below fails
            subprocess.run(["ip", "netns", "del", ns], timeout=10, check=False)
        assert not left, f"lab down left namespaces {left}"
        assert not alive, f"lab down left processes {alive}"


def _probe(namespace: str, port: int) -> str:
    """A TCP connect to the VIP from inside ``namespace``: connected, refused or timeout."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1)\n"
        f"try: s.connect(('{VIP}', {port})); print('connected')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError as e: print('timeout' if 'timed out' in str(e) else e)\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", code], capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip()


@pytest.mark.slow
@needs_lab
def test_power_off_of_the_active_host_mid_replay_keeps_every_promise(lab_under_test: LabUnderTest) -> None:
    started = time.monotonic()
    lab_under_test.up(panels=6)
    lab = lab_under_test.lab()
    out = lab_under_test.dir / "panels.json"
    script = [sys.executable, str(HERE / "lab_panels.py"), "--dir", str(lab.spec.directory), "--out", str(out)]
    panels = subprocess.run(
        ["ip", "netns", "exec", lab.spec.namespace("panels"), *script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert panels.returncode == 0, panels.stderr[-3000:]
    result = json.loads(out.read_text())
    failed = {name: detail for name, (ok, detail) in result["promises"].items() if not ok}
    assert result["ok"], failed
    assert result["new_holder"] != result["old_holder"]
    assert result["new_epoch"] > result["old_epoch"] == 1
    assert set(result["max_epochs"].values()) == {result["new_epoch"]}  # P5: every panel follows the new node
    assert result["buffered_at_fault"] > 0, "the fault came after the replay: nothing was in flight"
    status = lab_under_test.lab().status()  # the power-off was recorded by the CLI the panels ran
    assert status.serving() == result["new_holder"]
    assert {h.host: h.powered_off for h in status.hosts}[result["old_holder"]]
    by_mode: dict[str, list[float]] = {}
    for pid, outage in result["outage_s"].items():
        by_mode.setdefault(result["modes"][pid], []).append(outage)
    print(
        f"\npower-off of {result['old_holder']} with {result['buffered_at_fault']} events buffered: "
        f"{result['new_holder']} turned MASTER after {result['vip_moved_s']:.3f} s; per panel, last ACK from the "
        "old node to first from the new: "
        + "; ".join(f"{mode} " + ", ".join(f"{o:.3f}" for o in sorted(v)) for mode, v in sorted(by_mode.items()))
        + f" s; power-off to first ACK: max {max(result['fault_to_first_ack_s'].values()):.3f} s "
        f"({result['totals']['stored']} events stored, {time.monotonic() - started:.1f} s in all)"
    )


def _wait(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


#: The lab console's port in this process: the kernel's choice (a fixed one in its ephemeral
#: range collided once with another test's outgoing connection).
CONSOLE_PORT = free_port()


def _console_state(port: int = CONSOLE_PORT) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5) as answer:
        state: dict[str, Any] = json.loads(answer.read())
    return state


def _console_sees(holder: str, *, metrics: tuple[str, ...] = ("A", "B")) -> bool:
    state = _console_state()
    scraped = state["rates"]["nodes"]
    return (
        state["pair"]["holder"] == holder
        and state["fleet"].get("error") is None
        and state["fleet"]["config_version"] >= 3  # the lab seeded the primary
        and state["alarms"].get("error") is None
        and all(scraped[n]["error"] is None and scraped[n]["vip_held"] is not None for n in metrics)
    )


@pytest.mark.slow
@needs_lab
def test_a_mirrored_lab_fails_over_by_promotion_and_rejoins_by_rewind(lab_under_test: LabUnderTest) -> None:
    """`lab up --mirror sync` as a user runs it: each node host's own PostgreSQL, A's the
    primary, B's its synchronous replica over the switch; the active's host loses power, the
    other promotes its replica and serves under a new epoch; power back and the node started
    again, the old primary rewinds itself and streams in sync; `lab down` leaves no server."""
    needs_postgres()
    out = lab_under_test.up("--mirror", "sync", "--console", f"127.0.0.1:{CONSOLE_PORT}", panels=2)
    assert "PostgreSQL postgresql://postgres@198.18.0.11:5441/postgres (sync mirror)" in out, out
    assert f"console http://127.0.0.1:{CONSOLE_PORT}/ (pid " in out, out
    lab = lab_under_test.lab()
    mirror = lab.mirror()
    first = lab.status()
    holder = first.serving()
    assert holder is not None and first.epoch >= 1, describe(first)
    other = "B" if holder == "A" else "A"
    # The console, on this machine's loopback, reads the lab from the panel host: the pair,
    # each database, the fleet and alarms from the primary, both nodes' metrics.
    _wait("the console shows the pair, the fleet, the alarms and both nodes' metrics", lambda: _console_sees(holder))
    state = _console_state()
    assert {d: state["pair"]["databases"][d]["role"] for d in ("A", "B")} == {holder: "primary", other: "standby"}
    assert mirror.role(holder) == "primary" and mirror.role(other) == "standby"
    assert [(r.node, r.state, r.sync_state) for r in mirror.replication(holder)] == [(other, "streaming", "sync")]
    config = open_config_store(mirror.servers[holder].admin_url())  # the lab seeded the primary
    try:
        assert config.version >= 3
    finally:
        config.close()

    _lab("power-off", holder, "--dir", str(lab_under_test.dir))
    _wait("the other host serves", lambda: lab_under_test.lab().status().serving() == other)
    assert lab_under_test.lab().status().epoch > first.epoch
    assert mirror.role(other) == "primary"
    # Its connections to the powered-off host's database end within DEAD_PEER's bound (15 s).
    try:
        _wait("the console shows the takeover", lambda: _console_sees(other, metrics=(other,)), timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {json.dumps(_console_state())[:3000]}") from None
    _lab("power-on", holder, "--dir", str(lab_under_test.dir))
    _lab("start", holder, "--dir", str(lab_under_test.dir))  # its node, if STONITH shot it while frozen
    _wait("the old primary rejoins", lambda: mirror.role(holder) == "standby", timeout=60)
    _wait(
        "it streams in sync",
        lambda: [(r.node, r.sync_state) for r in mirror.replication(other)] == [(holder, "sync")],
    )
    # The node says so once its own wait for the sync state ends, a poll after the test's.
    node_log = lab_under_test.dir / f"node-{holder}.log"
    try:
        _wait("its node reports the rejoin", lambda: "its database was the stale primary" in node_log.read_text())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node_log.read_text()[-2000:]}") from None
    pg_dir = lab.spec.pg_dir
    _lab("down", "--dir", str(lab_under_test.dir))
    assert postgres_of(str(pg_dir)) == [] and not pg_dir.exists()
    with pytest.raises(OSError):  # lab down stopped the console too
        _console_state()
    assert (lab_under_test.dir / f"postgres-{holder}.log").exists()


@pytest.mark.slow
@needs_lab
def test_a_nic_down_moves_the_vip_and_the_gate_moves_the_lease_with_it(lab_under_test: LabUnderTest) -> None:
    lab_under_test.up(panels=1)
    lab = lab_under_test.lab()
    first = lab.status()
    active = first.serving()
    assert active is not None and first.epoch == 1
    other = "B" if active == "A" else "A"
    assert _probe(lab.spec.namespace("panels"), lab.spec.port) == "connected"
    _lab("nic", active, "down", "--dir", str(lab.spec.directory))
    moved = lab.wait_serving(timeout=10, other_than=active, epoch_above=first.epoch)
    assert moved.serving() == other and moved.epoch == first.epoch + 1
    assert {h.host: h.vrrp_state for h in moved.hosts}[active] == "FAULT"
    assert _probe(lab.spec.namespace("panels"), lab.spec.port) == "connected"
    assert "released the lease" in (lab.spec.directory / f"node-{active}.log").read_text()


@pytest.mark.slow
@needs_lab
def test_without_the_gate_the_lease_and_the_vip_part(lab_under_test: LabUnderTest) -> None:
    """The negative control: nodes that ignore VRRP. Whoever starts first takes the lease wherever
    the VIP is; if they start together, a NIC down moves the VIP and leaves the lease with the old
    active (alive, renewing, unreachable). Either way the MASTER's host answers the panels with
    RSTs, and nothing moves the lease over."""
    lab_under_test.up("--no-vrrp-gate", panels=1)
    lab = lab_under_test.lab()
    first = lab.status()
    holder = first.holder
    assert holder is not None
    if first.masters() == [holder]:
        _lab("nic", holder, "down", "--dir", str(lab.spec.directory))
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        status = lab.status()
        assert (status.holder, status.epoch) == (holder, first.epoch), "the lease moved without the gate"
        time.sleep(0.1)
    assert status.masters() == ["B" if holder == "A" else "A"]
    assert status.serving() is None
    assert _probe(lab.spec.namespace("panels"), lab.spec.port) == "refused"


@pytest.mark.slow
@needs_lab
def test_up_removes_a_crashed_lab_of_the_same_name_and_down_removes_everything(
    lab_under_test: LabUnderTest, tmp_path: Path
) -> None:
    crashed_dir = tmp_path / "crashed"
    lab_under_test.up(panels=1, directory=crashed_dir)  # then "crashes": nobody runs down
    crashed = lab_under_test.records[0]
    old_pids = _live_processes(crashed_dir, crashed)
    assert len(old_pids) == 4  # keepalived and a node on each node host
    lab_under_test.up(panels=2)  # the same name, another directory: found through the namespaces' mark
    assert not _live_processes(crashed_dir, crashed), "up left the crashed lab's processes running"
    assert len(lab_namespaces(lab_under_test.name)) == 4
    lab = lab_under_test.lab()
    lab.power_off("A")  # frozen processes must go too
    record = json.loads((lab_under_test.dir / "lab.json").read_text())
    _lab("down", "--dir", str(lab_under_test.dir))
    assert lab_namespaces(lab_under_test.name) == []
    assert _live_processes(lab_under_test.dir, record) == []
    assert not (lab_under_test.dir / "lab.json").exists()
    # A lab killed between adding a namespace and marking it: the record says it is ours.
    sw = f"fsl-{lab_under_test.name}-sw"
    subprocess.run(["ip", "netns", "add", sw], timeout=10, check=True)
    (lab_under_test.dir / "lab.json").write_text(json.dumps(record | {"namespaces": [sw], "processes": []}))
    lab_under_test.up(panels=1)
    assert len(lab_namespaces(lab_under_test.name)) == 4


@pytest.mark.slow
@needs_lab
def test_a_namespace_that_is_not_a_labs_is_refused_and_left_alone(lab_under_test: LabUnderTest) -> None:
    foreign = f"fsl-{lab_under_test.name}-B"
    subprocess.run(["ip", "netns", "add", foreign], timeout=10, check=True)
    try:
        done = subprocess.run(
            [*CLI, "lab", "up", "--name", lab_under_test.name, "--dir", str(lab_under_test.dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"Error: network namespace {foreign} exists and is not a fieldsync lab's; "
            f"remove it (ip netns del {foreign}) or choose another --name"
        ]
        assert lab_namespaces(lab_under_test.name) == [foreign]
        assert not lab_under_test.dir.exists()
    finally:
        subprocess.run(["ip", "netns", "del", foreign], timeout=10, check=False)


@pytest.mark.slow
@needs_lab
def test_a_console_that_cannot_serve_is_one_line_and_the_lab_is_removed(lab_under_test: LabUnderTest) -> None:
    def up(*console: str) -> list[str]:
        where = ["--name", lab_under_test.name, "--dir", str(lab_under_test.dir), "--vrid", str(lab_under_test.vrid)]
        done = subprocess.run(
            [*CLI, "lab", "up", *where, "--panels", "1", *console],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stdout
        return done.stderr.strip().splitlines()

    # Off loopback without a token: refused before anything is built.
    (line,) = up("--console", "0.0.0.0:26094")
    assert "the console would listen on 0.0.0.0, which is not loopback, without authentication" in line
    assert not lab_under_test.dir.exists()
    # Its port in use: found before anything is built too.
    with socket.create_server(("127.0.0.1", 26095)):
        (line,) = up("--console", "127.0.0.1:26095")
        assert line == "Error: the console cannot listen on 127.0.0.1:26095: Address already in use"
        assert not lab_under_test.dir.exists()
        # Taken only once the lab is built (between the check and the console's start): the
        # console's own error, and everything the lab had made removed again.
        spec = LabSpec(
            name=lab_under_test.name,
            directory=lab_under_test.dir,
            panels=1,
            virtual_router_id=lab_under_test.vrid,
            console="127.0.0.1:26095",
        )
        with pytest.raises(LabError) as raised:
            Lab(spec).up(timeout=30)
    assert str(raised.value).startswith("the console did not start: the console cannot listen on 127.0.0.1:26095: ")
    assert lab_namespaces(lab_under_test.name) == []
    assert not (lab_under_test.dir / "lab.json").exists()
