"""Panel cases: the battery plays a node that dials a host-initiated panel (section 15: `--panel HOST:PORT`), and a
standby node whose park address the panel dials (6.3: `--park-listen HOST:PORT`).

Why one module of this size: a list of independent cases in the spec's section order (as
in ``_cases_server``), each a short function named for the rule it tries.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import _codec as c
from . import _tls
from ._base import Fail, Registry, Skip, check, slack
from ._link import Link, Listener, accept, connect, connect_or_refused, describe

panel_case = Registry()

# The intervals this battery's node announces in its WELCOME (5, 9.1): small, so that liveness cases stay short.
HB_MS = 200  # H
IDLE_MS = 1000  # I
HB_S = HB_MS / 1000
IDLE_S = IDLE_MS / 1000
GRACE = 0.1  # s: a panel frame arriving this soon after our reply to its previous one may have crossed it
BOGUS_DIGEST = hashlib.sha256(b"fieldsync conformance: not the digest").digest()
FROM_PANEL = (c.EVENT_BATCH, c.HEARTBEAT, c.CONFIG_ACK, c.ALARM)
PARK_WAIT = 15.0  # s: how long a park case waits for the panel's next park connection (it parks again later, 6.3)


@dataclass
class PanelTarget:
    host: str | None  # None: no --panel (only the park cases run)
    port: int
    panel_id: int
    pki: Path | None = None
    node_name: str = "A"
    epoch: int | None = None

    def addr(self) -> tuple[str, int]:
        if self.host is None:
            raise Skip("needs --panel HOST:PORT")
        return self.host, self.port


@dataclass
class PanelState:
    acked: int = 0  # the highest seq this battery acknowledged (its "store")
    config: c.Config | None = None  # the panel's configuration, once this battery pushed a whole one
    config_version: int | None = None


@dataclass
class Session:
    link: Link
    hello: c.Hello
    welcome: c.Welcome
    hello_at: float = 0.0  # when the HELLO arrived: the panel's last frame before WELCOME

    @property
    def epoch(self) -> int:
        return self.welcome.epoch


@dataclass
class Parked:
    """A park connection the panel opened to the battery (6.3), from its HELLO on."""

    link: Link
    hello: c.Hello
    hello_at: float  # when the HELLO arrived
    accepted_at: float  # when the battery accepted the connection


def example_config() -> list[c.Op]:
    """A small configuration, deliberately not in canonical order (the panel must sort for its digest)."""
    return [
        c.PutCardholder(900_001, 1234, 0, 0, (2, 1)),
        c.PutCardholder(17, 0, 1_700_000_000_000_000, 0, (1,)),
        c.PutDoor(2, 2),
        c.PutAccessLevel(2, ((2, 1),)),
        c.PutSchedule(3, ((0x1F, 480, 1020), (0x60, 600, 720))),
        c.PutDoor(0, 1),
        c.PutSchedule(1, ((0x7F, 0, 1440),)),
        c.PutAccessLevel(1, ((0, 1), (1, 3), (2, 1))),
        c.PutCardholder(1 << 40, 99_999_999, 0, 1_900_000_000_000_000, ()),
    ]


class PanelCtx:
    def __init__(
        self, target: PanelTarget, state: PanelState, nursery: trio.Nursery, park: Listener | None = None
    ) -> None:
        self.t = target
        self.s = state
        self.nursery = nursery
        self.park_listener = park
        self.links: list[Link] = []

    @property
    def tls(self) -> bool:
        return self.t.pki is not None

    def node_identity(self) -> _tls.Identity:
        assert self.t.pki is not None
        ident = _tls.Identity(self.t.pki / f"node-{self.t.node_name}.pem", self.t.pki / f"node-{self.t.node_name}.key")
        if not ident.cert.exists():
            raise Skip(f"no node certificate {ident.cert}")
        return ident

    async def dial(
        self, *, ident: Any = "own", tls12: bool = False, any_version: bool = False, patience: float = 6.0
    ) -> Link:
        """Dial the panel, retrying while it does not accept yet (it may be between sessions)."""
        host, port = self.t.addr()
        ssl_ctx = None
        if self.tls:
            assert self.t.pki is not None
            if ident == "own":
                ident = self.node_identity()
            ssl_ctx = _tls.context(self.t.pki / "ca.pem", ident, tls12_only=tls12)
        deadline = trio.current_time() + patience
        while True:
            try:
                link = await connect(host, port, ssl_ctx, self.nursery, any_version=any_version)
                break
            except OSError as exc:
                if trio.current_time() > deadline:
                    raise Fail(f"the panel at {host}:{port} accepts no connection: {exc}") from None
                await trio.sleep(0.1)
        self.links.append(link)
        return link

    async def hello(self, link: Link) -> c.Hello:
        m = await link.expect(c.HELLO, 5.5, skip=(), what=" as the panel's first frame (6.2.1)")
        assert isinstance(m, c.Hello)
        check(m.panel_id == self.t.panel_id, f"HELLO panel_id {m.panel_id}, expected {self.t.panel_id}")
        return m

    def epoch_for(self, h: c.Hello) -> int:
        return self.t.epoch if self.t.epoch is not None else max(h.max_epoch, 1)

    def hwm_for(self, h: c.Hello) -> int:
        if h.oldest_seq == 0:
            return h.newest_seq
        return min(max(self.s.acked, h.oldest_seq - 1), h.newest_seq)

    def welcome(self, h: c.Hello, **kw: Any) -> c.Welcome:
        args: dict[str, Any] = {
            "node_id": f"conformance-{self.t.node_name}",
            "epoch": self.epoch_for(h),
            "hwm": self.hwm_for(h),
            "config_version": h.config_version,
            "config_digest": h.config_digest,
            "heartbeat_ms": HB_MS,
            "idle_ms": IDLE_MS,
        }
        args.update(kw)
        return c.Welcome(**args)

    async def session(
        self, *, heartbeats: bool = True, answer: bool = True, alarm_acks: bool | None = None, **welcome: Any
    ) -> Session:
        """A session up to WELCOME.

        `answer`: answer each panel HEARTBEAT at once, as a node MUST (9.1 rule 4). `heartbeats`: also send a
        HEARTBEAT of its own twice per H throughout, as a busy node does (rule 1) and more than a quiet one would
        (rule 3); a panel has no rule to refuse them and MUST NOT answer them (rule 4). It is the default so that
        no case but the liveness ones depends on the panel's timers.

        Every ALARM of the session (version 5, 7.6) is checked (the link's AlarmLane: kinds and rising seqs, above
        the WELCOME's hwm, copies equal to their records) and, with `alarm_acks` (by default as `answer`),
        answered at once with an ALARM_ACK of its last seq, as a node MUST; the case sees the ALARM too.
        """
        link = await self.dial()
        h = await self.hello(link)
        hello_at = trio.current_time()
        w = self.welcome(h, **welcome)
        link.watch_alarms(w.epoch, w.hwm, answer=answer if alarm_acks is None else alarm_acks)
        await link.send_msg(w)
        self.note_config(h)
        if answer:
            link.answer_heartbeats(w.epoch)
        if heartbeats:
            link.start_heartbeats(w.epoch, w.heartbeat_ms / 1000)
        return Session(link, h, w, hello_at)

    def note_config(self, h: c.Hello) -> None:
        """What a HELLO says of the panel's configuration: forget the one pushed if its version is not the HELLO's."""
        if self.s.config_version is not None and h.config_version != self.s.config_version:
            self.s.config = None
        self.s.config_version = h.config_version

    async def bye(self, s: Session) -> None:
        await s.link.send_msg(c.Bye(s.epoch, 0))
        await s.link.aclose()

    # ------------------------------------------------------------------------------------------ park connections

    def standby(self, **kw: Any) -> c.Standby:
        """The battery's STANDBY (5, 6.3 rule 2): the intervals of its WELCOME, so that parked cases stay short."""
        args: dict[str, Any] = {"node_id": f"conformance-{self.t.node_name}", "heartbeat_ms": HB_MS, "idle_ms": IDLE_MS}
        args.update(kw)
        return c.Standby(**args)

    async def park(self) -> Parked:
        """The panel's next park connection to the battery (6.3), up to its HELLO, its first frame (6.2 step 1).

        Waits up to PARK_WAIT s: after a park session ends the panel parks again later (6.3 rule 6). A connection
        the panel gave up on before its HELLO (a failed TLS handshake, an end of stream) is passed over.
        """
        listener = self.park_listener
        if listener is None:
            raise Skip("needs --park-listen HOST:PORT")
        ssl_ctx = None
        if self.tls:
            assert self.t.pki is not None
            ssl_ctx = _tls.server_context(self.t.pki / "ca.pem", self.node_identity())
        deadline = trio.current_time() + PARK_WAIT
        why = ""
        while True:
            got = await listener.take(max(0.0, deadline - trio.current_time()))
            if got is None:
                raise Fail(
                    f"no park connection from the panel to {listener.host}:{listener.port} within {PARK_WAIT:g} s "
                    f"(is it configured to park there? 6.3){why}"
                )
            raw, accepted_at = got
            try:
                link = await accept(raw, ssl_ctx, self.nursery)
            except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                await trio.aclose_forcefully(raw)
                why = f"; the last one failed its TLS handshake: {str(exc.__cause__ or exc) or 'not done within 5 s'}"
                continue
            self.links.append(link)
            rx = await link.recv(5.5)
            if rx is None:
                raise Fail("no HELLO within 5.5 s of the park connection (6.2 step 1: the panel's first frame)")
            if rx.kind in ("eof", "reset"):
                why = f"; the last one ended before its HELLO: {rx.describe()}"
                await link.aclose()
                continue
            check(
                rx.kind == "msg" and isinstance(rx.msg, c.Hello),
                f"expected HELLO as the panel's first frame on the park connection (6.2 step 1, 6.3 rule 2), "
                f"got {rx.describe()}",
            )
            assert isinstance(rx.msg, c.Hello)
            h = rx.msg
            check(h.panel_id == self.t.panel_id, f"park HELLO panel_id {h.panel_id}, expected {self.t.panel_id}")
            return Parked(link, h, rx.at, accepted_at)

    async def parked(self, **standby: Any) -> Parked:
        """A parked session: the panel's next park HELLO answered with STANDBY (6.3 rule 2), and from then on every
        panel HEARTBEAT answered at once with a HEARTBEAT of epoch 0, as a parked node does (6.3 rule 3)."""
        p = await self.park()
        await p.link.send_msg(self.standby(**standby))
        p.link.answer_heartbeats(0)
        return p

    async def park_bye(self, p: Parked, epoch: int = 0) -> None:
        """BYE on a park connection: a standby serves no epoch, so its BYE carries 0 (5: the sender's epoch)."""
        await p.link.send_msg(c.Bye(epoch, 0))
        await p.link.aclose()

    async def batches(self, s: Session, n: int, within: float, *, prev_last: int | None = None) -> list[c.EventBatch]:
        """`n` batches (checked against 7.3 order) within `within`, passing over heartbeats and CONFIG_ACKs."""
        out: list[c.EventBatch] = []
        deadline = trio.current_time() + within
        while len(out) < n:
            left = deadline - trio.current_time()
            if left <= 0:
                break
            rx = await s.link.recv(left)
            if rx is None:
                break
            if rx.kind != "msg" or rx.msg is None:
                raise Fail(f"while waiting for batches: {rx.describe()}")
            m = rx.msg
            if isinstance(m, c.EventBatch):
                if prev_last is None:
                    check(
                        m.first_seq <= s.welcome.hwm + 1,
                        f"first batch starts at {m.first_seq}, above hwm+1 = {s.welcome.hwm + 1} (7.3)",
                    )
                else:
                    check(
                        m.first_seq == prev_last + 1,
                        f"batch starts at {m.first_seq}, not at prev_last+1 = {prev_last + 1} (7.3)",
                    )
                prev_last = m.last
                out.append(m)
            elif not isinstance(m, c.Heartbeat | c.ConfigAck | c.Alarm):
                raise Fail(f"unexpected {describe(m)} from the panel")
        return out

    async def config_ack(self, s: Session, within: float = 3.0) -> c.ConfigAck:
        m = await s.link.expect(c.CONFIG_ACK, within, skip=(c.HEARTBEAT, c.EVENT_BATCH, c.ALARM))
        assert isinstance(m, c.ConfigAck)
        return m

    async def push_snapshot(self, s: Session, ops: list[c.Op], version: int, *, parts: int = 1) -> c.ConfigAck:
        digest = c.digest_of(ops)
        size = -(-len(ops) // parts)
        chunks = [ops[i * size : (i + 1) * size] for i in range(parts)]
        for i, chunk in enumerate(chunks):
            await s.link.send_msg(c.ConfigSnapshot(s.epoch, version, digest, i, parts, tuple(chunk)))
        a = await self.config_ack(s)
        check(a.version == version, f"CONFIG_ACK v{a.version} after a snapshot of v{version} (8.4)")
        check(a.digest == digest, f"CONFIG_ACK digest {a.digest.hex()[:16]} != {digest.hex()[:16]} (8.1, 8.4)")
        self.s.config = c.Config().applied(ops)
        self.s.config_version = version
        return a

    async def known_config(self, s: Session) -> tuple[c.Config, int]:
        """The panel's configuration as this battery knows it, pushing a snapshot first if it does not."""
        if (
            self.s.config is not None
            and self.s.config_version == s.hello.config_version
            and self.s.config.digest() == s.hello.config_digest
        ):
            return self.s.config, s.hello.config_version
        await self.push_snapshot(s, example_config(), s.hello.config_version + 1)
        assert self.s.config is not None and self.s.config_version is not None
        return self.s.config, self.s.config_version


async def _ack_all(ctx: PanelCtx, s: Session, bs: list[c.EventBatch]) -> int:
    last = bs[-1].last
    await s.link.send_msg(c.Ack(s.epoch, last))
    ctx.s.acked = max(ctx.s.acked, last)
    return last


# ---------------------------------------------------------------------------------------------- handshake


@panel_case("hello", "2.2, 5, 6.2")
async def hello(ctx: PanelCtx) -> str:
    """The panel sends HELLO first, with its own id and fields in range (and its certificate's CN)."""
    link = await ctx.dial()
    t0 = trio.current_time()
    h = await ctx.hello(link)
    dt = trio.current_time() - t0
    extra = ""
    if ctx.tls:
        cn, v = link.peer_cn(), link.tls_version()
        check(v == "TLSv1.3", f"negotiated {v} (2.2)")
        check(cn == f"panel-{ctx.t.panel_id}", f"certificate CN {cn!r}, HELLO panel_id {h.panel_id} (2.2)")
        extra = f", {v} CN {cn}"
    await link.send_msg(ctx.welcome(h))
    await link.send_msg(c.Bye(ctx.epoch_for(h), 0))
    return (
        f"HELLO in {dt * 1000:.0f} ms: panel {h.panel_id} fw {h.firmware!r} seqs {h.oldest_seq}..{h.newest_seq} "
        f"config v{h.config_version} max_epoch {h.max_epoch}{extra}"
    )


@panel_case("illegal-before-welcome", "4, 6.1")
async def illegal_before_welcome(ctx: PanelCtx) -> str:
    """An ACK instead of WELCOME is ILLEGAL_IN_STATE."""
    link = await ctx.dial()
    h = await ctx.hello(link)
    await link.send_msg(c.Ack(ctx.epoch_for(h), h.newest_seq))
    await link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    return "ILLEGAL_IN_STATE"


@panel_case("standby-off-park", "4, 6.3")
async def standby_off_park(ctx: PanelCtx) -> str:
    """A STANDBY on the host-initiated connection, not a park connection, is ILLEGAL_IN_STATE (6.3 rule 2)."""
    await _panel_framing(ctx, lambda h: c.frame(ctx.standby()), "ILLEGAL_IN_STATE")
    return "STANDBY after HELLO on --panel's connection: ILLEGAL_IN_STATE"


@panel_case("takeover-in-streaming", "4, 6.1")
async def takeover_in_streaming(ctx: PanelCtx) -> str:
    """A TAKEOVER in STREAMING (it is legal only in PARKED) is ILLEGAL_IN_STATE."""
    s = await ctx.session()
    await s.link.send_msg(c.Takeover(s.epoch))
    await s.link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=FROM_PANEL)
    return f"TAKEOVER epoch {s.epoch} in session {s.epoch}: ILLEGAL_IN_STATE"


@panel_case("wrong-direction", "4, 6.1")
async def wrong_direction(ctx: PanelCtx) -> str:
    """A panel-to-node message (EVENT_BATCH) sent by the node is ILLEGAL_IN_STATE."""
    s = await ctx.session()
    await s.link.send_msg(c.EventBatch(1, (c.Record(1, 0, 1),)))
    await s.link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=FROM_PANEL)
    return "ILLEGAL_IN_STATE"


# ---------------------------------------------------------------------------------------------- events


@panel_case("upload-consecutive", "7.3, 7.4")
async def upload(ctx: PanelCtx) -> str:
    """Batches start at or below hwm+1 and continue from the previous one; after an ACK they continue on."""
    s = await ctx.session()
    bs = await ctx.batches(s, 2, 4.0)
    check(len(bs) >= 1, "no EVENT_BATCH within 4 s (does the panel have events? use a nonzero --rate)")
    last = await _ack_all(ctx, s, bs)
    more = await ctx.batches(s, 1, 4.0, prev_last=bs[-1].last)
    check(len(more) >= 1, f"no batch after the ACK up to {last} within 4 s")
    await _ack_all(ctx, s, more)
    await ctx.bye(s)
    return (
        f"hwm {s.welcome.hwm}: {' '.join(f'{b.first_seq}..{b.last}' for b in bs)}, ACK {last}, "
        f"then {more[0].first_seq}..{more[0].last}"
    )


@panel_case("resume-after-ack", "7.3, 7.4")
async def resume(ctx: PanelCtx) -> str:
    """After ACKing up to S, a new session with WELCOME hwm S gets batches starting at S+1 or below."""
    s = await ctx.session()
    bs = await ctx.batches(s, 1, 4.0)
    check(len(bs) >= 1, "no EVENT_BATCH within 4 s")
    acked = await _ack_all(ctx, s, bs)
    await trio.sleep(0.1)
    await ctx.bye(s)
    s2 = await ctx.session(hwm=acked)
    check(s2.hello.newest_seq >= acked, f"HELLO newest_seq {s2.hello.newest_seq} below the acked {acked}")
    b2 = await ctx.batches(s2, 1, 4.0)
    check(len(b2) >= 1, "no EVENT_BATCH in the second session within 4 s")
    await _ack_all(ctx, s2, b2)
    await ctx.bye(s2)
    return f"ACK {acked}, BYE; new session hwm {acked}: first batch {b2[0].first_seq}..{b2[0].last}"


@panel_case("server-lost", "7.1, 7.3")
async def server_lost(ctx: PanelCtx) -> str:
    """A new session whose WELCOME hwm is below what the panel saw acknowledged (an asynchronous
    mirror's failover lost it): the first batch is a SERVER_LOST marker (kind 21) for exactly
    hwm+1 .. the acknowledged seq, alone; after its ACK the panel goes on from there."""
    s = await ctx.session()
    hwm = s.welcome.hwm
    bs = await ctx.batches(s, 1, 4.0)
    check(len(bs) >= 1, "no EVENT_BATCH within 4 s")
    acked = await _ack_all(ctx, s, bs)
    await trio.sleep(0.1)
    await ctx.bye(s)
    check(acked > hwm, f"the ACK {acked} freed nothing above the first WELCOME's hwm {hwm}")
    s2 = await ctx.session(hwm=hwm)  # the new server holds nothing of what was acknowledged
    b2 = await ctx.batches(s2, 1, 4.0)
    check(len(b2) >= 1, "no EVENT_BATCH in the second session within 4 s")
    first = b2[0]
    head = first.records[0]
    check(
        head.kind == 21 and first.first_seq == hwm + 1 and head.card == acked and len(first.records) == 1,
        f"first batch {first.first_seq}..{first.last} of kinds {[r.kind for r in first.records][:3]}: expected a "
        f"lone SERVER_LOST marker {hwm + 1}..{acked} (7.3)",
    )
    await _ack_all(ctx, s2, b2[:1])
    more = await ctx.batches(s2, 1, 4.0, prev_last=acked)
    check(len(more) >= 1, f"no batch after the marker's ACK up to {acked} within 4 s")
    await _ack_all(ctx, s2, more)
    await ctx.bye(s2)
    return f"acked {hwm + 1}..{acked}; WELCOME hwm {hwm}: SERVER_LOST {hwm + 1}..{acked}, then {more[0].first_seq}.."


@panel_case("ack-beyond-sent", "7.4")
async def ack_beyond(ctx: PanelCtx) -> str:
    """An ACK above every seq sent (and above hwm) is BAD_ACK."""
    s = await ctx.session()
    bs = await ctx.batches(s, 1, 4.0)
    top = max([s.welcome.hwm, *(b.last for b in bs)])
    await s.link.send_msg(c.Ack(s.epoch, top + 1_000_000))
    await s.link.expect_error("BAD_ACK", 3.0, skip=FROM_PANEL)
    return f"ACK {top + 1_000_000} with {top} sent: BAD_ACK"


@panel_case("ack-backwards", "7.4")
async def ack_backwards(ctx: PanelCtx) -> str:
    """An ACK below one already given is BAD_ACK."""
    s = await ctx.session()
    bs = await ctx.batches(s, 1, 4.0)
    check(len(bs) >= 1, "no EVENT_BATCH within 4 s")
    last = await _ack_all(ctx, s, bs)
    await s.link.send_msg(c.Ack(s.epoch, last - 1))
    await s.link.expect_error("BAD_ACK", 3.0, skip=FROM_PANEL)
    return f"ACK {last}, then {last - 1}: BAD_ACK"


@panel_case("ack-epoch-other", "5, 9.2, 11")
async def ack_epoch(ctx: PanelCtx) -> str:
    """An ACK whose epoch is not the session's is refused (EPOCH_MISMATCH; see the report for the codes taken)."""
    s = await ctx.session()
    bad = s.epoch - 1 if s.epoch >= 2 else s.epoch + 1
    await s.link.send_msg(c.Ack(bad, s.welcome.hwm))
    e = await s.link.expect_error(("EPOCH_MISMATCH", "STALE_EPOCH", "FIELD_OUT_OF_RANGE"), 3.0, skip=FROM_PANEL)
    return f"ACK epoch {bad} in session {s.epoch}: {c.code_name(e.code)}"


@panel_case("heartbeat-epoch-other", "9.2, 11")
async def heartbeat_epoch(ctx: PanelCtx) -> str:
    """A node HEARTBEAT with an epoch other than the session's is refused (EPOCH_MISMATCH)."""
    s = await ctx.session(heartbeats=False)
    await s.link.send_msg(c.Heartbeat(s.epoch + 1))
    e = await s.link.expect_error(("EPOCH_MISMATCH", "STALE_EPOCH"), 3.0, skip=FROM_PANEL)
    return f"HEARTBEAT epoch {s.epoch + 1} in session {s.epoch}: {c.code_name(e.code)}"


# ---------------------------------------------------------------------------------------------- the alarm lane (7.6)
#
# Version 5 (13.1). What the battery's node can check of a panel's alarm lane without being able to make a door be
# forced: the bounds of ALARM_ACK (checked by the panel whether or not it sent an ALARM), and, when the panel sends
# ALARMs, what they carry. The one alarm the battery can make a panel record is a SERVER_LOST marker (kind 21, an
# alarm kind): a WELCOME whose hwm is below what the panel saw acknowledged (7.3), as in the `server-lost` case.


async def lane_watch(
    ctx: PanelCtx, s: Session, seconds: float, *, until_alarm: bool
) -> tuple[list[c.Alarm], list[c.EventBatch]]:
    """Watch the session for `seconds` (or until an ALARM, with `until_alarm`), acknowledging every batch at once;
    the session's AlarmLane checks each ALARM (and answers it if the session does)."""
    alarms: list[c.Alarm] = []
    bs: list[c.EventBatch] = []
    end = trio.current_time() + seconds
    while (now := trio.current_time()) < end:
        rx = await s.link.recv(end - now)
        if rx is None:
            break
        check(rx.kind == "msg" and rx.msg is not None, f"the session ended: {rx.describe()}")
        m = rx.msg
        if isinstance(m, c.EventBatch):
            bs.append(m)
            await s.link.send_msg(c.Ack(s.epoch, m.last))
            ctx.s.acked = max(ctx.s.acked, m.last)
        elif isinstance(m, c.Alarm):
            alarms.append(m)
            if until_alarm:
                break
        elif not isinstance(m, c.Heartbeat | c.ConfigAck):
            raise Fail(f"unexpected {describe(m) if m is not None else rx.describe()} from the panel")
    return alarms, bs


async def alarm_session(ctx: PanelCtx, *, alarm_acks: bool) -> tuple[Session, c.Alarm | None, str]:
    """A session in which the panel sends an ALARM, if the battery can bring one about: first any alarm the panel
    records by itself within 2 s; else, if it uploaded a batch, a new session whose WELCOME hwm is below what was
    acknowledged, so that the panel records a SERVER_LOST marker (7.3), whose copy SHOULD go out in an ALARM before
    its first EVENT_BATCH (7.6). Returns the session, its first ALARM (None: none came) and how it came."""
    s = await ctx.session(alarm_acks=alarm_acks)
    alarms, bs = await lane_watch(ctx, s, 2.0, until_alarm=True)
    if alarms:
        return s, alarms[0], "recorded by the panel itself"
    hwm = s.welcome.hwm
    top = max([hwm, *(b.last for b in bs)])
    if top <= hwm:
        return s, None, "no ALARM in 2 s and no batch to acknowledge (so no SERVER_LOST marker to bring about)"
    await trio.sleep(0.1)
    await ctx.bye(s)
    s2 = await ctx.session(alarm_acks=alarm_acks, hwm=hwm)
    alarms, bs2 = await lane_watch(ctx, s2, 2.5, until_alarm=True)
    how = f"after a WELCOME of hwm {hwm} below the {top} acknowledged (a SERVER_LOST marker, 7.3)"
    if not alarms:
        return s2, None, f"no ALARM within 2.5 s {how}"
    when = "before its first batch" if not bs2 else f"after {len(bs2)} batch(es) (7.6: SHOULD before the first)"
    return s2, alarms[0], f"{how}, {when}"


@panel_case("alarm-ack-above-sent", "7.6")
async def alarm_ack_above_sent(ctx: PanelCtx) -> str:
    """An ALARM_ACK above every seq the panel can have sent in an ALARM (above its newest seq, every batch and hwm,
    by 1,000,000) is BAD_ACK."""
    s = await ctx.session(alarm_acks=False)
    alarms, bs = await lane_watch(ctx, s, 0.5, until_alarm=False)
    top = max([s.welcome.hwm, s.hello.newest_seq, *(b.last for b in bs), *(a.last for a in alarms)])
    await s.link.send_msg(c.AlarmAck(s.epoch, top + 1_000_000))
    await s.link.expect_error("BAD_ACK", 3.0, skip=FROM_PANEL)
    sent = f"{len(alarms)} ALARM(s) sent, up to {max(a.last for a in alarms)}" if alarms else "no ALARM sent"
    return f"ALARM_ACK {top + 1_000_000} with {sent} and seqs up to {top}: BAD_ACK"


@panel_case("alarm-ack-backwards", "7.6")
async def alarm_ack_backwards(ctx: PanelCtx) -> str:
    """An ALARM_ACK below the session's previous one is BAD_ACK (needs an ALARM from the panel to acknowledge)."""
    s, a, how = await alarm_session(ctx, alarm_acks=False)
    if a is None:
        await ctx.bye(s)
        raise Skip(f"not applicable: the battery could not make the panel send an ALARM ({how})")
    await s.link.send_msg(c.AlarmAck(s.epoch, a.last))
    await s.link.send_msg(c.AlarmAck(s.epoch, a.last - 1))
    await s.link.expect_error("BAD_ACK", 3.0, skip=FROM_PANEL)
    got = ",".join(str(r.seq) for r in a.records)
    return f"ALARM of seqs {got} ({how}): ALARM_ACK {a.last}, then {a.last - 1}: BAD_ACK"


@panel_case("alarm-lane", "5, 7.6")
async def alarm_lane(ctx: PanelCtx) -> str:
    """The panel's ALARMs carry records of alarm kinds, in rising seq order across the session, above the WELCOME's
    hwm, each a copy of the record of its seq in the event sequence (needs an ALARM from the panel)."""
    s, a, how = await alarm_session(ctx, alarm_acks=True)
    if a is None:
        await ctx.bye(s)
        raise Skip(f"not applicable: the battery could not make the panel send an ALARM ({how})")
    _more, bs = await lane_watch(ctx, s, 1.5, until_alarm=False)
    lane = s.link.lane
    assert lane is not None
    matched = sum(1 for b in bs for r in b.records if r.seq in lane.copies)
    kinds = sorted({c.KINDS[r.kind] for m in lane.alarms for r in m.records})
    await ctx.bye(s)
    return (
        f"{len(lane.alarms)} ALARM(s) ({how}), {len(lane.copies)} copies of kinds {', '.join(kinds)}, seqs "
        f"{min(lane.copies)}..{lane.top} rising, above hwm {s.welcome.hwm}; {matched} matched bit for bit by the "
        "records of their batches"
    )


@panel_case("alarm-ack-epoch-other", "5, 7.6, 9.2")
async def alarm_ack_epoch(ctx: PanelCtx) -> str:
    """An ALARM_ACK whose epoch is not the session's is refused (5: = the session's epoch; see the report for the
    codes taken: 9.2 lists no code for ALARM_ACK)."""
    s = await ctx.session()
    bad = s.epoch - 1 if s.epoch >= 2 else s.epoch + 1
    await s.link.send_msg(c.AlarmAck(bad, 0))
    e = await s.link.expect_error(("EPOCH_MISMATCH", "STALE_EPOCH", "FIELD_OUT_OF_RANGE"), 3.0, skip=FROM_PANEL)
    return f"ALARM_ACK epoch {bad} in session {s.epoch}: {c.code_name(e.code)}"


@panel_case("alarm-ack-epoch-zero", "3, 5")
async def alarm_ack_epoch_zero(ctx: PanelCtx) -> str:
    """An ALARM_ACK of epoch 0 breaks its range (>= 1) before any check of the session: FIELD_OUT_OF_RANGE."""
    s = await ctx.session()
    await s.link.send(c.encode_frame(c.ALARM_ACK, c.AlarmAck(0, 0).encode()))
    await s.link.expect_error("FIELD_OUT_OF_RANGE", 3.0, skip=FROM_PANEL)
    return "ALARM_ACK epoch 0: FIELD_OUT_OF_RANGE"


@panel_case("alarm-ack-before-welcome", "4, 6.1")
async def alarm_ack_before_welcome(ctx: PanelCtx) -> str:
    """An ALARM_ACK instead of WELCOME is ILLEGAL_IN_STATE (4: ALARM_ACK is legal in streaming only)."""
    await _panel_framing(ctx, lambda h: c.frame(c.AlarmAck(ctx.epoch_for(h), 0)), "ILLEGAL_IN_STATE")
    return "ALARM_ACK after HELLO: ILLEGAL_IN_STATE"


@panel_case("wrong-direction-alarm", "4, 6.1")
async def wrong_direction_alarm(ctx: PanelCtx) -> str:
    """A panel-to-node ALARM sent by the node is ILLEGAL_IN_STATE."""
    s = await ctx.session()
    await s.link.send_msg(c.Alarm((c.Record(1, 0, 7),)))
    await s.link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=FROM_PANEL)
    return "ILLEGAL_IN_STATE"


# ---------------------------------------------------------------------------------------------- configuration


@panel_case("snapshot-ack", "8.1, 8.4")
async def snapshot_ack(ctx: PanelCtx) -> str:
    """A CONFIG_SNAPSHOT: the panel answers CONFIG_ACK(version, the digest of section 8.1)."""
    s = await ctx.session()
    ops = example_config()
    v = s.hello.config_version + 1
    a = await ctx.push_snapshot(s, ops, v)
    await ctx.bye(s)
    return f"snapshot v{v} ({len(ops)} ops): CONFIG_ACK v{a.version} digest {a.digest.hex()[:12]}"


@panel_case("snapshot-remembered", "6.2, 8.4")
async def snapshot_remembered(ctx: PanelCtx) -> str:
    """The next HELLO carries the version and digest of the configuration applied."""
    if ctx.s.config is None or ctx.s.config_version is None:
        s = await ctx.session()
        await ctx.known_config(s)
        await ctx.bye(s)
    assert ctx.s.config is not None
    want = (ctx.s.config_version, ctx.s.config.digest())
    s = await ctx.session()
    await ctx.bye(s)
    got = (s.hello.config_version, s.hello.config_digest)
    check(got == want, f"HELLO config v{got[0]} {got[1].hex()[:12]}, applied v{want[0]} {want[1].hex()[:12]}")
    return f"HELLO config v{got[0]} {got[1].hex()[:12]}"


@panel_case("snapshot-multipart", "5, 8.4")
async def snapshot_multipart(ctx: PanelCtx) -> str:
    """A snapshot in 3 parts: one CONFIG_ACK, after the last part, with the digest of the whole."""
    s = await ctx.session()
    ops = example_config()[::-1]
    v = s.hello.config_version + 1
    a = await ctx.push_snapshot(s, ops, v, parts=3)
    await ctx.bye(s)
    return f"3 parts v{v}: CONFIG_ACK v{a.version}"


@panel_case("snapshot-lower-version", "8.4")
async def snapshot_lower(ctx: PanelCtx) -> str:
    """A snapshot below the panel's version is applied anyway (the server's word is final)."""
    s = await ctx.session()
    if s.hello.config_version == 0:
        await ctx.push_snapshot(s, example_config(), 5)
    v = (ctx.s.config_version or s.hello.config_version) - 1
    ops = example_config()[:4]
    a = await ctx.push_snapshot(s, ops, v)
    await ctx.bye(s)
    return f"snapshot v{v} below the panel's: CONFIG_ACK v{a.version}"


@panel_case("delta-ack", "8.1, 8.2, 8.4")
async def delta_ack(ctx: PanelCtx) -> str:
    """A CONFIG_DELTA on a known base: CONFIG_ACK(to_version, the digest after the ops)."""
    s = await ctx.session()
    base, v = await ctx.known_config(s)
    ops: list[c.Op] = [
        c.PutCardholder(555, 0, 0, 0, (1,)),
        c.DeleteCardholder(17),
        c.PutDoor(0, 3),
        c.DeleteSchedule(999),
        c.PutSchedule(3, ((1, 0, 60),)),
        c.DeleteAccessLevel(2),
        c.PutCardholder(555, 42, 0, 0, (2, 1)),
    ]
    new = base.applied(ops)
    await s.link.send_msg(c.ConfigDelta(s.epoch, v, v + 1, new.digest(), tuple(ops)))
    a = await ctx.config_ack(s)
    check(a.version == v + 1, f"CONFIG_ACK v{a.version} after a delta to v{v + 1}")
    check(a.digest == new.digest(), f"CONFIG_ACK digest {a.digest.hex()[:16]} != {new.digest().hex()[:16]} (8.1)")
    ctx.s.config, ctx.s.config_version = new, v + 1
    await ctx.bye(s)
    return f"delta v{v}->v{v + 1} ({len(ops)} ops): digest matches"


@panel_case("delta-digest-field-wrong", "8.4, 8.5")
async def delta_bad_digest(ctx: PanelCtx) -> str:
    """A delta advertising a wrong digest: the panel acknowledges with its own (true) digest."""
    s = await ctx.session()
    base, v = await ctx.known_config(s)
    ops: list[c.Op] = [c.PutDoor(7, 4)]
    new = base.applied(ops)
    await s.link.send_msg(c.ConfigDelta(s.epoch, v, v + 1, BOGUS_DIGEST, tuple(ops)))
    a = await ctx.config_ack(s)
    check(a.version == v + 1, f"CONFIG_ACK v{a.version}")
    check(a.digest == new.digest(), f"CONFIG_ACK digest {a.digest.hex()[:16]}, its own is {new.digest().hex()[:16]}")
    ctx.s.config, ctx.s.config_version = new, v + 1
    await ctx.bye(s)
    return "CONFIG_ACK carries the panel's own digest"


async def _config_refused(ctx: PanelCtx, msg: Any, code: str | tuple[str, ...]) -> str:
    s = await ctx.session()
    before = (s.hello.config_version, s.hello.config_digest)
    m = msg(s)
    await s.link.send(m if isinstance(m, bytes) else c.frame(m))
    e = await s.link.expect_error(code, 3.0, skip=FROM_PANEL)
    s2 = await ctx.session()
    await ctx.bye(s2)
    after = (s2.hello.config_version, s2.hello.config_digest)
    check(
        after == before,
        f"{c.code_name(e.code)}, but the configuration changed: v{before[0]} -> v{after[0]} (8.2: all or none)",
    )
    return f"{c.code_name(e.code)}; configuration unchanged"


@panel_case("delta-wrong-base", "8.4")
async def delta_wrong_base(ctx: PanelCtx) -> str:
    """A CONFIG_DELTA whose from_version is not the panel's version is CONFIG_VERSION."""

    def build(s: Session) -> c.Message:
        v = s.hello.config_version
        return c.ConfigDelta(s.epoch, v + 5, v + 6, BOGUS_DIGEST, (c.PutDoor(1, 1),))

    return await _config_refused(ctx, build, "CONFIG_VERSION")


@panel_case("delta-backwards", "5")
async def delta_backwards(ctx: PanelCtx) -> str:
    """A CONFIG_DELTA with to_version <= from_version is CONFIG_VERSION."""

    def build(s: Session) -> c.Message:
        v = s.hello.config_version
        return c.ConfigDelta(s.epoch, v, v, BOGUS_DIGEST, (c.PutDoor(1, 1),))

    return await _config_refused(ctx, build, "CONFIG_VERSION")


@panel_case("unknown-config-op", "8.2")
async def unknown_op(ctx: PanelCtx) -> str:
    """A delta with an op 99 after a good op is UNKNOWN_CONFIG_OP and none of it applies."""

    def build(s: Session) -> bytes:
        v = s.hello.config_version
        body = (
            struct_pack(s.epoch, v, v + 1)
            + BOGUS_DIGEST
            + (2).to_bytes(4, "big")
            + c.encode_op(c.PutDoor(9, 3))
            + b"\x63\x00\x00"
        )
        return c.encode_frame(c.CONFIG_DELTA, body)

    return await _config_refused(ctx, build, "UNKNOWN_CONFIG_OP")


def struct_pack(*u64: int) -> bytes:
    return b"".join(x.to_bytes(8, "big") for x in u64)


@panel_case("config-op-out-of-range", "8.2")
async def op_range(ctx: PanelCtx) -> str:
    """A delta with PutDoor mode 9 after a good op is FIELD_OUT_OF_RANGE and none of it applies."""

    def build(s: Session) -> c.Message:
        v = s.hello.config_version
        return c.ConfigDelta(s.epoch, v, v + 1, BOGUS_DIGEST, (c.PutDoor(9, 3), c.PutDoor(10, 9)))

    return await _config_refused(ctx, build, "FIELD_OUT_OF_RANGE")


@panel_case("snapshot-part-out-of-range", "5")
async def snapshot_part_range(ctx: PanelCtx) -> str:
    """A snapshot part 1 of 1 is FIELD_OUT_OF_RANGE."""

    def build(s: Session) -> c.Message:
        return c.ConfigSnapshot(s.epoch, 1, BOGUS_DIGEST, 1, 1, ())

    return await _config_refused(ctx, build, "FIELD_OUT_OF_RANGE")


@panel_case("snapshot-part-out-of-order", "5")
async def snapshot_part_order(ctx: PanelCtx) -> str:
    """A snapshot that begins with part 1 of 2 is CONFIG_VERSION."""

    def build(s: Session) -> c.Message:
        return c.ConfigSnapshot(s.epoch, 1, BOGUS_DIGEST, 1, 2, (c.PutDoor(1, 1),))

    return await _config_refused(ctx, build, "CONFIG_VERSION")


# ---------------------------------------------------------------------------------------------- liveness


def crossed(at: float, since: float, prev: c.Message | None, replied: float) -> bool:
    """A HEARTBEAT the panel sent still busy, our reply to its previous frame (ACK, ALARM_ACK, or answer to a probe)
    being late.

    9.1: the ends' views differ only by the frames in flight. Such a HEARTBEAT comes about H after that frame
    (rule 1) and less than GRACE after our reply went out; one sent after the reply reached it is the quiet panel's.
    """
    busying = c.EventBatch | c.Alarm | c.Heartbeat
    return isinstance(prev, busying) and since >= HB_S - slack(HB_S) and at - replied < GRACE


@dataclass
class Watched:
    """What `watch_quiet` saw of a panel."""

    frames: int = 0
    batches: int = 0
    probes: list[float] = field(default_factory=list)  # for each probe: s since the panel's previous frame
    crossed: int = 0  # HEARTBEATs that crossed our late reply (the panel still busy)
    longest: float = 0.0  # the longest time without a frame from the panel
    node_beats: int = 0
    alarms: int = 0


def _alarm_ack_sent(s: Session) -> float:
    """When the session's AlarmLane sent its last ALARM_ACK (our reply to the panel's last ALARM)."""
    return s.link.lane.ack_sent if s.link.lane is not None else -math.inf


async def watch_quiet(ctx: PanelCtx, s: Session, seconds: float, *, node_every: float | None = None) -> Watched:
    """Keep the panel quiet for `seconds` and watch it: every batch acknowledged at once (7.4), every HEARTBEAT
    answered at once (the session's answerer, 9.1 rule 4), and with `node_every` a node HEARTBEAT that often.

    A HEARTBEAT from the panel with nothing of it unacknowledged is a probe: it MUST NOT come before the panel has
    "sent nothing else for I" (rule 2), less the checker's allowance; and no more than I (plus it) may pass without a
    frame from the panel (rule 2: at least once per I).
    """
    seen = Watched()
    prev = s.hello_at  # when the panel's previous frame came
    prev_msg: c.Message | None = None
    replied = -math.inf  # when our reply to it went out
    now = trio.current_time()
    end = now + seconds
    next_beat = now + node_every if node_every is not None else math.inf
    loops = " or answered the node's HEARTBEAT (rule 4: a panel MUST NOT)" if node_every is not None else ""
    while (now := trio.current_time()) < end:
        if now >= next_beat and node_every is not None:
            await s.link.send_msg(c.Heartbeat(s.epoch))
            seen.node_beats += 1
            next_beat = now + node_every
            continue
        rx = await s.link.recv(min(end, next_beat) - now)
        if rx is None:
            continue
        check(rx.kind == "msg" and rx.msg is not None, f"the session ended: {rx.describe()}")
        m = rx.msg
        assert m is not None
        since, prev = rx.at - prev, rx.at
        seen.frames += 1
        seen.longest = max(seen.longest, since)
        check(since <= IDLE_S + slack(IDLE_S), silent_for(since))
        if isinstance(m, c.EventBatch):
            await s.link.send_msg(c.Ack(s.epoch, m.last))
            ctx.s.acked = max(ctx.s.acked, m.last)
            prev_msg, replied = m, s.link.last_sent
            seen.batches += 1
        elif isinstance(m, c.Alarm):  # answered at once by the session's AlarmLane (7.6)
            prev_msg, replied = m, _alarm_ack_sent(s)
            seen.alarms += 1
        elif isinstance(m, c.Heartbeat):
            check(m.epoch == s.epoch, f"panel HEARTBEAT epoch {m.epoch} != session {s.epoch} (9.2)")
            late = crossed(rx.at, since, prev_msg, replied)
            prev_msg, replied = m, s.link.answer_sent
            if late:
                seen.crossed += 1
                continue
            check(
                since >= IDLE_S - slack(IDLE_S),
                f"a HEARTBEAT {since * 1000:.0f} ms after the panel's previous frame with nothing outstanding: it "
                f"probed before I = {IDLE_MS} ms (9.1 rule 2: when it has sent nothing else for I){loops}",
            )
            seen.probes.append(since)
        else:
            raise Fail(f"unexpected {describe(m)} from the panel")
    since = trio.current_time() - prev
    seen.longest = max(seen.longest, since)
    check(since <= IDLE_S + slack(IDLE_S), silent_for(since))
    return seen


def silent_for(seconds: float) -> str:
    return (
        f"{seconds * 1000:.0f} ms without a frame from a quiet panel (9.1 rule 2: at least once per I = {IDLE_MS} ms)"
    )


@panel_case("panel-heartbeats-busy", "9.1, 9.2")
async def panel_heartbeats_busy(ctx: PanelCtx) -> str:
    """Busy (a batch unacknowledged), the panel sends a frame at least once per heartbeat_ms (200 ms, rule 1).

    Its HEARTBEATs carry the session epoch (9.2). The battery answers each (rule 4) and sends nothing else.
    """
    s = await ctx.session(heartbeats=False)  # the battery answers its HEARTBEATs (rule 4), nothing more
    bs = await ctx.batches(s, 1, 4.0)
    if not bs:
        await ctx.bye(s)
        raise Skip("not applicable: no EVENT_BATCH within 4 s, so no unacknowledged batch to make the panel busy")
    prev = t0 = trio.current_time()
    end = t0 + 1.5
    frames, beats, worst, top = 0, 0, 0.0, bs[-1].last
    while (now := trio.current_time()) < end:
        rx = await s.link.recv(end - now)
        if rx is None:
            break
        check(rx.kind == "msg" and rx.msg is not None, f"the session ended: {rx.describe()}")
        m = rx.msg
        assert m is not None
        gap, prev = rx.at - prev, rx.at
        worst = max(worst, gap)
        frames += 1
        check(
            gap <= HB_S + slack(HB_S),
            f"{gap * 1000:.0f} ms without a frame while batch ..{top} is unacknowledged "
            f"(9.1 rule 1: a busy panel sends at least once per H = {HB_MS} ms)",
        )
        if isinstance(m, c.Heartbeat):
            check(m.epoch == s.epoch, f"panel HEARTBEAT epoch {m.epoch} != session {s.epoch} (9.2)")
            beats += 1
        elif isinstance(m, c.EventBatch):
            top = m.last
        elif not isinstance(m, c.Alarm):  # an ALARM is answered at once by the session's AlarmLane (7.6)
            raise Fail(f"unexpected {describe(m)} from the panel")
    gap = trio.current_time() - prev
    worst = max(worst, gap)
    check(gap <= HB_S + slack(HB_S), f"{gap * 1000:.0f} ms without a frame while busy (9.1 rule 1: once per H)")
    await s.link.send_msg(c.Ack(s.epoch, top))
    ctx.s.acked = max(ctx.s.acked, top)
    await ctx.bye(s)
    return f"unacknowledged for 1.5 s: {frames} frames ({beats} HEARTBEATs), longest gap {worst * 1000:.0f} ms"


@panel_case("panel-probe-quiet", "9.1, 9.2")
async def panel_probe_quiet(ctx: PanelCtx) -> str:
    """Quiet (everything acknowledged at once), the panel probes once per idle_ms (1000 ms), never sooner (rule 2).

    The battery's node answers each probe at once and sends nothing of its own (rules 3, 4). Not applicable to a
    panel that never stays idle for I (one uploading events all along).
    """
    s = await ctx.session(heartbeats=False)
    seen = await watch_quiet(ctx, s, 3.5 * IDLE_S)
    await ctx.bye(s)
    if not seen.probes and seen.longest < IDLE_S - slack(IDLE_S):
        raise Skip(
            f"not applicable: the panel was never idle for I = {IDLE_MS} ms ({seen.batches} batches, at most "
            f"{seen.longest * 1000:.0f} ms apart), so no probe was due; no HEARTBEAT came early"
        )
    gaps = ", ".join(f"{p * 1000:.0f}" for p in seen.probes) or "none"
    return (
        f"{seen.frames} frames in {3.5 * IDLE_S:g} s ({seen.batches} batches); probes after {gaps} ms of silence; "
        f"longest silence {seen.longest * 1000:.0f} ms"
    )


@panel_case("node-heartbeat-not-answered", "9.1")
async def node_heartbeat_not_answered(ctx: PanelCtx) -> str:
    """Node HEARTBEATs every 100 ms make a quiet panel send nothing (rule 4: a panel MUST NOT answer; nothing loops)."""
    s = await ctx.session(heartbeats=False)
    seen = await watch_quiet(ctx, s, 2.5, node_every=0.1)
    await ctx.bye(s)
    return (
        f"{seen.node_beats} node HEARTBEATs: {seen.frames} panel frames ({seen.batches} batches, "
        f"{len(seen.probes)} probe(s) no sooner than I), none an answer"
    )


async def until_timeout(s: Session, t_busy: float, branch: str) -> str:
    """The panel became busy at `t_busy` (its frame then being its last) and the node says nothing: it sends a frame
    at least once per H (rule 1: a probe repeated) and ends with TIMEOUT 3 H after it became busy (rule 5)."""
    limit = 3 * HB_S
    prev, beats, worst = t_busy, 0, 0.0
    deadline = t_busy + limit + slack(limit)
    while True:
        rx = await s.link.recv(max(0.0, deadline - trio.current_time()))
        if rx is None:
            raise Fail(
                f"no TIMEOUT within {(limit + slack(limit)) * 1000:.0f} ms of becoming busy ({branch}), the node "
                f"silent (9.1 rule 5: 3 H = {limit * 1000:.0f} ms); {beats} HEARTBEAT(s) meanwhile"
            )
        check(rx.kind == "msg" and rx.msg is not None, f"expected ERROR TIMEOUT, got {rx.describe()}")
        m = rx.msg
        assert m is not None
        gap, prev = rx.at - prev, rx.at
        worst = max(worst, gap)
        check(
            gap <= HB_S + slack(HB_S),
            f"{gap * 1000:.0f} ms without a frame while {branch} (9.1 rule 1: at least once per H = {HB_MS} ms)",
        )
        if isinstance(m, c.Heartbeat):
            check(m.epoch == s.epoch, f"panel HEARTBEAT epoch {m.epoch} != session {s.epoch} (9.2)")
            beats += 1
        elif isinstance(m, c.Error):
            check(m.code == c.CODES["TIMEOUT"], f"expected ERROR TIMEOUT, got {describe(m)}")
            dt = rx.at - t_busy
            check(
                dt >= limit - slack(limit),
                f"TIMEOUT {dt * 1000:.0f} ms after it became busy ({branch}) (9.1 rule 5: 3 H = {limit * 1000:.0f} ms)",
            )
            await s.link.expect_close(2.0, after="its ERROR")
            return (
                f"{branch}: {beats} HEARTBEAT(s), longest gap {worst * 1000:.0f} ms; TIMEOUT {dt * 1000:.0f} ms "
                f"after it became busy (3 H = {limit * 1000:.0f} ms)"
            )
        elif not isinstance(m, c.EventBatch | c.Alarm):
            raise Fail(f"unexpected {describe(m)} from the panel")


@panel_case("node-silence-timeout", "9.1")
async def node_silence(ctx: PanelCtx) -> str:
    """A node silent after WELCOME: the panel, busy (a batch or a probe), sends per H, then TIMEOUT 3 H on (rule 5).

    A panel with events becomes busy at its first batch; one without probes I after its HELLO (rule 2) and is busy
    from the probe. The WELCOME is older than either, so the 3 H count from there (rule 5).
    """
    s = await ctx.session(heartbeats=False, answer=False)
    rx = await s.link.recv(max(0.0, s.hello_at + IDLE_S + slack(IDLE_S) - trio.current_time()))
    check(rx is not None, f"no batch and no probe within {IDLE_S + slack(IDLE_S):.2f} s of the HELLO (9.1 rule 2)")
    assert rx is not None
    check(rx.kind == "msg" and rx.msg is not None, f"expected a batch or a probe, got {rx.describe()}")
    since = rx.at - s.hello_at
    if isinstance(rx.msg, c.EventBatch | c.Alarm):  # the node answers neither (no ACK, no ALARM_ACK)
        return await until_timeout(
            s, rx.at, f"busy with {'a batch' if isinstance(rx.msg, c.EventBatch) else 'an ALARM'}"
        )
    check(
        isinstance(rx.msg, c.Heartbeat),
        f"{rx.describe()} {since:.2f} s after the HELLO, before any batch or probe (9.1 rules 2, 5)",
    )
    check(
        since >= IDLE_S - slack(IDLE_S),
        f"the first HEARTBEAT (a probe) {since * 1000:.0f} ms after the HELLO, nothing outstanding "
        f"(9.1 rule 2: when it has sent nothing else for I = {IDLE_MS} ms)",
    )
    return await until_timeout(s, rx.at, f"probing {since * 1000:.0f} ms after the HELLO")


@panel_case("probe-unanswered-timeout", "9.1")
async def probe_unanswered(ctx: PanelCtx) -> str:
    """A probe left unanswered: the panel repeats it per H and ends with TIMEOUT 3 H after it (rules 2, 1, 5).

    The battery acknowledges every batch at once until the panel, idle, probes (no sooner than I after its last
    frame); from then on it says nothing. Not applicable to a panel that never stays idle for I.
    """
    s = await ctx.session(heartbeats=False, answer=False, alarm_acks=True)
    prev, replied = s.hello_at, -math.inf
    prev_msg: c.Message | None = None
    end = trio.current_time() + 3.5 * IDLE_S
    batches = 0
    while (now := trio.current_time()) < end:
        rx = await s.link.recv(end - now)
        if rx is None:
            break
        check(rx.kind == "msg" and rx.msg is not None, f"the session ended: {rx.describe()}")
        m = rx.msg
        assert m is not None
        since, prev = rx.at - prev, rx.at
        check(since <= IDLE_S + slack(IDLE_S), silent_for(since))
        if isinstance(m, c.EventBatch):
            await s.link.send_msg(c.Ack(s.epoch, m.last))
            ctx.s.acked = max(ctx.s.acked, m.last)
            prev_msg, replied = m, s.link.last_sent
            batches += 1
        elif isinstance(m, c.Alarm):  # answered at once by the session's AlarmLane (7.6)
            prev_msg, replied = m, _alarm_ack_sent(s)
        elif isinstance(m, c.Heartbeat):
            if crossed(rx.at, since, prev_msg, replied):
                prev_msg = m  # sent before our late ACK reached it: busy, rule 1
                continue
            check(
                since >= IDLE_S - slack(IDLE_S),
                f"a HEARTBEAT {since * 1000:.0f} ms after the panel's previous frame with nothing outstanding "
                f"(9.1 rule 2: a quiet panel probes when it has sent nothing else for I = {IDLE_MS} ms)",
            )
            return await until_timeout(s, rx.at, f"probing {since * 1000:.0f} ms after its last frame, unanswered")
        else:
            raise Fail(f"unexpected {describe(m)} from the panel")
    check(trio.current_time() - prev <= IDLE_S + slack(IDLE_S), silent_for(trio.current_time() - prev))
    await ctx.bye(s)
    raise Skip(
        f"not applicable: the panel uploaded events all along ({batches} batches in {3.5 * IDLE_S:g} s), never "
        f"idle for I = {IDLE_MS} ms, so it did not probe"
    )


@panel_case("welcome-idle-below-heartbeat", "5")
async def welcome_idle_below(ctx: PanelCtx) -> str:
    """A WELCOME whose idle_ms is below its heartbeat_ms (199 < 200) is FIELD_OUT_OF_RANGE."""
    await _panel_framing(ctx, lambda h: c.frame(ctx.welcome(h, idle_ms=HB_MS - 1)), "FIELD_OUT_OF_RANGE")
    return f"idle_ms {HB_MS - 1}, heartbeat_ms {HB_MS}: FIELD_OUT_OF_RANGE"


@panel_case("welcome-idle-equals-heartbeat", "5")
async def welcome_idle_equal(ctx: PanelCtx) -> str:
    """A WELCOME whose idle_ms equals its heartbeat_ms (the bottom of its range) is accepted."""
    s = await ctx.session(idle_ms=HB_MS)
    await s.link.expect_quiet(0.5, allow=FROM_PANEL)
    await ctx.bye(s)
    return f"idle_ms = heartbeat_ms = {HB_MS}: the session goes on"


# ---------------------------------------------------------------------------------------------- ending, framing


@panel_case("bye-reconnect", "10")
async def bye_reconnect(ctx: PanelCtx) -> str:
    """BYE(SHUTTING_DOWN): the panel closes without answering, and accepts a new session afterwards."""
    s = await ctx.session()
    await s.link.send_msg(c.Bye(s.epoch, c.CODES["SHUTTING_DOWN"]))
    await s.link.expect_close(3.0, after="the node's BYE", allow=FROM_PANEL)
    t0 = trio.current_time()
    s2 = await ctx.session()
    dt = trio.current_time() - t0
    await ctx.bye(s2)
    return f"closed without an answer; new session's HELLO {dt * 1000:.0f} ms later"


async def _panel_framing(ctx: PanelCtx, build: Any, code: str, *, any_version: bool = False) -> c.Error:
    link = await ctx.dial(any_version=any_version)
    h = await ctx.hello(link)
    await link.send(build(h))
    return await link.expect_error(code, 3.0, skip=())


@panel_case("bad-crc", "3, 10")
async def bad_crc(ctx: PanelCtx) -> str:
    """A WELCOME with a wrong crc: ERROR BAD_CRC and the close."""
    await _panel_framing(ctx, lambda h: c.frame(ctx.welcome(h), bad_crc=True), "BAD_CRC")
    return "BAD_CRC"


@panel_case("bad-magic", "3")
async def bad_magic(ctx: PanelCtx) -> str:
    """Bytes that are not F5 5C where a frame starts: BAD_MAGIC."""
    await _panel_framing(ctx, lambda h: c.frame(ctx.welcome(h), magic=b"HT"), "BAD_MAGIC")
    return "BAD_MAGIC"


@panel_case("unknown-type", "3")
async def unknown_type(ctx: PanelCtx) -> str:
    """A frame of type 42: UNKNOWN_TYPE."""
    await _panel_framing(ctx, lambda h: c.encode_frame(42, b""), "UNKNOWN_TYPE")
    return "UNKNOWN_TYPE"


@panel_case("welcome-trailing-bytes", "5")
async def welcome_trailing(ctx: PanelCtx) -> str:
    """A WELCOME with a byte left over: MALFORMED."""
    await _panel_framing(ctx, lambda h: c.encode_frame(c.WELCOME, ctx.welcome(h).encode() + b"\x00"), "MALFORMED")
    return "MALFORMED"


async def _unsupported(ctx: PanelCtx, version: int, payload: Any) -> str:
    link = await ctx.dial(any_version=True)
    h = await ctx.hello(link)
    await link.send(c.encode_frame(c.WELCOME, payload(ctx.welcome(h)), version=version))
    rx = await link.recv(3.0)
    check(rx is not None, "no answer within 3 s")
    assert rx is not None
    check(
        rx.kind == "msg" and isinstance(rx.msg, c.Error) and rx.msg.code == 101,
        f"expected ERROR UNSUPPORTED_VERSION, got {rx.describe()}",
    )
    assert rx.frame is not None and isinstance(rx.msg, c.Error)
    check(
        rx.frame.version == version,
        f"ERROR frame carries version {rx.frame.version}, not the peer's {version} (13.2)",
    )
    check(
        re.search(rf"\b{c.VERSION}\b", rx.msg.text) is not None,
        f"ERROR text {rx.msg.text!r} does not name version {c.VERSION} (13.2)",
    )
    await link.expect_close(2.0)
    return f"ERROR 101 in a version-{version} frame: {rx.msg.text!r}"


@panel_case("unsupported-version-4", "3, 13.2")
async def unsupported_version_4(ctx: PanelCtx) -> str:
    """A version-4 WELCOME (the previous version): ERROR UNSUPPORTED_VERSION in a version-4 frame, naming version 5.

    Its payload is the version-4 layout, which is version 5's (13.1 changes no WELCOME field).
    """
    return await _unsupported(ctx, 4, lambda w: w.encode())


@panel_case("unsupported-version-3", "3, 13.2")
async def unsupported_version_3(ctx: PanelCtx) -> str:
    """A version-3 WELCOME: ERROR UNSUPPORTED_VERSION in a version-3 frame, naming version 5.

    Its payload is the version-3 layout, which is version 5's (13.1 and 13.5 change no WELCOME field).
    """
    return await _unsupported(ctx, 3, lambda w: w.encode())


@panel_case("unsupported-version-2", "3, 13.2")
async def unsupported_version_2(ctx: PanelCtx) -> str:
    """A version-2 WELCOME: ERROR UNSUPPORTED_VERSION in a frame carrying version 2, its text naming version 5.

    The WELCOME has the version-2 layout (no idle_ms), as a version-2 node sends it.
    """
    return await _unsupported(ctx, 2, lambda w: w.encode_v2())


@panel_case("welcome-stale-epoch", "5, 6.2")
async def welcome_stale(ctx: PanelCtx) -> str:
    """A WELCOME with an epoch below the panel's max_epoch: STALE_EPOCH and no events in that session."""
    link = await ctx.dial()
    h = await ctx.hello(link)
    raised = ""
    if h.max_epoch < 2:
        # Teach the panel epoch 2 first (it MUST remember an accepted epoch, 6.2.5).
        await link.send_msg(ctx.welcome(h, epoch=2))
        await link.send_msg(c.Bye(2, 0))
        await link.aclose()
        link = await ctx.dial()
        h = await ctx.hello(link)
        check(
            h.max_epoch >= 2,
            f"after accepting a WELCOME of epoch 2 the next HELLO says max_epoch {h.max_epoch} (6.2.5)",
        )
        raised = "after raising max_epoch to 2, "
    await link.send_msg(ctx.welcome(h, epoch=h.max_epoch - 1))
    await link.expect_error("STALE_EPOCH", 3.0, skip=(c.HEARTBEAT,))
    return f"{raised}WELCOME epoch {h.max_epoch - 1} < max_epoch {h.max_epoch}: STALE_EPOCH, no events"


# ---------------------------------------------------------------------------------------------- TLS


async def _tls_refused(ctx: PanelCtx, ident: Any, what: str, *, tls12: bool = False) -> str:
    assert ctx.t.pki is not None
    ssl_ctx = _tls.context(ctx.t.pki / "ca.pem", ident, tls12_only=tls12)
    host, port = ctx.t.addr()
    link = await connect_or_refused(host, port, ssl_ctx, ctx.nursery)
    if isinstance(link, str):
        return link
    ctx.links.append(link)
    rx = await link.recv(4.0)
    check(rx is None or rx.kind != "msg", f"{what}: the panel sent {rx.describe() if rx else ''} (2.2)")
    return f"no HELLO ({rx.describe() if rx else 'silence for 4 s'})"


@panel_case("tls12-refused", "2.2", tls_only=True)
async def tls12(ctx: PanelCtx) -> str:
    """A TLS 1.2-only node is refused at the TLS layer."""
    return await _tls_refused(ctx, ctx.node_identity(), "a TLS 1.2 node", tls12=True)


@panel_case("tls-rogue-ca-refused", "2.2", tls_only=True)
async def tls_rogue(ctx: PanelCtx) -> str:
    """A node certificate from another CA is refused: no HELLO."""
    return await _tls_refused(ctx, _tls.rogue_identity(f"node-{ctx.t.node_name}"), "a node of another CA")


@panel_case("tls-no-client-cert-refused", "2.2", tls_only=True)
async def tls_no_cert(ctx: PanelCtx) -> str:
    """A node without a certificate is refused: no HELLO."""
    return await _tls_refused(ctx, None, "a node without a certificate")


@panel_case("tls-not-a-node-refused", "2.2", tls_only=True)
async def tls_not_node(ctx: PanelCtx) -> str:
    """A site certificate whose CN does not start with node- (a panel's) is refused: no HELLO."""
    assert ctx.t.pki is not None
    ident = _tls.Identity(ctx.t.pki / f"panel-{ctx.t.panel_id}.pem", ctx.t.pki / f"panel-{ctx.t.panel_id}.key")
    if not ident.cert.exists():
        raise Skip(f"no {ident.cert} to play a non-node peer with")
    return await _tls_refused(ctx, ident, f"a peer with CN panel-{ctx.t.panel_id}")


# ---------------------------------------------------------------------------------------------- parked sessions (6.3)
#
# With `--park-listen HOST:PORT` the battery listens there (with TLS as the TLS server, 2.2) and plays the standby
# node of a panel configured to park at that address. Each case takes the panel's next park connection.


def parked_silent(seconds: float) -> str:
    return (
        f"{seconds * 1000:.0f} ms without a frame from a parked panel "
        f"(6.3 rule 3, 9.1 rule 2: it probes once per the STANDBY's I = {IDLE_MS} ms)"
    )


async def watch_parked(p: Parked, seconds: float) -> list[float]:
    """Watch a parked panel for `seconds`, its probes answered at once with epoch 0 (the link's answerer, 6.3 rule 3).

    It sends HEARTBEATs only, carrying its max_epoch (6.3 rule 3), each a probe no sooner than I after its previous
    frame (the HELLO counts) and no later than I plus the checker's allowance (9.1 rule 2). Returns, for each probe,
    the time since the panel's previous frame.
    """
    prev, prev_msg, replied = p.hello_at, None, -math.inf
    probes: list[float] = []
    end = trio.current_time() + seconds
    while (now := trio.current_time()) < end:
        rx = await p.link.recv(end - now)
        if rx is None:
            break
        check(rx.kind == "msg" and rx.msg is not None, f"the parked session ended: {rx.describe()}")
        m = rx.msg
        assert m is not None
        since, prev = rx.at - prev, rx.at
        check(since <= IDLE_S + slack(IDLE_S), parked_silent(since))
        check(
            isinstance(m, c.Heartbeat),
            f"{describe(m)} from a parked panel (6.3 rule 3: nothing but HEARTBEAT in PARKED)",
        )
        assert isinstance(m, c.Heartbeat)
        check(
            m.epoch >= p.hello.max_epoch,
            f"a parked panel's HEARTBEAT carries epoch {m.epoch}, below its HELLO's max_epoch {p.hello.max_epoch} "
            "(6.3 rule 3: it carries its max_epoch)",
        )
        late = crossed(rx.at, since, prev_msg, replied)
        prev_msg, replied = m, p.link.answer_sent
        if late:
            continue  # a probe repeated (rule 1) before our late answer reached it
        check(
            since >= IDLE_S - slack(IDLE_S),
            f"a probe {since * 1000:.0f} ms after the parked panel's previous frame (6.3 rule 3, 9.1 rule 2: "
            f"it probes when it has sent nothing else for the STANDBY's I = {IDLE_MS} ms, not sooner)",
        )
        probes.append(since)
    since = trio.current_time() - prev
    check(since <= IDLE_S + slack(IDLE_S), parked_silent(since))
    return probes


@panel_case("park-hello", "2.2, 6.2, 6.3", park=True)
async def park_hello(ctx: PanelCtx) -> str:
    """On a park connection the panel sends HELLO first, with its own id (and its certificate's CN, over TLS 1.3)."""
    p = await ctx.park()
    h = p.hello
    extra = ""
    if ctx.tls:
        cn, v = p.link.peer_cn(), p.link.tls_version()
        check(v == "TLSv1.3", f"negotiated {v} on the park connection (2.2)")
        check(cn == f"panel-{ctx.t.panel_id}", f"certificate CN {cn!r}, HELLO panel_id {h.panel_id} (2.2)")
        extra = f", {v} CN {cn}"
    await ctx.park_bye(p)
    return (
        f"park HELLO: panel {h.panel_id} fw {h.firmware!r} seqs {h.oldest_seq}..{h.newest_seq} "
        f"config v{h.config_version} max_epoch {h.max_epoch}{extra}"
    )


@panel_case("park-probe-interval", "6.3, 9.1", park=True)
async def park_probe_interval(ctx: PanelCtx) -> str:
    """Parked (STANDBY idle_ms 1000), the panel probes once per idle_ms, never sooner, and sends nothing else.

    6.3 rule 3, 9.1 rule 2, with the STANDBY's heartbeat_ms 200 and idle_ms 1000; the battery answers each probe at
    once with a HEARTBEAT of epoch 0.
    """
    p = await ctx.parked()
    window = 3.5 * IDLE_S
    probes = await watch_parked(p, window)
    await ctx.park_bye(p)
    gaps = ", ".join(f"{x * 1000:.0f}" for x in probes) or "none"
    return f"parked {window:g} s: probes after {gaps} ms of silence (I = {IDLE_MS} ms), nothing else"


@panel_case("park-heartbeat-epoch-nonzero", "6.3, 9.2", park=True)
async def park_heartbeat_epoch(ctx: PanelCtx) -> str:
    """A parked node's HEARTBEAT with an epoch other than 0 is refused with EPOCH_MISMATCH (6.3 rule 3)."""
    p = await ctx.parked()
    e = max(p.hello.max_epoch, 1)
    await p.link.send_msg(c.Heartbeat(e))
    await p.link.expect_error("EPOCH_MISMATCH", 3.0, skip=(c.HEARTBEAT,))
    return f"HEARTBEAT epoch {e} while parked: EPOCH_MISMATCH"


@panel_case("park-welcome-before-standby", "4, 6.3", park=True)
async def park_welcome_before_standby(ctx: PanelCtx) -> str:
    """A WELCOME answering the HELLO on a park connection (before any TAKEOVER) is ILLEGAL_IN_STATE (6.3 rule 2)."""
    p = await ctx.park()
    w = ctx.welcome(p.hello)
    await p.link.send_msg(w)
    await p.link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=())
    return f"WELCOME epoch {w.epoch} for the park HELLO: ILLEGAL_IN_STATE"


@panel_case("park-welcome-while-parked", "6.1, 6.3", park=True)
async def park_welcome_while_parked(ctx: PanelCtx) -> str:
    """A WELCOME after STANDBY, before any TAKEOVER, is ILLEGAL_IN_STATE (6.3 rules 2-3: nothing else in PARKED)."""
    p = await ctx.parked()
    w = ctx.welcome(p.hello)
    await p.link.send_msg(w)
    await p.link.expect_error("ILLEGAL_IN_STATE", 3.0, skip=(c.HEARTBEAT,))
    return f"WELCOME epoch {w.epoch} while parked: ILLEGAL_IN_STATE"


@panel_case("park-takeover-epoch-zero", "3, 5, 6.3", park=True)
async def park_takeover_epoch_zero(ctx: PanelCtx) -> str:
    """A TAKEOVER with epoch 0 breaks its range (5: >= 1): FIELD_OUT_OF_RANGE."""
    p = await ctx.parked()
    await p.link.send(c.frame(c.Takeover(0)))
    await p.link.expect_error("FIELD_OUT_OF_RANGE", 3.0, skip=(c.HEARTBEAT,))
    return "TAKEOVER epoch 0: FIELD_OUT_OF_RANGE"


@panel_case("park-takeover-hello", "6.2, 6.3, 9.1", park=True)
async def park_takeover_hello(ctx: PanelCtx) -> str:
    """A TAKEOVER at max_epoch: a fresh HELLO within 5 s; a WELCOME of its epoch then gets the panel streaming.

    6.3 rule 4, 6.2; the TAKEOVER's epoch is the park HELLO's max_epoch (at least 1), or --epoch. The panel is first
    seen parked (a probe, answered). After the WELCOME (hwm as the other cases give it) it uploads or probes as 9.1
    says, for 1.5 I; the battery acknowledges every batch and answers every HEARTBEAT at once.
    """
    p = await ctx.parked()
    await p.link.expect(
        c.HEARTBEAT,
        max(0.0, p.hello_at + IDLE_S + slack(IDLE_S) - trio.current_time()),
        skip=(),
        what=" (a probe) from the parked panel (6.3 rule 3: every I)",
    )
    p.link.stop_answering()  # the probe is answered; from the TAKEOVER on the panel is IDLE, then HELLO_SENT
    e = ctx.epoch_for(p.hello)
    await p.link.send_msg(c.Takeover(e))
    t0 = p.link.last_sent
    m = await p.link.expect(c.HELLO, 5.5, skip=(), what=" after TAKEOVER (6.3 rule 4: a fresh HELLO at once)")
    assert isinstance(m, c.Hello)
    hello_at = trio.current_time()
    dt = hello_at - t0
    check(dt <= 5.0, f"the fresh HELLO {dt:.2f} s after TAKEOVER (6.3 rule 4: at once; the node waits 5 s)")
    check(m.panel_id == ctx.t.panel_id, f"HELLO panel_id {m.panel_id}, expected {ctx.t.panel_id}")
    check(
        p.hello.max_epoch <= m.max_epoch <= e,
        f"the fresh HELLO's max_epoch {m.max_epoch}: the park HELLO said {p.hello.max_epoch}, the TAKEOVER {e} "
        "(6.2 step 1: from its memory of epochs)",
    )
    w = ctx.welcome(m, epoch=e)
    p.link.watch_alarms(e, w.hwm)  # streaming now: its ALARMs are checked and answered as in any session (7.6)
    await p.link.send_msg(w)
    ctx.note_config(m)
    p.link.answer_heartbeats(e)
    s = Session(p.link, m, w, hello_at)
    seen = await watch_quiet(ctx, s, 1.5 * IDLE_S)
    await ctx.bye(s)
    return (
        f"probe answered; TAKEOVER epoch {e}: fresh HELLO in {dt * 1000:.0f} ms (max_epoch {m.max_epoch}); "
        f"WELCOME epoch {e} hwm {w.hwm}: {seen.frames} frames in {1.5 * IDLE_S:g} s ({seen.batches} batches, "
        f"{seen.alarms} ALARM(s), {len(seen.probes)} probe(s))"
    )


async def teach_epoch(ctx: PanelCtx, p: Parked, epoch: int) -> str:
    """Make the panel accept `epoch` (it keeps its max_epoch, 6.2 step 5), closing the park connection `p`: a WELCOME
    of it on --panel's connection, or without --panel a TAKEOVER of it and the WELCOME on `p` (6.3 rule 4)."""
    if ctx.t.host is not None:
        await ctx.park_bye(p)
        link = await ctx.dial()
        h = await ctx.hello(link)
        await link.send_msg(ctx.welcome(h, epoch=epoch))
        await link.send_msg(c.Bye(epoch, 0))
        await link.aclose()
        return f"a WELCOME of epoch {epoch} on --panel's connection"
    p.link.stop_answering()
    await p.link.send_msg(c.Takeover(epoch))
    m = await p.link.expect(c.HELLO, 5.5, skip=(c.HEARTBEAT,), what=" after TAKEOVER (6.3 rule 4)")
    assert isinstance(m, c.Hello)
    await p.link.send_msg(ctx.welcome(m, epoch=epoch))
    await p.link.send_msg(c.Bye(epoch, 0))
    await p.link.aclose()
    return f"a TAKEOVER and WELCOME of epoch {epoch} on the park connection"


@panel_case("park-takeover-stale", "5, 6.3", park=True, timeout=60.0)
async def park_takeover_stale(ctx: PanelCtx) -> str:
    """A TAKEOVER whose epoch is below the HELLO's max_epoch is STALE_EPOCH (5 TAKEOVER, 6.3 rule 4).

    A panel whose max_epoch is below 2 is first taught epoch 2, as welcome-stale-epoch does (6.2 step 5).
    """
    p = await ctx.parked()
    raised = ""
    if p.hello.max_epoch < 2:
        how = await teach_epoch(ctx, p, 2)
        taught = trio.current_time()
        p = await ctx.parked()
        if p.hello.max_epoch < 2 and p.accepted_at < taught:  # a park connection the panel opened before it
            await ctx.park_bye(p)
            p = await ctx.parked()
        check(
            p.hello.max_epoch >= 2,
            f"after {how} the next park HELLO says max_epoch {p.hello.max_epoch} (6.2 step 5)",
        )
        raised = f"after {how}, "
    e = p.hello.max_epoch - 1
    await p.link.send_msg(c.Takeover(e))
    await p.link.expect_error("STALE_EPOCH", 3.0, skip=(c.HEARTBEAT,))
    return f"{raised}TAKEOVER epoch {e} < max_epoch {p.hello.max_epoch}: STALE_EPOCH"
