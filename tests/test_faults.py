"""More of the fault catalogue in RELIABILITY.md: hung servers, down during backoff, PID reuse,
corrupt state, an unusable log file, secrets, and file modes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import psutil
import pytest

from .helpers import (
    by_name,
    command_instance,
    free_port,
    llmctl,
    processes_mentioning,
    status_json,
    wait_for,
    write_config,
)


def test_hung_server_is_detected_by_its_probes_and_replaced(tmp_path):
    port = free_port()
    extra = "    restart: {policy: on-failure, backoff: 0.2}\n"
    config = command_instance("hung", port, extra=extra).replace(
        "interval: 0.2, timeout: 1}", "interval: 0.2, timeout: 0.5, failure_threshold: 2}"
    )
    write_config(tmp_path, "instances:" + config)
    assert llmctl("up", cwd=tmp_path).returncode == 0
    first = by_name(status_json(cwd=tmp_path))["hung"]["pid"]
    os.kill(first, signal.SIGSTOP)
    replaced = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["hung"])["state"] == "healthy" and i["pid"] != first and i,
        timeout=30,
        message="a replacement for the stopped server",
    )
    assert replaced["restarts"] == 1
    assert "unhealthy" in replaced["last_exit"]
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


def test_down_during_backoff_cancels_the_pending_restart(tmp_path):
    port = free_port()
    restart = "    restart: {policy: always, backoff: 2, max_backoff: 2}\n"
    write_config(tmp_path, "instances:" + command_instance("fake", port, "--exit-at-once", "1", extra=restart))
    assert llmctl("up", cwd=tmp_path).returncode == 1  # its start failed; it waits to try again
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "backoff"
    assert llmctl("down", "fake", cwd=tmp_path).returncode == 0
    time.sleep(2 * 2.4)  # twice the largest backoff (with jitter)
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "stopped"
    assert processes_mentioning(f"--port {port}") == [] and processes_mentioning(str(port)) == []


def test_the_first_crash_of_a_healthy_server_restarts_at_once(tmp_path):
    """Backoff grows only for failures in a row: a server that was healthy is replaced at once, even
    with a long `backoff`."""
    port = free_port()
    restart = "    restart: {policy: always, backoff: 30, max_backoff: 30}\n"
    write_config(tmp_path, "instances:" + command_instance("fake", port, extra=restart))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    old = by_name(status_json(cwd=tmp_path))["fake"]["pid"]
    os.kill(old, signal.SIGKILL)
    instance = wait_for(
        lambda: (i := by_name(status_json(cwd=tmp_path))["fake"])["state"] == "healthy" and i["pid"] != old and i,
        timeout=5,
    )
    assert instance["restarts"] == 1


def test_a_reused_pid_is_never_adopted_nor_signalled(tmp_path, state_dir):
    from llmctl.config.load import load_config

    config_path = write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        state_dir.mkdir(parents=True)
        record = {
            "name": "fake",
            "pid": stranger.pid,
            "create_time": psutil.Process(stranger.pid).create_time() - 1000,  # recorded for an older process
            "pgid": stranger.pid,
            "started_at": time.time() - 1000,
            "spec": load_config(config_path).instances[0].to_dict(),  # a complete spec: only the identity is wrong
        }
        (state_dir / "state.json").write_text(json.dumps({"version": 1, "config": None, "instances": [record]}))
        status = status_json(cwd=tmp_path)
        assert status["supervisor"] is None  # the record names no live server of ours: nothing to adopt
        assert [(i["name"], i["state"], i["pid"]) for i in status["instances"]] == [("fake", "stopped", None)]
        # A supervisor that does start reads the record, recognises the stranger, and leaves it alone.
        assert llmctl("up", cwd=tmp_path).returncode == 0
        assert by_name(status_json(cwd=tmp_path))["fake"]["pid"] != stranger.pid
        assert llmctl("down", cwd=tmp_path).returncode == 0
        assert stranger.poll() is None  # never signalled
        assert f"recorded pid {stranger.pid} is gone; not adopting" in (state_dir / "supervisor.log").read_text()
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"version": 1, "instances": [{"name"',
        bytes(range(256)),
        b'{"version": 99}',
        b"[]",
        b'{"version": 1, "instances": [{"name": 3}]}',
    ],
)
def test_corrupt_state_file_is_recovered_with_a_warning(tmp_path, state_dir, content):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_bytes(content)
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert by_name(status_json(cwd=tmp_path))["fake"]["state"] == "healthy"
    assert "Traceback" not in (state_dir / "supervisor.log").read_text()


def test_one_unusable_log_file_does_not_stop_the_others(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("good", free_port()) + command_instance("bad", free_port()))
    (state_dir / "logs" / "bad.log").mkdir(parents=True)  # root ignores chmod, so make it a folder instead
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 1
    assert "bad failed: cannot start" in result.stderr
    instances = by_name(status_json(cwd=tmp_path))
    assert instances["good"]["state"] == "healthy"
    assert instances["bad"]["state"] == "failed"


def test_secrets_are_redacted_in_status_and_log_lines(tmp_path, state_dir):
    extra = "    env: {API_TOKEN: s3cret-value, HF_KEY: other-secret, PLAIN: visible}\n"
    write_config(tmp_path, "instances:" + command_instance("fake", free_port(), extra=extra))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    status = status_json(cwd=tmp_path)
    assert by_name(status)["fake"]["env"] == {"API_TOKEN": "***", "HF_KEY": "***", "PLAIN": "visible"}
    shown = json.dumps(status) + llmctl("status", cwd=tmp_path).stdout + (state_dir / "supervisor.log").read_text()
    shown += (state_dir / "logs" / "fake.log").read_text()
    assert "s3cret" not in shown and "other-secret" not in shown


def test_argv_secrets_are_masked_in_llmctl_log_lines():
    from llmctl.system.redact import redact_argv

    assert redact_argv(["llama-server", "--api-key", "k1", "--api-key=k2", "-m", "x"]) == [
        "llama-server",
        "--api-key",
        "***",
        "--api-key=***",
        "-m",
        "x",
    ]


def test_state_and_log_files_are_private(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("fake", free_port()))
    os.umask(0o022)
    assert llmctl("up", cwd=tmp_path).returncode == 0

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(state_dir) == 0o700 and mode(state_dir / "logs") == 0o700
    for name in ("state.json", "supervisor.sock", "supervisor.lock", "spawn.lock", "supervisor.log", "logs/fake.log"):
        assert mode(state_dir / name) == 0o600, name
