"""The dashboard: a page at /ui on the gateway, and the three reads it lives on (issue 21).

    GET /ui, /ui/, /ui/{file}                  the page: index.html, app.js, style.css, from this package
    GET /llmctl/v1/events                      server-sent events: `status` (the status document, whenever it
                                               changes), `activity` (each request's row), a comment ping
    GET /llmctl/v1/activity?n=N&instance=NAME  {"version": 1, "requests": [rows, oldest first]}
    GET /llmctl/v1/instances/{name}/logs?n=N   {"version": 1, "instance": name, "lines": [str]}

The gateway's middleware (llmctl.gateway.server) applies the key, Host and Origin rules to every route here
and turns a `Refused` into OpenAI's error shape; this module only answers. The page is static: no inline
script or style, so a Content-Security-Policy of 'self' holds, and Trusted Types are required so no script
of the page can assign markup (`innerHTML`): server text reaches the page through `textContent` only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any

from aiohttp import web

from llmctl.backends import backend_for
from llmctl.gateway.problems import Refused
from llmctl.logs.files import last_lines

log = logging.getLogger("llmctl.gateway.dashboard")

# The only files served under /ui: a name not listed is a 404, so no path reaches the file system.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# 'self' for everything the page loads or connects to; no inline script or style, no plugins, no <base>,
# no form posts, never framed (clickjacking a Stop button). Trusted Types with no policy: assigning a
# string to innerHTML (or any HTML sink) throws, in Chromium (w3c.github.io/trusted-types).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate: an upgraded llmctl serves its new page at once
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "Referrer-Policy": "no-referrer",
}
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

POLL_S = 1.0  # how often the status document is asked for while a page listens
PING_S = 15.0  # a comment at least this often, so proxies and the page's watchdog see a live stream
LOG_LINES = 200  # a log tail's lines when `n` is not given
MAX_LOG_LINES = 5000
ACTIVITY_ROWS = 100  # activity rows when `n` is not given


def add_routes(app: web.Application, gateway: Any) -> None:
    """Register the dashboard's routes on the gateway's application (before it is frozen).

    `gateway` is llmctl.gateway.server.Gateway: `paths` (StatePaths), `link.routes` (name -> Route),
    `activity` (llmctl.gateway.activity.Activity) and `async status_document()` (raises Refused(503) when
    no supervisor answers) are all this module uses."""
    dashboard = _Dashboard(gateway)
    app.router.add_get("/ui", dashboard.index)
    app.router.add_get("/ui/", dashboard.index)
    app.router.add_get("/ui/{file}", dashboard.static)
    app.router.add_get("/llmctl/v1/events", dashboard.events)
    app.router.add_get("/llmctl/v1/activity", dashboard.activity)
    app.router.add_get("/llmctl/v1/instances/{name}/logs", dashboard.logs)
    app.on_shutdown.append(dashboard.shutdown)


def ui_file(name: str) -> bytes:
    """The bytes of one of UI_FILES, read from the installed package; KeyError for any other name."""
    if name not in UI_FILES:
        raise KeyError(name)
    return resources.files("llmctl.gateway").joinpath("ui", name).read_bytes()


def count_from(query: Any, default: int, most: int) -> int:
    """The `n` of a query string: a whole number from 0, at most `most`; Refused(400) otherwise."""
    text = query.get("n")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Refused(400, "n must be a whole number", "invalid_value") from None
    if value < 0:
        raise Refused(400, "n must be 0 or more", "invalid_value")
    return min(value, most)


def sse(event: str | None, data: Any = None, comment: str | None = None) -> bytes:
    """One server-sent event (html.spec.whatwg.org/multipage/server-sent-events.html): `event:` and one
    `data:` line of compact JSON (JSON escapes every newline, so one line always suffices), or a comment."""
    if comment is not None:
        return f": {comment}\n\n".encode()
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {body}\n\n".encode()


class _Dashboard:
    """The handlers, bound to one gateway."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.closing = asyncio.Event()  # set when the gateway shuts down: every stream ends
        # One status request per poll for all open pages, not one each: (when asked, the answer) and the
        # request in progress, which every page awaits.
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._asking: asyncio.Future[dict[str, Any]] | None = None

    async def shutdown(self, app: web.Application) -> None:
        self.closing.set()

    # -- the page ----------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in UI_FILES:
            raise Refused(404, "no such file under /ui", "not_found")
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        try:
            body = ui_file(name)
        except OSError:  # an installation without its package data
            log.error("the dashboard's %s is missing from the installed package", name)
            raise Refused(500, f"the dashboard's {name} is not installed", "internal_error") from None
        return web.Response(body=body, headers={"Content-Type": UI_FILES[name], **PAGE_HEADERS})

    # -- reads -------------------------------------------------------------------------------------

    async def activity(self, request: web.Request) -> web.Response:
        """The last `n` activity rows, oldest first, of the instances named by `instance` (repeated or
        comma-separated; all when absent)."""
        count = count_from(request.query, ACTIVITY_ROWS, 100_000)
        names = {name for value in request.query.getall("instance", []) for name in value.split(",") if name}
        rows = self.gateway.activity.recent(count, names or None) if count else []
        return web.json_response({"version": 1, "requests": rows}, headers=JSON_HEADERS)

    async def logs(self, request: web.Request) -> web.Response:
        """The last `n` lines of an instance's log, without its health probes (as `llmctl logs`)."""
        name = request.match_info["name"]
        route = self.gateway.link.routes.get(name)
        if route is None:  # only a configured instance: the name never reaches a path otherwise
            raise Refused(404, "no instance of that name", "instance_not_found")
        count = count_from(request.query, LOG_LINES, MAX_LOG_LINES)
        noise = _probe_noise(route.backend)
        keep = None if noise is None else (lambda line: not noise(line))
        path = self.gateway.paths.log_file(route.name)
        lines = await asyncio.to_thread(last_lines, path, count, keep)
        return web.json_response({"version": 1, "instance": route.name, "lines": lines}, headers=JSON_HEADERS)

    # -- the event stream --------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """`event: status` whenever the status document changes (asked for every POLL_S seconds; `{"error":
        message}` while no supervisor answers), `event: activity` for each new row, `: ping` every PING_S
        seconds of silence. Ends when the client leaves or the gateway shuts down."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "X-Accel-Buffering": "no",  # a proxy (nginx) must not hold events back
            }
        )
        await response.prepare(request)
        queue = self.gateway.activity.subscribe()
        try:
            await self._stream(response, queue)
        except ConnectionError:  # the client left between two events
            pass
        finally:
            self.gateway.activity.unsubscribe(queue)
        return response

    async def _stream(self, response: web.StreamResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        await response.write(sse(None, comment="llmctl events"))
        last_status: str | None = None
        last_write = time.monotonic()
        while not self.closing.is_set():
            status = await self._status()
            text = json.dumps(status, sort_keys=True)
            if text != last_status:
                last_status = text
                if await _send(response, "status", status):
                    last_write = time.monotonic()
            deadline = time.monotonic() + POLL_S
            while (row := await self._next_row(queue, deadline - time.monotonic())) is not None:
                if await _send(response, "activity", row):
                    last_write = time.monotonic()
            if time.monotonic() - last_write >= PING_S:
                await response.write(sse(None, comment="ping"))
                last_write = time.monotonic()

    async def _status(self) -> dict[str, Any]:
        """The status document (or `{"error": ...}`), shared by every page: asked again only once the last
        answer is nearly POLL_S old, so N pages cost the supervisor one request a second, not N."""
        latest = self._latest
        if latest is not None and time.monotonic() - latest[0] < POLL_S * 0.9:
            return latest[1]
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._ask())
        return await asyncio.shield(self._asking)  # a page that leaves does not cancel the others' request

    async def _ask(self) -> dict[str, Any]:
        try:
            document = await self.gateway.status_document()
        except Refused as refused:
            document = {"error": refused.message}
        self._latest = (time.monotonic(), document)
        return document

    async def _next_row(self, queue: asyncio.Queue[dict[str, Any]], timeout: float) -> dict[str, Any] | None:
        """The next activity row, or None once `timeout` seconds passed or the gateway is closing."""
        if timeout <= 0 or self.closing.is_set():
            return None
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        closer = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({getter, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None


async def _send(response: web.StreamResponse, event: str, data: Any) -> bool:
    """Write one event; False (and a log line) for data JSON cannot carry (NaN, infinity): skipped, so one
    odd figure never ends the stream."""
    try:
        payload = sse(event, data)
    except (TypeError, ValueError) as exc:
        log.warning("a %s event was not sent: %s", event, exc)
        return False
    await response.write(payload)
    return True


def _probe_noise(backend: str) -> Any:
    """The backend's health-probe line test, or None for a backend this llmctl does not know."""
    try:
        return backend_for(backend).is_probe_noise
    except ValueError:  # a backend this version does not know: every line is shown rather than none
        return None
