"""Ollama's native API on the gateway (issue 20), through clients no one here wrote: the official `ollama`
Python client and OpenAI's, against real llama-server (the real SmolLM2-135M-Instruct model), real
mlx_lm.server, the Ollama STAND-IN (tests/standins/fake_ollama.py, not Ollama: its binary cannot be
installed here) and a purpose-built upstream whose stream waits for the test (no clock in any assertion).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from .helpers import FAKE_OLLAMA, ROOT, by_name, free_port, llmctl, status_json, wait_for, write_config
from .test_real_model import COLOURS

HOSTILE = str(ROOT / "tests" / "standins" / "hostile_upstream.py")
QUESTION = [{"role": "user", "content": "Name three primary colors."}]
PINNED = {"temperature": 0, "num_predict": 40, "seed": 1}


def llama(name: str, model: Path, port: int, extra: str = "", args: str = '"-c", "2048", "-np", "2"') -> str:
    return f"""  - name: {name}
    backend: llama.cpp
    model: {model}
    port: {port}
    args: [{args}, "-ngl", "0"]
{extra}"""


def up(folder: Path, instances: str, gateway: str = "", top: str = "") -> tuple[int, int]:
    """Bring up a fleet behind a gateway with an Ollama-only listener; (gateway port, ollama port)."""
    port, ollama_port = free_port(), free_port()
    write_config(
        folder,
        f"{top}gateway: {{port: {port}, ollama_port: {ollama_port}{gateway}}}\ninstances:\n{instances}",
    )
    result = llmctl("up", cwd=folder, timeout=300)
    assert result.returncode == 0, result.stderr
    return port, ollama_port


def client(port: int, **kwargs) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{port}", timeout=120, trust_env=False, **kwargs)


@pytest.mark.timeout(300)
def test_official_client_against_real_llama_server(tmp_path, real_model, llama_server):
    gguf, _ = real_model
    port, ollama_port = up(
        tmp_path,
        llama("chat", gguf, free_port(), extra="    aliases: [smol]\n")
        + llama("embedder", gguf, free_port(), args='"-c", "512", "--embeddings", "--pooling", "mean"'),
    )
    api = client(port)

    # Listing: every instance and alias, as NAME:latest, with what llmctl reads of the GGUF.
    listed = {model.model: model for model in api.list().models}
    assert {"chat:latest", "smol:latest", "embedder:latest"} <= set(listed)
    details = listed["chat:latest"].details
    assert details.format == "gguf" and details.family == "llama"
    assert details.quantization_level == "Q4_1"
    assert listed["chat:latest"].size == gguf.stat().st_size

    shown = api.show("chat")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] > 0
    assert "completion" in (shown.capabilities or [])

    # Chat, plain: a real answer, with Ollama's counts and durations.
    reply = api.chat(model="chat", messages=QUESTION, options=PINNED)
    assert COLOURS & set(reply.message.content.lower().replace(",", " ").replace(".", " ").split())
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count and reply.prompt_eval_count and reply.total_duration and reply.eval_duration

    # Streamed: several NDJSON objects, text on each but the last, which carries the metrics.
    parts = list(api.chat(model="smol:latest", messages=QUESTION, options=PINNED, stream=True))
    assert len(parts) > 2 and all(not part.done for part in parts[:-1]) and parts[-1].done
    assert "".join(part.message.content for part in parts) == reply.message.content  # temperature 0, same seed
    assert parts[-1].eval_count == reply.eval_count

    # format: a JSON schema constrains the answer (llama-server's grammar).
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
    constrained = api.chat(model="chat", messages=QUESTION, format=schema, options={**PINNED, "num_predict": 60})
    assert isinstance(json.loads(constrained.message.content)["color"], str)

    # tools are accepted and the answer validates as the client's type (calls are the model's choice).
    tool = {"type": "function", "function": {"name": "paint", "description": "Paint", "parameters": schema}}
    assert api.chat(model="chat", messages=QUESTION, tools=[tool], options=PINNED).done

    generated = api.generate(model="chat", prompt="Name three primary colors.", options=PINNED)
    assert generated.response.strip() and generated.done and generated.eval_count

    embedded = api.embed(model="embedder", input=["red", "blue"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 16
    norm = sum(value * value for value in embedded.embeddings[0]) ** 0.5
    assert abs(norm - 1.0) < 1e-3  # Ollama's /api/embed answers L2-normalised vectors
    legacy = httpx.post(
        f"http://127.0.0.1:{port}/api/embeddings", json={"model": "embedder", "prompt": "red"}, trust_env=False
    )
    assert legacy.status_code == 200 and len(legacy.json()["embedding"]) == len(embedded.embeddings[0])

    # /api/ps: running instances with the measured size status --json shows.
    def sizes_agree() -> bool:
        running = {model.model: model for model in api.ps().models}
        measured = by_name(status_json(cwd=tmp_path))["chat"]
        total = sum((measured.get("memory_pools") or {}).values())
        return running.get("chat:latest") is not None and running["chat:latest"].size == total and total > 0

    wait_for(sizes_agree, timeout=30, message="/api/ps size equal to status --json")

    # Unknown names get Ollama's 404; model management is refused with a clear message.
    with pytest.raises(ollama.ResponseError) as missing:
        api.chat(model="nope", messages=QUESTION)
    assert missing.value.status_code == 404 and "nope" in missing.value.error
    with pytest.raises(ollama.ResponseError) as pull:
        api.pull("llama3.2")
    assert pull.value.status_code == 501 and "instances.yaml" in pull.value.error

    # The Ollama-only port: Ollama's API, nothing else.
    assert {m.model for m in client(ollama_port).list().models} == set(listed)
    assert httpx.get(f"http://127.0.0.1:{ollama_port}/", trust_env=False).text == "Ollama is running"
    assert httpx.get(f"http://127.0.0.1:{ollama_port}/v1/models", trust_env=False).status_code == 404
    assert httpx.get(f"http://127.0.0.1:{ollama_port}/api/version", trust_env=False).json()["version"]


@pytest.mark.timeout(300)
def test_mlx_instance_answers_ollama_clients(tmp_path, real_model):
    _, mlx = real_model
    port, _ = up(tmp_path, f"  - name: mlx-chat\n    backend: mlx\n    model: {mlx}\n    port: {free_port()}\n")
    api = client(port)
    reply = api.chat(model="mlx-chat", messages=QUESTION, options=PINNED)
    assert COLOURS & set(reply.message.content.lower().replace(",", " ").replace(".", " ").split())
    assert reply.eval_count and reply.prompt_eval_count
    streamed = list(api.chat(model="mlx-chat", messages=QUESTION, options=PINNED, stream=True))
    assert streamed[-1].done and streamed[-1].eval_count == reply.eval_count
    details = api.list().models[0].details  # an MLX folder: safetensors weights, as Ollama names the format
    assert (details.format, details.family, details.quantization_level) == ("safetensors", "llama", "int4")


@pytest.mark.timeout(240)
def test_keep_alive_is_the_runners(tmp_path, real_model, llama_server):
    gguf, _ = real_model
    port, _ = up(
        tmp_path,
        llama("code", gguf, free_port(), extra="    on_demand: true\n    ttl: 3600\n")
        + llama("chat", gguf, free_port()),
    )
    api = client(port)

    def instance(name: str) -> dict:
        return by_name(status_json(cwd=tmp_path))[name]

    # An empty message list loads without generating; a duration sets the ttl from now.
    loaded = api.chat(model="code", messages=[], keep_alive="10m")
    assert loaded.done_reason == "load" and instance("code")["state"] == "healthy"
    assert 0 < instance("code")["ttl_left_s"] <= 600
    # Negative: kept loaded, no ttl.
    api.generate(model="code", prompt="hi", options={"num_predict": 2}, keep_alive=-1)
    wait_for(lambda: instance("code")["ttl_left_s"] is None, timeout=10, message="no ttl after keep_alive -1")
    assert instance("code")["state"] == "healthy"
    # 0: stopped once the request ends.
    api.chat(model="code", messages=QUESTION, options={"num_predict": 2}, keep_alive=0)
    wait_for(lambda: instance("code")["state"] == "stopped", timeout=30, message="stopped after keep_alive 0")
    assert instance("code")["standby"]
    # An empty request with keep_alive 0 unloads without starting; a pinned instance ignores it.
    assert api.generate(model="code", prompt="", keep_alive=0).done_reason == "unload"
    assert instance("code")["state"] == "stopped"
    api.chat(model="chat", messages=QUESTION, options={"num_predict": 2}, keep_alive=0)
    assert instance("chat")["state"] == "healthy"
    log = llmctl("logs", "chat", "-n", "200", cwd=tmp_path).stdout
    assert "keep_alive" in log and "pinned" in log
    # keep_alive on /v1 too, as an extension field (OpenAI's client sends it in extra_body).
    openai_client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    openai_client.chat.completions.create(model="code", messages=QUESTION, max_tokens=2, extra_body={"keep_alive": 0})
    wait_for(lambda: instance("code")["state"] == "stopped", timeout=30, message="stopped after /v1 keep_alive 0")
    with pytest.raises(ollama.ResponseError) as bad:
        api.chat(model="chat", messages=QUESTION, keep_alive="300")  # Go durations need a unit
    assert bad.value.status_code == 400


@pytest.mark.timeout(120)
def test_streamed_lines_arrive_while_the_upstream_generates(tmp_path):
    gate = tmp_path / "gate"
    port = free_port()
    command = [sys.executable, "-u", HOSTILE, "--port", str(port), "--gate-file", str(gate)]
    port, _ = up(
        tmp_path,
        f"  - name: gated\n    backend: command\n    model: mode-gated\n    port: {port}\n"
        f"    command: {json.dumps(command)}\n    health: {{path: /health, interval: 0.2, timeout: 1}}\n",
    )
    with httpx.stream(
        "POST",
        f"http://127.0.0.1:{port}/api/chat",
        json={"model": "gated", "messages": QUESTION},
        timeout=60,
        trust_env=False,
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert first["message"]["content"] == "Hello" and first["done"] is False  # the upstream still waits
        gate.touch()
        rest = [json.loads(line) for line in lines if line]
    assert "".join(line["message"]["content"] for line in rest) == " world"
    final = rest[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 2  # from the upstream's usage
    assert isinstance(final["total_duration"], int)


@pytest.mark.timeout(120)
def test_ollama_instances_get_the_request_unchanged(tmp_path):
    port, _ = up(
        tmp_path,
        f"  - name: local\n    backend: ollama\n    model: tiny\n    port: {free_port()}\n    aliases: [small]\n",
        top=f"binaries:\n  ollama: {FAKE_OLLAMA}\n",
    )
    api = client(port)
    options = {"temperature": 0.3, "mirostat": 1, "num_ctx": 4096}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    reply = api.chat(model="small:latest", messages=QUESTION, options=options, tools=tools, stream=False)
    seen = json.loads(reply.message.content)  # the stand-in echoes what it received
    assert seen["model"] == "tiny" and seen["options"] == options and seen["tools"] == tools
    assert seen["messages"] == QUESTION
    streamed = list(api.chat(model="local", messages=QUESTION, stream=True))
    assert streamed[-1].done and json.loads(streamed[0].message.content)["stream"] is True


@pytest.mark.timeout(120)
def test_errors_follow_ollamas_shapes_also_mid_stream(tmp_path):
    dying, gated = free_port(), free_port()

    def hostile(name: str, port: int, mode: str) -> str:
        command = json.dumps([sys.executable, "-u", HOSTILE, "--port", str(port)])
        return (
            f"  - name: {name}\n    backend: command\n    model: mode-{mode}\n    port: {port}\n"
            f"    command: {command}\n    health: {{path: /health, interval: 0.2, timeout: 1}}\n"
        )

    port, ollama_port = up(tmp_path, hostile("dying", dying, "die") + hostile("echo", gated, "echo"))
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/api/chat", json={"model": "dying", "messages": QUESTION}, trust_env=False
    ) as response:
        assert response.status_code == 200  # the answer had begun
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "error" in lines[-1] and "dying" in lines[-1]["error"]  # Ollama's last line on a failed stream
    assert not any(line.get("done") for line in lines)
    # Refusals of the gateway itself are `{"error": "..."}` on Ollama's paths, on both ports.
    for base in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ollama_port}"):
        for path, body, status in (
            ("/api/chat", b"{not json", 400),
            ("/api/chat", b'{"messages": []}', 400),
            ("/api/generate", b'{"model": "ghost", "prompt": "x"}', 404),
            ("/api/show", b'{"model": "ghost"}', 404),
            ("/api/chat", b'{"model": "echo", "messages": [], "keep_alive": "300"}', 400),
        ):
            answer = httpx.post(base + path, content=body, trust_env=False)
            assert answer.status_code == status, (path, body, answer.text)
            assert set(answer.json()) == {"error"} and answer.json()["error"], answer.text
        wrong = httpx.get(base + "/api/chat", trust_env=False)
        assert wrong.status_code == 405 and set(wrong.json()) == {"error"}
        ollama_client = client(int(base.rsplit(":", 1)[1]))
        with pytest.raises(ollama.ResponseError) as gone:
            ollama_client.delete("echo")
        assert gone.value.status_code == 501


@pytest.mark.timeout(180)
def test_the_ollama_port_keeps_the_gateways_key_host_and_origin_rules(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    key_file.chmod(0o600)
    port, ollama_port = up(
        tmp_path,
        f"  - name: local\n    backend: ollama\n    model: tiny\n    port: {free_port()}\n",
        gateway=f", api_key_file: {key_file}",
        top=f"binaries:\n  ollama: {FAKE_OLLAMA}\n",
    )
    for target in (port, ollama_port):
        with pytest.raises(ollama.ResponseError) as refused:
            client(target).list()
        assert refused.value.status_code == 401
        keyed = client(target, headers={"Authorization": "Bearer s3cret-key"})
        assert [model.model for model in keyed.list().models] == ["local:latest"]
        base = f"http://127.0.0.1:{target}"
        key = {"Authorization": "Bearer s3cret-key"}
        evil = httpx.post(
            base + "/api/chat",
            json={"model": "local", "messages": QUESTION},
            headers={**key, "Origin": "https://evil.example"},
            trust_env=False,
        )
        assert evil.status_code == 403 and set(evil.json()) == {"error"}
        # A page's blind POST (a form type, with an Origin) is refused; a program's `curl -d` is served.
        blind = httpx.post(
            base + "/api/chat",
            content=json.dumps({"model": "local", "messages": QUESTION, "stream": False}),
            headers={**key, "Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"},
            trust_env=False,
        )
        assert blind.status_code in (403, 415)
        curl = httpx.post(
            base + "/api/chat",
            content=json.dumps({"model": "local", "messages": QUESTION, "stream": False}),
            headers={**key, "Content-Type": "application/x-www-form-urlencoded"},
            trust_env=False,
        )
        assert curl.status_code == 200, curl.text
        assert httpx.get(base + "/", trust_env=False).text == "Ollama is running"  # the banner needs no key


def test_env_exports_ollama_host_and_check_refuses_a_port_clash(tmp_path):
    port, ollama_port = free_port(), free_port()
    write_config(tmp_path, f"gateway: {{port: {port}, ollama_port: {ollama_port}}}\ninstances: []\n")
    exported = llmctl("env", cwd=tmp_path).stdout
    assert f"export OLLAMA_HOST=http://127.0.0.1:{ollama_port}" in exported
    write_config(tmp_path, f"gateway: {{port: {port}, ollama_port: {port}}}\ninstances: []\n")
    clash = llmctl("check", cwd=tmp_path)
    assert clash.returncode == 2 and "ollama_port" in clash.stdout + clash.stderr
