"""Memory and CPU of every instance's process tree, sampled adaptively, and max_memory enforced.

What changes is sampled often (a server that started in the last minute, one with max_memory to
enforce), the rest every SAMPLE_EVERY seconds; `status` resamples what is older than
STATUS_FRESHNESS. Trees are sampled in batches: when one is due, those due within half their
interval join it, so the process table is read once per batch rather than every tick. A sample
rereads PSS (the dear part: llmctl.memory.measure) only when the tree's RSS moved, when PSS_EVERY
passed, or when a server came or went: the pages it shared with the others then count differently
in their PSS. Over max_memory for memory_grace seconds, the runner is asked to replace the server;
the sampler never signals a process itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from llmctl.control.states import State
from llmctl.memory.budget import format_bytes
from llmctl.memory.measure import children_map, forget_exited, sample_tree
from llmctl.memory.pools import NVML, pools_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from llmctl.control.runner import Runner
    from llmctl.system.process import ProcessHandle

log = logging.getLogger("llmctl.control.sampler")

SAMPLE_TICK = 1.0
SAMPLE_EVERY = 10.0
SAMPLE_EVERY_WATCHED = 2.0
YOUNG = 60.0
STATUS_FRESHNESS = 5.0
PSS_EVERY = 60.0  # the longest a tree's PSS is carried over while its RSS stays put


class Sampler:
    def __init__(self, runners: Callable[[], Iterable[Runner]]) -> None:
        self.runners = runners
        self._cpu_samplers: dict[int, Any] = {}
        self._fleet: frozenset[ProcessHandle] = frozenset()  # the servers the last batch saw

    async def run_forever(self) -> None:
        while True:
            self.sample_due()
            await asyncio.sleep(SAMPLE_TICK)

    def sample_due(self) -> None:
        """One batch of what is due (all of it, PSS included, when a server came or went)."""
        now = time.monotonic()
        running = [runner for runner in self.runners() if runner.server]
        fleet = frozenset(runner.server.handle for runner in running if runner.server)
        if fleet != self._fleet:  # a server came or went: every PSS changed a little
            self._fleet = fleet
            due, reread = running, True
        elif any(now - runner.sampled_at >= _every(runner, now) for runner in running):
            due, reread = [runner for runner in running if now - runner.sampled_at >= _every(runner, now) / 2], False
        else:
            return
        for runner in self.sample(due, reread_pss=reread):
            enforce_max_memory(runner)

    def refresh_stale(self) -> None:
        now = time.monotonic()
        self.sample([r for r in self.runners() if r.server and now - r.sampled_at > STATUS_FRESHNESS])

    def sample(self, runners: list[Runner], *, reread_pss: bool = False) -> list[Runner]:
        """Sample these runners' trees with one read of the process table; those sampled."""
        if not runners:
            return []
        per_device = NVML.used_by_pid()  # {pid: {device: bytes}}; None where NVML is not available
        gpu = None if per_device is None else {pid: sum(used.values()) for pid, used in per_device.items()}
        children = children_map()
        sampled = []
        for runner in runners:
            if runner.server is None:
                continue
            runner.sampled_at = now = time.monotonic()
            previous = runner.memory
            if reread_pss or previous is None or now - previous.pss_at >= PSS_EVERY:
                previous = None
            try:
                runner.memory = sample_tree(runner.server.handle, self._cpu_samplers, gpu, children, previous)
                _remember_pools(runner, per_device)
            except Exception as exc:  # a sampling error must never hurt supervision
                log.debug("sampling %s failed: %s", runner.name, exc)
                continue
            sampled.append(runner)
        live = {pid for runner in self.runners() if runner.memory for pid in runner.memory.pids}
        forget_exited(self._cpu_samplers, live)
        return sampled


def _every(runner: Runner, now: float) -> float:
    young = runner.server is not None and now - runner.server.started_mono < YOUNG
    return SAMPLE_EVERY_WATCHED if young or runner.spec.max_memory is not None else SAMPLE_EVERY


def enforce_max_memory(runner: Runner) -> None:
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
        runner.send("replace", f"memory: {format_bytes(figure)} over max_memory {format_bytes(limit)} for {grace:g}s")


def _remember_pools(runner: Runner, per_device: dict[int, dict[int, int]] | None) -> None:
    """The sample by pool, and the peak of each pool (admission counts it when the instance starts again)."""
    memory = runner.memory
    runner.memory_pools = None if memory is None else pools_of(memory.value, memory.pids, per_device)
    for pool, size in (runner.memory_pools or {}).items():
        runner.peak_pools[pool] = max(runner.peak_pools.get(pool, 0), size)
