"""Install a missing Debian package for the tests that need it (as root, with apt-get), once.

Two pytest-xdist workers may both find a package missing: a file lock makes the second wait
for the first's install, and dpkg's own lock is waited for rather than failed on.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

_LOCK = Path("/tmp/fieldsync-tests-apt.lock")


def install(package: str, present: Callable[[], bool]) -> str | None:
    """None once ``present()`` holds (installing ``package`` first if it can), else one line why not."""
    if present():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{package} is not installed, and apt-get cannot install it here (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if present():  # another worker installed it meanwhile
            return None
        for cmd in (
            ["apt-get", *wait, "update", "-q"],
            ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", package],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
            if done.returncode != 0:
                return f"{package} is not installed; {' '.join(cmd)} failed: {done.stderr.strip()[-200:]}"
    return None if present() else f"apt-get installed {package}, but it is still not usable here"
