"""The panel's link to the host: reach the cluster, keep one session up, upload.

A ``HostLink`` belongs to one ``Panel`` and keeps trying to reach the cluster
(punch-out: dial the VIP; host-initiated: listen on the panel's own address and
let the active node dial in; serial: open the line), with jittered backoff. A
session resumes from the store's high-water mark and refuses any node whose
epoch is older than the newest the panel has seen (P5); ``_UplinkSession`` is
the panel's handler on the shared ``SessionDriver``: it uploads in seq order
with several batches in flight and applies what the node sends. The buffer,
the journal and what an ACK frees stay the panel's.
"""

from __future__ import annotations

import enum
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from protocol import (
    Ack,
    Alarm,
    AlarmAck,
    ConfigAck,
    ConfigDelta,
    ConfigOp,
    ConfigSnapshot,
    Error,
    ErrorCode,
    EventBatch,
    EventKind,
    EventRecord,
    Heartbeat,
    Hello,
    Message,
    PanelConnection,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    Standby,
    Takeover,
    Welcome,
)
from protocol.streams import (
    EndReason,
    Link,
    LinkError,
    MessageStream,
    PeerClosed,
    SessionDriver,
    SessionEnd,
    TlsError,
    client_context,
    dial,
    first_error,
    listen,
    open_serial,
    records_per_batch,
    serial_link,
    server_context,
)

if TYPE_CHECKING:
    from ._panel import Panel

__all__ = ["FIRMWARE", "HostLink", "LinkMode", "SessionRefused"]

FIRMWARE = "fieldsync-emu/0.1"


class LinkMode(enum.Enum):
    #: The panel dials the cluster's VIP on 30002 ("node punch-out").
    PUNCH_OUT = "punch-out"
    #: The panel listens on its own address, port 3001; the active node dials in.
    HOST_INITIATED = "host-initiated"
    #: The panel's host link is a serial line (RS-232/RS-485 style) to a node or comm server.
    SERIAL = "serial"


class SessionRefused(Exception):
    """The node ended the session with an ERROR."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"node sent ERROR {error.code}: {error.text}")
        self.error = error


class HostLink:
    """One panel's link manager: connect, reconnect with backoff, run one session at a time.

    Args:
        panel: the panel this link serves; it keeps the buffer, the journal and the epoch floor.
        rng: the panel's random source (the backoff jitter draws from it, after its boot ids).
    """

    def __init__(self, panel: Panel, rng: random.Random) -> None:
        settings = panel.settings
        self.panel = panel
        self.settings = settings
        self._rng = rng
        self._client_ctx: ssl.SSLContext | None = client_context(settings.tls) if settings.tls else None
        self._server_ctx: ssl.SSLContext | None = server_context(settings.tls) if settings.tls else None
        self.session_scope: trio.CancelScope | None = None
        self.session_epoch = 0
        self.session_node: str | None = None
        self.sessions = self.link_errors = self.protocol_errors = self.refused_stale = 0
        self.batches_sent = 0
        self.bytes_skipped = self.bad_frames = 0
        self.batch_records = settings.batch_records
        if settings.serial is not None:
            self.batch_records = min(settings.batch_records, records_per_batch(settings.serial))
        self.connected = trio.Event()
        self.disconnected = trio.Event()
        self.disconnected.set()
        #: Parked sessions (docs/protocol.md 6.3) by node name, and what became of them.
        self.parks: dict[str, PanelConnection] = {}
        self._park_scopes: dict[str, trio.CancelScope] = {}
        #: Clear from a TAKEOVER until its session's WELCOME (or its failure): no VIP dial
        #: meanwhile, whose session would replace the one being taken over (6.3 rule 5).
        self._no_takeover = trio.Event()
        self._no_takeover.set()
        self.parked_total = self.park_errors = self.takeovers = 0

    def __repr__(self) -> str:
        state = f"connected to {self.session_node} epoch {self.session_epoch}" if self.is_connected else "offline"
        return f"<HostLink panel {self.panel.panel_id} {self.settings.mode.value} {state}>"

    @property
    def is_connected(self) -> bool:
        return self.session_scope is not None and self.connected.is_set()

    def cancel_session(self) -> None:
        """End the current session, if any, and every parked one (the power went)."""
        if self.session_scope is not None:
            self.session_scope.cancel()
        for scope in list(self._park_scopes.values()):
            scope.cancel()

    async def listen(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        def refused(remote: str, exc: Exception) -> None:
            self.link_errors += 1
            self.panel.last_error = f"refused {remote}: {exc}"

        await listen(host, port, self._server_ctx, self._serve_link, on_refused=refused, task_status=task_status)

    async def _serve_link(self, link: Link) -> None:
        try:
            await self.run_link(link)
        except (LinkError, ProtocolError, SessionRefused, trio.TooSlowError) as exc:
            self._note_error(exc)

    async def dial_server(self) -> Link:
        host, port = self.settings.server
        return await dial(host, port, self._client_ctx)

    async def open_line(self) -> Link:
        assert self.settings.serial is not None
        stream = open_serial(self.settings.serial)
        try:
            return await serial_link(stream, self._client_ctx, server_side=False)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def reconnect_loop(self, connect: Callable[[], Awaitable[Link]]) -> None:
        s = self.settings
        delay = s.backoff_initial
        lost_at = -float("inf")
        while True:
            if self.is_connected or not self._no_takeover.is_set():
                # A parked session was taken over (6.3): in session already, or about to be,
                # and a session by the cluster's address would replace it (rule 5).
                await self._no_takeover.wait()
                await self.disconnected.wait()
                lost_at = trio.current_time()
                continue
            try:
                with trio.fail_after(s.connect_timeout):
                    link = await connect()
                if await self.run_link(link):
                    delay = s.backoff_initial
                    lost_at = trio.current_time()
            except (LinkError, ProtocolError, SessionRefused, trio.TooSlowError) as exc:
                self._note_error(exc)
            # Exponential backoff with jitter: a fleet must not reconnect in lockstep. Right
            # after losing a working session the standby is about to take the VIP, and a
            # refused connect costs nothing, so the cap stays low for a few seconds.
            cap = s.fast_retry_cap if trio.current_time() - lost_at < s.fast_retry_window else s.backoff_cap
            await trio.sleep(min(delay, cap) * (0.5 + self._rng.random() / 2))
            delay = min(s.backoff_cap, delay * s.backoff_factor)

    def _note_error(self, exc: BaseException) -> None:
        self.panel.last_error = str(exc)
        if isinstance(exc, ProtocolError) and not isinstance(exc, PeerTimeout):
            self.protocol_errors += 1
            if exc.code is ErrorCode.STALE_EPOCH:
                self.refused_stale += 1
        else:
            self.link_errors += 1

    def _hello(self) -> Hello:
        panel = self.panel
        stats = panel.buffer.statistics()
        return Hello(
            panel_id=panel.panel_id,
            boot_id=panel.boot_id,
            firmware=FIRMWARE,
            oldest_seq=stats.oldest_seq,
            newest_seq=stats.newest_seq,
            config_version=panel.config.version,
            config_digest=panel.config.digest,
            max_epoch=panel.max_epoch,
        )

    async def run_link(self, link: Link) -> bool:
        """Run one session on an established link; True if it got as far as WELCOME."""
        if link.peer is not None and not link.peer.startswith("node-"):
            await link.stream.aclose()
            raise TlsError(f"peer {link.remote} presents {link.peer!r}, not a node certificate")
        line = self.settings.serial if link.lossy else None
        conn = PanelConnection(
            now=trio.current_time(),
            epoch_floor=self.panel.max_epoch,
            handshake_timeout=self.settings.handshake_timeout,
            resync=line is not None,
            reply_timeout=line.reply_timeout if line is not None else None,
        )
        ms = MessageStream(
            link.stream,
            conn,
            name=f"panel {self.panel.panel_id}",
            inter_char_timeout=line.inter_char_timeout if line is not None else None,
        )
        try:
            if self.settings.park and (self.is_connected or not self._no_takeover.is_set()):
                return False  # a parked session was taken over while this one connected (6.3 rule 5)
            await self._handshake(ms)
            return True
        finally:
            stats = ms.statistics()
            self.bytes_skipped += stats.bytes_skipped
            self.bad_frames += stats.bad_crc
            await ms.aclose()

    async def _hello_answer(self, ms: MessageStream) -> Message:
        """Send HELLO and return the node's answer (an ERROR raises ``SessionRefused``)."""
        try:
            await ms.send(self._hello())
            with trio.fail_after(self.settings.handshake_timeout):
                first = await ms.receive()
        except RemoteProtocolError as exc:
            await ms.send_error(exc.code, exc.message)
            raise
        if isinstance(first, Error):
            raise SessionRefused(first)
        return first

    @staticmethod
    async def _refuse_stale(ms: MessageStream, what: str, epoch: int, floor: int) -> None:
        """Another session raised the panel's floor meanwhile: ``what``'s epoch is stale (P5)."""
        text = f"{what} epoch {epoch} < {floor}"
        await ms.send_error(ErrorCode.STALE_EPOCH, text)
        raise RemoteProtocolError(ErrorCode.STALE_EPOCH, text)

    async def _handshake(self, ms: MessageStream) -> None:
        """HELLO, then WELCOME (or ERROR), then the session (docs/protocol.md 6.2)."""
        first = await self._hello_answer(ms)
        if not isinstance(first, Welcome):
            raise RemoteProtocolError(ErrorCode.ILLEGAL_IN_STATE, f"expected WELCOME, got {type(first).__name__}")
        await self._streaming(ms, first)

    async def _streaming(self, ms: MessageStream, welcome: Welcome) -> None:
        panel = self.panel
        # One host session at a time: an equal or newer epoch replaces the old one.
        while self.session_scope is not None:
            self.session_scope.cancel()
            await self.disconnected.wait()
        if welcome.epoch < panel.max_epoch:  # another session raised the floor, before or while this one waited
            await self._refuse_stale(ms, "WELCOME", welcome.epoch, panel.max_epoch)
        panel.max_epoch = welcome.epoch
        for parked in self.parks.values():
            parked.raise_floor(welcome.epoch)  # their TAKEOVERs are judged by it (6.3 rule 4)
        panel.welcome_at.setdefault(welcome.epoch, trio.current_time())
        panel._resume_at(welcome.hwm)
        self.sessions += 1
        self.session_epoch = welcome.epoch
        self.session_node = welcome.node_id
        self.disconnected = trio.Event()
        end: SessionEnd | None = None  # None: a power-cycle or a newer session cancelled this one
        with trio.CancelScope() as scope:
            self.session_scope = scope
            self.connected.set()
            panel.record(EventKind.HOST_ONLINE)
            try:
                end = await SessionDriver(ms, _UplinkSession(self, ms, welcome.hwm + 1)).run()
            finally:
                self.session_scope = None
                self.connected = trio.Event()
                panel.record(EventKind.HOST_OFFLINE)
                self.disconnected.set()
        if end is not None and end.reason is EndReason.PEER_ERROR:
            assert isinstance(end.message, Error)
            raise SessionRefused(end.message)

    # -- parked sessions (docs/protocol.md 6.3) ----------------------------------------------

    async def park_loop(self, node: str, host: str, port: int) -> None:
        """Keep a session parked at ``node``'s park address whenever this panel is not in
        session with that node; tried again ``park_retry`` after each end or refusal."""
        s = self.settings
        while True:
            if self.is_connected and self.session_node == node:
                await self.disconnected.wait()
                continue
            try:
                with trio.fail_after(s.connect_timeout):
                    link = await dial(host, port, self._client_ctx)
                await self.run_park(link, node)
            except (LinkError, ProtocolError, SessionRefused, trio.TooSlowError) as exc:
                # Refused while that node is the active one (it parks nobody): expected, and
                # counted apart from the serving session's errors.
                self.park_errors += 1
                self.panel.last_park_error = f"park at node {node}: {exc}"
            await trio.sleep(s.park_retry * (0.5 + self._rng.random() / 2))

    async def run_park(self, link: Link, node: str) -> None:
        """One park connection: parked until it ends or a TAKEOVER makes it this panel's session."""
        if link.peer is not None and link.peer != f"node-{node}":
            await link.stream.aclose()
            raise TlsError(f"park address of node {node} ({link.remote}) presents {link.peer!r}")
        s, panel = self.settings, self.panel
        conn = PanelConnection(
            now=trio.current_time(), epoch_floor=panel.max_epoch, handshake_timeout=s.handshake_timeout, park=True
        )
        ms = MessageStream(link.stream, conn, name=f"panel {panel.panel_id} parked at {node}")
        scope = trio.CancelScope()
        self._park_scopes[node] = scope
        try:
            with scope:
                first = await self._hello_answer(ms)
                if not isinstance(first, Standby):
                    return  # BYE: the standby is stopping
                self.parks[node] = conn
                self.parked_total += 1
                takeover = await self._parked(ms)
                del self.parks[node]
                if takeover is None:
                    return
                # 6.3 rule 4: a fresh HELLO at once; the floor may have risen since parking.
                conn.raise_floor(panel.max_epoch)
                if takeover.epoch < panel.max_epoch:
                    await self._refuse_stale(ms, "TAKEOVER", takeover.epoch, panel.max_epoch)
                self.takeovers += 1
                # From here it is this panel's session like any other: its errors count as a
                # session's, not as the park's.
                self._no_takeover = trio.Event()
                try:
                    await self._taken_over(ms)
                finally:
                    self._no_takeover.set()
        finally:
            self.parks.pop(node, None)
            if self._park_scopes.get(node) is scope:
                del self._park_scopes[node]
            await ms.aclose()

    async def _taken_over(self, ms: MessageStream) -> None:
        try:
            await self._handshake(ms)
        except (LinkError, ProtocolError, SessionRefused, trio.TooSlowError) as exc:
            self._note_error(exc)

    async def _parked(self, ms: MessageStream) -> Takeover | None:
        """Hold a parked session (the connection probes and answers): its TAKEOVER, or None
        when the node ended it (ERROR, BYE)."""
        takeover: Takeover | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ms.run_timers)
                while True:
                    message = await ms.receive()
                    if isinstance(message, Takeover):
                        takeover = message
                        break
                    if isinstance(message, Error):
                        raise SessionRefused(message)
                    if not isinstance(message, Heartbeat):  # BYE: the standby stops
                        break
                async with ms.sends_held():  # the timers stop between two frames
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            cause = first_error(group)
            if isinstance(cause, PeerClosed):
                return None  # the standby went away: park again later
            raise cause from group
        return takeover


#: One ALARM's most records: its frame within the 1 MiB payload limit (docs/protocol.md 3, 7.4).
_ALARM_MOST = ((1 << 20) - 2) // 32


class _UplinkSession:
    """The panel's side of one session, for the ``SessionDriver``: upload in seq order
    with a window of batches in flight, free the buffer on ACK, apply configuration.

    A power-cycle ends the boot it was started in: from then on it sends nothing and
    takes nothing in, not even a message that was already on its way.
    """

    def __init__(self, link: HostLink, ms: MessageStream, next_seq: int) -> None:
        self.link = link
        self.panel = link.panel
        self.ms = ms
        self.boot = self.panel.boot_id
        self.next_seq = next_seq
        #: The last seq of this session's ALARMs (docs/protocol.md 7.6: they rise).
        self.alarm_sent = 0
        #: Last seq of each batch sent and not yet acknowledged, oldest first.
        self.in_flight: deque[int] = deque()
        self._parts: list[ConfigOp] = []

    def __repr__(self) -> str:
        return f"<_UplinkSession panel {self.panel.panel_id} next seq {self.next_seq} in flight {len(self.in_flight)}>"

    async def send_loop(self) -> None:
        link, panel, in_flight = self.link, self.panel, self.in_flight
        window = panel.settings.window
        while panel.boot_id == self.boot:  # a power-cycle ends this boot's session: send nothing of the next
            if panel.alarm_outbox and int.from_bytes(panel.alarm_outbox[-1][:8], "big") > self.alarm_sent:
                await self._send_alarms()  # ahead of any further batch (7.6)
                continue
            while in_flight and in_flight[0] <= panel._acked_seq:
                in_flight.popleft()
            if len(in_flight) >= window:
                await panel._new_data.wait()
                continue
            oldest = panel.buffer.oldest_seq if len(panel.buffer) else panel.buffer.next_seq
            if self.next_seq < oldest:
                await self._declare_server_lost(oldest - 1)
                continue
            data = panel.buffer.read(self.next_seq, link.batch_records)
            if not data:
                await panel._new_data.wait()
                continue
            batch = EventBatch(first_seq=int.from_bytes(data[:8], "big"), records=data)
            await self.ms.send(batch)
            link.batches_sent += 1
            in_flight.append(batch.last_seq)
            self.next_seq = batch.last_seq + 1

    async def _send_alarms(self) -> None:
        """The alarms' copies this session has not sent, in one ALARM (docs/protocol.md 7.6)."""
        after = self.alarm_sent
        unsent = [r for r in self.panel.alarm_outbox if int.from_bytes(r[:8], "big") > after]
        unsent = unsent[:_ALARM_MOST]
        alarm = Alarm(records=b"".join(unsent))
        self.alarm_sent = alarm.last_seq
        await self.ms.send(alarm)
        self.panel.alarms_sent += alarm.count

    async def _declare_server_lost(self, last: int) -> None:
        """The server holds this panel's events only to ``next_seq - 1``, yet the panel was
        acknowledged up to ``last`` and freed them (an asynchronous mirror's failover lost
        them): they can only be declared (docs/protocol.md 7.3), as one ``SERVER_LOST`` marker."""
        first, panel = self.next_seq, self.panel
        count = last - first + 1
        marker = EventRecord(seq=first, time_us=panel.now_us(), kind=EventKind.SERVER_LOST, card=last, aux=count)
        await self.ms.send(EventBatch(first_seq=first, records=marker.pack()))
        self.link.batches_sent += 1
        self.in_flight.append(last)
        self.next_seq = last + 1
        panel.server_lost += count

    async def handle(self, message: Message) -> bool:
        panel = self.panel
        if panel.boot_id != self.boot:
            # The power went while this message was on its way: it speaks of the old boot's
            # seqs, and an ACK applied to the new boot's buffer would free its unsent events.
            return False
        if isinstance(message, Ack):
            panel._acked(message)
        elif isinstance(message, AlarmAck):
            panel.alarm_stored(message.up_to_seq, by_lane=True)
        elif isinstance(message, ConfigDelta):
            panel.config.apply_delta(message.from_version, message.to_version, message.ops)
            panel._config_applied()
            await self.ms.send(ConfigAck(version=message.to_version, digest=panel.config.digest))
        elif isinstance(message, ConfigSnapshot):
            self._parts.extend(message.ops)
            if message.part == message.parts - 1:
                panel.config.apply_snapshot(message.version, self._parts)
                self._parts = []
                panel._config_applied()
                await self.ms.send(ConfigAck(version=message.version, digest=panel.config.digest))
        return True

    async def drain(self) -> None:
        """A panel has nothing to store: its BYE can go at once."""
