"""Serial lines (RS-232/RS-485 style) as trio Streams, on pyserial.

pyserial opens and configures the device (baud rate, parity, stop bits, an
exclusive lock); the bytes then move through the port's non-blocking file
descriptor, woken by trio's ``wait_readable``/``wait_writable``, so a line is
one more ``trio.abc.Stream`` beside TCP and TLS and the protocol (and TLS, if
wanted) runs over it unchanged.

A serial line has no connection: nothing tells one end that the other went
away, there is no end of stream, and bytes can be lost or invented by noise.
Sessions over a line therefore use the resynchronizing frame decoder and the
reply timeout (``Link.lossy``), and a link manager starts a session over when
a peer stops answering.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import ssl
import stat
import termios
from pathlib import Path
from typing import Literal

import serial  # pyserial
import trio

from ._errors import LinkError, TlsError
from ._tcp import Link, secure

__all__ = [
    "SerialLine",
    "SerialStream",
    "check_plaintext_serial",
    "is_pseudo_terminal",
    "open_serial",
    "records_per_batch",
    "serial_link",
]

Parity = Literal["none", "even", "odd", "mark", "space"]
_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}
#: Linux pseudo-terminal slaves (Unix98 ptys): majors 136..143.
_PTY_MAJORS = range(136, 144)
#: Bytes one read takes from the device.
_READ_SIZE = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SerialLine:
    """How to open one end of a serial line.

    OSDP's range (9,600 to 230,400 baud, 8N1) is the reference; the default is
    115,200 8N1.
    """

    path: Path
    baud: int = 115_200
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = "none"
    stopbits: Literal[1, 2] = 1
    #: Pace writes to what the baud rate can carry, so replay time on a slow line is
    #: realistic (a pseudo-terminal itself moves bytes as fast as the CPU does).
    throttle: bool = False
    #: Silence inside a frame longer than this drops the partial frame (OSDP: 20 ms).
    inter_char_timeout: float = 0.02
    #: A line can lose a whole frame; an ACK (or CONFIG_ACK) awaited longer than this
    #: while the peer is alive starts the session over.
    reply_timeout: float = 3.0

    def __post_init__(self) -> None:
        if not 50 <= self.baud <= 4_000_000:
            raise ValueError(f"serial line {self.path}: baud rate {self.baud} is outside 50..4000000")
        if self.parity not in _PARITY:
            raise ValueError(f"serial line {self.path}: parity {self.parity!r} is not one of {', '.join(_PARITY)}")
        if self.inter_char_timeout <= 0 or self.reply_timeout <= 0:
            raise ValueError(f"serial line {self.path}: inter_char_timeout and reply_timeout must be positive")

    @property
    def bits_per_byte(self) -> int:
        """Start bit, data bits, parity bit, stop bits: what one byte costs on the wire."""
        return 1 + self.bytesize + (0 if self.parity == "none" else 1) + self.stopbits

    @property
    def bytes_per_second(self) -> float:
        return self.baud / self.bits_per_byte

    def describe(self) -> str:
        return f"{self.path} {self.baud} {self.bytesize}{self.parity[0].upper()}{self.stopbits}"


def records_per_batch(line: SerialLine, *, record_size: int = 32, seconds: float = 0.25, cap: int = 4096) -> int:
    """Records per EVENT_BATCH so one batch occupies the line for about ``seconds``.

    A 4,096-record batch is 131 KB: 14 s at 9,600 baud, longer than a heartbeat
    timeout. Small batches keep heartbeats and ACKs flowing on a slow line.
    """
    if not line.throttle:
        return cap
    return max(1, min(cap, math.floor(line.bytes_per_second * seconds / record_size)))


def is_pseudo_terminal(path: str | os.PathLike[str]) -> bool:
    """True for a pseudo-terminal: a line that never leaves this machine, like loopback."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS


def check_plaintext_serial(*paths: str | os.PathLike[str]) -> None:
    """Plain text over a line only when asked for and every line is a pseudo-terminal.

    A pty never leaves this machine (the serial counterpart of loopback); a real
    port's wire does, so it needs TLS like a network.
    """
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise TlsError(
            f"--insecure (plain text) needs every serial line to be a pseudo-terminal, "
            f"and {', '.join(missing)} does not exist"
        )
    outside = [str(p) for p in paths if not is_pseudo_terminal(p)]
    if outside:
        raise TlsError(
            f"--insecure (plain text) is refused on {', '.join(outside)}: not a pseudo-terminal, "
            "and a line that leaves this machine needs TLS"
        )


class SerialStream(trio.abc.Stream):
    """One open serial port as a trio Stream.

    ``receive_some`` never returns ``b""``: a line has no end. A device that
    fails or disappears raises ``LinkError`` naming it.
    """

    def __init__(self, port: serial.Serial, line: SerialLine) -> None:
        self._port = port
        self._fd: int = port.fileno()
        self.line = line
        self._closed = False
        self._sending = False
        self._receiving = False
        # When the wire is free again (throttled writes).
        self._line_free_at = -math.inf
        self.bytes_sent = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"<SerialStream {self.line.describe()}{' closed' if self._closed else ''}>"

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"serial port {self.line.path} is closed")

    def _failed(self, doing: str, exc: BaseException) -> LinkError:
        return LinkError(f"serial device {self.line.path}: {doing} failed ({exc}); it may have disappeared")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError(f"another task is writing to serial port {self.line.path}")
        self._check_open()
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.checkpoint()
                return
            # Throttled: write at most ~10 ms of line time at once, then wait for the wire.
            chunk = max(1, int(self.line.bytes_per_second / 100)) if self.line.throttle else len(view)
            while view:
                part = view[:chunk]
                while part:
                    await trio.lowlevel.wait_writable(self._fd)
                    self._check_open()
                    try:
                        written = os.write(self._fd, part)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise self._failed("write", exc) from exc
                    self.bytes_sent += written
                    part = part[written:]
                    if self.line.throttle:
                        now = trio.current_time()
                        self._line_free_at = max(now, self._line_free_at) + written / self.line.bytes_per_second
                view = view[chunk:]
                if self.line.throttle:
                    await trio.sleep_until(self._line_free_at)
        except trio.ClosedResourceError:
            raise
        except OSError as exc:  # wait_writable on a descriptor that went bad
            raise self._failed("write", exc) from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError(f"another task is writing to serial port {self.line.path}")
        self._check_open()
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self._fd)
            if self.line.throttle:
                await trio.sleep_until(self._line_free_at)
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError(f"another task is reading from serial port {self.line.path}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._check_open()
        self._receiving = True
        try:
            while True:
                await trio.lowlevel.wait_readable(self._fd)
                self._check_open()
                try:
                    data = os.read(self._fd, max_bytes or _READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise self._failed("read", exc) from exc
                if not data:
                    # A pseudo-terminal whose other side is gone reads as end of file.
                    raise LinkError(f"serial device {self.line.path}: the line was hung up")
                self.bytes_received += len(data)
                return data
        finally:
            self._receiving = False

    async def wait_for_input(self) -> None:
        """Until the line has bytes to read (a host waits for a panel to speak)."""
        self._check_open()
        await trio.lowlevel.wait_readable(self._fd)
        self._check_open()

    def discard_input(self) -> int:
        """Drop whatever the line delivered and nobody read (at the start of a session)."""
        self._check_open()
        dropped = 0
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            dropped += len(data)
        with contextlib.suppress(serial.SerialException, OSError, termios.error):
            self._port.reset_input_buffer()
        return dropped

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            with contextlib.suppress(serial.SerialException, OSError):
                self._port.close()
        await trio.lowlevel.checkpoint()


def open_serial(line: SerialLine) -> SerialStream:
    """Open and configure a serial device, exclusively.

    Raises:
        LinkError: the device does not exist, is not a serial device, is in use by
            another process, or cannot be configured; the message names the cause.
    """
    path = str(line.path)
    if not os.path.exists(path):
        raise LinkError(f"serial device {path} does not exist")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LinkError(f"serial device {path}: {exc.strerror}") from exc
    if not stat.S_ISCHR(st.st_mode):
        raise LinkError(f"{path} is not a serial device (not a character device)")
    try:
        port = serial.Serial(
            path,
            baudrate=line.baud,
            bytesize=line.bytesize,
            parity=_PARITY[line.parity],
            stopbits=line.stopbits,
            timeout=0,
            write_timeout=0,
            exclusive=True,
        )
    except serial.SerialException as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise LinkError(f"serial device {path} is in use by another process (exclusive lock held)") from exc
        if exc.errno == errno.EACCES:
            raise LinkError(f"serial device {path}: permission denied") from exc
        if exc.errno == errno.ENOENT:
            raise LinkError(f"serial device {path} does not exist") from exc
        raise LinkError(f"cannot open serial device {path}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise LinkError(f"cannot configure serial device {path} as {line.describe()}: {exc}") from exc
    stream = SerialStream(port, line)
    stream.discard_input()
    return stream


async def serial_link(stream: SerialStream, ctx: ssl.SSLContext | None, *, server_side: bool) -> Link:
    """A session's Link over an open line, TLS-handshaken when ``ctx`` is given.

    The Link is lossy: sessions over it resynchronize and time out replies. Bound
    the call with ``trio.fail_after``.

    Raises:
        TlsError: the handshake failed (the port is closed then).
    """
    link = await secure(stream, ctx, server_side=server_side, remote=f"serial:{stream.line.path}")
    link.lossy = True
    return link
