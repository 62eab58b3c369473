"""Where Ollama's API (issue 20) meets activity, metrics and the dashboard (issue 21): requests made by clients
no one here wrote (httpx as curl would send them, the official `ollama` client, headless Chromium) against real
llama-server (SmolLM2-135M-Instruct) and the Ollama STAND-IN (tests/standins/fake_ollama.py, not Ollama)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import ollama
import pytest

from .helpers import FAKE_OLLAMA, STANDINS, free_port, llmctl, wait_for
from .test_dashboard import browser, state_of  # noqa: F401 (the fixture)
from .test_ollama_api import llama, up

OPTIONS = {"temperature": 0, "num_predict": 6, "seed": 1}
HI = [{"role": "user", "content": "Hi there"}]


def activity(folder: Path) -> list[dict]:
    result = llmctl("activity", "-n", "500", "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["requests"]


def ask(port: int, path: str, body: dict) -> tuple[int, list[dict]]:
    """One Ollama request as curl sends it (`-d`, a form content type); (status, the NDJSON or JSON objects)."""
    with httpx.stream(
        "POST",
        f"http://localhost:{port}{path}",
        content=json.dumps(body),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=120,
        trust_env=False,
    ) as answer:
        text = answer.read().decode()
    return answer.status_code, [json.loads(line) for line in text.splitlines() if line.strip()]


def prompt_tokens_total(port: int, instance: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    prefix = f'llmctl_gateway_prompt_tokens_total{{instance="{instance}"}} '
    return next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.timeout(400)
def test_every_ollama_request_leaves_a_row_with_the_answers_counts(tmp_path, real_model, llama_server):
    gguf, _ = real_model
    port, ollama_port = up(
        tmp_path,
        llama("chat", gguf, free_port(), extra='    aliases: ["llama3.2:1b"]\n')
        + llama("emb", gguf, free_port(), args='"-c", "512", "--embeddings", "--pooling", "mean"')
        + f"  - name: local\n    backend: ollama\n    model: tiny\n    port: {free_port()}\n",
        top=f"binaries:\n  ollama: {FAKE_OLLAMA}\n",
    )
    cases = [
        ("chat", "/api/chat", {"model": "chat", "messages": HI, "options": OPTIONS}),
        ("chat", "/api/generate", {"model": "llama3.2:1b", "prompt": "Hi there", "options": OPTIONS}),
        ("emb", "/api/embed", {"model": "emb", "input": ["red", "blue green"]}),
        ("local", "/api/chat", {"model": "local", "messages": HI}),
        ("local", "/api/embed", {"model": "local", "input": "Hi"}),
    ]
    for target in (port, ollama_port):
        for instance, path, body in cases:
            for stream in (True, False) if path != "/api/embed" else (None,):
                before = len(activity(tmp_path))
                tokens_before = prompt_tokens_total(port, instance)
                payload = body if stream is None else {**body, "stream": stream}
                status, objects = ask(target, path, payload)
                assert status == 200 and objects, (path, objects)
                rows = activity(tmp_path)[before:]
                assert len(rows) == 1, (path, rows)
                row, last = rows[0], objects[-1]
                assert (row["api"], row["instance"], row["status"], row["path"]) == ("ollama", instance, 200, path)
                assert row["stream"] is bool(stream), (path, row)  # an embed is never a stream
                assert row["prompt_tokens"] == last["prompt_eval_count"] > 0, (target, path, stream, row, last)
                assert row["completion_tokens"] == last.get("eval_count"), (target, path, stream, row, last)
                assert prompt_tokens_total(port, instance) == tokens_before + row["prompt_tokens"]


DYING_OLLAMA = """
import json, os, signal, sys
sys.path.insert(0, {standins!r})
import fake_ollama

served = fake_ollama.Handler._chat


def chat(self, request):
    # A stream that Ollama starts, then dies in (kill -9): the first line, chunked, and no more.
    if request.get("messages", [{{}}])[-1].get("content") != "die":
        return served(self, request)
    line = json.dumps({{"model": "tiny", "message": {{"role": "assistant", "content": "Hel"}}, "done": False}})
    chunk = (line + "\\n").encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/x-ndjson")
    self.send_header("Transfer-Encoding", "chunked")
    self.end_headers()
    self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(chunk), chunk))
    self.wfile.flush()
    os.kill(os.getpid(), signal.SIGKILL)


fake_ollama.Handler._chat = chat
sys.exit(fake_ollama.main())
"""


@pytest.mark.timeout(200)
def test_an_ollama_instance_dying_mid_stream_ends_the_stream_with_an_error_line(tmp_path):
    script = tmp_path / "dying_ollama.py"
    script.write_text(DYING_OLLAMA.format(standins=str(STANDINS)))
    script.chmod(0o755)
    wrapper = tmp_path / "ollama"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    _, ollama_port = up(
        tmp_path,
        f"  - name: local\n    backend: ollama\n    model: tiny\n    port: {free_port()}\n",
        top=f"binaries:\n  ollama: {wrapper}\n",
    )
    api = ollama.Client(host=f"http://127.0.0.1:{ollama_port}", timeout=60, trust_env=False)
    with pytest.raises(ollama.ResponseError) as failed:
        for _ in api.chat(model="local", messages=[{"role": "user", "content": "die"}], stream=True):
            pass
    assert "local failed mid-answer" in failed.value.error
    row = activity(tmp_path)[-1]
    assert (row["api"], row["instance"], row["status"]) == ("ollama", "local", 502)


@pytest.mark.timeout(400)
def test_the_page_shows_ollama_requests_aliases_and_keep_alive(tmp_path, real_model, llama_server, browser):  # noqa: F811
    gguf, _ = real_model
    port, ollama_port = up(
        tmp_path,
        llama("lazy", gguf, free_port(), extra='    on_demand: true\n    ttl: 300\n    aliases: ["llama3.2:1b"]\n'),
    )
    api = ollama.Client(host=f"http://127.0.0.1:{ollama_port}", timeout=120, trust_env=False)
    listed = [model.model for model in api.list().models]
    assert listed.count("llama3.2:1b") == 1 and "lazy:latest" in listed  # an alias with a tag keeps it, once

    page = browser.page
    page.goto(f"http://127.0.0.1:{port}/ui")
    wait_for(lambda: state_of(page, "lazy") == "stopped", message="lazy stopped on the page")
    assert "llama3.2:1b" in page.locator('tr.instance[data-instance="lazy"]').inner_text()

    page.locator('tr.instance[data-instance="lazy"] button.start').click()
    wait_for(lambda: state_of(page, "lazy") == "healthy", timeout=120, message="lazy started from the page")

    # keep_alive "10m": the page's countdown says about ten minutes, not the config's five.
    api.chat(model="LLAMA3.2:1B", messages=HI, options=OPTIONS, keep_alive="10m")
    demand = page.locator('tr.instance[data-instance="lazy"] td.demand')
    wait_for(lambda: "stops in 9m" in demand.inner_text() or "stops in 10m" in demand.inner_text(), message="~10m")
    requests = page.locator('tr.request[data-instance="lazy"] td.api')
    wait_for(lambda: requests.count() >= 1 and requests.first.inner_text() == "ollama", message="a live row")

    # /api/ps shows what the page shows as running.
    assert [model.model for model in api.ps().models] == ["lazy:latest"]

    # keep_alive 0 stops it when the request ends, and the page says so.
    api.generate(model="llama3.2:1b", prompt="Hi", options=OPTIONS, keep_alive=0)
    wait_for(lambda: state_of(page, "lazy") == "stopped", timeout=60, message="lazy stopped after keep_alive 0")
    assert api.ps().models == []
    browser.shot("crossfeature")
    assert browser.errors == []
    assert os.path.exists(tmp_path / "crossfeature.png")


@pytest.mark.timeout(200)
def test_a_name_differing_only_by_case_resolves_from_both_apis(tmp_path):
    port, ollama_port = up(
        tmp_path,
        f'  - name: local\n    backend: ollama\n    model: tiny\n    port: {free_port()}\n    aliases: ["Llama3.2:1b"]\n',
        top=f"binaries:\n  ollama: {FAKE_OLLAMA}\n",
    )
    api = ollama.Client(host=f"http://127.0.0.1:{ollama_port}", timeout=60, trust_env=False)
    assert api.chat(model="LLAMA3.2:1B", messages=HI, stream=False).done
    body = {"model": "LLAMA3.2:1B", "messages": HI}
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, trust_env=False, timeout=60)
    assert answer.status_code == 200, answer.text
    assert activity(tmp_path)[-1]["instance"] == "local"
