"""One regression test per defect found by the review, the newcomer's run and the fault-injection
pass of the one-owner redesign (issue 8), on real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil

from .helpers import (
    FAKE_OLLAMA,
    LLMCTL,
    by_name,
    command_instance,
    free_port,
    llmctl,
    processes_mentioning,
    status_json,
    supervisor_pid,
    wait_for,
    write_config,
)


def kill_supervisor(state_dir) -> None:
    pid = supervisor_pid(state_dir)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def test_an_adopted_instance_restarts_with_its_configured_binary(tmp_path, state_dir):
    """Adoption keeps the whole config: a binary from `binaries:` is still found after a supervisor kill -9."""
    port = free_port()
    write_config(
        tmp_path,
        f"binaries:\n  ollama: {FAKE_OLLAMA}\nlogs: {{max_bytes: 4096, backups: 1}}\n"
        f"instances:\n  - name: local\n    backend: ollama\n    model: tiny\n    port: {port}\n"
        "    health: {interval: 0.3}\n    restart: {policy: on-failure, backoff: 0.1}\n",
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    kill_supervisor(state_dir)
    before = by_name(status_json(cwd=tmp_path))["local"]  # a new supervisor adopts it
    assert before["state"] == "healthy"
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(
        lambda: (
            (i := by_name(status_json(cwd=tmp_path))["local"])["state"] == "healthy" and i["pid"] != before["pid"] and i
        ),
        timeout=20,
    )
    assert "not found" not in (after["last_error"] or "")
    assert (state_dir / "pipes" / "limits").read_text().split() == ["4096", "1"]  # log limits survived too


def test_foreground_up_reports_a_refused_start_and_exits_non_zero(tmp_path, state_dir, big_gguf_model):
    write_config(
        tmp_path,
        f"memory_budget: 1MiB\ninstances:\n  - name: big\n    backend: llama.cpp\n    model: {big_gguf_model}\n"
        f"    port: {free_port()}\n",
    )
    result = llmctl("up", "--foreground", cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "memory budget" in result.stderr and "Traceback" not in result.stderr


def test_foreground_up_exits_143_on_sigterm(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port))
    up = subprocess.Popen(
        [LLMCTL, "up", "--foreground"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for(lambda: processes_mentioning(str(port)), timeout=20)
    time.sleep(0.5)
    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=30) == 143
    assert processes_mentioning(str(port)) == []


def test_a_gguf_with_a_string_where_a_number_belongs(tmp_path, state_dir, model_maker):
    """The estimate is lost, nothing else: no 'bad request', no traceback, status works without a supervisor."""
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("llama.block_count", "twelve")
    writer.add_string("llama.context_length", "a lot")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_config(
        tmp_path, f"instances:\n  - name: odd\n    backend: llama.cpp\n    model: {path}\n    port: {free_port()}\n"
    )
    status = llmctl("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["instances"][0]["memory_estimate_bytes"] is None
    up = llmctl("up", "--timeout", "20", cwd=tmp_path)
    assert "bad request" not in up.stderr and "invalid literal" not in up.stderr and "Traceback" not in up.stderr


def test_stopping_sends_one_sigterm_per_process(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port, "--count-term", "--children", "2"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert llmctl("down", cwd=tmp_path).returncode == 0
    log = (state_dir / "logs" / "fake.log").read_text()
    assert log.count("got SIGTERM") == 1, log


def test_a_server_that_never_gets_ready_hits_the_crash_loop_limit(tmp_path, state_dir):
    """start_timeout longer than the window: failed starts still count (they used to be retried forever)."""
    port = free_port()
    extra = "    restart: {policy: on-failure, backoff: 0.05, max_starts: 3, window: 0.2}\n"
    entry = command_instance("stuck", port, "--never-ready", extra=extra).replace(
        "timeout: 1}", "timeout: 1, start_timeout: 0.4}"
    )
    write_config(tmp_path, "instances:" + entry)
    llmctl("up", "--no-wait", cwd=tmp_path)
    instance = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["stuck"])["state"] == "failed" and i, timeout=30
    )
    assert "3 failed starts in a row" in instance["last_error"]


def test_an_instance_in_backoff_survives_a_supervisor_kill(tmp_path, state_dir):
    port = free_port()
    extra = "    restart: {policy: on-failure, backoff: 1.5, max_backoff: 1.5, max_starts: 50}\n"
    write_config(tmp_path, "instances:" + command_instance("crashy", port, "--exit-at-once", "1", extra=extra))
    llmctl("up", cwd=tmp_path)
    assert by_name(status_json(cwd=tmp_path))["crashy"]["state"] == "backoff"
    kill_supervisor(state_dir)
    shown = by_name(status_json(cwd=tmp_path))["crashy"]  # a new supervisor, which resumes it
    assert shown["state"] in ("starting", "backoff"), shown
    log = state_dir / "logs" / "crashy.log"
    wait_for(lambda: "resuming: the previous supervisor meant it to run" in log.read_text(), timeout=10)
    starts = log.read_text().count("starting: ")
    wait_for(lambda: log.read_text().count("starting: ") > starts, timeout=10)  # and keeps restarting it


def test_logging_resumes_after_the_log_hub_dies(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("ticker", port, "--tick", "0.05"))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    status = status_json(cwd=tmp_path)
    server = by_name(status)["ticker"]["pid"]
    hub = status["supervisor"]["log_hub_pid"]
    os.kill(hub, signal.SIGKILL)
    log = state_dir / "logs" / "ticker.log"

    def last_tick() -> int:
        ticks = [line for line in log.read_text().splitlines() if line.startswith("tick ")]
        return int(ticks[-1].split()[1]) if ticks else 0

    seen = last_tick()
    wait_for(lambda: last_tick() > seen + 20, timeout=10)  # new lines arrive through a new hub
    assert status_json(cwd=tmp_path)["supervisor"]["log_hub_pid"] not in (None, hub)
    assert psutil.Process(server).is_running()  # the server never saw a broken pipe
    ticks = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("tick ")]
    assert ticks == list(range(1, len(ticks) + 1))  # and not a line was lost while the hub was away


def test_no_wait_exits_non_zero_for_a_failure_it_already_knows(tmp_path, state_dir):
    write_config(
        tmp_path,
        f"instances:\n  - name: ghost\n    backend: command\n    command: [{tmp_path}/missing]\n    port: {free_port()}\n",
    )
    result = llmctl("up", "--no-wait", cwd=tmp_path)
    assert result.returncode == 1 and "ghost failed" in result.stderr


def test_down_of_an_unknown_name_is_exit_2_whether_or_not_anything_runs(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    assert llmctl("down", "nope", cwd=tmp_path).returncode == 2
    assert llmctl("down", "fake", cwd=tmp_path).returncode == 0  # known, not running: fine
    assert llmctl("up", cwd=tmp_path).returncode == 0
    result = llmctl("down", "nope", cwd=tmp_path)
    assert result.returncode == 2 and "unknown instance 'nope'" in result.stderr
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "healthy"  # nothing was stopped


def test_down_file_is_used_to_know_the_names(tmp_path, state_dir):
    other = tmp_path / "other.yaml"
    other.write_text("instances:" + command_instance("elsewhere", free_port()))
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    assert llmctl("down", "elsewhere", cwd=tmp_path).returncode == 2
    assert llmctl("down", "--file", str(other), "elsewhere", cwd=tmp_path).returncode == 0


def test_up_says_what_it_recreated_and_restart_counts(tmp_path, state_dir):
    port = free_port()
    write_config(tmp_path, "instances:" + command_instance("fake", port))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert llmctl("restart", "fake", cwd=tmp_path).returncode == 0
    assert by_name(status_json(cwd=tmp_path))["fake"]["restarts"] == 1
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra="    env: {EDITED: '1'}\n"))
    result = llmctl("up", "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert json.loads(result.stdout)["actions"] == {"fake": "recreated"}
    result = llmctl("up", cwd=tmp_path)
    assert "recreated" not in result.stderr  # nothing changed this time
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra="    env: {EDITED: '2'}\n"))
    assert "fake: its config changed; recreated" in llmctl("up", cwd=tmp_path).stderr
