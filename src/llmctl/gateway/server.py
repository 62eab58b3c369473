"""One port for every model: an aiohttp server inside the supervisor that routes OpenAI-style
requests by their `model` to the instance of that name or alias, streaming answers through as they
come. Admission (starts, queues, eviction, TTL) is llmctl.gateway.admission's.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from ..errors import ConfigError
from ..safefiles import read_regular_file
from .admission import Admission, Refused
from .metrics import prometheus

if TYPE_CHECKING:
    from ..runner import Runner
    from ..spec import GatewaySpec, InstanceSpec
    from ..supervisor import Supervisor

log = logging.getLogger("llmctl.gateway")

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "content-encoding",
}
MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*\r\n([^\r\n]{1,256})\r\n')


def read_api_key(spec: GatewaySpec, environ: dict[str, str]) -> str | None:
    """The key from an environment variable or a 0600 file; never from a command line `ps` shows."""
    if spec.api_key_env:
        key = environ.get(spec.api_key_env)
        if not key:
            raise ConfigError(f"gateway.api_key_env names ${spec.api_key_env}, which is not set")
        return key
    if spec.api_key_file:
        path = os.path.expanduser(spec.api_key_file)
        try:
            if os.stat(path).st_mode & 0o077:
                raise ConfigError(f"gateway.api_key_file {path} can be read by others: `chmod 600 {path}`")
            key = read_regular_file(Path(path), 4096, follow_symlinks=True).decode().strip()
        except OSError as exc:
            raise ConfigError(f"gateway.api_key_file {path}: {exc.strerror or exc}") from None
        if not key:
            raise ConfigError(f"gateway.api_key_file {path} is empty")
        return key
    if spec.host not in LOOPBACK and not spec.host.startswith("127."):
        raise ConfigError(
            f"the gateway would listen on {spec.host} without an API key: set gateway.api_key_env or "
            "gateway.api_key_file, or bind it to 127.0.0.1"
        )
    return None


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code}}


class Gateway:
    def __init__(self, supervisor: Supervisor, spec: GatewaySpec) -> None:
        self.supervisor = supervisor
        self.spec = spec
        self.admission = Admission(supervisor, spec)
        self.api_key = read_api_key(spec, supervisor.services.environ)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._expiry: asyncio.Task[None] | None = None

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=self.spec.max_body, middlewares=[self._guard])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/{tail:.+}", self._proxy)
        # handler_cancellation: a client that goes away cancels its handler, in every phase.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.spec.host, self.spec.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"the gateway cannot listen on {self.spec.host}:{self.spec.port}: {exc.strerror}"
            ) from None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=False)
        self._expiry = asyncio.ensure_future(self.admission.expire_idle())
        log.info("gateway listening on %s", self.spec.url)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def status(self) -> dict[str, Any]:
        metrics = self.admission.metrics
        return {
            "url": self.spec.url,
            "requests": sum(sum(m.requests.values()) for m in metrics.values()),
            "in_flight": sum(m.in_flight for m in metrics.values()),
            "queued": sum(m.queued for m in metrics.values()),
            "instances": {name: m.summary() for name, m in metrics.items()},
        }

    # -- edges: key, CORS -----------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin if origin and origin in self.spec.cors_origins else None
        if not self.api_key and not self._loopback_host(request):
            # Without a key only a loopback Host: a web page that rebinds its DNS to 127.0.0.1 gets 403.
            response: web.StreamResponse = web.json_response(
                error_body(403, "this gateway answers only to localhost", "forbidden_host"), status=403
            )
        elif request.method == "OPTIONS":
            response = web.Response(status=204 if allowed else 403)
        elif self.api_key and request.path != "/health" and not self._authorized(request):
            response = web.json_response(error_body(401, "a valid API key is required", "invalid_api_key"), status=401)
        else:
            try:
                response = await handler(request)
            except web.HTTPRequestEntityTooLarge:
                limit = self.spec.max_body
                response = web.json_response(
                    error_body(413, f"the request is larger than {limit} bytes", "too_large"), status=413
                )
        if allowed and not response.prepared:
            response.headers.update({"Access-Control-Allow-Origin": allowed, "Vary": "Origin"})
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Api-Key"
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        return response

    def _loopback_host(self, request: web.Request) -> bool:
        host = request.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in ("localhost", "127.0.0.1", "[::1]") or (name.startswith("127.") and name.count(".") == 3)

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("X-Api-Key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self.api_key is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    # -- answers the gateway gives itself -----------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, request: web.Request) -> web.Response:
        for runner in self.supervisor.runners.values():
            self.admission.metric(runner.name)
        return web.Response(text=prometheus(self.admission.metrics), content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        data = []
        for runner in self.supervisor.runners.values():
            for model_id in (runner.name, *runner.spec.aliases):
                entry = {
                    "id": model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "llmctl",
                    "state": runner.state.value,
                }
                if model_id != runner.name:
                    entry["alias_of"] = runner.name
                data.append(entry)
        return web.json_response({"object": "list", "data": data})

    # -- the proxy -------------------------------------------------------------------------

    def _resolve(self, model: str) -> Runner:
        for runner in self.supervisor.runners.values():
            if model == runner.name or model in runner.spec.aliases:
                return runner
        known = sorted(m for r in self.supervisor.runners.values() for m in (r.name, *r.spec.aliases))
        raise Refused(404, f"model {model!r} not found; known models: {', '.join(known) or 'none'}", "model_not_found")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        status, name = 499, None
        try:
            body = await request.read()
            is_json, model = model_of(request.content_type, body)
            runner = self._resolve(model)
            name = runner.name
            async with self.admission.admit(runner):
                response, status = await self._forward(request, runner, rewrite(runner.spec, is_json, body), started)
                return response
        except Refused as refused:
            status = refused.status
            response = web.json_response(error_body(refused.status, str(refused), refused.code), status=refused.status)
            if refused.retry_after:
                response.headers["Retry-After"] = str(refused.retry_after)
            return response
        except asyncio.CancelledError:
            status = 499
            log.info("%s %s: 499 (the client went away)", request.path, name or "-")
            raise
        except aiohttp.ClientError as exc:
            status = 502
            return web.json_response(
                error_body(502, f"{name}: the upstream failed: {exc}", "upstream_error"), status=502
            )
        finally:
            if name is not None:
                metric = self.admission.metric(name)
                metric.requests[status] += 1
                metric.duration.observe(time.monotonic() - started)

    async def _forward(
        self, request: web.Request, runner: Runner, body: bytes, started: float
    ) -> tuple[web.StreamResponse, int]:
        assert self._session is not None
        headers = {key: value for key, value in request.headers.items() if key.lower() not in HOP_BY_HOP}
        url = runner.spec.url + request.path_qs
        async with self._session.post(url, data=body, headers=headers) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers[key] = value
            response.headers["X-Accel-Buffering"] = "no"  # no proxy in front may buffer a stream
            await response.prepare(request)
            first = True
            try:
                async for chunk in upstream.content.iter_any():
                    if first:
                        self.admission.metric(runner.name).first_byte.observe(time.monotonic() - started)
                        first = False
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                return response, 499  # leaving the block closes the upstream: the server frees its slot
            return response, upstream.status


def model_of(content_type: str, body: bytes) -> tuple[bool, str]:
    """(is JSON, the `model` the request names), or Refused(400)."""
    if content_type.startswith("multipart/"):
        match = MULTIPART_MODEL.search(body)
        if match:
            return False, match.group(1).decode("utf-8", errors="replace")
        raise Refused(400, "the multipart request has no `model` field", "missing_model")
    try:
        payload = json.loads(body)
    except ValueError:
        raise Refused(400, "the request body is not JSON", "invalid_json") from None
    model = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(model, str) or not model:
        raise Refused(400, "the request names no `model`", "missing_model")
    return True, model


def rewrite(spec: InstanceSpec, is_json: bool, body: bytes) -> bytes:
    """The body as the upstream must see it: the model name it serves (its backend says which)."""
    if not is_json:
        return body
    from ..backends import backend_for

    payload = json.loads(body)
    model = backend_for(spec.backend).upstream_model(spec)
    if model is None:
        payload.pop("model", None)
    else:
        payload["model"] = model
    return json.dumps(payload).encode()
