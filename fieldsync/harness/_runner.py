"""Run a scenario: a real two-node cluster, a fleet, a fault timeline, then the verdict.

The nodes are OS processes (``fieldsync node``) under a supervisor; the panels
run in this process with journals (what they generated and what was
acknowledged); panels of a ``[[site.groups]]`` group reach the cluster through
fault proxies, so network faults hit a whole group at once. At ``duration``
the workload stops and every fault is healed; the run waits for the backlog to
drain and the configuration to converge (at most ``drain_timeout``) and then
checks the promises against the store. Process faults touch only the node
processes this run started, by their pid.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from emulator import Fleet, PanelSettings, Workload

from ._checker import RPO, Report, check
from ._clusters import ClusterBackend, InProcessCluster, ProcessCluster, until, wait_noted
from ._fault_api import serve_api
from ._lab_cluster import LabCluster, run_lab_spec, sockets_in
from ._lab_cluster import lab_name as new_lab_name
from ._proxy import FaultHub
from ._rogue import RogueOutcome
from ._run_setup import RunSetup
from ._sampling import Sample, Sampler
from ._scenario import Scenario, ScenarioError
from ._steps import FaultWindow, StepBase

__all__ = [
    "Driver",
    "RunResult",
    "ScenarioRun",
    "run_scenario",
    "write_reports",
]


#: What plays a run in place of its timeline (``ScenarioRun(driver=...)``): the run, and the
#: nursery for work that outlasts a step.
Driver = Callable[["ScenarioRun", trio.Nursery], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class RunResult:
    scenario: Scenario
    seed: int
    report: Report
    samples: list[Sample]
    log: list[tuple[float, str]]
    windows: list[FaultWindow]
    workdir: Path
    wall_s: float
    drained: bool
    node_starts: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.report.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "file": str(self.scenario.path) if self.scenario.path else None,
            "seed": self.seed,
            "ok": self.ok,
            "wall_s": round(self.wall_s, 2),
            "drained": self.drained,
            "promises": {name: {"held": ok, "detail": detail} for name, (ok, detail) in self.report.promises().items()},
            "totals": self.report.totals(),
            "store_epoch": self.report.store_epoch,
            "server_config_version": self.report.server_config_version,
            "server_config_digest": self.report.server_config_digest.hex(),
            "node_starts": self.node_starts,
            "faults": [{"t": round(t, 3), "what": what} for t, what in self.log],
            "windows": [dataclasses.asdict(w) for w in self.windows],
            "panels": [{**dataclasses.asdict(v), "config_digest": v.config_digest.hex()} for v in self.report.panels],
        }

    def text(self) -> str:
        t = self.report.totals()
        lines = [
            f"scenario {self.scenario.name!r} seed {self.seed}: {'every promise held' if self.ok else 'PROMISE BROKEN'}"
            f" ({self.wall_s:.1f} s, {len(self.report.panels)} panels, store epoch {self.report.store_epoch}, "
            f"config version {self.report.server_config_version})",
            f"  events generated {t['generated']} = stored {t['generated_stored']} + buffered {t['buffered']} "
            f"+ declared dropped {t['declared_lost']} + lost with power {t['lost_with_power']} "
            f"+ acknowledged but missing {t['lost']} + unknown {t['unknown']}"
            f"{'' if all(p.accounted() for p in self.report.panels) else '  (DOES NOT ADD UP)'}",
            f"  acknowledged {t['acked']}, rows in the store {t['stored']}, refused {t['refused']}",
        ]
        if not self.drained:
            lines.append("  the backlog did not drain within drain_timeout")
        for name, (ok, detail) in self.report.promises().items():
            word = "counted" if name == RPO else "held" if ok else "BROKEN"
            lines.append(f"  {name:<34} {word}  ({detail})")
        lines.append("  faults:")
        lines.extend(f"    {t_:7.2f}s  {what}" for t_, what in self.log)
        return "\n".join(lines)


class ScenarioRun:
    """One run of a scenario with one seed. ``await run()`` inside trio.

    Args:
        in_process: the fast tier: one in-process node instead of two node
            processes (run it under a MockClock for virtual time).
        backend: ``process`` or ``netns`` (the lab's hosts, root); None: the scenario's
            ``[cluster] backend``.
        lab_name: the netns backend's lab name (namespaces ``fsl-<name>-*``); None: a fresh one.
        driver: plays the run in place of the timeline (the pytest plugin: a test's own body).
            Awaited once every panel is online, with the nursery for what outlasts a step
            (cancelled when it returns, as at ``duration``); the heal, the drain and the
            verdict follow. None: the scenario's timeline, then ``duration``.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int | None = None,
        workdir: Path | None = None,
        port: int = 30002,
        api_port: int | None = None,
        say: Callable[[str], None] = lambda text: None,
        node_args: tuple[str, ...] = (),
        in_process: bool = False,
        flaws: frozenset[str] = frozenset(),
        backend: str | None = None,
        lab_name: str | None = None,
        driver: Driver | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fieldsync-scenario-"))
        self.port = port
        self.api_port = api_port
        self.say = say
        self.node_args = node_args
        self.in_process = in_process
        #: A deliberately broken engine build (``_flaws``): for the checker's negative controls.
        self.flaws = flaws
        self.driver = driver
        self.rng = random.Random(self.seed)
        self.log: list[tuple[float, str]] = []
        self.windows: list[FaultWindow] = []
        self.samples: list[Sample] = []
        self.hub = FaultHub(seed=self.seed)
        self.cluster: ClusterBackend | None = None
        #: The open window of each toxic a step added, by (group, toxic name).
        self.toxic_windows: dict[tuple[str, str], FaultWindow] = {}
        #: What each rogue peer of the run got (``RogueStep``), for P6 and P7.
        self.rogues: list[RogueOutcome] = []
        self._t0 = 0.0
        self._next_card = 100_000
        self.backend = "in-process" if in_process else backend or scenario.cluster.backend
        self.lab_spec = (
            run_lab_spec(scenario, directory=self.workdir, port=port, name=lab_name or new_lab_name())
            if self.backend == "netns"
            else None
        )
        self._setup = RunSetup(
            scenario,
            workdir=self.workdir,
            port=self.port,
            in_process=self.in_process,
            hub=self.hub,
            hosts=self.lab_spec.pair_hosts() if self.lab_spec is not None else None,
            lab=self.lab_spec,
        )
        self._sampler = Sampler(self.samples)

    # -- the run --------------------------------------------------------------------------

    @property
    def vip_address(self) -> tuple[str, int]:
        """Where panels punch out to: the VIP on the run's port."""
        return (self.site.vip, self.port)

    def now(self) -> float:
        return trio.current_time() - self._t0

    def note(self, what: str) -> None:
        self.log.append((self.now(), what))
        self.say(f"{self.now():6.2f}s  {what}")

    async def take(self, step: StepBase, nursery: trio.Nursery, *, before: Callable[[], None] | None = None) -> None:
        """Take ``step`` now, once the active has held the lease for the step's ``active_for``
        (``wait_noted``); ``before`` is called between the wait and the step."""
        if step.active_for > 0:
            cluster = self.cluster
            assert cluster is not None, "steps run while the cluster does"

            def settled() -> bool:
                since = cluster.active_since()
                return since is not None and trio.current_time() - since >= step.active_for

            await wait_noted(self, settled, f"the active to have held the lease {step.active_for:g}s")
        if before is not None:
            before()
        await step.apply(self, nursery)

    # What the steps use (``_steps``).

    def open_window(self, label: str) -> FaultWindow:
        """A fault window from now on; its end is set when the fault heals."""
        window = FaultWindow(self.now(), None, label)
        self.windows.append(window)
        return window

    def close_windows(self, label: str) -> None:
        for w in self.windows:
            if w.end is None and w.label == label:
                w.end = self.now()

    @property
    def store_dir(self) -> Path | None:
        """The store's size-limited filesystem (``[site] store_size``), while it is mounted."""
        return self._setup.mounted

    def new_card(self) -> int:
        """A card number no cardholder has had in this run."""
        self._next_card += 1
        return self._next_card

    def store_target(self) -> Path | str:
        """Where the site's events are now: the shared store, or the current primary's database."""
        return self._setup.store_target(self.site)

    async def in_config_thread(self, fn: Callable[[], Any]) -> Any:
        """``fn`` (which uses ``self.config``) in a worker thread, one at a time."""
        return await trio.to_thread.run_sync(fn, limiter=self._config_limiter)

    async def run(self) -> RunResult:
        started = time.monotonic()
        scenario = self.scenario
        if self.in_process and "crash-on-bad-frame" in self.flaws:
            raise ScenarioError("the flaw crash-on-bad-frame ends its process: it needs node processes (not --fast)")
        if self.backend not in ("process", "netns", "in-process"):
            raise ScenarioError(f"backend {self.backend!r}: process or netns")
        needs_mirror = [s.describe() for s in scenario.timeline if s.needs_mirror]
        if needs_mirror and scenario.cluster.mirror is None:
            raise ScenarioError(f"{scenario.name}: {', '.join(needs_mirror)} needs mirrored storage ([cluster] mirror)")
        if scenario.cluster.mirror is not None and self.backend == "in-process":
            raise ScenarioError(
                f"{scenario.name}: [cluster] mirror needs the two node processes, each on its own PostgreSQL "
                "(the process or netns backend); run it without --fast"
            )
        if scenario.cluster.mirror is not None and scenario.site.store_size:
            raise ScenarioError(
                f"{scenario.name}: [site] store_size is the shared SQLite store's disk; not with a mirror"
            )
        if self.backend == "netns" and not scenario.site.tls:
            raise ScenarioError(
                f"{scenario.name}: [site] tls = false on the netns backend: plain TCP runs on loopback only, "
                "and the lab's hosts have addresses of their own (198.18.0.0/16)"
            )
        for step in scenario.timeline:
            problem = step.backend_problem(self.backend)
            if problem is not None:
                raise ScenarioError(f"{scenario.name}: {step.describe()} at {step.at:g}s: {problem}")
        if self.in_process and scenario.needs_two_nodes:
            raise ScenarioError(
                f"{scenario.name}: SIGSTOP/SIGCONT, switchover and the heartbeat link (group 'nodes') need "
                "the two node processes; run it without --fast"
            )
        try:
            site_path, self.site, settings, config = self._setup.prepare()
        except BaseException:
            self._setup.unmount_store()
            self._setup.stop_databases()
            raise
        self.config = config
        # One connection, one thread at a time (a storm and a step may overlap).
        self._config_limiter = trio.CapacityLimiter(1)
        self.say(f"scenario {scenario.name!r}, seed {self.seed}, work in {self.workdir}")
        log_fd = os.open(self.workdir / "nodes.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        drained = False
        try:
            with contextlib.ExitStack() as panel_host:
                async with trio.open_nursery() as nursery:
                    if self.lab_spec is not None:
                        # The lab first: then every proxy and panel socket of the run is
                        # opened in its panel host.
                        self.cluster = LabCluster(self, site_path, self.lab_spec)
                        self.say(f"netns backend: lab {self.lab_spec.name} (namespaces fsl-{self.lab_spec.name}-*)")
                        await self.cluster.start(nursery)
                        panel_host.enter_context(sockets_in(self.lab_spec.namespace("panels")))
                    drained = await self._run_in(nursery, site_path, settings, config, log_fd)
        finally:
            os.close(log_fd)
            config.close()
            self._sampler.close()
            self._setup.unmount_store()
            self._setup.stop_databases()
        return RunResult(
            scenario=scenario,
            seed=self.seed,
            report=self.report,
            samples=self.samples,
            log=self.log,
            windows=self.windows,
            workdir=self.workdir,
            wall_s=time.monotonic() - started,
            drained=drained,
            node_starts=self.cluster.starts() if self.cluster is not None else {},
        )

    async def _run_in(
        self, nursery: trio.Nursery, site_path: Path, settings: list[PanelSettings], config: object, log_fd: int
    ) -> bool:
        """The run inside its nursery: proxies, cluster, fleet, timeline, drain, verdict."""
        scenario = self.scenario
        await nursery.start(self.hub.run)
        if self.api_port is not None:
            await nursery.start(serve_api, self.hub, "127.0.0.1", self.api_port)
            self.say(f"fault API on http://127.0.0.1:{self.api_port}/proxies")
        settings = await self._setup.make_proxies(settings, self.site.vip)
        if self._setup.mirror is not None and self.lab_spec is None:
            await self._setup.make_replication_proxy()
        if self.cluster is None and not self.in_process:
            await self._setup.make_heartbeat_proxies(self.site)
        self.fleet = Fleet(settings, Workload(rate=scenario.site.rate), seed=self.seed, journal=True)
        if self.cluster is None:
            self.cluster = InProcessCluster(self) if self.in_process else ProcessCluster(self, site_path, log_fd)
            await self.cluster.start(nursery)
        # Generous bounds: under a virtual clock a busy machine makes them pass fast.
        with trio.fail_after(300):
            await until(lambda: self._holder() is not None)
        fleet_scope = trio.CancelScope()
        fleet_done = trio.Event()
        await nursery.start(self._run_fleet, fleet_scope, fleet_done)
        with trio.move_on_after(300):
            await self.fleet.wait_connected()
        self._check_all_connected()
        self._t0 = trio.current_time()
        self.note(f"{len(self.fleet)} panels online, node {self._holder()} holds the VIP")
        nursery.start_soon(self._sampler.run, self)
        async with trio.open_nursery() as steps:
            if self.driver is not None:
                await self.driver(self, steps)
            else:
                for step in scenario.timeline:
                    await trio.sleep_until(self._t0 + step.at)
                    await self.take(step, steps)
                await trio.sleep_until(self._t0 + scenario.duration)
            steps.cancel_scope.cancel()
        drained = await self._heal_and_drain()
        # The check needs a still world: panels that go on deciding and uploading
        # while it reads would count a row committed between two of its reads as
        # a gap (seen in CI). The fleet stops first; the store is read as one snapshot.
        fleet_scope.cancel()
        await fleet_done.wait()
        panels = list(self.fleet.panels.values())
        generated = [len(p.journal or ()) for p in panels]
        verdict = functools.partial(
            check, rogues=self.rogues, crashes=self.cluster.crashes(), mirror=scenario.cluster.mirror
        )
        target = await trio.to_thread.run_sync(self.store_target)
        self.report = await trio.to_thread.run_sync(verdict, target, panels)
        if [v.generated for v in self.report.panels] != generated:
            raise ScenarioError(f"{scenario.name}: a panel generated events while the checker read it")
        nursery.cancel_scope.cancel()
        return drained

    async def _run_fleet(
        self,
        scope: trio.CancelScope,
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with scope:
                await self.fleet.run(task_status=task_status)
        finally:
            done.set()

    def _check_all_connected(self) -> None:
        """After the start-up bound: every panel has a session, or an error that says who has not and why."""
        away = [panel for panel in self.fleet.panels.values() if not panel.is_connected]
        if not away:
            return
        errors = collections.Counter(panel.last_error or "no error recorded" for panel in away)
        common = "; ".join(f"{n}x {e}" for e, n in errors.most_common(3))
        ids = ",".join(str(p.settings.panel_id) for p in away[:20]) + ("..." if len(away) > 20 else "")
        raise ScenarioError(
            f"{self.scenario.name}: {len(away)} of {len(self.fleet)} panels never connected at start-up "
            f"(panels {ids}; last errors: {common}); see {self.workdir / 'nodes.log'}"
        )

    def _holder(self) -> str | None:
        return self.cluster.holder() if self.cluster is not None else None

    # -- the end --------------------------------------------------------------------------

    async def _heal_and_drain(self) -> bool:
        self.note("timeline over: workload stopped, every fault healed")
        self.fleet.stop_workload()
        await self.hub.reset()
        for w in self.windows:
            if w.end is None:
                w.end = self.now()
        assert self.cluster is not None
        if isinstance(self.cluster, LabCluster):
            await self.cluster.heal_hosts()
        await self.cluster.all_up(restart=True)
        with trio.move_on_after(self.scenario.drain_timeout) as scope:
            await until(lambda: self._holder() is not None)
            await self.fleet.wait_connected()
            await self.fleet.wait_drained()
            version = await self.in_config_thread(lambda: self.config.version)
            await until(lambda: all(pn.config.version == version for pn in self.fleet.panels.values()))
        if scope.cancelled_caught:
            self.note(f"drain incomplete after {self.scenario.drain_timeout:g}s")
            return False
        self.note("drained: every event acknowledged, every panel at the latest configuration")
        return True


def run_scenario(scenario: Scenario, **kwargs: Any) -> RunResult:
    """Run a scenario to its verdict (blocking); see ``ScenarioRun`` for the arguments."""
    run = ScenarioRun(scenario, **kwargs)
    return trio.run(run.run)


def write_reports(result: RunResult, *, json_path: Path | None = None, png_path: Path | None = None) -> list[Path]:
    """The JSON report and the PNG timeline (in the run's workdir unless paths are given)."""
    from ._report import plot_timeline

    json_path = json_path or result.workdir / "report.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    png_path = png_path or result.workdir / "timeline.png"
    plot_timeline(result, png_path)
    return [json_path, png_path]
