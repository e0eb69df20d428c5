"""The fault proxy's toxics: one class per type, each with its attributes and what it does.

A toxic is a frozen dataclass. Its attributes are fields whose default, unit and
bounds are declared once (``_attribute``) and checked when it is built, from the
fault API's JSON (``Toxic.from_json``) or in Python (``Latency(name=..., latency=80)``).
The proxies know no type by name: a TCP connection hands each chunk it read to
its active toxics in their order (``on_data``), asks them when they end the
connection (``deadline``, ``end``) and what becomes of a close (``hold_close``,
``delay_close``); the UDP relay hands them each datagram (``on_datagram``).
Every random draw comes from the proxy's seeded generator, passed in, so a run
with the same seed and schedule repeats.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import trio

__all__ = [
    "AttributeSpec",
    "Bandwidth",
    "Chunk",
    "Corrupt",
    "Datagram",
    "FaultError",
    "HalfOpen",
    "Latency",
    "LimitData",
    "Link",
    "Loss",
    "ResetPeer",
    "STREAMS",
    "Slicer",
    "SlowClose",
    "Stall",
    "Stream",
    "TOXIC_CLASSES",
    "TOXIC_TYPES",
    "Timeout",
    "Toxic",
]

Stream = Literal["upstream", "downstream"]
STREAMS: tuple[Stream, ...] = ("upstream", "downstream")

_FIELDS = frozenset({"name", "type", "stream", "toxicity", "attributes"})
_SPEC = "fieldsync.toxic_attribute"


class FaultError(ValueError):
    """A fault request that makes no sense (an HTTP 4xx with this reason)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class AttributeSpec:
    """One attribute of a toxic type: its default, and what it may be (a finite number in [minimum, maximum])."""

    default: float
    unit: str
    minimum: float = 0.0
    maximum: float = math.inf

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None."""
        if self.maximum == 1 and self.minimum == 0:
            wanted = f"is a probability (0..1, {self.unit})"
        else:
            wanted = f"must be a number >= {self.minimum:g} ({self.unit})"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            return f"{wanted}, not {value!r}"
        return None


def _attribute(default: float, unit: str, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    """Declare a toxic attribute: a dataclass field with its default and what it may be."""
    return dataclasses.field(default=default, metadata={_SPEC: AttributeSpec(default, unit, minimum, maximum)})


class _Ends(Protocol):
    def close(self) -> None: ...

    def reset(self) -> None: ...


class Link:
    """One toxic on one TCP connection: the proxy's generator, a count it keeps there, the connection's ends.

    Made by the connection the first time the toxic acts on it, so per-connection state
    (limit_data's byte count) restarts for every connection and every time the toxic is added.
    """

    __slots__ = ("_ends", "added", "count", "rng")

    def __init__(self, rng: random.Random, added: float, ends: _Ends) -> None:
        self.rng = rng
        #: When the toxic was added to the proxy (trio time): timeouts count from there.
        self.added = added
        self.count = 0
        self._ends = ends

    def __repr__(self) -> str:
        return f"<Link added={self.added} count={self.count}>"

    def close(self) -> None:
        """Close both sides of the connection."""
        self._ends.close()

    def reset(self) -> None:
        """Close both sides with a TCP RST."""
        self._ends.reset()


@dataclasses.dataclass(slots=True)
class Chunk:
    """One read of one direction of a TCP connection, on its way through the active toxics.

    Each toxic may delay it (by sleeping), rewrite ``pieces``, drop it (the toxics after
    that one do not see it) or say how the line carries it: the first ``gap`` and the
    first ``rate`` a toxic sets hold for the whole chunk.
    """

    data: bytes  # as read
    arrived: float  # trio time
    pieces: list[bytes]  # what will be written, in order
    dropped: bool = False
    corrupted: int = 0  # bytes with a flipped bit
    gap: float | None = None  # seconds between two pieces
    rate: float = 0.0  # bytes per second the line carries; 0: as fast as it can
    close_after: bool = False  # close the connection once the pieces are written

    def drop(self) -> None:
        self.pieces = []
        self.dropped = True

    def writes(self) -> list[bytes]:
        """The pieces as written: at a limited rate, 50 ms of the line at a time."""
        if not self.rate:
            return self.pieces
        step = max(1, int(self.rate * 0.05))
        return [p[j : j + step] for p in self.pieces for j in range(0, len(p), step)]


@dataclasses.dataclass(slots=True)
class Datagram:
    """One datagram on its way through a UDP relay's toxics."""

    data: bytes
    delay: float = 0.0  # seconds before it is sent on
    dropped: bool = False
    corrupted: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Toxic:
    """A fault on one direction of a proxy, Toxiproxy's model: the base of one class per type.

    The hooks do nothing by default; each type overrides the ones it needs. A type
    that a UDP relay can apply says so in ``protocols`` and overrides ``on_datagram``.
    """

    #: The name the fault API knows the type by (``"type"`` in its JSON).
    type: ClassVar[str] = ""
    #: The proxies that can apply it.
    protocols: ClassVar[frozenset[str]] = frozenset({"tcp"})

    name: str
    stream: Stream = "downstream"
    #: Probability that the toxic acts on a given connection (on a UDP relay: datagram).
    toxicity: float = 1.0

    def __post_init__(self) -> None:
        """Check every field; attributes given as ints become floats.

        Raises:
            FaultError: a field out of range, naming the toxic, the attribute and what is wrong.
        """
        if _REGISTRY.get(self.type) is not type(self):
            raise TypeError(f"{type(self).__name__} is not a registered toxic type; use Toxic.from_json")
        if self.stream not in STREAMS:
            raise FaultError(f"stream must be 'upstream' or 'downstream', not {self.stream!r}")
        toxicity: Any = self.toxicity
        if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0.0 <= toxicity <= 1.0:
            raise FaultError(f"toxicity must be a number from 0 to 1, not {toxicity!r}")
        object.__setattr__(self, "toxicity", float(toxicity))
        name: Any = self.name
        if not isinstance(name, str) or not name or len(name) > 100:
            shown = f"{len(name)} characters" if isinstance(name, str) and name else repr(name)
            raise FaultError(f"a toxic's name is a non-empty string of at most 100 characters, not {shown}")
        for key, spec in self.attribute_specs().items():
            value = getattr(self, key)
            problem = spec.problem(value)
            if problem is not None:
                raise FaultError(f"toxic {self.name!r} ({self.type}): attribute {key!r} {problem}")
            object.__setattr__(self, key, float(value))

    @classmethod
    def attribute_specs(cls) -> dict[str, AttributeSpec]:
        """The type's attributes, in their order, with what each may be."""
        return {f.name: f.metadata[_SPEC] for f in dataclasses.fields(cls) if _SPEC in f.metadata}

    @classmethod
    def defaults(cls) -> dict[str, float]:
        """The type's attributes, in their order, with their defaults."""
        return {key: spec.default for key, spec in cls.attribute_specs().items()}

    @property
    def attributes(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in self.attribute_specs()}

    @classmethod
    def from_json(cls, data: Any, *, default_name: str | None = None) -> Toxic:
        """Validate a Toxiproxy-style toxic description and build the toxic of its type.

        Raises:
            FaultError: unknown field, type, stream or attribute, or a value out of range.
        """
        if not isinstance(data, dict):
            raise FaultError("a toxic is a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise FaultError(f"unknown toxic field {sorted(unknown, key=str)[0]!r}")
        kind = data.get("type", cls.type or None)
        toxic_class = _REGISTRY.get(kind) if isinstance(kind, str) else None
        if toxic_class is None:
            raise FaultError(f"unknown toxic type {kind!r}; known: {', '.join(_REGISTRY)}")
        if cls is not Toxic and toxic_class is not cls:
            raise FaultError(f"{cls.__name__}.from_json builds a {cls.type!r} toxic, not {kind!r}")
        given = data.get("attributes", {})
        if not isinstance(given, dict):
            raise FaultError("attributes must be a JSON object")
        known = toxic_class.attribute_specs()
        for key in given:
            if key not in known:
                raise FaultError(f"toxic type {kind!r} has no attribute {key!r}; it has: {', '.join(known) or 'none'}")
        stream = data.get("stream", "downstream")
        name = data.get("name") or default_name or f"{kind}_{stream}"
        return toxic_class(name=name, stream=stream, toxicity=data.get("toxicity", 1.0), **given)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": self.attributes,
        }

    # What a toxic does. The TCP hooks run in the connection's tasks, so they may sleep.

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        """Act on one chunk read from the source, before it is written to the sink."""

    async def hold_close(self) -> None:
        """The source closed its side: called before the close is queued behind the data."""

    async def delay_close(self) -> None:
        """The close reached the writer, after the data before it: called before it is passed on."""

    def deadline(self, added: float) -> float | None:
        """When (trio time) this toxic ends the connection, given when it was added; None: never."""
        return None

    def end(self, link: Link) -> None:
        """End the connection, at ``deadline``."""
        link.close()

    def on_datagram(self, datagram: Datagram, rng: random.Random) -> None:
        """Act on one datagram of a UDP relay, before it is sent on."""


_REGISTRY: dict[str, type[Toxic]] = {}
#: Each toxic type's class, by its ``type`` name, in the order the docs list them.
TOXIC_CLASSES: Mapping[str, type[Toxic]] = MappingProxyType(_REGISTRY)

_T = TypeVar("_T", bound=type[Toxic])


def _registered(cls: _T) -> _T:
    """Register a toxic class under its ``type`` name (the fault API's)."""
    if not cls.type or cls.type in _REGISTRY:
        raise TypeError(f"{cls.__name__}: a toxic type needs a name of its own, not {cls.type!r}")
    _REGISTRY[cls.type] = cls
    return cls


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Latency(Toxic):
    """Each chunk delivered ``latency ± jitter`` after it arrived: pipelined, as on a WAN link."""

    type = "latency"
    protocols = frozenset({"tcp", "udp"})
    latency: float = _attribute(0.0, "ms")
    jitter: float = _attribute(0.0, "ms")

    def delay(self, rng: random.Random) -> float:
        """Seconds one chunk or datagram waits (one draw from ``rng``, even without jitter)."""
        return max(0.0, self.latency + (rng.random() * 2 - 1) * self.jitter) / 1000

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        await trio.sleep_until(chunk.arrived + self.delay(link.rng))

    def on_datagram(self, datagram: Datagram, rng: random.Random) -> None:
        datagram.delay += self.delay(rng)


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Bandwidth(Toxic):
    """The direction carries at most ``rate`` (0: no limit); the first such toxic of a direction sets it."""

    type = "bandwidth"
    rate: float = _attribute(0.0, "KB/s")

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        if self.rate > 0 and not chunk.rate:
            chunk.rate = self.rate * 1000


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timeout(Toxic):
    """Data dropped; the connection closed ``timeout`` after the toxic was added (0: held open).

    On a UDP relay every datagram is dropped while it is there.
    """

    type = "timeout"
    protocols = frozenset({"tcp", "udp"})
    timeout: float = _attribute(0.0, "ms")

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        chunk.drop()

    def deadline(self, added: float) -> float | None:
        return added + self.timeout / 1000 if self.timeout > 0 else None

    def on_datagram(self, datagram: Datagram, rng: random.Random) -> None:
        datagram.dropped = True


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResetPeer(Toxic):
    """A TCP RST on both sides, ``timeout`` after the toxic was added."""

    type = "reset_peer"
    timeout: float = _attribute(0.0, "ms")

    def deadline(self, added: float) -> float | None:
        return added + self.timeout / 1000

    def end(self, link: Link) -> None:
        link.reset()


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlowClose(Toxic):
    """A close from the source reaches the other side ``delay`` later."""

    type = "slow_close"
    delay: float = _attribute(0.0, "ms")

    async def delay_close(self) -> None:
        await trio.sleep(self.delay / 1000)


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Slicer(Toxic):
    """Every write torn into pieces of ``average_size ± size_variation`` bytes, ``delay`` apart."""

    type = "slicer"
    average_size: float = _attribute(16.0, "bytes", minimum=1)
    size_variation: float = _attribute(8.0, "bytes")
    delay: float = _attribute(0.0, "µs")

    def _slices(self, data: bytes, rng: random.Random) -> Iterator[bytes]:
        i = 0
        while i < len(data):
            size = max(1, int(self.average_size + (rng.random() * 2 - 1) * self.size_variation))
            yield data[i : i + size]
            i += size

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        chunk.pieces = [s for p in chunk.pieces for s in self._slices(p, link.rng)]
        if chunk.gap is None:
            chunk.gap = self.delay / 1_000_000


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LimitData(Toxic):
    """The connection closed once ``bytes`` bytes went through this direction."""

    type = "limit_data"
    bytes: float = _attribute(0.0, "bytes")

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        limit = int(self.bytes)
        allowed = b"".join(chunk.pieces)[: max(0, limit - link.count)]
        chunk.pieces = [allowed] if allowed else []
        link.count += len(allowed)
        if link.count >= limit:
            chunk.close_after = True


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Corrupt(Toxic):
    """One bit flipped in about ``rate`` of the bytes (gaps between them drawn exponentially)."""

    type = "corrupt"
    protocols = frozenset({"tcp", "udp"})
    rate: float = _attribute(0.0, "per byte", maximum=1)

    def flip(self, data: bytes, rng: random.Random) -> tuple[bytes, int]:
        """``data`` with its bits flipped, and how many bytes were hit."""
        if self.rate <= 0:
            return data, 0
        out = bytearray(data)
        hit = 0
        i = int(rng.expovariate(self.rate))
        while i < len(out):
            out[i] ^= 1 << rng.randrange(8)
            hit += 1
            i += 1 + int(rng.expovariate(self.rate))
        return bytes(out), hit

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        pieces = []
        for piece in chunk.pieces:
            flipped, hit = self.flip(piece, link.rng)
            pieces.append(flipped)
            chunk.corrupted += hit
        chunk.pieces = pieces

    def on_datagram(self, datagram: Datagram, rng: random.Random) -> None:
        datagram.data, hit = self.flip(datagram.data, rng)
        datagram.corrupted += hit


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stall(Toxic):
    """Now and then (``probability`` per chunk) the direction stops for ``duration``, like a retransmission."""

    type = "stall"
    probability: float = _attribute(0.0, "per chunk", maximum=1)
    duration: float = _attribute(0.0, "ms")

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        if link.rng.random() < self.probability:
            await trio.sleep(self.duration / 1000)


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HalfOpen(Toxic):
    """The direction goes silent: data dropped, and a close from the source is not passed on."""

    type = "half_open"

    async def on_data(self, chunk: Chunk, link: Link) -> None:
        chunk.drop()

    async def hold_close(self) -> None:
        await trio.sleep_forever()


@_registered
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Loss(Toxic):
    """UDP only: each datagram lost with ``probability``."""

    type = "loss"
    protocols = frozenset({"udp"})
    probability: float = _attribute(0.0, "per datagram", maximum=1)

    def on_datagram(self, datagram: Datagram, rng: random.Random) -> None:
        if rng.random() < self.probability:
            datagram.dropped = True


#: Each toxic type's attributes and their defaults (Toxiproxy's names where it has them).
TOXIC_TYPES: dict[str, dict[str, float]] = {kind: cls.defaults() for kind, cls in _REGISTRY.items()}
