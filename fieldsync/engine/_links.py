"""How panels reach the node: the listener (punch-out), the dialer (host-initiated) and
serial lines. Each link that comes up is handed to ``_Sessions.serve_link``.

TLS handshakes, accepted and dialed alike, share one bound (``max_handshakes``): a
reconnect storm then completes a few at a time instead of advancing all of them so
slowly that every one times out.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

import trio

from protocol.streams import (
    LinkError,
    SerialLine,
    client_context,
    dial,
    listen,
    open_serial,
    serial_link,
    server_context,
)

if TYPE_CHECKING:
    from ._node import Node

__all__: list[str] = []

log = logging.getLogger("fieldsync.node")


class _Links:
    def __init__(self, node: Node) -> None:
        s = node.settings
        self.node = node
        self.server_ctx: ssl.SSLContext | None = server_context(s.tls) if s.tls else None
        self.client_ctx: ssl.SSLContext | None = client_context(s.tls) if s.tls else None
        self.handshakes = trio.Semaphore(s.max_handshakes)

    def __repr__(self) -> str:
        return f"<Links of node {self.node.node_id}>"

    def _link_error(self, text: str) -> None:
        self.node.sessions_table.counts.link_errors += 1
        self.node.last_error = text

    async def listen(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        node = self.node
        s = node.settings

        def refused(remote: str, exc: Exception) -> None:
            node.sessions_table.counts.rejected += 1
            node.last_error = f"refused {remote}: {exc}"
            log.warning("refused %s: %s", remote, exc)

        deadline = trio.current_time() + s.bind_retry
        attempts = 0
        while True:
            try:
                await listen(
                    host,
                    port,
                    self.server_ctx,
                    node.sessions_table.serve_link,
                    handshake_timeout=s.handshake_timeout,
                    handshakes=self.handshakes,
                    on_refused=refused,
                    task_status=task_status,
                )
                return
            except LinkError as exc:
                # A fenced predecessor's listening socket may linger for a moment.
                if "in use" not in str(exc) or trio.current_time() >= deadline:
                    raise
                attempts += 1
                if attempts in (1, 50) or attempts % 500 == 0:
                    log.warning("node %s: %s; retrying", node.node_id, exc)
                await trio.sleep(0.02)

    async def dial_loop(self, panel_id: int, host: str, port: int) -> None:
        node = self.node
        s = node.settings
        delay = 0.05
        while True:
            adopted = node.sessions_table.adopting.get(panel_id)
            if adopted is not None:  # its parked session was taken over (docs/protocol.md 6.3)
                await adopted.wait()
                continue
            current = node.sessions.get(panel_id)
            if current is not None:
                await current.done.wait()
                continue
            try:
                async with self.handshakes:  # the timeout is for the handshake, not our own queue
                    with trio.fail_after(s.handshake_timeout):
                        link = await dial(host, port, self.client_ctx)
                if await node.sessions_table.serve_link(link, expected=panel_id):
                    delay = 0.05
            except (LinkError, trio.TooSlowError) as exc:
                self._link_error(str(exc))
            await trio.sleep(delay)
            delay = min(s.dial_backoff_cap, delay * 2)

    async def serial_loop(self, expected: int | None, line: SerialLine) -> None:
        """Serve the panel on one serial line, session after session, for as long as this runs.

        The port is opened afresh for each session (stale bytes discarded); a device
        that is missing or busy is retried with backoff and reported once per outage.
        """
        node = self.node
        s = node.settings
        delay = 0.05
        reported = False
        while True:
            try:
                stream = open_serial(line)
            except LinkError as exc:
                self._link_error(str(exc))
                if not reported:
                    log.warning("node %s: %s; retrying", node.node_id, exc)
                    reported = True
                await trio.sleep(delay)
                delay = min(s.dial_backoff_cap, delay * 2)
                continue
            delay, reported = 0.05, False
            try:
                await stream.wait_for_input()  # a line is quiet until its panel speaks
                with trio.fail_after(s.handshake_timeout):
                    link = await serial_link(stream, self.server_ctx, server_side=True)
                await node.sessions_table.serve_link(link, expected=expected, line=line)
            except (LinkError, trio.TooSlowError) as exc:
                self._link_error(f"serial {line.path}: {exc}")
            finally:
                await trio.aclose_forcefully(stream)
