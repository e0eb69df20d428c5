"""The server's configuration as the node serves it, and its push to each panel.

The node follows the config store (a poll, ``config_poll``), and every session whose
panel is behind gets a push from its writer (docs/protocol.md 8.3): a delta when the
panel's version is behind and its digest is what the server had at that version, a
snapshot in every other case. An operator's resync request (``fieldsync config resync``,
the console) is read with the same poll: the panel's session gets a snapshot, and the
request is marked done once it went out (a panel offline gets it at its next session).
The config store has its own SQLite connection and its own thread, so a push never waits
behind a group commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from protocol import EMPTY_DIGEST, ConfigDelta, ConfigSnapshot
from storage import ConfigChange, ConfigStoreInterface, open_config_store

if TYPE_CHECKING:
    from ._node import Node
    from ._sessions import _Session

__all__: list[str] = []

T = TypeVar("T")
log = logging.getLogger("fieldsync.node")


class _ConfigFeed:
    """The configuration version and digest every session converges to."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.store: ConfigStoreInterface | None = None
        self._limiter = trio.CapacityLimiter(1)
        self.version = 0
        self.digest = EMPTY_DIGEST
        #: Versions panels acknowledged since the last status write.
        self.acks: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<ConfigFeed version {self.version} digest {self.digest.hex()[:12]}>"

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def open(self, path: Path | str) -> None:
        self.store = await self.run_sync(open_config_store, path)

    async def load(self) -> None:
        assert self.store is not None
        self.version, self.digest = await self.run_sync(self.store.current)

    async def close(self) -> None:
        if self.store is not None:
            await self.run_sync(self.store.close)

    async def watch(self) -> None:
        assert self.store is not None
        while True:
            await trio.sleep(self.node.settings.config_poll)
            self.saw(*await self.run_sync(self.store.current))
            self.resync(await self.run_sync(self.store.resyncs_pending))

    def resync(self, pending: dict[int, int]) -> None:
        """The operator asked these panels (panel -> request time) be sent a snapshot."""
        sessions = self.node.sessions
        for panel_id, requested_us in pending.items():
            session = sessions.get(panel_id)
            if session is not None and session.welcomed and session.resync_at != requested_us:
                session.resync_at = requested_us
                session.need_snapshot = True
                session.wake.set()

    def saw(self, version: int, digest: bytes) -> None:
        """The store's configuration is at ``version`` (it only moves forward): every session follows."""
        if version > self.version or (version == self.version and digest != self.digest):
            self.version, self.digest = version, digest
            for session in list(self.node.sessions.values()):
                session.wake.set()

    def acked(self, panel_id: int, version: int) -> None:
        self.acks[panel_id] = version

    def written(self, acks: list[tuple[int, int]]) -> None:
        """These acks reached the store (unless a newer one came meanwhile)."""
        for pid, version in acks:
            if self.acks.get(pid) == version:
                del self.acks[pid]

    def behind(self, session: _Session) -> bool:
        return session.need_snapshot or (session.config_sent, session.digest_sent) != (self.version, self.digest)

    async def push(self, session: _Session) -> None:
        """Bring the session's panel to the server's configuration (docs/protocol.md 8.3)."""
        store = self.store
        assert store is not None
        epoch = self.node.epoch
        change: ConfigChange | None = None
        if not session.need_snapshot and session.config_sent < self.version:
            base = await self.run_sync(store.digest_at, session.config_sent)
            if base == session.digest_sent:
                found = await self.run_sync(store.delta, session.config_sent)
                if isinstance(found, ConfigChange) and found.to_version > found.from_version:
                    change = found
        if change is not None:
            await session.ms.send(
                ConfigDelta(
                    epoch=epoch,
                    from_version=change.from_version,
                    to_version=change.to_version,
                    digest=change.digest,
                    ops=change.ops,
                )
            )
            session.config_sent, session.digest_sent = change.to_version, change.digest
            self.saw(change.to_version, change.digest)
            return
        version, state = await self.run_sync(store.snapshot)
        ops = state.snapshot_ops()
        digest = state.digest()
        size = self.node.settings.snapshot_part_ops
        parts = max(1, -(-len(ops) // size))
        for part in range(parts):
            await session.ms.send(
                ConfigSnapshot(
                    epoch=epoch,
                    version=version,
                    digest=digest,
                    part=part,
                    parts=parts,
                    ops=ops[part * size : (part + 1) * size],
                )
            )
        session.config_sent, session.digest_sent = version, digest
        session.need_snapshot = False
        if session.resync_at is not None:  # the operator's request is answered
            await self.run_sync(store.resync_done, session.panel_id, session.resync_at)
            log.warning(
                "node %s: panel %d resynchronized (a snapshot of version %d)",
                self.node.node_id,
                session.panel_id,
                version,
            )
            session.resync_at = None
        self.saw(version, digest)
