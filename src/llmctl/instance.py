"""One instance as the supervisor sees it: its live record and how `status` describes it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import process
from .memory import TreeMemory, memory_fields
from .redact import redact_env
from .spec import InstanceSpec

STATES = ("starting", "healthy", "unhealthy", "backoff", "failed", "stopped")
RUNNING_STATES = ("starting", "healthy", "unhealthy")


@dataclass
class Instance:
    """Everything the supervisor knows about one instance, live."""

    spec: InstanceSpec
    state: str = "stopped"
    popen: subprocess.Popen[bytes] | None = None
    handle: process.ProcessHandle | None = None
    relay_popen: subprocess.Popen[bytes] | None = None
    relay: process.ProcessHandle | None = None
    pgid: int | None = None
    started_wall: float | None = None
    started_mono: float | None = None
    restarts: int = 0
    start_failures: int = 0
    consecutive_failures: int = 0
    recent_starts: deque[float] = field(default_factory=deque)
    last_exit: str | None = None
    last_error: str | None = None
    health: str | None = None
    next_start_at: float | None = None
    task: asyncio.Task[None] | None = None
    memory: TreeMemory | None = None
    estimate: int | None = None
    over_memory_since: float | None = None
    kill_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def clear_process(self) -> None:
        self.popen = self.handle = self.pgid = None
        self.relay_popen = self.relay = None
        self.started_wall = self.started_mono = None
        self.memory = None
        self.over_memory_since = None
        self.health = None


def describe(instance: Instance, log_path: str) -> dict[str, Any]:
    """One instance as `status --json` shows it."""
    spec = instance.spec
    now = time.monotonic()
    running = instance.handle is not None and instance.state in RUNNING_STATES
    return {
        "name": spec.name,
        "backend": spec.backend,
        "model": spec.model,
        "state": instance.state,
        "pid": instance.handle.pid if running and instance.handle else None,
        "host": spec.host,
        "port": spec.port,
        "url": spec.url,
        "restarts": instance.restarts,
        "uptime_s": round(now - instance.started_mono, 3) if running and instance.started_mono else None,
        **memory_fields(instance.memory if running else None, instance.estimate),
        "health": instance.health,
        "start_failures": instance.start_failures,
        "last_exit": instance.last_exit,
        "last_error": instance.last_error,
        "next_restart_in_s": (
            round(max(0.0, instance.next_start_at - now), 3)
            if instance.state == "backoff" and instance.next_start_at
            else None
        ),
        "log": log_path,
        "env": redact_env(spec.env),
    }
