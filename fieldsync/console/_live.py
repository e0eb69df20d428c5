"""The console's live state: pollers that read the site, versioned sections, the operator's actions.

Each source has a poller of its own (the pair every ``every`` seconds, the fleet, the
alarms and the nodes' metrics every second), and each puts what it read into one named
section of a ``Sections``. A section changes only when its JSON does; every change bumps
one version number and wakes whoever waits (the server-sent event streams), each of which
then sends the sections newer than the ones it sent. Nothing is queued per client, so a
slow browser costs memory for one snapshot, not a backlog.

Blocking reads (SQLite, PostgreSQL) run in threads, one CapacityLimiter per connection.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import h11
import trio

from protocol import Door, DoorMode, EventKind, PutDoor
from storage import (
    ClusterStore,
    ConfigStoreInterface,
    EventStoreInterface,
    MirrorError,
    StoreError,
    open_config_store,
    open_event_store,
)

from ..site import Site, SiteError
from ._alarms import AlarmBook
from ._rates import History, NodeRates, scrape
from ._views import fleet_rows, pair_view, request_switchover, site_mirror

__all__ = ["Console", "ConsoleError", "ConsoleSettings", "Sections"]

log = logging.getLogger("fieldsync.console")
T = TypeVar("T")

#: How an acknowledgement names an alarm.
_ALARM_KEY = '{"id": N, "panel_id": N, "seq": N, "kind": "DOOR_FORCED"}'
#: Alarms the page lists (the newest); the count covers all.
ALARMS_SHOWN = 200
SLOW_EVERY = 1.0


class ConsoleError(Exception):
    """The console cannot start: the message names the cause (an address, the store, the token)."""


class ActionError(Exception):
    """An operator's action that cannot be done as asked (HTTP 400 / 409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleSettings:
    site: Site
    host: str = "127.0.0.1"
    port: int = 8480
    #: None: no authentication (loopback only).
    token: str | None = None
    #: Each node's metrics endpoint, by node name.
    metrics: Mapping[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    #: Seconds between two reads of the pair (lease, beats).
    every: float = 0.1


class Sections:
    """Named JSON sections, each with the version at which it last changed."""

    def __init__(self) -> None:
        self.version = 0
        self._values: dict[str, Any] = {}
        self._versions: dict[str, int] = {}
        self._changed = trio.Event()

    def put(self, name: str, value: Any) -> None:
        if self._values.get(name) == value:
            return
        self.version += 1
        self._values[name] = value
        self._versions[name] = self.version
        self._changed.set()
        self._changed = trio.Event()

    def since(self, version: int) -> list[tuple[str, Any]]:
        return [(n, self._values[n]) for n, v in sorted(self._versions.items(), key=lambda i: i[1]) if v > version]

    def all(self) -> dict[str, Any]:
        return dict(self._values)

    async def wait_newer(self, version: int) -> None:
        """Block until some section is newer than ``version``."""
        while self.version <= version:
            await self._changed.wait()


def _now_us() -> int:
    return time.time_ns() // 1000


def _error(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Console:
    """Everything the page shows and does, for one site."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.site = site = settings.site
        self.sections = Sections()
        self.mirror = site_mirror(site) if site.mirror is not None else None
        self._store_path: Path | None = None if site.mirror is not None else site.db_file
        self._cluster: ClusterStore | None = None
        self._events: EventStoreInterface | None = None
        self._config: ConfigStoreInterface | None = None
        self._events_target: Path | str | None = None
        self.alarms: AlarmBook | None = None
        self._pair_limiter = trio.CapacityLimiter(1)
        self._fleet_limiter = trio.CapacityLimiter(1)
        self._alarm_limiter = trio.CapacityLimiter(1)
        self._poke_pair = trio.Event()
        self.rates = {name: NodeRates() for name in settings.metrics}
        self.history = History()
        self._budgets = {pid: site.panel_spec(pid).buffer or site.fleet.buffer for pid in site.panel_ids()}
        self.sections.put(
            "meta",
            {
                "site": site.name,
                "vip": f"{site.vip}:{site.port}",
                "nodes": [n.name for n in site.nodes],
                "mirrored": site.mirror,
                "door_modes": [m.name.lower() for m in DoorMode],
                "metrics": sorted(settings.metrics),
            },
        )

    def __repr__(self) -> str:
        return f"<Console {self.site.name!r} on {self.settings.host}:{self.settings.port} v{self.sections.version}>"

    # -- opening and closing ------------------------------------------------------------

    def open(self) -> None:
        """Open the site's stores (blocking; before serving).

        Raises:
            ConsoleError: the store is missing or cannot be read.
        """
        try:
            if self._store_path is not None:
                if not self._store_path.exists():
                    raise ConsoleError(
                        f"{self._store_path}: the site's store does not exist "
                        f"(db in {self.site.path}; has a node run on this site?)"
                    )
                self._cluster = ClusterStore(self._store_path)
                self.alarms = AlarmBook(self._store_path)  # mirrored: opened at the first read, on the primary
            pair_view(self.site, store=self._cluster, mirror=self.mirror)
        except (StoreError, SiteError, MirrorError) as exc:
            self.close()
            raise ConsoleError(str(exc)) from None

    def close(self) -> None:
        for thing in (self._cluster, self.alarms, self._events, self._config):
            if thing is not None:
                thing.close()
        self._cluster = self.alarms = self._events = self._config = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll every source until cancelled; the first reads are in before ``started``."""
        await self._read_pair()
        await self._read_fleet()
        await self._read_alarms()
        self._put_rates()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pair_loop)
            nursery.start_soon(self._every_second, self._read_fleet)
            nursery.start_soon(self._every_second, self._read_alarms)
            if self.settings.metrics:
                nursery.start_soon(self._every_second, self._read_rates)
            task_status.started()

    async def _thread(self, limiter: trio.CapacityLimiter, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    async def _every_second(self, read: Callable[[], Any]) -> None:
        while True:
            await trio.sleep(SLOW_EVERY)
            await read()

    # -- the pair -----------------------------------------------------------------------

    async def _pair_loop(self) -> None:
        while True:
            with trio.move_on_after(self.settings.every):
                await self._poke_pair.wait()
            self._poke_pair = trio.Event()
            await self._read_pair()

    async def _read_pair(self) -> None:
        try:
            if self._store_path is not None and not self._store_path.exists():
                raise StoreError(self._store_path, "the site's store is gone (the file was removed)")
            view = await self._thread(
                self._pair_limiter, lambda: pair_view(self.site, store=self._cluster, mirror=self.mirror)
            )
        except (StoreError, SiteError, MirrorError) as exc:
            self.sections.put("pair", {"error": _error(exc)})
            return
        now = _now_us()
        holder = view.holder_at(now)
        self.sections.put(
            "pair",
            {
                "error": None,
                "holder": holder,
                "holder_pid": view.lease.holder_pid if holder else None,
                "epoch": view.lease.epoch,
                "lease_left_s": round(view.lease_left_s(now), 1),
                "switchover_to": view.lease.switchover_to,
                "nodes": [
                    {
                        "name": name,
                        "role": beat.role,
                        "pid": beat.pid,
                        "address": beat.address,
                        "epoch": beat.epoch,
                        "alive": view.alive(name, now),
                        "silent_s": round(max(0.0, view.silent_s(name, now)), 1),
                    }
                    for name, beat in sorted(view.nodes.items())
                ],
                "databases": view.databases,
            },
        )

    # -- the fleet ----------------------------------------------------------------------

    def _fleet_target(self) -> Path | str:
        if self._store_path is not None:
            return self._store_path
        assert self.mirror is not None
        primary = self.mirror.newest_primary()
        if primary is None:
            raise SiteError(f"{self.site.path}: no node's database answers as the one primary")
        return self.site.node_db(primary)

    def _fleet_now(self) -> dict[str, Any]:
        target = self._fleet_target()
        if target != self._events_target or self._events is None or self._config is None:
            for old in (self._events, self._config):
                if old is not None:
                    old.close()
            self._events = self._config = None
            self._events = open_event_store(target)
            self._config = open_config_store(target)
            self._events_target = target
        assert self._config is not None
        rows = fleet_rows(self._events, self._budgets)
        return {"epoch": self._events.epoch, "config_version": self._config.version, "panels": rows}

    async def _read_fleet(self) -> None:
        try:
            fleet = await self._thread(self._fleet_limiter, self._fleet_now)
        except (StoreError, SiteError, MirrorError) as exc:
            self._events_target = None  # open it again next time
            self.sections.put("fleet", {"error": _error(exc)})
            return
        tally = self.alarms.tally if self.alarms is not None else {}
        panels = []
        for row in fleet["panels"]:
            counted = tally.get(int(row["panel_id"]))
            panels.append(
                {
                    "panel_id": row["panel_id"],
                    "connected": bool(row.get("connected")),
                    "node_id": row.get("node_id"),
                    "hwm": row["hwm"],
                    "backlog": row["backlog"],
                    "buffer_fill": None if row["buffer_fill"] is None else round(row["buffer_fill"], 4),
                    "config_acked": row["config_acked"],
                    "dropped": counted.dropped if counted else 0,
                    "lost": counted.lost if counted else 0,
                    "refused": counted.refused if counted else 0,
                }
            )
        self.sections.put(
            "fleet",
            {
                "error": None,
                "epoch": fleet["epoch"],
                "config_version": fleet["config_version"],
                "online": sum(p["connected"] for p in panels),
                "total": len(panels),
                "backlog": sum(p["backlog"] for p in panels),
                "dropped": sum(p["dropped"] for p in panels),
                "lost": sum(p["lost"] for p in panels),
                "refused": sum(p["refused"] for p in panels),
                "panels": panels,
            },
        )

    # -- alarms -------------------------------------------------------------------------

    def _scan_alarms(self) -> AlarmBook:
        target = self._fleet_target()
        book = self.alarms
        if book is None or not book.current(target):
            # Another database or another epoch: a new book, read whole before it is shown
            # (the fleet's tally reads the book from the loop meanwhile).
            fresh = AlarmBook(target)
            try:
                fresh.scan()
            except BaseException:
                fresh.close()
                raise
            if book is not None:
                book.close()  # no acknowledgement uses it: they take the same limiter
            self.alarms = book = fresh
        else:
            book.scan()
        return book

    async def _read_alarms(self) -> None:
        try:
            book = await self._thread(self._alarm_limiter, self._scan_alarms)
        except (StoreError, SiteError, MirrorError) as exc:
            self.sections.put("alarms", {"error": _error(exc)})
            return
        self._put_alarms(book)

    def _put_alarms(self, book: AlarmBook) -> None:
        self.sections.put(
            "alarms",
            {
                "error": None,
                "open": len(book.open),
                "trimmed": book.trimmed,
                "shown": [a.to_json() for a in book.newest(ALARMS_SHOWN)],
            },
        )

    # -- rates --------------------------------------------------------------------------

    async def _read_rates(self) -> None:
        async def one(name: str, host: str, port: int) -> None:
            try:
                self.rates[name].took(await scrape(host, port, now=trio.current_time()))
            except (OSError, trio.TooSlowError, ValueError, h11.ProtocolError) as exc:
                self.rates[name].failed(f"{host}:{port}: {_error(exc)}")

        async with trio.open_nursery() as nursery:
            for name, (host, port) in self.settings.metrics.items():
                nursery.start_soon(one, name, host, port)
        self._put_rates()

    def _put_rates(self) -> None:
        nodes = {name: r.to_json() for name, r in sorted(self.rates.items())}
        serving = [r for r in self.rates.values() if r.commit_mean_ms is not None]
        events_s = sum(r.events_s for r in self.rates.values())
        busiest = max(serving, key=lambda r: r.commits_s, default=None)
        mean = busiest.commit_mean_ms if busiest else None
        if self.rates:
            self.history.add(time.time(), events_s, mean)
        self.sections.put(
            "rates",
            {
                "configured": bool(self.rates),
                "events_s": round(events_s, 1),
                "commit_mean_ms": None if mean is None else round(mean, 3),
                "commit_p99_ms": busiest.commit_p99_ms if busiest else None,
                "nodes": nodes,
                "history": list(self.history.points),
            },
        )

    # -- the operator's actions ---------------------------------------------------------

    async def switchover(self, to_node: Any) -> str:
        """`cluster switchover --to`; the pair is read again at once."""
        if not isinstance(to_node, str):
            raise ActionError('the body must be {"to": NODE}')
        try:
            lease = await self._thread(self._pair_limiter, request_switchover, self.site, to_node)
        except SiteError as exc:
            raise ActionError(str(exc)) from None
        except (StoreError, MirrorError) as exc:
            raise ActionError(str(exc), 503) from None
        self._poke_pair.set()
        log.warning("operator: switchover to %s requested (holder %s, epoch %d)", to_node, lease.holder, lease.epoch)
        return f"switchover to {to_node} requested (holder {lease.holder}, epoch {lease.epoch})"

    async def set_door_mode(self, door: Any, mode: Any) -> str:
        """`config set-door-mode`: a new configuration version, pushed to every panel by the node."""
        if not isinstance(door, int) or isinstance(door, bool) or not isinstance(mode, str):
            raise ActionError('the body must be {"door": N, "mode": "card|card_and_pin|locked|unlocked"}')
        try:
            op = PutDoor(door=Door(door=door, mode=DoorMode[mode.upper()]))
        except KeyError:
            raise ActionError(f"mode {mode!r}: one of {', '.join(m.name.lower() for m in DoorMode)}") from None
        except ValueError as exc:
            raise ActionError(str(exc)) from None

        def change() -> int:
            store = open_config_store(self._fleet_target())
            try:
                return store.change([op])
            finally:
                store.close()

        try:
            version = await self._thread(self._fleet_limiter, change)
        except (StoreError, SiteError, MirrorError) as exc:
            raise ActionError(str(exc), 503) from None
        log.warning("operator: door %d set to %s, configuration version %d", door, mode, version)
        await self._read_fleet()
        return f"door {door} set to {mode.lower()}: configuration version {version}"

    async def resync(self, panel_id: Any) -> str:
        """`config resync --panel`: the panel's node sends it its whole configuration again."""
        if not isinstance(panel_id, int) or isinstance(panel_id, bool) or not 0 < panel_id < 2**32:
            raise ActionError('the body must be {"panel_id": N}, N in 1..2**32-1')

        def request() -> int:
            store = open_config_store(self._fleet_target())
            try:
                return store.request_resync(panel_id)
            finally:
                store.close()

        try:
            await self._thread(self._fleet_limiter, request)
        except (StoreError, SiteError, MirrorError) as exc:
            raise ActionError(str(exc), 503) from None
        log.warning("operator: resync of panel %d requested", panel_id)
        return f"resync of panel {panel_id} requested: its node sends it a snapshot at its session"

    async def acknowledge(self, body: Any, *, by: str) -> str:
        """Record the operator's acknowledgement of the alarms named (or of every open one)."""
        if self.alarms is None:
            raise ActionError("the site's store has not been read yet", 503)
        keys: list[tuple[int, int, int, EventKind]] | None = None  # None: every open one
        if isinstance(body, dict) and body.get("all") is True:
            pass
        elif isinstance(body, dict) and isinstance(body.get("alarms"), list):
            try:
                keys = [
                    (int(a["id"]), int(a["panel_id"]), int(a["seq"]), EventKind[str(a["kind"])])
                    for a in body["alarms"]
                ]
            except (TypeError, KeyError, ValueError):
                raise ActionError(f"each alarm is {_ALARM_KEY}, as the alarms section lists it") from None
        else:
            raise ActionError(f'the body must be {{"alarms": [{_ALARM_KEY}, ...]}} or {{"all": true}}')

        def acknowledge() -> tuple[AlarmBook, int]:
            book = self.alarms  # the current one: a scan may have swapped it meanwhile
            assert book is not None
            named = [(a.id, a.panel_id, a.seq, a.kind) for a in book.open.values()] if keys is None else keys
            return book, book.acknowledge(named, by=by, now_us=_now_us())

        try:
            book, count = await self._thread(self._alarm_limiter, acknowledge)
        except StoreError as exc:
            raise ActionError(str(exc), 503) from None
        self._put_alarms(book)
        return f"{count} alarm{'s' if count != 1 else ''} acknowledged"
