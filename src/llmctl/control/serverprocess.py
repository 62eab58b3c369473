"""One incarnation of an instance's server: the process, its group, when it started.

A thin layer over llmctl.system.process that the runner owns: it starts one (in a session of its own),
waits for its exit, and stops it and everything in its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from dataclasses import dataclass

from llmctl.memory.pools import NVML
from llmctl.system import process

GPU_FREE_WAIT = 10.0  # seconds a stop waits for NVML to stop listing the server


@dataclass
class ServerProcess:
    handle: process.ProcessHandle
    pgid: int
    started_wall: float  # wall clock, for uptime across supervisors
    started_mono: float
    popen: subprocess.Popen[bytes] | None = None  # None for a server a previous supervisor started

    @classmethod
    def spawn(cls, argv: list[str], *, env: dict[str, str], output: int, cwd: str | None) -> ServerProcess:
        popen = process.spawn(argv, env=env, output=output, cwd=cwd)
        # A new session: its own process group, led by the server.
        return cls(process.handle_of_child(popen.pid), popen.pid, time.time(), time.monotonic(), popen)

    @classmethod
    def adopted(cls, handle: process.ProcessHandle, pgid: int, started_wall: float) -> ServerProcess:
        started_mono = time.monotonic() - max(0.0, time.time() - started_wall)
        return cls(handle, pgid, started_wall, started_mono)

    @property
    def pid(self) -> int:
        return self.handle.pid

    async def exited(self) -> int | None:
        """Return when the server exits: its code for our own child, None for an adopted one."""
        return await process.wait_for_exit(self.popen, self.handle)

    async def stop(self, timeout: float) -> bool:
        """SIGTERM once, SIGKILL after `timeout`; True when the whole tree is gone: reaped (no zombie
        with live threads) and, on NVIDIA, no longer listed by NVML (its GPU memory freed; bounded)."""
        # Only where a GPU may hold its memory: listing the tree reads the whole process table.
        pids = {member.pid for member in process.tree(self.handle)} | {self.pid} if NVML.available() else set()
        done = await process.stop_tree(self.handle, self.pgid, timeout, reap=self.popen.poll if self.popen else None)
        self.reap_group()
        await _until_gpu_freed(pids)
        return done

    def reap_group(self) -> None:
        """After the leader died or was stopped: nothing of its group may keep a port or memory."""
        process.kill_group_leftovers(self.pgid)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=0)


async def _until_gpu_freed(pids: set[int], timeout: float = GPU_FREE_WAIT) -> bool:
    """Wait until no GPU lists these processes (the driver frees a dead process's memory a moment
    after it exits); True at once where NVML is not available."""
    deadline = time.monotonic() + timeout
    while pids and NVML.lists(pids):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True
