"""Supervision with real processes: a small purpose-built server (tests/standins/fake_server.py)
stands in where the fault concerns process behaviour rather than a model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from .helpers import (
    LLMCTL,
    by_name,
    command_instance,
    fake_server_command,
    free_port,
    llmctl,
    processes_mentioning,
    status_json,
    supervisor_pid,
    wait_for,
    write_config,
)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


FAST_RESTART = "    restart: {policy: on-failure, backoff: 0.2, max_backoff: 1, max_starts: 3, window: 30}\n"


def test_kill_9_of_a_server_is_restarted_and_counted(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra=FAST_RESTART))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    first = by_name(status_json(cwd=tmp_path))["fake"]
    os.kill(first["pid"], signal.SIGKILL)

    def restarted():
        instance = by_name(status_json(cwd=tmp_path))["fake"]
        return instance if instance["state"] == "healthy" and instance["pid"] != first["pid"] else None

    again = wait_for(restarted, timeout=20, message="a new healthy pid")
    assert again["restarts"] == 1
    assert "SIGKILL" in again["last_exit"]
    assert not psutil.pid_exists(first["pid"]) or psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE


def test_repeated_kills_reach_the_crash_loop_limit_and_stay_failed(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra=FAST_RESTART))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    for _ in range(3):
        instance = wait_for(
            lambda: (i := by_name(status_json(cwd=tmp_path))["fake"])["state"] == "healthy" and i, timeout=20
        )
        os.kill(instance["pid"], signal.SIGKILL)
    failed = wait_for(lambda: (i := by_name(status_json(cwd=tmp_path))["fake"])["state"] == "failed" and i, timeout=20)
    assert "crash loop" in failed["last_error"]
    time.sleep(1.5)  # longer than the largest backoff: nothing may start again on its own
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "failed"
    assert processes_mentioning(str(port)) == []
    # A manual start resets it.
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "healthy"


def test_server_that_exits_at_once_fails_up_with_reason_and_log(tmp_path):
    port = free_port()
    extra = "    restart: {policy: no}\n"
    write_config(tmp_path, "instances:" + command_instance("crashy", port, "--exit-at-once", "3", extra=extra))
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1
    assert "crashy failed: the server exited with code 3 while starting" in result.stderr
    assert "fake server: exiting at once with 3" in result.stderr  # the last log lines
    assert by_name(status_json(cwd=tmp_path))["crashy"]["state"] == "failed"


def test_server_that_never_turns_healthy_times_out(tmp_path):
    port = free_port()
    extra = "    restart: {policy: no}\n"
    write_config(
        tmp_path,
        "instances:"
        + command_instance("stuck", port, "--never-ready", extra=extra).replace(
            "timeout: 1}", "timeout: 1, start_timeout: 2}"
        ),
    )
    result = llmctl("up", cwd=tmp_path, timeout=120)  # a hang guard only: the message says why it ended
    assert result.returncode == 1
    # A load stuck at the same 503 is no progress: start_timeout counts from the last sign of life.
    assert "no progress for 2s while loading (start_timeout" in result.stderr
    assert processes_mentioning(str(port)) == []


def test_slow_load_is_not_a_crash_and_status_answers_during_up(tmp_path, state_dir):
    """RELIABILITY.md #3: 503 for 60 s is a load, not a crash (only start_timeout limits it)."""
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("slow", port, "--load-seconds", "60"))
    up = subprocess.Popen([LLMCTL, "up"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (state_dir / "supervisor.sock").exists(), timeout=20)
    during = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["slow"])["state"] == "starting" and i, timeout=10
    )
    assert during["pid"] and up.poll() is None  # `up` is still waiting while `status` answers
    _, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    slow = by_name(status_json(cwd=tmp_path))["slow"]
    assert slow["restarts"] == 0 and slow["pid"] == during["pid"] and slow["uptime_s"] >= 60


def test_busy_port_is_refused_before_spawning_and_names_the_holder(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use by python" in result.stderr
    instance = by_name(status_json(cwd=tmp_path))["fake"]
    assert instance["state"] == "failed" and instance["restarts"] == 0


def test_binary_not_found_says_how_to_fix_it(tmp_path):
    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: gone\n    backend: command\n    command: [no-such-server-xyz]\n    port: {port}\n",
    )
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1
    assert "program 'no-such-server-xyz' not found" in result.stderr


def test_server_ignoring_sigterm_is_killed_after_its_grace(tmp_path):
    port = free_port()
    write_config(
        tmp_path, "instances:" + command_instance("stubborn", port, "--ignore-term", extra="    stop_timeout: 1\n")
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    pid = by_name(status_json(cwd=tmp_path))["stubborn"]["pid"]
    assert llmctl("down", "stubborn", cwd=tmp_path).returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize(
    ("flag", "grace", "ends_with"),
    [("--ignore-term", 1.0, -signal.SIGKILL), ("--count-term", 60.0, 0)],
)
def test_stop_sends_sigkill_only_to_what_outlives_its_grace(flag, grace, ends_with):
    """Which signal ended the server shows whether the grace was kept: a server that ignores SIGTERM
    dies of SIGKILL; one that takes 0.5 s to leave on SIGTERM exits by itself (code 0), never killed
    early. The exit code is ours to read because the server is this test's own child."""
    from llmctl.system import process

    port = free_port()
    child = process.spawn(fake_server_command(port, flag), env=dict(os.environ), output=subprocess.DEVNULL, cwd=None)
    wait_for(lambda: _listening(port), timeout=60)  # its SIGTERM handler is set before it listens
    handle = process.handle_of_child(child.pid)
    gone = asyncio.run(process.stop_tree(handle, os.getpgid(child.pid), grace, reap=child.poll))
    assert gone and child.wait(timeout=30) == ends_with


def test_children_and_escaped_grandchildren_are_stopped(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("forky", port, "--children", "2", "--escaping-child"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    leader = psutil.Process(by_name(status_json(cwd=tmp_path))["forky"]["pid"])
    family = [leader, *leader.children(recursive=True)]
    assert len(family) == 4
    assert llmctl("down", cwd=tmp_path).returncode == 0
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_supervisor_kill_9_servers_keep_serving_and_are_adopted(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra=FAST_RESTART))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    before = by_name(status_json(cwd=tmp_path))["fake"]
    old_supervisor = supervisor_pid(state_dir)
    os.kill(old_supervisor, signal.SIGKILL)
    wait_for(
        lambda: not psutil.pid_exists(old_supervisor) or psutil.Process(old_supervisor).status() == psutil.STATUS_ZOMBIE
    )
    # The server still answers with no supervisor at all.
    import httpx

    assert httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False).status_code == 200
    after = by_name(status_json(cwd=tmp_path))["fake"]
    assert supervisor_pid(state_dir) != old_supervisor
    assert after["pid"] == before["pid"] and after["state"] == "healthy"
    assert after["uptime_s"] >= before["uptime_s"]
    # The new supervisor watches it: a kill is noticed and restarted.
    os.kill(after["pid"], signal.SIGKILL)
    wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["fake"])["state"] == "healthy" and i["pid"] != after["pid"],
        timeout=20,
    )
    assert llmctl("down", cwd=tmp_path).returncode == 0
    assert processes_mentioning(str(port)) == []


def test_five_concurrent_up_start_one_supervisor_and_each_instance_once(tmp_path, state_dir):
    ports = [free_port() for _ in range(2)]
    write_config(tmp_path, "instances:" + command_instance("a", ports[0]) + command_instance("b", ports[1]))
    runs = [
        subprocess.Popen(
            [str(Path(llmctl.__globals__["LLMCTL"])), "up"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 5, results
    supervisors = [p for p in processes_mentioning("llmctl.control.daemon") if str(state_dir) in " ".join(p.cmdline())]
    assert len(supervisors) == 1
    for port in ports:
        servers = [p for p in processes_mentioning(str(port)) if "fake_server.py" in " ".join(p.cmdline())]
        assert len(servers) == 1, servers


def test_status_without_supervisor_lists_everything_stopped(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    status = status_json(cwd=tmp_path)
    assert status["supervisor"] is None
    assert [(i["name"], i["state"], i["pid"]) for i in status["instances"]] == [("a", "stopped", None)]
    plain = llmctl("status", cwd=tmp_path).stdout
    assert plain.splitlines()[0].split()[:4] == ["NAME", "BACKEND", "MODEL", "STATE"]
    assert "\x1b[" not in plain  # no colour off a terminal


def test_up_is_idempotent_and_down_of_nothing_is_fine(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    assert llmctl("down", cwd=tmp_path).returncode == 0
    assert llmctl("up", cwd=tmp_path).returncode == 0
    pid = by_name(status_json(cwd=tmp_path))["a"]["pid"]
    second = llmctl("up", "--json", cwd=tmp_path)
    assert second.returncode == 0
    assert json.loads(second.stdout)["actions"] == {"a": "running"}
    assert by_name(status_json(cwd=tmp_path))["a"]["pid"] == pid


def test_unknown_instance_name_is_a_usage_error(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    for command in (["up", "nope"], ["status", "nope"], ["logs", "nope"], ["restart", "nope"]):
        result = llmctl(*command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "'nope'" in result.stderr and "Traceback" not in result.stderr


def test_status_after_a_killed_supervisor_whose_servers_died_too(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra="    restart: {policy: no}\n"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    server = by_name(status_json(cwd=tmp_path))["fake"]["pid"]
    os.kill(supervisor_pid(state_dir), signal.SIGKILL)
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE)
    status = status_json(cwd=tmp_path)
    assert status["supervisor"] is None  # nothing to adopt: no supervisor is started for a status
    assert [(i["name"], i["state"]) for i in status["instances"]] == [("fake", "stopped")]
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "healthy"


def test_up_after_editing_an_instance_recreates_only_that_one(tmp_path):
    ports = [free_port(), free_port()]
    write_config(tmp_path, "instances:" + command_instance("a", ports[0]) + command_instance("b", ports[1]))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    before = {name: i["pid"] for name, i in by_name(status_json(cwd=tmp_path)).items()}
    edited = command_instance("a", ports[0], "--load-seconds", "0.5") + command_instance("b", ports[1])
    write_config(tmp_path, "instances:" + edited)
    result = llmctl("up", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["actions"] == {"a": "recreated", "b": "running"}
    after = {name: i["pid"] for name, i in by_name(status_json(cwd=tmp_path)).items()}
    assert after["a"] != before["a"] and after["b"] == before["b"]


def test_logs_of_several_instances_interleave_with_a_prefix_and_follow(tmp_path):
    ports = [free_port(), free_port()]
    write_config(tmp_path, "instances:" + command_instance("one", ports[0]) + command_instance("two", ports[1]))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    shown = llmctl("logs", "one", "two", "-n", "5", cwd=tmp_path).stdout.splitlines()
    assert any(line.startswith("one | fake server") for line in shown)
    assert any(line.startswith("two | fake server") for line in shown)
    follower = subprocess.Popen(
        [LLMCTL, "logs", "two", "-f", "-n", "0"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.5)  # the follower is reading before the restart writes its lines
        assert llmctl("restart", "two", cwd=tmp_path).returncode == 0
        time.sleep(0.5)
    finally:
        follower.terminate()
    followed = follower.communicate(timeout=10)[0]
    assert "stopping" in followed and "starting:" in followed and "fake server listening" in followed


def test_up_timeout_gives_up_waiting_but_leaves_the_instance_starting(tmp_path):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("slow", port, "--load-seconds", "30"))
    result = llmctl("up", "--timeout", "1", cwd=tmp_path, timeout=60)  # the load takes 30 s: a hang guard below it
    assert result.returncode == 1
    assert "timed out after 1s waiting for slow (they keep starting)" in result.stderr
    assert by_name(status_json(cwd=tmp_path))["slow"]["state"] == "starting"


def test_status_watch_refreshes_until_interrupted(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("a", free_port()))
    watch = subprocess.Popen(
        [LLMCTL, "status", "--watch", "--json", "--interval", "0.2"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    guard = threading.Timer(60, watch.kill)  # a hang guard: a watch that stops refreshing fails, never hangs
    guard.start()
    seen = 0
    try:
        for line in watch.stdout:  # three documents, however slowly the machine makes them
            seen += line.count('"instances"')
            if seen >= 3:
                break
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=30)
    finally:
        guard.cancel()
    assert seen >= 3 and watch.returncode == 0


def test_a_server_listening_beyond_loopback_is_warned_about(tmp_path):
    port = free_port()
    text = (
        command_instance("open", port)
        .replace("--port", "--port")
        .replace(f"    port: {port}\n", f"    port: {port}\n    host: 0.0.0.0\n")
    )
    write_config(tmp_path, "instances:" + text)
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "llmctl: warning: open listens on 0.0.0.0: other machines can reach it" in result.stderr
    assert by_name(status_json(cwd=tmp_path))["open"]["url"] == f"http://127.0.0.1:{port}"
