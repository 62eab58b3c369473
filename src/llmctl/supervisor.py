"""The supervisor: keeps one runner per instance by name and does the fleet-wide work.

Runners (llmctl.runner) own each instance's process and state; the supervisor adopts what a previous
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

from . import state, statusdoc
from .backends import safe_estimate
from .budget import Candidate, check_budget, format_bytes
from .errors import ConfigError
from .httpclient import HttpClient
from .loghub import LogHub
from .memory import IS_MACOS, GpuMemory, default_budget, sample_tree, system_summary
from .runner import Adoption, Runner, Services
from .spec import Config, InstanceSpec
from .states import PENDING, RUNNING, WANTED_RUNNING, State

if TYPE_CHECKING:
    from collections.abc import Callable

    from .paths import StatePaths

log = logging.getLogger("llmctl.supervisor")

SAMPLE_TICK = 1.0
SAMPLE_EVERY = 10.0  # memory changes slowly once a server has loaded
SAMPLE_EVERY_WATCHED = 2.0  # right after a start, and for instances with max_memory
STATUS_FRESHNESS = 5.0  # `status` resamples what is older than this


class Supervisor:
    def __init__(self, paths: StatePaths, *, environ: dict[str, str] | None = None) -> None:
        self.paths = paths
        self.runners: dict[str, Runner] = {}
        self.config: Config | None = None
        self.config_path: str | None = None
        self.memory_budget: int | None = None
        self.started_mono = time.monotonic()
        self.shutdown_requested = asyncio.Event()
        self.requests: dict[str, int] = {}
        self.services = Services(paths, HttpClient(), LogHub(paths), dict(os.environ if environ is None else environ))
        self.services.on_change = self._changed
        self._change = asyncio.Event()
        self._samplers: dict[int, Any] = {}
        self._gpu = GpuMemory()
        self._adopting = False

    async def __aenter__(self) -> Supervisor:
        self.services.hub.start()
        await self._adopt_recorded()
        self._sampler_task = asyncio.ensure_future(self._sample_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._sampler_task.cancel()
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(runner.close() for runner in self.runners.values()))
        self._save()
        await self.services.hub.stop()

    async def shutdown(self) -> None:
        await self.stop([])
        self.shutdown_requested.set()

    # -- adoption --------------------------------------------------------------------------

    async def _adopt_recorded(self) -> None:
        """Take over servers a previous supervisor started (PID and create time), and resume those it
        meant to run that have no process (waiting in backoff when it died)."""
        state.remove_stale_temps(self.paths.state_file)
        saved, warning = state.load(self.paths.state_file)
        if warning:
            log.warning(warning)
        self._learn_settings(saved.config or {})
        self._adopting = True
        resume: list[Runner] = []
        try:
            for record in saved.records:
                runner = self._runner_from(record)
                if runner is not None:
                    self.runners[runner.name] = runner
                    if runner.state is State.STOPPED:
                        resume.append(runner)
        finally:
            self._adopting = False
        self._save()
        for runner in resume:
            await runner.request("start", "resuming: the previous supervisor meant it to run")
        # So the first `status` already shows adopted servers healthy.
        await self.wait([runner.name for runner in self.runners.values()], timeout=2.0)

    def _runner_from(self, record: state.InstanceRecord) -> Runner | None:
        try:
            spec = InstanceSpec.from_dict(record.spec)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("state for %s is unreadable (%s); not adopting pid %s", record.name, exc, record.pid)
            return None
        from .process import ProcessHandle

        if not record.pid:  # it was waiting to start again (backoff) when the supervisor died
            return Runner(spec, self.services) if record.wanted else None
        handle = ProcessHandle(record.pid, record.create_time)
        if not handle.is_alive():
            log.info("%s: recorded pid %s is gone; not adopting", record.name, record.pid)
            return None
        return Runner(
            spec, self.services, Adoption(handle, record.pgid or record.pid, record.started_at, record.restarts)
        )

    def _learn_settings(self, config: dict[str, Any]) -> None:
        self.config_path = config.get("path") if isinstance(config.get("path"), str) else self.config_path
        binaries = config.get("binaries")
        self.services.binaries = dict(binaries) if isinstance(binaries, dict) else {}
        budget = config.get("memory_budget")
        self.memory_budget = budget if isinstance(budget, int) else None
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
        self._learn_settings(config.to_dict())

    def _runner(self, spec: InstanceSpec) -> Runner:
        if spec.name not in self.runners:
            self.runners[spec.name] = Runner(spec, self.services)
        return self.runners[spec.name]

    async def up(self, config: Config, names: list[str], force: bool = False) -> dict[str, Any]:
        self._load(config)
        selected = config.select(names)
        actions: dict[str, str] = {}
        for spec in selected:
            runner = self.runners.get(spec.name)
            running = runner is not None and runner.state in WANTED_RUNNING
            actions[spec.name] = (
                ("running" if runner.spec == spec else "recreated") if runner and running else "starting"
            )
        to_start = [spec for spec in selected if actions[spec.name] != "running"]
        if not force:
            self._check_budget(to_start)  # before anything starts: all or nothing
        for spec in to_start:
            reason = "config changed: recreating" if actions[spec.name] == "recreated" else "up"
            await self._runner(spec).request("start", reason, spec)
        self._save()
        return {"actions": actions}

    async def stop(self, names: list[str], reason: str = "down") -> dict[str, Any]:
        targets = self._select(names)
        stopped = [runner.name for runner in targets if runner.state is not State.STOPPED]
        await asyncio.gather(*(runner.request("stop", reason) for runner in targets))
        return {"stopped": stopped}

    async def restart(self, names: list[str], config: Config | None = None) -> dict[str, Any]:
        """Stop and start again, with the spec from the config when one is given."""
        if config is not None:
            self._load(config)
            for name in names or config.names:
                self._runner(config.instance(name))
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
            instances = [runner.describe() for runner in targets]
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
        for runner in self.runners.values():
            if runner.handle is not None and now - runner.sampled_at > STATUS_FRESHNESS:
                self._sample(runner)
        instances = [runner.describe() for runner in self.runners.values()]
        supervisor = {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_mono, 3),
            "config": self.config_path,
            "state_dir": str(self.paths.root),
            "memory_rss_bytes": _own_rss(),
            "log_hub_pid": self.services.hub.handle.pid if self.services.hub.handle else None,
            "requests": dict(self.requests),
        }
        return statusdoc.document(supervisor, system_summary(instances, self.memory_budget), instances)

    def _select(self, names: list[str]) -> list[Runner]:
        if not names:
            return list(self.runners.values())
        known = set(self.runners) | set(self.config.names if self.config else [])
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ConfigError(f"unknown instance {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
        for name in names:
            if name not in self.runners and self.config is not None:
                self._runner(self.config.instance(name))
        return [self.runners[name] for name in dict.fromkeys(names)]

    def _check_budget(self, specs: list[InstanceSpec]) -> None:
        starting = {spec.name for spec in specs}
        in_use = sum(
            runner.memory.value
            for runner in self.runners.values()
            if runner.memory and runner.state in RUNNING and runner.name not in starting
        )
        budget, source = self.memory_budget, f"memory_budget in {self.config_path}"
        if budget is None:
            budget = default_budget()
            source = "the default: " + ("the GPU wired limit" if IS_MACOS else "90% of memory")
        check_budget([Candidate(spec.name, safe_estimate(spec)) for spec in specs], in_use, budget, source)

    # -- bookkeeping ---------------------------------------------------------------------

    def _changed(self, runner: Runner) -> None:
        if self._adopting:
            return
        self._save()
        self._change.set()
        self._change = asyncio.Event()

    def _save(self) -> None:
        records = [
            state.InstanceRecord(
                name=runner.name,
                spec=runner.spec.to_dict(),
                wanted=runner.state in WANTED_RUNNING,
                pid=runner.handle.pid if runner.handle else 0,
                create_time=runner.handle.create_time if runner.handle else 0.0,
                pgid=runner.pgid or 0,
                started_at=runner.started_wall or 0.0,
                restarts=runner.restarts,
            )
            for runner in self.runners.values()
            if runner.handle is not None or runner.state in WANTED_RUNNING
        ]
        settings = (
            self.config.to_dict() if self.config else {"path": self.config_path, "binaries": self.services.binaries}
        )
        try:
            state.save(self.paths.state_file, settings, records)
        except OSError as exc:
            # The servers keep running; only adoption after a supervisor crash is at risk.
            log.error("cannot write state file %s: %s", self.paths.state_file, exc)

    # -- memory --------------------------------------------------------------------------

    async def _sample_forever(self) -> None:
        """Memory and CPU of each process tree, adaptively: often while it may change, rarely after."""
        while True:
            now = time.monotonic()
            due = [
                runner
                for runner in self.runners.values()
                if runner.handle is not None and now - runner.sampled_at >= self._sample_every(runner, now)
            ]
            gpu = self._gpu.by_pid() if due else None
            for runner in due:
                if self._sample(runner, gpu):
                    self._enforce_max_memory(runner)
            await asyncio.sleep(SAMPLE_TICK)

    @staticmethod
    def _sample_every(runner: Runner, now: float) -> float:
        young = runner.started_mono is not None and now - runner.started_mono < 60
        return SAMPLE_EVERY_WATCHED if young or runner.spec.max_memory is not None else SAMPLE_EVERY

    def _sample(self, runner: Runner, gpu: dict[int, int] | None = None) -> bool:
        if runner.handle is None:
            return False
        runner.sampled_at = time.monotonic()
        try:
            runner.memory = sample_tree(runner.handle, self._samplers, gpu)
        except Exception as exc:  # a sampling error must never hurt supervision
            log.debug("sampling %s failed: %s", runner.name, exc)
            return False
        return True

    def _enforce_max_memory(self, runner: Runner) -> None:
        """Over max_memory: warn at once; still over after memory_grace seconds: ask the runner to replace it."""
        limit = runner.spec.max_memory
        if limit is None or runner.memory is None or runner.state is not State.HEALTHY:
            return
        figure = runner.memory.value
        if figure <= limit:
            runner.over_memory_since = None
            return
        now = time.monotonic()
        if runner.over_memory_since is None:
            runner.over_memory_since = now
            runner.note(f"warning: memory {format_bytes(figure)} is over max_memory {format_bytes(limit)}")
        elif now - runner.over_memory_since >= runner.spec.memory_grace:
            runner.over_memory_since = float("inf")  # asked once; a new process resets it
            grace = runner.spec.memory_grace
            over = f"memory: {format_bytes(figure)} over max_memory {format_bytes(limit)} for {grace:g}s"
            runner.send("replace", over)


def _own_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)
