"""One streaming session, either side: its tasks, and every way it ends.

A session in STREAMING runs three things at once: the timers (heartbeats, the peer's
silence), the side's sender (the panel's uploader, the node's ACK and config writer)
and the read loop, which hands each message the peer sends to the side's handler.
Both sides end the same ways, so the ending lives here once, not in the panel and
the node each:

- the peer says BYE or ERROR, or closes the stream: the session is over, quietly;
- any task finds a protocol violation: that task sends the ERROR and every other send
  stops (``MessageStream``), then the violation is raised;
- this side ends the session with a code, from any task (``end``: REPLACED, a refused
  commit): the driver's own task sends the ERROR between two whole frames, then the
  session's tasks are cancelled;
- a planned stop (``stop``): reading stops, the side drains (the node stores and
  acknowledges what it received), then BYE.

The trade-off: a side supplies only its handlers (``SessionHandler``) and gives up
running its own tasks inside the session; what it needs per session lives in the
handler object, not in the driver.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable
from typing import Protocol

import trio

from .. import (
    Bye,
    Error,
    ErrorCode,
    LocalProtocolError,
    Message,
    ProtocolError,
    RemoteProtocolError,
)
from ._errors import PeerClosed, first_error
from ._session import MessageStream

__all__ = ["EndReason", "SessionDriver", "SessionEnd", "SessionHandler"]


class EndReason(enum.Enum):
    #: The peer said BYE.
    PEER_BYE = "peer-bye"
    #: The peer sent ERROR.
    PEER_ERROR = "peer-error"
    #: The stream ended without either.
    PEER_CLOSED = "peer-closed"
    #: The handler said the session is over (a panel whose power went).
    HANDLER = "handler"
    #: This side ended it with an ERROR (``SessionDriver.end``).
    ENDED = "ended"
    #: A planned stop: drained, then BYE.
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnd:
    """How a session that raised nothing ended."""

    reason: EndReason
    #: The peer's ERROR or BYE, the ERROR this side sent, or the BYE of a planned stop.
    message: Error | Bye | None = None


class SessionHandler(Protocol):
    """What one side does in a session; the driver does the rest.

    A ``ProtocolError`` raised by any of these ends the session with an ERROR naming
    it (``INTERNAL`` for a ``LocalProtocolError``: our own bug), sent from the task
    that raised it; any other exception ends the session and propagates.
    """

    async def send_loop(self) -> None:
        """The side's writer: runs for the whole session (returning early is allowed)."""

    async def handle(self, message: Message) -> bool:
        """One message from the peer, never ERROR or BYE. False ends the session."""

    async def drain(self) -> None:
        """A planned stop, after reading stopped: what must go out before the BYE."""


class SessionDriver:
    """Runs one STREAMING session of ``ms`` with ``handler``; ``run`` once.

    ``end`` and ``stop`` may be called from any task, before or during ``run``.
    """

    def __init__(self, ms: MessageStream, handler: SessionHandler) -> None:
        self.ms = ms
        self.handler = handler
        self._ending: RemoteProtocolError | None = None
        self._end_asked = trio.Event()
        self._read_scope = trio.CancelScope()
        self._stop_reason: ErrorCode | None = None

    def __repr__(self) -> str:
        state = "ending" if self._ending else "stopping" if self._stop_reason else "running"
        return f"<SessionDriver {self.ms.name} {state}>"

    @property
    def ending(self) -> bool:
        """``end`` was called: this session will say ERROR and acknowledge nothing more."""
        return self._ending is not None

    def end(self, code: ErrorCode, text: str) -> None:
        """End the session with ERROR(code, text); the first call wins."""
        if self._ending is None:
            self._ending = RemoteProtocolError(code, text)
            self._end_asked.set()

    def stop(self, reason: ErrorCode = ErrorCode.SHUTTING_DOWN) -> None:
        """A planned stop: stop reading, let the handler drain, then BYE(reason)."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._read_scope.cancel()

    async def run(self) -> SessionEnd:
        """Run the session until it ends.

        Raises:
            RemoteProtocolError, PeerTimeout: the peer broke the protocol or went silent
                (the ERROR has been sent).
            LocalProtocolError: this side tried something illegal (ERROR INTERNAL sent).
            LinkError: the transport failed. Whatever else a handler raised.
        """
        end: SessionEnd | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.ms.run_timers)
                nursery.start_soon(self._guarded_send_loop)
                nursery.start_soon(self._end_when_asked, nursery.cancel_scope)
                with self._read_scope:
                    end = await self._read_loop()
                if end is None and self._ending is None:  # reading stopped: a planned stop
                    await self._guard(self.handler.drain())
                    assert self._stop_reason is not None
                    bye = Bye(epoch=self.ms.conn.session_epoch, reason=int(self._stop_reason))
                    await self._guard(self.ms.send(bye))
                    end = SessionEnd(reason=EndReason.STOPPED, message=bye)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if self._ending is not None:
            error = Error(epoch=self.ms.conn.session_epoch, code=int(self._ending.code), text=self._ending.message)
            return SessionEnd(reason=EndReason.ENDED, message=error)
        assert end is not None
        return end

    async def _read_loop(self) -> SessionEnd | None:
        ms = self.ms
        handle = self.handler.handle
        while True:
            try:
                message = await ms.receive()
            except PeerClosed:
                return SessionEnd(reason=EndReason.PEER_CLOSED)
            if isinstance(message, Error):
                return SessionEnd(reason=EndReason.PEER_ERROR, message=message)
            if isinstance(message, Bye):
                return SessionEnd(reason=EndReason.PEER_BYE, message=message)
            try:
                go_on = await handle(message)
            except ProtocolError as exc:
                await self._refuse(exc)
                raise
            if not go_on:
                return SessionEnd(reason=EndReason.HANDLER)

    async def _guarded_send_loop(self) -> None:
        await self._guard(self.handler.send_loop())

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except ProtocolError as exc:
            await self._refuse(exc)
            raise

    async def _refuse(self, exc: ProtocolError) -> None:
        if isinstance(exc, LocalProtocolError):
            await self.ms.end_with_error(ErrorCode.INTERNAL, f"this end's bug: {exc.message}")
        else:
            await self.ms.end_with_error(exc.code, exc.message)

    async def _end_when_asked(self, scope: trio.CancelScope) -> None:
        await self._end_asked.wait()
        assert self._ending is not None
        # Under the send lock: a frame being written is finished first, then the ERROR.
        await self.ms.end_with_error(self._ending.code, self._ending.message)
        scope.cancel()
