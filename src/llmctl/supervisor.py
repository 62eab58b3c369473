"""The supervisor: starts instances, watches them, restarts them per policy, stops them whole.

Each instance has one lifecycle task. Its states (what `status` shows):

    stopped ──up──▶ starting ──ready──▶ healthy ◀──probe ok── unhealthy
                       │                   │                      │
                       │ exit / timeout    │ exit                 │ K failed probes: stopped, then
                       ▼                   ▼                      ▼ handled like an exit
                  backoff ◀──────── restart policy says restart
                       │ crash loop (max_starts within window), or policy says no
                       ▼
                     failed (reason kept; `up` or `restart` starts it again)

Deaths are noticed through a pidfd the event loop watches, not a poll; `down` cancels the task, so a
pending restart in backoff is cancelled with it. Time is measured on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import subprocess
import time
from typing import TYPE_CHECKING, Any

from . import process, state
from .backends import NotReady, backend_for
from .budget import Candidate, check_budget, format_bytes
from .errors import ConfigError, StartError
from .httpclient import HttpClient
from .instance import RUNNING_STATES, Instance, describe
from .memory import IS_MACOS, GpuMemory, default_budget, sample_tree, system_summary
from .ports import describe_busy_port, port_is_free
from .redact import redact_argv
from .spec import Config, InstanceSpec

if TYPE_CHECKING:
    from .paths import StatePaths

log = logging.getLogger("llmctl.supervisor")

SAMPLE_INTERVAL = 2.0


class StartFailure(Exception):
    """One start attempt failed. `retry` says whether trying again could help."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


class Supervisor:
    def __init__(self, paths: StatePaths, *, environ: dict[str, str] | None = None) -> None:
        self.paths = paths
        self.environ = dict(os.environ if environ is None else environ)
        self.instances: dict[str, Instance] = {}
        self.config_path: str | None = None
        self.binaries: dict[str, str] = {}
        self.log_limits = process.LogLimits(max_bytes=10 * 1024 * 1024, backups=3)
        self.started_mono = time.monotonic()
        self.shutdown_requested = asyncio.Event()
        self._http: HttpClient | None = None
        self._samplers: dict[int, Any] = {}
        self._gpu = GpuMemory()
        self.memory_budget: int | None = None

    # -- life of the supervisor itself -------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        # Our own client: no proxy from the environment can sit between us and 127.0.0.1.
        self._http = HttpClient()
        await self._adopt_recorded()
        self._sampler_task = asyncio.ensure_future(self._sample_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._sampler_task.cancel()
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> HttpClient:
        assert self._http is not None, "use the supervisor as an async context manager"
        return self._http

    async def _adopt_recorded(self) -> None:
        """Take over servers a previous supervisor started, if they still run (PID and create time)."""
        state.remove_stale_temps(self.paths.state_file)
        config_path, records, warning = state.load_records(self.paths.state_file)
        if warning:
            log.warning(warning)
        self.config_path = config_path
        for record in records:
            try:
                spec = InstanceSpec.from_dict(record.spec)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("state for %s is unreadable (%s); not adopting pid %s", record.name, exc, record.pid)
                continue
            handle = process.ProcessHandle(record.pid, record.create_time)
            if not handle.is_alive():
                log.info("%s: recorded pid %s is gone; not adopting", record.name, record.pid)
                continue
            instance = Instance(spec=spec, handle=handle, pgid=record.pgid, restarts=record.restarts)
            if record.relay_pid:
                instance.relay = process.ProcessHandle(record.relay_pid, record.relay_create_time)
            instance.started_wall = record.started_at
            instance.started_mono = time.monotonic() - max(0.0, time.time() - record.started_at)
            instance.state = "starting"
            self.instances[spec.name] = instance
            self._note(instance, f"adopted running pid {record.pid} from a previous supervisor")
        adopted = [instance for instance in self.instances.values() if instance.handle is not None]
        # Probe before serving the control API, so the first `status` already shows them healthy.
        healthy = await asyncio.gather(*(self._probe(instance) for instance in adopted))
        for instance, ok in zip(adopted, healthy, strict=True):
            if ok:
                self._mark_healthy(instance, "adopted and healthy")
            instance.task = asyncio.ensure_future(self._lifecycle(instance, adopted=True))
        self._save()

    async def _probe(self, instance: Instance) -> bool:
        return await backend_for(instance.spec.backend).is_healthy(instance.spec, self.http)

    async def shutdown(self) -> None:
        await self.stop([])
        self.shutdown_requested.set()

    # -- operations the control API exposes -------------------------------------------------

    def _load(self, config: Config) -> Config:
        """Learn a (validated) config's instances; running ones keep their spec until restarted."""
        self._check_same_config(config)
        self.config_path = str(config.path)
        self.binaries = dict(config.binaries)
        self.log_limits = process.LogLimits(config.log_max_bytes, config.log_backups)
        self.memory_budget = config.memory_budget
        for spec in config.instances:
            known = self.instances.get(spec.name)
            if known is None:
                self.instances[spec.name] = known = Instance(spec=spec)
            elif known.state not in RUNNING_STATES and known.task is None:
                known.spec = spec
            if known.spec == spec and known.state not in RUNNING_STATES:
                known.estimate = backend_for(spec.backend).estimate_memory(spec)
        return config

    def _check_budget(self, specs: list[InstanceSpec]) -> None:
        starting = {spec.name for spec in specs}
        in_use = sum(
            instance.memory.value
            for instance in self.instances.values()
            if instance.memory and instance.state in RUNNING_STATES and instance.name not in starting
        )
        budget = self.memory_budget
        source = f"memory_budget in {self.config_path}"
        if budget is None:
            budget, source = (
                default_budget(),
                "the default: " + ("the GPU wired limit" if IS_MACOS else "90% of memory"),
            )
        candidates = [Candidate(spec.name, backend_for(spec.backend).estimate_memory(spec)) for spec in specs]
        check_budget(candidates, in_use, budget, source)

    async def up(self, config: Config, names: list[str], force: bool = False) -> dict[str, Any]:
        config = self._load(config)
        selected = config.select(names)
        to_start = [
            spec
            for spec in selected
            if self.instances[spec.name].state not in RUNNING_STATES or self.instances[spec.name].spec != spec
        ]
        if not force:
            self._check_budget(to_start)  # before anything starts: all or nothing
        actions: dict[str, str] = {}
        for spec in selected:
            instance = self.instances[spec.name]
            if instance.state in RUNNING_STATES:
                if instance.spec == spec:
                    actions[spec.name] = "running"
                    continue
                await self._stop_instance(instance)
                actions[spec.name] = "recreated"
            else:
                actions[spec.name] = "starting"
            instance.spec = spec
            self._launch(instance)
        self._save()
        return {"actions": actions}

    def _check_same_config(self, config: Config) -> None:
        running = [name for name, instance in self.instances.items() if instance.state in (*RUNNING_STATES, "backoff")]
        if self.config_path and self.config_path != config.path and running:
            raise ConfigError(
                f"this state folder's supervisor serves {self.config_path} ({', '.join(running)} running); "
                "run `llmctl down` first, or use another $LLMCTL_STATE_DIR for a second config"
            )

    async def stop(self, names: list[str]) -> dict[str, Any]:
        targets = self._select(names)
        await asyncio.gather(*(self._stop_instance(instance) for instance in targets))
        self._save()
        return {"stopped": [instance.name for instance in targets]}

    async def restart(self, names: list[str], config: Config | None = None) -> dict[str, Any]:
        """Stop and start again, with the spec from the config when one is given."""
        if config is not None:
            self._load(config)
        targets = self._select(names)
        await asyncio.gather(*(self._stop_instance(instance) for instance in targets))
        for instance in targets:
            if config is not None and instance.name in config.names:
                instance.spec = config.instance(instance.name)
            self._launch(instance)
        self._save()
        return {"actions": {instance.name: "restarting" for instance in targets}}

    def status(self) -> dict[str, Any]:
        instances = [
            describe(instance, str(self.paths.log_file(instance.name))) for instance in self.instances.values()
        ]
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_mono, 3),
                "config": self.config_path,
                "state_dir": str(self.paths.root),
                "memory_rss_bytes": _own_rss(),
            },
            "system": system_summary(instances, self.memory_budget),
            "instances": instances,
        }

    def _select(self, names: list[str]) -> list[Instance]:
        if not names:
            return list(self.instances.values())
        unknown = [name for name in names if name not in self.instances]
        if unknown:
            known = ", ".join(self.instances) or "none"
            raise ConfigError(f"unknown instance {unknown[0]!r} (known to the supervisor: {known})")
        return [self.instances[name] for name in dict.fromkeys(names)]

    # -- one instance's lifecycle -------------------------------------------------------------

    def _launch(self, instance: Instance) -> None:
        """Start an instance afresh, as `up` and `restart` do: counters of the last run are reset."""
        instance.start_failures = 0
        instance.consecutive_failures = 0
        instance.recent_starts.clear()
        instance.last_error = None
        instance.state = "starting"
        instance.task = asyncio.ensure_future(self._lifecycle(instance))

    async def _lifecycle(self, instance: Instance, adopted: bool = False) -> None:
        while True:
            ever_ready = False
            try:
                if adopted:
                    adopted = False
                    await self._confirm_adopted(instance)
                else:
                    await self._start_once(instance)
                ever_ready = True
                reason, failed = await self._watch(instance)
            except StartFailure as failure:
                instance.start_failures += 1
                reason, failed = str(failure), True
                instance.last_error = reason
                await self._kill_leftovers(instance)
                if not failure.retry:
                    self._settle(instance, "failed", reason)
                    return
            instance.last_exit = reason
            if not self._should_restart(instance, failed):
                self._settle(instance, "failed" if failed else "stopped", reason if failed else None)
                return
            delay = self._backoff_delay(instance, ever_ready)
            if delay is None:
                return
            instance.state = "backoff"
            instance.next_start_at = time.monotonic() + delay
            self._note(instance, f"{reason}; restarting in {delay:.1f}s")
            self._save()
            await asyncio.sleep(delay)
            instance.next_start_at = None
            instance.restarts += 1

    def _settle(self, instance: Instance, final_state: str, reason: str | None) -> None:
        instance.state = final_state
        if reason:
            instance.last_error = reason
        instance.clear_process()
        self._note(instance, f"{final_state}" + (f": {reason}" if reason else ""))
        self._save()

    def _should_restart(self, instance: Instance, failed: bool) -> bool:
        policy = instance.spec.restart.policy
        return policy == "always" or (policy == "on-failure" and failed)

    def _backoff_delay(self, instance: Instance, ever_ready: bool) -> float | None:
        """Exponential backoff with jitter; None (and state `failed`) once the crash-loop limit is hit."""
        rules = instance.spec.restart
        now = time.monotonic()
        while instance.recent_starts and now - instance.recent_starts[0] > rules.window:
            instance.recent_starts.popleft()
        if len(instance.recent_starts) >= rules.max_starts:
            starts = len(instance.recent_starts)
            reason = f"crash loop: {starts} starts within {rules.window:g}s (last: {instance.last_exit})"
            self._settle(instance, "failed", reason)
            return None
        if ever_ready and instance.started_mono is not None and now - instance.started_mono >= rules.window:
            instance.consecutive_failures = 0  # it ran well for a while: this crash starts a new series
        instance.consecutive_failures += 1
        base = min(rules.max_backoff, rules.backoff * 2 ** (instance.consecutive_failures - 1))
        return base * random.uniform(0.8, 1.2)

    async def _start_once(self, instance: Instance) -> None:
        spec = instance.spec
        backend = backend_for(spec.backend)
        instance.state = "starting"
        instance.health = None
        try:
            program = backend.find_program(self.binaries.get(spec.backend))
            argv = backend.command(spec, program)
        except StartError as exc:
            raise StartFailure(str(exc), retry=False) from None
        if not port_is_free(spec.host, spec.port):
            raise StartFailure(describe_busy_port(spec.host, spec.port), retry=False)
        log_path = self.paths.log_file(spec.name)
        self._note(instance, "starting: " + " ".join(redact_argv(argv)))
        try:
            popen, relay = process.spawn(
                argv,
                env=backend.environment(spec, self.environ),
                log_path=log_path,
                cwd=spec.workdir,
                limits=self.log_limits,
            )
        except OSError as exc:
            raise StartFailure(f"cannot start {argv[0]}: {exc.strerror or exc}", retry=False) from None
        instance.popen = popen
        instance.relay_popen = relay
        instance.relay = process.ProcessHandle.of(relay.pid) if relay.poll() is None else None
        instance.pgid = popen.pid  # a new session: its own process group, led by the server
        instance.handle = process.handle_of_child(popen.pid)
        instance.started_wall, instance.started_mono = time.time(), time.monotonic()
        instance.recent_starts.append(instance.started_mono)
        self._save()
        await self._wait_ready(instance)

    async def _confirm_adopted(self, instance: Instance) -> None:
        """An adopted server was ready under the old supervisor; one that is not yet gets its start_timeout."""
        if instance.state != "healthy":
            await self._wait_ready(instance)

    def _mark_healthy(self, instance: Instance, message: str) -> None:
        instance.state = "healthy"
        instance.health = "ok"
        self._note(instance, message)
        self._save()
        self._sample(instance)  # so a `status` right after `up` already shows its memory

    async def _wait_ready(self, instance: Instance) -> None:
        """Until the backend says ready, the process exits, or start_timeout passes."""
        spec = instance.spec
        assert instance.handle is not None
        backend = backend_for(spec.backend)
        exited = asyncio.ensure_future(process.wait_for_exit(instance.popen, instance.handle))
        ready = asyncio.ensure_future(backend.wait_ready(spec, self.http))
        try:
            done, _ = await asyncio.wait(
                {exited, ready}, timeout=spec.health.start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if exited in done:
                raise StartFailure(f"the server {process.describe_exit(exited.result())} while starting", retry=True)
            if ready in done:
                try:
                    ready.result()
                except NotReady as exc:
                    raise StartFailure(str(exc), retry=True) from None
                except Exception as exc:  # an answer the backend did not expect: report it, never crash
                    raise StartFailure(f"readiness check failed: {exc}", retry=True) from None
                self._mark_healthy(instance, f"healthy after {time.monotonic() - (instance.started_mono or 0):.2f}s")
                with contextlib.suppress(Exception):
                    reported = await backend.reported_memory(spec, self.http)
                    instance.estimate = reported or instance.estimate
                return
            raise StartFailure(f"not healthy within start_timeout ({spec.health.start_timeout:g}s)", retry=True)
        finally:
            exited.cancel()
            ready.cancel()

    async def _watch(self, instance: Instance) -> tuple[str, bool]:
        """While healthy: return (why it ended, whether that counts as a failure)."""
        spec = instance.spec
        assert instance.handle is not None
        backend = backend_for(spec.backend)
        exited = asyncio.ensure_future(process.wait_for_exit(instance.popen, instance.handle))
        failures = 0
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=spec.health.interval)
                if exited in done:
                    code = exited.result()
                    await self._kill_leftovers(instance)
                    if instance.kill_reason:
                        reason, instance.kill_reason = instance.kill_reason, None
                        return reason, True
                    return f"the server {process.describe_exit(code)}", code != 0
                probe = asyncio.ensure_future(backend.is_healthy(spec, self.http))
                done, _ = await asyncio.wait({exited, probe}, return_when=asyncio.FIRST_COMPLETED)
                if probe not in done:
                    probe.cancel()
                    continue  # the exit is handled at the top of the loop
                if probe.result():
                    failures = 0
                    instance.state, instance.health = "healthy", "ok"
                    continue
                failures += 1
                instance.health = f"failing ({failures}/{spec.health.failure_threshold})"
                if failures >= spec.health.failure_threshold:
                    instance.state = "unhealthy"
                    reason = f"unhealthy: {failures} health checks failed in a row"
                    self._note(instance, reason + "; stopping it")
                    await self._terminate(instance)
                    return reason, True
        finally:
            exited.cancel()

    async def _terminate(self, instance: Instance) -> None:
        if instance.handle is None or instance.pgid is None:
            return
        popen = instance.popen
        done = await process.stop_tree(
            instance.handle, instance.pgid, instance.spec.stop_timeout, reap=popen.poll if popen else None
        )
        if not done:
            self._note(instance, "some processes survived SIGKILL")
        await self._finish_relay(instance)

    async def _finish_relay(self, instance: Instance) -> None:
        if instance.relay is not None:
            await process.finish_relay(instance.relay, instance.relay_popen)

    async def _kill_leftovers(self, instance: Instance) -> None:
        """After the leader died or failed to start: nothing of its group may keep a port or memory."""
        if instance.pgid is not None:
            if instance.handle is not None and instance.handle.is_alive():
                await self._terminate(instance)
            process.kill_group_leftovers(instance.pgid)
        await self._finish_relay(instance)
        if instance.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                instance.popen.wait(timeout=0)

    async def _stop_instance(self, instance: Instance) -> None:
        task, instance.task = instance.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if instance.handle is not None:
            self._note(instance, "stopping")
            await self._terminate(instance)
        was_running = instance.state != "stopped"
        instance.state = "stopped"
        instance.next_start_at = None
        instance.clear_process()
        if was_running:
            self._note(instance, "stopped")

    # -- bookkeeping ------------------------------------------------------------------------

    def _save(self) -> None:
        records = [
            state.InstanceRecord(
                name=instance.name,
                pid=instance.handle.pid,
                create_time=instance.handle.create_time,
                pgid=instance.pgid or instance.handle.pid,
                started_at=instance.started_wall or time.time(),
                spec=instance.spec.to_dict(),
                restarts=instance.restarts,
                relay_pid=instance.relay.pid if instance.relay else 0,
                relay_create_time=instance.relay.create_time if instance.relay else 0.0,
            )
            for instance in self.instances.values()
            if instance.handle is not None
        ]
        try:
            state.save_records(self.paths.state_file, self.config_path, records)
        except OSError as exc:
            # The servers keep running; only adoption after a supervisor crash is at risk.
            log.error("cannot write state file %s: %s", self.paths.state_file, exc)

    def _note(self, instance: Instance, message: str) -> None:
        """A line in the instance's own log, so `llmctl logs` tells the whole story."""
        line = f"[llmctl {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n"
        log.info("%s: %s", instance.name, message)
        try:
            fd = process.open_log(self.paths.log_file(instance.name))
        except OSError:
            return
        try:
            os.write(fd, line.encode())
        except OSError:
            pass  # a full disk must not stop supervision
        finally:
            os.close(fd)

    async def _sample_forever(self) -> None:
        """Memory and CPU of each process tree, every few seconds, so `status` costs nothing."""
        while True:
            running = [i for i in self.instances.values() if i.handle is not None and i.state in RUNNING_STATES]
            gpu = self._gpu.by_pid() if running else None
            for instance in running:
                if self._sample(instance, gpu):
                    await self._enforce_max_memory(instance)
            await asyncio.sleep(SAMPLE_INTERVAL)

    def _sample(self, instance: Instance, gpu: dict[int, int] | None = None) -> bool:
        if instance.handle is None:
            return False
        try:
            instance.memory = sample_tree(instance.handle, self._samplers, gpu)
        except Exception as exc:  # a sampling error must never hurt supervision
            log.debug("sampling %s failed: %s", instance.name, exc)
            return False
        return True

    async def _enforce_max_memory(self, instance: Instance) -> None:
        """Over max_memory: warn at once; still over after memory_grace seconds: restart per policy."""
        limit = instance.spec.max_memory
        if limit is None or instance.memory is None or instance.state != "healthy":
            return
        figure = instance.memory.value
        if figure <= limit:
            instance.over_memory_since = None
            return
        now = time.monotonic()
        if instance.over_memory_since is None:
            instance.over_memory_since = now
            self._note(instance, f"warning: memory {format_bytes(figure)} is over max_memory {format_bytes(limit)}")
        elif now - instance.over_memory_since >= instance.spec.memory_grace:
            grace = instance.spec.memory_grace
            instance.kill_reason = (
                f"memory: {format_bytes(figure)} over max_memory {format_bytes(limit)} for {grace:g}s"
            )
            self._note(instance, instance.kill_reason + "; stopping it")
            await self._terminate(instance)


def _own_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)
