"""Ollama's API on the gateway under hostile and careless clients (issue 20): bodies Go's decoder refuses, fields
of the wrong kind, a refused request carrying `keep_alive: 0`, `think` asked of a model that cannot, clients that
leave mid-stream. Real llama-server on the real SmolLM2 model, the official `ollama` client, raw sockets, and the
gated upstream of tests/standins/hostile_upstream.py (its stream waits for a file: no clock in any assertion).
Every case here was a bug found by a helper playing such a client; each assertion fails on the code before it.
"""

from __future__ import annotations

import json
import re
import socket
import sys

import httpx
import ollama
import pytest

from .helpers import by_name, free_port, status_json, wait_for
from .test_ollama_api import HOSTILE, QUESTION, client, llama, up


def _post(port: int, path: str, raw: bytes) -> httpx.Response:
    # As `curl -d` sends it: a form content type, which Ollama's server ignores.
    return httpx.post(f"http://127.0.0.1:{port}{path}", content=raw, trust_env=False, timeout=60)


def _metric(port: int, name: str, instance: str, status: str | None = None) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    labels = f'instance="{instance}"' + (f',status="{status}"' if status else "")
    found = re.search(rf"^llmctl_gateway_{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(240)
def test_bad_fields_get_ollamas_400_before_anything_happens(tmp_path, real_model, llama_server):
    gguf, _ = real_model
    port, ollama_port = up(
        tmp_path,
        llama("chat", gguf, free_port())
        + llama("code", gguf, free_port(), extra="    on_demand: true\n    ttl: 3600\n"),
    )
    api = client(ollama_port)
    assert api.chat(model="code", messages=[], keep_alive="10m").done_reason == "load"
    assert by_name(status_json(cwd=tmp_path))["code"]["state"] == "healthy"

    chat = {"model": "chat", "messages": QUESTION, "stream": False, "options": {"num_predict": 2}}
    for raw in (
        # NaN and Infinity are not JSON: they reached llama-server, whose parser's text came back.
        json.dumps(chat).replace('"num_predict": 2', '"num_predict": 2, "temperature": NaN').encode(),
        b'{"model": "chat", "messages": [], "keep_alive": Infinity}',  # was a load
        # Tools that are not named function objects: llama-server answered 500 "Failed to parse tools".
        json.dumps({**chat, "tools": [1, 2]}).encode(),
        json.dumps({**chat, "tools": [{"type": "function"}]}).encode(),
        # Go's decoder refuses these before a load-only request is recognised: they were answered as loads.
        b'{"model": "code", "prompt": [], "keep_alive": 0}',
        b'{"model": "code", "messages": [], "stream": "false"}',
        b'{"model": "chat", "prompt": "x", "context": "abc", "stream": false}',
    ):
        path = "/api/generate" if b'"prompt"' in raw else "/api/chat"
        answer = _post(ollama_port, path, raw)
        assert answer.status_code == 400, (raw, answer.text)
        assert set(answer.json()) == {"error"} and "json.exception" not in answer.json()["error"], answer.text

    # A refused request's keep_alive 0 does not stop the instance (it never reached it).
    refused = _post(
        ollama_port, "/api/chat", json.dumps({**chat, "model": "code", "keep_alive": 0, "tools": [1]}).encode()
    )
    assert refused.status_code == 400
    assert by_name(status_json(cwd=tmp_path))["code"]["state"] == "healthy"

    # `think` asked of a model whose template cannot reason: Ollama's 400, not an answer that ignored it.
    with pytest.raises(ollama.ResponseError) as thinking:
        api.chat(model="chat", messages=QUESTION, think=True, options={"num_predict": 2})
    assert thinking.value.status_code == 400 and "does not support thinking" in thinking.value.error
    assert api.chat(model="chat", messages=QUESTION, think=False, options={"num_predict": 2}).done

    # A client that leaves mid-stream: nothing stays in flight.
    for _ in range(3):
        body = json.dumps({"model": "chat", "messages": QUESTION, "options": {"num_predict": 200}}).encode()
        with socket.create_connection(("127.0.0.1", port)) as raw_socket:
            raw_socket.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            assert raw_socket.recv(100).startswith(b"HTTP/1.1 200")
    wait_for(lambda: status_json(cwd=tmp_path)["gateway"]["in_flight"] == 0, timeout=30, message="in_flight 0")
    log = (tmp_path / "state" / "gateway.log").read_text()
    assert "Traceback" not in log


@pytest.mark.timeout(120)
def test_a_stream_counts_in_flight_until_it_ends_and_a_client_that_leaves_is_a_499(tmp_path):
    gate = tmp_path / "gate"
    upstream_port = free_port()
    command = [sys.executable, "-u", HOSTILE, "--port", str(upstream_port), "--gate-file", str(gate)]
    port, _ = up(
        tmp_path,
        f"  - name: gated\n    backend: command\n    model: mode-gated\n    port: {upstream_port}\n"
        f"    command: {json.dumps(command)}\n    health: {{path: /health, interval: 0.2, timeout: 1}}\n",
    )
    body = json.dumps({"model": "gated", "messages": QUESTION}).encode()
    with socket.create_connection(("127.0.0.1", port)) as raw_socket:
        raw_socket.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        seen = b""
        while b"Hello" not in seen:  # the first line came; the upstream waits for the gate
            seen += raw_socket.recv(4096)
        # The gauge counted the request only while it waited for the upstream's headers, never while it streamed.
        assert _metric(port, "in_flight", "gated") == 1
    wait_for(lambda: _metric(port, "requests_total", "gated", "499") == 1, timeout=30, message="a 499")
    assert _metric(port, "in_flight", "gated") == 0 and _metric(port, "requests_total", "gated", "200") == 0
    wait_for(lambda: status_json(cwd=tmp_path)["gateway"]["in_flight"] == 0, timeout=30, message="in_flight 0")
    gate.touch()
