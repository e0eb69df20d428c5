"""The fault proxy's toxics and its HTTP API, over real loopback sockets in virtual time."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.testing

from fieldsync.harness import FaultError, FaultHub, Toxic, serve_api

HOST = "127.0.0.1"


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@asynccontextmanager
async def proxied(port: int, *names: str) -> AsyncIterator[FaultHub]:
    """An echo server on ``port`` and a proxy per name on ``port + 1 + i`` in front of it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_tcp, _echo, port, host=HOST))
        hub = await nursery.start(FaultHub(seed=1).run)
        for i, name in enumerate(names or ("p",)):
            await hub.create(name, (HOST, port + 1 + i), (HOST, port))
        yield hub
        nursery.cancel_scope.cancel()


async def roundtrip(port: int, data: bytes) -> tuple[bytes, float]:
    start = trio.current_time()
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(data)
        got = bytearray()
        while len(got) < len(data):
            chunk = await stream.receive_some(65536)
            assert chunk
            got += chunk
    return bytes(got), trio.current_time() - start


def toxic(kind: str, stream: str = "downstream", **attributes: float) -> Toxic:
    return Toxic.from_json({"type": kind, "stream": stream, "attributes": attributes})


async def test_latency_and_jitter_delay_each_direction(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32010) as hub:
        hub.add_toxic("p", toxic("latency", "upstream", latency=50))
        hub.add_toxic("p", Toxic.from_json({"name": "down", "type": "latency", "attributes": {"latency": 100}}))
        got, took = await roundtrip(32011, b"ping")
        assert got == b"ping"
        assert took == pytest.approx(0.150, abs=1e-6)
        hub.remove_toxic("p", "down")
        hub.add_toxic(
            "p", Toxic.from_json({"name": "j", "type": "latency", "attributes": {"latency": 80, "jitter": 20}})
        )
        _, took = await roundtrip(32011, b"ping")
        assert 0.110 - 1e-6 <= took <= 0.150 + 1e-6


async def test_bandwidth_limits_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32020) as hub:
        hub.add_toxic("p", toxic("bandwidth", rate=10))  # 10 KB/s back to the client
        got, took = await roundtrip(32021, bytes(50_000))
        assert len(got) == 50_000
        assert took == pytest.approx(5.0, rel=0.02)


async def test_timeout_blackholes_then_closes(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32030) as hub:
        hub.add_toxic("p", toxic("timeout", "upstream", timeout=0))
        stream = await trio.open_tcp_stream(HOST, 32031)
        await stream.send_all(b"lost")
        with trio.move_on_after(5) as silent:
            await stream.receive_some(10)
        assert silent.cancelled_caught  # held open, nothing through
        assert hub.proxy("p").counters.bytes_dropped == 4
        hub.remove_toxic("p", "timeout_upstream")
        await stream.send_all(b"back")
        assert await stream.receive_some(10) == b"back"
        hub.add_toxic("p", toxic("timeout", timeout=2000))
        start = trio.current_time()
        assert await stream.receive_some(10) == b""  # closed by the proxy
        assert trio.current_time() - start == pytest.approx(2.0, abs=1e-6)
        await stream.aclose()


async def test_reset_peer_and_limit_data_end_connections(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32040) as hub:
        hub.add_toxic("p", toxic("reset_peer", timeout=500))
        stream = await trio.open_tcp_stream(HOST, 32041)
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            while await stream.receive_some(10):
                pass
        assert trio.current_time() - start == pytest.approx(0.5, abs=1e-6)
        assert hub.proxy("p").counters.resets == 1
        await stream.aclose()
        hub.remove_toxic("p", "reset_peer_downstream")
        hub.add_toxic("p", toxic("limit_data", bytes=10))
        stream = await trio.open_tcp_stream(HOST, 32041)
        await stream.send_all(b"0123456789abcdef")
        got = bytearray()
        while chunk := await stream.receive_some(100):
            got += chunk
        assert got == b"0123456789"
        await stream.aclose()


async def test_slicer_tears_writes_and_corrupt_flips_counted_bits(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32050) as hub:
        hub.add_toxic("p", toxic("slicer", average_size=10, size_variation=5, delay=1000))
        stream = await trio.open_tcp_stream(HOST, 32051)
        data = bytes(range(200))
        await stream.send_all(data)
        chunks = []
        while sum(map(len, chunks)) < len(data):
            chunks.append(await stream.receive_some(1000))
        assert b"".join(chunks) == data and len(chunks) >= 10  # torn, in order, intact
        await stream.aclose()
        hub.remove_toxic("p", "slicer_downstream")
        hub.add_toxic("p", toxic("corrupt", rate=0.01))
        got, _ = await roundtrip(32051, bytes(20_000))
        differ = sum(1 for b in got if b)
        assert 100 < differ == hub.proxy("p").counters.bytes_corrupted


async def test_stall_and_half_open(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32060) as hub:
        hub.add_toxic("p", toxic("stall", probability=1, duration=700))
        _, took = await roundtrip(32061, b"x")
        assert took == pytest.approx(0.7, abs=1e-6)
        hub.remove_toxic("p", "stall_downstream")
        hub.add_toxic("p", toxic("half_open", "upstream"))
        stream = await trio.open_tcp_stream(HOST, 32061)
        await stream.send_all(b"into the void")
        await stream.send_eof()  # not passed on: the server never hears the close either
        with trio.move_on_after(10) as silent:
            await stream.receive_some(10)
        assert silent.cancelled_caught
        await stream.aclose()


async def test_down_refuses_and_groups_change_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32070, "east1", "east2", "west") as hub:
        hub.define_group("east", ["east1", "east2"])
        await hub.set_group_enabled("east", False)
        for port in (32071, 32072):
            with pytest.raises(OSError):
                await trio.open_tcp_stream(HOST, port)
        assert (await roundtrip(32073, b"w"))[0] == b"w"  # the other group is untouched
        await hub.set_group_enabled("east", True)
        assert hub.add_toxic("east", toxic("latency", latency=300)) == ["east1", "east2"]
        for port, expected in ((32071, 0.3), (32072, 0.3), (32073, 0.0)):
            _, took = await roundtrip(port, b"x")
            assert took == pytest.approx(expected, abs=1e-6)
        with pytest.raises(FaultError, match="already exists on east1, east2"):
            hub.add_toxic("east", toxic("latency", latency=1))
        assert hub.remove_toxic("east", "latency_downstream") == ["east1", "east2"]
        with pytest.raises(FaultError, match="no group or proxy named 'north'"):
            hub.add_toxic("north", toxic("latency"))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"type": "earthquake"}, "unknown toxic type 'earthquake'"),
        ({"type": "latency", "stream": "sideways"}, "stream must be 'upstream' or 'downstream'"),
        ({"type": "latency", "attributes": {"latency": -5}}, "must be a number >= 0"),
        ({"type": "latency", "attributes": {"rate": 5}}, "toxic type 'latency' has no attribute 'rate'"),
        ({"type": "corrupt", "attributes": {"rate": 2}}, "is a probability"),
        ({"type": "latency", "toxicity": 1.5}, "toxicity must be a number from 0 to 1"),
        ({"type": "latency", "colour": "red"}, "unknown toxic field 'colour'"),
        ("latency", "a toxic is a JSON object"),
    ],
)
def test_nonsense_toxics_are_refused_with_a_reason(body: Any, reason: str) -> None:
    with pytest.raises(FaultError, match=reason):
        Toxic.from_json(body)


async def http(port: int, method: str, target: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """One request with h11, as any HTTP client would send it."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        headers = [("host", "localhost"), ("content-length", str(len(data))), ("connection", "close")]
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=headers)) or b"")
        await stream.send_all((conn.send(h11.Data(data=data)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status, payload = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    return status, json.loads(payload) if payload else None


async def test_the_http_api_speaks_toxiproxy_and_refuses_nonsense(autojump_clock: trio.testing.MockClock) -> None:
    async with proxied(32080, "panel-1") as hub, trio.open_nursery() as nursery:
        await nursery.start(serve_api, hub, HOST, 32089)
        assert (await http(32089, "GET", "/version"))[0] == 200
        status, proxies = await http(32089, "GET", "/proxies")
        assert status == 200 and proxies["panel-1"]["upstream"] == "127.0.0.1:32080"
        status, made = await http(
            32089, "POST", "/proxies", {"name": "panel-2", "listen": "127.0.0.1:32082", "upstream": "127.0.0.1:32080"}
        )
        assert status == 201 and made["enabled"]
        status, made = await http(
            32089,
            "POST",
            "/proxies",
            {"name": "beat", "listen": "127.0.0.1:32085", "upstream": "127.0.0.1:32086", "protocol": "udp"},
        )
        assert status == 201 and made["protocol"] == "udp"
        status, added = await http(
            32089, "POST", "/proxies/panel-2/toxics", {"type": "latency", "attributes": {"latency": 200}}
        )
        assert status == 200 and added["name"] == "latency_downstream"
        _, took = await roundtrip(32082, b"x")
        assert took == pytest.approx(0.2, abs=1e-6)
        assert (await http(32089, "POST", "/groups/panel-2/reset_peer"))[0] == 200
        assert (await http(32089, "DELETE", "/proxies/panel-2/toxics/latency_downstream"))[0] == 204
        assert (await http(32089, "POST", "/proxies/panel-2", {"enabled": False}))[1]["enabled"] is False
        with pytest.raises(OSError):
            await trio.open_tcp_stream(HOST, 32082)
        # Nonsense gets a 4xx with the reason; the API and the proxies go on.
        bad = [
            (("POST", "/proxies/panel-1/toxics", {"type": "earthquake"}), 400, "unknown toxic type"),
            (("POST", "/proxies/nope/toxics", {"type": "latency"}), 404, "no proxy named 'nope'"),
            (
                ("POST", "/proxies", {"name": "panel-1", "listen": "127.0.0.1:32083", "upstream": "127.0.0.1:32080"}),
                409,
                "exists",
            ),
            (
                ("POST", "/proxies", {"name": "x", "listen": "10.0.0.1:1", "upstream": "127.0.0.1:32080"}),
                400,
                "only loopback",
            ),
            (
                ("POST", "/proxies", {"name": "y", "listen": "127.0.0.1:32080", "upstream": "127.0.0.1:1"}),
                409,
                "cannot listen",
            ),
            (("DELETE", "/version", None), 405, "use GET"),
            (("GET", "/nowhere", None), 404, "no such resource"),
            (("POST", "/proxies/panel-1", {"enabled": "maybe"}), 400, '"enabled": true|false'),
            (
                (
                    "POST",
                    "/proxies",
                    {"name": "z", "listen": "127.0.0.1:32084", "upstream": "127.0.0.1:1", "protocol": 6},
                ),
                400,
                "protocol must be 'tcp' or 'udp'",
            ),
            (("POST", "/proxies/panel-1/toxics", {"type": "loss"}), 400, "TCP proxy cannot apply 'loss'"),
        ]
        for (method, target, body), code, reason in bad:
            status, error = await http(32089, method, target, body)
            assert (status, error["status"]) == (code, code) and reason in error["error"], (target, error)
        status, error = await http(32089, "POST", "/proxies", raw=b"{not json")
        assert status == 400 and "not JSON" in error["error"]
        assert (await roundtrip(32081, b"still fine"))[0] == b"still fine"
        assert (await http(32089, "POST", "/reset"))[0] == 204
        assert (await roundtrip(32082, b"re-enabled"))[0] == b"re-enabled"
        nursery.cancel_scope.cancel()


async def test_udp_proxy_delays_loses_and_drops_datagrams(autojump_clock: trio.testing.MockClock) -> None:
    """The heartbeat link's proxy: each datagram delayed, lost at a seeded rate or dropped; replies return."""
    upstream = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await upstream.bind((HOST, 32150))
    await client.bind((HOST, 0))

    async def echo() -> None:
        while True:
            data, sender = await upstream.recvfrom(2048)
            await upstream.sendto(b"re:" + data, sender)

    async def exchange(n: int, wait: float = 1.0) -> tuple[list[bytes], list[float]]:
        got: list[bytes] = []
        times: list[float] = []
        start = trio.current_time()
        for i in range(n):
            await client.sendto(b"%d" % i, (HOST, 32151))
        with trio.move_on_after(wait):
            while True:
                data, _ = await client.recvfrom(2048)
                got.append(data)
                times.append(trio.current_time() - start)
        return got, times

    with upstream, client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            hub = await nursery.start(FaultHub(seed=1).run)
            proxy = await hub.create("beat", (HOST, 32151), (HOST, 32150), protocol="udp")
            assert proxy.to_json()["protocol"] == "udp"
            got, _ = await exchange(3)
            assert sorted(got) == [b"re:0", b"re:1", b"re:2"]  # replies go back to the client
            hub.add_toxic("beat", toxic("latency", "upstream", latency=100))
            hub.add_toxic("beat", toxic("latency", "downstream", latency=50))
            got, times = await exchange(1)
            assert got == [b"re:0"] and times[0] == pytest.approx(0.150, abs=1e-6)
            hub.remove_toxic("beat", "latency_upstream")
            hub.remove_toxic("beat", "latency_downstream")
            hub.add_toxic("beat", toxic("loss", "upstream", probability=0.5))
            got, _ = await exchange(400)
            assert 140 < len(got) < 260  # about half, seeded
            assert proxy.counters.datagrams_dropped == 400 - len(got)
            hub.remove_toxic("beat", "loss_upstream")
            hub.add_toxic("beat", toxic("timeout", "downstream"))
            assert (await exchange(5))[0] == []  # the upstream got them; its replies are dropped
            hub.remove_toxic("beat", "timeout_downstream")
            await hub.set_enabled("beat", False)
            assert (await exchange(5))[0] == []  # down: nothing crosses
            await hub.set_enabled("beat", True)
            assert len((await exchange(2))[0]) == 2
            # A stream toxic makes no sense on datagrams: refused with the reason.
            with pytest.raises(FaultError, match="proxy beat: a UDP proxy cannot apply 'slicer'"):
                hub.add_toxic("beat", toxic("slicer"))
            with pytest.raises(FaultError, match="UDP proxy cannot apply 'bandwidth'"):
                proxy.add_toxic(toxic("bandwidth", rate=1))
            with pytest.raises(FaultError, match="protocol must be 'tcp' or 'udp'"):
                await hub.create("x", (HOST, 32152), (HOST, 32150), protocol="sctp")  # type: ignore[arg-type]
            with pytest.raises(FaultError, match=r"cannot listen on UDP 127\.0\.0\.1:32150"):
                await hub.create("y", (HOST, 32150), (HOST, 32151), protocol="udp")
            nursery.cancel_scope.cancel()


async def test_fieldsync_faults_serves_proxies_and_the_api() -> None:
    """`fieldsync faults` as a developer runs it in front of their own node."""
    import subprocess
    import sys

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_tcp, _echo, 32097, host=HOST))
        command = [sys.executable, "-m", "fieldsync.cli", "faults", "--api-port", "32099"]
        command += ["--proxy", "p=127.0.0.1:32098=127.0.0.1:32097", "--duration", "60"]
        proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = b""
            with trio.fail_after(30):
                while b"\n" not in line:
                    line += await proc.stdout.receive_some(1000)
            assert b"fault API on http://127.0.0.1:32099" in line
            status, proxies = await http(32099, "GET", "/proxies")
            assert status == 200 and proxies["p"]["enabled"]
            assert (await http(32099, "POST", "/proxies/p/toxics", {"type": "latency", "attributes": {"latency": 50}}))[
                0
            ] == 200
            got, took = await roundtrip(32098, b"through the proxy")
            assert got == b"through the proxy" and took >= 0.05
        finally:
            proc.terminate()  # the process this test started
            await proc.wait()
            await proc.stdout.aclose()  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
