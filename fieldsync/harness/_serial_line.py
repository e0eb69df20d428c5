"""A virtual serial line: two pseudo-terminals joined like a null-modem cable.

Each end is a real tty device (``/dev/pts/N``, optionally behind a stable
symlink) that pyserial opens by path, as it would ``/dev/ttyS0``. A relay
thread copies bytes between the two pty masters, and is where line faults
happen: garbage bytes (noise), dropped bytes, a silent line, a hang-up (the
device disappears) and its return. Every fault is counted, so a test can say
how much noise the protocol survived.

The line has flow control, as RS-232 with RTS/CTS: when one end stops reading,
the other end's writes wait; bytes written while nobody has an end open wait
in that end's kernel queue (about 4 KB) and are discarded by the next opener.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import random
import select
import threading
import tty
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = [
    "Direction",
    "LineCounters",
    "VirtualLine",
]

_CHUNK = 64 * 1024


class Direction(enum.Enum):
    A_TO_B = "a->b"
    B_TO_A = "b->a"


@dataclasses.dataclass(slots=True)
class LineCounters:
    """What happened to the bytes going one way."""

    forwarded: int = 0
    #: Bytes of noise the line invented.
    garbage: int = 0
    #: Bytes the line lost.
    dropped: int = 0
    #: Bytes discarded while the line was cut.
    silenced: int = 0


@dataclasses.dataclass(slots=True)
class _Faults:
    garbage_rate: float = 0.0
    drop_rate: float = 0.0
    silent: bool = False
    # Bytes to pass before the next fault (drawn from the rates).
    gap: int = -1


class VirtualLine:
    """Two joined pseudo-terminals; use as a context manager or ``open``/``close``.

    Args:
        link_dir: if given, ``link_dir/a`` and ``link_dir/b`` are symlinks to the two
            ends and stay valid across ``hang_up``/``restore_device``, like a named
            device that is unplugged and plugged in again.
        seed: seeds the noise, so a noisy run can be repeated.
    """

    def __init__(self, *, link_dir: Path | None = None, seed: int = 0) -> None:
        self.link_dir = link_dir
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults = {d: _Faults() for d in Direction}
        self.counters = {d: LineCounters() for d in Direction}
        self._masters: tuple[int, int] | None = None
        self._slaves: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._running = False
        self.a_device = self.b_device = ""

    def __repr__(self) -> str:
        return f"<VirtualLine {self.a} <-> {self.b}{'' if self._running else ' down'}>"

    @property
    def a(self) -> Path:
        """The path to open for end A (the symlink when ``link_dir`` is set)."""
        return self.link_dir / "a" if self.link_dir is not None else Path(self.a_device)

    @property
    def b(self) -> Path:
        return self.link_dir / "b" if self.link_dir is not None else Path(self.b_device)

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> VirtualLine:
        """Create the two ends and start relaying."""
        if self._running:
            return self
        masters, slaves = [], []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing: a clean 8-bit line
            os.set_blocking(master, False)
            masters.append(master)
            slaves.append(slave)
        self._masters = (masters[0], masters[1])
        # The relay keeps each end's slave open so the device and its settings live
        # on while users close and reopen it; it never reads them.
        self._slaves = (slaves[0], slaves[1])
        self.a_device, self.b_device = os.ttyname(slaves[0]), os.ttyname(slaves[1])
        if self.link_dir is not None:
            self.link_dir.mkdir(parents=True, exist_ok=True)
            for name, device in (("a", self.a_device), ("b", self.b_device)):
                link = self.link_dir / name
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                link.symlink_to(device)
        self._wake_r, self._wake_w = os.pipe()
        self._running = True
        self._thread = threading.Thread(target=self._relay, name=f"virtual-line {self.a_device}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop relaying and remove both ends (users' next read fails: hung up)."""
        if not self._running:
            return
        self._running = False
        os.write(self._wake_w, b"x")
        assert self._thread is not None
        self._thread.join()
        for fd in (*(self._masters or ()), *(self._slaves or ()), self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._masters = self._slaves = None
        if self.link_dir is not None:
            for name in ("a", "b"):
                with contextlib.suppress(FileNotFoundError):
                    (self.link_dir / name).unlink()

    def hang_up(self) -> None:
        """The device disappears: both ends hang up and their paths are gone."""
        self.close()

    def restore_device(self) -> None:
        """The device comes back (new pseudo-terminals, same symlinks when ``link_dir`` is set)."""
        self.open()

    def __enter__(self) -> VirtualLine:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------

    def _directions(self, direction: Direction | None) -> Iterator[Direction]:
        return iter(Direction) if direction is None else iter((direction,))

    def set_noise(
        self, *, garbage_rate: float = 0.0, drop_rate: float = 0.0, direction: Direction | None = None
    ) -> None:
        """Per byte: the chance a burst of 1-8 noise bytes comes before it, the chance it is lost."""
        for rate in (garbage_rate, drop_rate):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"a noise rate is a probability per byte in [0, 1), not {rate}")
        with self._lock:
            for d in self._directions(direction):
                f = self._faults[d]
                f.garbage_rate, f.drop_rate, f.gap = garbage_rate, drop_rate, -1

    def cut(self, direction: Direction | None = None) -> None:
        """The line goes silent: bytes sent are lost until ``mend``."""
        with self._lock:
            for d in self._directions(direction):
                self._faults[d].silent = True

    def mend(self, direction: Direction | None = None) -> None:
        with self._lock:
            for d in self._directions(direction):
                self._faults[d].silent = False

    def totals(self) -> LineCounters:
        with self._lock:
            out = LineCounters()
            for c in self.counters.values():
                out.forwarded += c.forwarded
                out.garbage += c.garbage
                out.dropped += c.dropped
                out.silenced += c.silenced
            return out

    # -- the relay thread --------------------------------------------------------

    def _relay(self) -> None:
        assert self._masters is not None
        masters = self._masters
        ways = (Direction.A_TO_B, Direction.B_TO_A)
        pending = [bytearray(), bytearray()]
        while self._running:
            readers = [self._wake_r] + [masters[i] for i in (0, 1) if len(pending[i]) < _CHUNK]
            writers = [masters[1 - i] for i in (0, 1) if pending[i]]
            try:
                readable, writable, _ = select.select(readers, writers, [])
            except (OSError, ValueError):
                return
            if self._wake_r in readable:
                return
            for i in (0, 1):
                if masters[i] in readable:
                    try:
                        data = os.read(masters[i], _CHUNK)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if data:
                        pending[i] += self._apply(ways[i], data)
                if pending[i] and masters[1 - i] in writable:
                    try:
                        written = os.write(masters[1 - i], pending[i])
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        written = len(pending[i])  # the far end is gone: the bytes are lost
                    del pending[i][:written]

    def _apply(self, direction: Direction, data: bytes) -> bytes:
        with self._lock:
            f, c = self._faults[direction], self.counters[direction]
            if f.silent:
                c.silenced += len(data)
                return b""
            rate = f.garbage_rate + f.drop_rate
            if rate == 0.0:
                c.forwarded += len(data)
                return data
            rng = self._rng
            out = bytearray()
            n, i, dropped = len(data), 0, 0
            while i < n:
                if f.gap < 0:
                    f.gap = int(rng.expovariate(rate))
                take = min(f.gap, n - i)
                out += data[i : i + take]
                f.gap -= take
                i += take
                if i >= n:
                    break  # the gap runs on into the next chunk
                f.gap = -1  # a fault at byte i
                if rng.random() * rate < f.drop_rate:
                    dropped += 1
                    i += 1
                else:
                    burst = rng.randbytes(rng.randint(1, 8))
                    c.garbage += len(burst)
                    out += burst
            c.dropped += dropped
            c.forwarded += n - dropped
            return bytes(out)
