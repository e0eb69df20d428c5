"""TCP (optionally TLS) links: dial, listen, and the loopback-only rule for plain text."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import trio

from ._errors import LinkError, TlsError, map_link_errors
from ._tls import peer_identity, wrap

__all__ = ["KEEP_OPEN", "Link", "check_plaintext_allowed", "dial", "is_loopback", "listen", "secure"]

log = logging.getLogger("fieldsync.link")

#: What a ``listen`` handler returns when it gave the connection to another owner (a
#: standby's parked session, handed to the node that takes over): ``listen`` then leaves it
#: open. Any other return, or an exception, and the connection is closed.
KEEP_OPEN = object()
#: accept() failing for want of resources: wait and go on (trio's serve_listeners does too).
_ACCEPT_CAPACITY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext_allowed(*hosts: str) -> None:
    """Plain TCP only when asked for and every address is loopback (DESIGN: no downgrade)."""
    outside = [h for h in hosts if not is_loopback(h)]
    if outside:
        raise TlsError(f"--insecure (plain TCP) is refused: {', '.join(outside)} is not a loopback address")


class Link:
    """An established byte stream and who is at the other end (None without TLS).

    ``lossy`` links (serial lines) can lose or garble bytes: sessions over them
    resynchronize on the next frame and time out replies that never come.
    """

    def __init__(self, stream: trio.abc.Stream, peer: str | None, remote: str, *, lossy: bool = False) -> None:
        self.stream = stream
        self.peer = peer
        self.remote = remote
        self.lossy = lossy

    def __repr__(self) -> str:
        return f"<Link {self.remote} peer={self.peer}>"


async def secure(stream: trio.abc.Stream, ctx: ssl.SSLContext | None, *, server_side: bool, remote: str) -> Link:
    if ctx is None:
        return Link(stream, None, remote)
    tls = wrap(stream, ctx, server_side=server_side)
    try:
        with map_link_errors(f"TLS handshake with {remote}"):
            await tls.do_handshake()
        return Link(tls, peer_identity(tls), remote)
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise


async def dial(host: str, port: int, ctx: ssl.SSLContext | None, *, local_address: str | None = None) -> Link:
    """Connect (and TLS-handshake). Bound it with ``trio.fail_after`` around the call.

    Raises:
        LinkError: refused or unreachable. TlsError: the handshake failed.
    """
    remote = f"{host}:{port}"
    with map_link_errors(f"connecting to {remote}"):
        stream = await _connect(host, port, local_address)
    return await secure(stream, ctx, server_side=False, remote=remote)


async def _connect(host: str, port: int, local_address: str | None) -> trio.SocketStream:
    """One TCP connect. An IP address (every address of a site file) skips
    ``open_tcp_stream``'s resolver and happy-eyeballs tasks, which cost a refused
    connect 2.5x and a good one 1.7x the CPU: a reconnecting fleet pays them often."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: resolve it, try each address
        return await trio.open_tcp_stream(host, port, local_address=local_address)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        if local_address is not None:
            await sock.bind((local_address, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def listen(
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    handler: Callable[[Link], Awaitable[object]],
    *,
    handshake_timeout: float = 5.0,
    on_refused: Callable[[str, Exception], None] | None = None,
    handshakes: trio.Semaphore | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``host:port`` and run ``handler(link)`` for each, forever; the
    connection is closed when the handler returns, unless it returns ``KEEP_OPEN``.

    ``handler_nursery``: where each connection's task runs (None: the listener's own), so
    that connections can outlive the listener (a standby's parked sessions, 6.3).

    A failed TLS handshake closes that one connection and is reported to
    ``on_refused(remote, error)``; the listener goes on. As many handshakes
    run at once as ``handshakes`` lets through (a semaphore the caller may share
    with its own dials; by default 32 for this listener).

    Raises:
        LinkError: the address cannot be bound (in use, not local).
    """
    with map_link_errors(f"listening on {host}:{port}"):
        listeners = await trio.open_tcp_listeners(port, host=host)
    # A thousand panels reconnecting at once: finish a few handshakes at a time
    # rather than advance all of them slowly until every dialer times out.
    if handshakes is None:
        handshakes = trio.Semaphore(32)

    async def handle(stream: trio.SocketStream) -> None:
        kept = None
        try:
            try:
                remote = "{}:{}".format(*stream.socket.getpeername()[:2])
            except OSError:
                return
            try:
                with trio.fail_after(handshake_timeout):
                    async with handshakes:
                        link = await secure(stream, ctx, server_side=True, remote=remote)
            except (LinkError, trio.TooSlowError) as exc:
                if on_refused is not None:
                    on_refused(remote, exc)
                return
            try:
                kept = await handler(link)
            finally:
                if kept is not KEEP_OPEN:
                    await trio.aclose_forcefully(link.stream)
        finally:
            # On every way out (a cancel in the handshake too) the socket is closed, unless
            # the handler gave the connection to another owner.
            if kept is not KEEP_OPEN:
                await trio.aclose_forcefully(stream)

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # Not trio.serve_listeners: it closes each stream when its handler returns, also one
        # the handler gave to another owner. The listener closes when this ends, as there.
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY:
                        raise
                    log.error("accept on %s:%s: %s; waiting 100 ms", host, port, exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(handle, stream)

    async with trio.open_nursery() as own:
        for listener in listeners:
            own.start_soon(accept_loop, listener, handler_nursery if handler_nursery is not None else own)
        task_status.started(listeners)
