"""The gateway on real processes: routing by name and alias, the model name each backend must see,
server-sent events passed through as they come, the answers it gives itself (404, 503, 429, 401, 413),
on-demand starts shared by concurrent requests, idle TTL, eviction by measured memory, and what a
client that goes away cancels."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .helpers import (
    FAKE_SERVER,
    ROOT,
    by_name,
    free_port,
    llmctl,
    processes_mentioning,
    status_json,
    wait_for,
    write_config,
)

HOSTILE = str(ROOT / "tests" / "standins" / "hostile_upstream.py")


def fake(name: str, port: int, *flags: str, extra: str = "") -> str:
    command = json.dumps([sys.executable, FAKE_SERVER, "--port", str(port), *flags])
    return (
        f"\n  - name: {name}\n    backend: command\n    command: {command}\n    port: {port}\n"
        f"    health: {{path: /health, interval: 0.2, timeout: 1}}\n{extra}"
    )


def gateway_config(tmp_path: Path, instances: str, gateway: str = "") -> str:
    port = free_port()
    write_config(tmp_path, f"gateway: {{port: {port}{gateway}}}\ninstances:{instances}")
    return f"http://127.0.0.1:{port}"


def post(url: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, trust_env=False, timeout=60, **kwargs)


def test_routes_by_name_and_alias_and_lists_every_model(tmp_path, state_dir):
    gateway = gateway_config(
        tmp_path,
        fake("a", free_port(), extra="    aliases: [alpha, 'org/model:7b']\n")
        + fake("b", free_port(), extra="    model: served-name\n"),
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert post(gateway, {"model": "org/model:7b"}).json()["received_model"] == "a"
    assert post(gateway, {"model": "alpha"}).json()["received_model"] == "a"
    assert post(gateway, {"model": "b"}).json()["received_model"] == "served-name"  # the name it serves
    listed = httpx.get(gateway + "/v1/models", trust_env=False).json()["data"]
    assert {(m["id"], m.get("alias_of"), m["state"]) for m in listed} == {
        ("a", None, "healthy"),
        ("alpha", "a", "healthy"),
        ("org/model:7b", "a", "healthy"),
        ("b", None, "healthy"),
    }
    missing = post(gateway, {"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "alpha" in missing.json()["error"]["message"]
    status = status_json(cwd=tmp_path)
    assert status["gateway"]["url"] == gateway and status["gateway"]["instances"]["a"]["requests"] == 2


def test_real_llama_server_and_mlx_behind_one_port(tmp_path, state_dir, gguf_model, mlx_model, llama_server):
    gateway = gateway_config(
        tmp_path,
        f"\n  - name: chat\n    backend: llama.cpp\n    model: {gguf_model}\n    port: {free_port()}\n    args: ['-c', '256']\n"
        f"    aliases: [gpt-4o-mini]\n  - name: mlx\n    backend: mlx\n    model: {mlx_model}\n    port: {free_port()}\n"
        "    aliases: [mlx-community/whatever]\n",
    )
    assert llmctl("up", cwd=tmp_path, timeout=180).returncode == 0
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert post(gateway, {**ask, "model": "gpt-4o-mini"}).json()["choices"]
    # mlx_lm.server would read an unknown name as a repository to download: it gets none.
    answer = post(gateway, {**ask, "model": "mlx-community/whatever"})
    assert answer.status_code == 200 and answer.json()["choices"], answer.text
    with httpx.stream(
        "POST",
        gateway + "/v1/chat/completions",
        json={**ask, "model": "chat", "stream": True, "max_tokens": 16},
        trust_env=False,
        timeout=60,
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-accel-buffering"] == "no"
        events = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert len(events) > 2 and events[-1] == "data: [DONE]"


def test_server_sent_events_arrive_before_the_answer_ends(tmp_path, state_dir):
    # The upstream sends its first event, then waits for a file the test writes only once that event
    # reached it through the gateway: proof of event-by-event relay, with no clock.
    gate, port = tmp_path / "gate", free_port()
    command = json.dumps([sys.executable, "-u", HOSTILE, "--port", str(port), "--gate-file", str(gate)])
    instance = (
        f"\n  - name: sse\n    backend: command\n    command: {command}\n    port: {port}\n"
        "    health: {path: /health, interval: 0.2, timeout: 1}\n"
    )
    gateway = gateway_config(tmp_path, instance)
    assert llmctl("up", cwd=tmp_path).returncode == 0
    body = {"model": "sse", "mode": "gated", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, trust_env=False, timeout=30) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["content"] == "Hello"
        gate.touch()  # only now does the upstream finish
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    assert [json.loads(line[5:])["choices"][0]["delta"].get("content") for line in rest[:-1]] == [" world", None]


def test_the_answers_the_gateway_gives_itself(tmp_path, state_dir):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    key_file.chmod(0o600)
    gateway = gateway_config(
        tmp_path,
        fake("ok", free_port())
        + fake("broken", free_port(), "--exit-at-once", "1", extra="    restart: no\n")
        + fake("slow", free_port(), "--load-seconds", "3", extra="    on_demand: true\n    max_queue: 1\n"),
        gateway=f", api_key_file: {key_file}, max_body: 2KiB",
    )
    llmctl("up", cwd=tmp_path)
    auth = {"Authorization": "Bearer s3cret-key"}
    assert post(gateway, {"model": "ok"}).status_code == 401
    assert post(gateway, {"model": "ok"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(gateway, {"model": "ok"}, headers=auth).status_code == 200
    assert post(gateway, {"model": "ok"}, headers={"X-Api-Key": "s3cret-key"}).status_code == 200
    too_big = post(gateway, {"model": "ok", "pad": "x" * 5000}, headers=auth)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_large"
    failed = post(gateway, {"model": "broken"}, headers=auth)
    assert failed.status_code == 503 and "broken failed" in failed.json()["error"]["message"]
    with ThreadPoolExecutor(3) as pool:  # one may wait for `slow`; the others are turned away
        answers = list(pool.map(lambda _: post(gateway, {"model": "slow"}, headers=auth), range(3)))
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200, 429, 429], codes
    busy = next(answer for answer in answers if answer.status_code == 429)
    assert busy.headers["Retry-After"] and busy.json()["error"]["code"] == "queue_full"
    assert httpx.get(gateway + "/health", trust_env=False).status_code == 200  # no key needed to see it is up


def test_without_a_key_only_a_loopback_host_is_served(tmp_path, state_dir):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends `Host: evil.example`."""
    gateway = gateway_config(tmp_path, fake("a", free_port()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert post(gateway, {"model": "a"}, headers={"Host": "evil.example:80"}).status_code == 403
    assert httpx.get(gateway + "/v1/models", headers={"Host": "evil.example"}, trust_env=False).status_code == 403
    assert post(gateway, {"model": "a"}, headers={"Host": "localhost"}).status_code == 200


def test_a_gateway_beyond_loopback_needs_a_key(tmp_path, state_dir):
    write_config(tmp_path, f"gateway: {{host: 0.0.0.0, port: {free_port()}}}\ninstances:" + fake("a", free_port()))
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 2 and "without an API key" in result.stderr


def test_twenty_concurrent_first_requests_start_it_once(tmp_path, state_dir):
    gateway = gateway_config(
        tmp_path, fake("lazy", free_port(), "--load-seconds", "1", extra="    on_demand: true\n    max_queue: 50\n")
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert by_name(status_json(cwd=tmp_path))["lazy"]["state"] == "stopped"
    assert httpx.get(gateway + "/v1/models", trust_env=False).status_code == 200  # listing wakes nothing
    assert by_name(status_json(cwd=tmp_path))["lazy"]["state"] == "stopped"
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: post(gateway, {"model": "lazy"}).status_code, range(20)))
    assert codes == [200] * 20
    assert (state_dir / "logs" / "lazy.log").read_text().count("] starting: ") == 1
    assert status_json(cwd=tmp_path)["gateway"]["instances"]["lazy"]["starts"] == 1


def test_ttl_stops_an_idle_instance_but_never_during_a_request(tmp_path, state_dir):
    gateway = gateway_config(tmp_path, fake("brief", free_port(), extra="    on_demand: true\n    ttl: 1\n"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    body = {"model": "brief", "stream": True, "n_events": 20, "event_interval": 0.15}  # 3 s, longer than the ttl
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, trust_env=False, timeout=30) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert len(events) == 21  # never cut: the ttl counts from the end of the request
    assert by_name(status_json(cwd=tmp_path))["brief"]["state"] == "healthy"
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["brief"]["state"] == "stopped", timeout=5)
    assert "idle for 1s (ttl)" in (state_dir / "logs" / "brief.log").read_text()


def test_eviction_stops_the_least_recently_used_idle_instance(tmp_path, state_dir, big_gguf_model, llama_server):
    """Three on-demand instances of the ~290 MB GGUF, a budget that holds two: the third start stops
    the least recently used idle one, never one with a request in flight. (Three copies of the file:
    instances mapping one file would share its pages, and PSS would rightly split them.)"""
    import shutil

    models = [shutil.copy(big_gguf_model, tmp_path / f"m{index}.gguf") for index in range(3)]
    entries = "".join(
        f"\n  - name: m{index}\n    backend: llama.cpp\n    model: {model}\n    port: {free_port()}\n"
        "    args: ['-c', '256']\n    on_demand: true\n"
        for index, model in enumerate(models)
    )
    port = free_port()
    write_config(tmp_path, f"memory_budget: 800MiB\ngateway: {{port: {port}, drain_timeout: 20}}\ninstances:{entries}")
    gateway = f"http://127.0.0.1:{port}"
    assert llmctl("up", cwd=tmp_path).returncode == 0
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert post(gateway, {**ask, "model": "m0"}).status_code == 200
    assert post(gateway, {**ask, "model": "m1"}).status_code == 200
    assert post(gateway, {**ask, "model": "m0"}).status_code == 200  # m1 is now the least recently used
    assert post(gateway, {**ask, "model": "m2"}).status_code == 200
    states = {name: i["state"] for name, i in by_name(status_json(cwd=tmp_path)).items()}
    assert states == {"m0": "healthy", "m1": "stopped", "m2": "healthy"}
    assert "evicted to make room for m2" in (state_dir / "logs" / "m1.log").read_text()
    # A long request keeps m0 busy: m1's start must evict m2 (idle), not m0.
    long_request = threading.Thread(target=post, args=(gateway, {**ask, "model": "m0", "max_tokens": 400}))
    long_request.start()
    time.sleep(0.3)
    assert post(gateway, {**ask, "model": "m1"}).status_code == 200
    long_request.join()
    states = {name: i["state"] for name, i in by_name(status_json(cwd=tmp_path)).items()}
    assert states["m2"] == "stopped" and states["m0"] == "healthy"
    assert status_json(cwd=tmp_path)["gateway"]["instances"]["m2"]["evictions"] == 1


def test_a_client_that_goes_away_cancels_what_it_started(tmp_path, state_dir):
    port_slow, port_sse = free_port(), free_port()
    gateway = gateway_config(
        tmp_path,
        fake("slow", port_slow, "--load-seconds", "30", extra="    on_demand: true\n") + fake("sse", port_sse),
        gateway=", start_grace: 1.5",
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    with pytest.raises(httpx.ReadTimeout):  # gone while its instance loads
        httpx.post(gateway + "/v1/chat/completions", json={"model": "slow"}, trust_env=False, timeout=1.0)
    assert by_name(status_json(cwd=tmp_path))["slow"]["state"] == "starting"  # the grace period: it loads on
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["slow"]["state"] == "stopped", timeout=10)
    assert "abandoned: no request waited for it" in (state_dir / "logs" / "slow.log").read_text()
    assert processes_mentioning(str(port_slow)) == []
    body = {"model": "sse", "stream": True, "n_events": 100, "event_interval": 0.1}
    with httpx.stream("POST", gateway + "/v1/chat/completions", json=body, trust_env=False, timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                break  # gone mid-stream
    log = state_dir / "logs" / "sse.log"
    wait_for(lambda: "stream aborted: the client went away" in log.read_text(), timeout=10)
    wait_for(
        lambda: status_json(cwd=tmp_path)["gateway"]["instances"]["sse"]["requests_by_status"].get("499"), timeout=5
    )


def test_the_gateway_comes_back_with_a_new_supervisor(tmp_path, state_dir):
    import os
    import signal

    import psutil

    from .helpers import supervisor_pid

    gateway = gateway_config(
        tmp_path, fake("a", free_port()) + fake("lazy", free_port(), extra="    on_demand: true\n")
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    old = supervisor_pid(state_dir)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE)
    assert status_json(cwd=tmp_path)["gateway"]["url"] == gateway  # the next command's supervisor serves it
    assert post(gateway, {"model": "a"}).status_code == 200
    assert post(gateway, {"model": "lazy"}).status_code == 200  # an on-demand one, never started before
