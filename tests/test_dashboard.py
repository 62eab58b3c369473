"""The dashboard (issue 21): its routes on a stand-in gateway object, then the page in a real browser
(headless Chromium driven by Playwright) against a real fleet behind the real gateway.

The stand-in is only the object the routes read (`paths`, `link.routes`, `status_document()`): the
activity, the files, the log reader, the event stream and aiohttp are real. The browser tests run `llmctl up` on
fake servers (lifecycle) and a real llama-server (tokens/s), and assert what a person sees on the page."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmctl.gateway import dashboard
from llmctl.gateway.activity import Activity
from llmctl.gateway.problems import Refused, error_response
from llmctl.paths import StatePaths
from llmctl.planes import Route

from .helpers import (
    ROOT,
    by_name,
    command_instance,
    free_port,
    llmctl,
    status_json,
    supervisor_pid,
    wait_for,
    write_config,
)


def _subscribers(activity: Activity) -> int:
    return len(activity.subscribers)


def row(instance: str, tokens_per_s: float, **extra: Any) -> dict[str, Any]:
    base = {
        "time": 1_790_000_000.0,
        "instance": instance,
        "model": instance,
        "api": "openai",
        "path": "/v1/chat/completions",
        "status": 200,
        "stream": False,
        "ttft_ms": 12.5,
        "prompt_tokens": 7,
        "completion_tokens": 16,
        "prompt_tokens_per_s": 700.0,
        "completion_tokens_per_s": tokens_per_s,
        "duration_ms": 40.0,
    }
    return {**base, **extra}


class StandIn:
    """The gateway as the dashboard sees it."""

    def __init__(self, state: Path, routes: list[Route]) -> None:
        self.paths = StatePaths(state)
        self.link = SimpleNamespace(routes={route.name: route for route in routes})
        self.activity = Activity(None)
        self.document: dict[str, Any] = {"version": 1, "instances": [{"name": "a", "state": "healthy"}]}
        self.down = False

    async def status_document(self) -> dict[str, Any]:
        if self.down:
            raise Refused(503, "no supervisor answers: run `llmctl up`", "supervisor_unavailable", 2)
        return self.document


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    """What the gateway's own middleware does with a Refused."""
    try:
        return await handler(request)
    except Refused as refused:
        return error_response(refused)


def serve(gateway: StandIn, check: Any) -> None:
    """Run `check(client, app)` against the dashboard's routes on a real aiohttp server."""

    async def main() -> None:
        app = web.Application(middlewares=[_refusals])
        dashboard.add_routes(app, gateway)
        async with TestClient(TestServer(app, handler_cancellation=True)) as client:
            await check(client, app)

    asyncio.run(main())


@pytest.fixture
def fast_stream(monkeypatch):
    monkeypatch.setattr(dashboard, "POLL_S", 0.05)


def routes(*names: str, backend: str = "command") -> list[Route]:
    return [Route(name=name, url="http://127.0.0.1:1", backend=backend, state="healthy") for name in names]


# -- the page's files ---------------------------------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_policy_and_nothing_else_is(state_dir):
    gateway = StandIn(state_dir, routes("a"))

    async def check(client: TestClient, app: web.Application) -> None:
        pages = {}
        for path, kind in [
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/index.html", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/style.css", "text/css"),
        ]:
            response = await client.get(path)
            assert response.status == 200, path
            assert response.headers["Content-Type"].startswith(kind), (path, response.headers)
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
            pages[path] = await response.text()
        html = pages["/ui"]
        assert pages["/ui/"] == html
        # Nothing inline, nothing from elsewhere: the policy holds without exceptions.
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
        assert re.search(r"\sstyle=|<style|\son[a-z]+=", html) is None
        assert not re.search(r"(src|href)=\"(https?:)?//", html)
        script = pages["/ui/app.js"]
        assert re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|\beval\(", script) is None
        for path in ["/ui/server.py", "/ui/ui", "/ui/APP.JS", "/ui/__init__.py"]:
            response = await client.get(path)
            assert response.status == 404, path
            assert (await response.json())["error"]["code"] == "not_found"
        for path in ["/ui/..%2fdashboard.py", "/ui/%2e%2e/dashboard.py", "/ui/index.html/", "/ui/../problems.py"]:
            response = await client.get(path)
            assert response.status == 404, path
            assert "import" not in await response.text()

    serve(gateway, check)


# -- reads ---------------------------------------------------------------------------------------------------------


def test_a_log_tail_is_the_last_lines_without_probes_and_only_of_an_instance(state_dir):
    gateway = StandIn(state_dir, routes("llama", backend="llama.cpp"))
    gateway.paths.logs.mkdir(parents=True)
    probe = "srv  log_server_r: request: GET /health 127.0.0.1 200"
    lines = [f"line {n}" for n in range(30)] + [probe, "\x1b[31mred\x1b[0m and a bell \x07", probe]
    gateway.paths.log_file("llama").write_bytes(("\n".join(lines) + "\n").encode() + b"not utf-8: \xff\n")
    (gateway.paths.logs / "secret.log").write_text("not an instance\n")

    async def check(client: TestClient, app: web.Application) -> None:
        response = await client.get("/llmctl/v1/instances/llama/logs?n=3")
        assert response.status == 200
        body = await response.json()
        assert body["version"] == 1 and body["instance"] == "llama"
        assert body["lines"] == ["line 29", "\x1b[31mred\x1b[0m and a bell \x07", "not utf-8: \udcff"]
        whole = await (await client.get("/llmctl/v1/instances/llama/logs")).json()
        assert len(whole["lines"]) == 32 and probe not in whole["lines"]
        for path in ["/llmctl/v1/instances/secret/logs", "/llmctl/v1/instances/..%2fsecret/logs"]:
            response = await client.get(path)
            assert response.status == 404, path
            assert (await response.json())["error"]["code"] == "instance_not_found"
        response = await client.get("/llmctl/v1/instances/llama/logs?n=many")
        assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_value"

    serve(gateway, check)


def test_activity_reads_the_last_rows_of_the_instances_asked(state_dir):
    gateway = StandIn(state_dir, routes("a", "b"))
    for n in range(5):
        gateway.activity.add(row("a" if n % 2 else "b", float(n), time=1_790_000_000.0 + n))

    async def check(client: TestClient, app: web.Application) -> None:
        body = await (await client.get("/llmctl/v1/activity?n=2")).json()
        assert body["version"] == 1
        assert [r["completion_tokens_per_s"] for r in body["requests"]] == [3.0, 4.0]
        only_a = await (await client.get("/llmctl/v1/activity?instance=a")).json()
        assert [r["instance"] for r in only_a["requests"]] == ["a", "a"]
        both = await (await client.get("/llmctl/v1/activity?instance=a,b&n=10")).json()
        assert len(both["requests"]) == 5
        response = await client.get("/llmctl/v1/activity?n=-1")
        assert response.status == 400

    serve(gateway, check)


# -- the event stream ----------------------------------------------------------------------------------------------


async def next_event(response: Any) -> tuple[str, Any]:
    """The next event (name, parsed data) of a text/event-stream, or ("comment", text)."""
    event, data = None, []
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith(":"):
            return "comment", line[1:].strip()
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and event:
            return event, json.loads("\n".join(data))


async def next_named(response: Any, name: str) -> Any:
    while True:
        event, data = await next_event(response)
        if event == name:
            return data


def test_the_stream_sends_status_changes_activity_and_errors_and_ends_with_its_client(state_dir, fast_stream):
    gateway = StandIn(state_dir, routes("a"))

    async def check(client: TestClient, app: web.Application) -> None:
        response = await client.get("/llmctl/v1/events")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert await next_named(response, "status") == gateway.document
        gateway.activity.add(row("a", 42.0))
        assert (await next_named(response, "activity"))["completion_tokens_per_s"] == 42.0
        gateway.activity.add(row("a", float("nan")))  # JSON cannot carry it: skipped, the stream goes on
        gateway.activity.add(row("a", 43.0))
        assert (await next_named(response, "activity"))["completion_tokens_per_s"] == 43.0
        gateway.document = {"version": 1, "instances": [{"name": "a", "state": "stopped"}]}
        assert (await next_named(response, "status"))["instances"][0]["state"] == "stopped"
        gateway.down = True
        assert (await next_named(response, "status")) == {"error": "no supervisor answers: run `llmctl up`"}
        gateway.down = False
        assert (await next_named(response, "status")) == gateway.document
        assert _subscribers(gateway.activity) == 1
        response.close()  # the page goes away: its subscription goes with it
        for _ in range(200):
            if _subscribers(gateway.activity) == 0:
                break
            await asyncio.sleep(0.05)
        assert _subscribers(gateway.activity) == 0

    serve(gateway, check)


def test_the_stream_pings_and_ends_when_the_gateway_shuts_down(state_dir, fast_stream, monkeypatch):
    monkeypatch.setattr(dashboard, "PING_S", 0.0)
    gateway = StandIn(state_dir, routes("a"))

    async def check(client: TestClient, app: web.Application) -> None:
        response = await client.get("/llmctl/v1/events")
        assert await next_named(response, "status") == gateway.document
        assert await next_event(response) == ("comment", "ping")  # the document did not change: a ping
        await app.shutdown()
        rest = await asyncio.wait_for(response.content.read(), 10)  # the stream ends: read() returns
        assert b"event: status" not in rest
        assert _subscribers(gateway.activity) == 0

    serve(gateway, check)


# -- in a real browser ----------------------------------------------------------------------------------------------

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A server's colours (ESC[31m red ESC[0m) and markup in its log: shown as text, never obeyed.
RED = (b"\x1b[31mred\x1b[0m <img src=x id=planted> not UTF-8: \xff\n").hex()
ASSIGN_MARKUP = (
    """() => { try { document.body.innerHTML = '<b>x</b>'; return 'assigned'; } catch (e) { return e.name; } }"""
)


class Browser:
    """A page of headless Chromium on the dashboard, collecting every script error and request URL."""

    def __init__(self, playwright: Any, tmp_path: Path) -> None:
        self.browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.requests: list[Any] = []
        self.tmp_path = tmp_path
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)
        self.statuses: list[tuple[str, int]] = []
        self.page.on("response", lambda response: self.statuses.append((response.url, response.status)))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)
        self.requests.append(request)

    def shot(self, name: str) -> Path:
        path = self.tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.browser.close()


@pytest.fixture
def browser(tmp_path):
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("no browser: /usr/bin/chromium is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        opened = Browser(playwright, tmp_path)
        try:
            yield opened
        finally:
            opened.close()


def fleet(folder: Path, instances: str, gateway: str = "", env: dict[str, str] | None = None) -> str:
    port = free_port()
    write_config(folder, f"gateway: {{port: {port}{gateway}}}\ninstances:{instances}")
    result = llmctl("up", cwd=folder, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return f"http://127.0.0.1:{port}"


def state_of(page: Any, name: str) -> str:
    """The state the page shows for an instance ("" while it shows none), without waiting."""
    script = "name => document.querySelector(`tr.instance[data-instance='${name}'] span.state`)?.dataset.state ?? ''"
    return page.evaluate(script, name)


def test_the_page_lists_the_fleet_starts_an_instance_and_tails_its_log(tmp_path, state_dir, browser):
    """Instances and their states; Start starts an on-demand instance; a log tail shows an escape
    where the server printed a control character; no script errors."""
    url = fleet(
        tmp_path,
        command_instance("lazy", free_port(), extra="    on_demand: true\n    ttl: 300\n")
        + command_instance("colours", free_port(), "--say-hex", RED),
    )
    page = browser.page
    page.goto(url + "/ui")
    rows = page.locator("tr.instance")
    wait_for(lambda: rows.count() == 2, message="both instances on the page")
    wait_for(lambda: state_of(page, "colours") == "healthy", message="colours healthy on the page")
    assert state_of(page, "lazy") == "stopped"
    assert "standby" in page.locator('tr.instance[data-instance="lazy"] td.demand').inner_text()
    assert page.locator('tr.instance[data-instance="colours"] .bar[data-pool]').count() >= 1  # measured memory
    assert page.locator(".pools .pool").count() >= 1

    page.locator('tr.instance[data-instance="lazy"] button.start').click()
    wait_for(lambda: state_of(page, "lazy") == "healthy", timeout=60, message="lazy healthy after Start")
    assert by_name(status_json(cwd=tmp_path))["lazy"]["state"] == "healthy"
    wait_for(
        lambda: "stops in" in page.locator('tr.instance[data-instance="lazy"] td.demand').inner_text(),
        message="a ttl countdown",
    )

    page.locator('tr.instance[data-instance="colours"] button.logs-toggle').click()
    log = page.locator('tr.logs[data-instance="colours"] pre.log')
    wait_for(lambda: "\\x1b[31mred\\x1b[0m" in log.inner_text(), message="the escape in the log tail")
    assert "\x1b" not in log.inner_text()
    assert "<img src=x id=planted> not UTF-8: \\xff" in log.inner_text()
    assert page.locator("#planted").count() == 0
    browser.shot("fleet")

    page.locator('tr.instance[data-instance="lazy"] button.stop').click()
    wait_for(lambda: state_of(page, "lazy") == "stopped", timeout=60, message="lazy stopped after Stop")
    assert browser.errors == []
    assert page.evaluate(ASSIGN_MARKUP) == "TypeError"  # the page's policy: no markup from strings at all
    assert len(browser.errors) == 1 and "TrustedHTML" in browser.errors[0]


def ask(url: str, model: str, stream: bool) -> dict[str, Any]:
    """One chat completion through the gateway; its usage (None for a stream that did not ask for it)."""
    body = {
        "model": model,
        "max_tokens": 48,
        "stream": stream,
        "messages": [{"role": "user", "content": "Name three colours."}],
    }
    if not stream:
        answer = httpx.post(url + "/v1/chat/completions", json=body, trust_env=False, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["usage"]
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, trust_env=False, timeout=120) as answer:
        assert answer.status_code == 200
        events = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in event and '"choices":[]' in event.replace(" ", "") for event in events)
    return {}


def test_requests_show_up_with_their_tokens_per_s(tmp_path, state_dir, browser, real_model, llama_server):
    """Completions through the gateway, plain and streamed, on llama.cpp and MLX with the same real model:
    each appears in the activity table with its tokens (the upstream's usage) and tokens/s, and each
    instance has its line on the chart. The screenshot is the README's picture."""
    gguf, mlx = real_model
    url = fleet(
        tmp_path,
        f"\n  - name: smol-llama\n    backend: llama.cpp\n    model: {gguf}\n    port: {free_port()}\n"
        '    args: ["-c", "1024", "-np", "1", "-ngl", "0"]\n'
        f"\n  - name: smol-mlx\n    backend: mlx\n    model: {mlx}\n    port: {free_port()}\n"
        + command_instance("lazy", free_port(), extra="    on_demand: true\n    ttl: 600\n"),
    )
    page = browser.page
    page.goto(url + "/ui")
    for name in ("smol-llama", "smol-mlx"):
        wait_for(lambda name=name: state_of(page, name) == "healthy", timeout=60, message=f"{name} healthy")
    usages = {}
    for name in ("smol-llama", "smol-mlx"):
        ask(url, name, stream=True)
        usages[name] = ask(url, name, stream=False)
    rows = page.locator("#activity-rows tr.request")
    wait_for(lambda: rows.count() == 4, timeout=30, message="four rows in the activity table")
    kept = httpx.get(url + "/llmctl/v1/activity", trust_env=False).json()["requests"]  # oldest first
    for name, usage in usages.items():
        plain, streamed = page.locator(f'#activity-rows tr.request[data-instance="{name}"]').all()  # newest first
        plain_row, streamed_row = [r for r in kept if r["instance"] == name][::-1]
        for shown, known in ((plain, plain_row), (streamed, streamed_row)):
            assert shown.locator("td.status").inner_text() == "200"
            assert shown.locator("td.api").inner_text() == "openai"
            rate = known["completion_tokens_per_s"]
            assert shown.locator("td.tps").inner_text() == ("–" if rate is None else f"{rate:.1f}")
        # A stream always has its speed (first to last token) and its time to first token.
        assert float(streamed.locator("td.tps").inner_text()) > 0, name
        assert float(streamed.locator("td.ttft").inner_text()) > 0, name
        assert plain.locator("td.tokens").inner_text() == f"{usage['prompt_tokens']} / {usage['completion_tokens']}"
        assert name in page.locator("#legend").inner_text()
    shot = browser.shot("dashboard")
    docs = ROOT / "docs" / "dashboard.png"
    if not docs.exists():  # the README's picture: taken once, kept
        docs.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs)
    assert browser.errors == []


def test_a_keyed_gateway_asks_for_the_key_once_and_never_puts_it_in_a_url(tmp_path, state_dir, browser):
    key = "dashboard-test-key-7f3a"
    url = fleet(
        tmp_path,
        command_instance("lazy", free_port(), extra="    on_demand: true\n") + command_instance("a", free_port()),
        gateway=", api_key_env: DASH_KEY",
        env={"DASH_KEY": key},
    )
    page = browser.page
    page.goto(url + "/ui")
    page.locator("#key-form").wait_for(state="visible", timeout=30000)
    assert page.locator("tr.instance").count() == 0
    assert any("/llmctl/v1/" in u and status == 401 for u, status in browser.statuses)
    page.fill("#key-input", "not-the-key")
    page.click("#key-submit")
    wait_for(lambda: "refused" in page.locator("#key-note").inner_text(), message="a wrong key is said to be refused")
    assert page.locator("#key-form").is_visible() and page.locator("tr.instance").count() == 0
    page.fill("#key-input", key)
    page.click("#key-submit")
    wait_for(lambda: page.locator("tr.instance").count() == 2, message="the fleet after the key")
    wait_for(lambda: state_of(page, "a") == "healthy", message="a healthy")
    page.locator('tr.instance[data-instance="lazy"] button.start').click()
    wait_for(lambda: state_of(page, "lazy") == "healthy", timeout=60, message="lazy started with the key")
    assert page.locator("#key-form").is_hidden()
    assert page.evaluate("sessionStorage.getItem('llmctl.apiKey')") == key
    page.reload()  # the same tab: the key is remembered, not asked again
    wait_for(lambda: state_of(page, "a") == "healthy", message="the fleet after a reload")
    assert page.locator("#key-form").is_hidden()
    browser.shot("keyed")
    assert not [u for u in browser.urls if key in u or "not-the-key" in u]
    sent = {r.headers.get("authorization") for r in browser.requests if "/llmctl/v1/" in r.url}
    assert sent == {None, "Bearer not-the-key", f"Bearer {key}"}  # before a key, the wrong one, the right one
    # The 401s a page without the key met were expected; anything else is an error.
    assert [e for e in browser.errors if "401" not in e] == []


def test_the_page_says_when_no_supervisor_answers_and_recovers(tmp_path, state_dir, browser):
    """kill -9 of the supervisor: the gateway lives on and the page says no supervisor answers; `llmctl up`
    starts one again and the page goes on by itself."""
    url = fleet(tmp_path, command_instance("a", free_port()))
    page = browser.page
    page.goto(url + "/ui")
    wait_for(lambda: state_of(page, "a") == "healthy", message="a healthy")
    assert page.locator("#banner").is_hidden()
    os.kill(supervisor_pid(state_dir), signal.SIGKILL)
    banner = page.locator("#banner")
    wait_for(lambda: banner.is_visible() and "No supervisor answers" in banner.inner_text(), message="the banner")
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: banner.is_hidden(), timeout=30, message="the banner gone")
    assert state_of(page, "a") == "healthy"
    assert browser.errors == []
