"""A cluster node's heartbeat threads: the store beat and lease renewal (``_Heart``), the UDP beats (``_Ears``).

Both run on their own OS threads so a busy event loop cannot delay a beat; both
stop beating when the node's event loop stalls (``beats_allowed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from protocol.streams import LinkError
from storage import StoreError, StoreLocked, open_cluster_store

from ._cluster_settings import Role
from ._failover import beats_allowed

if TYPE_CHECKING:
    from ._cluster import ClusterNode

__all__ = ["_Ears", "_Heart"]


log = logging.getLogger("fieldsync.cluster")


class _Heart(threading.Thread):
    """Beats (and, while active, renews the lease) from its own OS thread.

    A node busy with a thousand TLS handshakes can leave its event loop slow for
    a second; a heartbeat written from that loop then looks like death and the
    standby shoots a healthy node. This thread keeps time on its own, and stops
    beating if the event loop itself stalls (``loop_stall``), so a wedged node
    still looks dead.
    """

    def __init__(self, owner: ClusterNode) -> None:
        super().__init__(name=f"fieldsync-heart-{owner.node_id}", daemon=True)
        self.owner = owner
        self.loop_tick = time.monotonic()
        self.stop = threading.Event()
        #: Set when a renewal found the lease taken (another epoch): the active must step down.
        self.lost_epoch = 0
        self.switchover_to: str | None = None
        self.locked = 0
        self.store_errors = 0
        #: When a renewal last succeeded (monotonic): an active that cannot renew for a whole
        #: lease length has lost it, whoever else can tell (mirrored: a broken mirror).
        self.renewed_at = time.monotonic()
        #: Mirrored: when this node's own database last answered (monotonic). A node whose
        #: database is gone sends no UDP beats: the other must not wait for it.
        self.db_answered_at = time.monotonic()

    def requested_switchover(self) -> str | None:
        return self.switchover_to

    def run(self) -> None:
        owner, s = self.owner, self.owner.settings
        # Long enough to get between our own group commits; short enough to beat on time.
        # A renewal must not wait longer than the lease for a sync standby that is gone.
        store = open_cluster_store(s.db, busy_timeout=s.dead_after / 2, commit_timeout=s.lease / 2)
        lease_us = int(s.lease * 1e6)
        try:
            while True:
                if not beats_allowed(time.monotonic(), self.loop_tick, s.loop_stall):
                    # The event loop is wedged: let the peer see us as dead.
                    if self.stop.wait(s.beat_interval):
                        return
                    continue
                role, epoch = owner.role, owner.epoch
                try:
                    if role is Role.ACTIVE and epoch and self.lost_epoch != epoch:
                        lease = store.renew(owner.node_id, epoch, now_us=owner._now_us(), lease_us=lease_us)
                        if lease is None:
                            self.lost_epoch = epoch
                        else:
                            self.switchover_to = lease.switchover_to
                            self.renewed_at = time.monotonic()
                    if role is Role.ACTIVE or s.mirror is None:  # a mirrored standby's replica is read-only
                        store.beat(owner._beat())
                    else:
                        store.lease()  # it answers: this node is worth waiting for
                    self.db_answered_at = time.monotonic()
                except StoreLocked:
                    self.locked += 1
                except StoreError as exc:
                    # A full disk, a store gone: this beat and renewal failed; the thread lives on
                    # and tries again (dying here would stop the beats of a node that still serves).
                    self.store_errors += 1
                    if self.store_errors in (1, 10) or self.store_errors % 100 == 0:
                        log.error(
                            "node %s: cannot beat or renew the lease (%d times): %s",
                            owner.node_id,
                            self.store_errors,
                            exc,
                        )
                if self.stop.wait(s.beat_interval):
                    return
        finally:
            store.close()


class _Ears(threading.Thread):
    """Sends this node's UDP heartbeats and notes when each peer's was last heard.

    Nothing here touches the store, so a busy write lock cannot delay a beat.
    """

    def __init__(self, owner: ClusterNode, address: str, port: int) -> None:
        super().__init__(name="fieldsync-ears", daemon=True)
        self.owner = owner
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((address, port))
        except OSError as exc:
            self.sock.close()
            raise LinkError(f"node heartbeat: cannot bind UDP {address}:{port}: {exc.strerror}") from exc
        self.heard: dict[str, float] = {}
        self.stop = threading.Event()
        self._next_send = 0.0

    def _send(self) -> None:
        owner = self.owner
        s = owner.settings
        if not beats_allowed(time.monotonic(), owner.heart.loop_tick, s.loop_stall):
            return  # this node's event loop is wedged: let the peer see it as dead
        if s.mirror is not None and time.monotonic() - owner.heart.db_answered_at > s.dead_after:
            return  # its own database does not answer: nothing to wait for here
        payload = json.dumps(
            {"node": owner.node_id, "pid": os.getpid(), "role": owner.role.value, "epoch": owner.epoch}
        ).encode()
        for _, address in s.peers:
            with contextlib.suppress(OSError):  # the peer's host is down: what heartbeats are for
                self.sock.sendto(b"FSHB" + payload, (address, s.beat_port))

    def run(self) -> None:
        interval = self.owner.settings.beat_interval
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= self._next_send:
                    self._send()
                    self._next_send = now + interval
                self.sock.settimeout(max(0.001, self._next_send - now))
                try:
                    data, _ = self.sock.recvfrom(512)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data.startswith(b"FSHB"):
                    continue
                try:
                    node = str(json.loads(data[4:])["node"])
                except (ValueError, KeyError, TypeError):
                    continue
                self.heard[node] = time.monotonic()
        finally:
            self.sock.close()

    def silent_for(self, node: str) -> float | None:
        heard = self.heard.get(node)
        return None if heard is None else time.monotonic() - heard
