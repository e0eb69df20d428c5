"""A pair of real hosts in network namespaces, the VIP moved by keepalived (VRRPv3).

The trade-off first: namespaces give each host its own addresses, ARP and TCP stack, so a
host that loses power is silent (no kernel answers with an RST) and the VIP moves on the
wire; but the hosts still share one kernel, one filesystem (the shared SQLite store stands
in for a shared disk) and one pid space (STONITH's SIGKILL reaches the other host's node,
the lab's stand-in for power fencing).

Topology (``docs/architecture.md`` draws it)::

    fsl-N-sw:     br0, with ports A, B, panels (veth peers); nothing in the root namespace
    fsl-N-A:      eth0 198.18.0.11/16 (+ the VIP while MASTER), keepalived, fieldsync node A
    fsl-N-B:      eth0 198.18.0.12/16 (+ the VIP while MASTER), keepalived, fieldsync node B
    fsl-N-panels: eth0 198.18.0.200/16 and one 198.18.x.y/16 per panel (host-initiated ones listen there)

Everything the lab makes is recorded in ``DIR/lab.json`` as it is made, and every namespace
carries a mark (its loopback's alias names the lab's directory), so a later ``up`` of the
same name removes what a crashed one left, and never a namespace that is not a lab's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from storage import Lease, MirrorError, open_cluster_store
from storage.postgres import Mirror, hand_over, start_mirror

from ..site import SiteError, load_site
from ._faults import _HostFaults
from ._lab_files import argv, seed_store, write_keepalived, write_site
from ._spec import (
    _MARK,
    _NODE_ADDRESS,
    _PANEL_HOST_ADDRESS,
    _PREFIX,
    HOSTS,
    NODE_HOSTS,
    VIP,
    LabSpec,
    panel_lab_address,
)
from ._system import (
    LabError,
    find_keepalived,
    missing_prerequisites,
    run,
    spawn_detached,
    stop_group,
)

__all__ = ["HostStatus", "Lab", "LabStatus", "describe"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    host: str
    namespace: str
    #: The notify script's last word: MASTER, BACKUP, FAULT, STOP; INIT before keepalived spoke.
    vrrp_state: str
    keepalived: bool
    vip: bool
    node: bool
    powered_off: bool
    #: The host's switch port is up.
    link: bool

    @property
    def master(self) -> bool:
        """MASTER means the state file says so AND keepalived runs (a killed one leaves MASTER behind).

        A powered-off host is no MASTER whatever it last wrote: it cannot advertise.
        """
        return self.vrrp_state == "MASTER" and self.keepalived and not self.powered_off


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LabStatus:
    hosts: tuple[HostStatus, ...]
    lease: Lease | None
    lease_left: float

    @property
    def holder(self) -> str | None:
        return self.lease.holder if self.lease is not None and self.lease_left > 0 else None

    @property
    def epoch(self) -> int:
        return self.lease.epoch if self.lease is not None else 0

    def masters(self) -> list[str]:
        return [h.host for h in self.hosts if h.master]

    def serving(self) -> str | None:
        """The one host that is MASTER, has the VIP and holds the lease, with its node running."""
        for h in self.hosts:
            if h.master and h.vip and h.node and self.holder == h.host and len(self.masters()) == 1:
                return h.host
        return None


class Lab(_HostFaults):
    """Build, inspect, fault and remove one lab; every step recorded in ``lab.json`` as it is taken."""

    def __init__(
        self,
        spec: LabSpec,
        *,
        keepalived: str | None = None,
        node_argv: Callable[[str], list[str]] | None = None,
        owner: int | None = None,
        console_token: str | None = None,
    ) -> None:
        """``node_argv(host)``: the node's command line instead of the lab's own (a scenario
        run's options, a deliberately broken build). ``owner``: the pid of the process the lab
        lives and dies with (a scenario run): a later lab removes it once that process is gone.
        ``console_token``: the web console's (``spec.console``), given it in its environment."""
        self.spec = spec
        self.console_token = console_token
        self.keepalived = keepalived or find_keepalived()
        self.node_argv = node_argv
        self.owner = owner
        self.namespaces: list[str] = []
        #: (host, kind, pid, pgid) of every process the lab started; kind: keepalived or node.
        self.processes: list[dict[str, Any]] = []
        self.powered_off: set[str] = set()
        self._mirror: Mirror | None = None

    def __repr__(self) -> str:
        return f"<Lab {self.spec.name} in {self.spec.directory}: {len(self.namespaces)} namespaces>"

    # -- the record ----------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> Lab:
        """The lab recorded in ``directory/lab.json``."""
        path = directory / "lab.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"{directory}: no lab here (no lab.json; `fieldsync lab up` makes one)") from None
        except ValueError as exc:
            raise LabError(f"{path}: not a lab record: {exc}") from None
        lab = cls(LabSpec.from_json(data["spec"]), owner=data.get("owner"))
        lab.namespaces = list(data.get("namespaces", []))
        lab.processes = list(data.get("processes", []))
        lab.powered_off = set(data.get("powered_off", []))
        return lab

    def _save(self) -> None:
        record = {
            "spec": self.spec.to_json(),
            "namespaces": self.namespaces,
            "processes": self.processes,
            "powered_off": sorted(self.powered_off),
            "owner": self.owner,
        }
        # A name of its own per writer: two threads saving at once must not rename each other's file.
        tmp = self.spec.record_path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(self.spec.record_path)

    # -- up ------------------------------------------------------------------------------

    def up(
        self, *, timeout: float = 30.0, write_site: bool = True, before_nodes: Callable[[], None] | None = None
    ) -> LabStatus:
        """Build the lab, start keepalived and a node on each node host, wait until one serves.

        Whatever a crashed lab of this name left is removed first, and every lab whose owner
        process is gone. On any failure (or Ctrl-C) everything made so far is removed again.
        ``write_site=False``: the site file (with ``spec.pair_hosts()``'s addresses), its PKI
        and its store are already there (a scenario run wrote them). On mirrored storage each
        node host's PostgreSQL starts first (A's the primary, B's its replica), and
        ``before_nodes`` (a scenario run's seeding of the primary) runs before any node starts.

        Raises:
            LabError: the machine cannot build it (one line naming why), or no host served in time.
        """
        spec = self.spec
        why = missing_prerequisites(self.keepalived)
        if why is not None:
            raise LabError(why)
        self._remove_leftovers()
        remove_orphans()
        self._check_addresses_free()
        spec.directory.mkdir(parents=True, exist_ok=True)
        spec.directory.chmod(0o755)  # keepalived runs only scripts no other user can change
        try:
            self._save()
            self._build_network()
            if write_site:
                self._write_site()
            if spec.mirror is not None:
                self._start_databases()
                if write_site:
                    seed_store(self.mirror().servers["A"].admin_url())
            if before_nodes is not None:
                before_nodes()
            for host in NODE_HOSTS:
                self._write_keepalived(host)
            if spec.witness:
                self.start_process("panels", "witness")
            if spec.mirror is not None:
                # Host A (its database the primary) first, until it serves: with the VIP on
                # the replica's host, that node would promote at once and the primary would
                # rewind itself (a needless failover before the lab is even up).
                self.start_process("A", "keepalived")
                self.start_process("A", "node")
                self.wait_serving(timeout=timeout)
                self.start_process("B", "keepalived")
                self.start_process("B", "node")
            else:
                for host in NODE_HOSTS:
                    self.start_process(host, "keepalived")
                for host in NODE_HOSTS:
                    self.start_process(host, "node")
            if not spec.vrrp_gate:  # the nodes ignore VRRP: the lease and the VIP may part from the start
                status = self.wait_started(timeout=timeout)
            else:
                status = self.wait_serving(timeout=timeout, nodes_must_run=True)
            if spec.console is not None:
                self.start_console(timeout=timeout)
            return status
        except BaseException:
            with contextlib.suppress(LabError):
                self.down()
            raise

    def _remove_leftovers(self) -> None:
        """Refuse names that are not a lab's; remove what earlier labs of this name left."""
        existing = _namespaces()
        dirs = {self.spec.directory.resolve()}
        recorded: set[str] = set()  # made by a lab here that died before it could mark them
        with contextlib.suppress(LabError):
            recorded = set(Lab.load(self.spec.directory).namespaces)
        for host in HOSTS:
            ns = self.spec.namespace(host)
            if ns not in existing:
                continue
            mark = _mark(ns)
            if mark is None and ns in recorded:
                continue
            if mark is None:
                raise LabError(
                    f"network namespace {ns} exists and is not a fieldsync lab's; "
                    f"remove it (ip netns del {ns}) or choose another --name"
                )
            dirs.add(Path(mark))
        for directory in sorted(dirs):
            with contextlib.suppress(LabError):
                old = Lab.load(directory)
                if old.spec.name == self.spec.name:
                    old._stop_processes()
        for host in HOSTS:
            ns = self.spec.namespace(host)
            if ns in existing:
                run(["ip", "netns", "del", ns])
        with contextlib.suppress(FileNotFoundError):
            self.spec.record_path.unlink()

    def _check_addresses_free(self) -> None:
        """The lab's addresses must not be taken in the root namespace: someone else would answer there."""
        ours = {_NODE_ADDRESS["A"], _NODE_ADDRESS["B"], VIP, _PANEL_HOST_ADDRESS}
        ours |= {panel_lab_address(p) for p in self.spec.panel_ids()}
        for link in json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
            for addr in link.get("addr_info", []):
                if addr.get("local") in ours:
                    raise LabError(
                        f"address {addr['local']} is in use on {link.get('ifname')} in the root namespace; "
                        "the lab needs 198.18.0.0/16 to itself"
                    )

    def _build_network(self) -> None:
        spec = self.spec
        sw = spec.namespace("sw")
        for host in HOSTS:
            ns = spec.namespace(host)
            self.namespaces.append(ns)  # recorded before it exists: an interrupted add is still ours
            self._save()
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "alias", _MARK + str(spec.directory.resolve())])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", sw, "link", "set", "br0", "up"])
        addresses = {**_NODE_ADDRESS, "panels": _PANEL_HOST_ADDRESS}
        for host, address in addresses.items():
            ns = spec.namespace(host)
            # Made in place: the veth's ends are born in the host's and the switch's namespaces.
            run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", host, "netns", sw])
            run(["ip", "-n", sw, "link", "set", host, "master", "br0", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{address}/{_PREFIX}", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        batch = "".join(f"addr add {panel_lab_address(p)}/{_PREFIX} dev eth0\n" for p in spec.panel_ids())
        run(["ip", "-n", spec.namespace("panels"), "-batch", "-"], stdin=batch, timeout=30)
        for host in NODE_HOSTS:
            # A node binds VIP:port while its host is not (yet) MASTER: keepalived adds the address.
            run(["ip", "netns", "exec", spec.namespace(host), "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"])

    def _write_site(self) -> None:
        write_site(self.spec)

    # -- mirrored storage: each node host's own PostgreSQL ---------------------------------

    def mirror(self) -> Mirror:
        """The node hosts' databases (mirrored storage), as this process reaches them (their sockets)."""
        assert self.spec.mirror in ("sync", "async"), "a lab on the shared store has no databases"
        if self._mirror is None:
            self._mirror = self.spec.databases()
        return self._mirror

    def _start_databases(self) -> None:
        """initdb A's in its namespace, start it, make B's its replica by ``pg_basebackup``."""
        pg_dir = self.spec.pg_dir
        self._stop_databases()
        shutil.rmtree(pg_dir, ignore_errors=True)
        pg_dir.mkdir()
        hand_over(pg_dir)  # the server user's (it refuses to run as root); the lab's own files stay root's
        mode: Literal["sync", "async"] = "sync" if self.spec.mirror == "sync" else "async"
        try:
            # The console reads the databases from the panel host (the operator's side of the switch).
            clients = [_PANEL_HOST_ADDRESS] if self.spec.console is not None else []
            start_mirror(pg_dir, mode=mode, hosts=self.spec.database_hosts(), clients=clients)
        except (RuntimeError, MirrorError, OSError) as exc:
            raise LabError(f"the node hosts' databases did not start: {str(exc).splitlines()[0]}") from None

    def database_pids(self, host: str) -> list[int]:
        """The processes of ``host``'s PostgreSQL, wherever it was started from (the lab, or its
        node's rejoin, which restarts it): found by its data directory's ``postmaster.pid``."""
        if self.spec.mirror is None:
            return []
        return self.mirror().servers[host].postmaster_pids()

    def start_database(self, host: str) -> None:
        """Start ``host``'s PostgreSQL in its namespace (after a crash: recovery, then it serves)."""
        server = self.mirror().servers[host]
        try:
            server.start()
        except RuntimeError as exc:
            raise LabError(
                f"host {host}'s PostgreSQL did not start: {str(exc).splitlines()[0]} (see {server.log})"
            ) from None

    def _stop_databases(self) -> list[int]:
        """Every node host's PostgreSQL killed at once (a frozen one is frozen no more): no
        shutdown to wait for, nothing of a lab's run is kept in them after it."""
        stopped = []
        for host in NODE_HOSTS:
            pids = self.database_pids(host)
            for sig in (signal.SIGCONT, signal.SIGKILL):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while any(_alive(pid) and not _zombie(pid) for pid in pids):
                if time.monotonic() > deadline:
                    raise LabError(f"host {host}'s PostgreSQL survived SIGKILL: pids {pids}")
                time.sleep(0.01)
            stopped += pids
        return stopped

    def _write_keepalived(self, host: str) -> None:
        write_keepalived(self.spec, host)

    def _argv(self, host: str, kind: str) -> list[str]:
        if kind == "node" and self.node_argv is not None:
            return self.node_argv(host)
        return argv(self.spec, host, kind, self.keepalived)

    def start_console(self, *, timeout: float = 30.0) -> None:
        """The web console (``spec.console``), in this namespace, reading the lab from the panel
        host's; wait until it serves.

        Raises:
            LabError: it exited (its log's last line says why) or did not serve in time.
        """
        self.start_process("panels", "console")
        log = self.spec.file("console", "panels", "log")
        pid = self.processes[-1]["pid"]
        recognised = self.spec.recognised_on("console", "panels")
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if f"console (pid {pid}) on " in text:
                return
            if not recognised.matches(pid):
                lines = text.strip().splitlines()
                why = lines[-1].removeprefix("Error: ") if lines else "it exited"
                raise LabError(f"the console did not start: {why} (see {log})")
            if time.monotonic() > deadline:
                raise LabError(f"the console did not serve within {timeout:g} s (see {log})")
            time.sleep(0.05)

    def console_url(self) -> str | None:
        """The console's address while the process the lab started for it runs."""
        if self.spec.console is None or not self.is_running("panels", "console"):
            return None
        return f"http://{self.spec.console}/"

    def start_process(self, host: str, kind: str) -> None:
        spec = self.spec
        if kind == "keepalived":
            # Stale pid files keep keepalived from starting; ours are dead by now.
            spec.file("keepalived", host, "pid").unlink(missing_ok=True)
            spec.vrrp_pid(host).unlink(missing_ok=True)
        command = self._argv(host, kind)
        if kind == "node":
            # The node runs under a shell that, when it ends, writes 1 to its host's track file
            # (keepalived watches it by inotify: FAULT at once) and appends its exit status to
            # node-HOST.exits (the node is no child of ours, and a crash must be told from a
            # kill). Both are one process group: the lab's signals reach both, but a kill of
            # the node alone (`signal_node`) leaves the shell to tell keepalived.
            # (sh -c's $0 is the track file, $1 the exits file, the rest the node's command.)
            script = 'echo 0 > "$0"; exits=$1; shift; "$@"; status=$?; echo 1 > "$0"; echo $status >> "$exits"'
            command = ["sh", "-c", script, str(spec.node_track(host)), str(spec.file("node", host, "exits")), *command]
        env = None
        if kind == "console":
            # In this namespace: it serves the page here and enters the panel host's by itself.
            env = {"FIELDSYNC_CONSOLE_TOKEN": self.console_token} if self.console_token else None
            # Its start line carries the token's link: its log is root's alone.
            log = spec.file(kind, host, "log")
            os.close(os.open(log, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
            log.chmod(0o600)
        else:
            command = ["ip", "netns", "exec", spec.namespace(host), *command]
        pid = spawn_detached(
            command, log=spec.file(kind, host, "log"), pid_file=spec.file(kind, host, "started"), env=env
        )
        self.processes = [p for p in self.processes if (p["host"], p["kind"]) != (host, kind)]
        self.processes.append({"host": host, "kind": kind, "pid": pid, "pgid": pid})
        self._save()

    def wait_serving(
        self,
        *,
        timeout: float = 30.0,
        other_than: str | None = None,
        epoch_above: int = 0,
        nodes_must_run: bool = False,
    ) -> LabStatus:
        """Wait until one host is MASTER, has the VIP and holds the lease (and its node runs).

        ``nodes_must_run``: a node that exits meanwhile is an error (``up``: it could not start).
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            host = status.serving()
            if host is not None and host != other_than and status.epoch > epoch_above:
                return status
            for h in status.hosts:
                if nodes_must_run and h.host in NODE_HOSTS and not h.node:
                    raise LabError(f"node {h.host} exited; see {self.spec.file('node', h.host, 'log')}")
            if time.monotonic() > deadline:
                raise LabError(f"no host served within {timeout:g} s: {describe(status)}")
            time.sleep(0.05)

    def wait_started(self, *, timeout: float = 30.0) -> LabStatus:
        """Wait until one host is MASTER and some node holds the lease, wherever the VIP is."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if len(status.masters()) == 1 and status.holder is not None:
                return status
            if time.monotonic() > deadline:
                raise LabError(f"the lab did not start within {timeout:g} s: {describe(status)}")
            time.sleep(0.05)

    # -- status --------------------------------------------------------------------------

    def is_running(self, host: str, kind: str) -> bool:
        recognised = self.spec.recognised_on(kind, host)
        return any(recognised.matches(p["pid"]) for p in self.processes if (p["host"], p["kind"]) == (host, kind))

    def status(self) -> LabStatus:
        spec = self.spec
        existing = _namespaces()
        hosts = []
        sw = spec.namespace("sw")
        for host in (*NODE_HOSTS, "panels"):
            ns = spec.namespace(host)
            state = "-"
            with contextlib.suppress(OSError):
                state = spec.vrrp_state(host).read_text().strip() or "-"
            vip = link = False
            if ns in existing:
                vip = any(
                    a.get("local") == VIP
                    for link_info in json.loads(run(["ip", "-j", "-n", ns, "-4", "addr", "show", "dev", "eth0"]))
                    for a in link_info.get("addr_info", [])
                )
            if sw in existing:
                port = json.loads(run(["ip", "-j", "-n", sw, "link", "show", "dev", host]))
                link = bool(port) and "UP" in port[0].get("flags", [])
            hosts.append(
                HostStatus(
                    host=host,
                    namespace=ns,
                    vrrp_state=state if host in NODE_HOSTS else "-",
                    keepalived=host in NODE_HOSTS and self.is_running(host, "keepalived"),
                    vip=vip,
                    node=host in NODE_HOSTS and self.is_running(host, "node"),
                    powered_off=host in self.powered_off,
                    link=link,
                )
            )
        lease, left = None, 0.0
        target: Path | str | None = self.store_path()
        if self.spec.mirror is not None:
            with contextlib.suppress(MirrorError):
                newest = self.mirror().newest_primary(besides=self.powered_off)  # a frozen server never answers
                target = self.mirror().servers[newest].admin_url() if newest is not None else None
        if target is not None and (self.spec.mirror is not None or Path(target).exists()):
            with contextlib.suppress(Exception):  # a database going down meanwhile: no lease to show
                store = open_cluster_store(target)
                try:
                    lease = store.lease()
                finally:
                    store.close()
        if lease is not None:
            left = max(0.0, (lease.lease_until_us - time.time_ns() // 1000) / 1e6)
        return LabStatus(hosts=tuple(hosts), lease=lease, lease_left=left)

    def node_exits(self, host: str) -> list[int]:
        """The exit status of every node that ended on ``host`` (128 + N: killed by signal N)."""
        try:
            text = self.spec.file("node", host, "exits").read_text()
        except FileNotFoundError:
            return []
        return [int(word) for word in text.split() if word.isdigit()]

    def store_path(self) -> Path | None:
        """The site's SQLite store (None before the site file is written)."""
        try:
            return load_site(self.spec.site_path).db_file
        except (SiteError, OSError):
            return None

    # -- down ----------------------------------------------------------------------------

    def _stop_processes(self) -> list[int]:
        """The nodes first: keepalived stopping under a serving node hands the VIP over, and
        the other node would take over (promote, rewind) while the lab is coming down."""
        stopped = []
        for proc in sorted(self.processes, key=lambda p: p["kind"] != "node"):
            stopped += stop_group(proc["pgid"], self.spec.recognised_on(proc["kind"], proc["host"]))
        self.processes = []
        return stopped + self._stop_databases()

    def down(self) -> tuple[list[int], list[str]]:
        """Stop every process the lab started (by recorded pid) and remove its namespaces (and
        its databases' directory, their logs kept in the lab's)."""
        stopped = self._stop_processes()
        if self.spec.mirror is not None and self.spec.pg_dir.exists():
            for log in self.spec.pg_dir.glob("pg-*.log"):
                with contextlib.suppress(OSError):
                    shutil.copy2(log, self.spec.directory / f"postgres-{log.stem[3:]}.log")
            shutil.rmtree(self.spec.pg_dir, ignore_errors=True)
        removed = []
        existing = _namespaces()
        for host in HOSTS:
            ns = self.spec.namespace(host)
            if ns in existing and (ns in self.namespaces or _mark(ns) is not None):
                run(["ip", "netns", "del", ns])
                removed.append(ns)
        self.namespaces = []
        self.powered_off = set()
        self.spec.record_path.unlink(missing_ok=True)
        return stopped, removed


def remove_orphans() -> list[str]:
    """Remove every lab whose owner process is gone (a scenario run that was killed); its names."""
    removed = []
    for ns in sorted(_namespaces()):
        mark = _mark(ns) if ns.startswith("fsl-") else None
        if mark is None:
            continue
        try:
            lab = Lab.load(Path(mark))
        except LabError:
            continue
        if lab.owner is None or _alive(lab.owner) or lab.spec.namespace("sw") != ns:
            continue
        with contextlib.suppress(LabError):
            lab.down()
            removed.append(lab.spec.name)
    return removed


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(status: LabStatus) -> str:
    """One line: each node host's VRRP state and processes, and the lease."""
    parts = []
    for h in status.hosts:
        if h.host in NODE_HOSTS:
            parts.append(
                f"{h.host} {h.vrrp_state}{'' if h.keepalived else ' (keepalived down)'}"
                f"{' +VIP' if h.vip else ''}{'' if h.node else ' (no node)'}"
            )
    lease = f"lease {status.holder or 'free'} epoch {status.epoch}"
    return "; ".join([*parts, lease])


def _namespaces() -> set[str]:
    out = run(["ip", "-j", "netns", "list"]).strip()
    return {entry["name"] for entry in json.loads(out)} if out else set()


def _mark(ns: str) -> str | None:
    """The lab directory a namespace's mark names; None if it carries none (not a lab's)."""
    try:
        links = json.loads(run(["ip", "-j", "-n", ns, "link", "show", "lo"]))
    except (LabError, ValueError):
        return None
    alias = str(links[0].get("ifalias", "")) if links else ""
    return alias[len(_MARK) :] if alias.startswith(_MARK) else None
