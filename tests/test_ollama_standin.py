"""The Ollama backend against a STAND-IN server (tests/standins/fake_ollama.py), not Ollama itself:
Ollama's binary cannot be installed where llmctl is tested. The stand-in speaks the documented API
llmctl uses and, like Ollama, keeps a loaded model in a runner child process."""

from __future__ import annotations

import httpx
import psutil

from .helpers import FAKE_OLLAMA, by_name, free_port, llmctl, status_json, wait_for, write_config


def ollama_config(tmp_path, port: int, model: str) -> None:
    write_config(
        tmp_path,
        f"""
binaries:
  ollama: {FAKE_OLLAMA}
instances:
  - name: local
    backend: ollama
    model: {model}
    port: {port}
    env: {{OLLAMA_NUM_PARALLEL: 2}}
    health: {{interval: 0.5}}
""",
    )


def test_ollama_instance_is_ready_once_its_model_is_loaded(tmp_path):
    port = free_port()
    ollama_config(tmp_path, port, "tiny")
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = httpx.get(f"http://127.0.0.1:{port}/api/ps", trust_env=False).json()["models"]
    assert [entry["name"] for entry in loaded] == ["tiny:latest"]
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
        trust_env=False,
    )
    assert reply.json()["choices"][0]["message"]["content"]

    # Memory covers the whole tree: the runner child holds 32 MiB the server itself does not.
    instance = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["local"])["memory_bytes"] and i, timeout=10)
    server = psutil.Process(instance["pid"])
    runners = server.children(recursive=True)
    assert len(runners) == 1
    assert instance["memory_rss_bytes"] >= server.memory_info().rss + 32 * 1024 * 1024 * 0.9
    assert instance["memory_uss_bytes"] >= 32 * 1024 * 1024 * 0.9  # the runner's private bytes are in the figure
    assert instance["memory_estimate_bytes"] == 32 * 1024 * 1024  # what the stand-in's /api/ps reports

    assert llmctl("down", cwd=tmp_path).returncode == 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in [server, *runners])


def test_unknown_ollama_model_fails_up_with_the_fix(tmp_path):
    port = free_port()
    ollama_config(tmp_path, port, "nosuchmodel")
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1
    assert "pulling it failed" in result.stderr and "`ollama pull nosuchmodel`" in result.stderr


def test_ollama_host_comes_from_the_instance_not_the_environment(tmp_path):
    port = free_port()
    ollama_config(tmp_path, port, "tiny")
    result = llmctl("up", cwd=tmp_path, env={"OLLAMA_HOST": "127.0.0.1:1"})
    assert result.returncode == 0, result.stderr
    environ = psutil.Process(by_name(status_json(cwd=tmp_path))["local"]["pid"]).environ()
    assert environ["OLLAMA_HOST"] == f"127.0.0.1:{port}"
    assert environ["OLLAMA_NUM_PARALLEL"] == "2"
