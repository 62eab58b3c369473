"""Two planes on real processes: the gateway in its own process, lifecycle on the runners' side.

kill -9 of the gateway or of the supervisor, a flood of connections and bodies against the gateway
while an instance is probed, a request that arrives while ttl stops its instance, a client whose
timeout is shorter than the load, and new gateway settings applied without closing the port."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from .helpers import (
    by_name,
    command_instance,
    free_port,
    llmctl,
    status_json,
    supervisor_pid,
    wait_for,
    write_config,
)


def write_fleet(folder: Path, port: int, instances: str, gateway: str = "") -> str:
    write_config(folder, f"gateway: {{port: {port}{gateway}}}\ninstances:{instances}")
    return f"http://127.0.0.1:{port}"


def post(url: str, model: str, timeout: float = 30, **body) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": model, **body}, trust_env=False, timeout=timeout)


def gateway_pid(folder: Path) -> int:
    pid = status_json(cwd=folder)["gateway"]["pid"]
    assert isinstance(pid, int)
    return pid


def kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10)


def test_the_gateway_is_a_process_of_its_own_and_comes_back_when_killed(tmp_path, state_dir):
    url = write_fleet(tmp_path, free_port(), command_instance("a", free_port()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    supervisor, gateway = supervisor_pid(state_dir), gateway_pid(tmp_path)
    assert gateway != supervisor
    assert psutil.Process(gateway).ppid() == supervisor  # the supervisor started it and watches it
    assert os.getsid(gateway) == gateway  # a session of its own: a kill of the supervisor's takes nothing along
    assert post(url, "a").status_code == 200
    kill_and_reap(gateway)
    # No command runs from here on: the supervisor serves the port again by itself.
    answer = wait_for(lambda: _try_post(url, "a"), timeout=10, message="the gateway serving again")
    assert answer.status_code == 200
    assert supervisor_pid(state_dir) == supervisor
    status = status_json(cwd=tmp_path)
    assert status["gateway"]["pid"] not in (None, gateway) and status["gateway"]["restarts"] == 1
    assert by_name(status)["a"]["state"] == "healthy" and by_name(status)["a"]["restarts"] == 0


def _try_post(url: str, model: str) -> httpx.Response | None:
    try:
        return post(url, model, timeout=5)
    except httpx.TransportError:
        return None


def test_a_killed_supervisor_leaves_the_gateway_routing_and_the_next_one_adopts_it(tmp_path, state_dir):
    url = write_fleet(
        tmp_path,
        free_port(),
        command_instance("a", free_port()) + command_instance("lazy", free_port(), extra="    on_demand: true\n"),
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    gateway = gateway_pid(tmp_path)
    failures: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:  # the port must never close, across the kill and the takeover
        while not stop.is_set():
            try:
                code = post(url, "a", timeout=10).status_code
                if code != 200:
                    failures.append(str(code))
            except httpx.TransportError as exc:
                failures.append(repr(exc))
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        kill_and_reap(supervisor_pid(state_dir))
        for _ in range(20):  # no supervisor: a running instance is still served
            assert post(url, "a").status_code == 200
        refused = post(url, "lazy", timeout=30)  # a start needs a supervisor: refused after a bounded wait
        assert refused.status_code == 503 and refused.headers.get("Retry-After")
        assert refused.json()["error"]["code"] == "supervisor_unavailable"
        status = status_json(cwd=tmp_path)  # the next command's supervisor adopts the gateway
        assert status["gateway"]["pid"] == gateway
        wait_for(lambda: status_json(cwd=tmp_path)["gateway"]["connected"], timeout=10)
        assert post(url, "lazy").status_code == 200  # and on-demand starts work again
    finally:
        stop.set()
        asker.join()
    assert failures == []
    assert psutil.Process(gateway).is_running()


def test_a_request_during_a_ttl_stop_waits_and_starts_it_again(tmp_path, state_dir):
    # It ignores SIGTERM, so its ttl stop lasts stop_timeout (3 s): a request arrives in the middle.
    extra = "    on_demand: true\n    ttl: 1\n    stop_timeout: 3\n"
    url = write_fleet(tmp_path, free_port(), command_instance("lazy", free_port(), "--ignore-term", extra=extra))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert post(url, "lazy").status_code == 200
    wait_for(lambda: by_name(status_json(cwd=tmp_path))["lazy"]["state"] == "stopping", timeout=15)
    answer = post(url, "lazy", timeout=60)
    assert answer.status_code == 200, answer.text
    log = (state_dir / "logs" / "lazy.log").read_text()
    assert "idle for 1s (ttl)" in log and log.count("stopped -> starting") == 2


def test_a_client_with_a_short_timeout_is_served_when_it_retries(tmp_path, state_dir):
    """Each try gives up after 2 s against a 5 s load: the load goes on (grace), a retry finds it ready."""
    url = write_fleet(
        tmp_path,
        free_port(),
        command_instance("slow", free_port(), "--load-seconds", "5", extra="    on_demand: true\n"),
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    served = None
    for _ in range(10):
        try:
            served = post(url, "slow", timeout=2)
            break
        except httpx.ReadTimeout:
            continue
    assert served is not None and served.status_code == 200
    status = status_json(cwd=tmp_path)
    assert status["gateway"]["instances"]["slow"]["starts"] == 1  # one load, never started again from zero
    assert by_name(status)["slow"]["restarts"] == 0


def test_new_gateway_settings_keep_the_port_and_the_ttl_clock(tmp_path, state_dir):
    port = free_port()
    instances = command_instance("a", free_port()) + command_instance(
        "lazy", free_port(), extra="    on_demand: true\n    ttl: 600\n"
    )
    url = write_fleet(tmp_path, port, instances)
    assert llmctl("up", cwd=tmp_path).returncode == 0
    gateway = gateway_pid(tmp_path)
    assert post(url, "lazy").status_code == 200
    time.sleep(1.0)
    idle_before = status_json(cwd=tmp_path)["gateway"]["instances"]["lazy"]["idle_s"]
    closed: list[str] = []
    stop = threading.Event()

    def keep_connecting() -> None:
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError as exc:
                closed.append(repr(exc))
            time.sleep(0.01)

    watcher = threading.Thread(target=keep_connecting)
    watcher.start()
    try:
        write_fleet(tmp_path, port, instances, gateway=", max_body: 1KiB, idle_timeout: 5")
        assert llmctl("up", cwd=tmp_path).returncode == 0
        time.sleep(0.5)
    finally:
        stop.set()
        watcher.join()
    assert closed == []
    assert gateway_pid(tmp_path) == gateway  # the same process, the same socket
    too_big = post(url, "a", messages=[{"role": "user", "content": "x" * 4096}])
    assert too_big.status_code == 413  # the new setting is in force
    status = status_json(cwd=tmp_path)
    assert status["gateway"]["instances"]["lazy"]["idle_s"] >= idle_before  # the ttl clock went on
    assert by_name(status)["lazy"]["state"] == "healthy"


def test_a_flood_of_connections_and_bodies_leaves_supervision_alone(tmp_path, state_dir):
    url = write_fleet(tmp_path, free_port(), command_instance("a", free_port()), gateway=", max_body: 4MiB")
    port = int(url.rsplit(":", 1)[1])
    assert llmctl("up", cwd=tmp_path).returncode == 0
    idle = []
    try:
        for _ in range(1000):  # idle connections that never send a byte
            idle.append(socket.create_connection(("127.0.0.1", port)))
        bomb = gzip.compress(b'{"model": "a", "pad": "' + b"0" * (200 << 20) + b'"}')  # 200 MB in ~200 KB
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        answer = httpx.post(url + "/v1/chat/completions", content=bomb, headers=headers, trust_env=False, timeout=60)
        assert answer.status_code == 413 and answer.json()["error"]
        large = {"model": "a", "messages": [{"role": "user", "content": "y" * (10 << 20)}]}
        assert httpx.post(url + "/v1/chat/completions", json=large, trust_env=False, timeout=60).status_code == 413
        assert post(url, "a").status_code == 200  # another client is served meanwhile
        status = status_json(cwd=tmp_path)  # the control socket answers
        assert by_name(status)["a"]["state"] == "healthy" and by_name(status)["a"]["restarts"] == 0
        gateway = psutil.Process(status["gateway"]["pid"])
        assert gateway.memory_info().rss < 400 << 20  # the bomb was never decoded whole
    finally:
        for connection in idle:
            connection.close()
    log = (state_dir / "logs" / "a.log").read_text()
    assert "-> unhealthy" not in log and "-> stopping" not in log


def test_the_idlest_connection_makes_room_at_the_connection_cap(tmp_path, state_dir):
    url = write_fleet(tmp_path, free_port(), command_instance("a", free_port()), gateway=", max_connections: 32")
    port = int(url.rsplit(":", 1)[1])
    assert llmctl("up", cwd=tmp_path).returncode == 0
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
    try:
        assert post(url, "a").status_code == 200  # not locked out by sockets that say nothing
    finally:
        for connection in idle:
            connection.close()
    wait_for(lambda: "max_connections" in (state_dir / "gateway.log").read_text(), timeout=5)


@pytest.mark.parametrize("partial", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path, state_dir, partial):
    url = write_fleet(tmp_path, free_port(), command_instance("a", free_port()), gateway=", header_timeout: 1")
    port = int(url.rsplit(":", 1)[1])
    assert llmctl("up", cwd=tmp_path).returncode == 0
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(partial)
    slow.settimeout(15)
    assert slow.recv(1024) == b""  # closed by the gateway, not by us
    slow.close()


def test_the_contract_is_what_the_supervisor_sends(tmp_path, state_dir):
    """Subscribe as a gateway would, read the snapshot, and ask for an instance."""
    from llmctl.paths import StatePaths

    write_fleet(tmp_path, free_port(), command_instance("a", free_port(), extra="    aliases: [alpha]\n"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(StatePaths(state_dir).socket))
    sock.sendall(b'{"op": "subscribe", "pid": 1}\n')
    reader = sock.makefile("rb")
    snapshot = json.loads(reader.readline())
    assert snapshot["event"] == "snapshot" and snapshot["gateway"]["port"]
    (route,) = snapshot["instances"]
    assert route["name"] == "a" and route["aliases"] == ["alpha"] and route["state"] == "healthy"
    sock.sendall(b'{"op": "acquire", "id": 7, "instance": "a"}\n{"op": "acquire", "id": 8, "instance": "zz"}\n')
    replies = {}
    while len(replies) < 2:
        message = json.loads(reader.readline())
        if message["event"] == "reply":
            replies[message["id"]] = message
    assert replies[7]["ok"] is True
    assert replies[8]["ok"] is False and replies[8]["error"]["status"] == 404
    assert status_json(cwd=tmp_path)["gateway"]["instances"]["a"]["in_flight"] == 1
    sock.close()  # the connection's requests end with it
    wait_for(lambda: status_json(cwd=tmp_path)["gateway"]["instances"]["a"]["in_flight"] == 0, timeout=5)
