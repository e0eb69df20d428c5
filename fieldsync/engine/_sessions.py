"""The node's sessions: admission, one session per panel, and the node's side of each.

A link comes in (accepted, dialed or a serial line); ``_Sessions.serve_link`` reads
the HELLO, admits or refuses it (docs/protocol.md 6.2), retires an older session of
the same panel (``_take_over``, the one place that replaces a session), sends WELCOME
and hands the session to the ``SessionDriver``. The driver runs it (timers, the
writer, the read loop, every way it ends); ``_Session`` only says what a message
means to the node and what its writer sends: ACKs after commit, configuration pushes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import trio

from protocol import (
    Ack,
    Alarm,
    AlarmAck,
    ConfigAck,
    ErrorCode,
    EventBatch,
    Hello,
    HostConnection,
    Message,
    ProtocolError,
    RemoteProtocolError,
    Welcome,
)
from protocol.streams import Link, LinkError, MessageStream, SerialLine, SessionDriver
from storage import StoreError

if TYPE_CHECKING:
    from ._node import Node
    from ._parking import ParkedSession

__all__: list[str] = []

log = logging.getLogger("fieldsync.node")

#: What ``store.write_status`` takes per panel: (panel, connected, node, epoch, acked,
#: newest, config version, time).
StatusRow = tuple[int, int, str, int, int, int, int, int]


@dataclasses.dataclass(slots=True)
class _Counts:
    sessions_total: int = 0
    rejected: int = 0
    protocol_errors: int = 0
    link_errors: int = 0
    #: Line noise skipped and frames failing their CRC on serial lines.
    bytes_skipped: int = 0
    bad_frames: int = 0
    #: ``protocol_errors`` by the code that ended the session (the metrics' label).
    protocol_error_codes: dict[ErrorCode, int] = dataclasses.field(default_factory=dict)

    def protocol_error(self, code: ErrorCode) -> None:
        self.protocol_errors += 1
        self.protocol_error_codes[code] = self.protocol_error_codes.get(code, 0) + 1


class _Session:
    """One panel's session with this node: the driver's ``SessionHandler``.

    The ingest answers its batches through ``answered`` (an ACK is owed) or ``fail``
    (the session ends with that ERROR and acknowledges nothing more).
    """

    def __init__(self, node: Node, ms: MessageStream, hello: Hello) -> None:
        self.node = node
        self.ms = ms
        self.hello = hello
        self.panel_id = hello.panel_id
        self.conn: HostConnection = ms.conn  # type: ignore[assignment]
        self.driver = SessionDriver(ms, self)
        #: A batch was answered by the store: an ACK is owed even if the hwm did not move.
        self.ack_due = False
        #: The highest ACK taken to send (it may not be written yet: ``conn.acked_seq`` lags).
        self.ack_taken = 0
        #: The alarm lane (docs/protocol.md 7.6): the last seq of the ALARMs the store has
        #: answered, and the highest ALARM_ACK taken to send.
        self.alarm_stored = 0
        self.alarm_ack_taken = 0
        self.newest_seq = hello.newest_seq
        #: The configuration the panel holds as far as this session knows (HELLO, then pushes).
        self.config_sent = hello.config_version
        self.digest_sent = hello.config_digest
        #: A CONFIG_ACK after a delta showed another digest: the next push is a snapshot.
        self.need_snapshot = False
        #: The operator's resync request this session's next snapshot answers (its time), if any.
        self.resync_at: int | None = None
        self.wake = trio.Event()
        self.wake.set()  # configuration sync starts right after WELCOME (docs/protocol.md 8.3)
        #: WELCOME went out: the session is the panel's, and its status is worth reporting.
        self.welcomed = False
        self.done = trio.Event()

    def __repr__(self) -> str:
        return f"<Session panel {self.panel_id} acked {self.conn.acked_seq} of {self.conn.sent_seq}>"

    def answered(self) -> None:
        """The store answered a batch of this session: an ACK is owed (7.4), duplicates too."""
        self.ack_due = True
        self.wake.set()

    def alarm_answered(self, last_seq: int) -> None:
        """The store holds this session's alarms up to ``last_seq``: an ALARM_ACK is owed."""
        self.alarm_stored = max(self.alarm_stored, last_seq)
        self.wake.set()

    def take_alarm_ack(self) -> AlarmAck | None:
        """The ALARM_ACK owed now, if any (taken once, as ``take_ack``)."""
        if self.driver.ending or self.alarm_stored <= self.alarm_ack_taken:
            return None
        self.alarm_ack_taken = self.alarm_stored
        return AlarmAck(epoch=self.node.epoch, up_to_seq=self.alarm_stored)

    def fail(self, code: ErrorCode, text: str) -> None:
        self.driver.end(code, text)

    def take_ack(self) -> Ack | None:
        """The ACK owed now, if any, up to the node's hwm (``_Ingest``, the one copy).

        Taking it is what makes it no longer owed, so the writer and a stopping session
        never both send the same one. The hwm may be ahead of this session (a replaced
        session's batches): the ACK never goes past what this session received.
        """
        if self.driver.ending:
            return None
        taken = max(self.ack_taken, self.conn.acked_seq)
        up_to = max(taken, min(self.node.ingest.hwm(self.panel_id), self.conn.sent_seq))
        if not self.ack_due and up_to == taken:
            return None
        self.ack_due = False
        self.ack_taken = up_to
        return Ack(epoch=self.node.epoch, up_to_seq=up_to)

    # -- SessionHandler ------------------------------------------------------------------

    async def send_loop(self) -> None:
        config = self.node.config
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            alarm_ack = self.take_alarm_ack()
            if alarm_ack is not None:
                await self.ms.send(alarm_ack)
            ack = self.take_ack()
            if ack is not None:
                await self.ms.send(ack)
            if config.behind(self):
                await config.push(self)

    async def handle(self, message: Message) -> bool:
        if isinstance(message, Alarm):
            with self.ms.reading_paused():  # only while this panel has ALARM_WINDOW queued
                await self.node.ingest.put_alarm(self, message)
        elif isinstance(message, EventBatch):
            self.newest_seq = max(self.newest_seq, message.last_seq)
            with self.ms.reading_paused():  # waiting on our own commit capacity
                await self.node.ingest.put(self, message)
        elif isinstance(message, ConfigAck):
            self.node.config.acked(self.panel_id, message.version)
            push = self.conn.last_acked_push
            if push is not None and message.digest != push.digest:
                # docs/protocol.md 8.5: the panel holds other content than it was sent.
                if push.snapshot:
                    self.fail(
                        ErrorCode.CONFIG_DIGEST,
                        f"after the snapshot of version {push.version} the panel's digest is "
                        f"{message.digest.hex()[:16]}..., not {push.digest.hex()[:16]}...",
                    )
                else:
                    self.need_snapshot = True
                    self.digest_sent = message.digest
                    self.wake.set()
        return True

    async def drain(self) -> None:
        """A planned stop: what the session received is stored and acknowledged (then the driver's BYE)."""
        await self.node.ingest.wait_drained(self.panel_id)
        for owed in (self.take_alarm_ack(), self.take_ack()):
            if owed is not None:
                await self.ms.send(owed)


class _Sessions:
    """Every session of one node, at most one per panel."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.live: dict[int, _Session] = {}
        self.counts = _Counts()
        #: For the next status write: rows of sessions that ended, sessions that started.
        self.ended: dict[int, StatusRow] = {}
        self.started: list[tuple[int, int, int]] = []
        #: Panels whose parked session this node took over, until that session ends: its
        #: dial loop waits (a dialed session would replace it, docs/protocol.md 6.3 rule 5).
        self.adopting: dict[int, trio.Event] = {}

    def __repr__(self) -> str:
        return f"<Sessions {len(self.live)} live, {self.counts.sessions_total} in all>"

    async def serve_link(self, link: Link, *, expected: int | None = None, line: SerialLine | None = None) -> bool:
        """Run one panel session; True if it reached STREAMING.

        Over a serial ``line`` the session resynchronizes on noise and times out
        a config push whose CONFIG_ACK never comes (a frame lost on the line).
        """
        node = self.node
        s = node.settings
        conn = HostConnection(
            now=trio.current_time(),
            handshake_timeout=s.handshake_timeout,
            resync=line is not None,
            reply_timeout=line.reply_timeout if line is not None else None,
        )
        ms = MessageStream(
            link.stream,
            conn,
            name=f"node {node.node_id} <- {link.remote}",
            inter_char_timeout=line.inter_char_timeout if line is not None else None,
        )
        return await self._serve_stream(link, ms, expected)

    def expect_adopted(self, panel_id: int) -> None:
        """Before ``serve_adopted`` starts: the panel's dial loop waits from now on."""
        self.adopting[panel_id] = trio.Event()

    async def serve_adopted(self, parked: ParkedSession) -> bool:
        """A parked session this node took over (docs/protocol.md 6.3): its TAKEOVER is sent,
        the panel's fresh HELLO comes next on the same connection."""
        try:
            # Plain text has no certificate to bind the fresh HELLO to: the panel that parked.
            return await self._serve_stream(parked.link, parked.ms, parked.panel_id)
        finally:
            done = self.adopting.pop(parked.panel_id, None)
            if done is not None:
                done.set()

    async def _serve_stream(self, link: Link, ms: MessageStream, expected: int | None) -> bool:
        node, counts = self.node, self.counts
        s = node.settings
        try:
            try:
                with trio.fail_after(s.handshake_timeout):
                    hello = await ms.receive()
            except trio.TooSlowError:
                await ms.send_error(ErrorCode.TIMEOUT, "no HELLO in time")
                counts.protocol_error(ErrorCode.TIMEOUT)
                return False
            if not isinstance(hello, Hello):
                # Only ERROR or BYE can come before HELLO: a peer giving up (on a serial
                # line, often the tail of the previous session).
                node.last_error = f"{link.remote}: {type(hello).__name__} instead of HELLO"
                return False
            refusal = node._admit(link, hello, expected)
            if refusal is not None:
                counts.rejected += 1
                node.last_error = refusal[1]
                log.warning("panel %d refused: %s", hello.panel_id, refusal[1])
                await ms.send_error(*refusal)
                return False
            await self._serve(_Session(node, ms, hello))
            return True
        except RemoteProtocolError as exc:
            node._peer_broke_protocol(link, exc)
            return False
        except (LinkError, ProtocolError) as exc:
            counts.link_errors += 1
            node.last_error = f"{link.remote}: {exc}"
            return False
        except StoreError as exc:
            node.last_error = str(exc)
            await ms.send_error(ErrorCode.STORE_REFUSED, str(exc))
            return False
        finally:
            stats = ms.statistics()
            counts.bytes_skipped += stats.bytes_skipped
            counts.bad_frames += stats.bad_crc
            await ms.aclose()

    async def _serve(self, session: _Session) -> None:
        node, pid = self.node, session.panel_id
        try:
            await self._take_over(session)
            if node.stopping:
                session.driver.stop()
            # No store round trip per session: the node's hwm is authoritative while its
            # epoch is the store's, and bookkeeping goes out with the status write.
            hwm = node._resume_hwm(session.hello)
            if session.hello.newest_seq < hwm and node.store is not None:
                # It lost its counter and numbers again from hwm + 1 (7.3): the lane's copies
                # above hwm stand for records that never reached the store (7.6).
                await node.db(node.store.orphan_alarms, pid, hwm)
            self.started.append((pid, session.hello.boot_id, node.now_us()))
            await session.ms.send(
                Welcome(
                    node_id=node.node_id,
                    epoch=node.epoch,
                    hwm=hwm,
                    config_version=node.config.version,
                    config_digest=node.config.digest,
                    heartbeat_ms=node.settings.heartbeat_ms,
                    idle_ms=node.settings.idle_ms,
                )
            )
            session.welcomed = True
            self.counts.sessions_total += 1
            await session.driver.run()
        finally:
            if self.live.get(pid) is session:
                del self.live[pid]
                if session.welcomed:
                    self.ended[pid] = self.status_row(session, connected=False)
            session.done.set()

    async def _take_over(self, session: _Session) -> None:
        """Make ``session`` its panel's one session (docs/protocol.md 7.5).

        An older session of the panel ends with REPLACED, and every batch it queued
        is committed (or refused) before this returns: the WELCOME's hwm must count
        them, or the panel would number new events into seqs they take. Taking the
        slot happens with no wait between the last look and the claim, so of two
        sessions racing for one panel the later always replaces the earlier.
        """
        pid = session.panel_id
        ingest = self.node.ingest
        while True:
            old = self.live.get(pid)
            if old is not None:
                old.fail(ErrorCode.REPLACED, f"a newer session of panel {pid} replaced this one")
                with trio.move_on_after(2):
                    await old.done.wait()
                if self.live.get(pid) is old:  # it did not end in time: it no longer counts
                    del self.live[pid]
            with trio.move_on_after(self.node.settings.handshake_timeout):
                await ingest.wait_drained(pid)
            if pid not in self.live:
                break
        self.live[pid] = session

    async def stop_all(self) -> None:
        """A planned stop: every session stops reading, stores and acknowledges what it
        received, says BYE(SHUTTING_DOWN); bounded by ``drain_timeout``."""
        with trio.move_on_after(self.node.settings.drain_timeout):
            for session in list(self.live.values()):
                session.driver.stop()
            for session in list(self.live.values()):
                await session.done.wait()

    def status_rows(self, *, final: bool) -> list[StatusRow]:
        rows = list(self.ended.values())
        rows += [self.status_row(s, connected=not final) for s in self.live.values() if s.welcomed]
        return rows

    def status_row(self, s: _Session, *, connected: bool) -> StatusRow:
        node = self.node
        return (
            s.panel_id,
            int(connected),
            node.node_id,
            node.epoch,
            s.conn.acked_seq,
            s.newest_seq,
            s.config_sent,
            node.now_us(),
        )
