"""A scenario run's set-up: the site file, its PKI and configuration, the store's disk, the fault proxies.

``ScenarioRun`` (``_runner``) owns one ``RunSetup`` and runs the cluster, the
fleet and the timeline on what it prepared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from emulator import PanelSettings
from storage import ConfigStoreInterface, open_config_store

from ..engine import WitnessError, witness_get
from ..site import PairHosts, Site, heartbeat_port, issue_pair_pki, pair_site_toml, parse_site, seed_config
from ._proxy import FaultHub
from ._scenario import Scenario, ScenarioError
from ._steps import NODES_GROUP, REPLICATION_GROUP

if TYPE_CHECKING:
    from protocol import ConfigOp
    from storage import ConfigState
    from storage.postgres import Mirror

    from ..lab import LabSpec

T = TypeVar("T")

#: Where the process backend's witness listens (its port is the run's).
WITNESS_HOST = "127.0.0.33"

__all__ = ["RunSetup"]


def _shadow_address(panel_id: int) -> str:
    """Where a grouped host-initiated panel really listens; its proxy takes 127.1.x.y."""
    return f"127.2.{panel_id >> 8}.{panel_id & 0xFF}"


def _group_address(index: int) -> str:
    return f"127.0.0.{150 + index}"


class PrimaryConfig:
    """The operator's configuration store on mirrored storage: always the current primary's.

    A run's configuration changes go where a site's operator's would: to the database that is
    the primary when the change is made (after a failover, the promoted one).
    """

    def __init__(self, target: Callable[[], Path | str]) -> None:
        self._target = target

    def _using(self, fn: Callable[[ConfigStoreInterface], T]) -> T:
        store = open_config_store(self._target())
        try:
            return fn(store)
        finally:
            store.close()

    def close(self) -> None:
        pass

    @property
    def version(self) -> int:
        return self._using(lambda c: c.version)

    def change(self, ops: Sequence[ConfigOp], *, at_us: int | None = None) -> int:
        return self._using(lambda c: c.change(ops, at_us=at_us))

    def snapshot(self) -> tuple[int, ConfigState]:
        return self._using(lambda c: c.snapshot())


class RunSetup:
    """What a run builds before its cluster starts, and the tmpfs it unmounts at the end.

    Args:
        scenario: the scenario being run.
        workdir: the run's directory (created if missing).
        port: the cluster's port; the heartbeat port follows from it.
        in_process: the fast tier (no heartbeat proxies: one in-process node).
        hub: the run's fault proxies.
        hosts: the netns backend's addresses (``LabSpec.pair_hosts``); None: loopback.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        workdir: Path,
        port: int,
        in_process: bool,
        hub: FaultHub,
        hosts: PairHosts | None = None,
        lab: LabSpec | None = None,
    ) -> None:
        self.scenario = scenario
        #: The netns backend's lab: on mirrored storage its hosts run the databases.
        self.lab = lab
        #: The lab's addresses (the netns backend): real links, so no heartbeat proxies.
        self.hosts = hosts
        self.workdir = workdir
        self.port = port
        self.in_process = in_process
        self.hub = hub
        #: The store's size-limited filesystem (``[site] store_size``), while it is mounted.
        self.mounted: Path | None = None
        #: Mirrored storage (``[cluster] mirror``): the nodes' databases, while they run.
        self.mirror: Mirror | None = None
        #: Nodes whose database must not be asked now: their host is frozen (powered off).
        self.frozen: set[str] = set()
        #: The witness process of the process backend (``[cluster] witness``; the lab runs its own).
        self._witness: subprocess.Popen[bytes] | None = None
        self._mirror_dir: Path | None = None

    def prepare(self) -> tuple[Path, Site, list[PanelSettings], ConfigStoreInterface | PrimaryConfig]:
        s = self.scenario.site
        c = self.scenario.cluster
        self.workdir.mkdir(parents=True, exist_ok=True)
        if s.flash:
            (self.workdir / "flash").mkdir(exist_ok=True)
        store_dir = self.mount_store(s.store_size) if s.store_size else None
        mirrored = self.start_databases() if self.scenario.cluster.mirror is not None else None
        in_lab = mirrored is not None and self.lab is not None
        witness = self.start_witness() if self.scenario.cluster.witness else None
        site_path = self.workdir / "site.toml"
        # The node processes read the site from this file; this run reads the same text.
        text = pair_site_toml(
            hosts=self.hosts,
            port=self.port,
            panels=s.panels,
            first_id=s.first_id,
            mode=s.mode,
            buffer=s.buffer,
            policy=s.policy,
            doors=s.doors,
            rate=s.rate,
            flash_dir="flash" if s.flash else None,
            insecure=not s.tls,
            db=f"{store_dir.name}/site.db" if store_dir is not None else "site.db",
            name=self.scenario.name,
            heartbeat_proxies=not self.in_process and self.hosts is None,  # the group "nodes"
            heartbeat_ms=s.heartbeat_ms if s.heartbeat_ms != 1000 else None,
            idle_ms=s.idle_ms if s.idle_ms != 10_000 else None,
            mirror=self.scenario.cluster.mirror,
            node_dbs={n: server.url() for n, server in mirrored.servers.items()} if mirrored else None,
            pg_data={n: server.datadir for n, server in mirrored.servers.items()} if mirrored else None,
            witness=witness,
            ingest=self.scenario.cluster.ingest if self.scenario.cluster.ingest != "rows" else None,
            materialize_idle=c.materialize_idle if c.materialize_idle != 0.05 else None,
            max_log_age=c.max_log_age if c.max_log_age != 2.0 else None,
            park=c.park or None,
        )
        site_path.write_text(text)
        site = parse_site(text, site_path)
        if s.tls:
            issue_pair_pki(site, self.scenario.name[:60] or "scenario")
        config: ConfigStoreInterface | PrimaryConfig
        if in_lab:  # the lab's databases start with the lab, which seeds them then (``seed``)
            config = PrimaryConfig(lambda: self.store_target(site))
        else:
            config = seed_config(self.store_target(site), doors=s.doors, cardholders=s.cardholders)
        if self.mirror is not None and not in_lab:
            config.close()
            config = PrimaryConfig(lambda: self.store_target(site))
        settings = [site.panel_settings(pid) for pid in site.panel_ids()]
        return site_path, site, settings, config

    def store_target(self, site: Site) -> Path | str:
        """Where the site's events are now: the shared store, or the current primary's database."""
        if self.mirror is None:
            return site.db_file
        return self.mirror.servers[self.primary()].admin_url()

    def primary(self) -> str:
        """The mirrored node whose database is the primary with the newest epoch (A while none answers)."""
        assert self.mirror is not None
        return self.mirror.newest_primary(besides=self.frozen) or "A"

    def seed(self) -> None:
        """The run's starting configuration in the lab's primary, once the lab's databases run."""
        assert self.mirror is not None, "only the lab's databases are seeded late"
        s = self.scenario.site
        seed_config(self.mirror.servers[self.primary()].admin_url(), doors=s.doors, cardholders=s.cardholders).close()

    def start_databases(self) -> Mirror:
        """Nodes A and B's own PostgreSQL for the run: A's the primary, B's its replica. On the
        netns backend they are the lab's hosts' (``LabSpec.databases``), started by the lab."""
        from storage.postgres import LocalPostgres, start_mirror

        mode = self.scenario.cluster.mirror
        assert mode is not None
        if self.lab is not None:
            self.mirror = self.lab.databases()
            return self.mirror
        self._mirror_dir = LocalPostgres.workdir("fieldsync-scenario-pg-")
        try:
            self.mirror = start_mirror(self._mirror_dir, mode=mode)
        except BaseException:
            self.stop_databases()
            raise
        return self.mirror

    async def make_replication_proxy(self) -> None:
        """The group "replication": node B's replica streams from node A's database through a
        TCP fault proxy on 127.0.0.31 (the first direction; after a failover the rejoined
        node streams directly)."""
        from storage.postgres import application_name, query

        assert self.mirror is not None
        primary, replica = self.mirror.servers["A"], self.mirror.servers["B"]
        name = f"{REPLICATION_GROUP}.A"
        await self.hub.create(name, ("127.0.0.31", primary.port), (primary.host, primary.port))
        self.hub.define_group(REPLICATION_GROUP, [name])
        conninfo = f"host=127.0.0.31 port={primary.port} user=postgres application_name={application_name('B')}"
        what = "node B's database"

        def through_the_proxy() -> None:
            query(replica.url(), f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'", what=what)
            query(replica.url(), "SELECT pg_reload_conf()", what=what)

        await trio.to_thread.run_sync(through_the_proxy)
        proxy = self.hub.proxy(name)
        with trio.fail_after(30):  # the replica's walreceiver reconnects within a second or so
            while proxy._connection_count() == 0:  # noqa: ASYNC110 (another process's connection)
                await trio.sleep(0.05)
        await trio.to_thread.run_sync(lambda: self.mirror.wait_replicating("A", "B") if self.mirror else None)

    def start_witness(self) -> str:
        """The witness of mirrored storage, ``HOST:PORT``: the lab's on its panel host, or on the
        process backend a ``fieldsync witness`` process of this run on 127.0.0.33 (the run's port)."""
        if self.lab is not None:
            address = self.lab.witness_address()
            assert address is not None
            return address
        address = f"{WITNESS_HOST}:{self.port}"
        state = self.workdir / "witness.json"
        command = [sys.executable, "-m", "fieldsync.cli", "witness", "--listen", address, "--state", str(state)]
        log = (self.workdir / "witness.log").open("ab")
        try:
            self._witness = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while True:  # until it answers (or says why it cannot: a port in use)
            try:
                witness_get((WITNESS_HOST, self.port))
                return address
            except WitnessError:
                if self._witness.poll() is not None or time.monotonic() > deadline:
                    why = (self.workdir / "witness.log").read_text(errors="replace").strip().splitlines()
                    raise ScenarioError(f"the witness did not start: {why[-1] if why else 'no answer'}") from None
                time.sleep(0.05)

    def stop_databases(self) -> None:
        """Stop the run's databases (their logs kept in the work directory) and remove them,
        and the run's witness process."""
        from storage.postgres import stop_mirror

        if self._witness is not None:
            self._witness.terminate()
            try:
                self._witness.wait(10)
            except subprocess.TimeoutExpired:
                self._witness.kill()
                self._witness.wait()
            self._witness = None

        if self._mirror_dir is None:
            return
        if self.mirror is not None:
            for name, server in self.mirror.servers.items():
                with contextlib.suppress(OSError):
                    shutil.copy2(server.log, self.workdir / f"postgres-{name}.log")
        stop_mirror(self.mirror, self._mirror_dir)
        self._mirror_dir = None

    def mount_store(self, size: int) -> Path:
        """A tmpfs of ``size`` bytes for the store: a disk that can really fill up."""
        store_dir = self.workdir / "store"
        store_dir.mkdir(exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "fieldsync-store", str(store_dir)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ScenarioError(
                f"[site] store_size needs a size-limited tmpfs (root and mount): {done.stderr.strip() or done.stdout}"
            )
        self.mounted = store_dir
        return store_dir

    def unmount_store(self) -> None:
        if self.mounted is None:
            return
        kept = self.workdir / "store-copy"  # a tmpfs forgets: keep the store for a post-mortem
        kept.mkdir(exist_ok=True)
        for file in self.mounted.glob("site.db*"):
            with contextlib.suppress(OSError):
                shutil.copy2(file, kept / file.name)
        subprocess.run(["umount", "-l", str(self.mounted)], capture_output=True)
        self.mounted = None

    async def make_heartbeat_proxies(self, site: Site) -> None:
        """The heartbeat link between the nodes as the group "nodes": a UDP proxy where the site
        says each node's beats arrive (``heartbeat_via``), forwarding to the node itself."""
        beat_port = heartbeat_port(self.port)
        names = []
        for node in site.nodes:
            if node.heartbeat_via is not None:
                names.append(f"nodes.{node.name}")
                await self.hub.create(
                    names[-1], (node.heartbeat_via, beat_port), (node.address, beat_port), protocol="udp"
                )
        self.hub.define_group(NODES_GROUP, names)

    async def make_proxies(self, settings: list[PanelSettings], vip: str) -> list[PanelSettings]:
        by_id = {st.panel_id: st for st in settings}
        for index, group in enumerate(self.scenario.groups):
            members: list[str] = []
            punch = [pid for pid in group.panels if by_id[pid].mode.value == "punch-out"]
            if punch:
                name = f"{group.name}.vip"
                address = (_group_address(index), self.port)
                await self.hub.create(name, address, (vip, self.port))
                members.append(name)
                for pid in punch:
                    by_id[pid] = dataclasses.replace(by_id[pid], server=address)
            # Parked sessions (docs/protocol.md 6.3) go through the group's proxies too: a
            # fault on the group cuts them as it cuts the VIP.
            parks = {node: (host, port) for pid in group.panels for node, host, port in by_id[pid].park}
            through: dict[str, tuple[str, int]] = {}
            for offset, (node, target) in enumerate(sorted(parks.items())):
                name = f"{group.name}.park-{node}"
                through[node] = (_group_address(index), target[1] + offset)
                await self.hub.create(name, through[node], target)
                members.append(name)
            for pid in group.panels:
                st = by_id[pid]
                if st.park:
                    park = tuple((node, *through[node]) for node, _, _ in st.park)
                    by_id[pid] = st = dataclasses.replace(st, park=park)
                if st.mode.value != "host-initiated" or st.listen is None:
                    continue
                name = f"{group.name}.panel-{pid}"
                shadow = (_shadow_address(pid), st.listen[1])
                await self.hub.create(name, st.listen, shadow)
                members.append(name)
                by_id[pid] = dataclasses.replace(st, listen=shadow)
            self.hub.define_group(group.name, members)
        return [by_id[st.panel_id] for st in settings]
