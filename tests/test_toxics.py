"""Each toxic type as a class: its attributes checked when built, its JSON through the fault API, what it
does to a chunk or a datagram (in virtual time, no sockets), and the docs' table of them."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fieldsync.harness import TOXIC_CLASSES, TOXIC_TYPES, DatagramProxy, FaultError, FaultHub, Proxy, Toxic
from fieldsync.harness._fault_api import dispatch
from fieldsync.harness._toxics import (
    Bandwidth,
    Chunk,
    Corrupt,
    Datagram,
    HalfOpen,
    Latency,
    LimitData,
    Link,
    Loss,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
    Timeout,
    _registered,
)

HOST = "127.0.0.1"
ROOT = Path(__file__).parent.parent

# The wire contract: the types scenario files and Toxiproxy-shaped clients use, with their attributes and
# defaults, exactly as the fault API has always taken them.
WIRE: dict[str, dict[str, float]] = {
    "latency": {"latency": 0.0, "jitter": 0.0},
    "bandwidth": {"rate": 0.0},
    "timeout": {"timeout": 0.0},
    "reset_peer": {"timeout": 0.0},
    "slow_close": {"delay": 0.0},
    "slicer": {"average_size": 16.0, "size_variation": 8.0, "delay": 0.0},
    "limit_data": {"bytes": 0.0},
    "corrupt": {"rate": 0.0},
    "stall": {"probability": 0.0, "duration": 0.0},
    "half_open": {},
    "loss": {"probability": 0.0},
}
ATTRIBUTES = [(kind, key) for kind, attributes in WIRE.items() for key in attributes]


def _sample(kind: str) -> dict[str, float]:
    """A value other than the default for each attribute, inside its range."""
    specs = TOXIC_CLASSES[kind].attribute_specs()
    return {key: 0.25 if spec.maximum == 1 else spec.minimum + 7.5 for key, spec in specs.items()}


def test_the_types_their_attributes_and_defaults_are_the_wire_contract() -> None:
    assert list(TOXIC_TYPES.items()) == list(WIRE.items())
    for kind, cls in TOXIC_CLASSES.items():
        assert cls.type == kind
        built = Toxic.from_json({"type": kind})
        assert type(built) is cls and built.attributes == WIRE[kind]
        assert (built.name, built.stream, built.toxicity) == (f"{kind}_downstream", "downstream", 1.0)


def test_each_proxy_applies_the_types_whose_classes_say_so() -> None:
    assert Proxy.toxic_types == set(WIRE) - {"loss"}
    assert DatagramProxy.toxic_types == {"latency", "corrupt", "loss", "timeout"}
    for kind, cls in TOXIC_CLASSES.items():
        assert (cls.on_datagram is not Toxic.on_datagram) == ("udp" in cls.protocols), kind


@pytest.mark.parametrize("kind", list(WIRE))
async def test_every_type_round_trips_through_the_api_json(kind: str) -> None:
    hub = FaultHub(seed=1)
    protocol = "udp" if kind == "loss" else "tcp"
    proxy = {"name": "p", "listen": "127.0.0.1:1", "upstream": "127.0.0.1:2", "enabled": False, "protocol": protocol}
    assert (await dispatch(hub, "POST", "/proxies", json.dumps(proxy).encode()))[0] == 201
    # Toxiproxy's clients send whole numbers as ints: they come back as the floats the toxic holds.
    given = {k: int(v) if v > 1 else v for k, v in _sample(kind).items()}
    body = {"name": "t", "type": kind, "stream": "upstream", "toxicity": 0.5, "attributes": given}
    status, added = await dispatch(hub, "POST", "/proxies/p/toxics", json.dumps(body).encode())
    assert status == 200
    assert list(added) == ["name", "type", "stream", "toxicity", "attributes"]
    assert added == {**body, "attributes": {k: float(v) for k, v in given.items()}}
    assert all(isinstance(v, float) for v in added["attributes"].values())
    assert json.loads(json.dumps(added)) == added
    installed = hub.proxy("p").toxics["t"]
    assert type(installed) is TOXIC_CLASSES[kind] and Toxic.from_json(added) == installed
    assert await dispatch(hub, "GET", "/proxies/p/toxics", b"") == (200, [added])
    assert (await dispatch(hub, "GET", "/proxies/p", b""))[1]["toxics"] == [added]
    hub.define_group("g", ["p"])
    again = {**added, "name": "t2"}
    assert await dispatch(hub, "POST", "/groups/g/toxics", json.dumps(again).encode()) == (
        200,
        {**again, "proxies": ["p"]},
    )
    assert (await dispatch(hub, "DELETE", "/groups/g/toxics/t2", b""))[0] == 204
    assert (await dispatch(hub, "DELETE", "/proxies/p/toxics/t", b""))[0] == 204
    assert hub.proxy("p").toxics == {}


@pytest.mark.parametrize(("kind", "key"), ATTRIBUTES)
def test_each_attribute_refuses_what_it_cannot_be_naming_toxic_attribute_and_range(kind: str, key: str) -> None:
    spec = TOXIC_CLASSES[kind].attribute_specs()[key]
    bad: list[Any] = [-1, -0.001, "7", True, None, [1], float("nan"), float("inf")]
    if spec.maximum == 1:
        bad += [1.5, 2]
    if spec.minimum > 0:
        bad.append(spec.minimum / 2)
    wanted = "is a probability (0..1" if spec.maximum == 1 else f"must be a number >= {spec.minimum:g}"
    for value in bad:
        with pytest.raises(FaultError) as refused:
            Toxic.from_json({"name": "x", "type": kind, "attributes": {key: value}})
        reason = str(refused.value)
        assert reason.startswith(f"toxic 'x' ({kind}): attribute {key!r} {wanted}"), reason
        assert spec.unit in reason and reason.endswith(f"not {value!r}") and refused.value.status == 400
        # The same check when the class is built in Python, without JSON.
        with pytest.raises(FaultError, match=re.escape(f"attribute {key!r} {wanted}")):
            TOXIC_CLASSES[kind](name="x", **{key: value})
    for value in {spec.minimum, 1.0 if spec.maximum == 1 else 1e9, spec.default}:
        assert Toxic.from_json({"type": kind, "attributes": {key: value}}).attributes[key] == value


@pytest.mark.parametrize("kind", list(WIRE))
def test_an_attribute_the_type_does_not_have_is_refused_naming_the_ones_it_has(kind: str) -> None:
    has = ", ".join(WIRE[kind]) or "none"
    with pytest.raises(FaultError, match=re.escape(f"toxic type {kind!r} has no attribute 'colour'; it has: {has}")):
        Toxic.from_json({"type": kind, "attributes": {"colour": 1}})


async def test_the_api_answers_each_nonsense_toxic_with_a_400_and_its_reason() -> None:
    hub = FaultHub(seed=1)
    await hub.create("p", (HOST, 1), (HOST, 2), enabled=False)
    bad = [
        ({"type": "slicer", "attributes": {"average_size": 0}}, "attribute 'average_size' must be a number >= 1"),
        ({"type": "stall", "attributes": {"probability": float("nan")}}, "attribute 'probability' is a probability"),
        ({"type": "latency", "name": "n" * 101}, "at most 100 characters, not 101 characters"),
        ({"type": "latency", "name": 7}, "non-empty string of at most 100 characters, not 7"),
        ({"type": "latency", "toxicity": True}, "toxicity must be a number from 0 to 1, not True"),
        ({"type": "latency", "attributes": [1]}, "attributes must be a JSON object"),
        ({"type": ["latency"]}, "unknown toxic type ['latency']; known: latency, bandwidth,"),
        ({"attributes": {}}, "unknown toxic type None"),
    ]
    for body, reason in bad:
        status, error = await dispatch(hub, "POST", "/proxies/p/toxics", json.dumps(body).encode())
        assert (status, error["status"]) == (400, 400) and reason in error["error"], (body, error)
    assert hub.proxy("p").toxics == {}


def test_only_the_registered_types_can_be_built() -> None:
    with pytest.raises(TypeError, match="not a registered toxic type"):
        Toxic(name="x")
    with pytest.raises(FaultError, match=r"Latency\.from_json builds a 'latency' toxic, not 'bandwidth'"):
        Latency.from_json({"type": "bandwidth"})
    assert Latency.from_json({"attributes": {"latency": 5}}) == Latency(name="latency_downstream", latency=5)
    with pytest.raises(TypeError, match="a toxic type needs a name of its own, not 'latency'"):

        @_registered
        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class Lag(Toxic):
            type = "latency"

    assert TOXIC_CLASSES["latency"] is Latency


class _Ends:
    def __init__(self) -> None:
        self.closes = 0
        self.resets = 0

    def close(self) -> None:
        self.closes += 1

    def reset(self) -> None:
        self.resets += 1


def _link(seed: int = 1) -> Link:
    return Link(random.Random(seed), 0.0, _Ends())


async def _through(toxics: list[Toxic], data: bytes, link: Link, arrived: float | None = None) -> Chunk:
    """What a connection's writer does with one chunk: each toxic in order, until one drops it."""
    chunk = Chunk(data=data, arrived=trio.current_time() if arrived is None else arrived, pieces=[data])
    for toxic in toxics:
        await toxic.on_data(chunk, link)
        if chunk.dropped:
            break
    return chunk


async def test_latency_counts_from_arrival_and_jitter_stays_in_its_band(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await _through([Latency(name="l", latency=80)], b"x", _link())
    assert trio.current_time() - start == pytest.approx(0.080, abs=1e-9)
    start = trio.current_time()
    await _through([Latency(name="l", latency=80)], b"x", _link(), arrived=start - 0.050)  # queued behind others
    assert trio.current_time() - start == pytest.approx(0.030, abs=1e-9)
    waits = []
    for seed in (1, 1, 2):
        start = trio.current_time()
        await _through([Latency(name="l", latency=80, jitter=20)], b"x", _link(seed))
        waits.append(trio.current_time() - start)
    assert all(0.060 - 1e-9 <= w <= 0.100 + 1e-9 for w in waits)
    assert waits[0] == pytest.approx(waits[1], abs=1e-9) and waits[0] != pytest.approx(waits[2], abs=1e-9)
    datagram = Datagram(data=b"beat")
    Latency(name="l", latency=40).on_datagram(datagram, random.Random(1))
    Latency(name="l2", latency=10).on_datagram(datagram, random.Random(1))
    assert datagram.delay == pytest.approx(0.050) and datagram.data == b"beat"


async def test_stall_waits_its_duration_at_its_probability(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    await _through([Stall(name="s", probability=1, duration=700)], b"x", _link())
    assert trio.current_time() - start == pytest.approx(0.7, abs=1e-9)
    start = trio.current_time()
    await _through([Stall(name="s", probability=0, duration=700)], b"x", _link())
    assert trio.current_time() == start


async def test_slicer_tears_within_its_sizes_and_the_first_one_sets_the_gap() -> None:
    data = bytes(range(256)) * 4
    chunk = await _through([Slicer(name="s", average_size=10, size_variation=4, delay=250)], data, _link())
    assert b"".join(chunk.pieces) == data
    assert all(6 <= len(p) <= 14 for p in chunk.pieces[:-1]) and 1 <= len(chunk.pieces[-1]) <= 14
    assert chunk.gap == pytest.approx(250e-6)
    again = await _through([Slicer(name="s", average_size=10, size_variation=4, delay=250)], data, _link())
    assert again.pieces == chunk.pieces  # the same seed tears the same way
    chunk = await _through(
        [Slicer(name="a", average_size=1, size_variation=0), Slicer(name="b", delay=900)], data, _link()
    )
    assert [len(p) for p in chunk.pieces] == [1] * len(data) and chunk.gap == 0.0


async def test_limit_data_counts_per_link_and_closes_after_the_last_byte() -> None:
    cap = LimitData(name="cap", bytes=10.9)  # a fraction of a byte does not go through
    link = _link()
    first = await _through([cap], b"012345", link)
    assert (first.pieces, first.close_after) == ([b"012345"], False)
    second = await _through([cap], b"6789ab", link)
    assert (second.pieces, second.close_after) == ([b"6789"], True)
    later = await _through([cap], b"c", link)
    assert (later.pieces, later.close_after) == ([], True)
    fresh = await _through([cap], b"012345678901", _link())  # another connection: its own count
    assert fresh.pieces == [b"0123456789"] and fresh.close_after
    nothing = await _through([LimitData(name="zero")], b"x", _link())
    assert (nothing.pieces, nothing.close_after) == ([], True)


async def test_corrupt_flips_one_bit_in_each_byte_it_counts() -> None:
    chunk = await _through([Corrupt(name="c", rate=0.05)], bytes(10_000), _link())
    (out,) = chunk.pieces
    hit = [b for b in out if b]
    assert 300 < len(hit) == chunk.corrupted < 700
    assert all(b & (b - 1) == 0 for b in hit)  # a power of two: exactly one bit
    clean = await _through([Corrupt(name="c", rate=0)], b"abc", _link())
    assert (clean.pieces, clean.corrupted) == ([b"abc"], 0)
    datagram = Datagram(data=bytes(1000))
    Corrupt(name="c", rate=0.5).on_datagram(datagram, random.Random(1))
    assert sum(1 for b in datagram.data if b) == datagram.corrupted > 100


async def test_bandwidth_sets_the_line_once_and_cuts_it_into_50_ms() -> None:
    chunk = await _through(
        [Bandwidth(name="off"), Bandwidth(name="slow", rate=10), Bandwidth(name="fast", rate=1000)],
        bytes(2200),
        _link(),
    )
    assert chunk.rate == 10_000  # bytes per second: the first toxic with a rate holds the line
    assert [len(p) for p in chunk.writes()] == [500, 500, 500, 500, 200]
    assert (await _through([Bandwidth(name="off")], bytes(2200), _link())).writes() == [bytes(2200)]


async def test_dropping_toxics_stop_the_chain_and_the_ending_ones_end_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for dropper in (Timeout(name="t"), HalfOpen(name="h")):
        chunk = await _through([dropper, Corrupt(name="c", rate=1)], b"data", _link())
        assert (chunk.dropped, chunk.pieces, chunk.corrupted) == (True, [], 0)
    assert Timeout(name="t").deadline(5.0) is None  # 0: held open for as long as it is there
    assert Timeout(name="t", timeout=2000).deadline(5.0) == pytest.approx(7.0)
    assert ResetPeer(name="r", timeout=500).deadline(5.0) == pytest.approx(5.5)
    assert Latency(name="l").deadline(5.0) is None
    for toxic, ended in ((Timeout(name="t", timeout=1), (1, 0)), (ResetPeer(name="r"), (0, 1))):
        ends = _Ends()
        toxic.end(Link(random.Random(1), 0.0, ends))
        assert (ends.closes, ends.resets) == ended
    start = trio.current_time()
    await SlowClose(name="s", delay=333).delay_close()
    assert trio.current_time() - start == pytest.approx(0.333, abs=1e-9)
    with trio.move_on_after(60) as held:
        await HalfOpen(name="h").hold_close()
    assert held.cancelled_caught
    start = trio.current_time()
    await Latency(name="l").hold_close()
    await Latency(name="l").delay_close()
    assert trio.current_time() == start


def test_loss_and_timeout_drop_datagrams() -> None:
    rng = random.Random(1)
    lost = 0
    for _ in range(1000):
        datagram = Datagram(data=b"beat")
        Loss(name="l", probability=0.3).on_datagram(datagram, rng)
        lost += datagram.dropped
    assert 240 < lost < 360
    for toxic, dropped in ((Loss(name="l", probability=1), True), (Loss(name="l"), False), (Timeout(name="t"), True)):
        datagram = Datagram(data=b"beat")
        toxic.on_datagram(datagram, rng)
        assert datagram.dropped is dropped


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def test_a_toxic_removed_while_a_chunk_is_on_its_way_still_acts_on_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once crashed the whole hub: the removed toxic's state was looked up by name after the latency's wait."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_tcp, _echo, 32160, host=HOST))
        hub = await nursery.start(FaultHub(seed=1).run)
        await hub.create("p", (HOST, 32161), (HOST, 32160))
        hub.add_toxic("p", Toxic.from_json({"name": "lag", "type": "latency", "attributes": {"latency": 100}}))
        hub.add_toxic("p", Toxic.from_json({"name": "cap", "type": "limit_data", "attributes": {"bytes": 3}}))
        stream = await trio.open_tcp_stream(HOST, 32161)
        await stream.send_all(b"abcdef")
        await trio.sleep(0.05)
        hub.remove_toxic("p", "cap")
        got = bytearray()
        while chunk := await stream.receive_some(100):
            got += chunk
        assert got == b"abc"  # the chunk it had begun on, then the close
        await stream.aclose()
        start = trio.current_time()
        async with await trio.open_tcp_stream(HOST, 32161) as again:  # the proxy goes on
            await again.send_all(b"xyz")
            assert await again.receive_some(100) == b"xyz"
        assert trio.current_time() - start == pytest.approx(0.1, abs=1e-6)
        nursery.cancel_scope.cancel()


def test_the_docs_table_gives_every_type_with_its_attributes_units_and_defaults() -> None:
    doc = (ROOT / "docs" / "scenarios.md").read_text()
    table = doc[doc.index("### Toxics") : doc.index("On a UDP proxy, `toxicity`")]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \| .+ \|$", table, re.M))
    rows.pop("type")  # the header
    assert list(rows) == list(TOXIC_CLASSES)
    for kind, cls in TOXIC_CLASSES.items():
        cells = re.findall(r"`(\w+)` \(([^)]*)\)", rows[kind])
        specs = cls.attribute_specs()
        assert [name for name, _ in cells] == list(specs), kind
        for name, text in cells:
            spec = specs[name]
            assert spec.unit in text and f"default {spec.default:g}" in text, (kind, name, text)
            assert ("0 to 1" in text) == (spec.maximum == 1) and (f"at least {spec.minimum:g}" in text) == (
                spec.minimum > 0
            ), (kind, name, text)
