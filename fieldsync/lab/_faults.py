"""The faults of a lab's hosts: power lost, a NIC down, a crash, a restart (``Lab`` has them)."""

from __future__ import annotations

import signal
from typing import Any

from ._spec import NODE_HOSTS, LabSpec
from ._system import LabError, Recognised, run, signal_group

__all__: list[str] = []


class _HostFaults:
    """What happens to a host. ``Lab`` provides the record these act on."""

    spec: LabSpec
    processes: list[dict[str, Any]]
    powered_off: set[str]

    def _save(self) -> None:
        raise NotImplementedError

    def _alive(self, host: str, kind: str) -> bool:
        raise NotImplementedError

    def _start(self, host: str, kind: str) -> None:
        raise NotImplementedError

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
        self._port(host, up=False)
        self.powered_off.add(host)
        self._save()

    def power_on(self, host: str) -> None:
        """The reverse of ``power_off``: its processes carry on where they froze, then its port comes up."""
        self._node_host(host)
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
        """A crash: SIGKILL of the node's and keepalived's process groups (the VIP stays on eth0)."""
        self._node_host(host)
        killed = []
        for pgid, recognised in self._groups(host):
            killed += signal_group(pgid, recognised, signal.SIGKILL)
        return killed

    def start(self, host: str) -> list[str]:
        """Start what of ``host`` is not running (after ``kill``, or a node shot by STONITH)."""
        self._node_host(host)
        started = []
        for kind in ("keepalived", "node"):
            if not self._alive(host, kind):
                self._start(host, kind)
                started.append(kind)
        return started

    def _port(self, host: str, *, up: bool) -> None:
        run(["ip", "-n", self.spec.namespace("sw"), "link", "set", host, "up" if up else "down"])
