"""One port for every model: the data plane, an aiohttp server in a process of its own.

It routes OpenAI-style requests by their `model` to the instance of that name or alias and streams
answers through as they come. It decides nothing about lifecycle: it learns the routes from the
supervisor (llmctl.gateway.link), sends a request straight on when its instance is healthy (and
says so), and otherwise asks the supervisor for the instance and waits for the answer. What it
guards itself: the edges (llmctl.gateway.edges, .headers, .body), the connections it accepts
(llmctl.gateway.guard) and one upstream connection pool per instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import fields
from typing import Any

import aiohttp
import yarl
from aiohttp import web, web_protocol

from llmctl.errors import ConfigError
from llmctl.gateway import dashboard, edges, ollama, ollama_api
from llmctl.gateway.activity import Activity, Tap, ask_usage
from llmctl.gateway.answers import finish
from llmctl.gateway.body import LARGE_BODY, parse_body, read_body, with_model
from llmctl.gateway.guard import Gate, Limits
from llmctl.gateway.headers import request_headers, response_headers
from llmctl.gateway.link import NotAdmitted, SupervisorLink
from llmctl.gateway.metrics import InstanceMetrics, prometheus
from llmctl.gateway.problems import (
    Refused,
    Unreachable,
    error_body,
    error_response,
    log_refusal,
    ollama_error_response,
    sanitize,
)
from llmctl.paths import StatePaths
from llmctl.planes import Route
from llmctl.spec import GatewaySpec
from llmctl.system.secrets import read_secret

log = logging.getLogger("llmctl.gateway")
BODY_TIMEOUT = 60.0  # a client has this long to send its whole body once its headers are in
UPSTREAM_KEEPALIVE = 4.0  # llama-server closes idle connections: reuse one only while it is fresh
PREFLIGHT_MAX_AGE = 600


async def _on_reuse(session: object, context: Any, params: object) -> None:
    """Note that a request went out on a kept-alive connection: only such a request may be sent again
    when the connection fails (the server had closed it); one on a new connection reached the server."""
    if isinstance(context.trace_request_ctx, dict):
        context.trace_request_ctx["reused"] = True


_REUSE_TRACE = aiohttp.TraceConfig()
_REUSE_TRACE.on_connection_reuseconn.append(_on_reuse)


async def _own_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "llmctl"  # not the library and its version


class _OwnErrors(web_protocol.RequestHandler):
    """aiohttp's protocol, with its own error answers (a request it cannot parse, a handler that
    failed) in OpenAI's shape and one log line, never the request's bytes echoed back. A 500 is a bug:
    logged with its traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started: the connection is closed instead")
        if status >= 500:
            log.error("internal error on %s", sanitize(request.raw_path), exc_info=exc)
            refused = Refused(status, "internal error in the gateway; see gateway.log", "internal_error")
        else:
            what = type(exc).__name__ if exc is not None else "malformed request"
            refused = Refused(status, f"the request is not valid HTTP/1.1 ({what})", "bad_http")
            log_refusal(log, request.method, request.raw_path, None, status, f"bad_http: {what}", 0.0)
        response = error_response(refused)
        response.headers["Server"] = "llmctl"
        response.force_close()
        return response


def _protocol_factory(server: web.Server) -> Any:
    """What makes one connection's protocol: aiohttp's, answering errors our way. aiohttp has no
    parameter for the protocol class; its Server keeps the handler's arguments in `_kwargs` (3.9 to
    3.14). Without them, aiohttp's own protocol (tests/test_edges_live.py notices)."""
    kwargs = getattr(server, "_kwargs", None)
    loop = getattr(server, "_loop", None)
    if not isinstance(kwargs, dict) or loop is None:
        return server
    return lambda: _OwnErrors(server, loop=loop, **kwargs)


def add_cors(response: web.StreamResponse, headers: dict[str, str]) -> None:
    """The gateway's CORS headers on an answer; `Vary` is added to, never replaced."""
    for name, value in headers.items():
        if name.lower() == "vary":
            present = [v.strip().lower() for v in ",".join(response.headers.getall("Vary", [])).split(",")]
            if value.lower() not in present:
                response.headers.add("Vary", value)
        else:
            response.headers[name] = value


def _cut_short(upstream: aiohttp.ClientResponse, tail: bytes) -> bool:
    """An event stream whose end is the connection closing (HTTP/1.0 or no length, as mlx_lm.server
    sends it) carries no framing that tells a clean end from a dead server: OpenAI's streams end with
    `data: [DONE]`, so one that closed without it was cut."""
    framed = upstream.headers.get("Transfer-Encoding", "").lower().endswith("chunked") or (
        upstream.headers.get("Content-Length") is not None
    )
    is_stream = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
    return is_stream and not framed and b"[DONE]" not in tail


def spec_from(data: dict[str, Any]) -> GatewaySpec:
    """The settings the supervisor pushed; ValueError for a shape this gateway does not know."""
    known = {item.name for item in fields(GatewaySpec)}
    try:
        return GatewaySpec(**{key: value for key, value in data.items() if key in known})
    except TypeError as exc:
        raise ValueError(f"settings the gateway cannot read: {exc}") from None


def _keep_alive(payload: dict[str, Any] | None) -> tuple[dict[str, Any] | None, float | None]:
    """llmctl's extension to the OpenAI API: a top-level `keep_alive` with Ollama's meaning (seconds or a Go
    duration; 0 stops an on-demand instance after this request, negative keeps it loaded). Ollama itself
    drops the field on /v1 (ollama/ollama#11458). Returns (the payload without it, seconds or None).
    Raises Refused(400) for a value Ollama would refuse."""
    if payload is None or "keep_alive" not in payload:
        return payload, None

    rest = {key: value for key, value in payload.items() if key != "keep_alive"}
    try:
        return rest, ollama.parse_keep_alive(payload["keep_alive"])
    except ollama.OllamaError as exc:
        raise Refused(400, f"keep_alive: {exc.message}", "invalid_keep_alive") from None


class Upstreams:
    """One connection pool per instance, never shared: a hung instance holds only its own."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[int, aiohttp.ClientSession]] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def session(self, route: Route, spec: GatewaySpec) -> aiohttp.ClientSession:
        size = min(spec.pool_max, max(8, 4 * route.parallel))
        current = self._sessions.get(route.name)
        if current is not None and current[0] == size and not current[1].closed:
            return current[1]
        if current is not None:
            self._closing.add(asyncio.ensure_future(current[1].close()))
        connector = aiohttp.TCPConnector(limit=size, keepalive_timeout=UPSTREAM_KEEPALIVE, enable_cleanup_closed=True)
        session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False, trace_configs=[_REUSE_TRACE]
        )
        self._sessions[route.name] = (size, session)
        return session

    async def close(self) -> None:
        for _, session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _public(request: web.Request) -> bool:
    """Answers anyone may read without the key: /health, Ollama's banner, and the dashboard's page and
    static files (a browser's navigation cannot send a key; the page asks for it and sends it on every
    API call it makes)."""
    path = request.path
    if path == "/health":
        return True
    return request.method in ("GET", "HEAD") and (path in ("/", "/ui") or path.startswith("/ui/"))


def _speaks_ollama(request: web.Request) -> bool:
    """Whether a refusal must be in Ollama's shape: its paths, or anything on the Ollama-only listener."""
    return bool(request.app.get(OLLAMA_ONLY)) or request.path == "/" or request.path.startswith("/api/")


OLLAMA_ONLY = web.AppKey("ollama_only", bool)
USAGE_PATHS = ("/v1/chat/completions", "/v1/completions")  # where `stream_options.include_usage` is OpenAI's


class Gateway:
    """The gateway process's state: its settings, its listeners, the routes, its counters."""

    def __init__(self, paths: StatePaths, environ: dict[str, str]) -> None:
        self.paths = paths
        self.environ = environ
        self.spec: GatewaySpec | None = None
        self.api_key: str | None = None
        self.link = SupervisorLink(str(paths.socket), self.apply)
        self.metrics: dict[str, InstanceMetrics] = {}
        self.gate = Gate(Limits(4096, 10.0, 60.0))
        self.upstreams = Upstreams()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._address: tuple[str, int] | None = None
        self._ollama_runner: web.AppRunner | None = None
        self._ollama_server: asyncio.AbstractServer | None = None
        self._ollama_address: tuple[str, int] | None = None
        self.activity = Activity(paths.activity_log)

    # -- life ------------------------------------------------------------------------------

    async def setup(self) -> None:
        app = self._application(ollama_only=False)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model_id:.+}", self._model)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/{tail:.+}", self._proxy, expect_handler=self._expect)
        app.router.add_get("/llmctl/v1/status", self._status)
        app.router.add_post("/llmctl/v1/instances/{name}/{action}", self._lifecycle)
        ollama_api.add_routes(app, self)
        dashboard.add_routes(app, self)
        self._runner = await self._app_runner(app)
        ollama_app = self._application(ollama_only=True)
        ollama_api.add_routes(ollama_app, self)
        self._ollama_runner = await self._app_runner(ollama_app)

    def _application(self, *, ollama_only: bool) -> web.Application:
        app = web.Application(middlewares=[self._edges])
        app[OLLAMA_ONLY] = ollama_only
        app.on_response_prepare.append(_own_server_header)
        return app

    @staticmethod
    async def _app_runner(app: web.Application) -> web.AppRunner:
        # handler_cancellation: a client that goes away cancels its handler, in every phase.
        # auto_decompress off: llmctl.gateway.body decodes a compressed body itself, within max_body.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, auto_decompress=False, keepalive_timeout=3600
        )
        await runner.setup()
        return runner

    async def apply(self, data: dict[str, Any] | None) -> tuple[str, str]:
        """Serve these settings; keeps the listening socket when host and port are unchanged.
        Returns ("listening", url) or ("failed", why) for the supervisor."""
        if data is None:
            await self._close_listener()
            self._close_ollama_listener()
            return "listening", ""
        try:
            spec = spec_from(data)
            api_key = read_secret("gateway.api_key", spec.api_key_env, spec.api_key_file, self.environ)
        except (ValueError, ConfigError) as exc:
            return "failed", str(exc)
        if self._address != (spec.host, spec.port):
            try:
                await self._listen(spec)
            except OSError as exc:
                return "failed", f"the gateway cannot listen on {spec.host}:{spec.port}: {exc.strerror or exc}"
        ollama_address = None if spec.ollama_port is None else (spec.host, spec.ollama_port)
        if self._ollama_address != ollama_address:
            self._close_ollama_listener()
            if ollama_address is not None:
                try:
                    await self._listen_ollama(*ollama_address)
                except OSError as exc:
                    where = f"{spec.host}:{spec.ollama_port}"
                    return "failed", f"the gateway cannot listen on {where} (ollama_port): {exc.strerror or exc}"
        self.spec, self.api_key = spec, api_key
        self.gate.limits = Limits(spec.max_connections, spec.header_timeout, spec.idle_timeout)
        return "listening", spec.url

    async def _listen(self, spec: GatewaySpec) -> None:
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self.gate.factory(_protocol_factory(self._runner.server)),
            spec.host,
            spec.port,
            reuse_address=True,
            backlog=1024,
        )
        old, self._server, self._address = self._server, server, (spec.host, spec.port)
        if old is not None:
            old.close()
        log.info("gateway listening on %s", spec.url)

    async def _listen_ollama(self, host: str, port: int) -> None:
        assert self._ollama_runner is not None and self._ollama_runner.server is not None
        loop = asyncio.get_running_loop()
        self._ollama_server = await loop.create_server(
            self.gate.factory(_protocol_factory(self._ollama_runner.server)),
            host,
            port,
            reuse_address=True,
            backlog=1024,
        )
        self._ollama_address = (host, port)
        log.info("Ollama's API listening on http://%s:%d", host, port)

    def _close_ollama_listener(self) -> None:
        if self._ollama_server is not None:
            self._ollama_server.close()
            self._ollama_server, self._ollama_address = None, None

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server, self._address = None, None

    async def close(self) -> None:
        await self._close_listener()
        self._close_ollama_listener()
        runners = [runner for runner in (self._runner, self._ollama_runner) if runner is not None]
        for runner in runners:
            await runner.shutdown()
        self.gate.close_all()
        await self.upstreams.close()
        for runner in runners:
            await runner.cleanup()
        self.activity.close()

    def metric(self, name: str) -> InstanceMetrics:
        return self.metrics.setdefault(name, InstanceMetrics())

    # -- edges -----------------------------------------------------------------------------

    @web.middleware
    async def _edges(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.monotonic()
        guard = self.gate.by_transport(request.transport)
        if guard is not None:
            guard.request_started()
        try:
            response = await self._checked(request, handler)
        except Refused as refused:
            response = ollama_error_response(refused) if _speaks_ollama(request) else error_response(refused)
            if refused.status in (408, 413):
                response.force_close()  # do not read the rest of a body that was refused
            reason = f"{refused.code}: {refused}" + (f" ({request['cause']})" if request.get("cause") else "")
            duration = time.monotonic() - started
            log_refusal(log, request.method, request.raw_path, request.get("model"), refused.status, reason, duration)
        finally:
            if guard is not None:
                guard.request_ended()
        origin = request.headers.get("Origin")
        allowed = origin and self.spec is not None and edges.origin_allowed(origin, self.spec.cors_origins)
        if allowed and not response.prepared:  # a streamed answer got them before its status line went out
            add_cors(response, edges.cors_headers(origin, preflight=request.method == "OPTIONS"))
        elif origin and not response.prepared:
            add_cors(response, {"Vary": "Origin"})  # a cache must not serve this refusal to another origin
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` is the gateway's to answer, never forwarded (mlx_lm.server never answers
        it: the request would hang). A body over max_body, or a request without the key, gets its refusal
        instead of the 100. aiohttp runs this before the middleware: it returns, never raises."""
        spec = self.spec
        refused = None
        if request.headers.get("Expect", "").lower() != "100-continue":
            refused = Refused(417, "only `Expect: 100-continue` is understood", "expectation_failed")
        elif spec is not None and (request.content_length or 0) > spec.max_body:
            refused = Refused(413, f"the request is larger than {spec.max_body} bytes (max_body)", "too_large")
        elif self.api_key and not edges.key_matches(edges.api_key_from(request.headers), self.api_key):
            refused = Refused(401, "a valid API key is required", "invalid_api_key")
        if refused is not None:
            response = error_response(refused)
            response.force_close()
            log_refusal(log, request.method, request.raw_path, None, refused.status, refused.code, 0.0)
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response's size
        return None

    async def _checked(self, request: web.Request, handler: Any) -> web.StreamResponse:
        spec = self.spec
        if spec is None:
            raise Refused(503, "the gateway is starting", "starting", 1)
        if not self.api_key and not edges.is_loopback_host(request.headers.get("Host")):
            # Without a key only a loopback Host: a web page that rebinds its DNS to 127.0.0.1 gets 403.
            raise Refused(403, "this gateway answers only to localhost", "forbidden_host")
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and not edges.origin_allowed(origin, spec.cors_origins)
            and not edges.same_origin(origin, request.headers.get("Host"))
        ):
            raise Refused(403, "this origin is not in gateway.cors_origins", "forbidden_origin")
        if request.method == "OPTIONS":
            if origin is None:
                raise Refused(403, "a preflight request needs an Origin", "forbidden_origin")
            return web.Response(status=204)
        raw = request.raw_path.partition("?")[0]
        if request.method in ("GET", "HEAD") and raw.startswith("/v1/models/"):
            edges.normalise_path(
                "/v1/models"
            )  # a model id may hold anything (`org/model` as %2F): it is only looked up
        else:
            edges.normalise_path(raw)
        coding = request.headers.get("Transfer-Encoding", "").lower().replace(" ", "")
        if coding not in ("", "chunked"):
            raise Refused(501, f"Transfer-Encoding {coding!r} is not supported (only chunked)", "not_implemented")
        given = edges.api_key_from(request.headers)
        if self.api_key and not _public(request) and not edges.key_matches(given, self.api_key):
            raise Refused(401, "a valid API key is required", "invalid_api_key")
        if request.method == "POST" and not self._content_type_ok(request):
            raise Refused(
                415, "send the body as application/json (multipart/form-data for uploads)", "unsupported_media_type"
            )
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            raise Refused(
                405, f"{request.method} is not allowed on {request.path} (allowed: {allowed})", "method_not_allowed"
            ) from None
        except web.HTTPNotFound:
            raise Refused(404, f"no such endpoint: {request.path}", "not_found") from None
        except web.HTTPException as exc:
            raise Refused(exc.status, exc.reason, "http_error") from None

    @staticmethod
    def _content_type_ok(request: web.Request) -> bool:
        """JSON bodies only, as llmctl.gateway.edges.content_type_allowed says, with two exceptions: a
        lifecycle call may have no body at all, and Ollama's API takes any type from a program (no Origin:
        `curl -d` sends a form type, and Ollama accepts it); a page's request always carries an Origin, which
        the Origin rule has already checked, and still needs JSON."""
        if request.path.startswith("/llmctl/") and not request.body_exists:
            return True
        if _speaks_ollama(request) and request.headers.get("Origin") is None:
            return True
        return edges.content_type_allowed(request.method, request.path, request.content_type)

    # -- answers the gateway gives itself ---------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "supervisor": self.link.connected.is_set()})

    async def _metrics(self, request: web.Request) -> web.Response:
        for name in self.link.routes:
            self.metric(name)
        return web.Response(text=prometheus(self.metrics, self.link.routes), content_type="text/plain")

    def _model_entries(self, route: Route) -> list[dict[str, Any]]:
        entries = []
        for model_id in (route.name, *route.aliases):
            entry: dict[str, Any] = {
                "id": model_id,
                "object": "model",
                "created": 0,
                "owned_by": "llmctl",
                "state": route.state,
            }
            if model_id != route.name:
                entry["alias_of"] = route.name
            entries.append(entry)
        return entries

    async def _models(self, request: web.Request) -> web.Response:
        data = [entry for route in self.link.routes.values() for entry in self._model_entries(route)]
        return web.json_response({"object": "list", "data": data})

    async def _model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        route = self.link.resolve(model_id)
        if route is None:
            raise Refused(404, f"model {model_id!r} not found", "model_not_found")
        return web.json_response(next(e for e in self._model_entries(route) if e["id"] == model_id))

    # -- lifecycle and status over HTTP (llmctl's own API, for dashboards and scripts) ------------

    async def status_document(self) -> dict[str, Any]:
        """The supervisor's status document (version 1, as `llmctl status --json`) as HTTP clients get it:
        without each instance's `env` (the control socket serves only its owner; this port may serve other
        local users, and an environment can hold what the redaction does not know is a secret).
        Raises Refused(503) when no supervisor answers."""
        try:
            document = await self.link.status_document()
        except NotAdmitted as refusal:
            raise Refused.of(refusal.admission) from None
        for instance in document.get("instances") or []:
            if isinstance(instance, dict):
                instance.pop("env", None)
                # The other names the gateway answers to for it (both APIs), for the dashboard to show.
                route = self.link.routes.get(str(instance.get("name")))
                instance["aliases"] = list(route.aliases) if route is not None else []
        return document

    async def lifecycle(self, name: str, action: str) -> dict[str, Any]:
        """Start or stop the instance NAME (or the one an alias names): `{"version": 1, "instance", "state"}`.
        Raises Refused: 404 for an unknown instance or action, the runner's refusal otherwise."""
        route = self.link.resolve(name)
        if route is None:
            raise Refused(404, f"no instance {name!r}", "instance_not_found")
        if action not in ("start", "stop"):
            raise Refused(404, f"no such action {action!r} (start or stop)", "not_found")
        try:
            answer = await self.link.lifecycle(route.name, action)
        except NotAdmitted as refusal:
            raise Refused.of(refusal.admission) from None
        return {"version": 1, "instance": route.name, "state": answer.get("state")}

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.status_document(), headers={"Cache-Control": "no-store"})

    async def _lifecycle(self, request: web.Request) -> web.Response:
        answer = await self.lifecycle(request.match_info["name"], request.match_info["action"])
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    # -- the proxy ---------------------------------------------------------------------------

    def _resolve(self, model: str) -> Route:
        route = self.link.resolve(model)
        if route is None:
            # A name that differs only by case from exactly one known name is that one: Ollama's API matches
            # names regardless of case, and an app moving between the two APIs keeps its spelling.
            folded = [known for known in self.link.known_models() if known.casefold() == model.casefold()]
            route = self.link.resolve(folded[0]) if len(folded) == 1 else None
        if route is None:
            known = self.link.known_models()
            raise Refused(
                404, f"model {model!r} not found; known models: {', '.join(known) or 'none'}", "model_not_found"
            )
        return route

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        spec = self.spec
        assert spec is not None
        if not edges.upstream_path_allowed(request.path):
            raise Refused(404, f"no such endpoint: {request.path}", "not_found")
        started = time.monotonic()
        status, name, request_id, keep_alive, tap = 499, "-", None, None, None
        try:
            body = await read_body(request, spec.max_body, BODY_TIMEOUT)
            large = len(body) >= LARGE_BODY  # parsed in a thread: other requests go on meanwhile
            parsed = (
                await asyncio.to_thread(parse_body, request.content_type, body)
                if large
                else parse_body(request.content_type, body)
            )
            request["model"] = parsed.model
            payload, keep_alive = _keep_alive(parsed.payload)
            route = self._resolve(parsed.model)
            name = route.name
            tap = self._tap(request, route, parsed.model, payload)
            request_id, route = await self.admit(route)
            rewrite = (body, parsed.is_json, route.upstream_model, payload)
            upstream_body = await asyncio.to_thread(with_model, *rewrite) if large else with_model(*rewrite)
            try:
                response, status = await self._forward(request, route, upstream_body, started, tap)
            except Unreachable:
                # Refused a connection: stopped under us (ttl, eviction, a crash). The request never reached
                # it, so it may go again: the runner knows what follows; ask it, and try once more.
                self.link.end(request_id, 503, time.monotonic() - started)
                request_id = None
                request_id = await self.link.acquire(name)
                route = self.link.routes.get(name, route)
                try:
                    response, status = await self._forward(request, route, upstream_body, started, tap)
                except Unreachable as exc:
                    raise self.upstream_failed(route, exc.__cause__ or exc, request) from None
            return response
        except Refused as refused:
            status = refused.status
            raise
        except NotAdmitted as refusal:
            status = refusal.admission.status
            raise Refused.of(refusal.admission) from None
        except (asyncio.CancelledError, ConnectionResetError) as gone:
            if tap is not None and tap.done:  # it read `data: [DONE]` and closed: aiohttp cancels the handler
                status = 200
                raise
            status = 499
            duration = time.monotonic() - started
            log_refusal(log, request.method, request.raw_path, request.get("model"), 499, "client_gone", duration)
            if isinstance(gone, ConnectionResetError):  # it left while sending its body: nobody to answer
                return web.Response(status=400)
            raise
        finally:
            if request_id is not None:
                self.link.end(request_id, status, time.monotonic() - started)
                if keep_alive is not None:  # only for a request its instance admitted
                    self.link.keep_alive(name, keep_alive)
            if name != "-":
                self.observe(name, status, started, tap)

    def observe(self, name: str, status: int, started: float, tap: Tap | None) -> None:
        """Count one finished request of instance `name` (`started`: its time.monotonic() on arrival) and
        keep its activity row (tokens, tokens/s) when a tap watched it."""
        metric = self.metric(name)
        metric.requests[status] += 1
        metric.duration.observe(time.monotonic() - started)
        if tap is not None:
            row = tap.row(status)
            self.activity.add(row)
            metric.observe_activity(row)

    def _tap(self, request: web.Request, route: Route, model: str, payload: dict[str, Any] | None) -> Tap:
        """A tap on this request's answer; a streamed chat or completion whose client did not ask for usage
        is asked for it (stream_options), and the tap hides that one extra event from the client."""
        stream = isinstance(payload, dict) and payload.get("stream") is True
        hide = request.path in USAGE_PATHS and payload is not None and ask_usage(payload)
        return Tap(route.name, model, "openai", request.path, stream, hide, time.monotonic())

    async def admit(self, route: Route) -> tuple[int, Route]:
        """Count the request on its runner: straight on when the instance is healthy, else ask the
        supervisor (starting it if on demand). Returns (request id for link.end, the route now).
        Raises NotAdmitted with the status the client must get."""
        if route.serving:
            return self.link.begin(route.name), route
        metric = self.metric(route.name)
        metric.queued += 1
        try:
            request_id = await self.link.acquire(route.name)
        finally:
            metric.queued -= 1
        return request_id, self.link.routes.get(route.name, route)

    async def _forward(
        self, request: web.Request, route: Route, body: bytes, started: float, tap: Tap | None
    ) -> tuple[web.StreamResponse, int]:
        metric = self.metric(route.name)
        metric.in_flight += 1
        try:
            upstream = await self.send_upstream(request, route, request.raw_path, body)
            async with upstream:
                return await self.relay(request, route, upstream, started, tap)
        finally:
            metric.in_flight -= 1

    async def send_upstream(
        self, request: web.Request, route: Route, raw_path: str, body: bytes
    ) -> aiohttp.ClientResponse:
        """POST `body` to `raw_path` (checked, sent as is) on the route's server, with the client's headers
        filtered (llmctl.gateway.headers); returns the response, its body unread (the caller closes it).

        Raises Unreachable when no connection could be made (nothing was sent: it may go again), Refused
        otherwise: 502 the upstream failed, 503 no pooled connection within pool_wait, 504 read_timeout.
        A request that went out on a kept-alive connection the server had closed is sent once more."""
        spec = self.spec
        assert spec is not None
        headers = request_headers(
            request.headers, gateway_has_key=self.api_key is not None, upstream_key=route.upstream_api_key
        )
        url = yarl.URL(route.url + raw_path, encoded=True)  # checked by edges.normalise_path: sent as is
        timeout = aiohttp.ClientTimeout(
            total=None, connect=spec.pool_wait, sock_connect=10, sock_read=spec.read_timeout
        )
        session = self.upstreams.session(route, spec)
        for attempt in (1, 2):
            trace = {"reused": False}
            try:
                return await session.post(url, data=body, headers=headers, timeout=timeout, trace_request_ctx=trace)
            except aiohttp.ClientConnectorError as exc:  # nothing was sent: it may go again
                raise Unreachable(str(exc)) from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 1 and trace["reused"]:
                    continue  # a kept-alive connection the server had closed: sent once more, on a new one
                raise self.upstream_failed(route, exc, request) from None
            except aiohttp.ConnectionTimeoutError:
                raise Refused(
                    503, f"{route.name}: every connection to it is busy (pool_wait)", "upstream_busy", 5
                ) from None
            except (aiohttp.SocketTimeoutError, asyncio.TimeoutError):
                request["cause"] = f"silent for read_timeout ({spec.read_timeout:g}s)"
                raise Refused(
                    504,
                    f"{route.name} did not answer within {spec.read_timeout:g}s (read_timeout)",
                    "upstream_timeout",
                ) from None
            except aiohttp.ClientError as exc:
                raise self.upstream_failed(route, exc, request) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def upstream_failed(self, route: Route, exc: BaseException, request: web.Request) -> Refused:
        request["cause"] = f"{type(exc).__name__}: {exc}"  # for the log line; the client gets no internals
        return Refused(502, f"{route.name} did not answer; see `llmctl logs {route.name}`", "upstream_error")

    async def relay(
        self, request: web.Request, route: Route, upstream: aiohttp.ClientResponse, started: float, tap: Tap | None
    ) -> tuple[web.StreamResponse, int]:
        """Stream the upstream's answer through `tap` (which may hold back the usage event it asked for);
        (response, the status to count: 499 when the client left)."""
        response = web.StreamResponse(status=upstream.status)
        for name, value in response_headers(upstream.headers):
            response.headers.add(name, value)
        origin = request.headers.get("Origin")
        if origin and self.spec is not None and edges.origin_allowed(origin, self.spec.cors_origins):
            add_cors(response, edges.cors_headers(origin, preflight=False))
        await response.prepare(request)
        first = True
        tail = b""
        try:
            async for chunk in upstream.content.iter_any():
                if first:
                    self.metric(route.name).first_byte.observe(time.monotonic() - started)
                    first = False
                tail = (tail + chunk)[-64:]
                if tap is not None:
                    chunk = tap.feed(chunk)
                if chunk:
                    await response.write(chunk)
            if tap is not None and (rest := tap.flush()):
                await response.write(rest)
            if _cut_short(upstream, tail):
                raise aiohttp.ClientPayloadError("the connection closed before the stream's end ([DONE])")
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            # The client went away; leaving the block closes the upstream: it frees its slot. One that had
            # the whole stream ([DONE]) and closed at once was served.
            return response, upstream.status if tap is not None and tap.done else 499
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await self._cut(request, response, route, upstream, exc)
            return response, 502
        return response, await finish(response, upstream.status)

    async def _cut(
        self, request: web.Request, response: web.StreamResponse, route: Route, upstream: Any, exc: Exception
    ) -> None:
        """The upstream failed after the status line went out: end the answer the protocol's way."""
        why = "went silent (read_timeout)" if isinstance(exc, asyncio.TimeoutError) else "failed mid-answer"
        log.warning("%s: the upstream %s: %s", route.name, why, exc or type(exc).__name__)
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            error = error_body(502, f"{route.name} {why}; see `llmctl logs {route.name}`", "upstream_error")
            try:
                await response.write(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass
            return
        if upstream.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            # An Ollama instance's stream: Ollama ends a stream that fails mid-answer with an `{"error": ...}`
            # line (server/routes.go), which its clients raise as ResponseError; a cut body would be read as
            # an unexplained connection error.
            line = json.dumps({"error": f"{route.name} {why}; see `llmctl logs {route.name}`"}).encode() + b"\n"
            try:
                await response.write(line)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass
            return
        if request.transport is not None:
            request.transport.abort()  # no clean end: the client must see that the body was cut
