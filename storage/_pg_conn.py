"""One PostgreSQL connection of a store: errors mapped where they enter, commits that are acks.

psycopg exceptions become the storage errors (``map_pg_errors``), named by the
database (``postgresql://user@host:port/db``, never a password) and the cause.

A commit with a synchronous standby waits for it, and with the standby gone it waits
forever: ``statement_timeout`` does not end that wait. ``PgConnection.commit``
bounds it: past ``commit_timeout`` it cancels the wait, and the server then answers
COMMIT with success and only a WARNING ("canceling wait for synchronous
replication ... has already committed locally, but might not have been replicated").
That answer is a failure here (``StoreNotReplicated``), never an ack: the primary
alone holds the rows, and a failover to the standby would lose them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from ._errors import StoreCorrupt, StoreError, StoreFull, StoreLocked, StoreNotReplicated, StoreUnreachable

__all__ = ["DEAD_PEER", "PgConnection", "describe_url", "map_pg_errors"]

#: libpq's options that end a connection to a server that fell silent (its host lost power,
#: its switch port down: no RST ever comes) in seconds, not the kernel's quarter of an hour:
#: keepalives while idle, and at most 15 s for data sent and not acknowledged by its TCP
#: (a commit's wait for a standby is not that: the server's kernel acknowledges the COMMIT).
#: Ignored on Unix sockets.
DEAD_PEER: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}

#: The values of ``synchronous_commit`` that keep P1 with a synchronous standby.
SYNC_COMMIT_LEVELS = ("on", "remote_apply")


def describe_url(url: str) -> str:
    """The database a URL names, without its password: ``postgresql://user@host:port/db``."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(url.split("@")[-1], f"not a usable PostgreSQL URL: {exc}") from None
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


@contextlib.contextmanager
def map_pg_errors(where: str, doing: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise _mapped(exc, where, doing) from exc


def _mapped(exc: psycopg.Error, where: str, doing: str) -> StoreError:
    state = exc.sqlstate or ""
    text = (exc.diag.message_primary or str(exc)).strip()
    if state == "53100":
        return StoreFull(where, f"{doing}: the database's disk is full ({text})")
    if (
        state.startswith("08")
        or state in ("57P01", "57P02", "57P03", "53300")
        or (not state and isinstance(exc, psycopg.OperationalError))
    ):
        return StoreUnreachable(where, f"{doing}: cannot reach the database ({' '.join(str(exc).split())})")
    if state in ("55P03", "40P01", "40001"):
        return StoreLocked(where, f"{doing}: another writer holds the lock ({text})")
    if state in ("XX001", "XX002"):
        return StoreCorrupt(where, f"{doing}: the database reports corruption ({text})")
    return StoreError(where, f"{doing}: {state} {text}".replace("  ", " "))


class _Watchdog:
    """Cancels a connection's statement past a deadline; one thread per connection, started lazily."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._target: psycopg.Connection[Any] | None = None
        self._fired = False
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def armed(self, conn: psycopg.Connection[Any], timeout: float) -> Iterator[threading.Event]:
        """Within the block, ``conn``'s running statement is cancelled after ``timeout`` s.

        Yields an event set if it was. When the block ends no cancel is in flight:
        a late one cannot hit the next statement.
        """
        fired = threading.Event()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fieldsync-pg-commit-watch", daemon=True)
                self._thread.start()
            self._deadline, self._target, self._fired = time.monotonic() + timeout, conn, False
            self._cond.notify_all()
        try:
            yield fired
        finally:
            with self._cond:  # waits for a cancel being sent right now
                self._deadline = self._target = None
                if self._fired:
                    fired.set()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                target, self._deadline, self._fired = self._target, None, True
                if target is not None:
                    with contextlib.suppress(psycopg.Error):
                        target.cancel_safe(timeout=5.0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PgConnection:
    """A store's connection: opened (again, after a loss) on use, commits bounded and checked.

    Args:
        url: the database.
        what: what the store is, for error messages ("the event store").
        busy_timeout: seconds to wait for a row lock (``lock_timeout``) before ``StoreLocked``.
        commit_timeout: seconds a commit may wait for the synchronous standby before
            ``StoreNotReplicated``.
        synchronous_commit: ``on`` (the standby has flushed the WAL: enough for P1) or
            ``remote_apply`` (it has also applied it); set on the session, so a server
            default of ``local`` or ``off`` cannot weaken an ack.
        connect_timeout: seconds to reach the server.
    """

    def __init__(
        self,
        url: str,
        *,
        what: str,
        busy_timeout: float = 5.0,
        commit_timeout: float = 10.0,
        synchronous_commit: str = "on",
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.where = describe_url(url)
        if synchronous_commit not in SYNC_COMMIT_LEVELS:
            raise StoreError(
                self.where,
                f"synchronous_commit {synchronous_commit!r} would ack before the standby has the commit; "
                f"use one of {', '.join(SYNC_COMMIT_LEVELS)}",
            )
        self.what = what
        self.busy_timeout = busy_timeout
        self.commit_timeout = commit_timeout
        self.synchronous_commit = synchronous_commit
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._notices: list[str] = []
        self._watchdog = _Watchdog()

    def __repr__(self) -> str:
        return f"<PgConnection {self.where}>"

    def get(self) -> psycopg.Connection[Any]:
        """The open connection (opened now if it never was or was lost)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        with map_pg_errors(self.where, f"opening {self.what}"):
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(2, round(self.connect_timeout)),
                application_name="fieldsync",
                **DEAD_PEER,
            )
            conn.add_notice_handler(self._notice)
            conn.execute(
                "SELECT set_config('synchronous_commit', %s, false), set_config('lock_timeout', %s, false)",
                (self.synchronous_commit, f"{int(self.busy_timeout * 1000)}ms"),
            )
        self._conn = conn
        return conn

    def _notice(self, diag: pg_errors.Diagnostic) -> None:
        self._notices.append(" ".join(filter(None, (diag.message_primary, diag.message_detail))))

    def commit(self, doing: str) -> None:
        """COMMIT the open transaction; return only if it is durable where it must be.

        Raises:
            StoreNotReplicated: the standby did not confirm within ``commit_timeout``.
            StoreUnreachable: the connection broke; whether it committed is unknown, so
                it is not acknowledged.
        """
        conn = self.get()
        self._notices.clear()
        try:
            with map_pg_errors(self.where, doing), self._watchdog.armed(conn, self.commit_timeout) as fired:
                conn.execute("COMMIT")
        except StoreUnreachable as exc:
            raise StoreUnreachable(
                self.where, f"{exc.cause}; whether the commit happened is unknown, so it is not acknowledged"
            ) from exc.__cause__
        unreplicated = [n for n in self._notices if "synchronous replication" in n]
        if unreplicated:
            waited = f" after {self.commit_timeout:g} s" if fired.is_set() else ""
            raise StoreNotReplicated(
                self.where,
                f"{doing}: the synchronous standby did not confirm the commit{waited}; not acknowledged "
                f"(server: {unreplicated[0]})",
            )

    @contextlib.contextmanager
    def transaction(self, doing: str, *, durable: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction, committed by ``commit`` (bounded, checked) unless the block rolled it back.

        ``durable=False`` commits without waiting for any flush or standby (heartbeats).
        """
        conn = self.get()
        with map_pg_errors(self.where, doing):
            conn.execute("BEGIN")
            try:
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield conn
            except BaseException:
                self.rollback()
                raise
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.commit(doing)

    def rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")

    def close(self) -> None:
        self._watchdog.close()
        if self._conn is not None:
            self._conn.close()
