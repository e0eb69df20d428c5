"""The I/O edge of the protocol package: trio Streams in, messages out, one session driver.

Shared by the emulator and the node. The sans-I/O core never imports this.
"""

from ._driver import EndReason as EndReason
from ._driver import SessionDriver as SessionDriver
from ._driver import SessionEnd as SessionEnd
from ._driver import SessionHandler as SessionHandler
from ._errors import LinkError as LinkError
from ._errors import PeerClosed as PeerClosed
from ._errors import TlsError as TlsError
from ._errors import first_error as first_error
from ._gc import GcTime as GcTime
from ._gc import collect_sparingly as collect_sparingly
from ._gc import sparing_gc as sparing_gc
from ._serial import SerialLine as SerialLine
from ._serial import SerialStream as SerialStream
from ._serial import check_plaintext_serial as check_plaintext_serial
from ._serial import is_pseudo_terminal as is_pseudo_terminal
from ._serial import open_serial as open_serial
from ._serial import records_per_batch as records_per_batch
from ._serial import serial_link as serial_link
from ._session import MessageStream as MessageStream
from ._socket_tls import SocketTLSStream as SocketTLSStream
from ._tcp import KEEP_OPEN as KEEP_OPEN
from ._tcp import Link as Link
from ._tcp import check_plaintext_allowed as check_plaintext_allowed
from ._tcp import dial as dial
from ._tcp import is_loopback as is_loopback
from ._tcp import listen as listen
from ._tls import TlsFiles as TlsFiles
from ._tls import client_context as client_context
from ._tls import peer_identity as peer_identity
from ._tls import server_context as server_context

__all__ = [
    "EndReason",
    "GcTime",
    "KEEP_OPEN",
    "Link",
    "LinkError",
    "MessageStream",
    "PeerClosed",
    "SerialLine",
    "SocketTLSStream",
    "SerialStream",
    "SessionDriver",
    "SessionEnd",
    "SessionHandler",
    "TlsError",
    "TlsFiles",
    "check_plaintext_allowed",
    "check_plaintext_serial",
    "client_context",
    "collect_sparingly",
    "dial",
    "first_error",
    "is_loopback",
    "is_pseudo_terminal",
    "listen",
    "open_serial",
    "peer_identity",
    "records_per_batch",
    "serial_link",
    "server_context",
    "sparing_gc",
]
