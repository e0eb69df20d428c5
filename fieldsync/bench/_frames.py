"""What one small frame costs through each stream layer: where an idle session's CPU goes.

Pairs of connected loopback sockets in one trio process; each end sends one
24-byte frame a second (a heartbeat's size) from its own timer task and reads
with its own reader task, as a session does. Process CPU over the window,
divided by the frames sent (each is also received), for three layers:

* ``trio``: mutual TLS 1.3 through ``trio.SSLStream`` over ``trio.SocketStream``
  (what ``protocol.streams`` uses): the bound ``fieldsync bench idle`` divides by;
* ``socket``: the same TLS through ``protocol.streams.SocketTLSStream`` (``ssl.SSLObject``
  driven from the socket's non-blocking calls): what the sessions use on TCP;
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

from protocol.streams import SocketTLSStream, client_context, server_context

from ..site import pki

__all__ = ["LAYERS", "frame_cost"]

#: Each layer and what it is, in the order they are measured.
LAYERS = {
    "trio": "TLS, trio.SSLStream",
    "socket": "TLS, SocketTLSStream (the sessions')",
    "plain": "no TLS, raw socket calls (the floor)",
}

FRAME = bytes(24)
Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[bytes]]


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
    sockets = (
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        trio.SocketStream(trio.socket.from_stdlib_socket(b)),
    )
    streams: list[SocketTLSStream] | list[trio.SSLStream[trio.SocketStream]]
    if layer == "socket":
        streams = [
            SocketTLSStream(sockets[0], server, server_side=True),
            SocketTLSStream(sockets[1], client, server_side=False),
        ]
    else:
        streams = [
            trio.SSLStream(sockets[0], server, server_side=True),
            trio.SSLStream(sockets[1], client, server_side=False),
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
