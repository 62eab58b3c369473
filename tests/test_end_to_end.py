"""The whole tool on real servers: two llama-server instances and one mlx_lm.server, driven
through the installed `llmctl` command exactly as a user's shell script would."""

from __future__ import annotations

import json

import httpx
import psutil
import pytest

from .helpers import by_name, free_port, llmctl, processes_mentioning, status_json, write_config


@pytest.fixture
def three_instances(tmp_path, gguf_model, mlx_model, llama_server):
    ports = {"chat": free_port(), "code": free_port(), "mlx": free_port()}
    write_config(
        tmp_path,
        f"""
defaults:
  health: {{interval: 1}}
instances:
  - name: chat
    backend: llama.cpp
    model: {gguf_model}
    port: {ports["chat"]}
    args: ["-c", "256", "-np", "1", "-ngl", "0"]
  - name: code
    backend: llama.cpp
    model: {gguf_model}
    port: {ports["code"]}
    args: ["-c", "256", "-np", "1", "-ngl", "0"]
  - name: mlx
    backend: mlx
    model: {mlx_model}
    port: {ports["mlx"]}
""",
    )
    return ports


def test_up_status_chat_logs_down_leave_nothing_behind(tmp_path, state_dir, three_instances, gguf_model, mlx_model):
    result = llmctl("up", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    status = status_json(cwd=tmp_path)
    instances = by_name(status)
    assert set(instances) == {"chat", "code", "mlx"}
    pids = []
    for name, instance in instances.items():
        assert instance["state"] == "healthy", instance
        assert psutil.pid_exists(instance["pid"])
        assert instance["url"] == f"http://127.0.0.1:{three_instances[name]}"
        pids.append(instance["pid"])
    assert psutil.Process(instances["chat"]["pid"]).cmdline()[0].endswith("llama-server")

    for name, instance in instances.items():
        reply = httpx.post(
            instance["url"] + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
            timeout=120,
            trust_env=False,
        )
        assert reply.status_code == 200, (name, reply.text)
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"

    logs = llmctl("logs", "chat", "mlx", "-n", "200", cwd=tmp_path)
    assert logs.returncode == 0
    lines = logs.stdout.splitlines()
    assert any(line.startswith("chat | ") and "starting:" in line for line in lines)
    assert any(line.startswith("mlx  | ") for line in lines)

    down = llmctl("down", "--json", cwd=tmp_path)
    assert down.returncode == 0
    assert sorted(json.loads(down.stdout)["stopped"]) == ["chat", "code", "mlx"]
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert processes_mentioning(str(gguf_model)) == []
    assert processes_mentioning(str(mlx_model)) == []
    leftovers = [process.cmdline() for process in processes_mentioning(str(state_dir))]
    assert leftovers == []  # no log relay, no supervisor
    assert status_json(cwd=tmp_path)["supervisor"] is None


def test_restart_replaces_the_process(tmp_path, gguf_model, llama_server):
    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {gguf_model}\n    port: {port}\n    args: ['-c', '256']\n",
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    before = by_name(status_json(cwd=tmp_path))["chat"]["pid"]
    result = llmctl("restart", "chat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = by_name(status_json(cwd=tmp_path))["chat"]
    assert after["state"] == "healthy" and after["pid"] != before


def test_foreground_up_stops_everything_on_ctrl_c(tmp_path, gguf_model, llama_server):
    import signal
    import subprocess

    from .helpers import LLMCTL, wait_for

    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {gguf_model}\n    port: {port}\n    args: ['-c', '256']\n",
    )
    foreground = subprocess.Popen(
        [LLMCTL, "up", "--foreground"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        instance = wait_for(
            lambda: (i := by_name(status_json(cwd=tmp_path))["chat"])["state"] == "healthy" and i, timeout=60
        )
        foreground.send_signal(signal.SIGINT)
        assert foreground.wait(timeout=30) == 130
    finally:
        foreground.kill()
    assert not psutil.pid_exists(instance["pid"]) or psutil.Process(instance["pid"]).status() == psutil.STATUS_ZOMBIE


def test_kill_9_of_a_real_llama_server_is_restarted_and_serves_again(tmp_path, gguf_model, llama_server):
    import os
    import signal

    from .helpers import wait_for

    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {gguf_model}\n    port: {port}\n"
        "    args: ['-c', '256']\n    restart: {policy: on-failure, backoff: 0.1}\n",
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    first = by_name(status_json(cwd=tmp_path))["chat"]
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for(
        lambda: (
            (i := by_name(status_json(cwd=tmp_path))["chat"])["state"] == "healthy" and i["pid"] != first["pid"] and i
        ),
        timeout=30,
    )
    assert again["restarts"] == 1 and "SIGKILL" in again["last_exit"]
    reply = httpx.post(
        again["url"] + "/v1/completions", json={"prompt": "hi", "n_predict": 2}, timeout=60, trust_env=False
    )
    assert reply.status_code == 200
