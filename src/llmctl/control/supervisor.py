"""The supervisor: keeps one runner per instance by name and does the fleet-wide work.

Runners (llmctl.control.runner) own each instance's process and state; the supervisor adopts what a previous
supervisor left, checks the memory budget before anything starts, samples memory, persists the
fleet, and answers the control API: up, down, restart, wait and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from llmctl.backends import safe_estimate, safe_pool_estimate
from llmctl.control import state, statusdoc
from llmctl.control.adoption import adopt_recorded
from llmctl.control.client import writable_fix
from llmctl.control.demand import Demand
from llmctl.control.gatewayproc import GatewayProcess
from llmctl.control.runner import Runner, Services
from llmctl.control.runners import describe_runner, new_runner
from llmctl.control.sampler import Sampler
from llmctl.control.states import PENDING, RUNNING, WANTED_RUNNING, State
from llmctl.errors import ConfigError, SupervisorError
from llmctl.logs.hub import LogHub
from llmctl.memory.budget import Candidate, check_budget
from llmctl.memory.measure import IS_MACOS, macos_wired_limit, own_rss, system_summary, total_memory
from llmctl.memory.pools import HOST_POOL, NVML, add_pools, gpu_budgets, gpu_pool
from llmctl.memory.wired import share_env, shares_on, system_limit, wired_shares
from llmctl.spec import Config, GatewaySpec, InstanceSpec
from llmctl.system.files import write_problem
from llmctl.system.http import HttpClient

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from llmctl.paths import StatePaths

log = logging.getLogger("llmctl.control.supervisor")


class Supervisor:
    def __init__(self, paths: StatePaths, *, environ: dict[str, str] | None = None) -> None:
        self.paths = paths
        self.runners: dict[str, Runner] = {}
        self.config: Config | None = None
        self.config_path: str | None = None
        self.memory_budget: int | None = None
        self.gpu_memory_budget: int | float | None = None
        self.started_mono = time.monotonic()
        self.shutdown_requested = asyncio.Event()
        self.requests: dict[str, int] = {}
        self.warnings: list[str] = []  # shown by `status`, not only written to supervisor.log
        self.extra_locks: list[Any] = []  # a lock file made again after the state folder was deleted
        self.services = Services(paths, HttpClient(), LogHub(paths), dict(os.environ if environ is None else environ))
        self.services.on_change = self._changed
        self.services.on_progress = self._wake_waiters
        self.services.extra_env = self._wired_share
        self._change = asyncio.Event()
        self.sampler = Sampler(lambda: self.runners.values())
        self.demand = Demand(self, lambda: self.gateways.spec)
        # The data plane runs as a process of its own; this is the supervisor's side of it.
        self.gateways = GatewayProcess(paths, self.services.environ, self.runners, self.demand)
        self.gateways.on_record = self.save
        self.adopting = False  # while true, runners' changes are not persisted one by one
        self._config_dict: tuple[Config | None, dict[str, Any]] = (None, {})
        self._saved: tuple[Any, ...] | None = None  # what state.json holds now, as last written
        self.gateway_resume: asyncio.Future[None] | None = None  # adoption serving the gateway again
        # Why the state folder cannot be written: from the last failed save, and from the last look.
        self._save_problem: str | None = None
        self._folder_problem: str | None = None

    async def __aenter__(self) -> Supervisor:
        self.services.hub.start()
        await adopt_recorded(self)
        self._sampler_task = asyncio.ensure_future(self.sampler.run_forever())
        self._expiry_task = asyncio.ensure_future(self.demand.expire_idle())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._sampler_task.cancel()
        self._expiry_task.cancel()
        self.demand.close()
        await self.close()

    async def close(self) -> None:
        await self.set_gateway(None)  # first: no request may start an instance while they stop
        await asyncio.gather(*(runner.close() for runner in self.runners.values()))
        self.save()
        await self.services.hub.stop()

    async def shutdown(self) -> None:
        await self.stop([])
        self.shutdown_requested.set()

    def learn_settings(self, config: dict[str, Any]) -> None:
        self.config_path = config.get("path") if isinstance(config.get("path"), str) else self.config_path
        binaries = config.get("binaries")
        self.services.binaries = dict(binaries) if isinstance(binaries, dict) else {}
        budget = config.get("memory_budget")
        self.memory_budget = budget if isinstance(budget, int) else None
        gpu_budget = config.get("gpu_memory_budget")
        self.gpu_memory_budget = gpu_budget if isinstance(gpu_budget, (int, float)) else None
        max_bytes, backups = config.get("log_max_bytes"), config.get("log_backups")
        if isinstance(max_bytes, int) and isinstance(backups, int):
            self.services.hub.set_limits(max_bytes, backups)

    # -- operations the control API exposes ---------------------------------------------

    def _load(self, config: Config) -> None:
        running = [name for name, runner in self.runners.items() if runner.state in WANTED_RUNNING]
        if self.config_path and self.config_path != config.path and running:
            raise ConfigError(
                f"this state folder's supervisor serves {self.config_path} ({', '.join(running)} running); "
                "run `llmctl down` first, or use another $LLMCTL_STATE_DIR for a second config"
            )
        self.config = config
        self.learn_settings(self._settings())
        for name in [name for name, runner in self.runners.items() if name not in config.names]:
            if self.runners[name].state not in WANTED_RUNNING:  # gone from the config and not running: forget it
                self.runners.pop(name).forget()

    def runner_for(self, spec: InstanceSpec) -> Runner:
        existing = self.runners.get(spec.name)
        if existing is not None and existing.spec.external == spec.external:
            existing.respec(spec)  # a stopped one takes the new config; a running one keeps its own
        if existing is not None and existing.spec.external != spec.external and existing.state is State.STOPPED:
            self.runners.pop(spec.name).forget()  # now attached instead of started, or the other way round
        if spec.name not in self.runners:
            self.runners[spec.name] = new_runner(spec, self.services)
        return self.runners[spec.name]

    async def up(self, config: Config, names: list[str], force: bool = False) -> dict[str, Any]:
        self.refuse_if_unwritable()
        self._load(config)
        selected = config.select(names)
        actions: dict[str, str] = {}
        for spec in selected:
            runner = self.runners.get(spec.name)
            running = runner is not None and runner.state in WANTED_RUNNING
            if running:
                actions[spec.name] = "running" if runner.spec == spec else "recreated"  # type: ignore[union-attr]
            else:  # an on-demand instance waits for its first request, unless named
                actions[spec.name] = "on demand" if spec.on_demand and not names else "starting"
        for spec in selected:  # a failed one the gateway would refuse: back to standby, so its next request starts it
            runner = self.runners.get(spec.name)
            if actions[spec.name] == "on demand" and runner is not None and runner.state is State.FAILED:
                await runner.request("stop", f"up: back to standby after {runner.last_error or 'a failure'}")
        to_start = [spec for spec in selected if actions[spec.name] in ("starting", "recreated")]
        if not force:
            self._check_budget(to_start)  # before anything starts: all or nothing
        for spec in selected:
            if spec.name not in self.runners:
                self.runner_for(spec)  # known before the gateway's snapshot, so it routes to it
        await self.set_gateway(config.gateway)
        for spec in to_start:
            reason = "config changed: recreating" if actions[spec.name] == "recreated" else "up"
            current = self.runners.get(spec.name)
            if current is not None and current.spec.external != spec.external:
                await current.request("stop", reason)  # started <-> attached: another kind of runner
            await self.runner_for(spec).request("start", reason, spec)
        for spec in selected:
            self.runner_for(spec)  # known, so the gateway can start it and `status` shows it
        self.gateways.publish_all()
        self.save()
        return {"actions": actions}

    async def set_gateway(self, spec: GatewaySpec | None) -> None:
        """Serve the gateway with these settings (None: no gateway); ConfigError when it cannot."""
        await self.gateways.ensure(spec)

    def _wired_share(self, spec: InstanceSpec) -> dict[str, str]:
        """An MLX server's share of the GPU wired limit (llmctl.memory.wired), fixed when it starts:
        counted over every MLX instance of the config, on-demand ones too, so the shares never add up
        to more than the limit however many start later."""
        if spec.backend != "mlx" or not shares_on(spec.wired_shares, IS_MACOS):
            return {}
        specs = [s for s in (self.config.instances if self.config else ()) if s.backend == "mlx"] or [spec]
        needs = {}
        for other in specs:
            runner = self.runners.get(other.name)
            peak = runner.peak_pools.get(HOST_POOL, 0) if runner else 0
            needs[other.name] = max(safe_estimate(other) or 0, peak)
        shares = wired_shares(needs, system_limit(macos_wired_limit(), total_memory()))
        return share_env(shares.get(spec.name))

    def sample(self, runners: Iterable[Runner]) -> None:
        """Measure these instances now (for an admission decision)."""
        self.sampler.sample(list(runners))

    def publish(self, runner: Runner) -> None:
        """Tell the gateway what changed about this instance."""
        self.gateways.publish(runner)

    async def changed(self, timeout: float) -> None:
        """Return at the next state change of any instance, or after `timeout`."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._change.wait(), timeout)

    async def stop(self, names: list[str], reason: str = "down") -> dict[str, Any]:
        targets = self._select(names)
        stopped = [runner.name for runner in targets if runner.state is not State.STOPPED]
        await asyncio.gather(*(runner.request("stop", reason) for runner in targets))
        return {"stopped": stopped}

    async def restart(self, names: list[str], config: Config | None = None) -> dict[str, Any]:
        """Stop and start again, with the spec from the config when one is given."""
        self.refuse_if_unwritable()
        if config is not None:
            self._load(config)
            for name in names or config.names:
                self.runner_for(config.instance(name))
        targets = self._select(names)
        specs = {
            runner.name: config.instance(runner.name) if config and runner.name in config.names else None
            for runner in targets
        }
        await asyncio.gather(*(runner.request("restart", "restart", specs[runner.name]) for runner in targets))
        return {"actions": {runner.name: "restarting" for runner in targets}}

    async def wait(
        self, names: list[str], timeout: float | None, progress: Callable[[list[dict[str, Any]]], Any] | None = None
    ) -> dict[str, Any]:
        """Return when every named instance has settled (its outcome is not pending), or at `timeout`."""
        targets = self._select(names)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            change = self._change
            instances = [describe_runner(runner) for runner in targets]
            if progress is not None:
                await progress(instances)
            if PENDING not in statusdoc.outcomes(instances):
                return {"timed_out": False, "instances": instances}
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return {"timed_out": True, "instances": instances}
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(change.wait(), remaining)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        self.sampler.refresh_stale()
        instances = [describe_runner(runner) for runner in self.runners.values()]
        supervisor = {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_mono, 3),
            "config": self.config_path,
            "state_dir": str(self.paths.root),
            "memory_rss_bytes": own_rss(),
            "log_hub_pid": self.services.hub.handle.pid if self.services.hub.handle else None,
            "requests": dict(self.requests),
            "warnings": list(self.warnings),
            "state_error": self.state_error(),
        }
        gateway = self.gateways.status()
        system = {**system_summary(instances, self.memory_budget), "pools": self.pools()}
        return statusdoc.document(supervisor, system, instances, gateway)

    def pools(self) -> list[dict[str, Any]]:
        """Each memory pool: what the instances measure in it, its budget, the device's size and use."""
        budgets = self.demand.budgets()
        devices = {gpu_pool(device.index): device for device in NVML.devices()}
        used: dict[str, int] = {}
        for runner in self.runners.values():
            used = add_pools(used, runner.memory_pools or {})
        entries = []
        for pool in sorted(budgets, key=lambda name: (name != HOST_POOL, name)):
            entry: dict[str, Any] = {"pool": pool, "used_bytes": used.get(pool, 0), "budget_bytes": budgets[pool]}
            device = devices.get(pool)
            if device is not None:
                entry.update(device=device.name, total_bytes=device.total_bytes, device_used_bytes=device.used_bytes)
            entries.append(entry)
        return entries

    def _select(self, names: list[str]) -> list[Runner]:
        if not names:
            return list(self.runners.values())
        known = set(self.runners) | set(self.config.names if self.config else [])
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"unknown instance {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
        for name in names:
            if name not in self.runners and self.config is not None:
                self.runner_for(self.config.instance(name))
        return [self.runners[name] for name in dict.fromkeys(names)]

    def _check_budget(self, specs: list[InstanceSpec]) -> None:
        starting = {spec.name for spec in specs}
        in_use = sum(
            runner.memory.value
            for runner in self.runners.values()
            if runner.memory and runner.state in RUNNING and runner.name not in starting
        )
        candidates = [Candidate(spec.name, safe_estimate(spec)) for spec in specs]
        check_budget(candidates, in_use, self.memory_budget, self.config_path)
        self._check_gpu_budgets(specs, starting)

    def _check_gpu_budgets(self, specs: list[InstanceSpec], starting: set[str]) -> None:
        """The same all-or-nothing check, on each GPU pool the instances would use."""
        devices = NVML.devices()
        if not devices:
            return
        budgets = gpu_budgets(devices, self.gpu_memory_budget)
        estimates = {spec.name: safe_pool_estimate(spec, devices) for spec in specs}
        for pool, budget in budgets.items():
            in_use = sum(
                (runner.memory_pools or {}).get(pool, 0)
                for runner in self.runners.values()
                if runner.state in RUNNING and runner.name not in starting
            )
            candidates = [
                Candidate(name, e.pools.get(pool)) for name, e in estimates.items() if e and e.pools.get(pool)
            ]
            check_budget(candidates, in_use, budget, self.config_path, pool)

    # -- bookkeeping ---------------------------------------------------------------------

    def _changed(self, runner: Runner) -> None:
        if self.adopting:
            return
        if runner.state is State.STARTING and runner.server is None:
            # A runner spawns in the same step as this move and saves the start with its PID; saved
            # here too, that is a second fsync per instance on every `up`. Saved before the loop waits
            # on anything all the same, for a start that spawns nothing (an external server, a failure).
            asyncio.get_running_loop().call_soon(self.save)
        else:
            self.save()
        self._wake_waiters(runner)
        self.gateways.publish(runner)

    def _wake_waiters(self, runner: Runner) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _settings(self) -> dict[str, Any]:
        """The config as state.json keeps it (converted once per config: it holds every instance's spec)."""
        if self.config is None:
            return {"path": self.config_path, "binaries": self.services.binaries}
        if self._config_dict[0] is not self.config:
            self._config_dict = (self.config, self.config.to_dict())
        return self._config_dict[1]

    def save(self) -> None:
        """Write state.json at once when anything a new supervisor needs changed (a PID, a create time,
        a wanted flag, the config, the gateway's process). Most changes leave all that as it was
        (starting -> healthy, a failed probe): they write nothing, so `up` of N instances costs O(N)
        writes, not one per state change."""
        records = [record for runner in self.runners.values() if (record := runner.record()) is not None]
        snapshot = (self._settings(), records, self.gateways.record())
        try:
            if snapshot == self._saved and os.path.lexists(self.paths.state_file):  # gone with its folder: again
                return
            # Never raises: it runs inside every runner's state change, and an exception there (EACCES from a
            # folder made unsearchable) would end the runner's task with its stop unanswered.
            state.save(self.paths.state_file, *snapshot)
        except OSError as exc:
            # The servers keep running; only adoption after a supervisor crash is at risk. Tried again at
            # the next change, and once the folder can be written again (state_error).
            self._set_problem("save", f"cannot write {self.paths.state_file}: {exc.strerror or exc}")
            return
        self._saved = snapshot
        self._set_problem("save", None)

    # -- a state folder that cannot be written (a full disk, a changed mode) --------------------

    def state_error(self) -> str | None:
        """Why the state folder cannot be written now, with what that means and the fix (one line), or
        None. Looked at on every call (a file made, written and removed: tens of microseconds, so `status`
        is never stale); once the folder can be written again, what could not be saved meanwhile is saved."""
        self._set_problem("folder", write_problem(self.paths.root))
        if self._folder_problem is None and self._save_problem is not None:
            self.save()
        problem = self._save_problem or self._folder_problem
        if problem is None:
            return None
        return (
            f"{problem}; the running servers stay supervised, but nothing new starts until it can be written: "
            f"{writable_fix(self.paths)}"
        )

    def refuse_if_unwritable(self) -> None:
        """Raise SupervisorError (exit 3) when the state folder cannot be written: a server started now
        could not be recorded, nor its log kept."""
        error = self.state_error()
        if error is not None:
            raise SupervisorError(error)

    def _set_problem(self, source: str, problem: str | None) -> None:
        """Log a problem once when it appears (not at every save), and once when it is over."""
        attribute = f"_{source}_problem"
        before = getattr(self, attribute)
        if problem == before:
            return
        setattr(self, attribute, problem)
        if problem is not None:
            log.error("%s; the servers run on, supervised", problem)
        elif self._save_problem is None and self._folder_problem is None:
            log.info("the state folder %s can be written again", self.paths.root)
