"""Activity rows and lifecycle over HTTP on real servers (issues 20 and 21): every request through the gateway,
OpenAI's API and Ollama's, streamed or not, leaves a row whose token counts are the upstream's own usage; the
gateway asks a stream for usage without changing what its client receives; dashboards and scripts start and
stop instances with POST /llmctl/v1/instances/{name}/start|stop and read GET /llmctl/v1/status."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from .helpers import (
    by_name,
    fake_server_command,
    free_port,
    llama_instance,
    llmctl,
    status_json,
    wait_for,
    write_config,
)

QUESTION = [{"role": "user", "content": "Name three primary colors."}]


def rows(folder, *names: str) -> list[dict]:
    result = llmctl("activity", *names, "-n", "100", "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == 1
    return document["requests"]


@pytest.mark.timeout(300)
def test_rows_carry_the_upstreams_token_counts(tmp_path, real_model, llama_server):
    gguf, _ = real_model
    port = free_port()
    write_config(
        tmp_path,
        f"gateway: {{port: {port}}}\ninstances:" + llama_instance("chat", gguf),
    )
    assert llmctl("up", cwd=tmp_path, timeout=240).returncode == 0
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    ask = {"model": "chat", "messages": QUESTION, "temperature": 0, "max_tokens": 12, "seed": 1}

    plain = client.chat.completions.create(**ask)
    asked = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    unasked = list(client.chat.completions.create(**ask, stream=True))
    ollama.Client(host=f"http://127.0.0.1:{port}", trust_env=False).chat(
        model="chat", messages=QUESTION, options={"temperature": 0, "num_predict": 12, "seed": 1}
    )

    # The client that asked for usage sees it; the one that did not sees no extra chunk.
    assert asked[-1].usage is not None and not asked[-1].choices
    assert all(chunk.usage is None for chunk in unasked) and all(chunk.choices for chunk in unasked)

    found = wait_for(lambda: (r := rows(tmp_path, "chat")) and len(r) >= 4 and r, timeout=10, message="4 rows")
    plain_row, asked_row, unasked_row, ollama_row = found[-4:]
    usage = (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert (plain_row["prompt_tokens"], plain_row["completion_tokens"]) == usage
    assert (asked_row["prompt_tokens"], asked_row["completion_tokens"]) == (
        asked[-1].usage.prompt_tokens,
        asked[-1].usage.completion_tokens,
    )
    assert (unasked_row["prompt_tokens"], unasked_row["completion_tokens"]) == usage  # temperature 0: same
    assert [row["api"] for row in (plain_row, asked_row, ollama_row)] == ["openai", "openai", "ollama"]
    # The official ollama client sends `stream: false` unless told otherwise.
    assert [row["stream"] for row in (plain_row, asked_row, unasked_row, ollama_row)] == [False, True, True, False]
    for row in found[-4:]:
        assert row["instance"] == "chat" and row["status"] == 200
        assert row["completion_tokens_per_s"] > 0 and row["prompt_tokens_per_s"] > 0  # llama.cpp's timings
    assert all(row["ttft_ms"] > 0 for row in (asked_row, unasked_row))

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    line = next(m for m in metrics.splitlines() if m.startswith("llmctl_gateway_completion_tokens_total{"))
    assert 'instance="chat"' in line and float(line.rsplit(" ", 1)[1]) >= 4 * plain.usage.completion_tokens - 1


@pytest.mark.timeout(180)
def test_start_and_stop_over_http(tmp_path):
    port, key_file = free_port(), tmp_path / "key"
    key_file.write_text("k3y\n")
    key_file.chmod(0o600)
    code, pinned = free_port(), free_port()
    write_config(
        tmp_path,
        f"""gateway: {{port: {port}, api_key_file: {key_file}}}
instances:
  - name: code
    backend: command
    command: {json.dumps(fake_server_command(code))}
    port: {code}
    on_demand: true
    health: {{path: /health, interval: 0.2, timeout: 1}}
  - name: pinned
    backend: command
    command: {json.dumps(fake_server_command(pinned))}
    port: {pinned}
    health: {{path: /health, interval: 0.2, timeout: 1}}
""",
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    base, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k3y"}

    def state(name: str) -> str:
        return by_name(status_json(cwd=tmp_path))[name]["state"]

    assert httpx.post(base + "/llmctl/v1/instances/code/start", trust_env=False).status_code == 401
    started = httpx.post(base + "/llmctl/v1/instances/code/start", headers=key, trust_env=False)
    assert started.status_code == 200 and started.json()["instance"] == "code", started.text
    wait_for(lambda: state("code") == "healthy", timeout=30, message="code started over HTTP")
    stopped = httpx.post(base + "/llmctl/v1/instances/pinned/stop", headers=key, trust_env=False)
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped", stopped.text
    assert state("pinned") == "stopped"
    again = httpx.post(base + "/llmctl/v1/instances/pinned/start", headers=key, trust_env=False)
    assert again.status_code == 200
    wait_for(lambda: state("pinned") == "healthy", timeout=30, message="pinned started again over HTTP")

    document = httpx.get(base + "/llmctl/v1/status", headers=key, trust_env=False).json()
    assert document["version"] == 1 and {i["name"] for i in document["instances"]} == {"code", "pinned"}
    missing = httpx.post(base + "/llmctl/v1/instances/ghost/start", headers=key, trust_env=False)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "instance_not_found"
    assert httpx.get(base + "/llmctl/v1/instances/code/stop", headers=key, trust_env=False).status_code == 405
    evil = httpx.post(
        base + "/llmctl/v1/instances/code/stop", headers={**key, "Origin": "https://evil.example"}, trust_env=False
    )
    assert evil.status_code == 403 and state("code") == "healthy"
    form = httpx.post(
        base + "/llmctl/v1/instances/code/stop",
        headers={**key, "Content-Type": "text/plain"},
        content=b"x",
        trust_env=False,
    )
    assert form.status_code == 415 and state("code") == "healthy"
