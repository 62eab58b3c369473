"""The data plane seen from the control plane: the gateway's process and its link to the supervisor.

The gateway (llmctl.gateway) runs as a process of its own, in a session of its own, so that nothing a
client sends it (a flood of connections, a compressed body, a slow header) can stall health probes,
restarts or the control socket. The supervisor:

- starts it when the config has a `gateway:` section and waits until it listens (or says why not);
- watches it through a pidfd and starts it again at once when it dies (a short, growing delay only
  when it keeps dying right after start);
- records it in state.json (PID *and* create time), so a new supervisor adopts a running gateway
  instead of starting another: the listening socket never closes across a supervisor restart;
- serves the gateway's subscription (llmctl.planes): pushes a snapshot of the routes on every
  config change and a route on every state change, and answers what the gateway asks through
  llmctl.control.demand, where every lifecycle decision is taken;
- stops it (SIGTERM to its group, then SIGKILL) when the gateway leaves the config or on `down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from llmctl.backends import backend_for
from llmctl.control.serverprocess import ServerProcess
from llmctl.errors import ConfigError
from llmctl.planes import AdmissionRefused, ChannelError, Route, decode, encode
from llmctl.system import process
from llmctl.system.secrets import read_secret

if TYPE_CHECKING:
    from llmctl.control.demand import Demand
    from llmctl.control.runner import Runner
    from llmctl.paths import StatePaths
    from llmctl.spec import GatewaySpec, InstanceSpec

log = logging.getLogger("llmctl.control.gateway")
LISTEN_TIMEOUT = 20.0  # from spawn to listening: Python and aiohttp start in well under a second
STOP_TIMEOUT = 5.0
QUICK_DEATH = 2.0  # a gateway that dies sooner than this after start is restarted after a growing delay
MAX_RESTART_DELAY = 5.0


def gateway_api_key(spec: GatewaySpec, environ: dict[str, str]) -> str | None:
    """The gateway's key, from an environment variable or a 0600 file, or None when it needs none.

    Raises ConfigError when the key is named but missing, or when a non-loopback address has none."""
    key = read_secret("gateway.api_key", spec.api_key_env, spec.api_key_file, environ)
    if key is None and not _is_loopback_address(spec.host):
        raise ConfigError(
            f"the gateway would listen on {spec.host} without an API key: set gateway.api_key_env or "
            "gateway.api_key_file, or bind it to 127.0.0.1"
        )
    return key


def _is_loopback_address(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parallel(spec: InstanceSpec) -> int:
    try:
        return max(1, backend_for(spec.backend).parallel_slots(spec))
    except (KeyError, ValueError):
        return 1


@dataclass
class Link:
    """One subscribed gateway connection and the requests open on it."""

    writer: asyncio.StreamWriter
    pid: int | None
    open: dict[int, Runner] = field(default_factory=dict)  # request id -> the runner it counts on
    waiting: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # acquires not answered yet

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))


class GatewayProcess:
    """Start, watch, adopt and stop the gateway process; serve its link. `runners` is the supervisor's
    dict (read, never changed here); `on_record` is called whenever the record to persist changes."""

    def __init__(self, paths: StatePaths, environ: dict[str, str], runners: dict[str, Runner], demand: Demand) -> None:
        self.paths = paths
        self.environ = environ
        self.runners = runners
        self.demand = demand
        self.spec: GatewaySpec | None = None
        self.server: ServerProcess | None = None
        self.link: Link | None = None
        self.restarts = 0
        self.on_record: Any = lambda: None
        self._listening: asyncio.Future[str] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._quick_deaths = 0

    # -- the process ---------------------------------------------------------------------

    async def ensure(self, spec: GatewaySpec | None) -> None:
        """Serve `spec` (None: no gateway). New settings reach a running gateway over its link: it
        keeps its listening socket when host and port are unchanged. Raises ConfigError when the
        gateway cannot serve them (key missing, port taken)."""
        if spec is not None:
            gateway_api_key(spec, self.environ)  # a missing key is the user's to fix: say so before anything
        previous, self.spec = self.spec, spec
        if spec is None:
            await self.stop()
            return
        if self.server is not None and self.server.handle.is_alive():
            if previous != spec:
                moved = previous is None or (previous.host, previous.port) != (spec.host, spec.port)
                await self._push_and_wait(moved)
            elif self._listening is not None and not self._listening.done():
                await self._until_listening()  # a start in progress (adoption's): its outcome is ours
            return
        await self._start()

    async def _push_and_wait(self, moved: bool) -> None:
        if self.link is None:
            return  # it is reconnecting: it gets the snapshot when it subscribes
        self._listening = asyncio.get_running_loop().create_future() if moved else None
        self.publish_all()
        if self._listening is not None:
            await self._until_listening()

    async def _start(self) -> None:
        self._stopping = False
        argv = [sys.executable, "-m", "llmctl.gateway", "--state-dir", str(self.paths.root)]
        output = process.open_log(self.paths.gateway_log)
        try:
            env = {**self.environ, "LLMCTL_STATE_DIR": str(self.paths.root)}
            self.server = ServerProcess.spawn(argv, env=env, output=output, cwd=None)
        except OSError as exc:
            raise ConfigError(f"cannot start the gateway: {exc.strerror or exc}") from None
        finally:
            os.close(output)
        log.info("gateway started (pid %s)", self.server.pid)
        self._listening = asyncio.get_running_loop().create_future()
        self.on_record()
        self._watch_current()
        await self._until_listening()

    async def _until_listening(self) -> None:
        assert self._listening is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._listening), LISTEN_TIMEOUT)
        except asyncio.TimeoutError:
            raise ConfigError(
                f"the gateway did not start listening within {LISTEN_TIMEOUT:g}s; see {self.paths.gateway_log}"
            ) from None
        except ConfigError:
            await self.stop()
            raise

    def adopt(self, record: dict[str, Any] | None) -> bool:
        """Take over the gateway a previous supervisor left running; False when there is none."""
        if not record:
            return False
        handle = process.ProcessHandle(int(record["pid"]), float(record["create_time"]))
        if not handle.is_alive():
            return False
        started = float(record.get("started_at") or time.time())
        self.server = ServerProcess.adopted(handle, int(record.get("pgid") or handle.pid), started)
        log.info("adopted the gateway (pid %s)", handle.pid)
        self._watch_current()
        return True

    def record(self) -> dict[str, Any] | None:
        """What state.json keeps of the gateway process."""
        server = self.server
        if server is None:
            return None
        handle = server.handle
        return {
            "pid": handle.pid,
            "create_time": handle.create_time,
            "pgid": server.pgid,
            "started_at": server.started_wall,
        }

    def _watch_current(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.ensure_future(self._watch_exit(self.server))

    async def _watch_exit(self, server: ServerProcess | None) -> None:
        assert server is not None
        code = await server.exited()
        server.reap_group()
        if self.server is not server or self._stopping:
            return
        self.server = None
        self.on_record()
        lived = time.monotonic() - server.started_mono
        message = f"the gateway {process.describe_exit(code)}"
        if self._listening is not None and not self._listening.done():
            self._listening.set_exception(ConfigError(f"{message} at start: {self._last_words()}"))
            return
        if self.spec is None:
            return
        self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH else 0
        delay = 0.0 if not self._quick_deaths else min(MAX_RESTART_DELAY, 0.25 * 2 ** (self._quick_deaths - 1))
        log.warning("%s; starting it again%s", message, f" in {delay:.2f}s" if delay else "")
        await asyncio.sleep(delay)
        if self.spec is None or self.server is not None or self._stopping:
            return
        self.restarts += 1
        try:
            await self._start()
        except ConfigError as exc:
            log.error("cannot start the gateway again: %s", exc)

    def _last_words(self) -> str:
        from llmctl.logs.files import last_lines

        try:
            lines = [line for line in last_lines(self.paths.gateway_log, 5) if line.strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"

    async def stop(self) -> None:
        """Stop the gateway's whole process group; its requests end with it."""
        self._stopping = True
        server, self.server = self.server, None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if server is not None:
            await server.stop(STOP_TIMEOUT)
            log.info("gateway stopped")
        self.on_record()

    # -- the link ------------------------------------------------------------------------

    def route(self, runner: Runner) -> Route:
        spec = runner.spec
        try:
            upstream_model = backend_for(spec.backend).upstream_model(spec)
        except (KeyError, ValueError):
            upstream_model = spec.name
        try:
            key = read_secret("upstream_api_key", spec.upstream_api_key_env, spec.upstream_api_key_file, self.environ)
        except ConfigError as exc:
            log.error("%s: %s; its requests go without a key", spec.name, exc)
            key = None
        return Route(
            name=spec.name,
            url=spec.url,
            backend=spec.backend,
            state=runner.state.value,
            aliases=tuple(spec.aliases),
            upstream_model=upstream_model,
            on_demand=spec.on_demand,
            parallel=_parallel(spec),
            upstream_api_key=key,
            usage=runner.usage.to_dict(time.monotonic()),
            model=spec.model,
        )

    def snapshot(self) -> dict[str, Any]:
        spec = None if self.spec is None else {**asdict(self.spec), "cors_origins": list(self.spec.cors_origins)}
        return {
            "event": "snapshot",
            "gateway": spec,
            "instances": [self.route(r).to_dict() for r in self.runners.values()],
        }

    def publish_all(self) -> None:
        if self.link is not None:
            self.link.send(self.snapshot())

    def publish(self, runner: Runner) -> None:
        if self.link is not None:
            self.link.send({"event": "instance", "instance": self.route(runner).to_dict()})

    async def serve_link(
        self, first: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one subscribed gateway until it goes away (the control server hands the connection over)."""
        pid = first.get("pid") if isinstance(first.get("pid"), int) else None
        link = Link(writer, pid)
        previous, self.link = self.link, link
        if previous is not None:
            previous.writer.close()  # one gateway at a time: the newest subscriber wins
        link.send(self.snapshot())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    self._handle(link, decode(line))
                except ChannelError as exc:
                    log.warning("gateway link: %s", exc)
        finally:
            self._close_link(link)

    def _close_link(self, link: Link) -> None:
        for task in link.waiting.values():
            task.cancel()
        for runner in link.open.values():
            self.demand.end(runner, None)  # the requests ended with the connection
        link.open.clear()
        if self.link is link:
            self.link = None
        with contextlib.suppress(Exception):
            link.writer.close()

    def _handle(self, link: Link, message: dict[str, Any]) -> None:
        op = message.get("op")
        request_id = message.get("id")
        if op == "listening" or op == "failed":
            self._listened(op, message)
        elif op == "begin" and isinstance(request_id, int):
            runner = self.runners.get(str(message.get("instance")))
            if runner is not None and request_id not in link.open:
                self.demand.begin(runner)
                link.open[request_id] = runner
        elif op == "end" and isinstance(request_id, int):
            runner = link.open.pop(request_id, None)
            status = message.get("status")
            if runner is not None:
                self.demand.end(runner, status if isinstance(status, int) else None)
        elif op == "acquire" and isinstance(request_id, int):
            task = asyncio.ensure_future(self._acquire(link, request_id, str(message.get("instance"))))
            link.waiting[request_id] = task
        elif op == "stop":
            runner = self.runners.get(str(message.get("instance")))
            if runner is not None:
                self.demand.stop_if_idle(runner, str(message.get("reason") or "asked by the gateway")[:200])
        elif op == "keep_alive" and isinstance(message.get("seconds"), (int, float)):
            runner = self.runners.get(str(message.get("instance")))
            if runner is not None:
                self.demand.keep_alive(runner, float(message["seconds"]))
        elif op == "lifecycle" and isinstance(request_id, int) and message.get("action") in ("start", "stop"):
            task = asyncio.ensure_future(
                self._lifecycle(link, request_id, str(message.get("instance")), str(message["action"]))
            )
            link.waiting[request_id] = task
        elif op == "cancel" and isinstance(request_id, int):
            waiting = link.waiting.pop(request_id, None)
            if waiting is not None:
                waiting.cancel()
        else:
            raise ChannelError(f"unknown message {str(message)[:100]}")

    def _listened(self, op: str, message: dict[str, Any]) -> None:
        if self._listening is None or self._listening.done():
            if op == "failed":
                log.error("the gateway cannot serve its settings: %s", message.get("message"))
            return
        if op == "listening":
            self._quick_deaths = 0 if self._quick_deaths < 2 else self._quick_deaths
            self._listening.set_result(str(message.get("url")))
        else:
            self._listening.set_exception(ConfigError(str(message.get("message") or "the gateway cannot listen")))

    async def _acquire(self, link: Link, request_id: int, name: str) -> None:
        try:
            runner = self.runners.get(name)
            if runner is None:
                error = {
                    "status": 404,
                    "code": "model_not_found",
                    "message": f"no instance {name!r}",
                    "retry_after": None,
                }
                link.send({"event": "reply", "id": request_id, "ok": False, "error": error})
                return
            try:
                await self.demand.acquire(runner)
            except AdmissionRefused as refusal:
                link.send({"event": "reply", "id": request_id, "ok": False, "error": refusal.admission.to_dict()})
                return
            if link.writer.is_closing():
                self.demand.end(runner, None)
                return
            link.open[request_id] = runner
            link.send({"event": "reply", "id": request_id, "ok": True})
        finally:
            link.waiting.pop(request_id, None)

    async def _lifecycle(self, link: Link, request_id: int, name: str, action: str) -> None:
        try:
            runner = self.runners.get(name)
            if runner is None:
                error = {"status": 404, "code": "instance_not_found", "message": f"no instance {name!r}"}
                link.send({"event": "reply", "id": request_id, "ok": False, "error": error})
                return
            try:
                state = await self.demand.lifecycle(runner, action)
            except AdmissionRefused as refusal:
                link.send({"event": "reply", "id": request_id, "ok": False, "error": refusal.admission.to_dict()})
                return
            link.send({"event": "reply", "id": request_id, "ok": True, "state": state})
        finally:
            link.waiting.pop(request_id, None)

    def status(self) -> dict[str, Any] | None:
        """The gateway part of the status document (None when no gateway is configured)."""
        if self.spec is None:
            return None
        now = time.monotonic()
        usages = {name: runner.usage.to_dict(now) for name, runner in self.runners.items()}
        return {
            "url": self.spec.url,
            "ollama_url": self.spec.ollama_url,
            "pid": self.server.pid if self.server is not None else None,
            "connected": self.link is not None,
            "restarts": self.restarts,
            "requests": sum(int(u["requests"]) for u in usages.values()),  # type: ignore[call-overload]
            "in_flight": sum(int(u["in_flight"]) for u in usages.values()),  # type: ignore[call-overload]
            "queued": sum(int(u["queued"]) for u in usages.values()),  # type: ignore[call-overload]
            "instances": usages,
        }
