"""The pytest plugin (entry point ``pytest11``): ini options, the ``fieldsync`` marker and the
fixtures. docs/testing.md has each fixture and a worked example.

Cheap to import (pytest loads it into every run): the fixtures import the harness, trio and the
emulator when a test asks for them. What a fixture needs of pytest (its port, directory,
options, a skip) is gathered by sync fixtures in the setup phase, where a skip keeps its
reason; the clusters themselves are trio fixtures (pytest-trio).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from emulator import Fleet

    from ._cluster import Cluster

__all__ = [
    "PORTS_PER_CLUSTER",
    "cluster_port",
    "fieldsync_cluster",
    "fieldsync_fleet",
    "fieldsync_mirrored_cluster",
    "fieldsync_port",
    "postgres_missing",
    "pytest_addoption",
    "pytest_configure",
]

#: A cluster on port P uses P (the VIP), P+1 (host-initiated panels), P+2 (parked sessions)
#: and P+5 (the nodes' heartbeat, UDP): each cluster of the plugin gets ten ports of its own.
PORTS_PER_CLUSTER = 10

_INI = {
    "fieldsync_base_port": ("the first port of the ports fieldsync's clusters may use", "30100"),
    "fieldsync_ports": ("how many ports from fieldsync_base_port they may use (10 per cluster)", "200"),
    "fieldsync_wait_timeout": ("seconds each wait_* of a fieldsync cluster waits before it fails the test", "60"),
    "fieldsync_postgres_min": ("the oldest PostgreSQL major version the mirrored cluster runs on", "15"),
}

#: Each process's clusters take the slots of its range in turn.
_next_slot = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    for name, (text, default) in _INI.items():
        parser.addini(name, text, default=default)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fieldsync(**options): default options of fieldsync_cluster.start() (panels, site, cluster, groups, "
        "seed, drain_timeout) for this test",
    )


def _ini_int(config: pytest.Config, name: str) -> int:
    value = str(config.getini(name)).strip()
    if not value.isdigit():
        raise pytest.UsageError(f"ini option {name} = {value!r}: a whole number")
    return int(value)


def cluster_port(config: pytest.Config) -> int:
    """The next cluster's port in this process's share of ``fieldsync_base_port`` ..
    ``+ fieldsync_ports`` (an xdist worker gets a share of its own)."""
    base, count = _ini_int(config, "fieldsync_base_port"), _ini_int(config, "fieldsync_ports")
    worker = getattr(config, "workerinput", None)  # set in an xdist worker only
    index, workers = (int(str(worker["workerid"]).removeprefix("gw")), int(worker["workercount"])) if worker else (0, 1)
    per_worker = count // PORTS_PER_CLUSTER // workers
    if per_worker < 1:
        raise pytest.UsageError(
            f"fieldsync_ports = {count} is not {PORTS_PER_CLUSTER} ports per cluster for each of {workers} workers"
        )
    if base + count > 65536:
        raise pytest.UsageError(f"fieldsync_base_port {base} + fieldsync_ports {count} is past port 65535")
    slot = index * per_worker + next(_next_slot) % per_worker
    return base + PORTS_PER_CLUSTER * slot


def postgres_missing(oldest: int) -> str | None:
    """None if mirrored storage can run here (PostgreSQL ``oldest`` or newer, and as root its
    ``postgres`` user and runuser), else one line saying what is missing."""
    import subprocess
    import tempfile

    from storage.postgres import LocalPostgres, PostgresMissing, find_pg_bindir

    needs = f"mirrored storage needs PostgreSQL {oldest} or newer"
    try:
        bindir = find_pg_bindir()
        # The constructor asks what the harness will run the servers as (root: the postgres user).
        LocalPostgres(Path(tempfile.gettempdir()) / "fieldsync-probe", port=5432, bindir=bindir)
    except PostgresMissing as exc:
        return f"{needs}: {exc}"
    said = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"\(PostgreSQL\) (\d+)", said.stdout)
    if found is None:
        return f"{needs}: {bindir / 'postgres'} --version said {said.stdout.strip() or said.stderr.strip()!r}"
    if int(found.group(1)) < oldest:
        return f"{needs}: {bindir} has {said.stdout.strip()} (ini option fieldsync_postgres_min = {oldest})"
    return None


class _Setup:
    """What a cluster fixture needs from pytest, gathered in the setup phase (where a skip or a
    usage error reads cleanly) before the trio fixture runs."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        if request.node.get_closest_marker("trio") is None:
            pytest.fail(
                "fieldsync's cluster fixtures run in trio: make the test `async def` and mark it "
                "@pytest.mark.trio (or set trio_mode = true, with pytest-trio installed)",
                pytrace=False,
            )
        config = request.config
        self.port = cluster_port(config)
        self.workdir = tmp_path / "fieldsync"
        self.wait_s = float(_ini_int(config, "fieldsync_wait_timeout"))
        self.postgres_min = _ini_int(config, "fieldsync_postgres_min")
        self.name = request.node.name
        marker = request.node.get_closest_marker("fieldsync")
        if marker is not None and marker.args:
            pytest.fail("@pytest.mark.fieldsync takes keyword options only, as start() does", pytrace=False)
        self.options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}


@pytest.fixture
def fieldsync_port(request: pytest.FixtureRequest) -> int:
    """A port for one cluster of your own (ten from it are yours): ini ``fieldsync_base_port`` and
    ``fieldsync_ports`` set the range, shared out between xdist workers."""
    return cluster_port(request.config)


@pytest.fixture
def _fieldsync_setup(request: pytest.FixtureRequest, tmp_path: Path) -> _Setup:
    return _Setup(request, tmp_path)


@pytest.fixture
def _fieldsync_postgres(_fieldsync_setup: _Setup) -> None:
    missing = postgres_missing(_fieldsync_setup.postgres_min)
    if missing is not None:
        pytest.skip(missing)


@pytest.fixture
async def fieldsync_cluster(_fieldsync_setup: _Setup) -> AsyncIterator[Cluster]:
    """A two-node cluster on a shared SQLite store, with its panels: ``await start(...)``, then
    faults; every promise is checked at teardown, and a broken one fails the test."""
    from ._cluster import open_cluster

    async with open_cluster(_fieldsync_setup, mirror=None) as cluster:
        yield cluster


@pytest.fixture
async def fieldsync_mirrored_cluster(_fieldsync_setup: _Setup, _fieldsync_postgres: None) -> AsyncIterator[Cluster]:
    """The same on mirrored storage: each node on its own PostgreSQL, the active's the primary
    and the other's its synchronous replica (``cluster={"mirror": "async"}`` for the WAN
    edition). Skipped, naming what is missing, where PostgreSQL cannot run."""
    from ._cluster import open_cluster

    async with open_cluster(_fieldsync_setup, mirror="sync") as cluster:
        yield cluster


@pytest.fixture
async def fieldsync_fleet(fieldsync_cluster: Cluster) -> Fleet:
    """The panels of ``fieldsync_cluster`` (an ``emulator.Fleet``), the cluster started with the
    test's ``@pytest.mark.fieldsync(...)`` options if the test has not started it."""
    if not fieldsync_cluster.started:
        await fieldsync_cluster.start()
    return fieldsync_cluster.fleet
