"""TLS on a TCP socket through ``ssl.SSLObject``: what ``trio.SSLStream`` does, for less.

``trio.SSLStream`` is written for any transport stream and for every use of TLS
(renegotiation, concurrent senders, ``https_compatible``); each frame pays for that
generality in task switches and locks. A session's TLS runs over a TCP socket, speaks
TLS 1.3 only, and has one sender at a time (its send lock), so this stream drives the
``SSLObject`` and its memory BIOs straight from the socket's non-blocking calls:
a send is one ``SSLObject.write``, one ``send`` of the records and one checkpoint; a
receive is one ``recv`` into the BIO and one ``SSLObject.read``. Measured with
``benchmarks/frames.py``: a small frame sent and received costs about a quarter less than
through ``trio.SSLStream`` (docs/architecture.md, Figures).

**Writes in order, and a reader that never waits on one.** Every TLS record the
``SSLObject`` produces (a send's, the handshake's, what a read answers the peer with) is
moved at once, in the order made, to one queue of ciphertext; a sender drains the queue
under the write lock, waiting for the socket when it is full. A receive only tries to send
what its read produced, without waiting and only while no sender holds the lock (the
holder drains it anyway): so a reader is never stuck behind a sender's megabytes while the
peer waits for it to read, and a receive cancelled in its wait loses nothing it decrypted.

Its failures are ``trio.SSLStream``'s: ``trio.BrokenResourceError`` whose ``__cause__`` is
the ``ssl.SSLError`` or ``OSError`` (``map_link_errors`` turns them into ``TlsError`` and
``LinkError``), ``trio.ClosedResourceError`` after ``aclose``. A send or handshake that is
cancelled with records half written leaves the stream broken, as trio's does. A peer that
closes without a close_notify is a broken stream (``https_compatible=False``); one that
sends close_notify reads as the end of the stream (``b""``).

Serial lines (pyserial, a pty) are not sockets: they keep ``trio.SSLStream``.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from typing import Any

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled, wait_readable, wait_writable

__all__ = ["SocketTLSStream"]

#: The most one receive reads from the socket: a full window of 4096-record batches fits in a few.
_RECV = 256 * 1024


class SocketTLSStream(trio.abc.Stream):
    """TLS 1.3 over a ``trio.SocketStream``'s socket (see the module's docstring).

    Args:
        transport_stream: the connected TCP stream (its socket is used directly; it is
            closed with this stream).
        ctx: the TLS context (``client_context`` or ``server_context``).
        server_side: True for the end that accepted the connection.
    """

    def __init__(self, transport_stream: trio.SocketStream, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.transport_stream = transport_stream
        self._fd = transport_stream.socket.fileno()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        #: Ciphertext made and not yet sent, in the order the SSLObject made it.
        self._queue = bytearray()
        #: One task sends from the queue at a time (and may wait for the socket).
        self._write_lock = trio.StrictFIFOLock()
        self._handshake_lock = trio.Lock()
        self._handshook = False
        self._broken: BaseException | None = None
        self._closed = False
        #: A second concurrent sender or receiver is a bug of the caller (BusyResourceError).
        self._sending = self._receiving = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"<SocketTLSStream fd {self._fd} {state}>"

    # -- what trio.SSLStream offers that the sessions use ----------------------------------

    def getpeercert(self) -> dict[str, Any] | None:
        """The verified peer certificate (``ssl.SSLObject.getpeercert``), after the handshake."""
        return self._tls.getpeercert()

    async def do_handshake(self) -> None:
        """The TLS handshake (one at a time); again after it is done, a checkpoint only.

        Raises:
            trio.BrokenResourceError: the handshake failed (its ``__cause__`` says why).
        """
        self._check_usable()
        async with self._handshake_lock:
            if self._handshook:
                await trio.lowlevel.checkpoint()
                return
            await checkpoint_if_cancelled()
            while True:
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    self._take()
                    await self._flush()
                    await self._fill()
                    continue
                except ssl.SSLError as exc:
                    self._take()
                    self._send_nowait()  # the alert tells the peer why
                    raise self._break(exc) from exc
                break
            self._take()
            await self._flush()
            self._handshook = True
            await cancel_shielded_checkpoint()

    # -- trio.abc.Stream ------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check_usable()
            await checkpoint_if_cancelled()
            if not self._handshook:
                await self.do_handshake()
            if data:
                try:
                    self._tls.write(data)
                except ssl.SSLError as exc:
                    raise self._break(exc) from exc
                self._take()
                await self._flush()  # its lock's acquire is this call's schedule point
            else:
                await cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._check_usable()
        await wait_writable(self._socket_fd())
        self._check_usable()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def _receive(self, max_bytes: int | None) -> bytes:
        self._check_usable()
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await checkpoint_if_cancelled()
        if not self._handshook:
            await self.do_handshake()
        waited = False
        while True:
            try:
                data = self._tls.read(max_bytes or _RECV)
            except ssl.SSLWantReadError:
                waited = await self._fill() or waited
                continue
            except ssl.SSLZeroReturnError:  # the peer's close_notify: the end of the stream
                data = b""
            except ssl.SSLError as exc:
                raise self._break(exc) from exc
            break
        if self._outgoing.pending:  # what reading made for the peer (a key update's answer)
            self._take()
            self._send_nowait()
        if not waited:
            await cancel_shielded_checkpoint()
        return data

    async def aclose(self) -> None:
        """Send close_notify if the stream is still good (never waiting for the socket or
        the peer), then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._handshook and self._broken is None and not self._write_lock.locked():
            # SSLWantReadError: ours is made, the peer's is not awaited.
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            self._take()
            self._send_nowait()
        self._closed = True
        await self.transport_stream.aclose()

    # -- the socket -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this TLS stream is broken") from self._broken

    def _break(self, cause: BaseException) -> trio.BrokenResourceError:
        self._broken = cause
        return trio.BrokenResourceError(f"TLS stream broken: {cause}")

    def _socket_fd(self) -> int:
        """The socket's fd, checked: if the socket was closed under this stream (its
        ``transport_stream`` closed by someone else), its number may already be another
        file's, and a read or write on it would reach that file."""
        if self.transport_stream.socket.fileno() != self._fd:
            raise trio.ClosedResourceError("the socket under this TLS stream was closed")
        return self._fd

    def _take(self) -> None:
        """Move what the SSLObject made to the queue, behind what is there (in order)."""
        self._queue += self._outgoing.read()

    async def _fill(self) -> bool:
        """Wait for bytes from the peer and put them in the incoming BIO (EOF too); True if
        it had to wait (a checkpoint)."""
        waited = False
        while True:
            if self._closed:  # by another task while this one waited: the fd is not ours
                raise trio.ClosedResourceError("this TLS stream was closed")
            try:
                data = os.read(self._socket_fd(), _RECV)
            except BlockingIOError:
                await wait_readable(self._fd)
                waited = True
                continue
            except OSError as exc:
                raise self._break(exc) from exc
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()  # the next read says how: close_notify or not
            return waited

    async def _flush(self) -> None:
        """Send the queue, waiting for the socket as needed, one sender at a time.

        Cancelled (or failed) with ciphertext unsent, the stream is broken: what the peer
        would read next could be a torn record.
        """
        try:
            async with self._write_lock:
                queue = self._queue
                while queue:
                    if self._closed:
                        raise trio.ClosedResourceError("this TLS stream was closed")
                    try:
                        sent = os.write(self._socket_fd(), queue)
                    except BlockingIOError:
                        await wait_writable(self._fd)
                        continue
                    del queue[:sent]
        except OSError as exc:
            raise self._break(exc) from exc
        except BaseException:
            if self._queue and self._broken is None:
                self._broken = OSError("a send was cancelled with TLS records unsent")
            raise

    def _send_nowait(self) -> None:
        """Send what the socket takes of the queue now, unless a sender holds it (it will)."""
        queue = self._queue
        if self._write_lock.locked() or self._closed or self.transport_stream.socket.fileno() != self._fd:
            return
        while queue:
            try:
                sent = os.write(self._fd, queue)
            except OSError:  # full (BlockingIOError) or gone: the next sender finds out
                return
            del queue[:sent]
