"""Errors of the I/O edge, mapped where library exceptions enter.

``LinkError`` means the byte stream itself failed (refused, reset, closed, TLS
handshake failure); protocol errors stay ``ProtocolError`` and a silent peer is
``PeerTimeout``, so a link manager can tell network from protocol from timeout.
"""

from __future__ import annotations

import contextlib
import errno
import ssl
from collections.abc import Iterator

import trio

__all__ = ["LinkError", "PeerClosed", "TlsError", "first_error", "map_link_errors"]


class LinkError(Exception):
    """The transport failed (connect refused, reset, broken pipe, closed)."""


class PeerClosed(LinkError):
    """The peer closed the stream; ``clean`` if a BYE or ERROR came first."""

    def __init__(self, message: str, *, clean: bool) -> None:
        super().__init__(message)
        self.clean = clean


class TlsError(LinkError):
    """TLS failed: handshake, certificate verification, or the peer's identity."""


@contextlib.contextmanager
def map_link_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except ssl.SSLError as exc:
        raise TlsError(f"{doing}: TLS failed: {exc.reason or exc}") from exc
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            raise TlsError(f"{doing}: TLS failed: {cause.reason or cause}") from exc
        raise LinkError(f"{doing}: connection broken ({cause or exc})") from exc
    except trio.ClosedResourceError as exc:
        raise LinkError(f"{doing}: stream already closed") from exc
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LinkError(f"{doing}: address already in use ({exc.strerror})") from exc
        raise LinkError(f"{doing}: {exc.strerror or exc}") from exc


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that explains a failed session nursery.

    A session runs its reader, writer and timers as sibling tasks; when one
    fails the others are cancelled, and trio wraps what comes out in a group.
    Callers that sort failures by type (link, protocol, timeout) want the one
    real error, not the group or the Cancelled siblings.
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return group
