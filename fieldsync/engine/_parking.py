"""The standby's park address: sessions held warm for a takeover (docs/protocol.md 6.3).

While its node stands by, a ``ParkingLot`` listens on the node's own address (``[site]
park_port``), answers each panel's HELLO with STANDBY and keeps the session's quiet
liveness. When the node takes over, ``hand_over`` stops listening, stops each parked
session's tasks without cutting a frame and gives its connection to the new ``Node``, which
sends TAKEOVER on it and serves the panel's fresh HELLO (``Node.adopt``): no TCP or TLS
set-up on the takeover's path. Listening only while standby keeps the rule that an active
node has no parked sessions; a connection still in its HELLO when the node takes over is
closed, and its panel parks again later.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from typing import TYPE_CHECKING

import trio

from protocol import (
    Bye,
    Error,
    ErrorCode,
    HostConnection,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    Standby,
    State,
)
from protocol.streams import KEEP_OPEN, Link, LinkError, MessageStream, PeerClosed, first_error, listen, server_context

if TYPE_CHECKING:
    from ._cluster_settings import ClusterSettings

__all__ = ["ParkedSession", "ParkingLot"]

log = logging.getLogger("fieldsync.cluster")

#: A park connection's HELLO must come within this (6.2 step 2 on the park address).
HELLO_TIMEOUT = 5.0
#: A takeover waits at most this for its parked sessions to stop, all together.
HAND_OVER_BOUND = 1.0


@dataclasses.dataclass(eq=False, slots=True)
class ParkedSession:
    """One panel's parked connection; ``handed`` once the node that took over owns it."""

    panel_id: int
    link: Link
    ms: MessageStream
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    handed: bool = False
    #: A newer park of the same panel replaced this one (6.3 rule 2: ended with REPLACED).
    replaced: bool = False


class ParkingLot:
    """A standby node's park listener and its parked sessions."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self._ctx: ssl.SSLContext | None = server_context(settings.tls) if settings.tls else None
        self.parked: dict[int, ParkedSession] = {}
        #: Connections parked since start, refused at their HELLO, ended while parked.
        self.parked_total = self.refused = self.ended = 0
        self._nursery: trio.Nursery | None = None
        self._open = False
        self._handshakes = trio.Semaphore(16)

    def __repr__(self) -> str:
        return f"<ParkingLot of node {self.node_id}: {len(self.parked)} parked>"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery the parked sessions live in, for the node's whole life."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def listening(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept panels on the park address until cancelled (the node's standby phase).

        Raises:
            LinkError: the park address cannot be bound.
        """
        assert self._nursery is not None and self.settings.park is not None
        host, port = self.settings.park
        self._open = True
        try:
            await listen(
                host,
                port,
                self._ctx,
                self._park,
                handshake_timeout=5.0,
                handshakes=self._handshakes,
                on_refused=self._refused_tls,
                handler_nursery=self._nursery,
                task_status=task_status,
            )
        finally:
            self._open = False

    def _refused_tls(self, remote: str, exc: Exception) -> None:
        self.refused += 1
        log.info("node %s: park connection from %s refused: %s", self.node_id, remote, exc)

    def _admit(self, link: Link, panel_id: int) -> tuple[ErrorCode, str] | None:
        """6.3 rule 2: 6.2 step 3's identity checks (a standby has no epoch and is not stopping)."""
        s = self.settings
        if s.tls is not None and link.peer != f"panel-{panel_id}":
            return ErrorCode.PANEL_ID_MISMATCH, f"HELLO says panel {panel_id} but the certificate is {link.peer!r}"
        if s.known_panels is not None and panel_id not in s.known_panels:
            return ErrorCode.UNKNOWN_PANEL, f"panel {panel_id} is not in this site"
        return None

    async def _park(self, link: Link) -> object:
        """One park connection, until it ends or is handed over (then ``KEEP_OPEN``: the node
        that took over owns it from here)."""
        s = self.settings
        conn = HostConnection(now=trio.current_time(), park=True)
        ms = MessageStream(link.stream, conn, name=f"node {self.node_id} park <- {link.remote}")
        parked: ParkedSession | None = None
        try:
            with trio.move_on_after(HELLO_TIMEOUT) as waited:
                hello = await ms.receive()
            if waited.cancelled_caught:
                await ms.send_error(ErrorCode.TIMEOUT, f"no HELLO within {HELLO_TIMEOUT:g} s")
                return None
            if conn.hello is None or conn.hello is not hello:
                return None  # ERROR or BYE first: nothing to park
            refusal = self._admit(link, hello.panel_id)
            if refusal is not None:
                self.refused += 1
                await ms.send_error(*refusal)
                return None
            if not self._open:
                return None  # this node took over meanwhile: an active node parks nobody (6.3 rule 1)
            # Listed before the STANDBY goes out: a takeover from here on hands this one over
            # too (with the STANDBY written whole, or not at all: then it is closed).
            parked = ParkedSession(hello.panel_id, link, ms)
            older = self.parked.get(parked.panel_id)
            self.parked[parked.panel_id] = parked
            self.parked_total += 1
            if older is not None:  # the panel parked again: its older connection is dead to it
                older.replaced = True
                async with older.ms.sends_held():
                    older.scope.cancel()
            with parked.scope:
                await ms.send(Standby(node_id=self.node_id, heartbeat_ms=s.heartbeat_ms, idle_ms=s.idle_ms))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ms.run_timers)
                    while True:
                        message = await ms.receive()  # HEARTBEATs: the connection answers them
                        if isinstance(message, Error | Bye):
                            break
                    nursery.cancel_scope.cancel()
        except (RemoteProtocolError, PeerTimeout, PeerClosed, LinkError, ProtocolError) as exc:
            log.debug("node %s: parked session of %s ended: %s", self.node_id, link.remote, exc)
        except BaseExceptionGroup as group:
            cause = first_error(group)
            if not isinstance(cause, RemoteProtocolError | PeerTimeout | PeerClosed | LinkError | ProtocolError):
                raise
            log.debug("node %s: parked session of %s ended: %s", self.node_id, link.remote, cause)
        finally:
            if parked is not None:
                if self.parked.get(parked.panel_id) is parked:
                    del self.parked[parked.panel_id]
                if not parked.handed:
                    self.ended += 1
                parked.done.set()
        if parked is not None and parked.handed:
            return KEEP_OPEN
        if parked is not None and parked.replaced:
            await ms.send_error(ErrorCode.REPLACED, f"a newer park of panel {parked.panel_id} replaced this one")
        await ms.aclose()
        return None

    async def hand_over(self) -> list[ParkedSession]:
        """The node takes over: every parked session, its tasks stopped between two frames,
        for the new ``Node`` to send TAKEOVER on (the caller stops ``listening`` first).

        Within ``HAND_OVER_BOUND`` in all: a session whose stream is stuck in a write (a peer
        that stopped reading) is left to end by itself, as is one that had not finished parking.
        """
        self._open = False
        taken = list(self.parked.values())
        self.parked.clear()
        ready: list[ParkedSession] = []
        with trio.move_on_after(HAND_OVER_BOUND):
            for parked in taken:
                async with parked.ms.sends_held():
                    parked.handed = True
                    parked.scope.cancel()
                    await parked.done.wait()
                if parked.ms.conn.state is State.PARKED:
                    ready.append(parked)
                else:  # its STANDBY never went out: the node could not take it over
                    parked.handed = False
                    await parked.ms.aclose()
        for parked in taken:
            if parked in ready:
                continue
            if not parked.done.is_set():
                parked.handed = False
                parked.scope.cancel()  # it closes itself
            elif parked.handed:  # stopped, but the time ran out before it was looked at
                parked.handed = False
                await parked.ms.aclose()
        return ready
