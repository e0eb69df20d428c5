"""Drive a sans-I/O connection from a trio Stream (h11's trio example, grown up).

``MessageStream`` is the only place where bytes meet a ``PanelConnection`` or
``HostConnection``: it loops on NEED_DATA, writes what the state machine
produced, runs its timers, and closes the stream on the way out. No business
logic lives here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterator

import trio

from .. import (
    ConnectionClosed,
    ConnectionStatistics,
    ErrorCode,
    HostConnection,
    Message,
    NeedData,
    PanelConnection,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
)
from ._errors import LinkError, PeerClosed, map_link_errors

__all__ = ["MessageStream"]

RECEIVE_SIZE = 64 * 1024


class MessageStream:
    """Messages over a byte stream, through one connection state machine.

    ``send`` may be called from several tasks (a lock keeps frames whole);
    ``receive`` from one task at a time.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: PanelConnection | HostConnection,
        *,
        name: str = "",
        inter_char_timeout: float | None = None,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.name = name
        #: Serial lines: silence this long inside a frame drops the partial frame.
        self.inter_char_timeout = inter_char_timeout
        self._send_lock = trio.Lock()
        # The scope ``run_timers`` sleeps in: its deadline is the connection's next one.
        self._timer_scope: trio.CancelScope | None = None
        self._error_sent = False
        # Set by the task that found a violation, just before it sends the ERROR and raises.
        self._ending = False

    def __repr__(self) -> str:
        return f"<MessageStream {self.name} {self.conn!r}>"

    async def send(self, message: Message) -> None:
        """Encode and write one message (raises LocalProtocolError before writing if illegal).

        Once another task of this session found a violation, a send waits for the end of
        the session instead: that task is writing the ERROR and raising, and an error
        from here would cancel it half-way (its nursery cancels on the first exception).
        """
        async with self._send_lock:
            if not self._ending:
                data = self.conn.send(message, trio.current_time())
                self._deadline_moved()
                with map_link_errors(f"{self.name}: sending {type(message).__name__}"):
                    await self.stream.send_all(data)
                return
        await trio.sleep_forever()

    @contextlib.asynccontextmanager
    async def sends_held(self) -> AsyncIterator[None]:
        """No frame is being written, nor starts, within the block (the send lock is held):
        for cancelling this stream's tasks without cutting a frame (a parked session's
        timers, handed over to the node that takes over, 6.3)."""
        async with self._send_lock:
            yield

    async def receive(self) -> Message:
        """The next message.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the state is ERROR); the
                ERROR naming it has been sent already.
            PeerClosed: the stream ended.
            LinkError: the transport failed.
        """
        try:
            return await self._receive()
        except RemoteProtocolError as exc:
            # Tell the peer now, from the task that found it, before the caller's nursery
            # cancels a writer that may be half-way through a frame (which would leave the
            # stream unable to carry the ERROR: seen under TLS by the conformance battery).
            await self.end_with_error(exc.code, exc.message)
            raise

    async def _receive(self) -> Message:
        conn = self.conn
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                timeout = self.inter_char_timeout if conn.pending_bytes else None
                with map_link_errors(f"{self.name}: receiving"):
                    if timeout is None:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    else:
                        with trio.move_on_after(timeout) as silence:
                            data = await self.stream.receive_some(RECEIVE_SIZE)
                        if silence.cancelled_caught:
                            conn.drop_partial_frame()
                            continue
                conn.receive_data(data, trio.current_time())
                continue
            if isinstance(event, ConnectionClosed):
                raise PeerClosed(f"{self.name}: peer closed the stream", clean=event.clean)
            # A message can bring a deadline forward: a HEARTBEAT to answer at once (the
            # timer task answers it, under the send lock and outside the read scope a planned
            # stop cancels, so an answer is never cut off mid-record), or a batch that makes a
            # quiet end busy (docs/protocol.md 9.1).
            self._deadline_moved()
            return event

    @contextlib.contextmanager
    def reading_paused(self) -> Iterator[None]:
        """Around a wait for this end's own capacity: the peer is not silent, we are deaf."""
        self.conn.pause_reading()
        self._deadline_moved()
        try:
            yield
        finally:
            self.conn.resume_reading(trio.current_time())
            self._deadline_moved()

    def _deadline_moved(self) -> None:
        # Sending or receiving moves the next deadline, mostly later (the next heartbeat, the
        # peer's silence limit), sometimes earlier (a HEARTBEAT to answer, a quiet end made
        # busy). Moving the sleeping timer's deadline costs a heap push and never wakes it:
        # waking it on every frame cost a thousand-panel fleet a third of its CPU
        # (benchmarks/replay.py --panels 1000), and waking it at a deadline that had moved
        # later cost an idle session a wake-up per probe (fieldsync bench idle).
        scope = self._timer_scope
        if scope is not None:
            deadline = self.conn.next_deadline()
            scope.deadline = math.inf if deadline is None else deadline

    async def run_timers(self) -> None:
        """Send heartbeats when due; raise PeerTimeout when the peer goes silent."""
        conn = self.conn
        while True:
            deadline = conn.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as self._timer_scope:
                await trio.sleep_forever()
            self._timer_scope = None
            async with self._send_lock:
                if self._ending:
                    break  # another task is ending the session: nothing more goes out
                try:
                    data = conn.handle_timer(trio.current_time())
                except PeerTimeout as exc:
                    self._ending = True
                    await self._write_error(exc)
                    raise
                if data:
                    with map_link_errors(f"{self.name}: sending HEARTBEAT"):
                        await self.stream.send_all(data)
        await trio.sleep_forever()

    async def end_with_error(self, code: ErrorCode, text: str) -> None:
        """End the session from this task: every other send stops, then the ERROR goes out
        (best effort, bounded in time, never raises)."""
        self._ending = True
        await self.send_error(code, text)

    async def send_error(self, code: ErrorCode, text: str) -> None:
        """Tell the peer why we stop: best effort, bounded in time, never raises.

        Only the first ERROR of a session goes out (docs/protocol.md 10: nothing after it).
        """
        with trio.move_on_after(1), contextlib.suppress(*_GOODBYE_ERRORS):
            async with self._send_lock:
                await self._write_error(RemoteProtocolError(code, text))

    async def _write_error(self, exc: ProtocolError) -> None:
        """Under the send lock: write the session's one ERROR, best effort."""
        if self._error_sent:
            return
        self._error_sent = True
        with trio.move_on_after(1), contextlib.suppress(*_GOODBYE_ERRORS):
            await self.stream.send_all(self.conn.send_error(exc.code, exc.message, trio.current_time()))

    async def aclose(self) -> None:
        """Close the stream, shielded and bounded, whatever state it is in."""
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_GOODBYE_ERRORS):
            await self.stream.aclose()
        if not isinstance(self.stream, trio.SocketStream):
            await trio.aclose_forcefully(self.stream)

    def statistics(self) -> ConnectionStatistics:
        return self.conn.statistics()


_GOODBYE_ERRORS = (ProtocolError, LinkError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
