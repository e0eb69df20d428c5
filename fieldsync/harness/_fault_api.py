"""The fault injector's HTTP JSON API on loopback, following Toxiproxy's.

Served with h11 over trio (h11's own trio example is the model). Routes:

    GET    /version
    GET    /proxies                          every proxy
    POST   /proxies                          {"name", "listen", "upstream", "enabled"?, "protocol"?} -> 201
    GET    /proxies/{proxy}
    POST   /proxies/{proxy}                  {"enabled": bool}
    DELETE /proxies/{proxy}                  -> 204
    GET    /proxies/{proxy}/toxics
    POST   /proxies/{proxy}/toxics           a toxic {"name"?, "type", "stream"?, "toxicity"?, "attributes"?}
    DELETE /proxies/{proxy}/toxics/{toxic}   -> 204
    GET    /groups                           {group: [proxy, ...]}
    POST   /groups/{group}                   {"enabled": bool}, every proxy of the group at once
    POST   /groups/{group}/toxics            a toxic for every proxy of the group, atomically
    DELETE /groups/{group}/toxics/{toxic}
    POST   /groups/{group}/reset_peer        TCP RST on every connection of the group now
    POST   /reset                            every proxy enabled, every toxic removed -> 204

A request that makes no sense gets a 4xx with {"error": reason, "status": code};
the run goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from protocol.streams import check_plaintext_allowed

from ..engine import HttpRequest, send_response, serve_http
from ._proxy import FaultError, FaultHub, Toxic

__all__ = [
    "DEFAULT_API_PORT",
    "serve_api",
]

DEFAULT_API_PORT = 8474  # Toxiproxy's
MAX_BODY = 64 * 1024
VERSION = {"name": "fieldsync-faults", "api": "toxiproxy-compatible subset", "version": 1}

Handler = Callable[[FaultHub, dict[str, str], Any], Awaitable[tuple[int, Any]]]


def _address(text: Any, what: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise FaultError(f"{what} must be 'HOST:PORT', not {text!r}")
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise FaultError(f"{what} {text!r}: the port must be 1..65535")
    try:
        check_plaintext_allowed(host)
    except Exception as exc:
        raise FaultError(f"{what} {text!r}: only loopback addresses here ({exc})") from None
    return host, int(port)


def _enabled(body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        raise FaultError('the body must be {"enabled": true|false}')
    return bool(body["enabled"])


async def _version(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, VERSION


async def _list(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, {name: p.to_json() for name, p in hub.proxies.items()}


async def _create(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        raise FaultError('the body must be {"name": ..., "listen": "HOST:PORT", "upstream": "HOST:PORT"}')
    unknown = set(body) - {"name", "listen", "upstream", "enabled", "protocol"}
    if unknown:
        raise FaultError(f"unknown proxy field {sorted(unknown)[0]!r}")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FaultError("enabled must be true or false")
    protocol = body.get("protocol", "tcp")
    if protocol not in ("tcp", "udp"):
        raise FaultError(f"protocol must be 'tcp' or 'udp', not {protocol!r}")
    proxy = await hub.create(
        body["name"],
        _address(body.get("listen"), "listen"),
        _address(body.get("upstream"), "upstream"),
        enabled=enabled,
        protocol=protocol,
    )
    return 201, proxy.to_json()


async def _get(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, hub.proxy(args["proxy"]).to_json()


async def _update(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    await hub.set_enabled(args["proxy"], _enabled(body))
    return 200, hub.proxy(args["proxy"]).to_json()


async def _delete(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    hub.delete(args["proxy"])
    return 204, None


async def _toxics(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, [t.to_json() for t in hub.proxy(args["proxy"]).toxics.values()]


async def _add_toxic(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    toxic = Toxic.from_json(body)
    hub.add_toxic(hub.proxy(args["proxy"]).name, toxic)
    return 200, toxic.to_json()


async def _remove_toxic(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    hub.proxy(args["proxy"]).remove_toxic(args["toxic"])
    return 204, None


async def _groups(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    return 200, {name: list(members) for name, members in hub.groups.items()}


async def _group_enabled(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    await hub.set_group_enabled(args["group"], _enabled(body))
    return 200, {"group": args["group"], "enabled": _enabled(body)}


async def _group_toxic(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    toxic = Toxic.from_json(body)
    proxies = hub.add_toxic(args["group"], toxic)
    return 200, {**toxic.to_json(), "proxies": proxies}


async def _group_remove_toxic(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    hub.remove_toxic(args["group"], args["toxic"])
    return 204, None


async def _group_reset_peer(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    hub.reset_peers(args["group"])
    return 200, {"group": args["group"], "reset": True}


async def _reset(hub: FaultHub, args: dict[str, str], body: Any) -> tuple[int, Any]:
    await hub.reset()
    return 204, None


_NAME = r"(?P<{}>[A-Za-z0-9_.\-]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (
        method,
        re.compile(
            "^"
            + pattern.format(proxy=_NAME.format("proxy"), toxic=_NAME.format("toxic"), group=_NAME.format("group"))
            + "$"
        ),
        handler,
    )
    for method, pattern, handler in [
        ("GET", "/version", _version),
        ("GET", "/proxies", _list),
        ("POST", "/proxies", _create),
        ("GET", "/proxies/{proxy}", _get),
        ("POST", "/proxies/{proxy}", _update),
        ("DELETE", "/proxies/{proxy}", _delete),
        ("GET", "/proxies/{proxy}/toxics", _toxics),
        ("POST", "/proxies/{proxy}/toxics", _add_toxic),
        ("DELETE", "/proxies/{proxy}/toxics/{toxic}", _remove_toxic),
        ("GET", "/groups", _groups),
        ("POST", "/groups/{group}", _group_enabled),
        ("POST", "/groups/{group}/toxics", _group_toxic),
        ("DELETE", "/groups/{group}/toxics/{toxic}", _group_remove_toxic),
        ("POST", "/groups/{group}/reset_peer", _group_reset_peer),
        ("POST", "/reset", _reset),
    ]
]


async def dispatch(hub: FaultHub, method: str, target: str, raw: bytes) -> tuple[int, Any]:
    """Route one request; every failure a request can cause becomes a 4xx with a reason."""
    path = target.split("?", 1)[0]
    allowed = []
    for route_method, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if route_method != method:
            allowed.append(route_method)
            continue
        try:
            body = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, {"error": f"the body is not JSON: {exc}", "status": 400}
        try:
            return await handler(hub, match.groupdict(), body)
        except FaultError as exc:
            return exc.status, {"error": str(exc), "status": exc.status}
    if allowed:
        return 405, {
            "error": f"{method} is not allowed on {path}; use {', '.join(sorted(set(allowed)))}",
            "status": 405,
        }
    return 404, {"error": f"no such resource: {path}", "status": 404}


async def _serve_connection(hub: FaultHub, stream: trio.SocketStream) -> None:
    async def reply(conn: h11.Connection, status: int, payload: Any) -> None:
        body = b"" if payload is None else json.dumps(payload).encode() + b"\n"
        await send_response(conn, stream, status, body, [("content-type", "application/json")])

    async def respond(conn: h11.Connection, request: HttpRequest) -> bool:
        await reply(conn, *await dispatch(hub, request.method, request.target, request.body))
        return True

    async def error(conn: h11.Connection, status: int, message: str) -> None:
        await reply(conn, status, {"error": message, "status": status})

    await serve_http(stream, respond, error, max_request=MAX_BODY, idle_timeout=30)


async def serve_api(
    hub: FaultHub,
    host: str = "127.0.0.1",
    port: int = DEFAULT_API_PORT,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; loopback only (it can break every link on the machine).

    Raises:
        FaultError: the address is not loopback or cannot be bound.
    """
    _address(f"{host}:{port}", "the fault API address")
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise FaultError(f"the fault API cannot listen on {host}:{port}: {exc.strerror}", status=409) from exc
    task_status.started(listeners)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_connection(hub, stream)

    await trio.serve_listeners(handler, listeners)
