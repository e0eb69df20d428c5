"""One HTTP/1.1 server connection on h11 (sans-I/O, STYLE.md's model), for the small servers
fieldsync runs: a node's metrics endpoint, the fault API, the web console.

``serve_http`` reads each request whole (its body bounded), hands it to the server's own
``respond`` and goes on with the next one on the same connection (keep-alive), until the
client goes, is silent for ``idle_timeout``, or ``respond`` says the connection is its own
now (an event stream). A request h11 refuses, or a body over the bound, is answered through
the server's ``error`` (each server has its own error body) and ends the connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

import h11
import trio

__all__ = ["HttpRequest", "http_request", "send_response", "serve_http"]


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    head: h11.Request
    body: bytes

    @property
    def method(self) -> str:
        return self.head.method.decode("ascii", "replace")

    @property
    def target(self) -> str:
        return self.head.target.decode("ascii", "replace")


#: ``respond(conn, request)``: answers it; False when it kept the connection (nothing more is read).
Respond = Callable[[h11.Connection, HttpRequest], Awaitable[bool]]
#: ``error(conn, status, text)``: answers a request that could not be read.
ErrorReply = Callable[[h11.Connection, int, str], Awaitable[None]]


async def send_response(
    conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes, headers: list[tuple[str, str]]
) -> None:
    """One whole response (its length given)."""
    headers = [*headers, ("content-length", str(len(body)))]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    if body:
        await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _read_request(
    conn: h11.Connection, stream: trio.SocketStream, max_request: int, idle_timeout: float
) -> HttpRequest | int | None:
    """The next request, or None (the client went or was silent), or 413 (a body too large)."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.move_on_after(idle_timeout) as idle:
                data = await stream.receive_some(max_request)
            if idle.cancelled_caught:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_request:
                return 413
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return HttpRequest(head, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def serve_http(
    stream: trio.SocketStream,
    respond: Respond,
    error: ErrorReply,
    *,
    max_request: int,
    idle_timeout: float,
) -> None:
    """Serve requests on ``stream`` in turn; the stream is closed on every way out."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request)
    try:
        while True:
            request = await _read_request(conn, stream, max_request, idle_timeout)
            if request is None:
                return
            if isinstance(request, int):
                await error(conn, request, f"body over {max_request} bytes")
                return
            if not await respond(conn, request):
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            # The client that sent garbage may be gone already: its answer is best effort.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await error(conn, exc.error_status_hint, f"bad HTTP request: {exc}")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def http_request(
    host: str, port: int, method: str, target: str, body: bytes = b"", *, max_response: int = 1 << 20
) -> tuple[int, bytes]:
    """One request on a connection of its own (closed after it): the status and the body.

    Raises:
        OSError: no connection. h11.ProtocolError: not HTTP. ValueError: a body over
        ``max_response`` bytes. The caller bounds the time.
    """
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_response)
        headers = [("host", f"{host}:{port}"), ("content-length", str(len(body))), ("connection", "close")]
        data = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
        status, answer = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > max_response:
                    raise ValueError(f"{method} {target} of {host}:{port}: answer over {max_response} bytes")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(answer)
