"""One proxied TCP connection and how it asks the active toxics to act (the ``Proxy``'s per-connection part)."""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from typing import TYPE_CHECKING

import trio

from ._toxics import STREAMS, Chunk, Link, Stream, Toxic

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["Connection"]

#: How much of what a client sends is kept for a replay (a session's handshake and first batches).
RECORD_LIMIT = 64 * 1024


class Connection:
    """One proxied TCP connection: per direction a reader and a writer, and a watch for the toxics that end it.

    The toxics are asked to act at four points: each chunk in the writer (``on_data``),
    a close in the reader (``hold_close``) and in the writer (``delay_close``), and
    their deadlines in the watch (``deadline``, ``end``).
    """

    def __init__(self, proxy: Proxy, client: trio.SocketStream) -> None:
        self.proxy = proxy
        self.client = client
        self.server: trio.SocketStream | None = None
        self.scope = trio.CancelScope()
        #: Each toxic (by name, and the time it was added): its link to this connection, or
        #: None if it does not act on it (its toxicity, drawn once).
        self._links: dict[tuple[str, float], Link | None] = {}
        #: The first ``RECORD_LIMIT`` bytes the client sent, as they came off the wire.
        self.recorded = bytearray()

    def active(self, stream: Stream) -> list[tuple[Toxic, Link]]:
        out = []
        for toxic in self.proxy.toxics.values():
            if toxic.stream != stream:
                continue
            added = self.proxy.toxic_added[toxic.name]
            key = (toxic.name, added)
            if key not in self._links:
                applies = self.proxy.rng.random() < toxic.toxicity
                self._links[key] = Link(self.proxy.rng, added, self) if applies else None
            link = self._links[key]
            if link is not None:
                out.append((toxic, link))
        return out

    def close(self) -> None:
        self.scope.cancel()

    def reset(self) -> None:
        """Close both sides with a TCP RST (SO_LINGER 0)."""
        self.proxy.counters.resets += 1
        for stream in (self.client, self.server):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()

    async def run(self) -> None:
        proxy = self.proxy
        try:
            with self.scope:
                host, port = proxy.upstream
                try:
                    self.server = await trio.open_tcp_stream(host, port)
                except OSError:
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch)
                    nursery.start_soon(self._direction, self.client, self.server, "upstream")
                    nursery.start_soon(self._direction, self.server, self.client, "downstream")
        finally:
            # Whatever ends it (a toxic, a reset, the proxy going down, cancellation
            # before it even began), both sockets are closed.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.client)
                if self.server is not None:
                    await trio.aclose_forcefully(self.server)

    async def _watch(self) -> None:
        """End the connection at the first toxic deadline (timeout closes, reset_peer resets)."""
        while True:
            now = trio.current_time()
            deadline = math.inf
            for stream in STREAMS:
                for toxic, link in self.active(stream):
                    at = toxic.deadline(link.added)
                    if at is None:
                        continue
                    if now >= at:
                        toxic.end(link)
                        return
                    deadline = min(deadline, at)
            with trio.move_on_at(deadline):
                await self.proxy.toxics_changed.wait()

    async def _direction(self, source: trio.SocketStream, sink: trio.SocketStream, stream: Stream) -> None:
        # A reader and a writer joined by a small queue: latency delays each chunk from
        # its arrival, so a WAN link stays pipelined instead of paying latency per chunk.
        send, receive = trio.open_memory_channel[tuple[float, bytes]](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reader, source, send, stream)
            await self._writer(receive, sink, stream)
            nursery.cancel_scope.cancel()

    async def _reader(
        self, source: trio.SocketStream, send: trio.MemorySendChannel[tuple[float, bytes]], stream: Stream
    ) -> None:
        async with send:
            while True:
                try:
                    data = await source.receive_some(64 * 1024)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if stream == "upstream" and len(self.recorded) < RECORD_LIMIT:
                    self.recorded += data[: RECORD_LIMIT - len(self.recorded)]
                if not data:
                    for toxic, _ in self.active(stream):
                        await toxic.hold_close()
                await send.send((trio.current_time(), data))
                if not data:
                    return

    async def _writer(
        self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]], sink: trio.SocketStream, stream: Stream
    ) -> None:
        counters = self.proxy.counters
        async for arrived, data in receive:
            toxics = self.active(stream)
            if not data:
                for toxic, _ in toxics:
                    await toxic.delay_close()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await sink.send_eof()
                return
            chunk = Chunk(data=data, arrived=arrived, pieces=[data])
            for toxic, link in toxics:
                await toxic.on_data(chunk, link)
                if chunk.dropped:
                    counters.bytes_dropped += len(data)
                    break
            counters.bytes_corrupted += chunk.corrupted
            if not await self._write(chunk, sink, stream) or chunk.close_after:
                self.scope.cancel()
                return

    async def _write(self, chunk: Chunk, sink: trio.SocketStream, stream: Stream) -> bool:
        """Write the chunk's pieces as its toxics said: ``gap`` apart, each when the line carried it.

        Returns False if the sink is gone.
        """
        for i, piece in enumerate(chunk.writes()):
            if i and chunk.gap:
                await trio.sleep(chunk.gap)
            if chunk.rate:
                await trio.sleep(len(piece) / chunk.rate)
            try:
                await sink.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if stream == "upstream":
                self.proxy.counters.bytes_upstream += len(piece)
            else:
                self.proxy.counters.bytes_downstream += len(piece)
        return True
