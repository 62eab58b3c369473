"""Ollama's native API on the gateway's port(s): the HTTP side (issue 20).

Apps written for Ollama (its official clients, Open WebUI's Ollama connection, editor plugins) reach every
instance llmctl runs, whatever its engine. llama.cpp and MLX instances get the request translated to the
OpenAI API they speak and the answer translated back (llmctl.gateway.ollama, pure functions); an Ollama
instance gets the request unchanged, with only `model` set to its own name. Routing, admission, the
upstream pools and the edges are the OpenAI path's (llmctl.gateway.server): an instance on demand starts on
the first request, and `keep_alive` goes to its runner, which owns ttl and stops (llmctl.planes).

Facts on the API (shapes, units, keep_alive, the options mapping): shared/OLLAMA-API.md, from Ollama's
`docs/api.md`, `api/types.go` and `server/routes.go` @ fb3076099687.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from llmctl.gateway import ollama
from llmctl.gateway.activity import Tap
from llmctl.gateway.answers import finish
from llmctl.gateway.body import read_body
from llmctl.gateway.link import NotAdmitted
from llmctl.gateway.problems import Refused, Unreachable
from llmctl.planes import Route

if TYPE_CHECKING:
    from llmctl.gateway.server import Gateway

log = logging.getLogger("llmctl.gateway.ollama")
# What /api/version answers: clients compare it against features they need (tools came in 0.3, `think`
# in 0.9), so a version that has every field this translation serves.
API_VERSION = "0.12.0"
BODY_TIMEOUT = 60.0
MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy")
NDJSON = "application/x-ndjson"


def add_routes(app: web.Application, gateway: Gateway) -> None:
    """Register Ollama's endpoints on `app` (the main listener, or the Ollama-only one)."""
    api = OllamaApi(gateway)
    app.router.add_get("/", api.banner)  # HEAD too: the Go client's heartbeat
    app.router.add_get("/api/version", api.version)
    app.router.add_get("/api/tags", api.tags)
    app.router.add_get("/api/ps", api.ps)
    app.router.add_post("/api/show", api.show)
    app.router.add_post("/api/chat", api.chat)
    app.router.add_post("/api/generate", api.generate)
    app.router.add_post("/api/embed", api.embed)
    app.router.add_post("/api/embeddings", api.embeddings)
    for path in MANAGEMENT:
        app.router.add_post(path, api.managed)
    app.router.add_delete("/api/delete", api.managed)


def _refused(error: ollama.OllamaError) -> Refused:
    return Refused(error.status, error.message, "ollama_error")


class OllamaApi:
    """The handlers; every refusal is a Refused, which the gateway's edge answers in Ollama's shape."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # -- what the gateway knows ----------------------------------------------------------------

    async def banner(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": API_VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        models = []
        for route in list(self.gateway.link.routes.values()):
            details = await self.details(route)
            models.extend(ollama.tag_entry(name, details) for name in (route.name, *route.aliases))
        return web.json_response({"models": models})

    async def show(self, request: web.Request) -> web.Response:
        payload = await self._payload(request)
        try:
            name = ollama.request_model(payload, "show")
        except ollama.OllamaError as exc:
            raise _refused(exc) from None
        route = self._route(name)
        details = await self.details(route)
        return web.json_response(ollama.show_response(str(name), details))

    async def ps(self, request: web.Request) -> web.Response:
        """Running instances with their measured size (the status document's figures) and the ttl's end."""
        document = await self.gateway.status_document()
        models = []
        for instance in document.get("instances") or []:
            route = self.gateway.link.routes.get(str(instance.get("name")))
            if route is None or instance.get("state") != "healthy":
                continue
            size, size_vram = _sizes(instance)
            ttl_left = instance.get("ttl_left_s")
            expires = None if ttl_left is None else time.time() + float(ttl_left)
            details = await self.details(route)
            models.append(ollama.ps_entry(route.name, details, size, size_vram, expires, None))
        return web.json_response({"models": models})

    async def details(self, route: Route) -> dict[str, Any]:
        """What llmctl reads of the route's model file or folder (header only; cached by the translation
        module per path, size and mtime); {} for a model named, not given as a path."""
        path = route.model or ""
        if not path or not os.path.exists(path):
            return {}
        return await asyncio.to_thread(ollama.model_details, path)

    async def managed(self, request: web.Request) -> web.Response:
        raise Refused(
            501,
            f"{request.path} is not served: llmctl serves the models its instances.yaml names "
            "(add one there and run `llmctl up`)",
            "not_implemented",
        )

    # -- requests to a model ------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "chat")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "generate")

    async def embed(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "embed")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._model_call(request, "embeddings")

    async def _model_call(self, request: web.Request, kind: str) -> web.StreamResponse:
        payload = await self._payload(request)
        try:
            model = ollama.request_model(payload, kind)
            keep_alive = ollama.parse_keep_alive(payload.get("keep_alive"))
        except ollama.OllamaError as exc:
            raise _refused(exc) from None
        request["model"] = model
        route = self._route(model)
        details = await self.details(route)
        if route.backend != "ollama":
            # Every field is checked before anything else happens, a load-only request's too: Ollama binds the
            # whole body first, so `{"prompt": [], "keep_alive": 0}` is a 400, never an unload.
            try:
                _translate(kind, payload, route, details)
            except ollama.OllamaError as exc:
                raise _refused(exc) from None
        if ollama.is_load_request(payload, kind):
            return await self._load(route, kind, model, keep_alive)
        call = _Call(self.gateway, request, route, kind, model, payload, details)
        try:
            return await call.run()
        finally:
            # Only a request the runner admitted moves its ttl: a refused one (400, 404, 503) leaves it alone.
            if keep_alive is not None and call.admitted:
                self.gateway.link.keep_alive(call.route.name, keep_alive)

    async def _load(self, route: Route, kind: str, model: str, keep_alive: float | None) -> web.Response:
        """An empty prompt, message list or input: load (start) the model, or unload it with keep_alive 0,
        without generating (Ollama answers done_reason "load" / "unload")."""
        if keep_alive == 0:
            self.gateway.link.keep_alive(route.name, 0)
            return web.json_response(ollama.load_response(model, kind, unloaded=True))
        started = time.monotonic()
        request_id, route = await _admit(self.gateway, route)
        self.gateway.link.end(request_id, 200, time.monotonic() - started)
        if keep_alive is not None:
            self.gateway.link.keep_alive(route.name, keep_alive)
        return web.json_response(ollama.load_response(model, kind, unloaded=False))

    async def _payload(self, request: web.Request) -> dict[str, Any]:
        spec = self.gateway.spec
        assert spec is not None
        body = await read_body(request, spec.max_body, BODY_TIMEOUT)
        try:
            payload = json.loads(body, parse_constant=_no_constant) if body.strip() else {}
        except (ValueError, RecursionError):
            raise Refused(400, "invalid JSON in the request body", "ollama_error") from None
        if not isinstance(payload, dict):
            raise Refused(400, "the request body must be a JSON object", "ollama_error")
        return payload

    def _route(self, name: object) -> Route:
        if not isinstance(name, str) or not name:
            raise Refused(400, "model is required", "ollama_error")
        link = self.gateway.link
        found = ollama.match_name(name, link.known_models())
        route = link.resolve(found) if found is not None else None
        if route is None:
            raise Refused(404, f"model '{name}' not found", "model_not_found")
        return route


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259 §6): Python's parser takes them, Go's (Ollama's) and
    llama-server's do not. Refused here, so none reaches an upstream that would answer with its parser's text."""
    raise ValueError(f"{name} is not a JSON value")


def _sizes(instance: dict[str, Any]) -> tuple[int, int]:
    """(size, size_vram) in bytes for /api/ps from a status-document instance: the sum of what was measured
    in every pool, and the GPU's part (on a Mac, the unified footprint, which the GPU shares)."""
    pools = instance.get("memory_pools") or {}
    if pools:
        size = sum(int(value or 0) for value in pools.values())
        vram = sum(int(value or 0) for pool, value in pools.items() if pool.startswith("gpu") or pool == "unified")
        return size, vram
    size = int(instance.get("memory_bytes") or 0)
    return size, int(instance.get("gpu_memory_bytes") or 0)


async def _admit(gateway: Gateway, route: Route) -> tuple[int, Route]:
    try:
        return await gateway.admit(route)
    except NotAdmitted as refusal:
        raise Refused.of(refusal.admission) from None


def _translate(kind: str, payload: dict[str, Any], route: Route, details: dict[str, Any]) -> ollama.UpstreamRequest:
    """The OpenAI request for an Ollama one (llmctl.gateway.ollama); `details` (model_details of the route's
    model) give its capabilities, so `think` asked of a model that cannot is Ollama's 400. Raises OllamaError."""
    capabilities = details.get("capabilities")
    if kind == "chat":
        return ollama.chat_request(payload, route.upstream_model, route.backend, capabilities=capabilities)
    if kind == "generate":
        return ollama.generate_request(payload, route.upstream_model, route.backend, capabilities=capabilities)
    if kind == "embed":
        return ollama.embed_request(payload, route.upstream_model)
    return ollama.embeddings_request(payload, route.upstream_model)


class _Call:
    """One request to a model: admitted on its runner, sent upstream (once more if the instance was stopped
    under it before anything was sent), its answer translated and streamed to the client, watched by a tap
    (the activity row)."""

    def __init__(
        self,
        gateway: Gateway,
        request: web.Request,
        route: Route,
        kind: str,
        model: str,
        payload: dict[str, Any],
        details: dict[str, Any],
    ) -> None:
        self.gateway, self.request, self.route = gateway, request, route
        self.kind, self.model, self.payload, self.details = kind, model, payload, details
        self.admitted = False  # the runner counted it: only then does its keep_alive apply
        self.started = time.monotonic()
        self.started_ns = time.monotonic_ns()
        self.loaded_ns: int | None = None
        self.status = 499
        self.delivered = False  # the last line of a stream went out
        self.upstream: ollama.UpstreamRequest | None = None
        self.tap: Tap | None = None

    async def run(self) -> web.StreamResponse:
        request_id: int | None = None
        try:
            path, body = self._upstream_request()
            request_id, self.route = await _admit(self.gateway, self.route)
            self.admitted = True
            self.loaded_ns = time.monotonic_ns()  # ready: what came before was loading (load_duration)
            metric = self.gateway.metric(self.route.name)
            metric.in_flight += 1  # the whole answer, as the OpenAI path counts it (llmctl_in_flight)
            try:
                try:
                    upstream = await self.gateway.send_upstream(self.request, self.route, path, body)
                except Unreachable:
                    self.gateway.link.end(request_id, 503, time.monotonic() - self.started)
                    request_id = None
                    request_id, self.route = await _admit(self.gateway, self.route)
                    self.loaded_ns = time.monotonic_ns()
                    try:
                        upstream = await self.gateway.send_upstream(self.request, self.route, path, body)
                    except Unreachable as exc:
                        raise self.gateway.upstream_failed(self.route, exc.__cause__ or exc, self.request) from None
                async with upstream:
                    return await self._answer(upstream)
            finally:
                metric.in_flight -= 1
        except Refused as refused:
            self.status = refused.status
            raise
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): counted as such, unless it had the whole
            # answer (the `done` line) and closed before the chunked body's end.
            self.status = 200 if self.delivered else 499
            raise
        finally:
            if request_id is not None:
                self.gateway.link.end(request_id, self.status, time.monotonic() - self.started)
            self.gateway.observe(self.route.name, self.status, self.started, self.tap)

    def _upstream_request(self) -> tuple[str, bytes]:
        """(raw path, body) for the upstream: unchanged for an Ollama instance (only `model` set to its own
        name), translated otherwise."""
        route = self.route
        # Ollama streams chat and generate unless told not to; embeddings are one JSON answer, always.
        stream = self.kind in ("chat", "generate") and self.payload.get("stream") is not False
        self.tap = Tap(route.name, self.model, "ollama", self.request.path, stream, False, self.started)
        if route.backend == "ollama":
            payload = {**self.payload, "model": route.upstream_model or self.model}
            return f"/api/{self.kind}", json.dumps(payload).encode()
        try:
            self.upstream = _translate(self.kind, self.payload, route, self.details)
        except ollama.OllamaError as exc:
            raise _refused(exc) from None
        if self.upstream.dropped:
            log.debug("%s: fields with no equivalent, dropped: %s", route.name, ", ".join(self.upstream.dropped))
        return self.upstream.path, json.dumps(self.upstream.payload).encode()

    async def _answer(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        if self.upstream is None:  # an Ollama instance: its answer as it comes
            response, self.status = await self.gateway.relay(self.request, self.route, upstream, self.started, self.tap)
            return response
        if upstream.status >= 400:
            error = ollama.upstream_error(upstream.status, await upstream.read())
            raise Refused(error.status, error.message, "upstream_error")
        if self.upstream.stream and self.kind in ("chat", "generate"):
            return await self._stream(upstream)
        data = await upstream.read()
        assert self.tap is not None
        self.tap.feed(data)
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise Refused(502, f"{self.route.name} answered something that is not a JSON object", "upstream_error")
        try:
            body = self._reply(reply)
        except ollama.OllamaError as exc:
            raise _refused(exc) from None
        self.status = 200
        return web.json_response(body)

    def _reply(self, reply: dict[str, Any]) -> dict[str, Any]:
        clock = ollama.Clock(started=self.started_ns, loaded=self.loaded_ns, end=time.monotonic_ns())
        if self.kind == "chat":
            return ollama.chat_response(reply, self.model, clock)
        if self.kind == "generate":
            return ollama.generate_response(reply, self.model, clock)
        if self.kind == "embed":
            dimensions = self.payload.get("dimensions")
            return ollama.embed_response(reply, self.model, clock, dimensions=dimensions)
        return ollama.embeddings_response(reply)

    async def _stream(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """NDJSON lines as the upstream's SSE events come (one write per upstream chunk); an upstream that
        fails mid-answer ends the stream with `{"error": ...}` (the status stays 200), as Ollama does."""
        kind = ollama.ChatStream if self.kind == "chat" else ollama.GenerateStream
        stream = kind(self.model, started_ns=self.started_ns, loaded_ns=self.loaded_ns)
        assert self.tap is not None
        response = web.StreamResponse(status=200, headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
        await response.prepare(self.request)
        self.status = 200
        try:
            async for chunk in upstream.content.iter_any():
                self.tap.feed(chunk)
                lines = stream.feed(chunk)
                if lines:
                    await response.write(b"".join(lines))
            if _cut_short(upstream, self.tap):
                raise aiohttp.ClientPayloadError("the connection closed before the stream's end ([DONE])")
            await response.write(b"".join(stream.finish()))
            self.delivered = True
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.status = 499
            return response
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("%s: the upstream failed mid-answer: %s", self.route.name, exc or type(exc).__name__)
            self.status = 502
            message = f"{self.route.name} failed mid-answer; see `llmctl logs {self.route.name}`"
            try:
                await response.write(b"".join(stream.fail(message)))
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                return response
        await finish(response, self.status)
        return response


def _cut_short(upstream: aiohttp.ClientResponse, tap: Tap) -> bool:
    """A close-delimited event stream (mlx_lm.server's) that ended without `data: [DONE]` was cut."""
    framed = upstream.headers.get("Transfer-Encoding", "").lower().endswith("chunked") or (
        upstream.headers.get("Content-Length") is not None
    )
    return not framed and not tap.done
