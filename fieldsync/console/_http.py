"""The console's HTTP server: h11 on trio, like the fault API and the metrics endpoint.

Routes:

    GET  /                    the page (one static HTML file with its script)
    GET  /api/state           every section, one JSON object
    GET  /api/events          server-sent events: one event per section as it changes
    POST /api/switchover      {"to": NODE}
    POST /api/config/door-mode {"door": N, "mode": "locked"}
    POST /api/alarms/ack      {"alarms": [{"id": N, "panel_id": N, "seq": N, "kind": K}, ...]} or {"all": true}
    GET  /login, POST /login  the token form (with a token configured)

Authentication: with a token, every request but /login carries it, as ``Authorization:
Bearer TOKEN``, as the cookie /login or ``/?token=TOKEN`` sets (HttpOnly, SameSite=Strict),
or in the ``token`` query parameter. The actions take JSON only, which a form on another
site cannot send without the browser asking first: with the SameSite cookie, that is the
CSRF defence. Without a token the console listens on loopback only (``serve_console``).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import urllib.parse
from importlib import resources
from typing import Any

import h11
import trio

from ..engine import HttpRequest, send_response, serve_http
from ._live import ActionError, Console

__all__ = ["COOKIE", "serve_connection"]

log = logging.getLogger("fieldsync.console")

MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT = 30.0
#: A comment line on an idle event stream, so that proxies and the browser keep it open.
KEEPALIVE = 15.0
COOKIE = "fieldsync_console"

_SECURITY = [
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
]


@functools.cache
def _page() -> bytes:
    return resources.files(__package__).joinpath("console.html").read_bytes()


_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fieldsync console: sign in</title>
<style>body{{font:15px system-ui,sans-serif;margin:4em auto;max-width:24em}}
input{{font:inherit;width:100%;margin:.3em 0}}.bad{{color:#b00020}}</style></head><body>
<h1>fieldsync console</h1><p>This console needs its token (<code>fieldsync console --token</code>).</p>
<p class="bad">{problem}</p>
<form method="post" action="/login"><label>Token <input name="token" type="password" autofocus></label>
<input type="submit" value="Sign in"></form></body></html>
"""


class _Request:
    """One request as the routes see it; ``peer`` is the client's address (who acknowledged an alarm)."""

    def __init__(self, event: h11.Request, body: bytes, peer: str) -> None:
        self.method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        split = urllib.parse.urlsplit(target)
        self.path = split.path
        self.query = urllib.parse.parse_qs(split.query)
        self.headers = {k.decode("ascii", "replace").lower(): v.decode("latin-1") for k, v in event.headers}
        self.body = body
        self.peer = peer

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


class _Reply:
    def __init__(self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] | None = None):
        self.status, self.body = status, body
        self.headers = [("content-type", content_type), *(headers or []), *_SECURITY]


def _json(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode() + b"\n", "application/json", headers)


def _login_form(status: int, problem: str = "", headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(status, _LOGIN.format(problem=problem).encode(), "text/html; charset=utf-8", headers)


def _cookie(token: str) -> tuple[str, str]:
    return ("set-cookie", f"{COOKIE}={urllib.parse.quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict")


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _authorized(request: _Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip(), token):
        return True
    cookie = request.cookie(COOKIE)
    if cookie is not None and _same(urllib.parse.unquote(cookie), token):
        return True
    return any(_same(t, token) for t in request.query.get("token", []))


def _loopback_host(host: str) -> bool:
    """Is the Host header's name a loopback one (``localhost``, 127.0.0.0/8, ``[::1]``)?"""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _route(console: Console, request: _Request) -> _Reply | None:
    """The reply to ``request``; None: the event stream (the caller streams it)."""
    token = console.settings.token
    if token is None and not _loopback_host(request.headers.get("host", "")):
        # No token is needed on loopback, so a page elsewhere must not reach the console
        # through a name that resolves to 127.0.0.1 (DNS rebinding): only loopback names.
        return _json(421, {"error": "without a token this console answers only for loopback host names"})
    if request.path == "/login" and token is not None:
        if request.method == "POST":
            form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
            if any(_same(t, token) for t in form.get("token", [])):
                return _Reply(303, b"", "text/plain", [("location", "/"), _cookie(token)])
            return _login_form(401, "That is not the console's token.")
        return _login_form(200)
    if token is not None and not _authorized(request, token):
        if request.path == "/" and request.method == "GET":
            return _login_form(401)
        return _json(401, {"error": "this console needs its token"}, [("www-authenticate", 'Bearer realm="console"')])
    if request.path == "/" and request.method == "GET":
        if token is not None and "token" in request.query:  # the link printed at start: a cookie, a clean URL
            return _Reply(303, b"", "text/plain", [("location", "/"), _cookie(token)])
        return _Reply(200, _page(), "text/html; charset=utf-8")
    if request.path == "/api/state" and request.method == "GET":
        return _json(200, {"version": console.sections.version, **console.sections.all()})
    if request.path == "/api/events" and request.method == "GET":
        return None
    actions = {"/api/switchover", "/api/config/door-mode", "/api/panels/resync", "/api/alarms/ack"}
    if request.path in actions:
        if request.method != "POST":
            return _not_allowed(request, "POST")
        return await _act(console, request)
    if request.path in {"/", "/api/state", "/api/events"}:
        return _not_allowed(request, "GET")
    return _json(404, {"error": f"no such resource: {request.path}"})


def _not_allowed(request: _Request, allowed: str) -> _Reply:
    error = f"{request.method} is not allowed on {request.path}; use {allowed}"
    return _json(405, {"error": error}, [("allow", allowed)])


async def _act(console: Console, request: _Request) -> _Reply:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _json(415, {"error": "actions take a JSON body (content-type: application/json)"})
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        return _json(400, {"error": f"the body is not JSON: {exc}"})
    try:
        if request.path == "/api/switchover":
            message = await console.switchover(body.get("to") if isinstance(body, dict) else None)
        elif request.path == "/api/config/door-mode":
            door, mode = (body.get("door"), body.get("mode")) if isinstance(body, dict) else (None, None)
            message = await console.set_door_mode(door, mode)
        elif request.path == "/api/panels/resync":
            message = await console.resync(body.get("panel_id") if isinstance(body, dict) else None)
        else:
            message = await console.acknowledge(body, by=f"console {request.peer}")
    except ActionError as exc:
        return _json(exc.status, {"error": str(exc)})
    return _json(200, {"ok": True, "message": message})


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _respond(conn: h11.Connection, stream: trio.SocketStream, reply: _Reply) -> None:
    await send_response(conn, stream, reply.status, reply.body, reply.headers)


async def _stream_events(console: Console, conn: h11.Connection, stream: trio.SocketStream) -> None:
    """Every section now, then each section again whenever it changes, until the client goes."""
    headers = [("content-type", "text/event-stream"), *_SECURITY[:-1], ("cache-control", "no-cache")]
    await _send(conn, stream, h11.Response(status_code=200, headers=headers))
    sections = console.sections
    sent = 0
    while True:
        version = sections.version
        chunk = b"".join(
            f"event: {name}\ndata: {json.dumps(value)}\n\n".encode() for name, value in sections.since(sent)
        )
        sent = version
        await _send(conn, stream, h11.Data(data=chunk or b": keep-alive\n\n"))
        with trio.move_on_after(KEEPALIVE):
            await sections.wait_newer(sent)


async def serve_connection(console: Console, stream: trio.SocketStream) -> None:
    """One client's connection: requests in turn (keep-alive), or one event stream."""
    try:
        peer = str(stream.socket.getpeername()[0])
    except OSError:
        peer = "?"

    async def respond(conn: h11.Connection, request: HttpRequest) -> bool:
        reply = await _route(console, _Request(request.head, request.body, peer))
        if reply is None:
            await _stream_events(console, conn, stream)
            return False  # the event stream had the connection to its end
        await _respond(conn, stream, reply)
        return True

    async def error(conn: h11.Connection, status: int, message: str) -> None:
        await _respond(conn, stream, _json(status, {"error": message}))

    await serve_http(stream, respond, error, max_request=MAX_REQUEST, idle_timeout=IDLE_TIMEOUT)
