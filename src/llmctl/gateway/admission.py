"""Who may go through the gateway to an instance, and when: on-demand starts, bounded queues, idle
TTL, and eviction by the memory the instances measure.

Every decision is taken by asking the instance's runner (llmctl.runner) and awaiting its answer; the
gateway never signals a process. One start per instance however many requests ask for it; a start
whose every waiting request went away is abandoned; an instance with a request in flight is never
evicted, and pinned instances (without `on_demand`) never are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..budget import format_bytes
from ..memory import default_budget
from ..states import RUNNING, State
from .metrics import InstanceMetrics

if TYPE_CHECKING:
    from ..runner import Runner
    from ..spec import GatewaySpec
    from ..supervisor import Supervisor

TTL_TICK = 0.25
DRAIN_POLL = 0.1


class Refused(Exception):
    """A request the gateway answers itself, with an HTTP status and a reason."""

    def __init__(self, status: int, message: str, code: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class Admission:
    def __init__(self, supervisor: Supervisor, spec: GatewaySpec) -> None:
        self.supervisor = supervisor
        self.spec = spec
        self.metrics: dict[str, InstanceMetrics] = {}
        self.last_used: dict[str, float] = {}
        self.started: dict[str, float] = {}  # instances the gateway started, and when
        self._locks: dict[str, asyncio.Lock] = {}

    def metric(self, name: str) -> InstanceMetrics:
        return self.metrics.setdefault(name, InstanceMetrics())

    @contextlib.asynccontextmanager
    async def admit(self, runner: Runner) -> AsyncIterator[None]:
        """Hold a place on a serving instance for one request (starting it first if need be)."""
        metric = self.metric(runner.name)
        if runner.state is not State.HEALTHY:
            await self._wait_until_serving(runner, metric)
        metric.in_flight += 1
        try:
            yield
        finally:
            metric.in_flight -= 1
            self.last_used[runner.name] = time.monotonic()

    async def _wait_until_serving(self, runner: Runner, metric: InstanceMetrics) -> None:
        if metric.queued >= runner.spec.max_queue:
            raise Refused(429, f"{runner.name}: {metric.queued} requests already wait for it to start", "queue_full", 5)
        metric.queued += 1
        try:
            if runner.spec.on_demand and runner.state in (State.STOPPED, State.FAILED):
                await self._start(runner, metric)
            await self._until_healthy(runner)
        except asyncio.CancelledError:
            if metric.queued == 1 and runner.name in self.started and runner.state is State.STARTING:
                # The last request waiting for this start went away: nobody wants it any more.
                runner.send("stop", "abandoned: every request waiting for it went away")
                self.started.pop(runner.name, None)
            raise
        finally:
            metric.queued -= 1
        started = self.started.get(runner.name)
        if started is not None and metric.load_seconds is None:
            metric.load_seconds = time.monotonic() - started
            self.supervisor.sampler.sample([runner])  # its measured memory, for the next decision

    async def _until_healthy(self, runner: Runner) -> None:
        deadline = time.monotonic() + self.spec.max_wait
        while runner.state is not State.HEALTHY:
            if runner.state is State.FAILED:
                raise Refused(503, f"{runner.name} failed: {runner.last_error or runner.reason}", "instance_failed")
            if runner.state is State.STOPPED:
                hint = "" if runner.spec.on_demand else f" (start it with `llmctl up {runner.name}`)"
                raise Refused(503, f"{runner.name} is not running{hint}", "instance_stopped")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Refused(503, f"{runner.name} did not become healthy within {self.spec.max_wait:g}s", "timeout")
            await self.supervisor.changed(remaining)

    async def _start(self, runner: Runner, metric: InstanceMetrics) -> None:
        lock = self._locks.setdefault(runner.name, asyncio.Lock())
        async with lock:  # one start, however many requests ask for it at once
            if runner.state not in (State.STOPPED, State.FAILED):
                return
            await self._make_room(runner)
            metric.starts += 1
            metric.load_seconds = None
            self.started[runner.name] = time.monotonic()
            await runner.request("start", "a request through the gateway", runner.spec)

    async def _make_room(self, newcomer: Runner) -> None:
        """Stop idle on-demand instances, least recently used first, until the newcomer's estimate fits
        beside what the others measure; wait (bounded) for busy ones to drain; else refuse."""
        budget = self.supervisor.memory_budget or default_budget()
        need = newcomer.estimate or 0
        deadline = time.monotonic() + self.spec.drain_timeout
        while True:
            others = [r for r in self.supervisor.runners.values() if r is not newcomer and r.state in RUNNING]
            self.supervisor.sampler.sample([r for r in others if r.server is not None])
            in_use = sum(r.memory.value if r.memory else (r.estimate or 0) for r in others)
            if in_use + need <= budget:
                return
            idle = [r for r in others if self._evictable(r)]
            if idle:
                victim = min(idle, key=lambda r: self.last_used.get(r.name, r.state_since))
                self.metric(victim.name).evictions += 1
                figures = f"{format_bytes(in_use)} in use + ~{format_bytes(need)} > budget {format_bytes(budget)}"
                await victim.request("stop", f"evicted to make room for {newcomer.name} ({figures})")
                continue
            busy = [r for r in others if r.spec.on_demand and self.metric(r.name).in_flight]
            if busy and time.monotonic() < deadline:
                await asyncio.sleep(DRAIN_POLL)
                continue
            raise Refused(
                503,
                f"not enough memory to start {newcomer.name}: it needs ~{format_bytes(need)}, the instances use "
                f"{format_bytes(in_use)} of the budget {format_bytes(budget)}, and none can be stopped"
                + (f" (busy: {', '.join(r.name for r in busy)})" if busy else ""),
                "insufficient_memory",
            )

    def _evictable(self, runner: Runner) -> bool:
        metric = self.metric(runner.name)
        return runner.spec.on_demand and runner.state is State.HEALTHY and not metric.in_flight and not metric.queued

    async def expire_idle(self) -> None:
        """Stop on-demand instances idle for their `ttl` (from the end of their last request)."""
        while True:
            await asyncio.sleep(TTL_TICK)
            now = time.monotonic()
            for runner in list(self.supervisor.runners.values()):
                ttl = runner.spec.ttl
                if ttl is None or not self._evictable(runner):
                    continue
                idle_since = max(self.last_used.get(runner.name, runner.state_since), runner.state_since)
                if now - idle_since >= ttl:
                    runner.send("stop", f"idle for {ttl:g}s (ttl)")
                    self.started.pop(runner.name, None)
