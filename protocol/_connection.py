"""The two session state machines: ``PanelConnection`` and ``HostConnection``.

Sans-I/O in the h11 mould: ``receive_data(bytes, now)`` in, ``next_event()``
out (a message, ``ConnectionClosed`` or ``NEED_DATA``), ``send(message, now)``
returns the bytes to write. Time is an argument: the state machines never read
a clock, they expose ``next_deadline()`` and act in ``handle_timer(now)``
(aioquic's shape), so a test drives them with exact virtual times.

Beyond the transition table in ``_state.py`` they enforce the sequencing rules
the promises rest on: batches run in seq order with no undeclared gap, acks only
move forward and never past what was sent, config versions chain, and a panel
never accepts a node whose epoch is older than the newest it has seen (P5).

Why one module of this size (as h11's ``_connection.py``): the two machines share one base
class whose rules are the spec's sections 6-10 in order; the transition table itself is
in ``_state.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Final

from ._codec import decode_payload, encode_payload, message_type
from ._errors import ErrorCode, LocalProtocolError, PeerTimeout, ProtocolError, RemoteProtocolError
from ._framing import DEFAULT_MAX_PAYLOAD, FrameDecoder, encode_frame
from ._messages import (
    Ack,
    Alarm,
    AlarmAck,
    Bye,
    ConfigAck,
    ConfigDelta,
    ConfigSnapshot,
    Error,
    EventBatch,
    Heartbeat,
    Hello,
    Message,
    Standby,
    Takeover,
    Welcome,
)
from ._state import TRANSITIONS, Direction, Role, State

__all__ = [
    "NEED_DATA",
    "ConfigPush",
    "ConnectionClosed",
    "ConnectionStatistics",
    "HostConnection",
    "NeedData",
    "PanelConnection",
]

DEFAULT_HANDSHAKE_TIMEOUT: Final = 5.0
DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_HEARTBEAT_MISSES: Final = 3
#: Rule 2's slack (docs/protocol.md 9.1): a quiet panel's probe goes up to this much after I,
#: at the next multiple of it on the clock, so that a fleet's probes share wake-ups. Never
#: more than a tenth of I or half of H (the quiet node's limit, I + 3 H, keeps 2.5 H).
PROBE_SLACK: Final = 0.1
#: The states whose liveness runs (docs/protocol.md 9.1): a parked session's as a quiet one's.
_LIVE: Final = frozenset({State.STREAMING, State.PARKED})


class NeedData:
    """Sentinel type: ``next_event`` needs more bytes before it can say more."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The byte stream ended. ``clean`` when a BYE or ERROR ended the session first."""

    clean: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStatistics:
    role: Role
    state: State
    epoch: int
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    bytes_skipped: int
    bad_crc: int
    acked_seq: int
    #: The highest seq sent (panel) or received (host).
    sent_seq: int


@dataclasses.dataclass(slots=True)
class _SnapshotProgress:
    version: int
    digest: bytes
    parts: int
    next_part: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigPush:
    """A configuration push completed in this session: a delta, or a snapshot's last part."""

    version: int
    #: The digest the push carried: what the panel must hold after applying it.
    digest: bytes
    snapshot: bool


class _Connection:
    role: Role

    def __init__(
        self,
        *,
        now: float,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_misses: int = DEFAULT_HEARTBEAT_MISSES,
        resync: bool = False,
        reply_timeout: float | None = None,
        park: bool = False,
    ) -> None:
        """``park``: a connection to (panel) or on (host) a standby node's park address
        (docs/protocol.md 6.3), where HELLO is answered with STANDBY until a TAKEOVER."""
        if handshake_timeout <= 0 or heartbeat_interval <= 0 or heartbeat_misses < 1:
            raise ValueError("timeouts and intervals must be positive, misses at least 1")
        if reply_timeout is not None and reply_timeout <= 0:
            raise ValueError("reply_timeout must be positive")
        self._decoder = FrameDecoder(max_payload=max_payload, resync=resync)
        #: A park connection before its TAKEOVER: STANDBY is its answer to HELLO, not WELCOME.
        self.park = park
        self._state = self._initial_state()
        self._created = now
        self._handshake_timeout = handshake_timeout
        self._interval = heartbeat_interval
        # I, the quiet panel's probe interval; both ends take it from the WELCOME.
        self._idle_interval = heartbeat_interval
        self._misses = heartbeat_misses
        # When this end became busy (docs/protocol.md 9.1), None while it is quiet.
        self._busy_since: float | None = None
        # A batch went out (panel) or came in (node) that no ACK has covered yet.
        self._ack_owed = False
        # Panel: a HEARTBEAT went out and no frame has come since (a probe).
        self._probe_out = False
        # Node: a HEARTBEAT came in and nothing has gone out since (rule 4: answer it).
        self._answer_due = False
        self._rx_now = now
        self._last_received = now
        self._last_sent = now
        self._frames_in = 0
        self._frames_out = 0
        self._bytes_out = 0
        self._reading_paused = False
        #: Epoch of this session once the handshake is done (0 before).
        self.session_epoch = 0
        #: The store's high-water mark the session resumed from.
        self.hwm = 0
        #: Highest seq acknowledged so far in this session.
        self.acked_seq = 0
        # Next seq a batch must start at (the first batch may overlap below it).
        self._next_seq = 1
        # Seq after the previous batch of this session (0 before the first batch).
        self._prev_last: int | None = None
        #: The alarm lane (docs/protocol.md 7.6): the last seq of the session's ALARMs sent
        #: (panel) or received (host), and the highest seq an ALARM_ACK covered.
        self.alarm_sent_seq = 0
        self.alarm_acked_seq = 0
        #: The panel's config version: the newest pushed (host) or applied (panel).
        self.config_version = 0
        #: The config version the panel acknowledged last (its HELLO's before any).
        self.config_acked = 0
        # Pushes completed and not yet acknowledged, oldest first (docs/protocol.md 8.4).
        self._pushes: list[ConfigPush] = []
        #: The push the latest CONFIG_ACK acknowledged.
        self.last_acked_push: ConfigPush | None = None
        self._config_acks = 0
        self._snapshot: _SnapshotProgress | None = None
        # On a line that can lose whole frames (resync), the peer may be alive and
        # still never answer: a lost EVENT_BATCH or ACK (panel), a lost config push
        # or CONFIG_ACK (host). Waiting longer than this for progress ends the session.
        self._reply_timeout = reply_timeout
        self._reply_since: float | None = None
        self._reply_seen = 0

    # -- public surface ----------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def heartbeat_ms(self) -> int:
        """The heartbeat interval in force (a panel adopts the node's from WELCOME)."""
        return round(self._interval * 1000)

    @property
    def idle_ms(self) -> int:
        """The idle interval in force: a quiet panel's probe interval (from WELCOME)."""
        return round(self._idle_interval * 1000)

    @property
    def busy(self) -> bool:
        """Whether this end is busy (docs/protocol.md 9.1): something is outstanding."""
        return self._busy_since is not None

    @property
    def sent_seq(self) -> int:
        return self._next_seq - 1

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} state={self._state.value} epoch={self.session_epoch} "
            f"seq={self.sent_seq} acked={self.acked_seq}>"
        )

    def receive_data(self, data: bytes | bytearray, now: float) -> None:
        """Feed bytes read from the stream; ``b""`` means the peer closed it."""
        self._rx_now = now
        self._decoder.feed(data)

    def next_event(self) -> Message | ConnectionClosed | NeedData:
        """Parse the next message, or say NEED_DATA or that the stream ended.

        Raises:
            RemoteProtocolError: the peer sent something illegal; the state is ERROR.
        """
        if self._state is State.ERROR:
            raise RemoteProtocolError(ErrorCode.ILLEGAL_IN_STATE, "connection is in ERROR; nothing more is read")
        try:
            while True:
                frame = self._decoder.next_frame()
                if frame is None:
                    if self._decoder.at_eof:
                        clean = self._state is State.CLOSED
                        self._state = State.CLOSED
                        return ConnectionClosed(clean=clean)
                    return NEED_DATA
                message = decode_payload(frame.type, frame.payload)
                self._frames_in += 1
                self._last_received = self._rx_now
                if not self._crossed(message):
                    break
            self._transition(Direction.RECEIVE, message)
            self._on_receive(message)
            self._probe_out = False
            self._update_busy(self._rx_now)
            self._track_reply(self._rx_now)
        except ProtocolError as exc:
            self._state = State.ERROR
            if isinstance(exc, LocalProtocolError):  # pragma: no cover - defensive
                raise RemoteProtocolError(exc.code, exc.message) from None
            raise
        return message

    def send(self, message: Message, now: float) -> bytes:
        """Return the bytes that carry ``message``; check it is legal first.

        Raises:
            LocalProtocolError: the message is illegal now; the state becomes ERROR
                (except when sending ERROR itself, which is always allowed).
        """
        try:
            self._transition(Direction.SEND, message)
            self._on_send(message)
            self._answer_due = False
            self._update_busy(now)
            self._track_reply(now)
        except LocalProtocolError:
            self._state = State.ERROR
            raise
        version = self._decoder.peer_version
        if isinstance(message, Error) and version is not None and message.code == ErrorCode.UNSUPPORTED_VERSION:
            # The header and ERROR layouts are the same in every version: answer in the peer's.
            data = encode_frame(message_type(message), encode_payload(message), version=version)
        else:
            data = encode_frame(message_type(message), encode_payload(message))
        self._frames_out += 1
        self._bytes_out += len(data)
        self._last_sent = now
        return data

    def send_error(self, code: ErrorCode, text: str, now: float) -> bytes:
        """Build and send an ERROR carrying this end's epoch; allowed in ERROR too."""
        return self.send(Error(epoch=self._own_epoch(), code=int(code), text=text[:1000]), now)

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame received in part (what an inter-character timeout drops)."""
        return self._decoder.pending

    def drop_partial_frame(self) -> int:
        """The line went silent inside a frame: skip what came of it (counted as skipped).

        Only a resynchronizing connection (serial) may do this.
        """
        if not self._decoder.resync:
            raise LocalProtocolError(
                ErrorCode.ILLEGAL_IN_STATE, "only a resync (serial) connection drops partial frames"
            )
        return self._decoder.drop_pending()

    def pause_reading(self) -> None:
        """This end stops reading by choice (its own backpressure): the peer's
        silence must not count against it until ``resume_reading``."""
        self._reading_paused = True

    def resume_reading(self, now: float) -> None:
        self._reading_paused = False
        self._last_received = max(self._last_received, now)
        if self._reply_since is not None:
            self._reply_since = max(self._reply_since, now)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has something to do, or None."""
        if self._state in (State.HELLO_SENT, State.AWAIT_HELLO):
            return self._handshake_start() + self._handshake_timeout
        if self._state not in _LIVE:
            return None
        beat = self._beat_due()
        if self._reading_paused:
            return beat
        deadline = self._silence_limit()
        if beat is not None:
            deadline = min(deadline, beat)
        if self._reply_since is not None and self._reply_timeout is not None:
            deadline = min(deadline, self._reply_since + self._reply_timeout)
        return deadline

    def handle_timer(self, now: float) -> bytes:
        """Act on deadlines: returns a HEARTBEAT's bytes when one is due.

        Raises:
            PeerTimeout: the handshake took too long or the peer missed its
                heartbeats; the state is ERROR.
        """
        if self._state in (State.HELLO_SENT, State.AWAIT_HELLO):
            if now >= self._handshake_start() + self._handshake_timeout:
                self._state = State.ERROR
                raise PeerTimeout(
                    f"handshake not done within {self._handshake_timeout:g} s (state {self._state.value})"
                )
            return b""
        if self._state not in _LIVE:
            return b""
        if now >= self._silence_limit() and not self._reading_paused:
            self._state = State.ERROR
            raise PeerTimeout(self._silence_text(now))
        if (
            self._reply_since is not None
            and self._reply_timeout is not None
            and now >= self._reply_since + self._reply_timeout
            and not self._reading_paused
        ):
            self._state = State.ERROR
            raise PeerTimeout(
                f"no {self._awaited_reply()} within {self._reply_timeout:g} s though the peer is alive: "
                "a frame was lost on the line"
            )
        beat = self._beat_due()
        if beat is not None and now >= beat:
            return self.send(Heartbeat(epoch=self._own_epoch()), now)
        return b""

    def statistics(self) -> ConnectionStatistics:
        frames = self._decoder.statistics()
        return ConnectionStatistics(
            role=self.role,
            state=self._state,
            epoch=self.session_epoch,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            bytes_in=frames.bytes_received,
            bytes_out=self._bytes_out,
            bytes_skipped=frames.bytes_skipped,
            bad_crc=frames.bad_crc,
            acked_seq=self.acked_seq,
            sent_seq=self.sent_seq,
        )

    # -- machinery shared by both roles ----------------------------------------------

    def _initial_state(self) -> State:
        raise NotImplementedError

    def _reply_progress(self) -> tuple[int, bool]:
        """(a counter that grows when the awaited reply comes, whether one is awaited)."""
        raise NotImplementedError

    def _crossed(self, message: Message) -> bool:
        """A message that crossed one of this end's own in flight, to be dropped unread."""
        return False

    def _awaited_reply(self) -> str:
        raise NotImplementedError

    def _track_reply(self, now: float) -> None:
        if self._reply_timeout is None or self._state is not State.STREAMING:
            self._reply_since = None
            return
        progress, waiting = self._reply_progress()
        if not waiting:
            self._reply_since = None
        elif self._reply_since is None or progress != self._reply_seen:
            self._reply_since = now
        self._reply_seen = progress

    def _handshake_start(self) -> float:
        return self._created

    # -- liveness (docs/protocol.md 9.1) ---------------------------------------------

    def _is_busy(self) -> bool:
        """A batch or an ALARM sent or received awaits its ACK (duplicates too), or a push its
        CONFIG_ACK."""
        return (
            self._ack_owed
            or self.alarm_acked_seq < self.alarm_sent_seq
            or bool(self._pushes)
            or self._snapshot is not None
        )

    def _acked(self, up_to_seq: int) -> None:
        self.acked_seq = up_to_seq
        if up_to_seq >= (self._prev_last or 0):  # every batch so far is covered (7.4)
            self._ack_owed = False

    def _update_busy(self, now: float) -> None:
        if self._state not in _LIVE or not self._is_busy():
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = now

    def _beat_due(self) -> float | None:
        """When this end must send a HEARTBEAT if nothing else goes out (rules 1-4)."""
        if self._answer_due:
            return self._rx_now
        if self._busy_since is not None:
            return max(self._last_sent, self._busy_since) + self._interval
        return self._quiet_beat()

    def _quiet_beat(self) -> float | None:
        raise NotImplementedError

    def _silence_limit(self) -> float:
        """When the peer's silence ends the session (rule 5)."""
        if self._busy_since is not None:
            return max(self._last_received, self._busy_since) + self._interval * self._misses
        return self._last_received + self._idle_interval + self._interval * self._misses

    def _silence_text(self, now: float) -> str:
        silent = now - self._last_received
        if self._busy_since is not None:
            waited = now - max(self._last_received, self._busy_since)
            return (
                f"no frame from the peer for {silent:.3f} s, {waited:.3f} s of it while this end waited "
                f"({self._misses} heartbeats of {self._interval:g} s)"
            )
        return (
            f"no frame from the peer for {silent:.3f} s (the idle interval {self._idle_interval:g} s "
            f"and {self._misses} heartbeats of {self._interval:g} s)"
        )

    def _adopt_intervals(self, answer: Welcome | Standby) -> None:
        self._interval = answer.heartbeat_ms / 1000
        self._idle_interval = answer.idle_ms / 1000

    def _own_epoch(self) -> int:
        return self.session_epoch

    def _transition(self, direction: Direction, message: Message) -> None:
        kind = message_type(message)
        new = TRANSITIONS.get((self.role, self._state, direction, kind))
        if new is None:
            text = f"{self.role.value} cannot {direction.value} {kind.name} in state {self._state.value}"
            if direction is Direction.SEND:
                raise LocalProtocolError(ErrorCode.ILLEGAL_IN_STATE, text)
            raise RemoteProtocolError(ErrorCode.ILLEGAL_IN_STATE, text)
        self._state = new

    def _on_send(self, message: Message) -> None:
        raise NotImplementedError

    def _on_receive(self, message: Message) -> None:
        raise NotImplementedError

    def _check_batch(self, batch: EventBatch, error: type[ProtocolError]) -> None:
        # docs/protocol.md 7.3: the first batch starts at or below hwm + 1, every later
        # one right after the previous batch (which may still be below hwm).
        if self._prev_last is None:
            if batch.first_seq > self.hwm + 1:
                raise error(
                    ErrorCode.SEQ_GAP,
                    f"first batch starts at seq {batch.first_seq} but the store holds up to {self.hwm}: "
                    f"seqs {self.hwm + 1}..{batch.first_seq - 1} would be missing undeclared",
                )
        elif batch.first_seq != self._prev_last + 1:
            code = ErrorCode.SEQ_GAP if batch.first_seq > self._prev_last + 1 else ErrorCode.SEQ_ORDER
            raise error(
                code,
                f"batch starts at seq {batch.first_seq}; the previous batch ended at {self._prev_last}, "
                f"so seq {self._prev_last + 1} was expected",
            )
        self._prev_last = batch.last_seq
        self._next_seq = max(self._next_seq, batch.last_seq + 1)
        self._ack_owed = True

    def _start_session(self, epoch: int, hwm: int) -> None:
        self.session_epoch = epoch
        self.hwm = hwm
        self.acked_seq = hwm
        self._next_seq = hwm + 1
        self.alarm_sent_seq = self.alarm_acked_seq = 0

    def _check_alarm(self, alarm: Alarm, error: type[ProtocolError]) -> None:
        # docs/protocol.md 7.6 check 4: seqs rise across the session's ALARMs.
        if alarm.first_seq <= self.alarm_sent_seq:
            raise error(
                ErrorCode.SEQ_ORDER,
                f"ALARM starts at seq {alarm.first_seq}, not above the previous ALARM's {self.alarm_sent_seq}",
            )
        self.alarm_sent_seq = alarm.last_seq

    def _check_alarm_ack(self, ack: AlarmAck, error: type[ProtocolError]) -> None:
        if not self.alarm_acked_seq <= ack.up_to_seq <= self.alarm_sent_seq:
            raise error(
                ErrorCode.BAD_ACK,
                f"ALARM_ACK up to {ack.up_to_seq}: acknowledged so far {self.alarm_acked_seq}, "
                f"alarms up to {self.alarm_sent_seq}",
            )
        self.alarm_acked_seq = ack.up_to_seq

    def _check_config(self, message: ConfigDelta | ConfigSnapshot, error: type[ProtocolError]) -> None:
        if isinstance(message, ConfigDelta):
            if self._snapshot is not None:
                raise error(ErrorCode.CONFIG_VERSION, "config delta inside an unfinished snapshot")
            if message.from_version != self.config_version:
                raise error(
                    ErrorCode.CONFIG_VERSION,
                    f"delta from version {message.from_version}; the panel is at {self.config_version}",
                )
            self.config_version = message.to_version
            self._pushes.append(ConfigPush(version=message.to_version, digest=message.digest, snapshot=False))
            return
        progress = self._snapshot
        if message.part == 0:
            if progress is not None:
                raise error(ErrorCode.CONFIG_VERSION, "new snapshot before the previous one finished")
            progress = _SnapshotProgress(
                version=message.version, digest=message.digest, parts=message.parts, next_part=0
            )
        elif progress is None or (progress.version, progress.digest, progress.parts, progress.next_part) != (
            message.version,
            message.digest,
            message.parts,
            message.part,
        ):
            raise error(
                ErrorCode.CONFIG_VERSION,
                f"snapshot part {message.part}/{message.parts} of version {message.version} out of order",
            )
        progress.next_part += 1
        if progress.next_part == progress.parts:
            # A snapshot may take the panel back (it was ahead of the server): its word is final.
            self._snapshot = None
            self.config_version = message.version
            self._pushes.append(ConfigPush(version=message.version, digest=message.digest, snapshot=True))
        else:
            self._snapshot = progress

    def _check_config_ack(self, ack: ConfigAck, error: type[ProtocolError]) -> None:
        versions = [push.version for push in self._pushes]
        if ack.version not in versions:
            raise error(
                ErrorCode.CONFIG_VERSION,
                f"config ack for version {ack.version}; the pushes awaiting one are {versions or 'none'}",
            )
        # Acknowledging a push acknowledges the ones before it; the newest equal version counts.
        index = len(versions) - 1 - versions[::-1].index(ack.version)
        self.last_acked_push = self._pushes[index]
        del self._pushes[: index + 1]
        self.config_acked = ack.version
        self._config_acks += 1

    def _check_node_epoch(self, epoch: int, what: str) -> None:
        if epoch != self.session_epoch:
            code = ErrorCode.STALE_EPOCH if epoch < self.session_epoch else ErrorCode.EPOCH_MISMATCH
            raise RemoteProtocolError(
                code, f"{what} carries epoch {epoch}; this session's epoch is {self.session_epoch}"
            )


class PanelConnection(_Connection):
    """The field panel's side of a session: it dials (or accepts) and says HELLO.

    Args:
        epoch_floor: the newest cluster epoch this panel ever accepted; a WELCOME
            with an older epoch is refused (P5).
    """

    role = Role.PANEL

    def __init__(self, *, now: float, epoch_floor: int = 0, **kwargs: object) -> None:
        super().__init__(now=now, **kwargs)  # type: ignore[arg-type]
        self.epoch_floor = epoch_floor
        self._hello_at = now
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None
        #: The STANDBY that parked this connection, and the epoch of the TAKEOVER that ended it.
        self.standby: Standby | None = None
        self.takeover_epoch = 0

    def _initial_state(self) -> State:
        return State.IDLE

    def raise_floor(self, epoch: int) -> None:
        """The panel accepted ``epoch`` on another connection: this one's floor follows (a
        parked connection lives beside the panel's sessions, and its TAKEOVER and its next
        HELLO are judged by the newest epoch the panel has seen)."""
        self.epoch_floor = max(self.epoch_floor, epoch)

    def _reply_progress(self) -> tuple[int, bool]:
        return self.acked_seq, self.sent_seq > self.acked_seq

    def _awaited_reply(self) -> str:
        return f"ACK for seqs {self.acked_seq + 1}..{self.sent_seq}"

    def _handshake_start(self) -> float:
        return self._hello_at

    def _own_epoch(self) -> int:
        return max(self.epoch_floor, self.session_epoch)

    def _is_busy(self) -> bool:
        return self._probe_out or super()._is_busy()

    def _quiet_beat(self) -> float | None:
        # Rule 2: a quiet panel probes once per idle interval, never sooner, and up to its
        # slack later: at the next multiple of the slack on the clock, the same grid for every
        # session of the process, so probes that fall due within one slot go out together.
        due = self._last_sent + self._idle_interval
        slack = min(PROBE_SLACK, self._idle_interval / 10, self._interval / 2)
        # A due time a float's error past a grid point is on it (not a whole slot later).
        slot = math.ceil(due / slack - 1e-6) * slack
        return max(due, slot) if slot <= due + slack else due

    def _on_send(self, message: Message) -> None:
        if isinstance(message, Hello):
            if message.max_epoch != self.epoch_floor:
                raise LocalProtocolError(
                    ErrorCode.FIELD_OUT_OF_RANGE,
                    f"HELLO says max_epoch {message.max_epoch} but this connection's floor is {self.epoch_floor}",
                )
            self.hello = message
            self.config_version = self.config_acked = message.config_version
        elif isinstance(message, EventBatch):
            self._check_batch(message, LocalProtocolError)
        elif isinstance(message, Alarm):
            self._check_alarm(message, LocalProtocolError)
        elif isinstance(message, ConfigAck):
            self._check_config_ack(message, LocalProtocolError)
        elif isinstance(message, Heartbeat) and self._state in _LIVE:
            self._probe_out = True

    def send(self, message: Message, now: float) -> bytes:
        if isinstance(message, Hello):
            self._hello_at = now
        return super().send(message, now)

    def _on_receive(self, message: Message) -> None:
        if isinstance(message, Standby):
            if not self.park:
                raise RemoteProtocolError(
                    ErrorCode.ILLEGAL_IN_STATE, "STANDBY on a connection that is not to a park address"
                )
            self.standby = message
            self._adopt_intervals(message)
        elif isinstance(message, Takeover):
            if message.epoch < self.epoch_floor:
                raise RemoteProtocolError(
                    ErrorCode.STALE_EPOCH,
                    f"TAKEOVER with epoch {message.epoch}; this panel has seen epoch {self.epoch_floor}",
                )
            self.park = False
            self.takeover_epoch = message.epoch
        elif isinstance(message, Welcome):
            if self.park:
                raise RemoteProtocolError(
                    ErrorCode.ILLEGAL_IN_STATE, "WELCOME on a park connection before its TAKEOVER"
                )
            if message.epoch < self.epoch_floor:
                raise RemoteProtocolError(
                    ErrorCode.STALE_EPOCH,
                    f"node {message.node_id!r} offers epoch {message.epoch}; "
                    f"this panel has seen epoch {self.epoch_floor}",
                )
            self.welcome = message
            self._adopt_intervals(message)
            self._start_session(message.epoch, message.hwm)
            self.epoch_floor = message.epoch
        elif isinstance(message, Ack):
            self._check_node_epoch(message.epoch, "ACK")
            if message.up_to_seq < self.acked_seq:
                raise RemoteProtocolError(
                    ErrorCode.BAD_ACK, f"ACK up to {message.up_to_seq} goes back from {self.acked_seq}"
                )
            if message.up_to_seq > self.sent_seq:
                raise RemoteProtocolError(
                    ErrorCode.BAD_ACK, f"ACK up to {message.up_to_seq} but only seq {self.sent_seq} was sent"
                )
            self._acked(message.up_to_seq)
        elif isinstance(message, AlarmAck):
            self._check_node_epoch(message.epoch, "ALARM_ACK")
            self._check_alarm_ack(message, RemoteProtocolError)
        elif isinstance(message, ConfigDelta | ConfigSnapshot):
            self._check_node_epoch(message.epoch, type(message).__name__)
            self._check_config(message, RemoteProtocolError)
        elif isinstance(message, Heartbeat):
            self._check_node_epoch(message.epoch, "HEARTBEAT")


class HostConnection(_Connection):
    """The sync-engine node's side of a session with one panel.

    The node reads HELLO (``hello``), decides, then sends WELCOME with its epoch
    and the store's high-water mark for that panel, or an ERROR.
    """

    role = Role.HOST

    def __init__(self, *, now: float, **kwargs: object) -> None:
        super().__init__(now=now, **kwargs)  # type: ignore[arg-type]
        self.hello: Hello | None = None
        # A TAKEOVER went out and the fresh HELLO has not come yet (docs/protocol.md 6.3 rule 4).
        self._after_takeover = False

    def _initial_state(self) -> State:
        return State.AWAIT_HELLO

    def _crossed(self, message: Message) -> bool:
        # A parked panel's probe sent before our TAKEOVER reached it: ignored, unanswered.
        return self._after_takeover and self._state is State.AWAIT_HELLO and isinstance(message, Heartbeat)

    def _reply_progress(self) -> tuple[int, bool]:
        return self._config_acks, bool(self._pushes)

    def _awaited_reply(self) -> str:
        return f"CONFIG_ACK for version {self.config_version} (acked {self.config_acked})"

    def _quiet_beat(self) -> float | None:
        return None  # rule 3: a quiet node sends no HEARTBEAT of its own

    def send(self, message: Message, now: float) -> bytes:
        data = super().send(message, now)
        if isinstance(message, Takeover):
            self._created = now  # the handshake of 6.2 starts again: HELLO within its timeout
        return data

    def _on_send(self, message: Message) -> None:
        if isinstance(message, Standby):
            if not self.park:
                raise LocalProtocolError(ErrorCode.ILLEGAL_IN_STATE, "STANDBY only on a park address's connection")
            self._adopt_intervals(message)
        elif isinstance(message, Takeover):
            self.park = False
            self.hello = None
            self._after_takeover = True
        elif isinstance(message, Welcome):
            if self.park:
                raise LocalProtocolError(
                    ErrorCode.ILLEGAL_IN_STATE, "a park connection's WELCOME comes only after its TAKEOVER"
                )
            assert self.hello is not None
            if message.epoch < self.hello.max_epoch:
                raise LocalProtocolError(
                    ErrorCode.STALE_EPOCH,
                    f"this node's epoch {message.epoch} is older than epoch {self.hello.max_epoch} the panel has seen",
                )
            self._adopt_intervals(message)
            self._start_session(message.epoch, message.hwm)
        elif isinstance(message, Ack):
            self._check_own_epoch(message.epoch)
            if not self.acked_seq <= message.up_to_seq <= self.sent_seq:
                raise LocalProtocolError(
                    ErrorCode.BAD_ACK,
                    f"ACK up to {message.up_to_seq}: acked so far {self.acked_seq}, received up to {self.sent_seq}",
                )
            self._acked(message.up_to_seq)
        elif isinstance(message, AlarmAck):
            self._check_own_epoch(message.epoch)
            self._check_alarm_ack(message, LocalProtocolError)
        elif isinstance(message, ConfigDelta | ConfigSnapshot):
            self._check_own_epoch(message.epoch)
            self._check_config(message, LocalProtocolError)
        elif isinstance(message, Heartbeat | Bye | Error) and self.session_epoch:
            self._check_own_epoch(message.epoch)

    def _check_own_epoch(self, epoch: int) -> None:
        if epoch != self.session_epoch:
            raise LocalProtocolError(
                ErrorCode.EPOCH_MISMATCH, f"message carries epoch {epoch}; the session's epoch is {self.session_epoch}"
            )

    def _on_receive(self, message: Message) -> None:
        if isinstance(message, Hello):
            self._after_takeover = False
            self.hello = message
            self.config_version = self.config_acked = message.config_version
        elif isinstance(message, EventBatch):
            self._check_batch(message, RemoteProtocolError)
        elif isinstance(message, Alarm):
            self._check_alarm(message, RemoteProtocolError)
        elif isinstance(message, ConfigAck):
            self._check_config_ack(message, RemoteProtocolError)
        elif isinstance(message, Heartbeat) and self._state is State.PARKED:
            self._answer_due = True  # a parked node serves no epoch: it only answers (6.3)
        elif isinstance(message, Heartbeat):
            if message.epoch > self.session_epoch:
                raise RemoteProtocolError(
                    ErrorCode.STALE_EPOCH,
                    f"the panel has seen epoch {message.epoch}, newer than this session's {self.session_epoch}",
                )
            if message.epoch < self.session_epoch:
                raise RemoteProtocolError(
                    ErrorCode.EPOCH_MISMATCH,
                    f"panel heartbeat carries epoch {message.epoch}; this session's epoch is {self.session_epoch}",
                )
            self._answer_due = True  # rule 4
