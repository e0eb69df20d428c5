"""What one small frame costs through each stream layer: where an idle session's CPU goes.

Pairs of connected loopback sockets in one trio process; each end sends one
24-byte frame a second (a heartbeat's size) from its own timer task and reads
with its own reader task, as a session does. Process CPU over the window,
divided by the frames sent (each is also received), for three layers:

* ``trio``: mutual TLS 1.3 through ``trio.SSLStream`` over ``trio.SocketStream``
  (what ``protocol.streams`` uses): the bound ``fieldsync bench idle`` divides by;
* ``sslobject``: the same TLS through a minimal stream written here on
  ``ssl.SSLObject`` and the raw socket (write and send in one go, one
  checkpoint per send): what a stream of our own could save;
* ``plain``: no TLS, raw socket calls and trio's waits only: the floor for any
  design with a task wake-up per frame.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import trio

from protocol.streams import client_context, server_context

from ..site import pki

__all__ = ["LAYERS", "frame_cost"]

#: Each layer and what it is, in the order they are measured.
LAYERS = {
    "trio": "TLS, trio.SSLStream",
    "sslobject": "TLS, a minimal ssl.SSLObject stream",
    "plain": "no TLS, raw socket calls (the floor)",
}

FRAME = bytes(24)
Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[bytes]]


class SSLObjectStream:
    """TLS on a non-blocking socket with ``ssl.SSLObject``: the least a trio stream can do."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)

    async def _flush(self) -> None:
        data = self.outgoing.read()
        while data:
            try:
                data = data[self.sock.send(data) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def _fill(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if not data:
                raise EOFError("peer closed")
            self.incoming.write(data)
            return

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            await self._flush()
            return

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        await self._flush()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                await self._fill()
                continue
            if self.outgoing.pending:  # post-handshake messages want an answer
                await self._flush()
            return data


def _plain(sock: socket.socket) -> tuple[Send, Receive]:
    async def send(data: bytes) -> None:
        sock.send(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive() -> bytes:
        while True:
            try:
                return sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    return send, receive


async def _pair(layer: str, server: ssl.SSLContext, client: ssl.SSLContext) -> list[tuple[Send, Receive]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    if layer == "plain":
        return [_plain(a), _plain(b)]
    if layer == "sslobject":
        ends = [SSLObjectStream(a, server, server_side=True), SSLObjectStream(b, client, server_side=False)]
        async with trio.open_nursery() as nursery:
            for end in ends:
                nursery.start_soon(end.handshake)
        return [(end.send, end.receive) for end in ends]
    streams = [
        trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(a)), server, server_side=True),
        trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(b)), client, server_side=False),
    ]
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(stream.do_handshake)
    # The casts cost nothing per frame (a wrapper would add a coroutine to what is measured).
    return [(cast(Send, stream.send_all), cast(Receive, stream.receive_some)) for stream in streams]


async def frame_cost(layer: str, pairs: int, seconds: float, pki_dir: Path) -> float:
    """CPU seconds per frame sent and received (``pki_dir``: a CA made with ``pki.init_ca``)."""
    server = server_context(pki.issue(pki_dir, "node", "A"))
    client = client_context(pki.issue(pki_dir, "panel", 1))
    ends = [end for _ in range(pairs) for end in await _pair(layer, server, client)]
    rng = random.Random(1)

    async def beat(send: Send, phase: float) -> None:
        await trio.sleep(phase)
        while True:
            await send(FRAME)
            await trio.sleep(1)

    async def read(receive: Receive) -> None:
        while True:
            await receive()

    async with trio.open_nursery() as nursery:
        for send, receive in ends:
            nursery.start_soon(beat, send, rng.random())
            nursery.start_soon(read, receive)
        await trio.sleep(2)  # every timer has fired once
        cpu = time.process_time()
        await trio.sleep(seconds)
        cpu = time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return cpu / (len(ends) * seconds)
