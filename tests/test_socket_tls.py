"""``SocketTLSStream``: TLS on a TCP socket through ``ssl.SSLObject``, held to trio's stream contract.

trio's own battery for stream implementations (``trio.testing.check_two_way_stream``:
ordering, checkpoints, concurrent use refused, close and broken states, cancellation),
run on real loopback TCP with mutual TLS 1.3 from a site CA; then what the sessions rely
on beyond it: the peer's certificate, a wrong CA refused, a half-sent record that breaks
the stream, and a serial line (not a socket) keeping ``trio.SSLStream``.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from protocol.streams import SocketTLSStream, TlsFiles, client_context, peer_identity, server_context
from protocol.streams._tls import wrap


def _files(directory: Path, role: str, name: str | int) -> TlsFiles:
    from fieldsync.site import pki

    return pki.tls_files(directory, role, name)


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listeners[0].accept())

        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    await listeners[0].aclose()
    return accepted[0], client


def _makers(site_pki: Path):  # type: ignore[no-untyped-def]
    server_ctx = server_context(_files(site_pki, "node", "A"))
    client_ctx = client_context(_files(site_pki, "panel", 1))

    async def make() -> tuple[SocketTLSStream, SocketTLSStream]:
        server_tcp, client_tcp = await _tcp_pair()
        server = SocketTLSStream(server_tcp, server_ctx, server_side=True)
        client = SocketTLSStream(client_tcp, client_ctx, server_side=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        return server, client

    return make


async def test_the_stream_keeps_trios_stream_contract(site_pki: Path) -> None:
    await trio.testing.check_two_way_stream(_makers(site_pki), None)


class _NoCheckpointOnSecondClose(SocketTLSStream):
    """Broken on purpose: a second ``aclose`` returns without a checkpoint (trio's rule: every
    async method of a stream is a checkpoint, so a loop of them cannot starve the others)."""

    async def aclose(self) -> None:
        if not self._closed:
            await super().aclose()


async def test_the_contract_battery_catches_a_stream_that_skips_a_checkpoint(site_pki: Path) -> None:
    make = _makers(site_pki)

    async def broken() -> tuple[SocketTLSStream, SocketTLSStream]:
        server, client = await make()
        server.__class__ = client.__class__ = _NoCheckpointOnSecondClose
        return server, client

    with pytest.raises(AssertionError):
        await trio.testing.check_two_way_stream(broken, None)


async def test_wrap_gives_sockets_the_lean_stream_and_the_handshake_the_peers_identity(site_pki: Path) -> None:
    server_tcp, client_tcp = await _tcp_pair()
    server = wrap(server_tcp, server_context(_files(site_pki, "node", "A")), server_side=True)
    client = wrap(client_tcp, client_context(_files(site_pki, "panel", 7)), server_side=False)
    assert isinstance(server, SocketTLSStream) and isinstance(client, SocketTLSStream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    assert (peer_identity(server), peer_identity(client)) == ("panel-7", "node-A")
    payload = bytes(range(256)) * 4096  # 1 MiB: many records, the socket's buffer filled
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        got = bytearray()
        while len(got) < len(payload):
            got += await server.receive_some()
    assert bytes(got) == payload
    await client.aclose()
    assert await server.receive_some() == b""  # the close_notify: the end of the stream
    await server.aclose()
    # Anything else than a socket (a serial line's stream) keeps trio.SSLStream.
    a, _b = trio.testing.memory_stream_pair()
    assert isinstance(wrap(a, client_context(_files(site_pki, "panel", 7)), server_side=False), trio.SSLStream)


async def test_a_certificate_from_another_ca_breaks_the_handshake_with_the_ssl_error(
    site_pki: Path, tmp_path: Path
) -> None:
    from fieldsync.site import pki

    other = tmp_path / "other"
    pki.init_ca(other)
    server_tcp, client_tcp = await _tcp_pair()
    server = SocketTLSStream(server_tcp, server_context(_files(site_pki, "node", "A")), server_side=True)
    panel = _files(site_pki, "panel", 1)
    client_files = TlsFiles(cert=panel.cert, key=panel.key, ca=other / "ca.pem")  # another site's CA
    client = SocketTLSStream(client_tcp, client_context(client_files), server_side=False)
    failures: list[BaseException] = []

    async def handshake(stream: SocketTLSStream) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            failures.append(exc)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handshake, server)
        nursery.start_soon(handshake, client)
    # The panel refuses the node's certificate; the node hears the panel's alert.
    assert len(failures) == 2 and all(isinstance(f.__cause__, ssl.SSLError) for f in failures), failures
    assert any("CERTIFICATE_VERIFY_FAILED" in str(f.__cause__) for f in failures), failures


async def test_a_send_cancelled_with_records_unsent_breaks_the_stream(site_pki: Path) -> None:
    server, client = await _makers(site_pki)()
    # Nobody reads: the socket buffers fill, and the send waits with records unsent.
    with trio.move_on_after(0.5) as waited:
        await client.send_all(b"x" * (64 << 20))
    assert waited.cancelled_caught
    with pytest.raises(trio.BrokenResourceError):  # a torn record would follow: never sent
        await client.send_all(b"more")
    await client.aclose()
    await server.aclose()


async def test_a_reader_is_never_held_by_a_sender_waiting_for_the_socket(site_pki: Path) -> None:
    """A sender holding the socket (waiting for it to drain) must not hold the reader: the
    peer may be waiting for this end to read before it reads in turn."""
    server, client = await _makers(site_pki)()
    async with server._write_lock:  # as a sender does while the socket is full
        server._tls.write(b"made, not yet sent")
        await client.send_all(b"frame")
        with trio.fail_after(5):
            assert await server.receive_some() == b"frame"
    await server.send_all(b"; and then")  # what was made first goes first
    got = b""
    with trio.fail_after(5):
        while not got.endswith(b"; and then"):
            got += await client.receive_some()
    assert got == b"made, not yet sent; and then"
    await client.aclose()
    await server.aclose()


@pytest.mark.parametrize("buffer", [65536, 0], ids=["64KiB-buffers", "default-buffers"])
async def test_both_ends_sending_megabytes_at_once_never_deadlock(site_pki: Path, buffer: int) -> None:
    server, client = await _makers(site_pki)()
    for stream in (server, client):
        if buffer:
            stream.transport_stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            stream.transport_stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    total, chunk = 16 << 20, 1 << 20
    got = {"server": 0, "client": 0}

    async def send(stream: SocketTLSStream) -> None:
        for _ in range(total // chunk):
            await stream.send_all(b"y" * chunk)

    async def receive(stream: SocketTLSStream, name: str) -> None:
        while got[name] < total:
            got[name] += len(await stream.receive_some())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for stream, name in ((server, "server"), (client, "client")):
                nursery.start_soon(send, stream)
                nursery.start_soon(receive, stream, name)
    assert got == {"server": total, "client": total}
    await client.aclose()
    await server.aclose()


async def test_a_receive_cancelled_while_waiting_loses_nothing(site_pki: Path) -> None:
    server, client = await _makers(site_pki)()
    with trio.move_on_after(0.05):
        await server.receive_some()  # nothing comes: cancelled in its wait
    await client.send_all(b"after the cancel")
    with trio.fail_after(5):
        assert await server.receive_some() == b"after the cancel"
    await client.aclose()
    await server.aclose()


async def test_a_socket_closed_under_the_stream_is_never_written_through_its_old_number(
    site_pki: Path, tmp_path: Path
) -> None:
    """Found with parked sessions (docs/protocol.md 6.3): trio's serve_listeners closed the
    SocketStream under a SocketTLSStream that lived on, the fd number went to the node's
    SQLite file, and the next TLS record was written into the database. A closed socket is
    now a ClosedResourceError, and the file that took its number is untouched."""
    server, client = await _makers(site_pki)()
    fd = server.transport_stream.socket.fileno()
    server.transport_stream.socket.close()  # what aclose_forcefully of the transport does
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    opened = os.open(victim, os.O_WRONLY)
    reused = os.dup2(opened, fd)  # the file now has the socket's old number, as SQLite's did
    os.close(opened)
    try:
        with pytest.raises(trio.ClosedResourceError, match="socket under this TLS stream was closed"):
            await server.send_all(b"a record that must not land in the file")
        with pytest.raises((trio.ClosedResourceError, trio.BrokenResourceError)):  # broken by the failed send
            await server.receive_some()
        assert victim.read_bytes() == b""
    finally:
        os.close(reused)
    await client.aclose()
