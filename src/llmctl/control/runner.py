"""One runner per instance: it alone owns the instance's process, lifecycle and state.

Whoever wants the instance started, stopped or restarted (`up`, `down`, `restart`, the memory
sampler, later the gateway) sends the runner a request with a reason and awaits the outcome; only
the runner's own task signals its process. Every state change goes through `_move`, which checks
the edge against llmctl.control.states, writes the event to the instance's log, persists and wakes waiters.

The runner's task reads one request at a time, between the events it is waiting for (an exit, a
ready answer, a probe, a timer: llmctl.control.mailbox), so no decision is taken from a stale snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmctl.backends import NotReady, backend_for, command_line, safe_estimate, safe_pool_estimate
from llmctl.control import policy, state, states
from llmctl.control.mailbox import Interrupted, Mailbox, Request
from llmctl.control.serverprocess import ServerProcess
from llmctl.control.states import WANTED_RUNNING, State
from llmctl.errors import StartError
from llmctl.logs import progress
from llmctl.memory.pools import NVML, Estimate
from llmctl.system import process
from llmctl.system.ports import describe_busy_port, port_is_free
from llmctl.system.redact import redact_argv

if TYPE_CHECKING:
    from llmctl.logs.hub import LogHub
    from llmctl.memory.measure import TreeMemory
    from llmctl.paths import StatePaths
    from llmctl.planes import AdmissionRefused
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient

log = logging.getLogger("llmctl.control.runner")
PROGRESS_CHECK_EVERY = 1.0  # how often a start's progress is looked at (and `up` sees it move)
STRICT_ENV = "LLMCTL_STRICT_STATES"  # tests set it: an illegal edge raises instead of being logged


@dataclass
class Services:
    """What a runner needs from the fleet around it."""

    paths: StatePaths
    http: HttpClient
    hub: LogHub
    environ: dict[str, str]
    binaries: dict[str, str] = field(default_factory=dict)
    on_change: Callable[[Runner], None] = lambda runner: None
    on_progress: Callable[[Runner], None] = lambda runner: None  # a start moved on: no state change
    # Variables the fleet adds to one instance's environment at spawn (an MLX server's wired-limit share).
    extra_env: Callable[[InstanceSpec], dict[str, str]] = lambda spec: {}


def _next_probe_in(interval: float) -> float:
    """Seconds to the next multiple of `interval` on the monotonic clock. Every instance with the same
    interval is probed in the same moment, so the supervisor (and, on a VM, the idle CPU it would
    wake) wakes once per round rather than once per instance: at 50 instances, probes spread over
    the interval cost the supervisor about four times the CPU."""
    return interval - time.monotonic() % interval


class _StartFailed(Exception):
    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


@dataclass
class Usage:
    """What the data plane does with an instance, kept on its runner so that it outlives a gateway
    restart: requests in flight and waiting, the last use (monotonic seconds), and the counters
    `status` and /metrics show. llmctl.control.demand decides ttl and eviction from these."""

    in_flight: int = 0
    queued: int = 0  # requests waiting for the instance to become healthy
    last_used: float = field(default_factory=time.monotonic)
    starts: int = 0  # starts the gateway's requests caused
    evictions: int = 0
    load_seconds: float | None = None  # how long the last start on demand took until healthy
    requests: dict[int, int] = field(default_factory=dict)  # by HTTP status the client got
    # A request's keep_alive (Ollama's semantics) overrides the spec's ttl until the next start:
    # None = the spec's ttl, math.inf = no ttl (kept loaded), else seconds of idleness.
    keep_alive: float | None = None

    def ttl(self, spec_ttl: float | None) -> float | None:
        """The idle seconds after which ttl stops the instance now (None: never)."""
        ttl = spec_ttl if self.keep_alive is None else self.keep_alive
        return None if ttl is None or math.isinf(ttl) else ttl

    def to_dict(self, now: float) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "starts": self.starts,
            "evictions": self.evictions,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "requests": sum(self.requests.values()),
            "requests_by_status": {str(status): count for status, count in sorted(self.requests.items())},
            "idle_s": round(max(0.0, now - self.last_used), 3),
        }


@dataclass(frozen=True)
class Adoption:
    """A server a previous supervisor started, still running: the runner takes it over."""

    handle: process.ProcessHandle
    pgid: int
    started_wall: float
    restarts: int


class Runner:
    def __init__(self, spec: InstanceSpec, services: Services, adoption: Adoption | None = None) -> None:
        self.spec = spec
        self.services = services
        self.state = State.STOPPED
        self.reason = "not started"
        self.state_since = time.monotonic()
        self.server: ServerProcess | None = None
        self.history: list[policy.Attempt] = []
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_error: str | None = None
        self.health: str | None = None
        self.next_start_at: float | None = None
        self.memory: TreeMemory | None = None
        self.sampled_at = 0.0
        self.estimate: int | None = safe_estimate(spec)
        self.estimate_pools: Estimate | None = safe_pool_estimate(spec, NVML.devices())
        self.memory_pools: dict[str, int] | None = None  # measured, by pool (llmctl.memory.pools)
        self.peak_pools: dict[str, int] = {}  # the largest measured per pool, kept after a stop
        self.over_memory_since: float | None = None
        self.progress: progress.StartProgress | None = None
        self.usage = Usage()
        self._spec_dict: tuple[InstanceSpec | None, dict[str, Any]] = (None, {})
        self._mailbox = Mailbox()
        if adoption is not None:
            self._adopt(adoption)
        self._task = asyncio.ensure_future(self._run())

    @property
    def name(self) -> str:
        return self.spec.name

    # -- requests: the only way in ---------------------------------------------------------

    def send(self, kind: str, reason: str) -> None:
        """A request whose outcome nobody awaits (the memory sampler's)."""
        self._mailbox.put(Request(kind, reason))

    async def request(self, kind: str, reason: str, spec: InstanceSpec | None = None) -> str:
        request = Request(kind, reason, spec)
        self._mailbox.put(request)
        return await request.done

    def _adopt(self, adoption: Adoption) -> None:
        self.server = ServerProcess.adopted(adoption.handle, adoption.pgid, adoption.started_wall)
        self.restarts = adoption.restarts
        self.history = [policy.Attempt(self.server.started_mono, became_ready=True)]
        self._move(State.STARTING, f"adopting pid {adoption.handle.pid} from a previous supervisor")

    def respec(self, spec: InstanceSpec) -> None:
        """A new config for an instance that is not running (an on-demand one `up` leaves to the first
        request): its next start, and what admission plans for it, follow the new spec."""
        if self.state not in (State.STOPPED, State.FAILED) or spec == self.spec:
            return
        self.spec = spec
        self.estimate = safe_estimate(spec)
        self.estimate_pools = safe_pool_estimate(spec, NVML.devices())

    def forget(self) -> None:
        """End the task of a runner with nothing running (its instance left the config)."""
        self._task.cancel()

    async def close(self) -> None:
        """Stop the instance and end the runner's task (the supervisor is exiting)."""
        if self.state is not State.STOPPED:
            await self.request("stop", "the supervisor is stopping")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # -- the task ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._phase()
            except Interrupted as interrupted:
                await self._handle(interrupted.request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must cost one instance, never the supervisor
                log.exception("%s: runner error", self.name)
                await self._give_up(f"internal error in llmctl: {exc!r}")

    async def _phase(self) -> None:
        if self.state in (State.STOPPED, State.FAILED):
            await self._handle(await self._mailbox.get())
        elif self.state is State.BACKOFF:
            delay = max(0.0, (self.next_start_at or 0.0) - time.monotonic())
            await self._wait_for(set(), timeout=delay)
            self.restarts += 1
            self._move(State.STARTING, "backoff over: starting again")
        elif self.state is State.STARTING:
            await self._starting()
        elif self.state in (State.HEALTHY, State.UNHEALTHY):
            await self._watching()

    async def _wait_for(self, futures: set[asyncio.Future[Any]], timeout: float | None = None) -> set[Any]:
        return await self._mailbox.wait(futures, timeout, self._absorb)

    def _absorb(self, request: Request) -> bool:
        """A start of what already runs as asked is answered without interrupting anything."""
        if request.kind == "start" and (request.spec is None or request.spec == self.spec):
            request.answer("running")
            return True
        return False

    async def _handle(self, request: Request) -> None:
        """A request, handled from whatever state the runner is in."""
        running = self.server is not None
        if request.kind == "expire":  # a stop only if still idle now: ttl and eviction decide on what they saw
            if self.usage.in_flight or self.usage.queued or self.state is not State.HEALTHY:
                request.answer("busy")
                return
            request.kind = "stop"
        if request.kind == "stop":
            if running:
                await self._stop_process(request.reason)
            if self.state is not State.STOPPED:
                self._move(State.STOPPED, request.reason)
            self.services.hub.release(self.name)  # the hub drains and closes its FIFO
            request.answer("stopped")
        elif request.kind in ("start", "restart"):
            if running:
                await self._stop_process(request.reason)
            self.spec = request.spec or self.spec
            self.estimate = safe_estimate(self.spec)
            self.estimate_pools = safe_pool_estimate(self.spec, NVML.devices())
            if request.kind == "restart" or running:
                self.restarts += 1
            self.history, self.last_error = [], None
            self._move(State.STARTING, request.reason)
            request.answer("restarting" if running else "starting")
        elif request.kind == "replace" and running:
            await self._stop_process(request.reason)
            self._after_end(request.reason, failed=True)
            request.answer("replaced")
        else:
            request.answer("not running")

    # -- starting ------------------------------------------------------------------------

    async def _starting(self) -> None:
        if self.server is None:
            try:
                self._spawn()
            except _StartFailed as failure:
                self.history.append(policy.Attempt(time.monotonic()))
                self.last_error = str(failure)
                self._after_end(str(failure), failed=True, retry=failure.retry)
                return
        try:
            await self._wait_ready()
        except _StartFailed as failure:
            self.last_error = str(failure)
            if self.server is not None:
                await self._stop_process(str(failure))
            self._after_end(str(failure), failed=True, retry=failure.retry)

    def _spawn(self) -> None:
        spec = self.spec
        try:
            argv = command_line(spec, self.services.binaries)
        except StartError as exc:
            raise _StartFailed(str(exc), retry=False) from None
        if not port_is_free(spec.host, spec.port):
            raise _StartFailed(describe_busy_port(spec.host, spec.port), retry=False)
        try:
            output = self.services.hub.writer(spec.name)
        except OSError as exc:
            raise _StartFailed(f"cannot start: {exc.filename}: {exc.strerror or exc}", retry=False) from None
        self.note("starting: " + " ".join(redact_argv(argv)))
        try:
            env = {
                **backend_for(spec.backend).environment(spec, self.services.environ),
                **self.services.extra_env(spec),
            }
            self.server = ServerProcess.spawn(argv, env=env, output=output, cwd=spec.workdir)
        except OSError as exc:
            raise _StartFailed(f"cannot start {argv[0]}: {exc.strerror or exc}", retry=False) from None
        finally:
            os.close(output)
        self.history.append(policy.Attempt(self.server.started_mono))
        self.services.on_change(self)  # persist the PID at once: a supervisor crash must not orphan it

    async def _wait_ready(self) -> None:
        assert self.server is not None
        spec, server = self.spec, self.server
        backend = backend_for(spec.backend)
        env = backend.environment(spec, self.services.environ)
        self.progress = progress.StartProgress(
            self.services.paths.log_file(spec.name), tuple(backend.download_folders(spec, env))
        )
        exited = asyncio.ensure_future(server.exited())
        ready = asyncio.ensure_future(progress.tracking(self.progress, backend.wait_ready(spec, self.services.http)))
        said = asyncio.ensure_future(self.services.hub.load_failure(self.name, backend))
        try:
            done = await self._until_ready_or_stalled({exited, ready, said})
        finally:
            for future in (exited, ready, said):
                future.cancel()
        if exited in done:
            server.reap_group()
            self._clear_process()
            raise self._failed(f"the server {process.describe_exit(exited.result())} while starting")
        if said in done:
            raise _StartFailed(f"the model failed to load: {said.result()}", retry=True)
        try:
            ready.result()
        except NotReady as exc:
            raise self._failed(str(exc)) from None
        except Exception as exc:  # an answer the backend did not expect: report it, never crash
            raise self._failed(f"readiness check failed: {exc}") from None
        self.history[-1:] = [policy.Attempt(self.history[-1].started if self.history else time.monotonic(), True)]
        self.health = "ok"
        self.progress = None
        adopted = server.popen is None
        took = f"healthy after {time.monotonic() - server.started_mono:.2f}s"
        self._move(State.HEALTHY, "adopted and healthy" if adopted else took)
        with contextlib.suppress(Exception):
            self.estimate = await backend.reported_memory(spec, self.services.http) or self.estimate

    async def _until_ready_or_stalled(self, futures: set[asyncio.Future[Any]]) -> set[Any]:
        """Wait while the start makes progress; fail it after start_timeout without any, or at start_deadline."""
        assert self.server is not None and self.progress is not None
        health, started = self.spec.health, self.server.started_mono
        while True:
            allowance = health.start_timeout - self.progress.idle_for()
            if health.start_deadline is not None:
                allowance = min(allowance, health.start_deadline - (time.monotonic() - started))
            done = await self._wait_for(futures, timeout=max(0.0, min(PROGRESS_CHECK_EVERY, allowance)))
            if done:
                return done
            now = time.monotonic()
            before = self.progress.phase
            if self.progress.check(now) or self.progress.phase != before:
                self.services.on_progress(self)
            if self.progress.idle_for(now) >= health.start_timeout:
                raise self._failed(
                    f"stalled: no progress for {health.start_timeout:g}s while {self.progress.phase}"
                    " (start_timeout: nothing logged, downloaded or answered)"
                )
            if health.start_deadline is not None and now - started >= health.start_deadline:
                raise self._failed(f"not healthy within start_deadline ({health.start_deadline:g}s)")

    def _failed(self, reason: str) -> _StartFailed:
        """A failed start, in the server's own words where its log has them."""
        words = backend_for(self.spec.backend).load_failure(self.services.hub.since_start(self.name))
        return _StartFailed(f"{reason}: {words}" if words else reason, retry=True)

    # -- running -------------------------------------------------------------------------

    async def _watching(self) -> None:
        assert self.server is not None
        spec, server = self.spec, self.server
        backend = backend_for(spec.backend)
        exited = asyncio.ensure_future(server.exited())
        failures = 0
        try:
            while True:
                if await self._wait_for({exited}, timeout=_next_probe_in(spec.health.interval)):
                    server.reap_group()
                    code = exited.result()
                    self._after_end(f"the server {process.describe_exit(code)}", failed=code != 0)
                    return
                probe = asyncio.ensure_future(backend.is_healthy(spec, self.services.http))
                try:
                    done = await self._wait_for({exited, probe})
                finally:
                    probe.cancel()
                if probe not in done:
                    continue  # the exit is handled at the top of the loop
                if not probe.result() and not server.handle.is_alive() and await self._wait_for({exited}, 1.0):
                    # Refused because it had just died: its exit (not ill health) is what happened, whichever
                    # of the two the event loop saw first. Handled at the top of the loop, with its code.
                    continue
                failures = 0 if probe.result() else failures + 1
                if not failures:
                    self.health = "ok"
                    if self.state is State.UNHEALTHY:
                        self._move(State.HEALTHY, "a health check passed again")
                    continue
                self.health = f"failing ({failures}/{spec.health.failure_threshold})"
                if self.state is State.HEALTHY:
                    self._move(State.UNHEALTHY, f"health check failed ({failures}/{spec.health.failure_threshold})")
                if failures >= spec.health.failure_threshold:
                    reason = f"unhealthy: {failures} health checks failed in a row"
                    await self._stop_process(reason)
                    self._after_end(reason, failed=True)
                    return
        finally:
            exited.cancel()

    # -- endings -------------------------------------------------------------------------

    def _after_end(self, reason: str, *, failed: bool, retry: bool = True) -> None:
        """The process is gone (or never started): restart, or settle, per the policy."""
        self.last_exit = reason
        self._clear_process()
        rules = policy.Rules(**vars(self.spec.restart))
        now = time.monotonic()
        self.history = policy.trim(self.history, rules, now)
        decision = policy.decide(rules, self.history, now, failed=failed, jitter=random.uniform(-1, 1))
        if retry and decision.restart:
            self.next_start_at = now + decision.delay
            self._move(State.BACKOFF, f"{reason}; restarting in {decision.delay:.1f}s")
        elif failed or decision.crash_loop:
            self._give_up_now(f"{decision.crash_loop} (last: {reason})" if decision.crash_loop else reason)
        else:
            self._move(State.STOPPED, f"{reason}; restart policy {rules.policy!r} does not restart it")
            self.services.hub.release(self.name)  # the hub drains and closes its FIFO

    async def _give_up(self, reason: str) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self._stop_process(reason)
        self._clear_process()
        if self.state is not State.FAILED:
            self._give_up_now(reason)

    def _give_up_now(self, reason: str) -> None:
        self.last_error = reason
        self._move(State.FAILED, reason)
        self.services.hub.release(self.name)  # the hub drains and closes its FIFO

    async def _stop_process(self, reason: str) -> None:
        if self.state is not State.STOPPING:
            self._move(State.STOPPING, reason)
        if self.server is not None and not await self.server.stop(self.spec.stop_timeout):
            self.note("some processes survived SIGKILL")
        self._clear_process()

    def _clear_process(self) -> None:
        self.server = None
        self.memory = None
        self.memory_pools = None
        self.sampled_at = 0.0
        self.over_memory_since = None
        self.health = None
        self.next_start_at = None
        self.progress = None

    # -- state and its record ------------------------------------------------------------

    def _move(self, target: State, reason: str) -> None:
        try:
            states.check_edge(self.state, target)
        except states.IllegalTransition:
            if os.environ.get(STRICT_ENV):
                raise
            log.error("%s: illegal transition %s -> %s (%s)", self.name, self.state, target, reason)
        previous, self.state, self.reason = self.state, target, reason
        self.state_since = time.monotonic()
        if target is not State.BACKOFF:
            self.next_start_at = None
        self.note(f"{previous} -> {target}: {reason}")
        self.services.on_change(self)

    def note(self, message: str) -> None:
        """A line in the instance's own log, so `llmctl logs` tells the whole story."""
        log.info("%s: %s", self.name, message)
        self.services.hub.note(self.name, message)

    def record(self) -> state.InstanceRecord | None:
        """What state.json keeps of this instance: anything with a process, or meant to run."""
        if self._spec_dict[0] is not self.spec:  # to_dict walks the whole spec: once per spec, not per save
            self._spec_dict = (self.spec, self.spec.to_dict())
        wanted, server, spec = self.state in WANTED_RUNNING, self.server, self._spec_dict[1]
        if server is None:
            return state.InstanceRecord(self.name, spec, restarts=self.restarts) if wanted else None
        handle = server.handle
        return state.InstanceRecord(
            self.name, spec, wanted, handle.pid, handle.create_time, server.pgid, server.started_wall, self.restarts
        )

    def refusal(self) -> AdmissionRefused | None:
        """Why a request for this instance must be refused at once rather than wait for it to become
        healthy (None: let it wait). A server llmctl runs comes back by itself; see ExternalRunner."""
        return None

    @property
    def outcome(self) -> str:
        failed_start = bool(self.history) and not self.history[-1].became_ready
        return states.outcome(self.state, failed_start)
