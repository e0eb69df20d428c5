"""One connection of the battery: a trio stream, a reader task applying section 3, helpers to expect things; and the
battery's own listening address, for the park connections a panel opens to it (2.1, 6.3)."""

from __future__ import annotations

import collections
import math
import ssl
from dataclasses import dataclass
from typing import Any

import trio

from . import _codec as c
from ._base import Fail


@dataclass(frozen=True)
class Rx:
    """What the reader saw: a message, the end of the stream, a reset/TLS failure, or a frame it refused."""

    kind: str  # "msg" | "eof" | "reset" | "bad"
    at: float
    msg: c.Message | None = None
    frame: c.Frame | None = None
    error: str = ""
    code: int = 0

    def describe(self) -> str:
        if self.kind == "msg" and self.msg is not None:
            return describe(self.msg)
        if self.kind == "bad":
            if not self.code:  # a frame that breaks a rule no error code names (7.6: a copy that is not one)
                return f"a frame breaking the spec ({self.error})"
            return f"an invalid frame ({c.code_name(self.code)}: {self.error})"
        if self.kind == "eof":
            return "the end of the stream" + (f" ({self.error})" if self.error else "")
        if "EOF" in self.error:
            return f"the end of the stream without TLS close_notify ({self.error})"
        return f"a reset ({self.error})"


def describe(m: c.Message) -> str:
    name = c.TYPE_NAMES[m.TYPE]
    if isinstance(m, c.Error):
        return f"ERROR {c.code_name(m.code)} {m.text!r}"
    if isinstance(m, c.Bye):
        return f"BYE reason {m.reason}"
    if isinstance(m, c.Ack):
        return f"ACK up_to {m.up_to_seq} epoch {m.epoch}"
    if isinstance(m, c.EventBatch):
        return f"EVENT_BATCH {m.first_seq}..{m.last}"
    if isinstance(m, c.ConfigDelta):
        return f"CONFIG_DELTA {m.from_version}->{m.to_version}"
    if isinstance(m, c.ConfigSnapshot):
        return f"CONFIG_SNAPSHOT v{m.version} part {m.part}/{m.parts}"
    if isinstance(m, c.ConfigAck):
        return f"CONFIG_ACK v{m.version} {m.digest.hex()[:12]}"
    if isinstance(m, c.Heartbeat):
        return f"HEARTBEAT epoch {m.epoch}"
    if isinstance(m, c.Standby):
        return f"STANDBY node {m.node_id!r} heartbeat {m.heartbeat_ms} ms idle {m.idle_ms} ms"
    if isinstance(m, c.Takeover):
        return f"TAKEOVER epoch {m.epoch}"
    if isinstance(m, c.Alarm):
        return f"ALARM of seqs {','.join(str(r.seq) for r in m.records[:8])}{'..' if len(m.records) > 8 else ''}"
    if isinstance(m, c.AlarmAck):
        return f"ALARM_ACK up_to {m.up_to_seq} epoch {m.epoch}"
    return name


class AlarmLane:
    """What the battery, playing a node, keeps of a panel's ALARMs in one session, and the rules of 7.6 it checks.

    The checks 1-3 and 4 within one ALARM are the codec's; this adds check 4 across the session's ALARMs, that a
    session's copies are above the WELCOME's `hwm` (the panel forgot the others on the WELCOME), and that a copy
    equals the record of the same seq in the event sequence, where a batch of the session carries it.
    """

    def __init__(self, epoch: int, hwm: int, *, answer: bool) -> None:
        self.epoch = epoch
        self.hwm = hwm
        self.answer = answer
        self.alarms: list[c.Alarm] = []
        self.copies: dict[int, c.Record] = {}
        self.top = 0  # the highest seq of the session's ALARMs (0: none yet)
        self.acked = 0  # the highest ALARM_ACK sent
        self.ack_sent = -math.inf

    def fault_of(self, msg: c.Message) -> tuple[int, str] | None:
        """What the battery's node would refuse (code, text), or a copy that is not one (0, text); None: fine."""
        if isinstance(msg, c.Alarm):
            first = msg.records[0].seq
            if self.alarms and first <= self.top:
                return c.CODES["SEQ_ORDER"], f"ALARM seq {first} not above {self.top} of the session's previous ALARM"
            low = [r.seq for r in msg.records if r.seq <= self.hwm]
            if low:
                return 0, (
                    f"ALARM copies of seqs {low[:4]} at or below the WELCOME's hwm {self.hwm} "
                    "(7.6: on a WELCOME the panel forgets them)"
                )
            self.alarms.append(msg)
            self.top = msg.last
            self.copies.update((r.seq, r) for r in msg.records)
        elif isinstance(msg, c.EventBatch):
            for r in msg.records:
                copy = self.copies.get(r.seq)
                # A gap marker the buffer wrote takes the seq of the oldest record it dropped,
                # which may be an alarm the lane carried: a marker is no copy's record.
                if copy is not None and copy != r and not r.is_gap:
                    return 0, (
                        f"the ALARM copy of seq {r.seq} ({copy}) differs from the record in the event sequence ({r}) "
                        "(5, 7.6: an ALARM carries copies)"
                    )
        return None


class Link:
    def __init__(
        self, stream: trio.abc.Stream, raw: trio.SocketStream, nursery: trio.Nursery, *, any_version: bool = False
    ) -> None:
        self.stream = stream
        self.raw = raw
        self.reader = c.FrameReader(any_version=any_version)
        self._send_lock = trio.Lock()
        self._tx, self._rx = trio.open_memory_channel[Rx](math.inf)
        self.terminal: Rx | None = None
        self.sent_closing = False
        self.send_failed = False
        self.last_sent = trio.current_time()
        self._hb_scope: trio.CancelScope | None = None
        self._answer_epoch: int | None = None
        self._answer_gap = 0.0
        self.answered = 0
        self.last_answer = -math.inf  # when the last HEARTBEAT answered was read
        self.answer_sent = -math.inf  # when its answer went out
        self.lane: AlarmLane | None = None  # playing a node: the panel's ALARMs, checked and answered (7.6)
        nursery.start_soon(self._read_loop)
        self._nursery = nursery

    def peer_cn(self) -> str | None:
        if not isinstance(self.stream, trio.SSLStream):
            return None
        cert: Any = self.stream.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None

    def tls_version(self) -> str | None:
        if not isinstance(self.stream, trio.SSLStream):
            return None
        v: Any = self.stream.version()
        return str(v)

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                cause = exc.__cause__ or exc
                self._tx.send_nowait(Rx("reset", trio.current_time(), error=f"{type(cause).__name__}: {cause}"))
                return
            now = trio.current_time()
            if not data:
                try:
                    self.reader.eof()
                    self._tx.send_nowait(Rx("eof", now))
                except c.ProtocolError as exc:
                    self._tx.send_nowait(Rx("eof", now, error=str(exc)))
                return
            try:
                frames = self.reader.feed(bytes(data))
            except c.ProtocolError as exc:
                self._tx.send_nowait(Rx("bad", now, error=exc.text, code=exc.code))
                return
            for f in frames:
                try:
                    if f.version != c.VERSION and f.type != c.ERROR:
                        raise c.ProtocolError("UNSUPPORTED_VERSION", f"peer frame version {f.version}")
                    msg = c.decode_payload(f.type, f.payload)
                except c.ProtocolError as exc:
                    self._tx.send_nowait(Rx("bad", now, frame=f, error=exc.text, code=exc.code))
                    return
                if isinstance(msg, c.Heartbeat) and self._answer_epoch is not None:
                    await self._answer(now)  # before the case sees it, so that it sees `answer_sent` too
                if self.lane is not None and isinstance(msg, c.Alarm | c.EventBatch):
                    fault = self.lane.fault_of(msg)
                    if fault is not None:
                        self._tx.send_nowait(Rx("bad", now, frame=f, error=fault[1], code=fault[0]))
                        return
                    if isinstance(msg, c.Alarm) and self.lane.answer and not self.sent_closing:
                        await self._answer_alarm(msg)
                self._tx.send_nowait(Rx("msg", now, msg=msg, frame=f))

    async def recv(self, within: float) -> Rx | None:
        """The next thing seen, or None after `within` s. After the end it returns the end again at once."""
        if self.terminal is not None:
            return self.terminal
        with trio.move_on_after(within):
            rx = await self._rx.receive()
            if rx.kind != "msg":
                self.terminal = rx
            return rx
        return None

    async def send(self, data: bytes) -> bool:
        async with self._send_lock:
            try:
                with trio.fail_after(5):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
                self.send_failed = True
                return False
            self.last_sent = trio.current_time()
            return True

    async def send_msg(self, msg: c.Message) -> bool:
        if isinstance(msg, c.Error | c.Bye):
            self.sent_closing = True
            self.stop_heartbeats()
        return await self.send(c.frame(msg))

    async def send_eof(self) -> None:
        """Half-close at the TCP level (also under TLS): the stream ends here."""
        async with self._send_lock:
            try:
                await self.raw.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.send_failed = True

    def start_heartbeats(self, epoch: int, interval_s: float) -> None:
        self.stop_heartbeats()
        scope = trio.CancelScope()
        self._hb_scope = scope

        async def beat() -> None:
            with scope:
                while not self.sent_closing and self.terminal is None:
                    await trio.sleep(max(0.02, interval_s / 2))
                    if not self.sent_closing:
                        await self.send(c.frame(c.Heartbeat(epoch)))

        self._nursery.start_soon(beat)

    def answer_heartbeats(self, epoch: int, *, min_gap: float = 0.05) -> None:
        """Play a node's rule 4 of 9.1: answer every HEARTBEAT read with one at once.

        At most one answer per `min_gap` s, so that a panel answering our answers (which rule 4 forbids)
        cannot make the battery loop with it at the speed of the link.
        """
        self._answer_epoch = epoch
        self._answer_gap = min_gap

    def stop_answering(self) -> None:
        self._answer_epoch = None

    def watch_alarms(self, epoch: int, hwm: int, *, answer: bool = True) -> AlarmLane:
        """Play a node's side of the alarm lane (7.6) from a WELCOME with `epoch` and `hwm`: check every ALARM the
        panel sends and, with `answer`, send ALARM_ACK(its last seq) at once (before the case sees the ALARM)."""
        self.lane = AlarmLane(epoch, hwm, answer=answer)
        return self.lane

    async def _answer_alarm(self, msg: c.Alarm) -> None:
        lane = self.lane
        assert lane is not None
        up_to = max(lane.acked, msg.last)
        if await self.send(c.frame(c.AlarmAck(lane.epoch, up_to))):
            lane.acked = up_to
            lane.ack_sent = self.last_sent

    async def _answer(self, now: float) -> None:
        if self._answer_epoch is None or self.sent_closing or now - self.last_answer < self._answer_gap:
            return
        self.last_answer = now
        if await self.send(c.frame(c.Heartbeat(self._answer_epoch))):
            self.answered += 1
            self.answer_sent = self.last_sent

    def stop_heartbeats(self) -> None:
        if self._hb_scope is not None:
            self._hb_scope.cancel()
            self._hb_scope = None

    async def aclose(self) -> None:
        self.stop_heartbeats()
        self.stop_answering()
        await trio.aclose_forcefully(self.stream)

    # ------------------------------------------------------------------------------------------ expectations

    async def expect(
        self, types: int | tuple[int, ...], within: float, *, skip: tuple[int, ...] = (c.HEARTBEAT,), what: str = ""
    ) -> c.Message:
        """The next message of one of `types` within `within`, passing over `skip`; anything else fails."""
        want = (types,) if isinstance(types, int) else types
        names = "/".join(c.TYPE_NAMES[t] for t in want)
        deadline = trio.current_time() + within
        while True:
            rx = await self.recv(max(0.0, deadline - trio.current_time()))
            if rx is None:
                raise Fail(f"no {names} within {within:g} s{what}")
            if rx.kind != "msg" or rx.msg is None:
                raise Fail(f"expected {names}{what}, got {rx.describe()}")
            if rx.msg.TYPE in want:
                return rx.msg
            if rx.msg.TYPE in skip:
                continue
            raise Fail(f"expected {names}{what}, got {rx.describe()}")

    async def expect_error(
        self,
        codes: int | str | tuple[int | str, ...],
        within: float,
        *,
        skip: tuple[int, ...] = (c.HEARTBEAT, c.ACK, c.CONFIG_DELTA, c.CONFIG_SNAPSHOT),
        close: bool = True,
    ) -> c.Error:
        """An ERROR with one of `codes` within `within`, then the close (section 10): nothing after it."""
        want = tuple(c.CODES[x] if isinstance(x, str) else x for x in (codes if isinstance(codes, tuple) else (codes,)))
        names = "/".join(c.code_name(x) for x in want)
        deadline = trio.current_time() + within
        while True:
            rx = await self.recv(max(0.0, deadline - trio.current_time()))
            if rx is None:
                raise Fail(f"no ERROR {names} within {within:g} s")
            if rx.kind != "msg" or rx.msg is None:
                raise Fail(f"expected ERROR {names}, got {rx.describe()}")
            m = rx.msg
            if isinstance(m, c.Error):
                if m.code not in want:
                    raise Fail(f"expected ERROR {names}, got {describe(m)}")
                if close:
                    await self.expect_close(2.0, after="its ERROR")
                return m
            if m.TYPE not in skip:
                raise Fail(f"expected ERROR {names}, got {describe(m)}")

    async def expect_close(self, within: float, *, after: str = "ERROR", allow: tuple[int, ...] = ()) -> Rx:
        deadline = trio.current_time() + within
        while True:
            rx = await self.recv(max(0.0, deadline - trio.current_time()))
            if rx is None:
                raise Fail(f"connection still open {within:g} s after {after} (10: it closes)")
            if rx.kind == "msg" and rx.msg is not None:
                if rx.msg.TYPE in allow:
                    continue
                raise Fail(f"sent {rx.describe()} after {after} (10: nothing after it)")
            return rx

    async def expect_quiet(self, seconds: float, *, allow: tuple[int, ...] = (c.HEARTBEAT,)) -> list[c.Message]:
        """Nothing but `allow` for `seconds`, and the connection stays up."""
        deadline = trio.current_time() + seconds
        seen: list[c.Message] = []
        while True:
            left = deadline - trio.current_time()
            if left <= 0:
                return seen
            rx = await self.recv(left)
            if rx is None:
                return seen
            if rx.kind != "msg" or rx.msg is None:
                raise Fail(f"expected the session to stay up, got {rx.describe()}")
            if rx.msg.TYPE not in allow:
                raise Fail(f"unexpected {rx.describe()}")
            seen.append(rx.msg)


async def connect(
    host: str,
    port: int,
    ssl_ctx: ssl.SSLContext | None,
    nursery: trio.Nursery,
    *,
    within: float = 5.0,
    any_version: bool = False,
) -> Link:
    """TCP (and the TLS handshake): raises OSError, trio.BrokenResourceError (TLS refused) or trio.TooSlowError."""
    with trio.fail_after(within):
        raw = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = raw
        if ssl_ctx is not None:
            tls = trio.SSLStream(raw, ssl_ctx, server_hostname=None)
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(raw)
                raise
            stream = tls
    return Link(stream, raw, nursery, any_version=any_version)


class Listener:
    """An address the battery listens on (`--park-listen`, the park address of the standby it plays, 2.1, 6.3).

    It accepts all along, so that a panel's dial is never refused (6.3 rule 1 would make it wait); a case takes the
    next *fresh* connection, one accepted at most `STALE` s before. Older ones are closed unused, when a case asks or
    a newer one comes: their panel has likely given up on them (its TLS and HELLO bounds, 6.2) and dials again later.
    """

    STALE = 2.0

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._queue: collections.deque[tuple[float, trio.SocketStream]] = collections.deque()
        self._arrived = trio.Event()
        self._listeners: list[trio.SocketListener] = []
        self.accepted = 0

    async def bind(self) -> None:
        """Listen (raises OSError when the address cannot be had)."""
        self._listeners = await trio.open_tcp_listeners(self.port, host=self.host)

    def serve(self, nursery: trio.Nursery) -> None:
        """Accept in `nursery` until it is cancelled."""
        for listener in self._listeners:
            nursery.start_soon(self._accept_loop, listener)

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (OSError, trio.ClosedResourceError):
                return
            self.accepted += 1
            await self._prune()
            self._queue.append((trio.current_time(), stream))
            self._arrived.set()

    async def _prune(self) -> None:
        while self._queue and trio.current_time() - self._queue[0][0] > self.STALE:
            _at, stream = self._queue.popleft()
            await trio.aclose_forcefully(stream)

    async def take(self, within: float) -> tuple[trio.SocketStream, float] | None:
        """The next fresh connection and when it was accepted, or None after `within` s."""
        deadline = trio.current_time() + within
        while True:
            await self._prune()
            if self._queue:
                at, stream = self._queue.popleft()
                return stream, at
            self._arrived = trio.Event()
            with trio.move_on_after(max(0.0, deadline - trio.current_time())) as scope:
                await self._arrived.wait()
            if scope.cancelled_caught:
                return None

    async def aclose(self) -> None:
        for listener in self._listeners:
            await listener.aclose()
        while self._queue:
            _at, stream = self._queue.popleft()
            await trio.aclose_forcefully(stream)


async def accept(
    raw: trio.SocketStream, ssl_ctx: ssl.SSLContext | None, nursery: trio.Nursery, *, within: float = 5.0
) -> Link:
    """An accepted connection as a Link, the battery being the TLS server (2.2: the end that accepted); raises
    trio.BrokenResourceError (TLS refused) or trio.TooSlowError, leaving `raw` to the caller to close."""
    stream: trio.abc.Stream = raw
    if ssl_ctx is not None:
        tls = trio.SSLStream(raw, ssl_ctx, server_side=True)
        with trio.fail_after(within):
            await tls.do_handshake()
        stream = tls
    return Link(stream, raw, nursery)


def alert_words(text: str) -> str:
    """How a TLS refusal came: 2.2 says an alert SHOULD come; a close without one still refuses."""
    return "with a TLS alert" if "ALERT" in text.upper() else "without a TLS alert (a SHOULD of 2.2)"


async def connect_or_refused(host: str, port: int, ssl_ctx: ssl.SSLContext | None, nursery: trio.Nursery) -> Link | str:
    """A TLS connection, or (a str) how the peer refused it during the handshake."""
    try:
        return await connect(host, port, ssl_ctx, nursery)
    except trio.BrokenResourceError as exc:
        why = str(exc.__cause__ or exc)
        return f"refused in the TLS handshake, {alert_words(why)} ({why})"
    except trio.TooSlowError:
        raise Fail("the TLS handshake neither finished nor failed within 5 s") from None
