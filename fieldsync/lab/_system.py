"""The lab's edge to the machine: bounded commands, capabilities, and processes found by pid.

Every command the lab runs goes through ``run``, which bounds it in time and turns a
failure into one ``LabError`` line naming the command. Processes are only ever touched
by a pid (or process group) the lab recorded, and only once their command line is
recognised (``Recognised``): a recycled pid belongs to someone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "LabError",
    "Recognised",
    "enter_network_namespace",
    "find_keepalived",
    "group_members",
    "missing_prerequisites",
    "run",
    "signal_group",
    "spawn_detached",
    "stop_group",
]

#: Capabilities the lab needs: namespaces (SYS_ADMIN), links and addresses (NET_ADMIN), VRRP (NET_RAW).
_CAPS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}
_COMMAND_TIMEOUT = 10.0


class LabError(Exception):
    """The lab cannot be built or used; the message is one line naming the cause."""


def run(argv: Sequence[str], *, timeout: float = _COMMAND_TIMEOUT, stdin: str | None = None) -> str:
    """Run ``argv`` to completion within ``timeout`` s; its stdout, or LabError with its stderr."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` took longer than {timeout:g} s") from None
    except FileNotFoundError:
        raise LabError(f"`{argv[0]}` is not installed") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(argv)}` failed: {why[-1] if why else f'exit {done.returncode}'}")
    return done.stdout


def find_keepalived() -> str | None:
    """keepalived on PATH, or in /usr/sbin (not on a plain user's PATH); None if neither."""
    found = shutil.which("keepalived")
    if found is None and os.access("/usr/sbin/keepalived", os.X_OK):
        found = "/usr/sbin/keepalived"
    return found


def missing_prerequisites(keepalived: str | None) -> str | None:
    """What keeps this process from building a lab, in one line; None if nothing."""
    for tool in ("ip", "setsid"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    if keepalived is None or not os.access(keepalived, os.X_OK):
        where = "" if keepalived is None else f" at {keepalived}"
        return f"keepalived is not installed{where} (apt-get install keepalived)"
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, links and VRRP need CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_NET_RAW)"
    effective = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
    lacking = [name for name, bit in _CAPS.items() if not effective >> bit & 1]
    if lacking:
        return f"this root process lacks {', '.join(lacking)} (a container without them cannot build a lab)"
    return None


_CLONE_NEWNET = 0x40000000


def enter_network_namespace(name: str) -> None:
    """Move this process into network namespace ``name`` (``ip netns``'s, root only).

    Only the network namespace, by ``setns(2)``: the filesystem stays this one's. Sockets made
    before keep theirs, so a server that bound its listener first serves in the old
    namespace and reaches the new one's addresses (the lab's console). The namespace is a
    thread's: this must be the process's only Python thread, or threads started later from
    another would reach the old addresses.

    Raises:
        LabError: no such namespace, another thread runs, or the kernel refuses (not root).
    """
    # Python's threads: one made before would keep the old namespace, and with it every
    # thread it starts. (Native ones are left out: numpy's, which sqlite-utils imports, starts
    # OpenBLAS's worker pool, and those never touch a socket.)
    if threading.active_count() != 1:
        raise LabError(f"cannot enter network namespace {name}: other threads run in this process")
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LabError(f"network namespace {name}: {exc.strerror} (ip netns list shows the ones there are)") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise LabError(f"cannot enter network namespace {name}: {os.strerror(errno)} (it needs root)")
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Recognised:
    """How the lab knows a pid is still the process it started: its program and a marker argument."""

    program: str
    marker: str

    def matches(self, pid: int) -> bool:
        """True if ``pid`` runs, is no zombie, and its command line holds the program and the marker."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        state = stat.rsplit(b")", 1)[1].split()[0] if b")" in stat else b"?"
        words = [a.decode(errors="replace") for a in argv]
        return state != b"Z" and any(self.program in w for w in words) and self.marker in words


def group_members(pgid: int, recognised: Recognised) -> list[int]:
    """The recognised processes of process group ``pgid`` (keepalived's VRRP child outlives its parent)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and recognised.matches(int(entry.name)):
            members.append(int(entry.name))
    return sorted(members)


def signal_group(pgid: int, recognised: Recognised, signum: signal.Signals) -> list[int]:
    """Send ``signum`` to process group ``pgid`` at once, if it holds a recognised process; the pids it held.

    One ``killpg``, not a kill per pid: keepalived's VRRP child gets SIGTERM when its parent
    dies (a graceful stop that removes the VIP), so a crash must hit both in the same instant.
    """
    members = group_members(pgid, recognised)
    if members:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)
    return members


def stop_group(pgid: int, recognised: Recognised, *, grace: float = 3.0) -> list[int]:
    """SIGCONT (a powered-off host is frozen) and SIGTERM, then SIGKILL what is left after ``grace``."""
    pids = signal_group(pgid, recognised, signal.SIGCONT)
    signal_group(pgid, recognised, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(pgid, recognised) and time.monotonic() < deadline:
        time.sleep(0.02)
    signal_group(pgid, recognised, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while group_members(pgid, recognised):
        if time.monotonic() > deadline:
            raise LabError(f"process group {pgid} survived SIGKILL for {grace:g} s")
        time.sleep(0.01)
    return pids


def spawn_detached(
    argv: Sequence[str], *, log: Path, pid_file: Path, timeout: float = 5.0, env: Mapping[str, str] | None = None
) -> int:
    """Start ``argv`` in a session of its own, a child of init (no zombie of ours); its pid (= its pgid).
    ``env``: variables added to this process's environment for it (a secret kept off its command line).

    ``setsid -f`` forks, the child leads a new session and ``sh`` writes its pid before it
    execs ``argv`` (``ip netns exec`` execs too), so the pid written is the program's.
    """
    pid_file.unlink(missing_ok=True)
    with log.open("ab") as out:
        launcher = [
            "setsid",
            "-f",
            "sh",
            "-c",
            'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"',
            str(pid_file),
            *argv,
        ]
        try:
            subprocess.run(
                launcher,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=timeout,
                check=True,
                env=None if env is None else {**os.environ, **env},
            )
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            raise LabError(f"could not start `{' '.join(argv)}`: {exc}") from None
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text())
        if time.monotonic() > deadline:
            raise LabError(f"`{' '.join(argv)}` did not start within {timeout:g} s (see {log})")
        time.sleep(0.005)
