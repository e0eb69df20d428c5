"""What a cluster node looks at on its machine: processes (STONITH, the holder's pid) and keepalived's VRRP state."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ._cluster_settings import ClusterSettings

__all__ = ["process_is_fieldsync", "stonith", "vrrp_master"]


def _pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when ``pid`` exits (Linux 5.3+); None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfds here, or the process is already gone
        return None


def process_is_fieldsync(pid: int) -> bool:
    """True if ``pid`` is alive (not a zombie) and runs fieldsync."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z" and b"fieldsync" in cmdline


def vrrp_master(state_file: Path, pid_file: Path) -> bool:
    """True if keepalived's state file says MASTER and the keepalived process of its pid file runs.

    Two small reads and a /proc look, cheap enough for every beat. A keepalived killed with
    SIGKILL leaves both MASTER in the file and the VIP on the interface: it is not MASTER.
    """
    try:
        if state_file.read_text().strip() != "MASTER":
            return False
        pid = int(pid_file.read_text().split()[0])
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, ValueError, IndexError):
        return False
    return state != b"Z" and b"keepalived" in cmdline


def stonith(pid: int, *, timeout: float = 2.0) -> bool:
    """SIGKILL a fieldsync node process and wait until it is gone; False if it was not one."""
    if pid == os.getpid() or not process_is_fieldsync(pid):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while process_is_fieldsync(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} survived SIGKILL for {timeout} s")
        time.sleep(0.005)
    return True


def _vrrp_words(s: ClusterSettings) -> str:
    """What the VRRP files say, for the log: the state file's word and whether keepalived runs."""
    assert s.vrrp_state is not None and s.vrrp_pid is not None
    try:
        state = s.vrrp_state.read_text().strip()
    except OSError as exc:
        state = f"no state file: {exc.strerror}"
    try:
        pid = int(s.vrrp_pid.read_text().split()[0])
        alive = "keepalived runs" if os.path.exists(f"/proc/{pid}") else f"keepalived pid {pid} is gone"
    except (OSError, ValueError, IndexError):
        alive = "no keepalived pid file"
    return f"state file says {state}, {alive}"
