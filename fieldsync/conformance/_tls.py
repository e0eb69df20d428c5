"""TLS contexts for the battery (section 2.2), and a rogue CA made on the fly."""

from __future__ import annotations

import contextlib
import datetime
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


def context(
    ca: Path | None, ident: Identity | None, *, tls12_only: bool = False, verify: bool = True
) -> ssl.SSLContext:
    """A client context (the battery dials; see `server_context` for the park address): TLS 1.3 only, unless
    `tls12_only`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # 2.2: host names and subjectAltName are not checked
    if tls12_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if verify and ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if ident is not None:
        ctx.load_cert_chain(str(ident.cert), str(ident.key))
    return ctx


def server_context(ca: Path, ident: Identity) -> ssl.SSLContext:
    """A server context, for the battery's park address (2.1, 6.3: the panel dials, so the battery is the TLS
    server, 2.2): TLS 1.3 only, the peer's certificate required and verified up to the site's CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(ident.cert), str(ident.key))
    return ctx


_rogue_dir: tempfile.TemporaryDirectory[str] | None = None


def rogue_identity(cn: str) -> Identity:
    """A certificate with `cn` from a CA made here and now (section 2.2: any other CA is refused)."""
    global _rogue_dir
    if _rogue_dir is None:
        _rogue_dir = tempfile.TemporaryDirectory(prefix="fieldsync-conformance-")
    base = Path(_rogue_dir.name)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue-ca")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = base / f"{cn}.pem", base / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Identity(cert_path, key_path)


async def send_then_close_notify(
    host: str, port: int, ctx: ssl.SSLContext, data: bytes, *, wait: float = 4.0
) -> tuple[bytes, str]:
    """TLS up, `data` sent, then close_notify (the TLS end of the stream) while still reading.

    Returns what the peer sent after it (plain bytes) and how its side ended. trio's SSLStream cannot half-close,
    so this drives an ssl.SSLObject by hand.
    """
    import trio

    sock = await trio.open_tcp_stream(host, port)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)

    async def flush() -> None:
        pending = out.read()
        if pending:
            await sock.send_all(pending)

    async def fill() -> bool:
        chunk = await sock.receive_some(65536)
        if chunk:
            inc.write(chunk)
        else:
            inc.write_eof()
        return bool(chunk)

    received = b""
    how = "silence"
    try:
        with trio.move_on_after(wait):
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await flush()
                    await fill()
            await flush()
            obj.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.unwrap()
            await flush()
            while True:
                try:
                    received += obj.read(65536)
                except ssl.SSLWantReadError:
                    if not await fill():
                        how = "TCP close"
                        break
                except ssl.SSLZeroReturnError:
                    how = "close_notify"
                    break
                except ssl.SSLError as exc:
                    how = f"TLS error {exc.reason or exc}"
                    break
    except (trio.BrokenResourceError, OSError) as exc:
        how = f"reset ({exc})"
    finally:
        await trio.aclose_forcefully(sock)
    return received, how
