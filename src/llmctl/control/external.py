"""The runner of a server llmctl attaches to but did not start (backend `external`).

It goes through the same states as any instance, so `status`, `wait`, the budget and the gateway
treat it alike, but nothing here spawns or signals a process: `up` attaches once the server answers,
a failing server turns `unhealthy` (and back), never restarted, and `down` detaches and leaves it
running. Its PID and memory are those of the process listening on its port, where this user may see
it (on Linux, another user's process hides its PID; on macOS, only the user's own are listed).
"""

from __future__ import annotations

import asyncio
import time

from llmctl.backends import Backend, NotReady, backend_for
from llmctl.control.mailbox import Request
from llmctl.control.runner import Runner
from llmctl.control.serverprocess import ServerProcess
from llmctl.control.state import InstanceRecord
from llmctl.control.states import WANTED_RUNNING, State
from llmctl.planes import Admission, AdmissionRefused
from llmctl.system import process
from llmctl.system.ports import listener_pid

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0")
ATTACHED = (State.STARTING, State.HEALTHY, State.UNHEALTHY)
FIND_PROCESS_EVERY = 30.0  # the listener is looked up again this often (a desktop app may restart it)


class ExternalRunner(Runner):
    async def _starting(self) -> None:
        spec = self.spec
        ready = asyncio.ensure_future(backend_for(spec.backend).wait_ready(spec, self.services.http))
        try:
            done = await self._wait_for({ready}, timeout=spec.health.start_timeout)
        finally:
            ready.cancel()
        failure = None
        if ready not in done:
            failure = f"nothing answers at {spec.url} within start_timeout ({spec.health.start_timeout:g}s)"
        elif ready.exception() is not None:
            error = ready.exception()
            failure = str(error) if isinstance(error, NotReady) else f"readiness check failed: {error}"
        if failure is not None:
            self.last_error = failure + "; start the server in its own app, then `llmctl up` again"
            self._move(State.FAILED, self.last_error)
            return
        self.health = "ok"
        self._find_process()
        self._move(State.HEALTHY, f"attached to {spec.url}" + self._process_note())

    async def _watching(self) -> None:
        spec = self.spec
        backend = backend_for(spec.backend)
        failures, looked_up = 0, time.monotonic()
        watched: tuple[ServerProcess, asyncio.Future[int | None]] | None = None
        try:
            while True:
                watched = self._watch_exit(watched)
                done = await self._wait_for({watched[1]} if watched else set(), timeout=spec.health.interval)
                if watched is not None and watched[1] in done:
                    self._process_exited(watched[0].pid)
                    watched = None
                    continue
                failures, looked_up = await self._probe(backend, failures, looked_up)
        finally:
            if watched is not None:
                watched[1].cancel()

    def _watch_exit(
        self, watched: tuple[ServerProcess, asyncio.Future[int | None]] | None
    ) -> tuple[ServerProcess, asyncio.Future[int | None]] | None:
        """An exit watch on the server's process, where llmctl sees it (the listener on its port): a pidfd
        on Linux, kqueue on macOS (llmctl.system.process.wait_for_exit, as for a supervised server), so a
        death shows at once, not after failure_threshold probes."""
        if watched is not None and watched[0] is self.server:
            return watched
        if watched is not None:
            watched[1].cancel()
        if self.server is None:
            return None
        return self.server, asyncio.ensure_future(self.server.exited())

    def _process_exited(self, pid: int) -> None:
        self.server, self.memory = None, None  # no process: no figures, rather than stale ones
        self.health = "its process exited"
        if self.state is State.HEALTHY:
            self._move(State.UNHEALTHY, f"its process (pid {pid}) exited; llmctl does not restart it")

    async def _probe(self, backend: Backend, failures: int, looked_up: float) -> tuple[int, float]:
        """One health check, and what follows from it: (failures in a row, when the process was looked up)."""
        spec = self.spec
        healthy = await backend.is_healthy(spec, self.services.http)
        failures = 0 if healthy else failures + 1
        if time.monotonic() - looked_up > FIND_PROCESS_EVERY or (self.server and not self.server.handle.is_alive()):
            self._find_process()
            looked_up = time.monotonic()
        if healthy:
            self.health = "ok"
            if self.state is State.UNHEALTHY:
                self._find_process()
                self._move(State.HEALTHY, "answers again" + self._process_note())
            return failures, looked_up
        self.health = f"failing ({failures})"
        if self.state is State.HEALTHY and failures >= spec.health.failure_threshold:
            # Not ours to restart: shown as unhealthy, watched until it answers again.
            self._move(State.UNHEALTHY, f"{failures} health checks failed in a row; llmctl does not restart it")
        return failures, looked_up

    def refusal(self) -> AdmissionRefused | None:
        """A request for a server that is down is refused at once (503): nothing llmctl does will bring
        it back, so waiting for it (up to the gateway's max_wait) would only hang the client."""
        if self.state is not State.UNHEALTHY:
            return None
        return AdmissionRefused(
            Admission(
                503,
                "instance_down",
                f"{self.name}: the external server at {self.spec.url} is down ({self.reason}); start it in its own app",
                5,
            )
        )

    async def _stop_process(self, reason: str) -> None:
        """Detach: the server runs on, as its own app decides."""
        if self.state is not State.STOPPING:
            self._move(State.STOPPING, f"{reason}: detaching (llmctl never stops a server it did not start)")
        self._clear_process()

    async def _handle(self, request: Request) -> None:
        if request.kind == "replace":  # max_memory: not ours to replace
            request.answer("not ours")
            return
        if request.kind in ("stop", "start", "restart") and self.state in ATTACHED:
            await self._stop_process(request.reason)  # detach first, whether or not its process is visible
        await super()._handle(request)

    def _find_process(self) -> None:
        """The process listening on the port, as the server's process for PID, uptime and memory."""
        pid = listener_pid(self.spec.port) if self.spec.host in LOCAL_HOSTS else None
        if pid is None:
            self.server, self.memory = None, None  # no process seen: no figures, rather than stale ones
            return
        if self.server is not None and self.server.pid == pid and self.server.handle.is_alive():
            return
        try:
            handle = process.ProcessHandle.of(pid)
            started = handle.create_time
        except Exception:  # it went away between the two calls
            self.server, self.memory = None, None
            return
        self.server = ServerProcess.adopted(handle, pid, started)
        self.sampled_at = 0.0

    def _process_note(self) -> str:
        if self.server is not None:
            return f" (pid {self.server.pid})"
        if self.spec.host not in LOCAL_HOSTS:
            return " (on another machine: no PID or memory)"
        return (
            " (its process is not visible to this user: no PID or memory; on macOS, another user's processes need root)"
        )

    def record(self) -> InstanceRecord | None:
        """Never a PID: a later supervisor must not adopt, and so one day stop, a server that is not ours."""
        wanted = self.state in WANTED_RUNNING
        return InstanceRecord(self.name, self.spec.to_dict(), restarts=self.restarts) if wanted else None
