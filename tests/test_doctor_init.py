"""`llmctl doctor` and `llmctl init`, driven as a newcomer would (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

from .helpers import by_name, free_port, llmctl, write_config


def doctor(cwd, *args: str) -> tuple[int, dict]:
    result = llmctl("doctor", "--json", *args, cwd=cwd)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def problems(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for finding in report["findings"]:
        if finding["status"] == "problem":
            found.setdefault(finding["check"], []).append(finding)
    return found


def test_doctor_passes_a_good_setup(tmp_path, state_dir, gguf_model):
    write_config(
        tmp_path,
        f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {gguf_model}\n    port: {free_port()}\n",
    )
    code, report = doctor(tmp_path)
    assert code == 0 and report["ok"] is True and report["version"] == 1
    checks = {finding["check"] for finding in report["findings"]}
    assert {"config", "program", "port", "model", "memory", "state_dir", "supervisor"} <= checks
    program = next(f for f in report["findings"] if f["check"] == "program")
    assert "llama-server" in program["message"] and "version" in program["message"]
    plain = llmctl("doctor", cwd=tmp_path)
    assert plain.returncode == 0 and "all is well" in plain.stdout and "\x1b[" not in plain.stdout


def test_doctor_finds_one_problem_of_each_kind_with_its_fix(tmp_path, state_dir, gguf_model):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    held_port = busy.getsockname()[1]
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    write_config(
        tmp_path,
        f"""
memory_budget: 1MiB
instances:
  - name: busy
    backend: llama.cpp
    model: {gguf_model}
    port: {held_port}
  - name: missing
    backend: llama.cpp
    model: {tmp_path / "nowhere.gguf"}
    port: {free_port()}
  - name: wrong
    backend: llama.cpp
    model: {not_gguf}
    port: {free_port()}
  - name: noprogram
    backend: command
    command: [{tmp_path / "no-such-server"}, --serve]
    port: {free_port()}
""",
    )
    state_dir.mkdir(mode=0o700)
    (state_dir / "logs").mkdir(mode=0o777)
    os.chmod(state_dir / "logs", 0o777)  # others may write: a problem
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state_dir / "supervisor.sock"))
    stale.close()  # a socket file nobody serves
    try:
        code, report = doctor(tmp_path)
    finally:
        busy.close()
    assert code == 1 and report["ok"] is False
    found = problems(report)
    assert str(held_port) in found["port"][0]["message"] and "python" in found["port"][0]["message"]
    models = " ".join(f["message"] for f in found["model"])
    assert "nowhere.gguf" in models and "not a GGUF file" in models
    assert "no-such-server" in found["program"][0]["message"]
    assert "budget" in found["memory"][0]["message"]
    assert "can be written by other users" in found["state_dir"][0]["message"]
    assert "chmod 700" in found["state_dir"][0]["fix"]
    assert "stale socket" in found["supervisor"][0]["message"]
    assert all(finding["fix"] for findings in found.values() for finding in findings)

    plain = llmctl("doctor", cwd=tmp_path)
    assert plain.returncode == 1 and "fix: " in plain.stdout and "problems" in plain.stdout.splitlines()[-1]


def test_doctor_names_a_supervisor_that_holds_the_lock_but_does_not_answer(tmp_path, state_dir, gguf_model):
    write_config(
        tmp_path,
        f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {gguf_model}\n    port: {free_port()}\n",
    )
    state_dir.mkdir(mode=0o700)
    hold = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(state_dir / "supervisor.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, report = doctor(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1
    stuck = problems(report)["supervisor"][0]
    assert str(holder.pid) in stuck["subject"] and "does not answer" in stuck["message"]
    assert f"kill {holder.pid}" in stuck["fix"]


def test_doctor_reports_a_config_error_as_a_problem(tmp_path, state_dir):
    write_config(tmp_path, "instances:\n  - name: a\n    backend: nope\n    port: 9000\n")
    code, report = doctor(tmp_path)
    assert code == 1 and problems(report)["config"]


def test_init_writes_a_working_config_from_what_it_finds_and_never_overwrites(
    tmp_path, state_dir, gguf_model, mlx_model
):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copy(gguf_model, home / "models" / "Tiny Llama.Q4.gguf")
    (home / "models" / "mmproj-tiny.gguf").write_bytes(b"GGUF")  # a projector, not a model
    hub = home / ".cache" / "huggingface" / "hub" / "models--mlx-community--tiny" / "snapshots" / "abc"
    shutil.copytree(mlx_model, hub)
    work = tmp_path / "project"
    work.mkdir()
    env = {"HOME": str(home), "HF_HOME": ""}

    written = llmctl("init", cwd=work, env=env)
    assert written.returncode == 0, written.stderr
    text = (work / "instances.yaml").read_text()
    assert "mmproj" not in text.split("instances:")[1]
    assert "mlx-community/tiny" in text and "Tiny Llama.Q4.gguf" in text
    check = llmctl("check", cwd=work, env=env)
    assert check.returncode == 0, check.stderr
    assert "tiny-llama-q4" in check.stdout and "tiny" in check.stdout

    (work / "instances.yaml").write_text("# mine\n")
    again = llmctl("init", cwd=work, env=env)
    assert again.returncode != 0 and "--force" in again.stderr
    assert (work / "instances.yaml").read_text() == "# mine\n"
    forced = llmctl("init", "--force", cwd=work, env=env)
    assert forced.returncode == 0 and "mlx-community/tiny" in (work / "instances.yaml").read_text()


def test_init_with_nothing_found_still_writes_a_valid_file(tmp_path, state_dir):
    home = tmp_path / "empty-home"
    home.mkdir()
    result = llmctl("init", "-f", str(tmp_path / "starter.yaml"), cwd=tmp_path, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert "No model was found" in (tmp_path / "starter.yaml").read_text()
    assert llmctl("check", "-f", str(tmp_path / "starter.yaml"), cwd=tmp_path).returncode == 0


def test_init_refuses_a_symlink_in_place_of_the_file(tmp_path, state_dir):
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (tmp_path / "instances.yaml").symlink_to(target)
    result = llmctl("init", "--force", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert target.read_text() == "precious\n"


def test_a_supervisor_config_is_used_outside_its_folder(tmp_path, state_dir):
    """With no -f and no ./instances.yaml, commands use the running supervisor's config."""
    from .helpers import command_instance, status_json

    port = free_port()
    project = tmp_path / "project"
    project.mkdir()
    write_config(project, "instances:" + command_instance("fake", port))
    assert llmctl("up", cwd=project).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    logs = llmctl("logs", "fake", "-n", "5", cwd=elsewhere)
    assert logs.returncode == 0, logs.stderr
    assert llmctl("url", "fake", cwd=elsewhere).stdout.strip() == f"http://127.0.0.1:{port}/v1"
    restarted = llmctl("restart", "fake", cwd=elsewhere)
    assert restarted.returncode == 0, restarted.stderr
    assert by_name(status_json(cwd=elsewhere))["fake"]["restarts"] == 1


def test_init_also_finds_a_model_in_the_current_folder(tmp_path, state_dir, gguf_model):
    """A newcomer downloads a GGUF into the folder they work in and runs `llmctl init` there."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "project"
    (work / "weights").mkdir(parents=True)
    shutil.copy(gguf_model, work / "weights" / "here.Q4.gguf")
    result = llmctl("init", cwd=work, env={"HOME": str(home), "HF_HOME": ""})
    assert result.returncode == 0, result.stderr
    text = (work / "instances.yaml").read_text()
    assert "# found in the current folder" in text and str(work / "weights" / "here.Q4.gguf") in text
    check = llmctl("check", cwd=work, env={"HOME": str(home), "HF_HOME": ""})
    assert check.returncode == 0 and "here-q4" in check.stdout, check.stderr


def test_doctor_notices_the_running_supervisor_serves_another_config(tmp_path, state_dir):
    from .helpers import command_instance

    served, other = tmp_path / "served", tmp_path / "other"
    served.mkdir()
    other.mkdir()
    served_file = write_config(served, "instances:" + command_instance("a", free_port()))
    write_config(other, "instances:" + command_instance("b", free_port()))
    assert llmctl("up", cwd=served).returncode == 0
    try:
        code, report = doctor(other)
        assert code == 1
        clash = problems(report)["supervisor"][0]
        assert f"serves {served_file}, not this file (a running)" in clash["message"]
        assert f"llmctl -f {served_file} doctor" in clash["fix"]
        same_code, same = doctor(served)
        assert same_code == 0 and "supervisor" not in problems(same)  # the file it serves: nothing to say
        assert llmctl("down", "a", cwd=served).returncode == 0
        code, report = doctor(other)  # the supervisor still runs, with nothing running: a warning only
        warned = [f for f in report["findings"] if f["check"] == "supervisor" and f["status"] == "warning"]
        assert code == 0 and warned and f"serves {served_file}, not this file" in warned[0]["message"]
    finally:
        assert llmctl("down", cwd=served).returncode == 0
