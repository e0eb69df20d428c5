"""Rogue peers: what P6 and P7 are checked against in a scenario run.

Each attempt dials the VIP the way a panel would and tries to get something it must
not: a WELCOME, an ACK, a configuration, an event in the store. What it gets is its
``RogueOutcome``; the checker adds what the store holds under the rogue's marker.

- ``no-cert``: TLS 1.3 without a client certificate.
- ``other-ca``: a certificate for the claimed panel, issued by another CA.
- ``tls1.2``: the panel's own certificate and key, but a client that speaks TLS 1.2 at most.
- ``id-mismatch``: another panel's genuine certificate, and a HELLO naming the claimed panel.
- ``replay``: the bytes a genuine panel sent in a session, recorded on the wire, sent again
  on a new connection (nothing but the recording: an eavesdropper has no key).
- ``garbage``: random bytes where a handshake or a frame should be (P6).

A rogue that gets past TLS sends HELLO and, if welcomed, a batch of marker events from
the hwm on: the events carry ``ROGUE_CARD`` and up, an identity no panel generates.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import secrets
import ssl
from pathlib import Path

import trio

from fieldsync.site import pki
from protocol import (
    EMPTY_DIGEST,
    Ack,
    ConfigDelta,
    ConfigSnapshot,
    Error,
    EventBatch,
    EventKind,
    EventRecord,
    Hello,
    PanelConnection,
    ProtocolError,
    Welcome,
    pack_records,
)
from protocol.streams import LinkError, MessageStream, PeerClosed, TlsFiles

__all__ = ["ROGUE_CARD", "RogueKind", "RogueOutcome", "attempt"]

#: Cards at or above this are a rogue's: no workload, seed or operator uses them.
ROGUE_CARD = 0xF0F0_0000_0000_0000
_EVENTS = 8
_TIMEOUT = 3.0


class RogueKind(enum.StrEnum):
    NO_CERT = "no-cert"
    OTHER_CA = "other-ca"
    TLS12 = "tls1.2"
    ID_MISMATCH = "id-mismatch"
    REPLAY = "replay"
    GARBAGE = "garbage"

    @property
    def needs_tls(self) -> bool:
        return self is not RogueKind.GARBAGE

    @property
    def promise(self) -> str:
        return "P6" if self is RogueKind.GARBAGE else "P7"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RogueOutcome:
    """What one rogue attempt got from the node."""

    kind: RogueKind
    #: The panel the rogue claimed to be.
    panel_id: int
    #: Where it was stopped: "tls" (handshake or the first read failed), "error" (an
    #: ERROR frame), "closed" (the node hung up), or "" if it was not stopped.
    refused_at: str
    #: The ERROR code it got, if any.
    error_code: int | None = None
    welcomed: bool = False
    acks: int = 0
    config_messages: int = 0
    events_sent: int = 0
    detail: str = ""

    @property
    def got_nothing(self) -> bool:
        return bool(self.refused_at) and not self.welcomed and not self.acks and not self.config_messages

    def describe(self) -> str:
        got = (
            "nothing" if self.got_nothing else f"welcome={self.welcomed} acks={self.acks} config={self.config_messages}"
        )
        code = f" {self.error_code}" if self.error_code is not None else ""
        return f"{self.kind} as panel {self.panel_id}: refused at {self.refused_at or '-'}{code}, got {got}"


def _client_context(*, cert: TlsFiles | None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a rogue does not care who answers
    if max_version is not None:
        ctx.maximum_version = max_version
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def _other_ca_cert(workdir: Path, panel_id: int) -> TlsFiles:
    directory = workdir / "rogue-ca"
    if not (directory / "ca.pem").exists():
        pki.init_ca(directory, site="rogue site")
    pki.issue(directory, "panel", panel_id)
    return pki.tls_files(directory, "panel", panel_id)


async def attempt(
    kind: RogueKind,
    *,
    address: tuple[str, int],
    panel_id: int,
    pki_dir: Path | None,
    other_panel: int,
    workdir: Path,
    recording: bytes = b"",
    seed: int = 0,
) -> RogueOutcome:
    """One rogue attempt against the node at ``address``, bounded in time."""
    rng = random.Random(seed)
    if kind is RogueKind.GARBAGE:
        return await _raw(kind, address, panel_id, rng.randbytes(512))
    if kind is RogueKind.REPLAY:
        if not recording:
            raise ValueError("a replay needs a recorded session")
        return await _raw(kind, address, panel_id, recording)
    if pki_dir is None:
        raise ValueError(f"rogue {kind} needs a TLS site")
    if kind is RogueKind.NO_CERT:
        ctx = _client_context(cert=None)
    elif kind is RogueKind.OTHER_CA:
        ctx = await trio.to_thread.run_sync(lambda: _client_context(cert=_other_ca_cert(workdir, panel_id)))
    elif kind is RogueKind.TLS12:
        ctx = _client_context(cert=pki.tls_files(pki_dir, "panel", panel_id), max_version=ssl.TLSVersion.TLSv1_2)
    else:
        ctx = _client_context(cert=pki.tls_files(pki_dir, "panel", other_panel))
    return await _session(kind, address, panel_id, ctx)


async def _raw(kind: RogueKind, address: tuple[str, int], panel_id: int, data: bytes) -> RogueOutcome:
    """Bytes on a bare TCP connection; whatever comes back is read until the node hangs up."""
    try:
        with trio.fail_after(_TIMEOUT):
            stream = await trio.open_tcp_stream(*address)
    except (OSError, trio.TooSlowError) as exc:
        return RogueOutcome(kind=kind, panel_id=panel_id, refused_at="connect", detail=str(exc))
    answer = bytearray()
    async with stream:
        with trio.move_on_after(_TIMEOUT) as scope:
            try:
                await stream.send_all(data)
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            except trio.BrokenResourceError:
                pass
    # A node that hangs up has refused. What came back before (a TLS alert, an ERROR
    # frame, for a replay a handshake under keys the replay does not have) is not read:
    # what a replay could have got is judged by the node hanging up and by the store.
    return RogueOutcome(
        kind=kind,
        panel_id=panel_id,
        refused_at="" if scope.cancelled_caught else "closed",
        detail=f"{len(data)} bytes sent, {len(answer)} back",
    )


async def _session(kind: RogueKind, address: tuple[str, int], panel_id: int, ctx: ssl.SSLContext) -> RogueOutcome:
    try:
        with trio.fail_after(_TIMEOUT):
            tcp = await trio.open_tcp_stream(*address)
    except (OSError, trio.TooSlowError) as exc:
        return RogueOutcome(kind=kind, panel_id=panel_id, refused_at="connect", detail=str(exc))
    stream = trio.SSLStream(tcp, ctx, https_compatible=False)
    try:
        with trio.fail_after(_TIMEOUT):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        await trio.aclose_forcefully(stream)
        return RogueOutcome(kind=kind, panel_id=panel_id, refused_at="tls", detail=repr(exc.__cause__ or exc))
    ms = MessageStream(stream, PanelConnection(now=trio.current_time()), name=f"rogue {kind}")
    welcomed = False
    acks = configs = sent = 0
    refused_at, code, detail = "", None, ""
    try:
        with trio.move_on_after(_TIMEOUT):
            await ms.send(
                Hello(
                    panel_id=panel_id,
                    boot_id=secrets.randbits(63),
                    firmware="rogue",
                    oldest_seq=0,
                    newest_seq=0,
                    config_version=0,
                    config_digest=EMPTY_DIGEST,
                    max_epoch=0,
                )
            )
            while True:
                message = await ms.receive()
                if isinstance(message, Welcome) and not welcomed:
                    welcomed = True
                    first = message.hwm + 1
                    records = [
                        EventRecord(
                            seq=first + i, time_us=1, kind=EventKind.ACCESS_GRANTED, door=1, card=ROGUE_CARD + i
                        )
                        for i in range(_EVENTS)
                    ]
                    await ms.send(EventBatch(first_seq=first, records=pack_records(records)))
                    sent += _EVENTS
                elif isinstance(message, Ack):
                    acks += 1
                elif isinstance(message, ConfigDelta | ConfigSnapshot):
                    configs += 1
                elif isinstance(message, Error):
                    refused_at, code = "error", message.code
                    break
    except PeerClosed as exc:
        refused_at, detail = ("closed" if welcomed else "tls"), str(exc)
    except (LinkError, ProtocolError) as exc:
        # TLS 1.3: the client's handshake ends before the server has judged its
        # certificate; the refusal arrives as an alert on the first read.
        refused_at, detail = ("closed" if welcomed else "tls"), str(exc)
    finally:
        await ms.aclose()
    return RogueOutcome(
        kind=kind,
        panel_id=panel_id,
        refused_at=refused_at,
        error_code=int(code) if code is not None else None,
        welcomed=welcomed,
        acks=acks,
        config_messages=configs,
        events_sent=sent,
        detail=detail,
    )
