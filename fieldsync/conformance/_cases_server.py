"""Server cases: the battery plays panels against a node (section 15: `--server HOST:PORT`), and against a standby
node's park address (6.3: `--park HOST:PORT`).

Why one module of this size: it is a list of about a hundred independent cases, each a short
function named for the spec rule it tries, in the spec's section order; split by topic they
would scatter that order, which is how a reader checks the battery against docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import _codec as c
from . import _tls
from ._base import Fail, Registry, Skip, check, slack
from ._link import Link, alert_words, connect, connect_or_refused, describe

server_case = Registry()

BOGUS_DIGEST = hashlib.sha256(b"fieldsync conformance: a configuration nobody has").digest()
NODE_CN = re.compile(r"^node-[A-Za-z0-9_-]{1,32}$")


@dataclass
class ServerTarget:
    host: str | None  # None: no --server (only the park cases run)
    port: int
    pki: Path | None = None
    panel_ids: tuple[int, ...] = (1, 2, 3, 4)
    unknown_panel_id: int | None = None
    park: tuple[str, int] | None = None  # --park: the park address of the node that is the standby (2.1, 6.3)

    def addr(self, *, park: bool = False) -> tuple[str, int]:
        if park:
            if self.park is None:
                raise Skip("needs --park HOST:PORT (a standby node's park address, 6.3)")
            return self.park
        if self.host is None:
            raise Skip("needs --server HOST:PORT")
        return self.host, self.port


@dataclass
class ServerState:
    """What earlier cases learned from WELCOMEs (a later case always reads hwm and config afresh)."""

    epoch: int = 0
    config: tuple[int, bytes] | None = None
    heartbeat_ms: int = 1000
    idle_ms: int = 5000
    hwm: dict[int, int] = field(default_factory=dict)
    boot_id: int = field(default_factory=lambda: random.getrandbits(63))


class ServerCtx:
    def __init__(self, target: ServerTarget, state: ServerState, nursery: trio.Nursery) -> None:
        self.t = target
        self.s = state
        self.nursery = nursery
        self.links: list[Link] = []

    # ------------------------------------------------------------------------------------------ connections

    @property
    def tls(self) -> bool:
        return self.t.pki is not None

    def pid(self, i: int) -> int:
        return self.t.panel_ids[i % len(self.t.panel_ids)]

    def identity(self, panel_id: int) -> _tls.Identity:
        assert self.t.pki is not None
        ident = _tls.Identity(self.t.pki / f"panel-{panel_id}.pem", self.t.pki / f"panel-{panel_id}.key")
        if not ident.cert.exists() or not ident.key.exists():
            raise Skip(f"no certificate {ident.cert} for panel {panel_id}")
        return ident

    async def dial(
        self,
        panel_id: int | None = None,
        *,
        ident: Any = "own",
        tls12: bool = False,
        any_version: bool = False,
        plain: bool = False,
        park: bool = False,
    ) -> Link:
        """A connection to the node (`park`: to the standby's park address, 2.1), TLS up when --pki is given."""
        host, port = self.t.addr(park=park)
        ctx = None
        if self.tls and not plain:
            assert self.t.pki is not None
            if ident == "own":
                ident = self.identity(panel_id if panel_id is not None else self.pid(0))
            ctx = _tls.context(self.t.pki / "ca.pem", ident, tls12_only=tls12)
        try:
            link = await connect(host, port, ctx, self.nursery, any_version=any_version)
        except trio.BrokenResourceError as exc:
            raise Fail(f"TLS handshake failed: {exc.__cause__ or exc}") from None
        except (OSError, trio.TooSlowError) as exc:
            where = "the park address " if park else ""
            raise Fail(f"cannot connect to {where}{host}:{port}: {exc}") from None
        self.links.append(link)
        return link

    def hello(self, panel_id: int, **kw: Any) -> c.Hello:
        version, digest = self.s.config if self.s.config is not None else (0, c.EMPTY_DIGEST)
        args: dict[str, Any] = {
            "panel_id": panel_id,
            "boot_id": self.s.boot_id,
            "oldest_seq": 0,
            "newest_seq": self.s.hwm.get(panel_id, 0),
            "config_version": version,
            "config_digest": digest,
            "max_epoch": self.s.epoch,
        }
        args.update(kw)
        return c.Hello(**args)

    def learn(self, panel_id: int, w: c.Welcome) -> None:
        self.s.epoch = max(self.s.epoch, w.epoch)
        self.s.hwm[panel_id] = w.hwm
        self.s.heartbeat_ms = w.heartbeat_ms
        self.s.idle_ms = w.idle_ms
        self.s.config = (w.config_version, w.config_digest)

    async def session(self, panel_id: int, *, heartbeats: bool = True, **hello: Any) -> tuple[Link, c.Welcome]:
        """A session up to WELCOME (HELLO fields default to 'converged, nothing buffered').

        `heartbeats`: the battery's panel sends a HEARTBEAT twice per H throughout, as a busy panel does (9.1
        rule 1), more often than the once per I a quiet one needs (rule 2); the node answers each (rule 4).
        The liveness cases turn it off and time the node themselves.
        """
        if self.s.config is None and "config_version" not in hello:
            await self.probe(panel_id)
        link = await self.dial(panel_id)
        h = self.hello(panel_id, **hello)
        await link.send_msg(h)
        m = await link.expect(c.WELCOME, 6.0, skip=(), what=" after HELLO (6.2: within 5 s)")
        assert isinstance(m, c.Welcome)
        self.learn(panel_id, m)
        if heartbeats:
            link.start_heartbeats(m.epoch, m.heartbeat_ms / 1000)
        return link, m

    async def probe(self, panel_id: int) -> c.Welcome:
        link = await self.dial(panel_id)
        await link.send_msg(self.hello(panel_id, config_version=0, config_digest=c.EMPTY_DIGEST))
        m = await link.expect(c.WELCOME, 6.0, skip=(), what=" after HELLO (6.2: within 5 s)")
        assert isinstance(m, c.Welcome)
        self.learn(panel_id, m)
        await self.bye(link, m.epoch)
        return m

    async def bye(self, link: Link, epoch: int) -> None:
        await link.send_msg(c.Bye(epoch, 0))
        await link.aclose()

    async def read_hwm(self, panel_id: int) -> int:
        """The store's hwm for the panel as a new session's WELCOME says it."""
        link, w = await self.session(panel_id, heartbeats=False)
        await self.bye(link, w.epoch)
        return w.hwm

    async def fresh_session_ok(self, panel_id: int) -> str:
        try:
            link, w = await self.session(panel_id, heartbeats=False)
        except Fail as exc:
            raise Fail(f"but no fresh session afterwards: {exc}") from None
        await self.bye(link, w.epoch)
        return "a fresh session is served afterwards"


# ---------------------------------------------------------------------------------------------- helpers


def now_us() -> int:
    return time.time_ns() // 1000


def records(first: int, n: int, **kw: Any) -> tuple[c.Record, ...]:
    t = now_us()
    base: dict[str, Any] = {"kind": 1, "door": 0, "reader": 0, "flags": 0, "aux": 0}
    base.update(kw)
    return tuple(c.Record(seq=first + i, time_us=t + i, card=100_000 + (first + i) % 1000, **base) for i in range(n))


def batch(first: int, n: int, **kw: Any) -> c.EventBatch:
    return c.EventBatch(first, records(first, n, **kw))


async def ack_covering(
    link: Link, seq: int, epoch: int, *, highest_sent: int, floor: int, within: float = 3.0
) -> c.Ack:
    """ACKs until one covers `seq`; each within 7.4's bounds (not back, not past what was sent or hwm)."""
    last = floor
    deadline = trio.current_time() + within
    while True:
        left = deadline - trio.current_time()
        m = await link.expect(
            c.ACK,
            max(0.0, left),
            skip=(c.HEARTBEAT, c.CONFIG_DELTA, c.CONFIG_SNAPSHOT),
            what=f" covering seq {seq} (7.4)",
        )
        assert isinstance(m, c.Ack)
        check(m.epoch == epoch, f"ACK epoch {m.epoch} != session epoch {epoch} (5)")
        check(m.up_to_seq >= last, f"ACK up_to {m.up_to_seq} below {last} acknowledged before (7.4)")
        check(
            m.up_to_seq <= max(highest_sent, floor),
            f"ACK up_to {m.up_to_seq} above the highest seq sent {highest_sent} and hwm {floor} (7.4)",
        )
        last = m.up_to_seq
        if m.up_to_seq >= seq:
            return m


async def send_batches(link: Link, batches: list[c.EventBatch]) -> None:
    for b in batches:
        await link.send_msg(b)


async def ensure_hwm(ctx: ServerCtx, pid: int, at_least: int) -> tuple[Link, c.Welcome]:
    """A session whose WELCOME hwm is >= at_least (uploading first in another session if needed)."""
    link, w = await ctx.session(pid)
    if w.hwm >= at_least:
        return link, w
    n = at_least - w.hwm
    b = batch(w.hwm + 1, n)
    await link.send_msg(b)
    await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=w.hwm)
    await ctx.bye(link, w.epoch)
    link, w = await ctx.session(pid)
    check(w.hwm >= at_least, f"WELCOME hwm {w.hwm} after an ACK up to {at_least} (6.2, 7.4)")
    return link, w


async def refused(ctx: ServerCtx, build: Any, code: str, pid: int | None = None) -> str:
    """Send build(hwm) -> (good batches, bad payload or batch); the bad one is refused with `code`, nothing stored."""
    pid = ctx.pid(0) if pid is None else pid
    link, w = await ctx.session(pid)
    good, bad = build(w.hwm)
    stored = w.hwm
    for b in good:
        await link.send_msg(b)
        await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=stored)
        stored = max(stored, b.last)
    if isinstance(bad, bytes):
        await link.send(c.encode_frame(c.EVENT_BATCH, bad))
    else:
        await link.send(c.encode_frame(c.EVENT_BATCH, bad.encode()))
    await link.expect_error(code, 3.0)
    h = await ctx.read_hwm(pid)
    check(
        h == stored,
        f"{code} as it should, but the new WELCOME hwm is {h}, not {stored}: "
        "part of the refused batch was stored (7.2)",
    )
    return f"{code}; new WELCOME hwm stays {h}"


# ---------------------------------------------------------------------------------------------- handshake (6.2, 5)


@server_case("hello-welcome", "6.2, 5")
async def hello_welcome(ctx: ServerCtx) -> str:
    """HELLO -> WELCOME within 5 s with fields in range."""
    link = await ctx.dial(ctx.pid(0))
    h = ctx.hello(ctx.pid(0), config_version=0, config_digest=c.EMPTY_DIGEST, max_epoch=0)
    t0 = trio.current_time()
    await link.send_msg(h)
    m = await link.expect(c.WELCOME, 6.0, skip=(), what=" after HELLO")
    assert isinstance(m, c.Welcome)
    dt = trio.current_time() - t0
    check(dt <= 5.0, f"WELCOME after {dt:.2f} s (6.2.4: within 5 s)")
    ctx.learn(ctx.pid(0), m)
    await ctx.bye(link, m.epoch)
    return (
        f"node {m.node_id!r} epoch {m.epoch} hwm {m.hwm} config v{m.config_version} "
        f"{m.config_digest.hex()[:12]} heartbeat {m.heartbeat_ms} ms idle {m.idle_ms} ms, in {dt * 1000:.0f} ms"
    )


@server_case("welcome-idle-ms", "5, 9.1")
async def welcome_idle_ms(ctx: ServerCtx) -> str:
    """WELCOME's idle_ms (version 3, 13.4) is at least its heartbeat_ms (5: range heartbeat_ms..2^32-1)."""
    link, w = await ctx.session(ctx.pid(0), heartbeats=False)
    check(w.heartbeat_ms >= 1, f"WELCOME heartbeat_ms {w.heartbeat_ms} (5: 1..2^32-1)")
    check(w.idle_ms >= w.heartbeat_ms, f"WELCOME idle_ms {w.idle_ms} below heartbeat_ms {w.heartbeat_ms} (5)")
    await ctx.bye(link, w.epoch)
    return f"heartbeat_ms {w.heartbeat_ms}, idle_ms {w.idle_ms}"


@server_case("welcome-epoch-at-least-max-epoch", "5, 6.2")
async def welcome_epoch(ctx: ServerCtx) -> str:
    """A HELLO whose max_epoch is the node's epoch gets a WELCOME with epoch >= it."""
    if ctx.s.epoch == 0:
        await ctx.probe(ctx.pid(0))
    e = ctx.s.epoch
    link, w = await ctx.session(ctx.pid(0), heartbeats=False, max_epoch=e)
    check(w.epoch >= e, f"WELCOME epoch {w.epoch} below HELLO max_epoch {e}")
    await ctx.bye(link, w.epoch)
    return f"max_epoch {e} -> WELCOME epoch {w.epoch}"


@server_case("handshake-timeout", "6.2, 9.1")
async def handshake_timeout(ctx: ServerCtx) -> str:
    """No HELLO: the node ends the session with TIMEOUT about 5 s after the connection is up."""
    link = await ctx.dial(ctx.pid(3))
    t0 = trio.current_time()
    e = await link.expect_error("TIMEOUT", 7.5, skip=())
    dt = trio.current_time() - t0
    check(dt >= 4.5, f"TIMEOUT after only {dt:.2f} s (6.2: 5 s)")
    return f"TIMEOUT after {dt:.2f} s ({e.text!r})"


@server_case("first-message-heartbeat", "6.2, 4")
async def first_heartbeat(ctx: ServerCtx) -> str:
    """A HEARTBEAT before HELLO is ILLEGAL_IN_STATE."""
    link = await ctx.dial(ctx.pid(3))
    await link.send_msg(c.Heartbeat(max(ctx.s.epoch, 1)))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    return "ILLEGAL_IN_STATE; " + await ctx.fresh_session_ok(ctx.pid(3))


@server_case("first-message-event-batch", "6.2, 4")
async def first_batch(ctx: ServerCtx) -> str:
    """An EVENT_BATCH before HELLO is ILLEGAL_IN_STATE and nothing is stored."""
    pid = ctx.pid(3)
    h0 = await ctx.read_hwm(pid)
    link = await ctx.dial(pid)
    await link.send_msg(batch(h0 + 1, 3))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    h = await ctx.read_hwm(pid)
    check(h == h0, f"ILLEGAL_IN_STATE, but hwm went {h0} -> {h}")
    return f"ILLEGAL_IN_STATE, hwm stays {h}"


@server_case("hello-twice", "4, 6.1")
async def hello_twice(ctx: ServerCtx) -> str:
    """A second HELLO in STREAMING is ILLEGAL_IN_STATE."""
    link, _w = await ctx.session(ctx.pid(3))
    await link.send_msg(ctx.hello(ctx.pid(3)))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0)
    return "ILLEGAL_IN_STATE"


@server_case("wrong-direction", "4, 6.1")
async def wrong_direction(ctx: ServerCtx) -> str:
    """A node-to-panel message (ACK) sent by the panel is ILLEGAL_IN_STATE."""
    link, w = await ctx.session(ctx.pid(3))
    await link.send_msg(c.Ack(w.epoch, w.hwm))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0)
    return "ILLEGAL_IN_STATE"


@server_case("wrong-direction-standby", "4, 6.1")
async def wrong_direction_standby(ctx: ServerCtx) -> str:
    """A STANDBY (node to panel, version 4, 13.5) sent by the panel in STREAMING is ILLEGAL_IN_STATE."""
    link, _w = await ctx.session(ctx.pid(3))
    await link.send_msg(c.Standby("conformance-panel", 1000, 10000))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0)
    return "ILLEGAL_IN_STATE"


@server_case("hello-newest-below-oldest", "5")
async def hello_seq_range(ctx: ServerCtx) -> str:
    """HELLO newest_seq < oldest_seq is FIELD_OUT_OF_RANGE."""
    link = await ctx.dial(ctx.pid(3))
    await link.send_msg(ctx.hello(ctx.pid(3), oldest_seq=10, newest_seq=5))
    await link.expect_error("FIELD_OUT_OF_RANGE", 3.0, skip=())
    return "FIELD_OUT_OF_RANGE"


@server_case("hello-firmware-not-ascii", "5")
async def hello_firmware(ctx: ServerCtx) -> str:
    """A HELLO firmware that is not ASCII is MALFORMED."""
    link = await ctx.dial(ctx.pid(3))
    raw = bytearray(ctx.hello(ctx.pid(3), firmware="fw-x").encode())
    raw[12 + 1 + 3] = 0xE9  # the 'x': a byte that is not ASCII
    await link.send(c.encode_frame(c.HELLO, bytes(raw)))
    await link.expect_error("MALFORMED", 3.0, skip=())
    return "MALFORMED"


@server_case("hello-firmware-too-long", "5")
async def hello_firmware_long(ctx: ServerCtx) -> str:
    """A HELLO firmware of 33 bytes is FIELD_OUT_OF_RANGE."""
    link = await ctx.dial(ctx.pid(3))
    await link.send_msg(ctx.hello(ctx.pid(3), firmware="f" * 33))
    await link.expect_error("FIELD_OUT_OF_RANGE", 3.0, skip=())
    return "FIELD_OUT_OF_RANGE"


@server_case("unknown-panel", "6.2")
async def unknown_panel(ctx: ServerCtx) -> str:
    """A panel id not in the site is refused with UNKNOWN_PANEL (needs --unknown-panel-id)."""
    pid = ctx.t.unknown_panel_id
    if pid is None:
        raise Skip("no --unknown-panel-id given")
    link = await ctx.dial(pid)
    await link.send_msg(ctx.hello(pid))
    await link.expect_error("UNKNOWN_PANEL", 6.0, skip=())
    return f"panel {pid}: UNKNOWN_PANEL"


@server_case("panel-id-mismatch", "2.2, 6.2", tls_only=True)
async def panel_id_mismatch(ctx: ServerCtx) -> str:
    """With TLS, a HELLO panel_id other than the certificate's is PANEL_ID_MISMATCH."""
    cert_pid = ctx.pid(3)
    other = next((p for p in ctx.t.panel_ids if p != cert_pid), cert_pid + 1000)
    link = await ctx.dial(cert_pid)
    await link.send_msg(ctx.hello(other))
    await link.expect_error("PANEL_ID_MISMATCH", 6.0, skip=())
    return f"certificate panel-{cert_pid}, HELLO {other}: PANEL_ID_MISMATCH"


# ---------------------------------------------------------------------------------------------- framing (3, 13.2)


async def _framing(ctx: ServerCtx, data: bytes, code: str, *, eof: bool = False) -> str:
    pid = ctx.pid(3)
    link = await ctx.dial(pid)
    await link.send(data)
    if eof:
        await link.send_eof()
    await link.expect_error(code, 4.0, skip=())
    return f"{code}; " + await ctx.fresh_session_ok(pid)


def _hello_frame(ctx: ServerCtx, **kw: Any) -> bytes:
    h = ctx.hello(ctx.pid(3))
    return c.encode_frame(c.HELLO, h.encode(), **kw)


@server_case("frame-bad-magic", "3")
async def frame_bad_magic(ctx: ServerCtx) -> str:
    """Bytes that are not F5 5C where a frame starts: BAD_MAGIC."""
    return await _framing(ctx, _hello_frame(ctx, magic=b"GE"), "BAD_MAGIC")


@server_case("frame-bad-hcrc", "3")
async def frame_bad_hcrc(ctx: ServerCtx) -> str:
    """A wrong header check: BAD_CRC."""
    return await _framing(ctx, _hello_frame(ctx, bad_hcrc=True), "BAD_CRC")


async def _version(ctx: ServerCtx, version: int) -> str:
    pid = ctx.pid(3)
    link = await ctx.dial(pid, any_version=True)
    await link.send(_hello_frame(ctx, version=version))
    rx = await link.recv(4.0)
    if rx is None:
        raise Fail("no answer within 4 s")
    check(rx.kind == "msg" and isinstance(rx.msg, c.Error), f"expected ERROR UNSUPPORTED_VERSION, got {rx.describe()}")
    assert isinstance(rx.msg, c.Error) and rx.frame is not None
    check(rx.msg.code == c.CODES["UNSUPPORTED_VERSION"], f"expected UNSUPPORTED_VERSION, got {describe(rx.msg)}")
    check(
        rx.frame.version == version, f"ERROR frame carries version {rx.frame.version}, not the peer's {version} (13.2)"
    )
    check(
        re.search(rf"\b{c.VERSION}\b", rx.msg.text) is not None,
        f"ERROR text {rx.msg.text!r} does not name version {c.VERSION} (13.2)",
    )
    await link.expect_close(2.0)
    return f"ERROR 101 in a version-{version} frame, {rx.msg.text!r}; " + await ctx.fresh_session_ok(pid)


@server_case("frame-version-4", "3, 13.2")
async def frame_version_4(ctx: ServerCtx) -> str:
    """A version-4 HELLO (the previous version): one ERROR UNSUPPORTED_VERSION in a version-4 frame, naming 5."""
    return await _version(ctx, 4)


@server_case("frame-version-3", "3, 13.2")
async def frame_version_3(ctx: ServerCtx) -> str:
    """A version-3 HELLO: one ERROR UNSUPPORTED_VERSION in a frame with version byte 3, naming version 5."""
    return await _version(ctx, 3)


@server_case("frame-version-2", "3, 13.2")
async def frame_version_2(ctx: ServerCtx) -> str:
    """A version-2 HELLO: one ERROR UNSUPPORTED_VERSION in a frame with version byte 2, naming version 5."""
    return await _version(ctx, 2)


@server_case("frame-version-1", "3, 13.2")
async def frame_version_1(ctx: ServerCtx) -> str:
    """A version-1 frame: one ERROR UNSUPPORTED_VERSION in a frame with version byte 1, naming version 5."""
    return await _version(ctx, 1)


@server_case("frame-version-6", "3, 13.2")
async def frame_version_6(ctx: ServerCtx) -> str:
    """A version-6 frame (a later version): ERROR UNSUPPORTED_VERSION in a frame with version byte 6."""
    return await _version(ctx, 6)


@server_case("frame-unknown-type", "3")
async def frame_unknown_type(ctx: ServerCtx) -> str:
    """Type 42: UNKNOWN_TYPE."""
    return await _framing(ctx, c.encode_frame(42, b"\x00" * 8), "UNKNOWN_TYPE")


@server_case("frame-bad-flags", "3")
async def frame_bad_flags(ctx: ServerCtx) -> str:
    """flags 0x01: BAD_FLAGS."""
    return await _framing(ctx, _hello_frame(ctx, flags=1), "BAD_FLAGS")


@server_case("frame-too-large", "3")
async def frame_too_large(ctx: ServerCtx) -> str:
    """A header declaring 4 GiB - 1: FRAME_TOO_LARGE from the 11 header bytes alone."""
    return await _framing(ctx, c.header(c.HELLO, 0xFFFFFFFF), "FRAME_TOO_LARGE")


@server_case("frame-too-large-1mib", "3")
async def frame_too_large_1mib(ctx: ServerCtx) -> str:
    """A header declaring 1 MiB + 1: FRAME_TOO_LARGE from the header (skip if the node accepts more: MAY)."""
    pid = ctx.pid(3)
    link = await ctx.dial(pid)
    await link.send(c.header(c.EVENT_BATCH, c.MAX_PAYLOAD + 1))
    rx = await link.recv(3.0)
    if rx is None:
        raise Skip("no answer to the header alone: this node may be configured above 1 MiB (3: MAY)")
    check(
        rx.kind == "msg" and isinstance(rx.msg, c.Error) and rx.msg.code == c.CODES["FRAME_TOO_LARGE"],
        f"expected ERROR FRAME_TOO_LARGE, got {rx.describe()}",
    )
    await link.expect_close(2.0)
    return "FRAME_TOO_LARGE from the header alone; " + await ctx.fresh_session_ok(pid)


@server_case("frame-bad-crc", "3")
async def frame_bad_crc(ctx: ServerCtx) -> str:
    """A wrong frame crc: BAD_CRC."""
    return await _framing(ctx, _hello_frame(ctx, bad_crc=True), "BAD_CRC")


@server_case("frame-truncated", "3")
async def frame_truncated(ctx: ServerCtx) -> str:
    """Half a HELLO frame, then the stream ends (TCP: half-close; TLS: close_notify): TRUNCATED."""
    data = _hello_frame(ctx)
    if not ctx.tls:
        return await _framing(ctx, data[: len(data) // 2], "TRUNCATED", eof=True)
    assert ctx.t.pki is not None
    pid = ctx.pid(3)
    ssl_ctx = _tls.context(ctx.t.pki / "ca.pem", ctx.identity(pid))
    host, port = ctx.t.addr()
    got, how = await _tls.send_then_close_notify(host, port, ssl_ctx, data[: len(data) // 2])
    reader = c.FrameReader()
    try:
        frames = reader.feed(got)
    except c.ProtocolError as exc:
        raise Fail(f"answer is not a frame: {exc}") from None
    check(bool(frames), f"no ERROR after our close_notify ({len(got)} bytes, then {how})")
    m = c.decode_payload(frames[0].type, frames[0].payload)
    check(isinstance(m, c.Error) and m.code == c.CODES["TRUNCATED"], f"expected ERROR TRUNCATED, got {describe(m)}")
    check(len(frames) == 1, f"{len(frames) - 1} frame(s) after the ERROR (10)")
    return f"TRUNCATED after close_notify (then {how}); " + await ctx.fresh_session_ok(pid)


@server_case("frame-trailing-bytes", "3, 5")
async def frame_trailing(ctx: ServerCtx) -> str:
    """A HELLO payload with one byte left over: MALFORMED."""
    h = ctx.hello(ctx.pid(3))
    return await _framing(ctx, c.encode_frame(c.HELLO, h.encode() + b"\x00"), "MALFORMED")


@server_case("frame-short-payload", "3, 5")
async def frame_short(ctx: ServerCtx) -> str:
    """A HELLO payload one byte short: MALFORMED."""
    h = ctx.hello(ctx.pid(3))
    return await _framing(ctx, c.encode_frame(c.HELLO, h.encode()[:-1]), "MALFORMED")


@server_case("frame-bad-crc-streaming", "3, 10")
async def frame_bad_crc_streaming(ctx: ServerCtx) -> str:
    """A wrong frame crc in STREAMING: BAD_CRC and the session ends."""
    pid = ctx.pid(3)
    link, w = await ctx.session(pid)
    link.stop_heartbeats()
    await link.send(c.encode_frame(c.HEARTBEAT, c.Heartbeat(w.epoch).encode(), bad_crc=True))
    await link.expect_error("BAD_CRC", 3.0)
    return "BAD_CRC; " + await ctx.fresh_session_ok(pid)


# ---------------------------------------------------------------------------------------------- events (7)


@server_case("events-upload", "7.3, 7.4")
async def events_upload(ctx: ServerCtx) -> str:
    """A batch from hwm+1 gets an ACK covering it; a new WELCOME's hwm includes it."""
    pid = ctx.pid(0)
    link, w = await ctx.session(pid)
    b = batch(w.hwm + 1, 20)
    t0 = trio.current_time()
    await link.send_msg(b)
    a = await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=w.hwm)
    dt = trio.current_time() - t0
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b.last, f"new WELCOME hwm {h}, expected {b.last} (6.2.4)")
    return f"{b.first_seq}..{b.last}: ACK {a.up_to_seq} in {dt * 1000:.0f} ms; hwm {h}"


@server_case("events-window", "7.4")
async def events_window(ctx: ServerCtx) -> str:
    """Eight batches sent without waiting are all acknowledged."""
    pid = ctx.pid(0)
    link, w = await ctx.session(pid)
    bs = [batch(w.hwm + 1 + 50 * i, 50) for i in range(8)]
    await send_batches(link, bs)
    a = await ack_covering(link, bs[-1].last, w.epoch, highest_sent=bs[-1].last, floor=w.hwm, within=5.0)
    await ctx.bye(link, w.epoch)
    return f"8 x 50 records from {w.hwm + 1}: ACK {a.up_to_seq}"


@server_case("events-max-batch", "3, 7.4")
async def events_max_batch(ctx: ServerCtx) -> str:
    """A batch of 32,767 records (payload just under 1 MiB) is accepted and acknowledged."""
    pid = ctx.pid(0)
    link, w = await ctx.session(pid)
    b = batch(w.hwm + 1, 32767)
    check(len(b.encode()) <= c.MAX_PAYLOAD, "internal: batch above 1 MiB")
    await link.send_msg(b)
    a = await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=w.hwm, within=8.0)
    await ctx.bye(link, w.epoch)
    return f"{len(b.encode())} byte payload: ACK {a.up_to_seq}"


@server_case("events-duplicates-acked", "7.3, 7.4")
async def events_duplicates(ctx: ServerCtx) -> str:
    """A first batch made only of seqs at or below hwm is acknowledged (13.3: v1 did not) and stores nothing."""
    pid = ctx.pid(0)
    link, w = await ensure_hwm(ctx, pid, 5)
    b = batch(w.hwm - 4, 5)
    await link.send_msg(b)
    a = await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=w.hwm)
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == w.hwm, f"hwm moved {w.hwm} -> {h} on duplicates")
    return f"duplicates {b.first_seq}..{b.last} (hwm {w.hwm}): ACK {a.up_to_seq}"


@server_case("events-resend-from-oldest", "7.3")
async def events_resend(ctx: ServerCtx) -> str:
    """A first batch ending below hwm, then one continuing from it past hwm: both served, new records stored."""
    pid = ctx.pid(0)
    link, w = await ensure_hwm(ctx, pid, 6)
    h0 = w.hwm
    b1 = batch(h0 - 5, 3)  # ends at h0 - 3, below hwm
    b2 = batch(b1.last + 1, 10)  # h0-2 .. h0+7: crosses hwm
    await send_batches(link, [b1, b2])
    a = await ack_covering(link, b2.last, w.epoch, highest_sent=b2.last, floor=h0)
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b2.last, f"new WELCOME hwm {h}, expected {b2.last}")
    return f"hwm {h0}: {b1.first_seq}..{b1.last} then {b2.first_seq}..{b2.last}: ACK {a.up_to_seq}, hwm {h}"


@server_case("events-later-batch-gap", "7.3")
async def events_later_gap(ctx: ServerCtx) -> str:
    """A later batch starting beyond prev_last+1 is SEQ_GAP; the earlier batch stays stored, the bad one not."""
    return await refused(ctx, lambda h: ([batch(h + 1, 3)], batch(h + 5, 3)), "SEQ_GAP")


@server_case("events-later-batch-behind", "7.3")
async def events_later_behind(ctx: ServerCtx) -> str:
    """A later batch starting below prev_last+1 is SEQ_ORDER."""
    return await refused(ctx, lambda h: ([batch(h + 1, 3)], batch(h + 2, 4)), "SEQ_ORDER")


@server_case("events-first-batch-gap", "7.3")
async def events_first_gap(ctx: ServerCtx) -> str:
    """A first batch starting beyond hwm+1 is SEQ_GAP."""
    return await refused(ctx, lambda h: ([], batch(h + 2, 3)), "SEQ_GAP")


@server_case("events-gap-marker-not-first", "7.2")
async def events_marker_not_first(ctx: ServerCtx) -> str:
    """A gap marker other than the first record is SEQ_ORDER (step 4)."""

    def build(h: int) -> tuple[list[c.EventBatch], c.EventBatch]:
        return [], c.EventBatch(h + 1, (*records(h + 1, 1), c.gap_marker(h + 2, h + 3)))

    return await refused(ctx, build, "SEQ_ORDER")


@server_case("events-unknown-kind", "7.1, 7.2")
async def events_unknown_kind(ctx: ServerCtx) -> str:
    """A record of kind 99 is UNKNOWN_EVENT_KIND and the whole batch is refused."""

    def build(h: int) -> tuple[list[c.EventBatch], c.EventBatch]:
        r = list(records(h + 1, 3))
        r[1] = c.Record(r[1].seq, r[1].time_us, 99)
        return [], c.EventBatch(h + 1, tuple(r))

    return await refused(ctx, build, "UNKNOWN_EVENT_KIND")


@server_case("events-check-order", "7.2")
async def events_check_order(ctx: ServerCtx) -> str:
    """Unknown kind (step 3) is reported before a misplaced gap marker (step 4)."""

    def build(h: int) -> tuple[list[c.EventBatch], c.EventBatch]:
        r = records(h + 1, 3)
        return [], c.EventBatch(h + 1, (r[0], c.gap_marker(h + 2, h + 2), c.Record(h + 3, 0, 0)))

    return await refused(ctx, build, "UNKNOWN_EVENT_KIND")


@server_case("events-first-seq-mismatch", "7.2")
async def events_first_seq_mismatch(ctx: ServerCtx) -> str:
    """first_seq differing from the first record's seq is SEQ_ORDER (step 5)."""
    return await refused(ctx, lambda h: ([], c.EventBatch(h + 1, records(h + 2, 3))), "SEQ_ORDER")


@server_case("events-not-consecutive", "7.2")
async def events_not_consecutive(ctx: ServerCtx) -> str:
    """Records whose seqs skip one are SEQ_ORDER (step 7)."""

    def build(h: int) -> tuple[list[c.EventBatch], c.EventBatch]:
        r = records(h + 1, 4)
        return [], c.EventBatch(h + 1, (r[0], r[1], r[3]))

    return await refused(ctx, build, "SEQ_ORDER")


@server_case("events-first-seq-zero", "7.2")
async def events_first_seq_zero(ctx: ServerCtx) -> str:
    """first_seq 0 is FIELD_OUT_OF_RANGE (step 2)."""
    return await refused(ctx, lambda h: ([], batch(0, 2)), "FIELD_OUT_OF_RANGE")


@server_case("events-first-seq-above-max", "7.2")
async def events_first_seq_max(ctx: ServerCtx) -> str:
    """first_seq 2^63 is FIELD_OUT_OF_RANGE (step 2), not SEQ_GAP."""
    return await refused(ctx, lambda h: ([], batch(1 << 63, 1)), "FIELD_OUT_OF_RANGE")


@server_case("events-last-seq-above-max", "7.2, 13.3")
async def events_last_seq_max(ctx: ServerCtx) -> str:
    """A batch 2^63-1, 2^63 is FIELD_OUT_OF_RANGE (step 8, before the SEQ_GAP of step 9)."""
    return await refused(ctx, lambda h: ([], batch(c.MAX_SEQ, 2)), "FIELD_OUT_OF_RANGE")


@server_case("events-bad-gap-marker", "7.1, 7.2")
async def events_bad_marker(ctx: ServerCtx) -> str:
    """A gap marker whose aux is not card - seq + 1 is FIELD_OUT_OF_RANGE (step 6)."""

    def build(h: int) -> tuple[list[c.EventBatch], c.EventBatch]:
        g = c.Record(h + 1, 0, 14, card=h + 3, aux=7)
        return [], c.EventBatch(h + 1, (g, *records(h + 4, 2)))

    return await refused(ctx, build, "FIELD_OUT_OF_RANGE")


@server_case("events-count-mismatch", "5, 7.2")
async def events_count_mismatch(ctx: ServerCtx) -> str:
    """count 3 with 2 records is MALFORMED (step 1)."""
    return await refused(ctx, lambda h: ([], c.EventBatch(h + 1, records(h + 1, 2), count=3)), "MALFORMED")


@server_case("events-time-never-refused", "7.1, 13.3")
async def events_time(ctx: ServerCtx) -> str:
    """Records with time_us 2^63 and 2^64-1 are stored and acknowledged, and the queue moves on past them."""
    pid = ctx.pid(0)
    link, w = await ctx.session(pid)
    r = list(records(w.hwm + 1, 3))
    r[0] = c.Record(r[0].seq, 1 << 63, 1, card=5)
    r[1] = c.Record(r[1].seq, c.U64, 1, card=6)
    b1 = c.EventBatch(w.hwm + 1, tuple(r))
    b2 = batch(b1.last + 1, 2)
    await link.send_msg(b1)
    await ack_covering(link, b1.last, w.epoch, highest_sent=b1.last, floor=w.hwm)
    await link.send_msg(b2)
    a = await ack_covering(link, b2.last, w.epoch, highest_sent=b2.last, floor=b1.last)
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b2.last, f"new WELCOME hwm {h}, expected {b2.last}")
    return f"time_us 2^63 and 2^64-1 at {b1.first_seq}: ACK {a.up_to_seq}, hwm {h}"


@server_case("events-gap-marker", "7.1, 7.3")
async def events_gap_marker(ctx: ServerCtx) -> str:
    """A batch headed by a gap marker, then a batch that is only a marker: both acknowledged, hwm moves past."""
    pid = ctx.pid(0)
    link, w = await ctx.session(pid)
    h0 = w.hwm
    b1 = c.EventBatch(h0 + 1, (c.gap_marker(h0 + 1, h0 + 5), *records(h0 + 6, 2)))
    b2 = c.EventBatch(h0 + 8, (c.gap_marker(h0 + 8, h0 + 10, kind=16),))
    await link.send_msg(b1)
    await ack_covering(link, b1.last, w.epoch, highest_sent=b1.last, floor=h0)
    await link.send_msg(b2)
    a = await ack_covering(link, b2.last, w.epoch, highest_sent=b2.last, floor=b1.last)
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b2.last, f"new WELCOME hwm {h}, expected {b2.last} (past the markers)")
    return f"marker {h0 + 1}..{h0 + 5} + 2 records, marker {h0 + 8}..{h0 + 10}: ACK {a.up_to_seq}, hwm {h}"


@server_case("events-gap-marker-below-hwm", "7.3")
async def events_marker_below(ctx: ServerCtx) -> str:
    """A first batch whose gap marker reaches below hwm is accepted."""
    pid = ctx.pid(0)
    link, w = await ensure_hwm(ctx, pid, 3)
    h0 = w.hwm
    b = c.EventBatch(h0 - 2, (c.gap_marker(h0 - 2, h0 + 2), *records(h0 + 3, 2)))
    await link.send_msg(b)
    a = await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=h0)
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b.last, f"new WELCOME hwm {h}, expected {b.last}")
    return f"hwm {h0}, marker {h0 - 2}..{h0 + 2}: ACK {a.up_to_seq}, hwm {h}"


# ---------------------------------------------------------------------------------------------- the alarm lane (7.6)
#
# Version 5 (13.1). The battery's panel records alarms in its event sequence like any event and sends their copies
# in ALARMs ahead of it; every ALARM it has the node accept is followed, in the same or a later session, by the
# EVENT_BATCH holding the same records, so that the node's alarms and its event sequence stay one history.

ALARM_FORCED, ALARM_TAMPER, ALARM_HELD = 7, 9, 8  # alarm kinds (7.6): DOOR_FORCED, TAMPER, DOOR_HELD
NOT_ALARM = 1  # ACCESS_GRANTED: in 7.1's table, not an alarm kind


def with_alarms(first: int, n: int, at: dict[int, int]) -> tuple[c.Record, ...]:
    """`n` records from seq `first`; the one at each offset of `at` of that alarm kind (door 1, reader 2)."""
    out = list(records(first, n))
    for offset, kind in at.items():
        r = out[offset]
        out[offset] = c.Record(r.seq, r.time_us, kind, 1, 2, 0, r.card, 0)
    return tuple(out)


def alarm_of(recs: tuple[c.Record, ...]) -> c.Alarm:
    """The ALARM of the copies of the alarm records among `recs` (in their seq order)."""
    return c.Alarm(tuple(r for r in recs if r.kind in c.ALARM_KINDS))


def seqs(a: c.Alarm) -> str:
    return ",".join(str(r.seq) for r in a.records)


async def lane_acks(
    link: Link,
    w: c.Welcome,
    *,
    alarm_top: int,
    alarm_until: int | None = None,
    batch_top: int | None = None,
    batch_until: int | None = None,
    alarm_floor: int = 0,
    within: float = 3.0,
) -> tuple[c.AlarmAck | None, c.Ack | None, list[str]]:
    """The node's ALARM_ACKs until one covers `alarm_until`, and its ACKs until one covers `batch_until` (None: not
    waited for), in whatever order they come; returns those two and the order of every acknowledgement seen.

    Each is held to the bounds a panel holds it to: an ALARM_ACK (7.6) carries the session's epoch, is not below
    the previous one of the session (`alarm_floor`) and not above `alarm_top`, the highest seq of the session's
    ALARMs; an ACK (7.4) is not below the previous one (or hwm) and not above `batch_top` or hwm, whichever is higher.
    """
    got_alarm: c.AlarmAck | None = None
    got_ack: c.Ack | None = None
    last_alarm, last_ack = alarm_floor, w.hwm
    order: list[str] = []
    deadline = trio.current_time() + within
    while (alarm_until is not None and got_alarm is None) or (batch_until is not None and got_ack is None):
        waiting = " and ".join(
            x
            for x in (
                f"an ALARM_ACK covering {alarm_until} (7.6)" if alarm_until is not None and got_alarm is None else "",
                f"an ACK covering {batch_until} (7.4)" if batch_until is not None and got_ack is None else "",
            )
            if x
        )
        m = await link.expect(
            (c.ALARM_ACK, c.ACK),
            max(0.0, deadline - trio.current_time()),
            skip=(c.HEARTBEAT, c.CONFIG_DELTA, c.CONFIG_SNAPSHOT),
            what=f" ({waiting})",
        )
        if isinstance(m, c.AlarmAck):
            check(m.epoch == w.epoch, f"ALARM_ACK epoch {m.epoch} != session epoch {w.epoch} (5, 9.2)")
            check(
                m.up_to_seq >= last_alarm,
                f"ALARM_ACK up_to {m.up_to_seq} below the session's previous {last_alarm} (7.6: a panel refuses it "
                "with BAD_ACK)",
            )
            check(
                m.up_to_seq <= alarm_top,
                f"ALARM_ACK up_to {m.up_to_seq} above {alarm_top}, the highest seq of the session's ALARMs (7.6: a "
                "panel refuses it with BAD_ACK)",
            )
            last_alarm = m.up_to_seq
            order.append(f"ALARM_ACK {m.up_to_seq}")
            if alarm_until is not None and got_alarm is None and m.up_to_seq >= alarm_until:
                got_alarm = m
        else:
            assert isinstance(m, c.Ack)
            check(batch_top is not None, f"{describe(m)} with no batch sent in the session (7.4)")
            assert batch_top is not None
            check(m.epoch == w.epoch, f"ACK epoch {m.epoch} != session epoch {w.epoch} (5)")
            check(m.up_to_seq >= last_ack, f"ACK up_to {m.up_to_seq} below {last_ack} acknowledged before (7.4)")
            check(
                m.up_to_seq <= max(batch_top, w.hwm),
                f"ACK up_to {m.up_to_seq} above the highest seq sent {batch_top} and hwm {w.hwm} (7.4)",
            )
            last_ack = m.up_to_seq
            order.append(f"ACK {m.up_to_seq}")
            if batch_until is not None and got_ack is None and m.up_to_seq >= batch_until:
                got_ack = m
    return got_alarm, got_ack, order


async def alarm_refused(ctx: ServerCtx, build: Any, code: str) -> str:
    """Send build(hwm) (an Alarm, or a payload as bytes) as the session's first ALARM: refused with `code` (7.6)."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid)
    bad = build(w.hwm)
    raw = bad if isinstance(bad, bytes) else bad.encode()
    await link.send(c.encode_frame(c.ALARM, raw))
    await link.expect_error(code, 3.0)
    return f"{code}; " + await ctx.fresh_session_ok(pid)


@server_case("alarm-acked", "5, 7.6")
async def alarm_acked(ctx: ServerCtx) -> str:
    """An ALARM of alarm copies (seqs rising, not consecutive) gets an ALARM_ACK of the session's epoch covering its
    last seq, before the batch holding them is sent; that batch is then acknowledged and stored as ever."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid)
    recs = with_alarms(w.hwm + 1, 6, {1: ALARM_FORCED, 4: ALARM_TAMPER})
    a = alarm_of(recs)
    await link.send_msg(a)
    t0 = link.last_sent
    aa, _, _ = await lane_acks(link, w, alarm_top=a.last, alarm_until=a.last)
    assert aa is not None
    dt = trio.current_time() - t0
    b = c.EventBatch(recs[0].seq, recs)
    await link.send_msg(b)
    await lane_acks(link, w, alarm_top=a.last, alarm_floor=aa.up_to_seq, batch_top=b.last, batch_until=b.last)
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b.last, f"new WELCOME hwm {h}, expected {b.last} (7.6: the records keep their place, 7.3, 7.4)")
    late = "" if dt <= 1.0 else " (7.6: SHOULD within 1 s)"
    return (
        f"ALARM of seqs {seqs(a)}: ALARM_ACK {aa.up_to_seq} epoch {aa.epoch} in {dt * 1000:.0f} ms{late}; "
        f"then batch {b.first_seq}..{b.last} acknowledged, hwm {h}"
    )


@server_case("alarm-then-batch", "7.6, 7.3, 7.4")
async def alarm_then_batch(ctx: ServerCtx) -> str:
    """An ALARM, then at once an EVENT_BATCH holding the same records in their places: an ALARM_ACK covering the
    ALARM and an ACK covering the batch, and the new WELCOME's hwm is the batch's last seq."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid)
    recs = with_alarms(w.hwm + 1, 8, {0: ALARM_HELD, 3: ALARM_FORCED, 7: ALARM_TAMPER})
    a = alarm_of(recs)
    b = c.EventBatch(recs[0].seq, recs)
    await link.send_msg(a)
    await link.send_msg(b)
    aa, ack, order = await lane_acks(
        link, w, alarm_top=a.last, alarm_until=a.last, batch_top=b.last, batch_until=b.last
    )
    assert aa is not None and ack is not None
    await ctx.bye(link, w.epoch)
    h = await ctx.read_hwm(pid)
    check(h == b.last, f"new WELCOME hwm {h}, expected {b.last} (7.6: nothing of 7.3 and 7.4 changes)")
    return f"ALARM {seqs(a)}, batch {b.first_seq}..{b.last}: {', '.join(order)}; hwm {h}"


@server_case("alarm-copy-already-stored", "7.6")
async def alarm_copy_stored(ctx: ServerCtx) -> str:
    """An ALARM copy of an alarm the node stored from an earlier session's batch (seq at or below hwm) is accepted
    and acknowledged (7.6: not stored again; check 4 compares only with the session's previous ALARMs)."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid)
    recs = with_alarms(w.hwm + 1, 3, {1: ALARM_FORCED})
    b = c.EventBatch(recs[0].seq, recs)
    await link.send_msg(b)
    await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=w.hwm)
    await ctx.bye(link, w.epoch)
    link, w2 = await ctx.session(pid)
    check(w2.hwm >= b.last, f"WELCOME hwm {w2.hwm} after an ACK up to {b.last} (6.2, 7.4)")
    a = alarm_of(recs)
    await link.send_msg(a)
    aa, _, _ = await lane_acks(link, w2, alarm_top=a.last, alarm_until=a.last)
    assert aa is not None
    await ctx.bye(link, w2.epoch)
    return f"batch {b.first_seq}..{b.last} stored (hwm {w2.hwm}); ALARM copy of seq {a.last}: ALARM_ACK {aa.up_to_seq}"


@server_case("alarm-not-alarm-kind", "7.6")
async def alarm_not_alarm_kind(ctx: ServerCtx) -> str:
    """An ALARM carrying a record of a kind that is not an alarm kind (ACCESS_GRANTED) is FIELD_OUT_OF_RANGE."""

    def build(h: int) -> c.Alarm:
        recs = with_alarms(h + 1, 3, {0: ALARM_FORCED})
        return c.Alarm((recs[0], recs[2]))  # recs[2] is an ACCESS_GRANTED

    return await alarm_refused(ctx, build, "FIELD_OUT_OF_RANGE")


@server_case("alarm-unknown-kind", "7.1, 7.6")
async def alarm_unknown_kind(ctx: ServerCtx) -> str:
    """An ALARM carrying a record of kind 99 (not in 7.1's table) is UNKNOWN_EVENT_KIND (check 2)."""
    return await alarm_refused(ctx, lambda h: c.Alarm((c.Record(h + 1, now_us(), 99),)), "UNKNOWN_EVENT_KIND")


@server_case("alarm-check-order-kind", "7.6")
async def alarm_check_order_kind(ctx: ServerCtx) -> str:
    """Checks in order: a kind 99 (check 2) after a non-alarm kind (check 3) at the same seq (check 4) is
    UNKNOWN_EVENT_KIND."""

    def build(h: int) -> c.Alarm:
        return c.Alarm((c.Record(h + 1, now_us(), NOT_ALARM), c.Record(h + 1, now_us(), 99)))

    return await alarm_refused(ctx, build, "UNKNOWN_EVENT_KIND")


@server_case("alarm-check-order-range", "7.6")
async def alarm_check_order_range(ctx: ServerCtx) -> str:
    """Checks in order: a second record of seq 0 (check 3's range, and check 4's order) is FIELD_OUT_OF_RANGE."""

    def build(h: int) -> c.Alarm:
        return c.Alarm((c.Record(h + 5, now_us(), ALARM_FORCED), c.Record(0, now_us(), ALARM_TAMPER)))

    return await alarm_refused(ctx, build, "FIELD_OUT_OF_RANGE")


@server_case("alarm-seq-above-max", "7.6")
async def alarm_seq_above_max(ctx: ServerCtx) -> str:
    """An ALARM record of seq 2^63 is FIELD_OUT_OF_RANGE (check 3)."""
    return await alarm_refused(
        ctx, lambda h: c.Alarm((c.Record(1 << 63, now_us(), ALARM_FORCED),)), "FIELD_OUT_OF_RANGE"
    )


@server_case("alarm-bad-gap-marker", "7.1, 7.6")
async def alarm_bad_gap_marker(ctx: ServerCtx) -> str:
    """An ALARM copy of a gap marker (BUFFER_OVERFLOW, an alarm kind) whose aux is not card - seq + 1 is
    FIELD_OUT_OF_RANGE (check 3)."""
    return await alarm_refused(
        ctx, lambda h: c.Alarm((c.Record(h + 1, 0, 14, card=h + 3, aux=7),)), "FIELD_OUT_OF_RANGE"
    )


@server_case("alarm-seq-order-within", "7.6")
async def alarm_seq_order_within(ctx: ServerCtx) -> str:
    """An ALARM whose records' seqs do not rise (hwm+3, then hwm+2) is SEQ_ORDER (check 4)."""

    def build(h: int) -> c.Alarm:
        return c.Alarm((c.Record(h + 3, now_us(), ALARM_TAMPER), c.Record(h + 2, now_us(), ALARM_FORCED)))

    return await alarm_refused(ctx, build, "SEQ_ORDER")


@server_case("alarm-seq-order-across", "7.6")
async def alarm_seq_order_across(ctx: ServerCtx) -> str:
    """An ALARM whose first seq is not above the session's previous ALARM's last (equal) is SEQ_ORDER (check 4);
    the same copy in the next session is accepted (check 4 looks at this session's ALARMs only)."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid)
    recs = with_alarms(w.hwm + 1, 3, {2: ALARM_FORCED})
    a = alarm_of(recs)
    await link.send_msg(a)
    aa, _, _ = await lane_acks(link, w, alarm_top=a.last, alarm_until=a.last)
    assert aa is not None
    await link.send_msg(a)
    await link.expect_error("SEQ_ORDER", 3.0)
    link, w2 = await ctx.session(pid)
    await link.send_msg(a)
    b = c.EventBatch(recs[0].seq, recs)
    await link.send_msg(b)
    aa2, _, order = await lane_acks(
        link, w2, alarm_top=a.last, alarm_until=a.last, batch_top=b.last, batch_until=b.last
    )
    assert aa2 is not None
    await ctx.bye(link, w2.epoch)
    return (
        f"ALARM {seqs(a)}, ALARM_ACK {aa.up_to_seq}, the same ALARM again: SEQ_ORDER; next session, the same ALARM "
        f"and its batch: {', '.join(order)}"
    )


@server_case("alarm-count-zero", "5, 7.6")
async def alarm_count_zero(ctx: ServerCtx) -> str:
    """An ALARM of count 0 and no records is MALFORMED (check 1)."""
    return await alarm_refused(ctx, lambda h: b"\x00\x00", "MALFORMED")


@server_case("alarm-count-mismatch", "5, 7.6")
async def alarm_count_mismatch(ctx: ServerCtx) -> str:
    """An ALARM of count 2 with one record is MALFORMED (check 1)."""
    return await alarm_refused(ctx, lambda h: c.Alarm((c.Record(h + 1, now_us(), ALARM_FORCED),), count=2), "MALFORMED")


@server_case("alarm-short-payload", "5, 7.6")
async def alarm_short_payload(ctx: ServerCtx) -> str:
    """An ALARM payload of one byte (shorter than its 2-byte head) is MALFORMED (check 1)."""
    return await alarm_refused(ctx, lambda h: b"\x01", "MALFORMED")


@server_case("alarm-before-welcome", "4, 6.1, 6.2")
async def alarm_before_welcome(ctx: ServerCtx) -> str:
    """A valid ALARM before HELLO is ILLEGAL_IN_STATE (4: ALARM is legal in streaming only)."""
    pid = ctx.pid(3)
    link = await ctx.dial(pid)
    await link.send_msg(c.Alarm((c.Record(1, now_us(), ALARM_FORCED),)))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    return "ILLEGAL_IN_STATE; " + await ctx.fresh_session_ok(pid)


@server_case("wrong-direction-alarm-ack", "4, 6.1")
async def wrong_direction_alarm_ack(ctx: ServerCtx) -> str:
    """An ALARM_ACK (node to panel) sent by the panel in STREAMING is ILLEGAL_IN_STATE."""
    link, w = await ctx.session(ctx.pid(3))
    await link.send_msg(c.AlarmAck(w.epoch, 0))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0)
    return "ILLEGAL_IN_STATE"


# ---------------------------------------------------------------------------------------------- configuration (8)


async def collect_push(link: Link, within: float, *, first: c.Message | None = None) -> tuple[str, Any, list[str]]:
    """One whole push: ("delta", ConfigDelta) or ("snapshot", (version, digest, ops)), plus SHOULD notes."""
    notes: list[str] = []
    m = first or await link.expect((c.CONFIG_DELTA, c.CONFIG_SNAPSHOT), within, skip=(c.HEARTBEAT, c.ACK))
    if isinstance(m, c.ConfigDelta):
        return "delta", m, notes
    assert isinstance(m, c.ConfigSnapshot)
    check(m.part == 0, f"snapshot begins with part {m.part} (5: parts in order)")
    ops = list(m.ops)
    head = m
    while m.part + 1 < head.parts:
        n = await link.expect(c.CONFIG_SNAPSHOT, 3.0, skip=(c.HEARTBEAT, c.ACK), what=" (the next snapshot part)")
        assert isinstance(n, c.ConfigSnapshot)
        check(n.part == m.part + 1, f"snapshot part {n.part} after {m.part} (5)")
        check(
            (n.version, n.digest, n.parts) == (head.version, head.digest, head.parts),
            "snapshot parts differ in version/digest/parts (5)",
        )
        ops += n.ops
        m = n
    if any(not isinstance(op, c.PutCardholder | c.PutSchedule | c.PutDoor | c.PutAccessLevel) for op in ops):
        notes.append("snapshot has Delete ops (5: SHOULD only Put)")
    elif ops != c.Config().applied(ops).canonical():
        notes.append("snapshot not in canonical order (5: SHOULD)")
    return "snapshot", (head.version, head.digest, ops, head.parts, head.epoch), notes


def push_desc(kind: str, push: Any) -> str:
    if kind == "delta":
        return describe(push)
    return f"CONFIG_SNAPSHOT v{push[0]} in {push[3]} part(s)"


@server_case("config-converged-no-push", "8.3")
async def config_converged(ctx: ServerCtx) -> str:
    """A panel whose HELLO version and digest equal the WELCOME's receives no push."""
    pid = ctx.pid(1)
    if ctx.s.config is None:
        await ctx.probe(pid)
    link, w = await ctx.session(pid)
    check((w.config_version, w.config_digest) == ctx.s.config, "server configuration changed between sessions")
    await link.expect_quiet(1.5, allow=(c.HEARTBEAT,))
    await ctx.bye(link, w.epoch)
    return f"v{w.config_version}: no push in 1.5 s"


@server_case("config-push-idle", "6.2, 8.3, 13.3")
async def config_push_idle(ctx: ServerCtx) -> str:
    """A panel that sends nothing after HELLO and claims other content gets a push anyway."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid, heartbeats=False, config_version=0, config_digest=BOGUS_DIGEST)
    m = await link.expect(
        (c.CONFIG_DELTA, c.CONFIG_SNAPSHOT), 2.0, skip=(c.HEARTBEAT,), what=" while the panel is silent (8.3)"
    )
    await ctx.bye(link, w.epoch)
    return f"{describe(m)} without a word from the panel"


async def _expect_snapshot(ctx: ServerCtx, why: str, **hello: Any) -> str:
    pid = ctx.pid(1)
    link, w = await ctx.session(pid, **hello)
    kind, push, notes = await collect_push(link, 3.0)
    check(kind == "snapshot", f"{push_desc(kind, push)}; expected a CONFIG_SNAPSHOT ({why})")
    version, _digest, ops, parts, epoch = push
    check(epoch == w.epoch, f"snapshot epoch {epoch} != session {w.epoch}")
    check(version == w.config_version, f"snapshot of v{version}, WELCOME said v{w.config_version} (8.3: of Vs)")
    await ctx.bye(link, w.epoch)
    return f"snapshot v{version} ({parts} part(s), {len(ops)} ops)" + ("; " + "; ".join(notes) if notes else "")


@server_case("config-content-mismatch-snapshot", "8.3")
async def config_same_version(ctx: ServerCtx) -> str:
    """Same version, another digest: CONFIG_SNAPSHOT."""
    if ctx.s.config is None:
        await ctx.probe(ctx.pid(1))
    assert ctx.s.config is not None
    return await _expect_snapshot(
        ctx, "same version, other content", config_version=ctx.s.config[0], config_digest=BOGUS_DIGEST
    )


@server_case("config-bad-base-snapshot", "8.3")
async def config_bad_base(ctx: ServerCtx) -> str:
    """Version 0 with a digest that is not the empty one: CONFIG_SNAPSHOT (no delta from a base that differs)."""
    return await _expect_snapshot(
        ctx, "the digest at v0 is not the HELLO's", config_version=0, config_digest=BOGUS_DIGEST
    )


@server_case("config-ahead-snapshot", "8.3, 13.3")
async def config_ahead(ctx: ServerCtx) -> str:
    """A panel claiming a version ahead of the server gets a CONFIG_SNAPSHOT of the server's version."""
    if ctx.s.config is None:
        await ctx.probe(ctx.pid(1))
    assert ctx.s.config is not None
    return await _expect_snapshot(ctx, "panel ahead", config_version=ctx.s.config[0] + 1000, config_digest=BOGUS_DIGEST)


@server_case("config-snapshot-apply-ack", "8.1, 8.4")
async def config_snapshot_ack(ctx: ServerCtx) -> str:
    """The snapshot's ops build a configuration whose digest is the push's and WELCOME's; its CONFIG_ACK is taken."""
    pid = ctx.pid(1)
    if ctx.s.config is None:
        await ctx.probe(pid)
    assert ctx.s.config is not None
    link, w = await ctx.session(pid, config_version=ctx.s.config[0], config_digest=BOGUS_DIGEST)
    kind, push, notes = await collect_push(link, 3.0)
    check(kind == "snapshot", f"{push_desc(kind, push)}; expected a CONFIG_SNAPSHOT")
    version, digest, ops, _, _ = push
    mine = c.Config().applied(ops).digest()
    check(mine == digest, f"digest of the snapshot's ops {mine.hex()[:16]} != its digest {digest.hex()[:16]} (8.1)")
    check(digest == w.config_digest, f"snapshot digest {digest.hex()[:16]} != WELCOME's {w.config_digest.hex()[:16]}")
    await link.send_msg(c.ConfigAck(version, mine))
    await link.expect_quiet(1.5, allow=(c.HEARTBEAT, c.ACK))
    await ctx.bye(link, w.epoch)
    return f"v{version}, {len(ops)} ops, digest {mine.hex()[:12]} matches; CONFIG_ACK taken" + (
        "; " + "; ".join(notes) if notes else ""
    )


async def _delta_session(ctx: ServerCtx) -> tuple[Link, c.Welcome, c.ConfigDelta]:
    pid = ctx.pid(1)
    if ctx.s.config is None:
        await ctx.probe(pid)
    assert ctx.s.config is not None
    if ctx.s.config[0] == 0:
        raise Skip("not applicable: the server is at configuration version 0, so no delta can exist")
    link, w = await ctx.session(pid, config_version=0, config_digest=c.EMPTY_DIGEST)
    kind, push, _ = await collect_push(link, 3.0)
    if kind != "delta":
        await ctx.bye(link, w.epoch)
        raise Skip(
            f"not applicable: the node sent a snapshot of v{push[0]} to a v0 panel (allowed if it has no "
            "history from v0, 8.3)"
        )
    assert isinstance(push, c.ConfigDelta)
    return link, w, push


@server_case("config-delta-apply-ack", "8.1, 8.3, 8.4")
async def config_delta_ack(ctx: ServerCtx) -> str:
    """A delta from v0: applied to the empty configuration its digest is the push's; its CONFIG_ACK is taken."""
    link, w, d = await _delta_session(ctx)
    check(d.from_version == 0, f"delta from v{d.from_version} to a v0 panel (8.3)")
    check(d.to_version == w.config_version, f"delta to v{d.to_version}, WELCOME said v{w.config_version}")
    check(d.epoch == w.epoch, f"delta epoch {d.epoch} != session {w.epoch}")
    mine = c.Config().applied(d.ops).digest()
    check(mine == d.digest, f"digest after the delta {mine.hex()[:16]} != its digest {d.digest.hex()[:16]}")
    await link.send_msg(c.ConfigAck(d.to_version, mine))
    await link.expect_quiet(1.5, allow=(c.HEARTBEAT, c.ACK))
    await ctx.bye(link, w.epoch)
    return f"delta 0->{d.to_version}, {len(d.ops)} ops, digest matches; CONFIG_ACK taken"


@server_case("config-ack-unknown-version", "8.4")
async def config_ack_unknown(ctx: ServerCtx) -> str:
    """A CONFIG_ACK for a version never pushed in the session is CONFIG_VERSION."""
    pid = ctx.pid(1)
    link, w = await ctx.session(pid)
    await link.expect_quiet(0.3, allow=(c.HEARTBEAT,))
    await link.send_msg(c.ConfigAck(w.config_version + 1000, w.config_digest))
    await link.expect_error("CONFIG_VERSION", 3.0)
    return f"CONFIG_ACK v{w.config_version + 1000}: CONFIG_VERSION"


@server_case("config-ack-wrong-digest-after-delta", "8.5")
async def config_wrong_digest_delta(ctx: ServerCtx) -> str:
    """A CONFIG_ACK with a wrong digest after a delta: the node sends a snapshot of its current version."""
    link, w, d = await _delta_session(ctx)
    await link.send_msg(c.ConfigAck(d.to_version, BOGUS_DIGEST))
    m = await link.expect((c.CONFIG_SNAPSHOT, c.CONFIG_DELTA, c.ERROR), 3.0, skip=(c.HEARTBEAT, c.ACK))
    check(isinstance(m, c.ConfigSnapshot), f"expected a CONFIG_SNAPSHOT, got {describe(m)} (8.5)")
    _kind, push, _ = await collect_push(link, 3.0, first=m)
    version, digest, ops, _, _ = push
    mine = c.Config().applied(ops).digest()
    check(mine == digest, "digest of the snapshot's ops != its digest (8.1)")
    await link.send_msg(c.ConfigAck(version, mine))
    await link.expect_quiet(1.0, allow=(c.HEARTBEAT, c.ACK))
    await ctx.bye(link, w.epoch)
    return f"snapshot v{version} after the wrong digest; its CONFIG_ACK taken"


@server_case("config-ack-wrong-digest-after-snapshot", "8.5")
async def config_wrong_digest_snapshot(ctx: ServerCtx) -> str:
    """A CONFIG_ACK with a wrong digest after a snapshot is CONFIG_DIGEST."""
    pid = ctx.pid(1)
    if ctx.s.config is None:
        await ctx.probe(pid)
    assert ctx.s.config is not None
    link, _w = await ctx.session(pid, config_version=ctx.s.config[0], config_digest=BOGUS_DIGEST)
    kind, push, _ = await collect_push(link, 3.0)
    check(kind == "snapshot", f"{push_desc(kind, push)}; expected a CONFIG_SNAPSHOT")
    await link.send_msg(c.ConfigAck(push[0], BOGUS_DIGEST))
    await link.expect_error("CONFIG_DIGEST", 3.0)
    return "CONFIG_DIGEST"


# ---------------------------------------------------------------------------------------------- liveness (9)

LONGEST = 12.5  # s: a liveness case the node's intervals would make longer than this is skipped


def intervals(w: c.Welcome) -> tuple[float, float]:
    """H and I of 9.1, in seconds, from the session's WELCOME."""
    return w.heartbeat_ms / 1000, w.idle_ms / 1000


async def busy_session(ctx: ServerCtx, pid: int) -> tuple[Link, c.Welcome, float, int, bytes]:
    """A session whose node is busy from the start (9.1): the HELLO claims other content at the server's version,
    so a CONFIG_SNAPSHOT (8.3) awaits CONFIG_ACK. The battery sends nothing of its own.

    Returns the link, the WELCOME, when the push's first part arrived (the node became busy), and the version
    and digest a CONFIG_ACK of the snapshot carries."""
    if ctx.s.config is None:
        await ctx.probe(pid)
    assert ctx.s.config is not None
    link, w = await ctx.session(pid, heartbeats=False, config_version=ctx.s.config[0], config_digest=BOGUS_DIGEST)
    first = await link.expect(
        (c.CONFIG_DELTA, c.CONFIG_SNAPSHOT), 3.0, skip=(c.HEARTBEAT,), what=" after WELCOME (6.2, 8.3)"
    )
    t_busy = trio.current_time()
    kind, push, _ = await collect_push(link, 3.0, first=first)
    check(kind == "snapshot", f"{push_desc(kind, push)}; expected a CONFIG_SNAPSHOT (8.3: other content)")
    version, _digest, ops, _, _ = push
    return link, w, t_busy, version, c.Config().applied(ops).digest()


async def answered(link: Link, epoch: int, hb: float, what: str) -> float:
    """Send a HEARTBEAT; the node's next frame answers it within a quarter interval + 100 ms (9.1 rule 4)."""
    await link.send_msg(c.Heartbeat(epoch))
    t0 = link.last_sent
    limit = slack(hb)
    rx = await link.recv(limit)
    if rx is None:
        raise Fail(f"{what}: no answer to the panel's HEARTBEAT within {limit * 1000:.0f} ms (9.1 rule 4: at once)")
    check(rx.kind == "msg" and rx.msg is not None, f"{what}: the panel's HEARTBEAT was followed by {rx.describe()}")
    m = rx.msg
    assert m is not None
    if isinstance(m, c.Heartbeat):
        check(m.epoch == epoch, f"{what}: the answer's epoch {m.epoch} != session {epoch} (9.2)")
    else:
        # "with a HEARTBEAT, unless another frame of its own goes out first"
        check(
            m.TYPE in (c.ACK, c.CONFIG_DELTA, c.CONFIG_SNAPSHOT),
            f"{what}: the panel's HEARTBEAT was answered with {describe(m)} (9.1 rule 4)",
        )
    return rx.at - t0


@server_case("heartbeat-answer", "9.1, 9.2")
async def heartbeat_answer(ctx: ServerCtx) -> str:
    """The node answers every HEARTBEAT at once (rule 4), quiet and busy, with the session's epoch (9.2)."""
    pid = ctx.pid(2)
    link, w = await ctx.session(pid, heartbeats=False)
    hb, _ = intervals(w)
    await link.expect_quiet(0.3, allow=(c.HEARTBEAT,))
    quiet: list[float] = []
    for i in range(3):
        quiet.append(await answered(link, w.epoch, hb, f"quiet node, HEARTBEAT {i + 1} of 3"))
        await link.expect_quiet(0.3, allow=(c.HEARTBEAT,))
    await ctx.bye(link, w.epoch)
    link, w, _t, _v, _d = await busy_session(ctx, pid)
    busy = await answered(link, w.epoch, hb, "busy node (a CONFIG_SNAPSHOT awaiting CONFIG_ACK)")
    await ctx.bye(link, w.epoch)
    ms = ", ".join(f"{x * 1000:.0f}" for x in quiet)
    return f"answered in {ms} ms while quiet, {busy * 1000:.0f} ms while busy (limit {slack(hb) * 1000:.0f} ms)"


@server_case("quiet-node-no-heartbeat", "9.1")
async def quiet_node_no_heartbeat(ctx: ServerCtx) -> str:
    """A quiet node (nothing unacknowledged, nothing pushed) sends no HEARTBEAT of its own for 2 H (rule 3).

    The battery plays a quiet panel: it probes once per idle_ms (rule 2) if the window reaches it, and each
    probe gets exactly its answer (rule 4).
    """
    pid = ctx.pid(2)
    link, w = await ctx.session(pid, heartbeats=False)
    hb, idle = intervals(w)
    window = 2 * hb
    if window > LONGEST:
        await ctx.bye(link, w.epoch)
        raise Skip(f"not run: 2 x heartbeat_ms {w.heartbeat_ms} ms is longer than {LONGEST:g} s")
    t0 = trio.current_time()
    end = t0 + window
    next_probe = link.last_sent + 0.8 * idle  # our last frame was the HELLO
    pending: float | None = None
    probes = 0
    while (now := trio.current_time()) < end:
        if pending is None and now >= next_probe:
            await link.send_msg(c.Heartbeat(w.epoch))
            pending, probes = link.last_sent, probes + 1
            next_probe = pending + 0.8 * idle
            continue
        wake = min(end, pending + slack(hb) if pending is not None else next_probe)
        rx = await link.recv(max(0.0, wake - now))
        if rx is None:
            check(
                pending is None or trio.current_time() - pending < slack(hb),
                f"no answer to the panel's probe within {slack(hb) * 1000:.0f} ms (9.1 rule 4)",
            )
            continue
        check(rx.kind == "msg" and rx.msg is not None, f"expected the session to stay up, got {rx.describe()}")
        if isinstance(rx.msg, c.Heartbeat) and pending is not None:
            pending = None  # the answer to our probe
            continue
        raise Fail(
            f"{rx.describe()} {rx.at - t0:.2f} s after WELCOME from a quiet node with nothing to answer "
            "(9.1 rule 3: a quiet node sends no HEARTBEAT of its own)"
        )
    await ctx.bye(link, w.epoch)
    extra = f", {probes} probe(s) answered" if probes else ""
    return f"nothing for {window:.1f} s (heartbeat_ms {w.heartbeat_ms}, idle_ms {w.idle_ms}){extra}"


@server_case("peer-silence-timeout-busy", "9.1, 9.2")
async def peer_silence_busy(ctx: ServerCtx) -> str:
    """Busy (a push awaiting CONFIG_ACK), the panel silent: a frame per H, then TIMEOUT 3 H after the push.

    Rule 1: at least once per H from the push (HEARTBEATs with the session's epoch, 9.2); rule 5: 3 H counted
    from the later of the HELLO and the moment the node became busy, the push.
    """
    pid = ctx.pid(2)
    link, w, t_busy, _v, _d = await busy_session(ctx, pid)
    hb, _ = intervals(w)
    limit = 3 * hb
    if limit + slack(limit) > LONGEST:
        await ctx.bye(link, w.epoch)
        raise Skip(f"not run: 3 x heartbeat_ms {w.heartbeat_ms} ms is longer than {LONGEST:g} s")
    last = trio.current_time()  # the push's last part: the node's last frame sent
    beats, worst = 0, 0.0
    deadline = t_busy + limit + slack(limit)
    while True:
        rx = await link.recv(max(0.0, deadline - trio.current_time()))
        if rx is None:
            raise Fail(
                f"no TIMEOUT within {limit + slack(limit):.2f} s of the push, the panel silent "
                f"(9.1 rule 5: 3 H = {limit:.2f} s while busy); {beats} HEARTBEAT(s) meanwhile"
            )
        check(rx.kind == "msg" and rx.msg is not None, f"expected ERROR TIMEOUT, got {rx.describe()}")
        m = rx.msg
        assert m is not None
        gap = rx.at - last
        worst, last = max(worst, gap), rx.at
        check(
            gap <= hb + slack(hb),
            f"{gap * 1000:.0f} ms without a frame while a push awaits CONFIG_ACK "
            f"(9.1 rule 1: a busy node sends at least once per H = {w.heartbeat_ms} ms)",
        )
        if isinstance(m, c.Heartbeat):
            check(m.epoch == w.epoch, f"HEARTBEAT epoch {m.epoch} != session {w.epoch} (9.2)")
            beats += 1
        elif isinstance(m, c.Error):
            check(m.code == c.CODES["TIMEOUT"], f"expected ERROR TIMEOUT, got {describe(m)}")
            dt = rx.at - t_busy
            check(
                dt >= limit - slack(limit),
                f"TIMEOUT only {dt:.2f} s after the push (9.1 rule 5: 3 H = {limit:.2f} s while busy)",
            )
            await link.expect_close(2.0, after="its ERROR")
            return (
                f"{beats} HEARTBEAT(s), longest gap {worst * 1000:.0f} ms; TIMEOUT {dt:.2f} s after the push "
                f"(3 x {w.heartbeat_ms} ms)"
            )
        elif not isinstance(m, c.ConfigDelta | c.ConfigSnapshot):
            raise Fail(f"unexpected {describe(m)} while a push awaits CONFIG_ACK")


@server_case("node-quiet-after-config-ack", "9.1")
async def quiet_after_config_ack(ctx: ServerCtx) -> str:
    """After the CONFIG_ACK of its push the node is quiet again: no HEARTBEAT of its own (rule 3).

    Before it, busy, it sends a HEARTBEAT within H of the push (rule 1).
    """
    pid = ctx.pid(1)
    link, w, t_busy, version, digest = await busy_session(ctx, pid)
    hb, idle = intervals(w)
    await link.expect(
        c.HEARTBEAT,
        max(0.0, t_busy + hb + slack(hb) - trio.current_time()),
        skip=(),
        what=" while a push awaits CONFIG_ACK (9.1 rule 1: a busy node sends at least once per H)",
    )
    first = trio.current_time() - t_busy
    await link.send_msg(c.ConfigAck(version, digest))
    window = min(2 * hb, 0.9 * idle)  # the battery's panel stays quiet, and below I (rule 2) without a probe
    if window > LONGEST:
        await ctx.bye(link, w.epoch)
        raise Skip(f"not run: heartbeat_ms {w.heartbeat_ms} makes the window longer than {LONGEST:g} s")
    await link.expect_quiet(0.1, allow=(c.HEARTBEAT,))  # a HEARTBEAT that crossed our CONFIG_ACK
    try:
        await link.expect_quiet(window, allow=())
    except Fail as exc:
        raise Fail(f"{exc} after the CONFIG_ACK (9.1 rule 3: a quiet node sends no HEARTBEAT of its own)") from None
    await ctx.bye(link, w.epoch)
    return f"HEARTBEAT {first * 1000:.0f} ms into the push; after the CONFIG_ACK nothing for {window + 0.1:.1f} s"


@server_case("peer-silence-timeout-quiet", "9.1")
async def peer_silence_quiet(ctx: ServerCtx) -> str:
    """Quiet (its ACK sent, nothing pushed), the panel silent: no HEARTBEAT, no TIMEOUT at 3 H, TIMEOUT at I + 3 H.

    Rule 3: a quiet node sends no HEARTBEAT of its own; rule 5: a quiet end times out after I + 3 H without a
    frame (counted from the panel's last frame, its batch), not after the 3 H of a busy one.
    """
    pid = ctx.pid(2)
    link, w = await ctx.session(pid, heartbeats=False)
    hb, idle = intervals(w)
    limit, busy = idle + 3 * hb, 3 * hb
    if limit + slack(limit) > LONGEST:
        await ctx.bye(link, w.epoch)
        raise Skip(
            f"not run: with heartbeat_ms {w.heartbeat_ms} and idle_ms {w.idle_ms} the case could last "
            f"{limit + slack(limit):.1f} s (more than {LONGEST:g} s)"
        )
    b = batch(w.hwm + 1, 1)
    await link.send_msg(b)
    t0 = link.last_sent  # the panel's last frame
    await ack_covering(link, b.last, w.epoch, highest_sent=b.last, floor=w.hwm)
    t_ack = trio.current_time()
    rx = await link.recv(max(0.0, t0 + limit + slack(limit) - trio.current_time()))
    if rx is None:
        raise Fail(f"no TIMEOUT within {limit + slack(limit):.2f} s of silence (9.1 rule 5: I + 3 H = {limit:.2f} s)")
    check(rx.kind == "msg" and rx.msg is not None, f"expected ERROR TIMEOUT, got {rx.describe()}")
    m = rx.msg
    dt = rx.at - t0
    if isinstance(m, c.Heartbeat):
        raise Fail(
            f"a HEARTBEAT {rx.at - t_ack:.2f} s after the ACK, to a silent panel "
            "(9.1 rule 3: a quiet node sends no HEARTBEAT of its own)"
        )
    check(isinstance(m, c.Error), f"expected ERROR TIMEOUT, got {rx.describe()} {dt:.2f} s into the silence")
    assert isinstance(m, c.Error)
    check(m.code == c.CODES["TIMEOUT"], f"expected ERROR TIMEOUT, got {describe(m)}")
    apart = limit - slack(limit) > busy + slack(busy)
    check(
        dt >= limit - slack(limit),
        f"TIMEOUT after only {dt:.2f} s of silence while quiet (9.1 rule 5: I + 3 H = {limit:.2f} s"
        + (f"; 3 H = {busy:.2f} s is the limit while busy)" if apart else ")"),
    )
    await link.expect_close(2.0, after="its ERROR")
    note = "" if apart else f"; with these intervals a 3 H limit ({busy:.2f} s) is not told apart"
    return f"no HEARTBEAT; TIMEOUT after {dt:.2f} s of silence (I + 3 H = {limit:.2f} s){note}"


@server_case("heartbeat-epoch-below", "9.2")
async def heartbeat_epoch_below(ctx: ServerCtx) -> str:
    """A panel HEARTBEAT with an epoch below the session's is EPOCH_MISMATCH."""
    pid = ctx.pid(2)
    link, w = await ctx.session(pid, heartbeats=False)
    await link.send_msg(c.Heartbeat(w.epoch - 1))
    await link.expect_error("EPOCH_MISMATCH", 3.0)
    return f"HEARTBEAT epoch {w.epoch - 1} in session {w.epoch}: EPOCH_MISMATCH"


# ---------------------------------------------------------------------------------------------- sessions (7.5, 10)


@server_case("session-replaced", "7.5")
async def session_replaced(ctx: ServerCtx) -> str:
    """A second session of the same panel: the first gets ERROR REPLACED, the second its WELCOME."""
    pid = ctx.pid(2)
    first, _w1 = await ctx.session(pid)
    second = await ctx.dial(pid)
    await second.send_msg(ctx.hello(pid))
    w2 = await second.expect(c.WELCOME, 6.0, skip=(), what=" for the second session")
    await first.expect_error("REPLACED", 3.0)
    assert isinstance(w2, c.Welcome)
    await ctx.bye(second, w2.epoch)
    return "first session: REPLACED; second: WELCOME"


@server_case("panel-bye", "10")
async def panel_bye(ctx: ServerCtx) -> str:
    """A BYE from the panel: the node closes without answering (no BYE, no ERROR)."""
    link, w = await ctx.session(ctx.pid(2))
    await link.send_msg(c.Bye(w.epoch, 0))
    await link.expect_close(3.0, after="the panel's BYE", allow=(c.HEARTBEAT,))
    return "closed without an answer"


@server_case("panel-error", "10")
async def panel_error(ctx: ServerCtx) -> str:
    """An ERROR from the panel: the node closes without answering."""
    link, w = await ctx.session(ctx.pid(2))
    await link.send_msg(c.Error(w.epoch, c.CODES["INTERNAL"], "conformance: a panel's error"))
    await link.expect_close(3.0, after="the panel's ERROR", allow=(c.HEARTBEAT,))
    return "closed without an answer"


# ---------------------------------------------------------------------------------------------- TLS (2.2)


@server_case("tls-identity", "2.2", tls_only=True)
async def tls_identity(ctx: ServerCtx) -> str:
    """The node speaks TLS 1.3 with a certificate of the site CA whose CN is node-<name>."""
    link = await ctx.dial(ctx.pid(0))
    v, cn = link.tls_version(), link.peer_cn()
    check(v == "TLSv1.3", f"negotiated {v}")
    check(cn is not None and NODE_CN.match(cn) is not None, f"node certificate CN {cn!r} (2.2: node-<name>)")
    await link.aclose()
    return f"{v}, CN {cn}"


async def _tls_refused(ctx: ServerCtx, ident: Any, what: str, *, tls12: bool = False) -> str:
    assert ctx.t.pki is not None
    pid = ctx.pid(0)
    ssl_ctx = _tls.context(ctx.t.pki / "ca.pem", ident, tls12_only=tls12)
    host, port = ctx.t.addr()
    link = await connect_or_refused(host, port, ssl_ctx, ctx.nursery)
    if isinstance(link, str):
        return link
    ctx.links.append(link)
    # TLS 1.3: the server's verdict on the client certificate may come after the client's handshake is done.
    rx = await link.recv(1.0)  # the alert, without provoking a reset by sending first
    if rx is None:
        await link.send_msg(ctx.hello(pid))
        rx = await link.recv(4.0)
    check(rx is not None, f"{what}: the session stayed open and silent for 4 s")
    assert rx is not None
    check(rx.kind != "msg", f"{what} was served: {rx.describe()} (2.2: refused at the TLS layer)")
    return f"refused after the handshake, {alert_words(rx.error)} ({rx.describe()})"


@server_case("tls12-refused", "2.2", tls_only=True)
async def tls12_refused(ctx: ServerCtx) -> str:
    """A TLS 1.2-only client is refused at the TLS layer."""
    return await _tls_refused(ctx, ctx.identity(ctx.pid(0)), "a TLS 1.2 client", tls12=True)


@server_case("tls-rogue-ca-refused", "2.2", tls_only=True)
async def tls_rogue(ctx: ServerCtx) -> str:
    """A client certificate from another CA is refused at the TLS layer."""
    return await _tls_refused(ctx, _tls.rogue_identity(f"panel-{ctx.pid(0)}"), "a certificate of another CA")


@server_case("tls-no-client-cert-refused", "2.2", tls_only=True)
async def tls_no_cert(ctx: ServerCtx) -> str:
    """A client without a certificate is refused at the TLS layer."""
    return await _tls_refused(ctx, None, "a client without a certificate")


@server_case("tls-plaintext-refused", "2.2", tls_only=True)
async def tls_plaintext(ctx: ServerCtx) -> str:
    """A plain-text HELLO to the TLS port gets no fieldsync frame back."""
    link = await ctx.dial(ctx.pid(0), plain=True)
    await link.send_msg(ctx.hello(ctx.pid(0)))
    rx = await link.recv(4.0)
    check(rx is not None, "no refusal within 4 s")
    assert rx is not None
    check(rx.kind != "msg", f"plain text answered with {rx.describe()} (2.2: no frame outside TLS)")
    return f"no fieldsync frame ({rx.describe()})"


# ---------------------------------------------------------------------------------------------- epochs, last


@server_case("hello-stale-epoch", "6.2")
async def hello_stale(ctx: ServerCtx) -> str:
    """A HELLO whose max_epoch is above the node's epoch is STALE_EPOCH."""
    pid = ctx.pid(3)
    if ctx.s.epoch == 0:
        await ctx.probe(pid)
    link = await ctx.dial(pid)
    await link.send_msg(ctx.hello(pid, max_epoch=ctx.s.epoch + 1))
    await link.expect_error("STALE_EPOCH", 6.0, skip=())
    return f"max_epoch {ctx.s.epoch + 1} vs node epoch {ctx.s.epoch}: STALE_EPOCH"


@server_case("heartbeat-epoch-above", "9.2")
async def heartbeat_epoch_above(ctx: ServerCtx) -> str:
    """A panel HEARTBEAT with an epoch above the session's is STALE_EPOCH."""
    link, w = await ctx.session(ctx.pid(2), heartbeats=False)
    await link.send_msg(c.Heartbeat(w.epoch + 1))
    await link.expect_error("STALE_EPOCH", 3.0)
    return f"HEARTBEAT epoch {w.epoch + 1} in session {w.epoch}: STALE_EPOCH"


# ---------------------------------------------------------------------------------------------- parked sessions (6.3)
#
# Against `--park HOST:PORT`, the park address of the node that is the standby (2.1). A takeover cannot be caused
# from here, so TAKEOVER (6.3 rule 4) is not tried in this mode.


async def parked(ctx: ServerCtx, pid: int, **hello: Any) -> tuple[Link, c.Hello, c.Standby, float]:
    """A parked session: a HELLO on the park address answered with STANDBY (6.3 rule 2), not WELCOME.

    Returns the link, the HELLO, the STANDBY and how long it took to come.
    """
    link = await ctx.dial(pid, park=True)
    h = ctx.hello(pid, **hello)
    await link.send_msg(h)
    t0 = link.last_sent
    m = await link.expect(
        c.STANDBY, 6.0, skip=(), what=" after HELLO on the park address (6.3 rule 2: STANDBY within 5 s)"
    )
    assert isinstance(m, c.Standby)
    return link, h, m, trio.current_time() - t0


def park_intervals(m: c.Standby) -> tuple[float, float]:
    """H and I of the parked session (6.3 rule 3), in seconds, from its STANDBY."""
    return m.heartbeat_ms / 1000, m.idle_ms / 1000


async def park_quiet(link: Link, seconds: float, what: str) -> None:
    """Nothing at all from the parked node for `seconds` (6.3 rule 3: it sends no HEARTBEAT of its own)."""
    try:
        await link.expect_quiet(seconds, allow=())
    except Fail as exc:
        raise Fail(f"{exc} {what} (6.3 rule 3, 9.1 rule 3: a parked node sends none of its own)") from None


async def park_answered(link: Link, probe_epoch: int, hb: float, what: str) -> float:
    """Send a probe; the parked node's next frame is its answer, a HEARTBEAT of epoch 0, within a quarter H + 100 ms.

    6.3 rule 3 (the node answers every HEARTBEAT at once; its HEARTBEAT carries 0), 9.1 rule 4, 9.2.
    """
    await link.send_msg(c.Heartbeat(probe_epoch))
    t0 = link.last_sent
    limit = slack(hb)
    rx = await link.recv(limit)
    if rx is None:
        raise Fail(f"{what}: no answer to the panel's probe within {limit * 1000:.0f} ms (6.3 rule 3, 9.1 rule 4)")
    check(
        rx.kind == "msg" and isinstance(rx.msg, c.Heartbeat),
        f"{what}: the probe was followed by {rx.describe()} (6.3 rule 3: HEARTBEAT only in PARKED)",
    )
    assert isinstance(rx.msg, c.Heartbeat)
    check(rx.msg.epoch == 0, f"{what}: the parked node's HEARTBEAT carries epoch {rx.msg.epoch} (6.3 rule 3, 9.2: 0)")
    return max(0.0, rx.at - t0)


@server_case("park-hello-standby", "2.1, 5, 6.3", park=True)
async def park_hello_standby(ctx: ServerCtx) -> str:
    """On the park address a valid HELLO gets STANDBY within 5 s, not WELCOME, its fields in range (6.3 rule 2).

    The ranges of section 5 (node_id <= 64 bytes, heartbeat_ms >= 1, idle_ms >= heartbeat_ms) are checked as the
    STANDBY is read. With TLS the node's certificate is the site's, CN node-<name> (2.2).
    """
    pid = ctx.pid(0)
    link, h, m, dt = await parked(ctx, pid)
    check(dt <= 5.0, f"STANDBY after {dt:.2f} s (6.3 rule 2: within 5 s)")
    extra = ""
    if ctx.tls:
        v, cn = link.tls_version(), link.peer_cn()
        check(v == "TLSv1.3", f"negotiated {v} on the park address (2.2)")
        check(cn is not None and NODE_CN.match(cn) is not None, f"standby certificate CN {cn!r} (2.2: node-<name>)")
        extra = f"; {v}, CN {cn}"
    await ctx.bye(link, h.max_epoch)
    return f"STANDBY node {m.node_id!r} heartbeat {m.heartbeat_ms} ms idle {m.idle_ms} ms, in {dt * 1000:.0f} ms{extra}"


@server_case("park-heartbeat-answer", "6.3, 9.1, 9.2", park=True)
async def park_heartbeat_answer(ctx: ServerCtx) -> str:
    """A parked node answers every probe at once, with a HEARTBEAT of epoch 0, and sends nothing else (6.3 rule 3).

    9.1 rule 4 (answer at once), 9.2 (a parked node's HEARTBEAT carries 0). The probes carry the HELLO's max_epoch,
    which the node does not check.
    """
    pid = ctx.pid(1)
    link, h, m, _dt = await parked(ctx, pid)
    hb, _ = park_intervals(m)
    await park_quiet(link, 0.3, "right after its STANDBY")
    times: list[float] = []
    for i in range(3):
        times.append(await park_answered(link, h.max_epoch, hb, f"parked, probe {i + 1} of 3"))
        await park_quiet(link, 0.3, f"after its answer to probe {i + 1}")
    await ctx.bye(link, h.max_epoch)
    ms = ", ".join(f"{x * 1000:.0f}" for x in times)
    return f"answered in {ms} ms with HEARTBEAT epoch 0 (limit {slack(hb) * 1000:.0f} ms); nothing else"


@server_case("park-node-no-heartbeat", "6.3, 9.1", park=True)
async def park_node_no_heartbeat(ctx: ServerCtx) -> str:
    """A parked node sends no HEARTBEAT of its own for 2 H of the STANDBY (6.3 rule 3, 9.1 rule 3).

    The battery plays a parked panel: it probes once per the STANDBY's idle_ms (rule 2) if the window reaches it,
    and each probe gets exactly its answer, of epoch 0.
    """
    pid = ctx.pid(2)
    link, h, m, _dt = await parked(ctx, pid)
    hb, idle = park_intervals(m)
    window = 2 * hb
    if window > LONGEST:
        await ctx.bye(link, h.max_epoch)
        raise Skip(f"not run: 2 x the STANDBY's heartbeat_ms {m.heartbeat_ms} ms is longer than {LONGEST:g} s")
    t0 = trio.current_time()
    end = t0 + window
    next_probe = link.last_sent + 0.8 * idle  # our last frame was the HELLO
    pending: float | None = None
    probes = 0
    while (now := trio.current_time()) < end:
        if pending is None and now >= next_probe:
            await link.send_msg(c.Heartbeat(h.max_epoch))
            pending, probes = link.last_sent, probes + 1
            next_probe = pending + 0.8 * idle
            continue
        wake = min(end, pending + slack(hb) if pending is not None else next_probe)
        rx = await link.recv(max(0.0, wake - now))
        if rx is None:
            check(
                pending is None or trio.current_time() - pending < slack(hb),
                f"no answer to the parked panel's probe within {slack(hb) * 1000:.0f} ms (6.3 rule 3, 9.1 rule 4)",
            )
            continue
        check(rx.kind == "msg" and rx.msg is not None, f"expected the parked session to stay up, got {rx.describe()}")
        if isinstance(rx.msg, c.Heartbeat) and pending is not None:
            check(rx.msg.epoch == 0, f"the parked node's HEARTBEAT carries epoch {rx.msg.epoch} (6.3 rule 3, 9.2: 0)")
            pending = None  # the answer to our probe
            continue
        raise Fail(
            f"{rx.describe()} {rx.at - t0:.2f} s after STANDBY from a parked node with nothing to answer "
            "(6.3 rule 3, 9.1 rule 3: it sends no HEARTBEAT of its own)"
        )
    await ctx.bye(link, h.max_epoch)
    extra = f", {probes} probe(s) answered" if probes else ""
    return f"nothing for {window:.1f} s (STANDBY heartbeat_ms {m.heartbeat_ms}, idle_ms {m.idle_ms}){extra}"


@server_case("park-silence-timeout", "6.3, 9.1", park=True)
async def park_silence_timeout(ctx: ServerCtx) -> str:
    """A parked panel silent after its HELLO: no HEARTBEAT from the node, and TIMEOUT after I + 3 H, not before.

    6.3 rule 3: either end gives up after I + 3 H of silence, with the STANDBY's H and I (9.1 rule 5: counted from the
    panel's last frame, its HELLO; the checker's allowance for that limit is I / 4 + 100 ms).
    """
    pid = ctx.pid(3)
    link, h, m, _dt = await parked(ctx, pid)
    t0 = link.last_sent  # the HELLO: the panel's last frame
    hb, idle = park_intervals(m)
    limit = idle + 3 * hb
    if limit + slack(idle) > LONGEST:
        await ctx.bye(link, h.max_epoch)
        raise Skip(
            f"not run: with the STANDBY's heartbeat_ms {m.heartbeat_ms} and idle_ms {m.idle_ms} the case could last "
            f"{limit + slack(idle):.1f} s (more than {LONGEST:g} s)"
        )
    rx = await link.recv(max(0.0, t0 + limit + slack(idle) - trio.current_time()))
    if rx is None:
        raise Fail(
            f"no TIMEOUT within {limit + slack(idle):.2f} s of a parked panel's silence (I + 3 H = {limit:.2f} s)"
        )
    check(rx.kind == "msg" and rx.msg is not None, f"expected ERROR TIMEOUT, got {rx.describe()}")
    msg = rx.msg
    dt = rx.at - t0
    if isinstance(msg, c.Heartbeat):
        raise Fail(
            f"a HEARTBEAT {dt:.2f} s into the parked panel's silence (6.3 rule 3: a parked node sends none of its own)"
        )
    check(isinstance(msg, c.Error), f"expected ERROR TIMEOUT, got {rx.describe()} {dt:.2f} s into the silence")
    assert isinstance(msg, c.Error)
    check(msg.code == c.CODES["TIMEOUT"], f"expected ERROR TIMEOUT, got {describe(msg)}")
    check(
        dt >= limit - slack(idle),
        f"TIMEOUT after only {dt:.2f} s of a parked panel's silence (6.3 rule 3: I + 3 H = {limit:.2f} s)",
    )
    await link.expect_close(2.0, after="its ERROR")
    return f"no HEARTBEAT; TIMEOUT after {dt:.2f} s of silence (I + 3 H = {limit:.2f} s)"


@server_case("park-event-batch-illegal", "6.1, 6.3", park=True)
async def park_event_batch(ctx: ServerCtx) -> str:
    """An EVENT_BATCH while parked is ILLEGAL_IN_STATE (6.3 rule 3: no events in PARKED).

    With --server too, the active node's hwm for the panel does not move.
    """
    pid = ctx.pid(0)
    h0 = await ctx.read_hwm(pid) if ctx.t.host is not None else None
    link, h, _m, _dt = await parked(ctx, pid)
    b = batch(h.newest_seq + 1, 3)
    await link.send_msg(b)
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    if h0 is None:
        return f"EVENT_BATCH {b.first_seq}..{b.last} while parked: ILLEGAL_IN_STATE"
    h1 = await ctx.read_hwm(pid)
    check(h1 == h0, f"ILLEGAL_IN_STATE, but the active node's hwm went {h0} -> {h1}")
    return f"EVENT_BATCH {b.first_seq}..{b.last} while parked: ILLEGAL_IN_STATE; the active node's hwm stays {h1}"


@server_case("park-alarm-illegal", "6.1, 6.3, 7.6", park=True)
async def park_alarm(ctx: ServerCtx) -> str:
    """An ALARM while parked is ILLEGAL_IN_STATE (6.3 rule 3: nothing but HEARTBEAT in PARKED)."""
    link, h, _m, _dt = await parked(ctx, ctx.pid(1))
    await link.send_msg(c.Alarm((c.Record(h.newest_seq + 1, now_us(), ALARM_FORCED),)))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    return "ALARM while parked: ILLEGAL_IN_STATE"


@server_case("park-hello-twice", "6.1, 6.3", park=True)
async def park_hello_twice(ctx: ServerCtx) -> str:
    """A second HELLO while parked is ILLEGAL_IN_STATE (6.1: in PARKED only HEARTBEAT, ERROR and BYE)."""
    pid = ctx.pid(1)
    link, h, _m, _dt = await parked(ctx, pid)
    await link.send_msg(h)
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    return "ILLEGAL_IN_STATE"


@server_case("park-panel-id-mismatch", "2.2, 6.2, 6.3", tls_only=True, park=True)
async def park_panel_id_mismatch(ctx: ServerCtx) -> str:
    """On the park address too, a HELLO panel_id other than the certificate's is PANEL_ID_MISMATCH (6.3 rule 2)."""
    cert_pid = ctx.pid(3)
    other = next((p for p in ctx.t.panel_ids if p != cert_pid), cert_pid + 1000)
    link = await ctx.dial(cert_pid, park=True)
    await link.send_msg(ctx.hello(other))
    await link.expect_error("PANEL_ID_MISMATCH", 6.0, skip=())
    return f"certificate panel-{cert_pid}, HELLO {other} on the park address: PANEL_ID_MISMATCH"


@server_case("park-unknown-panel", "6.2, 6.3", park=True)
async def park_unknown_panel(ctx: ServerCtx) -> str:
    """On the park address too, a panel id not in the site is UNKNOWN_PANEL (6.3 rule 2; needs --unknown-panel-id)."""
    pid = ctx.t.unknown_panel_id
    if pid is None:
        raise Skip("no --unknown-panel-id given")
    link = await ctx.dial(pid, park=True)
    await link.send_msg(ctx.hello(pid))
    await link.expect_error("UNKNOWN_PANEL", 6.0, skip=())
    return f"panel {pid} on the park address: UNKNOWN_PANEL"
