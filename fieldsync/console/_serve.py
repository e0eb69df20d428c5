"""`serve_console`: the console's pollers and its HTTP server in one nursery."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence

import trio

from protocol.streams import is_loopback

from ._http import serve_connection
from ._live import Console, ConsoleError, ConsoleSettings

__all__ = ["MIN_TOKEN", "bind_console", "check_listen", "serve_console"]

#: A token shorter than this is refused: it is the only thing between the network and a switchover.
MIN_TOKEN = 16


def check_listen(host: str, token: str | None) -> None:
    """Loopback without a token; anywhere else only with one.

    Raises:
        ConsoleError: a non-loopback address without a token, or a token too short.
    """
    if token is not None and len(token) < MIN_TOKEN:
        raise ConsoleError(f"the console's token must be at least {MIN_TOKEN} characters (got {len(token)})")
    if token is None and not is_loopback(host):
        raise ConsoleError(
            f"the console would listen on {host}, which is not loopback, without authentication: give it a token "
            "(--token, FIELDSYNC_CONSOLE_TOKEN, or token in the site file's [defaults.console])"
        )


def bind_console(settings: ConsoleSettings) -> socket.socket:
    """The console's listening socket, bound now (before the process moves to another network
    namespace: the page stays on this one's address; ``serve_console(bound=)``).

    Raises:
        ConsoleError: the address is refused or cannot be bound.
    """
    check_listen(settings.host, settings.token)
    try:
        return socket.create_server((settings.host, settings.port), backlog=128)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # create_server's strerror names the address again
        raise ConsoleError(f"the console cannot listen on {settings.host}:{settings.port}: {why}") from None


async def serve_console(
    settings: ConsoleSettings,
    *,
    bound: Sequence[socket.socket] = (),
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console of ``settings.site`` until cancelled; ``started`` once it listens and
    the first reads of every source are in. ``bound``: listening sockets to serve on (from
    ``bind_console``) instead of binding ``settings``' address.

    Raises:
        ConsoleError: the address is refused or cannot be bound, the site's store is missing
            or unreadable, the token too short.
    """
    check_listen(settings.host, settings.token)
    console = Console(settings)
    await trio.to_thread.run_sync(console.open)
    try:
        try:
            if bound:
                listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in bound]
            else:
                listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        except OSError as exc:
            raise ConsoleError(
                f"the console cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        async with trio.open_nursery() as nursery:
            await nursery.start(console.run)
            task_status.started(listeners)
            await trio.serve_listeners(functools.partial(serve_connection, console), listeners)
    finally:
        console.close()
