"""The contract every backend adapter fulfils.

An adapter knows four things about its server: how to find its program, how to build its command
line and environment, how to tell it is ready (and later, still healthy), and which config
mistakes to catch before anything starts. Everything else (spawning, stopping the process group,
restarts, memory of the process tree) is the same for all servers and lives in the supervisor.

Adapters import asyncio inside their async methods, not at the top: the CLI loads them to check a
config, without an event loop, and asyncio's import would cost `llmctl up` 20 ms.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llmctl.errors import BinaryNotFound
from llmctl.memory.pools import Device, Estimate, host_only

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec
    from llmctl.system.http import HttpClient

# Readiness is polled at a growing interval: a server ready in 60 ms is seen within ~20 ms of it,
# one that loads for minutes costs a probe every READY_POLL_MAX, not 20 a second in its log.
READY_POLL_FIRST = 0.01
READY_POLL_GROWTH = 1.5
READY_POLL_MAX = 0.5
LONGEST_LOAD_S = 24 * 3600.0


class NotReady(Exception):
    """Raised by `wait_ready` when the server will not become ready however long we wait."""


class Backend(ABC):
    name: ClassVar[str]
    program: ClassVar[str]
    install_hint: ClassVar[str]
    # Environment variables read by the server that an inherited environment must not leak into it.
    scrubbed_env_prefixes: ClassVar[tuple[str, ...]] = ()
    # What a server prints when its model will not load: a start fails at once, in its own words.
    load_failure_markers: ClassVar[tuple[str, ...]] = ("Traceback (most recent call last)",)

    # What a server logs for each health probe: `llmctl logs` hides these lines unless --probes.
    probe_log_markers: ClassVar[tuple[str, ...]] = ()

    def is_probe_noise(self, line: str) -> bool:
        return any(marker in line for marker in self.probe_log_markers)

    def check_spec(self, spec: InstanceSpec) -> tuple[str, str] | None:
        """A (field, message) problem with this instance's config that no start could fix, or None."""
        return None

    def find_program(self, configured: str | None) -> list[str]:
        """The command that runs this backend's server, before its arguments."""
        if configured:
            found = resolve_program(configured)
            if found:
                return [found]
            raise BinaryNotFound(f"{self.name}: configured program {configured!r} not found. {self.install_hint}")
        found = resolve_program(self.program)
        if found:
            return [found]
        raise BinaryNotFound(f"{self.name}: {self.program!r} not found on PATH. {self.install_hint}")

    def upstream_model(self, spec: InstanceSpec) -> str | None:
        """The `model` the gateway puts in a request for this instance (None: leave it out)."""
        return spec.name  # llmctl passes `--alias NAME` where the server has one

    def parallel_slots(self, spec: InstanceSpec) -> int:
        """How many requests the server works on at once (the gateway sizes its pool from this)."""
        return 1

    def version_command(self, program: list[str]) -> list[str]:
        """A command that prints the server's version (`llmctl doctor` shows it)."""
        return [*program, "--version"]

    @abstractmethod
    def command(self, spec: InstanceSpec, program: list[str]) -> list[str]:
        """The full argv: the program, the arguments the adapter must pass, then the user's args."""

    def environment(self, spec: InstanceSpec, inherited: dict[str, str]) -> dict[str, str]:
        # str.startswith(()) is False, so a backend without prefixes keeps everything.
        env = {key: value for key, value in inherited.items() if not key.startswith(self.scrubbed_env_prefixes)}
        env.update(spec.env)
        return env

    def download_folders(self, spec: InstanceSpec, env: dict[str, str]) -> list[Path]:
        """Where this server puts what it downloads before it loads (the start's progress is seen there)."""
        return []

    def estimate_memory(self, spec: InstanceSpec) -> int | None:
        """Bytes this instance will take once loaded, or None when it cannot be known before it runs."""
        return None

    def estimate(self, spec: InstanceSpec, devices: list[Device]) -> Estimate | None:
        """Bytes by memory pool (llmctl.memory.pools) once loaded on these GPUs ([]: none), with the
        parts they add up from; None when it cannot be known before it runs. By default all of
        `estimate_memory` on the host: a backend that offloads to GPUs says how."""
        total = self.estimate_memory(spec)
        return host_only(total) if total is not None else None

    async def reported_memory(self, spec: InstanceSpec, http: HttpClient) -> int | None:
        """What the running server itself says its model takes, where it says so."""
        return None

    @abstractmethod
    async def wait_ready(self, spec: InstanceSpec, http: HttpClient) -> None:
        """Return once the server can answer a request for its model; raise NotReady if it never will.

        The supervisor gives it time while the start makes progress (llmctl.progress), up to the
        instance's start_timeout without any, and cancels it if the process exits.
        """

    def load_failure(self, lines: list[str]) -> str | None:
        """The server's own line saying its load failed, from what it logged since it started."""
        for index, line in enumerate(lines):
            if any(marker in line for marker in self.load_failure_markers):
                return _error_line(lines[index:]) or line.strip()
        return None

    @abstractmethod
    def liveness_url(self, spec: InstanceSpec) -> str:
        """A cheap URL that answers 2xx while the server is healthy."""

    async def is_healthy(self, spec: InstanceSpec, http: HttpClient) -> bool:
        status = await get_status(http, self.liveness_url(spec), spec.health.timeout)
        return status is not None and 200 <= status < 300


def _error_line(lines: list[str]) -> str | None:
    """A Python traceback's last word (`RuntimeError: ...`), where the lines hold one."""
    if not any("Traceback (most recent call last)" in line for line in lines):
        return None
    for line in lines:
        if line and not line.startswith((" ", "\t", "Traceback", "[llmctl")) and ":" in line:
            head = line.split(":", 1)[0]
            if head.replace(".", "").replace("_", "").isalnum() and head[0].isupper():
                return line.strip()
    return None


def load_timeout(spec: InstanceSpec) -> float:
    """How long one request that loads (or pulls) the model may take: the start's progress watch,
    not this, decides when a start has stalled, so only start_deadline bounds it."""
    return spec.health.start_deadline or LONGEST_LOAD_S


def resolve_program(program: str, workdir: str | None = None) -> str | None:
    """An executable path for `program`: a path (relative to `workdir`) or a name on PATH."""
    if os.sep in program:
        path = Path(program).expanduser()
        if not path.is_absolute() and workdir:
            path = Path(workdir) / path
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program)


async def get_status(http: HttpClient, url: str, timeout: float) -> int | None:
    """The HTTP status of GET url, or None when nothing answers in time.

    During a start each answer is reported to llmctl.progress: a new one ("Loading model") is progress."""
    from llmctl.logs.progress import report_answer
    from llmctl.system.http import HttpError

    try:
        response = await http.get(url, timeout=timeout)
    except HttpError:
        report_answer(None)
        return None
    report_answer(response.status_code, response.text if response.status_code != 200 else "")
    return response.status_code


def poll_delays() -> Iterator[float]:
    delay = READY_POLL_FIRST
    while True:
        yield delay
        delay = min(READY_POLL_MAX, delay * READY_POLL_GROWTH)


async def poll_until_ok(http: HttpClient, url: str, timeout: float, accept: tuple[int, ...] = (200,)) -> None:
    """Poll `url`, at a growing interval, until it answers with one of `accept`."""
    import asyncio  # here, not at the top: see the module docstring

    for delay in poll_delays():
        if await get_status(http, url, timeout) in accept:
            return
        await asyncio.sleep(delay)


def resolve_model_path(spec: InstanceSpec, model: str) -> Path:
    path = Path(model).expanduser()
    return path if path.is_absolute() else Path(spec.workdir) / path


def option_value(args: list[str], names: tuple[str, ...]) -> str | None:
    """The value given to any of `names` in an argv (`-c 4096` or `--ctx-size=4096`); the last wins."""
    found = None
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            found = args[index + 1]
        elif "=" in arg and arg.split("=", 1)[0] in names:
            found = arg.split("=", 1)[1]
    return found
