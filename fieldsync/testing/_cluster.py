"""A scenario run driven by a test: the cluster handle the plugin's fixtures yield.

``ScenarioRun(driver=...)`` runs everything a scenario run does (the site, its PKI and
configuration, the fault proxies, nodes A and B as processes under a supervisor, the fleet
with journals) and, once every panel is online, hands the run to the driver instead of
playing a timeline. Here the driver waits for the test to end; meanwhile the test's body
takes steps (the scenario steps' own types, validated as a file's are) and waits for what it
expects. When the test ends the run goes on as after a timeline: every fault healed, the
backlog drained, the configuration converged, P1-P7 checked.
"""

from __future__ import annotations

import contextlib
import json
import keyword
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from ..harness import (
    CrashStep,
    KillStep,
    OutageStep,
    RestartStep,
    RunResult,
    Scenario,
    ScenarioError,
    ScenarioRun,
    StepBase,
    StopStep,
    SwitchoverStep,
)
from ..site import TomlDocument

if TYPE_CHECKING:
    from pathlib import Path

    from emulator import Fleet

    from ..harness import FaultHub
    from ..harness._clusters import ClusterBackend
    from ..site import Site
    from .plugin import _Setup

__all__ = ["Cluster", "PromiseBroken", "WaitTimedOut", "open_cluster"]

#: Steps after which a takeover is what a test waits for (``wait_takeover``).
_PROCESS_FAULTS = (KillStep, RestartStep, StopStep, CrashStep, OutageStep, SwitchoverStep)


class PromiseBroken(AssertionError):
    """The teardown's verdict: a promise broke (or the run never drained). The message is the
    scenario runner's text verdict, every promise with its detail, and the fault log."""


class WaitTimedOut(AssertionError):
    """A ``wait_*`` of the cluster did not see what it waits for within ``fieldsync_wait_timeout``."""


def _file_key(key: str) -> str:
    # ``for_`` in Python is ``for`` in a scenario file.
    stem = key.removesuffix("_")
    return stem if key.endswith("_") and keyword.iskeyword(stem) else key


class Cluster:
    """One test's cluster: ``await start(...)``, take steps, wait; checked at teardown.

    The steps are the scenario file's (docs/scenarios.md): ``do("kill", node="active")``,
    ``do("toxic", group="east", type="latency", attributes={"latency": 200}, for_="3s")``,
    each read into its step type and checked against the site as a ``[[timeline]]`` entry
    is, then applied to the run at once. ``kill_active``, ``switchover`` and the others are
    those steps by name.
    """

    def __init__(self, setup: _Setup, nursery: trio.Nursery, *, mirror: str | None) -> None:
        self._setup = setup
        self._nursery = nursery
        self._mirror = mirror
        #: The scenario ``start`` built (its site, cluster and groups); None before.
        self.scenario: Scenario | None = None
        self._data: dict[str, Any] = {}
        self._run: ScenarioRun | None = None
        self._steps: trio.Nursery | None = None
        self._ready = trio.Event()
        self._finish = trio.Event()
        self._done = trio.Event()
        self.result: RunResult | None = None
        #: The epoch when the last process fault (kill, stop, crash, outage, switchover) was taken.
        self._fault_epoch: int | None = None

    def __repr__(self) -> str:
        if self._run is None or self._run.cluster is None:
            return f"<fieldsync Cluster {self._setup.name!r} not started, port {self._setup.port}>"
        return f"<fieldsync Cluster {self._setup.name!r} active {self.active} epoch {self.epoch}, port {self.port}>"

    # -- what the test reads ------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._run is not None

    @property
    def run(self) -> ScenarioRun:
        """The harness's run (``fieldsync.harness.ScenarioRun``): the lower-level way in."""
        if self._run is None or not self._ready.is_set():
            raise RuntimeError("the cluster is not running yet: await start(...) first")
        return self._run

    @property
    def port(self) -> int:
        return self._setup.port

    @property
    def workdir(self) -> Path:
        """The run's directory: site.toml, pki/, site.db, nodes.log, report.json at the end."""
        return self._setup.workdir

    @property
    def fleet(self) -> Fleet:
        """The panels (``emulator.Fleet``), each with its journal of what it generated."""
        return self.run.fleet

    @property
    def proxies(self) -> FaultHub:
        """The fault proxies: one group per ``groups`` entry, and ``nodes``, the heartbeat link."""
        return self.run.hub

    @property
    def site(self) -> Site:
        return self.run.site

    @property
    def _backend(self) -> ClusterBackend:
        cluster = self.run.cluster
        assert cluster is not None, "the run starts its cluster before its driver"
        return cluster

    @property
    def active(self) -> str | None:
        """The node holding the lease (and the VIP) now; None while nobody does."""
        return self._backend.holder()

    @property
    def epoch(self) -> int:
        """The cluster's epoch (the fencing token), as its lease says."""
        return self._backend.epoch()

    def store_target(self) -> Path | str:
        """Where the site's events are now: the shared SQLite file, or the current primary's URL."""
        return self.run.store_target()

    # -- starting -----------------------------------------------------------------------------

    async def start(
        self,
        *,
        panels: int | None = None,
        site: dict[str, Any] | None = None,
        cluster: dict[str, Any] | None = None,
        groups: dict[str, str] | None = None,
        seed: int | None = None,
        drain_timeout: str | None = None,
    ) -> Cluster:
        """Bring up nodes A and B and the panels; returns once every panel is online.

        Args:
            panels: how many panels (``[site] panels``).
            site, cluster: the ``[site]`` and ``[cluster]`` tables of a scenario file, as a dict
                (docs/scenarios.md: ``{"rate": 10, "mode": "punch-out"}``, ``{"park": True}``).
            groups: panel groups behind fault proxies, name -> panels (``{"east": "1-5"}``).
            seed: seeds the workload and every random choice of the faults.
            drain_timeout: the teardown's bound for the backlog to drain (``"60s"``).

        The test's ``@pytest.mark.fieldsync(...)`` gives defaults for each; what is left out
        takes the scenario file's default.
        """
        if self._run is not None:
            raise RuntimeError("this cluster is already started (once per test)")
        given = {
            "panels": panels,
            "site": site,
            "cluster": cluster,
            "groups": groups,
            "seed": seed,
            "drain_timeout": drain_timeout,
        }
        options = {**self._setup.options, **{k: v for k, v in given.items() if v is not None}}
        unknown = sorted(set(options) - set(given))
        if unknown:
            raise TypeError(f"@pytest.mark.fieldsync: unknown option(s) {unknown}; start() takes {sorted(given)}")
        site_table = dict(options.get("site") or {})
        if options.get("panels") is not None:
            site_table["panels"] = options["panels"]
        if options.get("groups"):
            site_table["groups"] = [{"name": n, "panels": p} for n, p in options["groups"].items()]
        cluster_table = dict(options.get("cluster") or {})
        if self._mirror is not None:
            cluster_table["mirror"] = cluster_table.get("mirror") or self._mirror
        elif cluster_table.get("mirror") is not None:
            # Where PostgreSQL is missing that fixture skips in the setup phase, with the reason
            # (a skip from inside the trio test would lose it: pytest-trio drops the message).
            raise ScenarioError(
                "start(): cluster.mirror: mirrored storage is the fieldsync_mirrored_cluster fixture's "
                "(it skips, naming what is missing, where PostgreSQL cannot run)",
                key="cluster.mirror",
            )
        data: dict[str, Any] = {"name": self._setup.name, "site": site_table, "cluster": cluster_table}
        for key in ("seed", "drain_timeout"):
            if options.get(key) is not None:
                data[key] = options[key]
        self.scenario = TomlDocument(where="start()", data=data, lines={}, error=ScenarioError).validate(Scenario)
        self._data = data
        self._run = ScenarioRun(
            self.scenario,
            workdir=self._setup.workdir,
            port=self._setup.port,
            say=_say,
            driver=self._drive,
        )
        self._nursery.start_soon(self._play, self._run)
        # The run's own bounds hold its start-up (300 s for the cluster, 300 s for the panels);
        # a run that fails raises in the fixture's nursery, which cancels this wait and the test.
        await self._ready.wait()
        return self

    async def _play(self, run: ScenarioRun) -> None:
        try:
            self.result = await run.run()
        finally:
            self._done.set()

    async def _drive(self, run: ScenarioRun, steps: trio.Nursery) -> None:
        self._steps = steps
        self._ready.set()
        await self._finish.wait()

    # -- steps --------------------------------------------------------------------------------

    def step(self, action: str, **keys: Any) -> StepBase:
        """``action`` with ``keys`` read into its step type and checked against this cluster's
        site, as a ``[[timeline]]`` entry of a scenario file is (times with a unit: ``"3s"``).

        Raises:
            ScenarioError: naming the key at fault, e.g. ``do('kill'): node: 'C' is not one of ...``.
        """
        if self.scenario is None:
            raise RuntimeError("the cluster is not started: await start(...) first")
        entry = {"at": "0s", "do": action, **{_file_key(k): v for k, v in keys.items()}}
        where = f"do({action!r})"
        try:
            scenario = TomlDocument(
                where=where, data={**self._data, "timeline": [entry]}, lines={}, error=ScenarioError
            ).validate(Scenario)
        except ScenarioError as exc:
            raise ScenarioError(str(exc).replace(f"{where}: timeline[0].", f"{where}: ", 1), key=exc.key) from None
        (step,) = scenario.timeline
        problem = step.backend_problem(self.run.backend)
        if problem is None and step.needs_mirror and scenario.cluster.mirror is None:
            problem = "needs mirrored storage (the fieldsync_mirrored_cluster fixture)"
        if problem is not None:
            raise ScenarioError(f"{where}: {problem}")
        return step

    async def do(self, action: str, **keys: Any) -> None:
        """Take a scenario step now (``do("down", group="east")``); what outlasts it (a toxic's
        ``for``, an outage) goes on in the background until the test ends."""
        await self.apply(self.step(action, **keys))

    async def apply(self, step: StepBase) -> None:
        """Take a step built by ``step()`` (or a step type of ``fieldsync.harness``) now."""
        run = self.run
        assert self._steps is not None, "the driver has the steps' nursery before it is ready"
        before = None
        if isinstance(step, _PROCESS_FAULTS):
            # The epoch a takeover must pass is the one when the fault lands: after the step's
            # waits for a holder (its ``active_for``, "the active" while none holds the lease).
            node = getattr(step, "node", None)
            if node in ("active", "standby"):
                await self._backend.resolve(node)

            def before() -> None:
                self._fault_epoch = self.epoch

        await run.take(step, self._steps, before=before)

    async def kill_active(self) -> str:
        """``kill -9`` of the active node's process; returns its name (the supervisor restarts
        it as a standby after ``[cluster] restart_delay``)."""
        return await self.kill("active")

    async def kill(self, node: str = "active") -> str:
        """``kill -9`` of ``node`` (``active``, ``standby``, ``A`` or ``B``); returns its name."""
        step = self.step("kill", node=node)
        assert isinstance(step, KillStep)
        name = await self._backend.resolve(step.node)  # waits for a holder first
        self._fault_epoch = self.epoch
        return await KillStep.kill(self.run, name)

    async def stop(self, node: str = "active") -> str:
        """SIGSTOP: ``node`` hangs (a zombie) until ``cont``; returns its name."""
        name = await self._backend.resolve(node)
        await self.do("stop", node=name)
        return name

    async def cont(self, node: str) -> None:
        """SIGCONT: a node ``stop`` paused carries on."""
        await self.do("cont", node=node)

    async def switchover(self, to: str | None = None) -> str:
        """An operator's switchover to ``to`` (default: the standby); returns its name."""
        target = to or await self._backend.resolve("standby")
        await self.do("switchover", to=target)
        return target

    # -- waiting ------------------------------------------------------------------------------

    async def _until(self, what: str, predicate: Callable[[], bool], state: Callable[[], str]) -> None:
        # The run's facts live in other processes (the lease in the store) and in the panels'
        # counters: polled, bounded by the ini option ``fieldsync_wait_timeout``.
        with trio.move_on_after(self._setup.wait_s) as scope:
            while not predicate():  # noqa: ASYNC110
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise WaitTimedOut(f"{what}: not within {self._setup.wait_s:g} s ({state()}); see {self.workdir}")

    def _state(self) -> str:
        stats = self.fleet.statistics()
        return (
            f"active {self.active}, epoch {self.epoch}, {stats.connected}/{stats.panels} panels connected, "
            f"{stats.acked} acknowledged, {stats.buffered_events} buffered"
        )

    async def wait_acked(self, events: int = 1) -> int:
        """Wait until the panels have had ``events`` more events acknowledged than when called
        (under load: the workload swipes at ``[site] rate``); returns the fleet's total."""
        start = self.fleet.statistics().acked
        await self._until(f"wait_acked({events})", lambda: self.fleet.statistics().acked >= start + events, self._state)
        return self.fleet.statistics().acked

    async def wait_connected(self) -> None:
        """Wait until every panel is in session with a node."""
        fleet = self.fleet
        await self._until("wait_connected()", lambda: all(p.is_connected for p in fleet.panels.values()), self._state)

    async def wait_takeover(self) -> str:
        """After a kill, stop, crash, outage or switchover: wait until a node holds the lease under
        a newer epoch than before that fault and every panel is in session at that epoch;
        returns the node."""
        before = self._fault_epoch
        if before is None:
            raise RuntimeError("wait_takeover: no kill, stop, crash, outage or switchover was taken to take over from")
        fleet = self.fleet

        def taken_over() -> bool:
            epoch = self.epoch
            if self.active is None or epoch <= before:
                return False
            return all(p.is_connected and p.statistics().epoch >= epoch for p in fleet.panels.values())

        await self._until(f"wait_takeover() from epoch {before}", taken_over, self._state)
        active = self.active
        assert active is not None
        return active

    async def wait_drained(self) -> None:
        """Wait until no panel has anything left to upload (nothing buffered)."""
        fleet = self.fleet
        await self._until("wait_drained()", lambda: not any(len(p.buffer) for p in fleet.panels.values()), self._state)

    # -- the end ------------------------------------------------------------------------------

    async def finish(self) -> RunResult | None:
        """End the run as a timeline's end does: heal, drain, converge, check (the fixture's
        teardown calls it). Returns the verdict; None if the cluster never started."""
        if self._run is None:
            return None
        self._finish.set()
        await self._done.wait()
        result = self.result
        assert result is not None, "the run ended with its verdict or raised in the fixture's nursery"
        (self.workdir / "report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return result


def _say(text: str) -> None:
    # pytest shows a failing test's captured output: the run's log, fault by fault.
    print(text, file=sys.stdout)


@contextlib.asynccontextmanager
async def open_cluster(setup: _Setup, *, mirror: str | None) -> AsyncIterator[Cluster]:
    """A cluster for one test: the run in a nursery of the fixture; at the end its verdict,
    and ``PromiseBroken`` (with the runner's text verdict) if a promise broke."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(setup, nursery, mirror=mirror)
        yield cluster
        result = await cluster.finish()
    if result is not None and not (result.ok and result.drained):
        raise PromiseBroken(f"fieldsync: the promises checked at teardown\n{result.text()}\nwork in {result.workdir}")
