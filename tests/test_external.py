"""Attaching to a server llmctl did not start (issue 12): a real llama-server started by hand, here
as a desktop app would run its own. It is watched, measured and routed to; never started, stopped
or restarted by llmctl."""

from __future__ import annotations

import subprocess
import time

import httpx
import psutil
import pytest

from .helpers import by_name, command_instance, free_port, llmctl, status_json, wait_for, write_config


@pytest.fixture
def outside_server(llama_server, gguf_model):
    """A llama-server started outside llmctl; (port, process), stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(port: int) -> subprocess.Popen:
        server = subprocess.Popen(
            [llama_server, "-m", str(gguf_model), "--host", "127.0.0.1", "--port", str(port), "-c", "256",
             "--alias", "outside"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(server)
        wait_for(lambda: _answers(port), timeout=60)
        return server

    yield start
    for server in started:
        server.kill()
        server.wait()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def external_entry(name: str, port: int, extra: str = "") -> str:
    return (
        f"\n  - name: {name}\n    backend: external\n    kind: llama.cpp\n    url: http://127.0.0.1:{port}\n"
        f"    health: {{interval: 0.3, timeout: 1, failure_threshold: 2, start_timeout: 3}}\n{extra}"
    )


def test_attach_shows_pid_and_memory_and_down_leaves_it_running(tmp_path, state_dir, outside_server):
    port, gateway_port = free_port(), free_port()
    server = outside_server(port)
    write_config(
        tmp_path,
        f"gateway: {{port: {gateway_port}}}\ninstances:"
        + external_entry("desk", port, "    aliases: [desktop-model]\n")
        + command_instance("own", free_port()),
    )
    up = llmctl("up", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    desk = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["desk"])["memory_bytes"] and i, timeout=20)
    assert desk["state"] == "healthy" and desk["pid"] == server.pid and desk["backend"] == "external"
    assert desk["uptime_s"] > 0 and desk["memory_bytes"] > 1 << 20
    system = status_json(cwd=tmp_path)["system"]
    assert system["instances_bytes"] >= desk["memory_bytes"]  # it counts against the budget

    reply = httpx.post(  # the gateway routes to it like to any instance
        f"http://127.0.0.1:{gateway_port}/v1/completions",
        json={"model": "desktop-model", "prompt": "hi", "max_tokens": 2},
        trust_env=False, timeout=60,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text

    down = llmctl("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert server.poll() is None and _answers(port)  # still running, still answering
    assert psutil.Process(server.pid).status() != psutil.STATUS_ZOMBIE
    assert by_name(status_json(cwd=tmp_path))["desk"]["state"] == "stopped"

    again = llmctl("up", "desk", cwd=tmp_path)  # attaches again
    assert again.returncode == 0, again.stderr
    assert by_name(status_json(cwd=tmp_path))["desk"]["pid"] == server.pid


def test_a_dead_external_server_is_unhealthy_never_restarted_and_recovers(tmp_path, state_dir, outside_server):
    port = free_port()
    server = outside_server(port)
    write_config(tmp_path, "instances:" + external_entry("desk", port))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    server.kill()
    server.wait()
    desk = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["desk"])["state"] == "unhealthy" and i, timeout=20)
    assert desk["restarts"] == 0 and "does not restart" in desk["reason"]
    assert desk["pid"] is None and desk["memory_bytes"] is None  # no process, no stale figures
    time.sleep(1.5)
    assert not _answers(port)  # nothing was started in its place
    assert by_name(status_json(cwd=tmp_path))["desk"]["state"] == "unhealthy"

    back = outside_server(port)  # its app starts it again
    desk = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["desk"])["state"] == "healthy" and i, timeout=30)
    assert desk["pid"] == back.pid and desk["restarts"] == 0


def test_attaching_to_nothing_fails_up_with_the_fix(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + external_entry("lmstudio", free_port()))
    result = llmctl("up", cwd=tmp_path, timeout=120)  # a hang guard below start_timeout (300 s), not a figure
    assert result.returncode == 1
    assert "nothing answers at" in result.stderr and "its own app" in result.stderr


def test_external_survives_a_supervisor_crash_without_being_adopted_as_ours(tmp_path, state_dir, outside_server):
    import os
    import signal

    from .helpers import supervisor_pid

    port = free_port()
    server = outside_server(port)
    write_config(tmp_path, "instances:" + external_entry("desk", port))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    os.kill(supervisor_pid(state_dir), signal.SIGKILL)
    time.sleep(0.5)
    assert llmctl("up", cwd=tmp_path).returncode == 0  # a new supervisor attaches again
    assert by_name(status_json(cwd=tmp_path))["desk"]["pid"] == server.pid
    assert llmctl("down", cwd=tmp_path).returncode == 0
    assert server.poll() is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("    backend: external\n    port: 8300\n", "needs `url:`"),
        ("    backend: external\n    url: http://127.0.0.1:8301/v1\n", "base URL"),
        ("    backend: external\n    url: ftp://127.0.0.1:8302\n", "base URL"),
        ("    backend: external\n    url: http://127.0.0.1:8303\n    kind: winamp\n", "kind"),
        ("    backend: external\n    url: http://127.0.0.1:8304\n    args: [-c, '1']\n", "not started by llmctl"),
        ("    backend: external\n    url: http://127.0.0.1:8305\n    port: 9999\n", "disagrees"),
        ("    backend: llama.cpp\n    model: x.gguf\n    port: 8306\n    url: http://127.0.0.1:8306\n", "`url:`"),
        ("    backend: external\n    url: http://me:secret@127.0.0.1:8307\n", "no credentials"),
        ("    backend: external\n    url: http://127.0.0.1:99999\n", "url"),
        ("    backend: external\n    url: http://127.0.0.1:80\n", "1024-65535"),
    ],
)
def test_external_config_mistakes_are_one_clear_line(tmp_path, entry, message):
    write_config(tmp_path, "instances:\n  - name: x\n" + entry)
    result = llmctl("check", cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr


def test_down_while_still_attaching_detaches_cleanly(tmp_path, state_dir):
    port = free_port()
    write_config(
        tmp_path,
        "instances:" + external_entry("later", port).replace("start_timeout: 3", "start_timeout: 60"),
    )
    assert llmctl("up", "--no-wait", cwd=tmp_path).returncode == 0
    assert by_name(status_json(cwd=tmp_path))["later"]["state"] == "starting"
    down = llmctl("down", "later", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert by_name(status_json(cwd=tmp_path))["later"]["state"] == "stopped"
