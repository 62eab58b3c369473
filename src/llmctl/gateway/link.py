"""The gateway's side of the link to the supervisor (the contract is llmctl.planes).

The gateway learns the routes by subscription, never by reading files; it reports every request's
begin and end, and asks the supervisor for an instance that is not healthy. When the supervisor goes
away (kill -9), the gateway keeps routing to the instances it last knew healthy, and connects again
every RECONNECT_EVERY seconds; a new supervisor adopts it and it re-announces the requests it is still
serving. A request that needs a start while no supervisor answers waits for one, at most
SUPERVISOR_WAIT seconds, then gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from llmctl.planes import MAX_LINE, Admission, ChannelError, Route, decode, encode

log = logging.getLogger("llmctl.gateway.link")
RECONNECT_EVERY = 0.2
SUPERVISOR_WAIT = 5.0  # how long a start on demand waits for a supervisor to come back


class NotAdmitted(Exception):
    """The supervisor will not (or cannot) make the instance serve this request."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(admission.message)
        self.admission = admission


def _refusal(answer: dict[str, Any]) -> Admission:
    """The Admission error a refusing reply carries (502 when it carries none the gateway can read)."""
    try:
        return Admission.from_dict(answer.get("error"))
    except ChannelError:
        return Admission(502, "bad_reply", "the supervisor answered what the gateway cannot read")


class _Gone(Exception):
    """The link to the supervisor closed while a reply was awaited."""


class SupervisorLink:
    """Routes as the supervisor pushes them, and the requests this gateway reports on them.

    `on_settings(spec_dict | None)` is awaited for every snapshot: it applies the gateway's settings
    and returns ("listening", url) or ("failed", message), which is sent back to the supervisor."""

    def __init__(self, socket_path: str, on_settings: Callable[[dict[str, Any] | None], Awaitable[tuple[str, str]]]):
        self.socket_path = socket_path
        self.on_settings = on_settings
        self.routes: dict[str, Route] = {}
        self._by_name: dict[str, str] = {}  # name or alias -> instance name
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._open: dict[int, str] = {}  # requests in flight (begun or acquired): id -> instance

    # -- routes --------------------------------------------------------------------------

    def resolve(self, model: str) -> Route | None:
        """The instance a `model` names (its name or an alias), or None."""
        name = self._by_name.get(model)
        return self.routes.get(name) if name is not None else None

    def known_models(self) -> list[str]:
        return sorted(self._by_name)

    def _set_routes(self, routes: list[Route]) -> None:
        self.routes = {route.name: route for route in routes}
        self._index()

    def _index(self) -> None:
        self._by_name = {}
        for route in self.routes.values():
            self._by_name[route.name] = route.name
            for alias in route.aliases:
                self._by_name.setdefault(alias, route.name)

    # -- requests ------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def begin(self, instance: str) -> int:
        """A request goes straight to a healthy instance; returns its id for `end`."""
        request_id = self._new_id()
        self._open[request_id] = instance
        self._send({"op": "begin", "id": request_id, "instance": instance})
        return request_id

    def end(self, request_id: int, status: int, seconds: float) -> None:
        if self._open.pop(request_id, None) is not None:
            self._send({"op": "end", "id": request_id, "status": status, "seconds": round(seconds, 4)})

    def stop(self, instance: str, reason: str) -> None:
        """Ask for the instance to be stopped once idle (the runner decides; see llmctl.planes)."""
        self._send({"op": "stop", "instance": instance, "reason": reason})

    def keep_alive(self, instance: str, seconds: float) -> None:
        """A request's keep_alive (Ollama's semantics, llmctl.planes): 0 stops the instance once idle, a
        negative value keeps it loaded with no ttl, a positive one is its ttl from now. The runner decides."""
        self._send({"op": "keep_alive", "instance": instance, "seconds": seconds})

    async def lifecycle(self, instance: str, action: str) -> dict[str, Any]:
        """Start or stop an instance for a dashboard or a script ("start" | "stop"); returns the reply
        (`{"ok": true, "state": ...}`). Raises NotAdmitted when it cannot be done or no supervisor answers."""
        if not self.connected.is_set():
            await self._wait_for_supervisor()
        loop = asyncio.get_running_loop()
        request_id = self._new_id()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._replies[request_id] = reply
        self._send({"op": "lifecycle", "id": request_id, "instance": instance, "action": action})
        try:
            answer = await reply
        except _Gone:
            raise NotAdmitted(
                Admission(503, "supervisor_unavailable", "the supervisor went away; try again", 2)
            ) from None
        finally:
            self._replies.pop(request_id, None)
        if not answer.get("ok"):
            raise NotAdmitted(_refusal(answer))
        return answer

    async def status_document(self, timeout: float = 5.0) -> dict[str, Any]:
        """The supervisor's status document (`llmctl status --json`), asked on a connection of its own.
        Raises NotAdmitted (503) when no supervisor answers within `timeout` seconds."""
        try:
            answer = await asyncio.wait_for(self._ask({"op": "status"}), timeout)
        except (OSError, ChannelError, ValueError, asyncio.TimeoutError):
            answer = {}
        if not answer.pop("ok", False):
            raise NotAdmitted(Admission(503, "supervisor_unavailable", "no supervisor answers: run `llmctl up`", 2))
        return answer

    async def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_LINE)
        try:
            writer.write(encode(message))
            return decode(await reader.readline())
        finally:
            writer.close()

    async def acquire(self, instance: str) -> int:
        """Wait until the supervisor says the instance serves (starting it if need be); returns the
        request's id for `end`. Raises NotAdmitted with the status the client must get."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.connected.is_set():
                await self._wait_for_supervisor()
            request_id = self._new_id()
            reply: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._replies[request_id] = reply
            self._send({"op": "acquire", "id": request_id, "instance": instance})
            try:
                answer = await reply
            except _Gone:
                continue  # the supervisor went away meanwhile: ask the next one
            except asyncio.CancelledError:
                self._send({"op": "cancel", "id": request_id})  # the client left: the runner decides what follows
                raise
            finally:
                self._replies.pop(request_id, None)
            if answer.get("ok"):
                self._open[request_id] = instance
                return request_id
            raise NotAdmitted(_refusal(answer))

    async def _wait_for_supervisor(self) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), SUPERVISOR_WAIT)
        except asyncio.TimeoutError:
            raise NotAdmitted(
                Admission(503, "supervisor_unavailable", "no supervisor runs to start the instance: run `llmctl up`", 2)
            ) from None

    def _send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(encode(message))

    # -- the connection ------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Stay subscribed to whichever supervisor serves the socket, for the gateway's whole life."""
        said_gone = False
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=MAX_LINE)
            except OSError:
                if not said_gone:
                    log.warning("no supervisor answers on %s; routing to running instances meanwhile", self.socket_path)
                    said_gone = True
                await asyncio.sleep(RECONNECT_EVERY)
                continue
            said_gone = False
            try:
                await self._serve(reader, writer)
            except (OSError, ChannelError, ValueError, asyncio.IncompleteReadError) as exc:
                log.warning("link to the supervisor broke: %s", exc)
            finally:
                self._disconnected(writer)
            await asyncio.sleep(RECONNECT_EVERY)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode({"op": "subscribe", "pid": os.getpid()}))
        first = True
        while True:
            line = await reader.readline()
            if not line:
                return
            message = decode(line)
            event = message.get("event")
            if event == "snapshot":
                await self._snapshot(message, writer, first)
                first = False
            elif event == "instance":
                route = Route.from_dict(message.get("instance"))
                self.routes[route.name] = route
                self._index()
            elif event == "reply":
                reply = self._replies.get(message.get("id"))  # type: ignore[arg-type]
                if reply is not None and not reply.done():
                    reply.set_result(message)

    async def _snapshot(self, message: dict[str, Any], writer: asyncio.StreamWriter, first: bool) -> None:
        self._set_routes([Route.from_dict(item) for item in message.get("instances") or []])
        outcome, detail = await self.on_settings(message.get("gateway"))
        key = "url" if outcome == "listening" else "message"
        writer.write(encode({"op": outcome, key: detail}))
        if first:
            self._writer = writer
            for request_id, instance in self._open.items():  # the new supervisor counts them too
                self._send({"op": "begin", "id": request_id, "instance": instance})
            self.connected.set()
            log.info("subscribed to the supervisor on %s", self.socket_path)

    def _disconnected(self, writer: asyncio.StreamWriter) -> None:
        self.connected.clear()
        if self._writer is writer:
            self._writer = None
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(_Gone())
        with contextlib.suppress(Exception):
            writer.close()
