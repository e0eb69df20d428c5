"""The faults of a lab's hosts: power lost, a NIC down, a crash, a restart (``Lab`` has them)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from ._spec import NODE_HOSTS, LabSpec
from ._system import LabError, Recognised, group_members, run, signal_group, stop_group

__all__: list[str] = []


class _HostFaults:
    """What happens to a host. ``Lab`` provides the record these act on."""

    spec: LabSpec
    processes: list[dict[str, Any]]
    powered_off: set[str]

    def _save(self) -> None:
        raise NotImplementedError

    def is_running(self, host: str, kind: str) -> bool:
        raise NotImplementedError

    def start_process(self, host: str, kind: str) -> None:
        raise NotImplementedError

    def database_pids(self, host: str) -> list[int]:
        raise NotImplementedError

    def start_database(self, host: str) -> None:
        raise NotImplementedError

    def _signal_database(self, host: str, signum: signal.Signals) -> list[int]:
        """``signum`` to every process of ``host``'s PostgreSQL (mirrored storage; none otherwise)."""
        pids = self.database_pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return pids

    def _groups(self, host: str) -> list[tuple[int, Recognised]]:
        return [(p["pgid"], self.spec.recognised_on(p["kind"], host)) for p in self.processes if p["host"] == host]

    def _node_host(self, host: str) -> None:
        if host not in NODE_HOSTS:
            raise LabError(f"host {host!r}: a node host is one of {', '.join(NODE_HOSTS)}")

    def power_off(self, host: str) -> None:
        """The host loses power: every process it runs freezes, then its switch port goes down.

        In that order, so keepalived cannot see its carrier go and write FAULT: a host without
        power says nothing. The panels see silence, not RSTs (the port is down).
        """
        self._node_host(host)
        for pgid, recognised in self._groups(host):
            signal_group(pgid, recognised, signal.SIGSTOP)
        self._signal_database(host, signal.SIGSTOP)
        self._port(host, up=False)
        self.powered_off.add(host)
        self._save()

    def power_on(self, host: str) -> None:
        """The reverse of ``power_off``: its processes carry on where they froze, then its port comes up."""
        self._node_host(host)
        self._signal_database(host, signal.SIGCONT)
        for pgid, recognised in self._groups(host):
            signal_group(pgid, recognised, signal.SIGCONT)
        self._port(host, up=True)
        self.powered_off.discard(host)
        self._save()

    def nic(self, host: str, *, up: bool) -> None:
        """The host's own NIC goes down or up (keepalived sees it and goes to FAULT)."""
        if host not in (*NODE_HOSTS, "panels"):
            raise LabError(f"host {host!r}: one of {', '.join((*NODE_HOSTS, 'panels'))}")
        run(["ip", "-n", self.spec.namespace(host), "link", "set", "eth0", "up" if up else "down"])

    def kill(self, host: str) -> list[int]:
        """A crash: SIGKILL of the node's and keepalived's process groups and of the host's
        PostgreSQL (mirrored storage), all at once (the VIP stays on eth0)."""
        self._node_host(host)
        killed = self._signal_database(host, signal.SIGKILL)
        for pgid, recognised in self._groups(host):
            killed += signal_group(pgid, recognised, signal.SIGKILL)
        return killed

    def start(self, host: str) -> list[str]:
        """Start what of ``host`` is not running (after ``kill``, or a node shot by STONITH):
        its PostgreSQL first (mirrored storage), then keepalived and the node."""
        self._node_host(host)
        started = []
        if self.spec.mirror is not None and not self.database_pids(host):
            self.start_database(host)
            started.append("postgres")
        for kind in ("keepalived", "node"):
            if not self.is_running(host, kind):
                self.start_process(host, kind)
                started.append(kind)
        return started

    def signal_node(self, host: str, signum: signal.Signals) -> bool:
        """``signum`` to the node on ``host`` only (its keepalived is left alone); False if none runs.

        SIGKILL goes to the node's process, not its wrapper shell (the group's leader), which
        then tells keepalived through the track file; a pause or a resume goes to both.
        """
        self._node_host(host)
        recognised = self.spec.recognised_on("node", host)
        hit = False
        for p in self.processes:
            if (p["host"], p["kind"]) != (host, "node"):
                continue
            if signum != signal.SIGKILL:
                hit = bool(signal_group(p["pgid"], recognised, signum)) or hit
                continue
            for pid in group_members(p["pgid"], recognised):
                if pid != p["pgid"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
                    hit = True
        return hit

    def kill_keepalived(self, host: str) -> list[int]:
        """SIGKILL of keepalived alone (parent and VRRP child at once): the VIP stays on eth0."""
        self._node_host(host)
        recognised = self.spec.recognised_on("keepalived", host)
        killed = []
        for p in self.processes:
            if (p["host"], p["kind"]) == (host, "keepalived"):
                killed += signal_group(p["pgid"], recognised, signal.SIGKILL)
        return killed

    def stop_keepalived(self, host: str) -> list[int]:
        """A graceful stop of keepalived (SIGTERM): it hands the VIP over at once (priority 0)."""
        self._node_host(host)
        recognised = self.spec.recognised_on("keepalived", host)
        stopped = []
        for p in self.processes:
            if (p["host"], p["kind"]) == (host, "keepalived"):
                stopped += stop_group(p["pgid"], recognised)
        return stopped

    def partition(self, a: str, b: str) -> None:
        """Cut the switch between hosts ``a`` and ``b`` only, both ways (each still reaches the third).

        The switch's ports of ``a`` and ``b`` become isolated bridge ports: isolated ports do
        not forward to each other, and do to every other port. One partition at a time.
        """
        hosts = (*NODE_HOSTS, "panels")
        if a not in hosts or b not in hosts or a == b:
            raise LabError(f"partition {a}|{b}: two different hosts of {', '.join(hosts)}")
        isolated = self.isolated()
        if isolated and isolated != {a, b}:
            raise LabError(f"hosts {' and '.join(sorted(isolated))} are already partitioned: heal first")
        for host in (a, b):
            self._isolate(host, on=True)

    def heal(self) -> list[str]:
        """Undo ``partition``: every port of the switch forwards to every other again; the hosts it joined."""
        isolated = sorted(self.isolated())
        for host in isolated:
            self._isolate(host, on=False)
        return isolated

    def isolated(self) -> set[str]:
        """The hosts whose switch ports are isolated (the two sides of a partition)."""
        out = run(["bridge", "-n", self.spec.namespace("sw"), "-d", "-j", "link", "show"])
        return {link["ifname"] for link in json.loads(out or "[]") if link.get("isolated")}

    def _isolate(self, host: str, *, on: bool) -> None:
        sw = self.spec.namespace("sw")
        run(["bridge", "-n", sw, "link", "set", "dev", host, "isolated", "on" if on else "off"])

    def _port(self, host: str, *, up: bool) -> None:
        run(["ip", "-n", self.spec.namespace("sw"), "link", "set", host, "up" if up else "down"])
