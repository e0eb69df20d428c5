"""A PostgreSQL instance of our own: initdb in a directory, a loopback port, pg_ctl.

For the tests, the benchmarks and (later) a node's own database in the mirrored mode.
The server refuses to run as root, so when we are root every server command runs as
the ``postgres`` user (``runuser``) and the directories it writes are chowned to it.
The node's settings live in ``fieldsync.conf``, included from ``postgresql.conf`` and
rewritten by ``configure``: ``pg_basebackup`` copies the primary's configuration
files, so a standby made from it must get its own port written back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "STANDBY_NAME",
    "LocalPostgres",
    "PostgresMissing",
    "find_pg_bindir",
    "hand_over",
    "free_port",
    "running_instance",
    "running_pair",
]

_SETTINGS_FILE = "fieldsync.conf"
_RUN_AS = "postgres"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries (or the user to run them as) are not on this machine."""


def find_pg_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: ``pg_config --bindir``, else Debian's newest version.

    Raises:
        PostgresMissing: naming what was looked for.
    """
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and (bindir / "initdb").exists():
            return bindir
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0
    )
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    raise PostgresMissing(
        "no PostgreSQL server binaries: no initdb via pg_config --bindir or /usr/lib/postgresql/*/bin"
    )


#: Lines of a server's log that say why it did not start.
_LOG_CAUSE = re.compile(r"\b(FATAL|PANIC|ERROR|could not|invalid|denied)\b")
#: What a server's log says when its port was taken (errno EADDRINUSE's text).
_PORT_TAKEN = "Address already in use"
#: A log line's time and process id, before what it says.
_LOG_PREFIX = re.compile(r"^.*?\[\d+\]\s+")


class PortTaken(RuntimeError):
    """The server did not start: another socket had its port."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the caller retries if it is taken before it binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run_as_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(_RUN_AS)
    except KeyError:
        raise PostgresMissing(f"running as root and there is no {_RUN_AS!r} user to run PostgreSQL as") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresMissing("running as root and there is no runuser to run PostgreSQL as the postgres user")
    return [runuser, "-u", _RUN_AS, "--"]


def hand_over(path: Path) -> None:
    """Make ``path`` the server user's, when we are root (the server will write there)."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LocalPostgres:
    """One PostgreSQL server: a data directory, a loopback port, started and stopped by pg_ctl.

    Trust authentication on loopback only (``listen_addresses`` is the one host): it is
    for tests, benchmarks and a node's private instance, never a shared server.
    """

    def __init__(
        self,
        datadir: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        bindir: Path | None = None,
        netns: str | None = None,
    ) -> None:
        """``netns``: the network namespace the server runs in (a lab host's, where ``host`` is
        an address); its commands run there, and ``admin_url`` reaches it by its Unix socket."""
        self.datadir = datadir.resolve()  # the tools run elsewhere (``_run``'s cwd)
        self.port = port
        self.host = host
        self.bindir = bindir if bindir is not None else find_pg_bindir()
        self.netns = netns
        self._prefix = (["ip", "netns", "exec", netns] if netns else []) + _run_as_prefix()
        self.log = datadir.with_name(datadir.name + ".log")

    def __repr__(self) -> str:
        return f"<LocalPostgres {self.datadir} on {self.host}:{self.port}>"

    @staticmethod
    def workdir(prefix: str = "fieldsync-pg-") -> Path:
        """A fresh directory the server user may write (under the system temp dir)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        hand_over(path)
        return path

    def url(self, dbname: str = "postgres") -> str:
        """Its TCP address (what the nodes use)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def admin_url(self, dbname: str = "postgres") -> str:
        """A URL that reaches it from this process: its TCP address, or its Unix socket when it
        runs in a network namespace of its own (a Unix socket is a file, in every namespace)."""
        if self.netns is None:
            return self.url(dbname)
        return f"postgresql://postgres@/{dbname}?host={self.datadir.parent}&port={self.port}"

    def postmaster_pids(self) -> list[int]:
        """The running server's processes: the postmaster (its ``postmaster.pid``, whose command
        line names this data directory) and its children; empty if it does not run.

        Each child of a postmaster leads a session of its own, so a signal to the postmaster's
        process group reaches the postmaster alone: a frozen host must freeze every one."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return []
        if str(self.datadir).encode() not in argv:
            return []  # a stale pid file, its pid reused by someone else
        pids = [pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_bytes().rsplit(b")", 1)[-1].split()
                except OSError:
                    continue
                if len(fields) > 1 and int(fields[1]) == pid:
                    pids.append(int(entry.name))
        return pids

    def _run(self, tool: str, args: Sequence[str], *, timeout: float = 60.0) -> str:
        cmd = [*self._prefix, str(self.bindir / tool), *args]
        # In a directory the server user may enter (ours may be another user's: "could not
        # change directory" would be the first line of every error).
        where = self.datadir.parent if self.datadir.parent.is_dir() else Path("/")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=where)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    # -- making one ---------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        datadir: Path,
        *,
        port: int,
        settings: Mapping[str, str] = {},
        host: str = "127.0.0.1",
        bindir: Path | None = None,
        netns: str | None = None,
        trusted: Sequence[str] = (),
        clients: Sequence[str] = (),
    ) -> LocalPostgres:
        """initdb a new cluster in ``datadir`` (which must not exist yet; its parent is the server user's).

        ``trusted``: addresses (a lab's hosts) allowed in, for sessions and replication, besides
        loopback and the Unix socket (initdb's own ``trust`` lines); ``clients``: for sessions
        only, to the ``postgres`` database as the ``postgres`` user (a site's stores).
        """
        node = cls(datadir, port=port, host=host, bindir=bindir, netns=netns)
        node._run("initdb", ["-D", str(datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"])
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = {_quote(_SETTINGS_FILE)}\n")
        with (datadir / "pg_hba.conf").open("a") as hba:
            for address in trusted:
                hba.write(f"host all all {address}/32 trust\nhost replication all {address}/32 trust\n")
            for address in clients:  # the one database and user fieldsync's stores use
                hba.write(f"host postgres postgres {address}/32 trust\n")
        node.configure(settings)
        return node

    @classmethod
    def basebackup(
        cls,
        primary: LocalPostgres,
        datadir: Path,
        *,
        port: int,
        application_name: str,
        settings: Mapping[str, str] = {},
        host: str | None = None,
        netns: str | None = None,
    ) -> LocalPostgres:
        """A streaming standby of ``primary`` (running), made by ``pg_basebackup -R``.

        ``application_name`` is the name the primary's ``synchronous_standby_names`` lists.
        ``host``: the standby's own address (None: the primary's, loopback); ``netns``: its namespace.
        """
        node = cls(datadir, port=port, host=host or primary.host, bindir=primary.bindir, netns=netns)
        conninfo = f"host={primary.host} port={primary.port} user=postgres application_name={application_name}"
        node._run("pg_basebackup", ["-D", str(datadir), "-d", conninfo, "-R", "-X", "stream", "-c", "fast"])
        # The copy carries the primary's fieldsync.conf (its port); this node's own goes back.
        node.configure(settings)
        return node

    def configure(self, settings: Mapping[str, str]) -> None:
        """Write this node's settings file (read at the next start or reload)."""
        values = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.datadir.parent),
            "wal_level": "replica",
            "max_wal_senders": "8",
            "wal_keep_size": "256MB",
            "hot_standby": "on",
            **settings,
        }
        text = "".join(f"{key} = {_quote(value)}\n" for key, value in values.items())
        path = self.datadir / _SETTINGS_FILE
        if self._prefix:
            # Written by the server user so it keeps owning its data directory.
            cmd = [*self._prefix, "sh", "-c", f"cat > {_quote_sh(str(path))}"]
            subprocess.run(cmd, input=text, text=True, check=True, timeout=30)
        else:
            path.write_text(text)

    # -- running it ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> None:
        """Start it and wait until it accepts sessions; if it does not, the error carries what
        its log says (pg_ctl's own message is only "could not start server")."""
        seen = len(self.log_text())
        try:
            self._run("pg_ctl", ["-D", str(self.datadir), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start"])
        except RuntimeError as exc:
            this_start = self.log_text()[seen:]
            said = [_LOG_PREFIX.sub("", line) for line in this_start.splitlines() if _LOG_CAUSE.search(line)]
            first = str(exc).splitlines()[0]
            error = PortTaken if _PORT_TAKEN in this_start else RuntimeError
            raise error(f"{first}; its log: {' | '.join(said[-3:]) or '(nothing)'}") from exc

    def start_on_a_free_port(self, settings: Mapping[str, str], *, attempts: int = 3, timeout: float = 30.0) -> None:
        """Start a loopback server; if its port was taken between ``free_port`` and its bind
        (another process's socket, a parallel test's server), configure it on another port with
        ``settings`` and start again, up to ``attempts`` times. Any other failure is raised."""
        for attempt in range(attempts):
            try:
                self.start(timeout=timeout)
                return
            except PortTaken:
                if self.netns is not None or attempt == attempts - 1:
                    raise
            self.port = free_port(self.host)
            self.configure(settings)

    def stop(self, *, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop it (``fast``: roll back sessions; ``immediate``: like a crash, recovery at the next start)."""
        self._run("pg_ctl", ["-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"])

    def running(self) -> bool:
        cmd = [*self._prefix, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"]
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0

    def promote(self, *, timeout: float = 30.0) -> None:
        """A standby becomes a primary (``pg_ctl promote -w``: returns once it accepts writes)."""
        self._run("pg_ctl", ["-D", str(self.datadir), "-w", "-t", str(int(timeout)), "promote"])

    def wait_sync_standby(self, application_name: str, *, sync_state: str = "sync", timeout: float = 30.0) -> None:
        """Until ``pg_stat_replication`` shows that standby streaming with that ``sync_state``."""
        import psycopg

        deadline = time.monotonic() + timeout
        state: tuple[str, str] | None = None
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (application_name,),
                ).fetchone()
                state = (str(row[0]), str(row[1])) if row is not None else None
                if state == ("streaming", sync_state):
                    return
                time.sleep(0.02)
        raise RuntimeError(
            f"{self}: standby {application_name!r} not streaming {sync_state} after {timeout:g} s: {state}"
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _quote_sh(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


@contextlib.contextmanager
def running_instance(
    settings: Mapping[str, str] = {}, *, prefix: str = "fieldsync-pg-", attempts: int = 3
) -> Iterator[LocalPostgres]:
    """A fresh instance for the length of the block, stopped and its directory removed after."""
    workdir = LocalPostgres.workdir(prefix)
    node: LocalPostgres | None = None
    try:
        node = LocalPostgres.init(workdir / "data", port=free_port(), settings=settings)
        node.start_on_a_free_port(settings, attempts=attempts)
        yield node
    finally:
        if node is not None and node.running():
            node.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


#: The standby's name in the primary's ``synchronous_standby_names``.
STANDBY_NAME = "fieldsync_standby"


@contextlib.contextmanager
def running_pair(
    *, synchronous_commit: str = "on", synchronous: bool = True, prefix: str = "fieldsync-pg-pair-"
) -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    """A primary and a streaming ``pg_basebackup`` standby, for the block; both removed after.

    Synchronous (the default): the primary lists the standby in ``synchronous_standby_names``,
    so a commit waits until the standby has flushed it (``on``) or applied it (``remote_apply``).
    Otherwise the standby streams asynchronously and a commit waits for the local flush only.
    """
    workdir = LocalPostgres.workdir(prefix)
    nodes: list[LocalPostgres] = []
    settings = {
        "synchronous_standby_names": STANDBY_NAME if synchronous else "",
        "synchronous_commit": synchronous_commit,
    }
    try:
        primary = LocalPostgres.init(workdir / "primary", port=free_port(), settings=settings)
        nodes.append(primary)
        primary.start_on_a_free_port(settings)
        standby = LocalPostgres.basebackup(
            primary, workdir / "standby", port=free_port(), application_name=STANDBY_NAME, settings=settings
        )
        nodes.append(standby)
        standby.start_on_a_free_port(settings)
        primary.wait_sync_standby(STANDBY_NAME, sync_state="sync" if synchronous else "async")
        yield primary, standby
    finally:
        for node in nodes:
            if node.running():
                node.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)
