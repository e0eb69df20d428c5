"""TLS 1.3 contexts for both ends, and reading the peer's identity.

Every panel has its own certificate from the site's CA, with CN ``panel-<id>``;
nodes have ``node-<name>``. Hostname checking is off because panels reach a
moving VIP; instead both ends require a certificate from the site CA and check
the peer's role and identity from its CN.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import trio

from ._errors import TlsError
from ._socket_tls import SocketTLSStream

__all__ = ["TlsFiles", "client_context", "peer_identity", "server_context", "wrap"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """Paths to one party's certificate and key, and the site CA."""

    cert: Path
    key: Path
    ca: Path

    def check(self) -> None:
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA certificate", self.ca)):
            if not Path(path).is_file():
                raise TlsError(f"{what} {path} does not exist; run 'fieldsync pki init' and 'fieldsync pki issue'")


def _context(purpose: ssl.Purpose, files: TlsFiles) -> ssl.SSLContext:
    files.check()
    ctx = ssl.create_default_context(purpose, cafile=str(files.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load certificate {files.cert} with key {files.key}: {exc}") from exc
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """For the end that dials (a punch-out panel, a node dialing a panel)."""
    return _context(ssl.Purpose.SERVER_AUTH, files)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """For the end that accepts (a node on :30002, a panel on :3001)."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, files)
    # No TLS 1.3 session tickets: nothing here resumes a session (trio's SSLStream has no
    # way to offer one), and issuing two per handshake made each handshake about a fifth
    # dearer (2.9 -> 2.3 ms for both ends, OpenSSL 3.0, measured in memory).
    ctx.num_tickets = 0
    return ctx


#: A TLS stream of a link: ``SocketTLSStream`` on a TCP socket, ``trio.SSLStream`` elsewhere.
TlsStream = SocketTLSStream | trio.SSLStream[trio.abc.Stream]


def wrap(stream: trio.abc.Stream, ctx: ssl.SSLContext, *, server_side: bool) -> TlsStream:
    """TLS over ``stream``: straight on the socket for TCP (``_socket_tls``), through
    ``trio.SSLStream`` for any other stream (a serial line)."""
    if isinstance(stream, trio.SocketStream):
        return SocketTLSStream(stream, ctx, server_side=server_side)
    return trio.SSLStream(stream, ctx, server_side=server_side, https_compatible=False)


def peer_identity(stream: TlsStream) -> str:
    """The CN of the verified peer certificate (after the handshake)."""
    cert = stream.getpeercert()
    if not cert:
        raise TlsError("the peer presented no certificate")
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    raise TlsError("the peer certificate has no common name")
