"""What a hostile or careless input does to issue 21's parts: a corrupt activity file under `llmctl activity`,
odd `llmctl bench` options, and a key the gateway can never accept typed into the dashboard.

The browser test serves the real dashboard routes and files on a real aiohttp server, behind a middleware
that checks the key with the gateway's own functions (llmctl.gateway.edges); no fleet runs."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llmctl.beyond import enginebench
from llmctl.cli.benchcmd import MAX_CONCURRENCY, _write_chart, parse_levels
from llmctl.errors import ConfigError
from llmctl.gateway import dashboard, edges
from llmctl.gateway.problems import Refused, error_response
from llmctl.logs.activity_file import last_rows, parse_row

from .helpers import free_port, llmctl, wait_for
from .test_dashboard import StandIn, browser, routes  # noqa: F401  (browser: a fixture)

GOOD = {
    "time": 1_790_000_000.0,
    "instance": "a",
    "model": "a",
    "api": "openai",
    "path": "/v1/chat/completions",
    "status": 200,
    "stream": False,
    "ttft_ms": 1.0,
    "prompt_tokens": 7,
    "completion_tokens": 9,
    "prompt_tokens_per_s": 70.0,
    "completion_tokens_per_s": 90.0,
    "duration_ms": 3.0,
}
DEEP = "[" * 100_000 + "]" * 100_000


# -- the activity file -------------------------------------------------------------------------------------------


def test_a_row_json_cannot_carry_reads_as_null_and_a_too_deep_line_as_no_row():
    assert parse_row(DEEP) is None  # RecursionError in json: no row, no traceback
    assert parse_row('{"a":' * 50_000 + "1" + "}" * 50_000) is None
    row = parse_row(
        '{"time": NaN, "ttft_ms": Infinity, "duration_ms": -Infinity, "prompt_tokens": 1e400, "status": 200}'
    )
    assert row == {"time": None, "ttft_ms": None, "duration_ms": None, "prompt_tokens": None, "status": 200}
    assert parse_row("[1, 2]") is None and parse_row("not json") is None


def test_llmctl_activity_shows_a_corrupt_file_without_a_traceback(state_dir):
    path = state_dir / "logs" / "activity.jsonl"
    path.parent.mkdir(parents=True)
    odd = [
        {**GOOD, "time": 1e300},  # past time_t: OverflowError in localtime
        {**GOOD, "time": -1e18},  # before year 1: OSError/ValueError
        {**GOOD, "instance": "\x1b]0;title\x07\x1b[31mred", "api": {"x": 1}},
        {**GOOD, "instance": None, "status": "abc"},
    ]
    lines = [json.dumps(GOOD)] + [json.dumps(row) for row in odd] + ['{"time": NaN, "instance": "n"}', DEEP, "\udcff"]
    path.write_text("\n".join(lines) + "\n", errors="surrogateescape")

    table = llmctl("activity", "-n", "100")
    assert table.returncode == 0, table.stderr
    assert table.stderr == ""
    shown = table.stdout.splitlines()
    assert len(shown) == 1 + 6  # the header, the good row, four odd rows, the NaN row; not DEEP nor the bytes
    assert shown[2].startswith("-  ") and shown[3].startswith("-  ")  # times no platform can show
    assert "\\x1b]0;title\\x07\\x1b[31mred" in shown[4] and "\x1b" not in table.stdout
    assert "{'x': 1}" not in table.stdout

    as_json = llmctl("activity", "--json", "-n", "100")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert len(document["requests"]) == 6
    assert document["requests"][-1] == {"time": None, "instance": "n"}
    assert last_rows(path, 100) == document["requests"]


# -- llmctl bench --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["²", "١", "0", "-1", f"{MAX_CONCURRENCY + 1}", "1," + "9" * 30, "", "1,,2", "abc"])
def test_concurrency_is_ascii_digits_within_bounds(text):
    with pytest.raises(ConfigError, match=r"^--concurrency .*: give whole numbers from 1 to 1024"):
        parse_levels(text)
    assert parse_levels(f"1,{MAX_CONCURRENCY}") == (1, MAX_CONCURRENCY)


def test_a_chart_that_cannot_be_written_is_one_line_after_the_results(tmp_path, capsys):
    """The bench's results are printed before the chart is drawn; a chart that fails then is one line on
    stderr and False (exit 1), never a traceback that loses the bench."""
    pytest.importorskip("matplotlib")
    document = {
        "version": 1,
        "workload": {"prompt_tokens": 8, "max_tokens": 4, "concurrency": [1], "runs": 1},
        "results": [
            {
                "instance": "a",
                "backend": "llama.cpp",
                "error": None,
                "prompt_tokens_per_s": 100.0,
                "completion_tokens_per_s": 10.0,
                "concurrency": {"1": {"completion_tokens_per_s": 10.0}},
                "peak_memory_bytes": {"ram": 2**20},
            }
        ],
    }
    gone = tmp_path / "gone" / "chart.png"  # its folder went away while the bench ran
    assert _write_chart(enginebench, document, gone, quiet=False) is False
    out, err = capsys.readouterr()
    assert out == "" and err == f"llmctl: --chart {gone}: No such file or directory\n"
    kept = tmp_path / "chart.png"
    assert _write_chart(enginebench, document, kept, quiet=False) is True
    assert kept.read_bytes().startswith(b"\x89PNG") and capsys.readouterr().out == f"wrote {kept}\n"


# -- the dashboard's key -------------------------------------------------------------------------------------------

KEY = "right-key-4c1d"


class KeyedDashboard:
    """The dashboard's routes and files on a real aiohttp server in a thread, the key checked on every API call
    as the gateway checks it (edges.api_key_from, edges.key_matches); the page itself needs none."""

    def __init__(self, state: Path) -> None:
        self.gateway = StandIn(state, routes("a"))
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runner: web.AppRunner | None = None

    @web.middleware
    async def _key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if request.path.startswith("/llmctl/") and not edges.key_matches(edges.api_key_from(request.headers), KEY):
                raise Refused(401, "a valid API key is required", "invalid_api_key")
            return await handler(request)
        except Refused as refused:
            return error_response(refused)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(middlewares=[self._key])
        dashboard.add_routes(app, self.gateway)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(30)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def test_a_key_no_header_can_carry_is_refused_in_the_page_not_sent(state_dir, browser):  # noqa: F811
    """A key with a character outside visible ASCII (the gateway accepts no other, and fetch() throws on a header
    outside ISO-8859-1) is refused where it is typed, with the field still there; one planted in session storage
    is dropped and the key asked for. Before the fix the page kept it, hid the field and reconnected forever."""
    with KeyedDashboard(state_dir) as url:
        page = browser.page
        page.goto(url + "/ui")
        form, note = page.locator("#key-form"), page.locator("#key-note")
        form.wait_for(state="visible", timeout=30000)
        for typed in ("k€y", "two words", "naïve"):
            page.fill("#key-input", typed)
            page.click("#key-submit")
            wait_for(lambda: "visible ASCII" in note.inner_text(), message=f"{typed!r} refused in the page")
            assert form.is_visible()
            assert page.evaluate("sessionStorage.getItem('llmctl.apiKey')") is None
        page.fill("#key-input", KEY)
        page.click("#key-submit")
        wait_for(lambda: page.locator("tr.instance").count() == 1, message="the fleet after the right key")
        assert form.is_hidden()

        page.evaluate("sessionStorage.setItem('llmctl.apiKey', 'k\u20acy')")  # left by an older page, say
        page.reload()
        form.wait_for(state="visible", timeout=30000)
        assert page.evaluate("sessionStorage.getItem('llmctl.apiKey')") is None
        assert "reconnecting" not in page.locator("#connection").inner_text()
        sent = {request.headers.get("authorization") for request in browser.requests}
        assert sent == {None, f"Bearer {KEY}"}
        assert [error for error in browser.errors if "401" not in error] == []
        browser.shot("odd-key")
