"""A TCP fault proxy between panels and the VIP, on Toxiproxy's model.

A ``Proxy`` listens on one address and forwards each connection to its
upstream. *Toxics* act on one direction of it (``upstream``: panel to node,
``downstream``: node to panel): the ones QA knows from Toxiproxy (latency with
jitter, bandwidth, timeout, reset_peer, slow_close, slicer, limit_data), plus
the ones its users keep asking for (``corrupt`` bytes at a rate, ``stall``
like lost packets, ``half_open``). Each type is a class in ``_toxics.py``
that owns its attributes and what it does; a connection (``_proxy_connection.py``)
asks its active toxics to act and knows none by name. A disabled proxy refuses
connections and closes the ones it had ("down").

A ``DatagramProxy`` does the same for UDP (the nodes' heartbeat link): each
datagram is handed to its toxics, which delay, corrupt, lose at a rate
(``loss``) or drop it (``timeout``; the proxy down drops them all); replies
from the upstream go back to the last client.

A ``FaultHub`` holds the proxies and groups of them (a panel group); a toxic
added to a group reaches every proxy of the group in the same scheduler tick,
so no connection sees half a fault. Every random choice comes from a seeded
generator, so a run with the same seed and schedule repeats.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random
import socket
import zlib
from collections.abc import Iterable
from typing import Any, Literal

import trio

from ._proxy_connection import Connection
from ._toxics import TOXIC_CLASSES, TOXIC_TYPES, Datagram, FaultError, Stream, Toxic

__all__ = [
    "DatagramProxy",
    "FaultError",
    "FaultHub",
    "Proxy",
    "TOXIC_TYPES",
    "Toxic",
]


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


def _types_for(protocol: str) -> frozenset[str]:
    """The toxic types a proxy of ``protocol`` can apply (each class says which)."""
    return frozenset(kind for kind, cls in TOXIC_CLASSES.items() if protocol in cls.protocols)


class Proxy:
    """One listen address forwarded to one upstream, with toxics; run by a ``FaultHub``."""

    protocol = "tcp"
    #: The toxic types this kind of proxy can apply.
    toxic_types: frozenset[str] = _types_for("tcp")

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
        self._connections: set[Connection] = set()
        #: What clients sent on the last few connections that ended (a tap on the wire, before
        #: any toxic): a recorded session for a replay attack (``_rogue``). Bounded.
        self.recordings: collections.deque[bytes] = collections.deque(maxlen=4)
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

    def recording(self) -> bytes:
        """The longest session recorded on this proxy: an ended one, or the live one so far."""
        live = [bytes(c.recorded) for c in self._connections]
        return max([*self.recordings, *live], key=len, default=b"")

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
            conn = Connection(self, client)
            self._connections.add(conn)
            nursery.start_soon(self._run_connection, conn)

    async def _run_connection(self, conn: Connection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            if conn.recorded:
                self.recordings.append(bytes(conn.recorded))

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
    toxic_types = _types_for("udp")

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
            datagram = Datagram(data=data)
            for toxic in self.toxics.values():
                if toxic.stream != stream or self.rng.random() >= toxic.toxicity:
                    continue
                toxic.on_datagram(datagram, self.rng)
                if datagram.dropped:
                    break
            self.counters.bytes_corrupted += datagram.corrupted
            if datagram.dropped or not datagram.data:
                self.counters.datagrams_dropped += 1
                continue
            at = trio.current_time() + datagram.delay
            nursery.start_soon(self._send, sink, datagram.data, stream, self._client, at)

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
            proxy.add_toxic(toxic)  # frozen: one object serves every proxy
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
