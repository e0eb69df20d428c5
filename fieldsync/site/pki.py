"""A site's small PKI: one CA, a certificate per panel and per node.

EC P-256 keys: a TLS 1.3 handshake with them costs a fraction of RSA's, which
matters when a thousand panels reconnect at once after a failover.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol.streams import TlsFiles

__all__ = [
    "PkiError",
    "identity",
    "init_ca",
    "issue",
    "tls_files",
]

_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_VALID_DAYS = 3650


class PkiError(Exception):
    """A PKI command could not do what was asked; the message says why."""


def identity(role: str, name: str | int) -> str:
    """The certificate CN for a panel (``panel-17``) or a node (``node-A``)."""
    if role not in ("panel", "node"):
        raise PkiError(f"role must be 'panel' or 'node', not {role!r}")
    text = str(name)
    if role == "panel" and not (text.isdigit() and 0 < int(text) < 2**32):
        raise PkiError(f"panel id must be a number from 1 to {2**32 - 1}, not {text!r}")
    if role == "node" and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", text):
        raise PkiError(f"node name {text!r} must be 1-32 letters, digits, '-' or '_'")
    return f"{role}-{int(text) if role == 'panel' else text}"


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(directory: Path | str, *, site: str = "fieldsync site", force: bool = False) -> Path:
    """Make the site CA in ``directory``; refuse to overwrite one unless ``force``."""
    directory = Path(directory)
    if (directory / _CA_KEY).exists() and not force:
        raise PkiError(f"{directory / _CA_KEY} exists already; pass --force to replace the site CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{site} CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(directory / _CA_KEY, _key_bytes(key), secret=True)
    _write(directory / _CA_CERT, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return directory / _CA_CERT


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / _CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / _CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(
            f"no site CA in {directory} ({exc.filename} missing); run 'fieldsync pki init {directory}'"
        ) from exc
    except ValueError as exc:
        raise PkiError(f"the site CA in {directory} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{directory / _CA_KEY} is not an EC key")
    return cert, key


def issue(
    directory: Path | str, role: str, name: str | int, *, valid_days: int = _VALID_DAYS, expired: bool = False
) -> TlsFiles:
    """Issue a certificate and key for a panel or node, signed by the site CA in ``directory``.

    ``expired`` makes a certificate whose validity ended yesterday (for tests of refusal).
    """
    directory = Path(directory)
    cn = identity(role, name)
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=2 if expired else 0, minutes=5)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=valid_days)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = tls_files(directory, role, name)
    _write(files.key, _key_bytes(key), secret=True)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return files


def tls_files(directory: Path | str, role: str, name: str | int) -> TlsFiles:
    """Where ``issue`` puts (and a panel or node finds) its certificate and key."""
    directory = Path(directory)
    cn = identity(role, name)
    return TlsFiles(cert=directory / f"{cn}.pem", key=directory / f"{cn}.key", ca=directory / _CA_CERT)
