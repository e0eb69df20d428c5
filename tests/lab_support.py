"""What the lab's tests share: whether this machine can build a lab, and what namespaces a lab left.

keepalived is installed for these tests when it is missing and apt-get can (CI runs as root);
otherwise the tests that build labs are skipped with one line naming what is missing.
"""

from __future__ import annotations

import subprocess

import pytest

from fieldsync.lab import find_keepalived, missing_prerequisites

from .debian import install

MISSING = install("keepalived", lambda: find_keepalived() is not None) or missing_prerequisites(find_keepalived())
needs_lab = pytest.mark.skipif(MISSING is not None, reason=f"no lab on this machine: {MISSING}")


def lab_namespaces(name: str) -> list[str]:
    """The namespaces of lab ``name`` that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"fsl-{name}-")]


def needs_postgres() -> None:
    """Skip the calling test, with one line, when the PostgreSQL server binaries are missing."""
    from .store_engines import ensure_postgres

    missing = ensure_postgres()
    if missing is not None:
        pytest.skip(missing)


def postgres_of(directory: str) -> list[int]:
    """The pids of every postgres process whose command line names a path under ``directory``."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, timeout=10, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "postgres" in line and directory in line]
