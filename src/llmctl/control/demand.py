"""On-demand lifecycle: what the control plane decides when the data plane asks for an instance.

The gateway only reports (a request begins, ends, or needs an instance that is not healthy); every
decision that follows is taken here, on the runners' side of the fence, from what the runners hold
(llmctl.control.runner.Usage): start on demand, wait for a stop in progress and start again, make room
by stopping idle instances (least recently used first, by their *measured* memory), keep a start
going for a grace period after its last waiter left, and stop instances idle for their ttl.

Rules that callers can rely on:
- One start per instance however many requests ask; admissions are serialised, so two starts never
  count the same free room.
- An instance with a request in flight or waiting is never evicted or expired; pinned instances
  (without `on_demand`) never are.
- A request is never refused for a state the runner is about to leave (stopping: it waits and starts
  again); it is refused (AdmissionRefused, with an HTTP status) only for what will not change by
  itself: not on demand and stopped, failed after the start it caused, no room, a full queue, or a
  start longer than the gateway's `max_wait`.
- Before stopping anything for a newcomer, the newcomer must fit once every instance that could
  ever be stopped for it is gone; if it cannot, nothing is stopped and the request is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from llmctl.control.states import RUNNING, State
from llmctl.memory.budget import format_bytes
from llmctl.memory.measure import default_budget
from llmctl.memory.pools import HOST_POOL, NVML, add_pools, gpu_budgets
from llmctl.planes import Admission, AdmissionRefused

if TYPE_CHECKING:
    from llmctl.control.runner import Runner
    from llmctl.spec import GatewaySpec

log = logging.getLogger("llmctl.control.demand")
TTL_TICK = 0.5  # how often idle instances are looked at (ttl is given in seconds; half a second is exact enough)
DRAIN_POLL = 0.1
DEFAULT_MAX_WAIT = 600.0
DEFAULT_DRAIN = 30.0
DEFAULT_GRACE = 60.0
SETTLING = 10.0  # seconds after a start in which an instance counts as max(planned, measured)
UNKNOWN_SIZE = 1 << 30  # what an instance of unknown size counts for (no estimate, no max_memory): 1 GiB


class Fleet(Protocol):
    """What demand needs of the supervisor."""

    runners: dict[str, Runner]
    memory_budget: int | None
    gpu_memory_budget: int | float | None

    async def changed(self, timeout: float) -> None: ...

    def sample(self, runners: Iterable[Runner]) -> None: ...

    def publish(self, runner: Runner) -> None: ...


def refused(status: int, code: str, message: str, retry_after: int | None = None) -> AdmissionRefused:
    return AdmissionRefused(Admission(status, code, message, retry_after))


class Demand:
    """The control plane's answers to the data plane, for every runner of `fleet`."""

    def __init__(self, fleet: Fleet, settings: Callable[[], GatewaySpec | None]) -> None:
        self.fleet = fleet
        self._settings = settings
        self._admission = asyncio.Lock()
        self._loading: dict[str, float] = {}  # instances started on demand, and when
        self._abandon: dict[str, asyncio.TimerHandle] = {}

    # -- settings ------------------------------------------------------------------------

    def _max_wait(self) -> float:
        spec = self._settings()
        return spec.max_wait if spec is not None else DEFAULT_MAX_WAIT

    def _drain_timeout(self) -> float:
        spec = self._settings()
        return spec.drain_timeout if spec is not None else DEFAULT_DRAIN

    def _grace(self) -> float:
        spec = self._settings()
        return getattr(spec, "start_grace", DEFAULT_GRACE) if spec is not None else DEFAULT_GRACE

    # -- what the gateway reports ----------------------------------------------------------

    def begin(self, runner: Runner) -> None:
        """A request went straight to the instance: in flight from now on."""
        runner.usage.in_flight += 1
        runner.usage.last_used = time.monotonic()

    def end(self, runner: Runner, status: int | None) -> None:
        """A request that was begun or acquired is over (`status`: what the client got; None: unknown)."""
        usage = runner.usage
        usage.in_flight = max(0, usage.in_flight - 1)
        usage.last_used = time.monotonic()
        if status is not None:
            usage.requests[status] = usage.requests.get(status, 0) + 1

    async def acquire(self, runner: Runner) -> None:
        """Wait until the instance is healthy, starting it if it is on demand; then the request counts
        as in flight. Raises AdmissionRefused when it will not be healthy in time, or never."""
        usage = runner.usage
        if runner.state is not State.HEALTHY:
            if usage.queued >= runner.spec.max_queue:
                raise refused(429, "queue_full", f"{runner.name}: {usage.queued} requests already wait for it", 5)
            usage.queued += 1
            try:
                await self._until_healthy(runner)
            except asyncio.CancelledError:
                self._waiter_left(runner)
                raise
            finally:
                usage.queued -= 1
        self.begin(runner)
        loading = self._loading.pop(runner.name, None)
        if loading is not None:
            usage.load_seconds = time.monotonic() - loading
            self.fleet.sample([runner])  # its measured memory, for the next decision
            self.fleet.publish(runner)

    def stop_if_idle(self, runner: Runner, reason: str) -> None:
        """The gateway asks for a stop (a request's keep_alive of 0): only an on-demand instance, and
        only once nothing is in flight or waiting; a pinned one stays, and its log says why."""
        if not runner.spec.on_demand:
            runner.note(f"not stopped ({reason}): it is pinned (no on_demand)")
            return
        runner.send("expire", reason)

    def keep_alive(self, runner: Runner, seconds: float) -> None:
        """A request's keep_alive (Ollama's semantics, shared/OLLAMA-API.md §3): 0 stops the instance once
        idle, a negative value keeps it loaded with no ttl, a positive one is its ttl, counted from now. Only
        for on-demand instances; a pinned one ignores it and its log says so. Reset at the next start."""
        if seconds == 0:
            self.stop_if_idle(runner, "keep_alive 0")
            return
        if not runner.spec.on_demand:
            runner.note(f"keep_alive {seconds:g} ignored: it is pinned (no on_demand)")
            return
        runner.usage.keep_alive = math.inf if seconds < 0 else float(seconds)
        runner.usage.last_used = time.monotonic()
        self.fleet.publish(runner)

    async def lifecycle(self, runner: Runner, action: str) -> str:
        """Start or stop an instance on request (the gateway's HTTP endpoints); returns its state after.
        A start of an on-demand instance goes through admission (room is made first); a stop stops it even
        with requests in flight, as `llmctl down NAME` does. Raises AdmissionRefused when it cannot start."""
        if action == "stop":
            await runner.request("stop", "stopped over HTTP (POST /llmctl/v1/instances/NAME/stop)")
        elif runner.spec.on_demand:
            await self._start(runner)
        elif runner.state in (State.STOPPED, State.FAILED):
            await runner.request("start", "started over HTTP (POST /llmctl/v1/instances/NAME/start)", runner.spec)
        self.fleet.publish(runner)
        return runner.state.value

    def cancelled(self, runner: Runner) -> None:
        """A waiter's client went away (the gateway says so); same as its task being cancelled."""
        self._waiter_left(runner)

    # -- waiting and starting --------------------------------------------------------------

    async def _until_healthy(self, runner: Runner) -> None:
        deadline = time.monotonic() + self._max_wait()
        started_here = False
        while runner.state is not State.HEALTHY:
            refusal = runner.refusal()  # an external server that is down: nothing will bring it back
            if refusal is not None:
                raise refusal
            state = runner.state
            if state in (State.STOPPED, State.FAILED):
                self._refuse_settled(runner, started_here)
                await self._start(runner)
                started_here = True
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise refused(
                    503, "timeout", f"{runner.name} did not become healthy within {self._max_wait():g}s (max_wait)", 5
                )
            await self.fleet.changed(remaining)  # STARTING, BACKOFF, UNHEALTHY, STOPPING: it moves on

    def _refuse_settled(self, runner: Runner, started_here: bool) -> None:
        """A stopped or failed instance that no request may start (again)."""
        if not runner.spec.on_demand:
            if runner.state is State.FAILED:
                raise refused(503, "instance_failed", f"{runner.name} failed; see `llmctl logs {runner.name}`")
            raise refused(
                503, "instance_stopped", f"{runner.name} is not running (start it with `llmctl up {runner.name}`)"
            )
        if started_here:  # the start this request caused did not end healthy
            word = "failed to start" if runner.state is State.FAILED else "was stopped while starting"
            raise refused(503, "instance_failed", f"{runner.name} {word}; see `llmctl logs {runner.name}`")

    async def _start(self, runner: Runner) -> None:
        async with self._admission:  # serialised: two starts never count the same free room
            if runner.state not in (State.STOPPED, State.FAILED):
                return  # another request started it while this one waited for the lock
            await self._make_room(runner)
            runner.usage.starts += 1
            runner.usage.keep_alive = None  # a new load uses the configured ttl (Ollama: OLLAMA_KEEP_ALIVE)
            self._loading[runner.name] = time.monotonic()
            await runner.request("start", "a request through the gateway", runner.spec)
        self.fleet.publish(runner)

    def _waiter_left(self, runner: Runner) -> None:
        """The last waiter of a start on demand left: keep loading for the grace period (a client
        with a short timeout retries and finds it further on), then abandon it if still nobody waits."""
        if runner.usage.queued > 1 or runner.name not in self._loading:
            return
        previous = self._abandon.pop(runner.name, None)
        if previous is not None:
            previous.cancel()
        grace = self._grace()
        self._abandon[runner.name] = asyncio.get_running_loop().call_later(grace, self._maybe_abandon, runner, grace)

    def _maybe_abandon(self, runner: Runner, grace: float) -> None:
        self._abandon.pop(runner.name, None)
        usage = runner.usage
        if usage.queued or usage.in_flight or runner.state not in (State.STARTING, State.BACKOFF):
            return
        self._loading.pop(runner.name, None)
        runner.send("stop", f"abandoned: no request waited for it in the {grace:g}s after the last one left")

    # -- room --------------------------------------------------------------------------------

    def budgets(self) -> dict[str, int]:
        """The budget of every pool: host memory, and each NVIDIA GPU NVML lists."""
        budgets = {HOST_POOL: self.fleet.memory_budget or default_budget()}
        budgets.update(gpu_budgets(NVML.devices(), self.fleet.gpu_memory_budget))
        return budgets

    @staticmethod
    def planned(runner: Runner) -> dict[str, int]:
        """What an instance will take once loaded, by pool: its estimate or its peak from an earlier run,
        whichever is larger; of unknown size, its max_memory or UNKNOWN_SIZE, never 0."""
        if runner.estimate_pools is not None:
            planned = dict(runner.estimate_pools.pools)
        else:
            planned = {HOST_POOL: runner.estimate or runner.spec.max_memory or UNKNOWN_SIZE}
        for pool, peak in runner.peak_pools.items():
            planned[pool] = max(planned.get(pool, 0), peak)
        return planned

    def footprint(self, runner: Runner, now: float) -> dict[str, int]:
        """What a running instance counts for, by pool: measured once it settled; while it starts (or
        just after) what it measures may be only what it mapped so far, so the larger of that and its plan."""
        measured = runner.memory_pools
        planned = self.planned(runner)
        if measured is None:
            return planned
        if runner.state is State.STARTING or now - runner.state_since < SETTLING:
            return {pool: max(planned.get(pool, 0), measured.get(pool, 0)) for pool in {*planned, *measured}}
        return dict(measured)

    def _in_use(self, runners: list[Runner], now: float) -> dict[str, int]:
        total: dict[str, int] = {}
        for runner in runners:
            total = add_pools(total, self.footprint(runner, now))
        return total

    async def _make_room(self, newcomer: Runner) -> None:
        """Stop idle on-demand instances, least recently used first, until the newcomer fits in every
        pool it needs; wait (bounded) for busy ones to drain; refuse at once, stopping nothing, when it
        could not fit even with every on-demand instance gone."""
        budgets = self.budgets()
        need = self.planned(newcomer)
        deadline = time.monotonic() + self._drain_timeout()
        while True:
            now = time.monotonic()
            others = [r for r in self.fleet.runners.values() if r is not newcomer and r.state in RUNNING]
            self.fleet.sample([r for r in others if r.server is not None])
            in_use = self._in_use(others, now)
            over = [
                pool for pool, size in need.items() if pool in budgets and in_use.get(pool, 0) + size > budgets[pool]
            ]
            if not over:
                return
            pinned = self._in_use([r for r in others if not r.spec.on_demand], now)
            for pool in over:
                if pinned.get(pool, 0) + need[pool] > budgets[pool]:  # not even with every on-demand one gone
                    raise self._no_room(
                        newcomer, pool, need, in_use, budgets, "even with every on-demand instance stopped"
                    )
            idle = [r for r in others if self.evictable(r) and any(self.footprint(r, now).get(p) for p in over)]
            if idle:
                victim = min(idle, key=lambda r: max(r.usage.last_used, r.state_since))
                victim.usage.evictions += 1
                pool = over[0]
                figures = (
                    f"{pool}: {format_bytes(in_use.get(pool, 0))} in use + ~{format_bytes(need[pool])} "
                    f"> budget {format_bytes(budgets[pool])}"
                )
                if await victim.request("expire", f"evicted to make room for {newcomer.name} ({figures})") == "busy":
                    victim.usage.evictions -= 1  # a request reached it meanwhile: look again
                    continue
                self.fleet.publish(victim)
                continue
            busy = [r for r in others if r.spec.on_demand and (r.usage.in_flight or r.usage.queued)]
            if busy and time.monotonic() < deadline:
                await asyncio.sleep(DRAIN_POLL)
                continue
            detail = f"busy: {', '.join(r.name for r in busy)}" if busy else "none can be stopped"
            raise self._no_room(newcomer, over[0], need, in_use, budgets, detail)

    def _no_room(
        self,
        newcomer: Runner,
        pool: str,
        need: dict[str, int],
        in_use: dict[str, int],
        budgets: dict[str, int],
        detail: str,
    ) -> AdmissionRefused:
        where = "memory" if pool == HOST_POOL else f"memory on {pool}"
        return refused(
            503,
            "insufficient_memory",
            f"not enough {where} to start {newcomer.name}: it needs ~{format_bytes(need[pool])}, the instances use "
            f"{format_bytes(in_use.get(pool, 0))} of the budget {format_bytes(budgets[pool])} ({detail})",
            30,
        )

    @staticmethod
    def evictable(runner: Runner) -> bool:
        """Idle, healthy and on demand: the only instances ttl or eviction may stop."""
        usage = runner.usage
        return runner.spec.on_demand and runner.state is State.HEALTHY and not usage.in_flight and not usage.queued

    # -- ttl ---------------------------------------------------------------------------------

    async def expire_idle(self) -> None:
        """Stop on-demand instances idle for their `ttl` (from the end of their last request, or from
        when they became healthy if no request came since)."""
        while True:
            await asyncio.sleep(TTL_TICK)
            now = time.monotonic()
            for runner in list(self.fleet.runners.values()):
                ttl = runner.usage.ttl(runner.spec.ttl)
                if ttl is None or not self.evictable(runner):
                    continue
                idle_since = max(runner.usage.last_used, runner.state_since)
                if now - idle_since >= ttl:
                    runner.send("expire", f"idle for {ttl:g}s (ttl)")

    def close(self) -> None:
        for handle in self._abandon.values():
            handle.cancel()
        self._abandon.clear()
        with contextlib.suppress(Exception):
            self._loading.clear()
