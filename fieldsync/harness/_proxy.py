"""A TCP fault proxy between panels and the VIP, on Toxiproxy's model.

A ``Proxy`` listens on one address and forwards each connection to its
upstream. *Toxics* act on one direction of it (``upstream``: panel to node,
``downstream``: node to panel): the ones QA knows from Toxiproxy (latency with
jitter, bandwidth, timeout, reset_peer, slow_close, slicer, limit_data), plus
the ones its users keep asking for (``corrupt`` bytes at a rate, ``stall``
like lost packets, ``half_open``). A disabled proxy refuses connections and
closes the ones it had ("down").

A ``DatagramProxy`` does the same for UDP (the nodes' heartbeat link): each
datagram is delayed, corrupted, lost at a rate (``loss``) or dropped
(``timeout``, or the proxy down); replies from the upstream go back to the
last client.

A ``FaultHub`` holds the proxies and groups of them (a panel group); a toxic
added to a group reaches every proxy of the group in the same scheduler tick,
so no connection sees half a fault. Every random choice comes from a seeded
generator, so a run with the same seed and schedule repeats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import socket
import struct
import zlib
from collections.abc import Iterable
from typing import Any, Literal

import trio

__all__ = [
    "DatagramProxy",
    "FaultError",
    "FaultHub",
    "Proxy",
    "TOXIC_TYPES",
    "Toxic",
]

Stream = Literal["upstream", "downstream"]
STREAMS: tuple[Stream, ...] = ("upstream", "downstream")

#: Each toxic type's attributes and their defaults (Toxiproxy's names where it has them).
TOXIC_TYPES: dict[str, dict[str, float]] = {
    "latency": {"latency": 0.0, "jitter": 0.0},  # ms
    "bandwidth": {"rate": 0.0},  # KB/s
    "timeout": {"timeout": 0.0},  # ms; 0 holds the connection and drops data for as long as it is there
    "reset_peer": {"timeout": 0.0},  # ms until a TCP RST
    "slow_close": {"delay": 0.0},  # ms between the source closing and the proxy closing the other side
    "slicer": {"average_size": 16.0, "size_variation": 8.0, "delay": 0.0},  # bytes, bytes, microseconds
    "limit_data": {"bytes": 0.0},  # close the connection after this many bytes
    "corrupt": {"rate": 0.0},  # probability per byte that one bit flips
    "stall": {"probability": 0.0, "duration": 0.0},  # per chunk, ms
    "half_open": {},  # this direction goes silent; closes are not passed on
    "loss": {"probability": 0.0},  # UDP only: each datagram is lost with this probability
}


class FaultError(ValueError):
    """A fault request that makes no sense (an HTTP 4xx with this reason)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass(slots=True, kw_only=True)
class Toxic:
    name: str
    type: str
    stream: Stream = "downstream"
    #: Probability that the toxic acts on a given connection.
    toxicity: float = 1.0
    attributes: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, *, default_name: str | None = None) -> Toxic:
        """Validate a Toxiproxy-style toxic description.

        Raises:
            FaultError: unknown type, stream or attribute, or a value out of range.
        """
        if not isinstance(data, dict):
            raise FaultError("a toxic is a JSON object")
        unknown = set(data) - {"name", "type", "stream", "toxicity", "attributes"}
        if unknown:
            raise FaultError(f"unknown toxic field {sorted(unknown)[0]!r}")
        kind = data.get("type")
        if kind not in TOXIC_TYPES:
            raise FaultError(f"unknown toxic type {kind!r}; known: {', '.join(TOXIC_TYPES)}")
        stream = data.get("stream", "downstream")
        if stream not in STREAMS:
            raise FaultError(f"stream must be 'upstream' or 'downstream', not {stream!r}")
        toxicity = data.get("toxicity", 1.0)
        if not isinstance(toxicity, int | float) or not 0.0 <= toxicity <= 1.0:
            raise FaultError(f"toxicity must be a number from 0 to 1, not {toxicity!r}")
        given = data.get("attributes", {})
        if not isinstance(given, dict):
            raise FaultError("attributes must be a JSON object")
        allowed = TOXIC_TYPES[kind]
        attributes = dict(allowed)
        for key, value in given.items():
            if key not in allowed:
                raise FaultError(
                    f"toxic type {kind!r} has no attribute {key!r}; it has: {', '.join(allowed) or 'none'}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise FaultError(f"attribute {key!r} must be a number >= 0, not {value!r}")
            attributes[key] = float(value)
        for key in ("rate", "probability"):
            if kind in ("corrupt", "stall", "loss") and key in attributes and attributes[key] > 1:
                raise FaultError(f"{kind} {key} is a probability (0..1), not {attributes[key]}")
        if kind == "slicer" and attributes["average_size"] < 1:
            raise FaultError("slicer average_size must be at least 1 byte")
        name = data.get("name") or default_name or f"{kind}_{stream}"
        if not isinstance(name, str) or not name or len(name) > 100:
            raise FaultError("a toxic's name is a non-empty string of at most 100 characters")
        return cls(name=name, type=kind, stream=stream, toxicity=float(toxicity), attributes=attributes)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


@dataclasses.dataclass(slots=True)
class ProxyCounters:
    connections: int = 0
    refused_while_down: int = 0
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    bytes_dropped: int = 0
    bytes_corrupted: int = 0
    resets: int = 0
    datagrams_dropped: int = 0


class _Connection:
    def __init__(self, proxy: Proxy, client: trio.SocketStream) -> None:
        self.proxy = proxy
        self.client = client
        self.server: trio.SocketStream | None = None
        self.scope = trio.CancelScope()
        #: Whether each toxic (by name, and the time it was added) acts on this connection.
        self._applies: dict[tuple[str, float], bool] = {}
        self._limits: dict[tuple[str, float], int] = {}

    def active(self, stream: Stream) -> list[Toxic]:
        out = []
        for toxic in self.proxy.toxics.values():
            if toxic.stream != stream:
                continue
            key = (toxic.name, self.proxy.toxic_added[toxic.name])
            applies = self._applies.get(key)
            if applies is None:
                applies = self._applies[key] = self.proxy.rng.random() < toxic.toxicity
            if applies:
                out.append(toxic)
        return out

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
        """Connection-level toxics: timeout closes, reset_peer resets, after their time."""
        while True:
            now = trio.current_time()
            deadline = math.inf
            for stream in STREAMS:
                for toxic in self.active(stream):
                    closes = toxic.type == "reset_peer" or (toxic.type == "timeout" and toxic.attributes["timeout"] > 0)
                    if closes:
                        at = self.proxy.toxic_added[toxic.name] + toxic.attributes["timeout"] / 1000
                        if now >= at:
                            if toxic.type == "reset_peer":
                                self.reset()
                            else:
                                self.scope.cancel()
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
                if not data and any(t.type == "half_open" for t in self.active(stream)):
                    await trio.sleep_forever()  # the close is not passed on
                await send.send((trio.current_time(), data))
                if not data:
                    return

    async def _writer(
        self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]], sink: trio.SocketStream, stream: Stream
    ) -> None:
        proxy = self.proxy
        line_free = -math.inf
        async for arrived, data in receive:
            toxics = self.active(stream)
            if not data:
                for toxic in toxics:
                    if toxic.type == "slow_close":
                        await trio.sleep(toxic.attributes["delay"] / 1000)
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await sink.send_eof()
                return
            pieces = [data]
            limit_hit = False
            for toxic in toxics:
                a = toxic.attributes
                if toxic.type == "latency":
                    jitter = (proxy.rng.random() * 2 - 1) * a["jitter"]
                    await trio.sleep_until(arrived + max(0.0, a["latency"] + jitter) / 1000)
                elif toxic.type == "stall" and proxy.rng.random() < a["probability"]:
                    await trio.sleep(a["duration"] / 1000)
                elif toxic.type in ("half_open", "timeout"):
                    proxy.counters.bytes_dropped += len(data)
                    pieces = []
                    break
                elif toxic.type == "corrupt":
                    pieces = [proxy.corrupt(p, a["rate"]) for p in pieces]
                elif toxic.type == "limit_data":
                    key = (toxic.name, proxy.toxic_added[toxic.name])
                    used = self._limits.get(key, 0)
                    allowed = b"".join(pieces)[: max(0, int(a["bytes"]) - used)]
                    pieces = [allowed] if allowed else []
                    self._limits[key] = used + len(allowed)
                    if self._limits[key] >= int(a["bytes"]):
                        limit_hit = True
                elif toxic.type == "slicer":
                    pieces = [s for p in pieces for s in self._slices(p, a)]
            slicer = next((t for t in toxics if t.type == "slicer"), None)
            delay = slicer.attributes["delay"] / 1_000_000 if slicer is not None else 0.0
            rate = next(
                (t.attributes["rate"] for t in toxics if t.type == "bandwidth" and t.attributes["rate"] > 0), 0.0
            )
            if rate:  # 50 ms of the line at a time, each sent when the line would have carried it
                step = max(1, int(rate * 1000 * 0.05))
                pieces = [p[j : j + step] for p in pieces for j in range(0, len(p), step)]
            for i, piece in enumerate(pieces):
                if i and delay:
                    await trio.sleep(delay)
                if rate:
                    line_free = max(trio.current_time(), line_free) + len(piece) / (rate * 1000)
                    await trio.sleep_until(line_free)
                try:
                    await sink.send_all(piece)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.scope.cancel()
                    return
                if stream == "upstream":
                    proxy.counters.bytes_upstream += len(piece)
                else:
                    proxy.counters.bytes_downstream += len(piece)
            if limit_hit:
                self.scope.cancel()
                return

    def _slices(self, data: bytes, a: dict[str, float]) -> Iterable[bytes]:
        i = 0
        rng = self.proxy.rng
        while i < len(data):
            size = max(1, int(a["average_size"] + (rng.random() * 2 - 1) * a["size_variation"]))
            yield data[i : i + size]
            i += size


class Proxy:
    """One listen address forwarded to one upstream, with toxics; run by a ``FaultHub``."""

    protocol = "tcp"
    #: The toxic types this kind of proxy can apply.
    toxic_types: frozenset[str] = frozenset(TOXIC_TYPES) - {"loss"}

    def __init__(self, name: str, listen: tuple[str, int], upstream: tuple[str, int], *, seed: int = 0) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        #: When each toxic was added (trio time): timeouts count from there.
        self.toxic_added: dict[str, float] = {}
        self.toxics_changed = trio.Event()
        self.rng = random.Random(seed)
        self.counters = ProxyCounters()
        self._connections: set[_Connection] = set()
        self._scope: trio.CancelScope | None = None
        #: Set when the listener and every connection are closed.
        self.stopped = trio.Event()
        self.stopped.set()

    def __repr__(self) -> str:
        state = "up" if self.enabled else "down"
        return f"<Proxy {self.name} {self.listen} -> {self.upstream} {state} {sorted(self.toxics)}>"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "listen": f"{self.listen[0]}:{self.listen[1]}",
            "upstream": f"{self.upstream[0]}:{self.upstream[1]}",
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics.values()],
            "connections": self._connection_count(),
            "counters": dataclasses.asdict(self.counters),
        }

    def _connection_count(self) -> int:
        return len(self._connections)

    def _changed(self) -> None:
        self.toxics_changed.set()
        self.toxics_changed = trio.Event()

    def check_toxic(self, toxic: Toxic) -> None:
        """Raises FaultError if this kind of proxy cannot apply ``toxic``."""
        if toxic.type not in self.toxic_types:
            raise FaultError(
                f"proxy {self.name}: a {self.protocol.upper()} proxy cannot apply {toxic.type!r}; "
                f"it can: {', '.join(sorted(self.toxic_types))}"
            )

    def add_toxic(self, toxic: Toxic) -> None:
        self.check_toxic(toxic)
        if toxic.name in self.toxics:
            raise FaultError(f"proxy {self.name} already has a toxic named {toxic.name!r}", status=409)
        self.toxics[toxic.name] = toxic
        self.toxic_added[toxic.name] = trio.current_time()
        self._changed()

    def remove_toxic(self, name: str) -> None:
        if name not in self.toxics:
            raise FaultError(f"proxy {self.name} has no toxic named {name!r}", status=404)
        del self.toxics[name]
        del self.toxic_added[name]
        self._changed()

    def corrupt(self, data: bytes, rate: float) -> bytes:
        if rate <= 0:
            return data
        out = bytearray(data)
        i = int(self.rng.expovariate(rate))
        while i < len(out):
            out[i] ^= 1 << self.rng.randrange(8)
            self.counters.bytes_corrupted += 1
            i += 1 + int(self.rng.expovariate(rate))
        return bytes(out)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and forward until disabled.

        Raises:
            FaultError: the listen address cannot be bound (in use).
        """
        host, port = self.listen
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise FaultError(f"proxy {self.name} cannot listen on {host}:{port}: {exc.strerror}", status=409) from exc
        self.enabled = True
        self.stopped = trio.Event()
        with trio.CancelScope() as scope:
            self._scope = scope
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    for listener in listeners:
                        nursery.start_soon(self._accept, listener, nursery)
            finally:
                self.enabled = False
                self._scope = None
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
                self.stopped.set()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            client = await listener.accept()
            self.counters.connections += 1
            conn = _Connection(self, client)
            self._connections.add(conn)
            nursery.start_soon(self._run_connection, conn)

    async def _run_connection(self, conn: _Connection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    def disable(self) -> None:
        """Down: stop listening and close every connection."""
        if self._scope is not None:
            self._scope.cancel()

    def reset_all(self) -> None:
        """TCP RST on every connection."""
        for conn in list(self._connections):
            conn.reset()


class DatagramProxy(Proxy):
    """A UDP relay with toxics: datagrams from clients go to the upstream, replies to the last client.

    ``latency`` (+ jitter) delays each datagram, ``corrupt`` flips bits, ``loss``
    drops each with a probability, ``timeout`` (and the proxy down) drops every
    one. Datagrams are not connections: ``toxicity`` is drawn per datagram.
    """

    protocol = "udp"
    toxic_types = frozenset({"latency", "corrupt", "loss", "timeout"})

    def __init__(self, name: str, listen: tuple[str, int], upstream: tuple[str, int], *, seed: int = 0) -> None:
        super().__init__(name, listen, upstream, seed=seed)
        self._client: Any = None

    def _connection_count(self) -> int:
        return 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay datagrams until disabled.

        Raises:
            FaultError: the listen address cannot be bound (in use).
        """
        host, port = self.listen
        front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        back = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            try:
                await front.bind((host, port))
            except OSError as exc:
                raise FaultError(
                    f"proxy {self.name} cannot listen on UDP {host}:{port}: {exc.strerror}", status=409
                ) from exc
            await back.bind((host, 0))  # replies come back to an address of the same loopback host
            await back.connect(self.upstream)
            self.enabled = True
            self.stopped = trio.Event()
            with trio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, front, back, "upstream", nursery)
                    nursery.start_soon(self._pump, back, front, "downstream", nursery)
        finally:
            self.enabled = False
            self._scope = None
            front.close()
            back.close()
            self.stopped.set()

    async def _pump(self, source: Any, sink: Any, stream: Stream, nursery: trio.Nursery) -> None:
        while True:
            try:
                data, sender = await source.recvfrom(65536)
            except OSError:  # ICMP unreachable from an earlier send: the peer is down, go on
                continue
            if stream == "upstream":
                self._client = sender
            elif self._client is None:
                continue  # a reply before any client: nobody to give it to
            delay = 0.0
            for toxic in self.toxics.values():
                if toxic.stream != stream or self.rng.random() >= toxic.toxicity:
                    continue
                a = toxic.attributes
                if toxic.type == "timeout" or (toxic.type == "loss" and self.rng.random() < a["probability"]):
                    data = b""
                    break
                if toxic.type == "corrupt":
                    data = self.corrupt(data, a["rate"])
                elif toxic.type == "latency":
                    delay += max(0.0, a["latency"] + (self.rng.random() * 2 - 1) * a["jitter"]) / 1000
            if not data:
                self.counters.datagrams_dropped += 1
                continue
            nursery.start_soon(self._send, sink, data, stream, self._client, trio.current_time() + delay)

    async def _send(self, sink: Any, data: bytes, stream: Stream, client: Any, at: float) -> None:
        await trio.sleep_until(at)
        with contextlib.suppress(OSError):  # the upstream is down: what a datagram link does
            if stream == "upstream":
                await sink.send(data)
                self.counters.bytes_upstream += len(data)
            else:
                await sink.sendto(data, client)
                self.counters.bytes_downstream += len(data)

    def reset_all(self) -> None:
        """Datagrams have no connection to reset."""


class FaultHub:
    """The proxies and the groups of them, run inside one nursery.

    Everything here is synchronous except enabling (which binds a socket), so a
    change to a group happens for all of its proxies between two scheduler ticks.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.groups: dict[str, list[str]] = {}
        self._seed = seed
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[FaultHub] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    def proxy(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise FaultError(f"no proxy named {name!r}", status=404) from None

    def group(self, name: str) -> list[Proxy]:
        if name in self.groups:
            return [self.proxies[n] for n in self.groups[name]]
        if name in self.proxies:
            return [self.proxies[name]]
        raise FaultError(f"no group or proxy named {name!r}", status=404)

    async def create(
        self,
        name: str,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        *,
        enabled: bool = True,
        protocol: Literal["tcp", "udp"] = "tcp",
    ) -> Proxy:
        if name in self.proxies:
            raise FaultError(f"a proxy named {name!r} exists", status=409)
        kind = {"tcp": Proxy, "udp": DatagramProxy}.get(protocol)
        if kind is None:
            raise FaultError(f"protocol must be 'tcp' or 'udp', not {protocol!r}")
        proxy = kind(
            name, listen, upstream, seed=zlib.crc32(f"{self._seed}:{name}".encode())
        )  # stable across processes, unlike hash()
        if enabled:
            await self._start(proxy)
        self.proxies[name] = proxy
        return proxy

    async def _start(self, proxy: Proxy) -> None:
        assert self._nursery is not None, "FaultHub.run is not running"
        await self._nursery.start(proxy.serve)

    async def set_enabled(self, name: str, enabled: bool) -> None:
        proxy = self.proxy(name)
        if enabled and not proxy.enabled:
            await self._start(proxy)
        elif not enabled:
            proxy.disable()
            await proxy.stopped.wait()

    async def set_group_enabled(self, group: str, enabled: bool) -> None:
        proxies = self.group(group)
        if not enabled:
            for proxy in proxies:  # all in one tick
                proxy.disable()
            for proxy in proxies:
                await proxy.stopped.wait()
            return
        for proxy in proxies:
            if not proxy.enabled:
                await self._start(proxy)

    def delete(self, name: str) -> None:
        proxy = self.proxy(name)
        proxy.disable()
        del self.proxies[name]
        for members in self.groups.values():
            if name in members:
                members.remove(name)

    def define_group(self, name: str, members: Iterable[str]) -> None:
        members = list(members)
        for member in members:
            self.proxy(member)
        self.groups[name] = members

    def add_toxic(self, target: str, toxic: Toxic) -> list[str]:
        """Add ``toxic`` to a proxy or to every proxy of a group, atomically."""
        proxies = self.group(target)
        clash = [p.name for p in proxies if toxic.name in p.toxics]
        if clash:
            raise FaultError(f"toxic {toxic.name!r} already exists on {', '.join(clash)}", status=409)
        for proxy in proxies:  # all or none
            proxy.check_toxic(toxic)
        for proxy in proxies:
            proxy.add_toxic(dataclasses.replace(toxic, attributes=dict(toxic.attributes)))
        return [p.name for p in proxies]

    def remove_toxic(self, target: str, name: str) -> list[str]:
        proxies = [p for p in self.group(target) if name in p.toxics]
        if not proxies:
            raise FaultError(f"no toxic named {name!r} on {target!r}", status=404)
        for proxy in proxies:
            proxy.remove_toxic(name)
        return [p.name for p in proxies]

    def reset_peers(self, target: str) -> None:
        for proxy in self.group(target):
            proxy.reset_all()

    async def reset(self) -> None:
        """Toxiproxy's /reset: every proxy enabled, every toxic removed."""
        for proxy in self.proxies.values():
            for name in list(proxy.toxics):
                proxy.remove_toxic(name)
        for proxy in self.proxies.values():
            if not proxy.enabled:
                await self._start(proxy)
