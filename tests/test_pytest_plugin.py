"""The pytest plugin (``fieldsync.testing``), tested as its users meet it: pytest runs a test file
of theirs in a subprocess (pytester), with real node processes, real SIGKILL and the checker.

Each run here has ports of its own (26100-26199, through the plugin's ini options), a time
bound, and leaves nothing behind: a node process still alive after it (a timed-out run) is
killed by its pid, and the run's directory is removed, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "testing.md"
#: Bounds each inner pytest run: a cluster's start, a test body, the drain and the check.
RUN_TIMEOUT = 240


def documented_example() -> str:
    """The failover example of docs/testing.md, as the page shows it."""
    text = DOC.read_text()
    found = re.search(r"<!-- example: failover[^>]*-->\n```python\n(.*?)```\n<!-- end example -->", text, re.S)
    assert found is not None, "docs/testing.md lost its failover example block"
    return found.group(1)


def _ini(base_port: int, ports: int = 10, **more: str) -> str:
    lines = [
        "[pytest]",
        "trio_mode = true",
        "filterwarnings = error",
        f"fieldsync_base_port = {base_port}",
        f"fieldsync_ports = {ports}",
        *(f"{key} = {value}" for key, value in more.items()),
    ]
    return "\n".join(lines) + "\n"


def _processes_naming(path: Path) -> list[int]:
    """Processes whose command line names ``path``: the node processes of a run in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


@pytest.fixture
def users_project(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """A user's project directory; after the test, no process of its runs and no directory left."""
    yield pytester
    left = _processes_naming(pytester.path)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for run_dir in pytester.path.glob("runpytest-*"):
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not left, f"node processes outlived their run (killed now): {left}"


def _reports(project: pytest.Pytester) -> dict[str, dict[str, object]]:
    """Each inner test's report.json (the plugin writes one per run), by test name (the run's
    scenario name). pytest's ``...current`` links to the same directories are left out."""
    reports = [
        json.loads(path.read_text())
        for path in project.path.glob("runpytest-*/*/fieldsync/report.json")
        if not path.parent.parent.is_symlink()
    ]
    return {str(report["scenario"]): report for report in reports}


@pytest.mark.slow
def test_the_documented_failover_example_is_ten_lines_and_passes_for_real(users_project: pytest.Pytester) -> None:
    example = documented_example()
    assert len(example.splitlines()) <= 10, example
    users_project.makeini(_ini(26100))
    users_project.makepyfile(test_failover=example)
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "-s", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*10 panels online, node ? holds the VIP", "*kill -9 node ?", "*drained:*"])
    (report,) = _reports(users_project).values()
    assert report["ok"] and report["drained"], report["promises"]
    assert all(p["held"] for p in report["promises"].values())  # type: ignore[attr-defined]
    assert report["store_epoch"] == 2, report["faults"]  # one takeover: the kill's
    assert sorted(report["node_starts"].values()) == [1, 2], report["node_starts"]  # type: ignore[attr-defined]
    assert report["totals"]["acked"] >= 400  # type: ignore[index]


@pytest.mark.slow
def test_the_failover_example_on_the_mirrored_fixture_promotes_the_standbys_database(
    users_project: pytest.Pytester,
) -> None:
    # The same ten lines on fieldsync_mirrored_cluster: each node on its own PostgreSQL, the
    # kill -9 of the active a promotion of the other's replica.
    from tests.store_engines import ensure_postgres

    missing = ensure_postgres()
    if missing is not None:
        pytest.skip(missing)
    # The killed node's restart waits 3 s: on mirrored storage the standby promotes its
    # replica first (a node restarted at once may take its own primary back first, under a
    # newer epoch; seen once under load: a takeover too, but not the one the example names).
    example = documented_example().replace("fieldsync_cluster", "fieldsync_mirrored_cluster")
    example = example.replace('site={"rate": 10})', 'site={"rate": 10}, cluster={"restart_delay": "3s"})')
    assert "restart_delay" in example
    users_project.makeini(_ini(26190))
    users_project.makepyfile(test_failover=example)
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-rs", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
    (report,) = _reports(users_project).values()
    assert report["ok"] and report["drained"], report["promises"]
    assert all(p["held"] for p in report["promises"].values())  # type: ignore[attr-defined]
    assert report["store_epoch"] == 2, report["faults"]
    assert report["totals"]["acked"] >= 400  # type: ignore[index]
    result.stdout.fnmatch_lines(["*promot*"])


NEGATIVE_CONTROL = """
import sqlite3


async def test_deletes_acknowledged_events(fieldsync_cluster):
    cluster = await fieldsync_cluster.start(panels=4, site={"rate": 10})
    await cluster.wait_acked(50)
    with sqlite3.connect(cluster.store_target(), timeout=10) as db:
        gone = db.execute("DELETE FROM events WHERE panel_id = 1").rowcount
    assert gone > 0
"""


@pytest.mark.slow
def test_a_test_that_deletes_acknowledged_events_fails_at_teardown_naming_p1(users_project: pytest.Pytester) -> None:
    users_project.makeini(_ini(26110))
    users_project.makepyfile(test_negative=NEGATIVE_CONTROL)
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", timeout=RUN_TIMEOUT)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*PromiseBroken: fieldsync: the promises checked at teardown",
            "*PROMISE BROKEN*",
            "*P1 nothing acknowledged is lost    BROKEN  (* acknowledged events missing;*",
        ]
    )
    report = _reports(users_project)["test_deletes_acknowledged_events"]
    assert not report["ok"] and report["drained"]
    assert report["totals"]["lost"] > 0  # type: ignore[index]
    assert not report["promises"]["P1 nothing acknowledged is lost"]["held"]  # type: ignore[index]


STEPS = """
import pytest
import trio

from fieldsync.harness import ScenarioError

pytestmark = pytest.mark.fieldsync(panels=4, site={"rate": 8}, groups={"east": "1-2"})


async def test_steps_are_checked_then_taken(fieldsync_cluster, fieldsync_fleet):
    cluster = fieldsync_cluster
    assert cluster.started and sorted(fieldsync_fleet.panels) == [1, 2, 3, 4]
    with pytest.raises(ScenarioError, match=r"^do\\('kill'\\): node: 'C' is not one of 'active', 'standby'"):
        await cluster.do("kill", node="C")
    with pytest.raises(ScenarioError, match=r"^do\\('down'\\): group: no panel group 'west'"):
        await cluster.do("down", group="west")
    with pytest.raises(ScenarioError, match=r"^do\\('power-off'\\): action 'power-off' needs hosts"):
        await cluster.do("power-off")
    with pytest.raises(RuntimeError, match="already started"):
        await cluster.start()

    await cluster.do("toxic", group="east", type="latency", attributes={"latency": 100}, for_="30s")
    assert {p.name: sorted(p.toxics) for p in cluster.proxies.group("east")} == {
        "east.vip": ["latency_downstream"],
        "east.panel-2": ["latency_downstream"],
    }
    await cluster.do("down", group="east")
    east = [fieldsync_fleet.panels[1], fieldsync_fleet.panels[2]]
    with trio.fail_after(20):
        while any(p.is_connected for p in east):
            await trio.sleep(0.05)
    assert fieldsync_fleet.panels[3].is_connected and fieldsync_fleet.panels[4].is_connected
    await cluster.do("up", group="east")
    await cluster.wait_connected()

    before = cluster.active
    assert await cluster.switchover() != before
    assert await cluster.wait_takeover() != before
    await cluster.wait_acked(40)
"""


@pytest.mark.slow
def test_the_scenario_steps_are_validated_then_taken_on_the_real_proxies_and_nodes(
    users_project: pytest.Pytester,
) -> None:
    users_project.makeini(_ini(26120))
    users_project.makepyfile(test_steps=STEPS)
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "-s", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*toxic latency_downstream: latency downstream on east*", "*switchover to ? requested"]
    )
    (report,) = _reports(users_project).values()
    assert report["ok"] and report["drained"], report["promises"]
    assert report["store_epoch"] == 2, report["faults"]  # the switchover's takeover
    assert any("group east down" in f["what"] for f in report["faults"])  # type: ignore[attr-defined,index]


MISSING = """
import pytest


async def test_mirrored(fieldsync_mirrored_cluster):
    await fieldsync_mirrored_cluster.start()


async def test_mirror_asked_of_the_shared_fixture(fieldsync_cluster):
    from fieldsync.harness import ScenarioError

    with pytest.raises(ScenarioError, match="mirrored storage is the fieldsync_mirrored_cluster fixture's"):
        await fieldsync_cluster.start(cluster={"mirror": "sync"})
    assert not fieldsync_cluster.started


def test_not_a_trio_test(fieldsync_cluster):
    pass
"""


def test_what_a_cluster_cannot_run_without_is_one_clear_line(users_project: pytest.Pytester) -> None:
    # A PostgreSQL newer than any there is: the skip is the same whether or not one is installed.
    users_project.makeini(_ini(26130, fieldsync_postgres_min="99"))
    users_project.makepyfile(test_missing=MISSING)
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=1, skipped=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_not_a_trio_test*",
            "fieldsync's cluster fixtures run in trio: make the test `async def` and mark it @pytest.mark.trio*",
            "SKIPPED [[]1[]] test_missing.py:*: mirrored storage needs PostgreSQL 99 or newer: *",
        ]
    )
    assert not _reports(users_project), "nothing was to be started"


PORTS = """
import pytest


@pytest.mark.parametrize("n", range(6))
def test_port(fieldsync_port, n, worker_id, pytestconfig):
    out = pytestconfig.rootpath / "ports"
    out.mkdir(exist_ok=True)
    (out / f"{worker_id}-{n}").write_text(str(fieldsync_port))
"""


def test_xdist_workers_take_ports_of_their_own_from_the_range(users_project: pytest.Pytester) -> None:
    users_project.makeini(_ini(26140, ports=40))  # four clusters: two per worker
    users_project.makepyfile(test_ports=PORTS)
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=6)
    ran: dict[str, list[int]] = {}
    for path in (users_project.path / "ports").iterdir():
        ran.setdefault(path.name.split("-")[0], []).append(int(path.read_text()))
    shares = {"gw0": {26140, 26150}, "gw1": {26160, 26170}}
    assert ran and ran.keys() <= shares.keys(), ran
    for worker, ports in ran.items():
        # A worker's own slots only, taken in turn (two tests in a worker: both slots).
        assert set(ports) <= shares[worker] and len(set(ports)) == min(len(ports), 2), ran


def test_the_plugin_is_loaded_here_and_cheap_to_import(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.hasplugin("fieldsync")
    probe = (
        "import sys, fieldsync.testing.plugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'emulator', 'storage', 'fieldsync')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["['fieldsync',", "'fieldsync.testing',", "'fieldsync.testing.plugin']"]
