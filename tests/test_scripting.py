"""What dev scripts reach for: `llmctl url NAME` and `eval "$(llmctl env)"`, from the config alone."""

from __future__ import annotations

import subprocess

from .helpers import LLMCTL, command_instance, free_port, llmctl, write_config


def test_url_and_env_need_no_supervisor(tmp_path, state_dir):
    ports = [free_port() for _ in range(3)]
    write_config(
        tmp_path,
        f"gateway: {{port: {ports[2]}}}\ninstances:"
        + command_instance("chat", ports[0])
        + command_instance("code-7b_x", ports[1]),
    )
    assert llmctl("url", "chat", cwd=tmp_path).stdout == f"http://127.0.0.1:{ports[0]}/v1\n"
    assert llmctl("url", "gateway", cwd=tmp_path).stdout == f"http://127.0.0.1:{ports[2]}/v1\n"
    missing = llmctl("url", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "nope" in missing.stderr
    script = f'eval "$({LLMCTL} env)" && echo "$LLMCTL_CHAT_URL $LLMCTL_CODE_7B_X_URL $LLMCTL_GATEWAY_URL"'
    shown = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert shown.split() == [f"http://127.0.0.1:{port}" for port in ports]
    assert not state_dir.exists() or not (state_dir / "supervisor.sock").exists()  # nothing was started


def test_two_names_that_would_share_a_variable_are_refused(tmp_path):
    write_config(tmp_path, "instances:" + command_instance("a-b", free_port()) + command_instance("a_b", free_port()))
    result = llmctl("env", cwd=tmp_path)
    assert result.returncode == 2 and "LLMCTL_A_B_URL" in result.stderr


def test_logs_without_names_shows_every_instance_and_check_counts_in_words(tmp_path, state_dir):
    write_config(tmp_path, "instances:" + command_instance("one", free_port()) + command_instance("two", free_port()))
    assert llmctl("up", cwd=tmp_path).returncode == 0
    shown = llmctl("logs", cwd=tmp_path).stdout
    assert "one | " in shown and "two | " in shown
    write_config(tmp_path, "instances:" + command_instance("solo", free_port()))
    assert "(1 instance: solo)" in llmctl("check", cwd=tmp_path).stdout


def test_check_warns_about_a_program_that_is_not_installed(tmp_path):
    port = free_port()
    write_config(
        tmp_path,
        f"instances:\n  - name: ghost\n    backend: command\n    command: [no-such-server-xyz]\n    port: {port}\n",
    )
    result = llmctl("check", cwd=tmp_path)
    assert result.returncode == 0 and "ghost: command: program 'no-such-server-xyz' not found" in result.stderr


def test_dev_setup_example_starts_the_fleet_and_hands_the_urls_to_the_app(tmp_path, state_dir):
    """examples/dev-setup.sh as a dev script runs it: the app it starts reaches the server with curl."""
    import os
    from pathlib import Path

    from .helpers import ROOT

    port = free_port()
    config = write_config(tmp_path, "instances:" + command_instance("chat-model", port))
    path = f"{Path(LLMCTL).parent}{os.pathsep}{os.environ['PATH']}"
    app = 'curl -sf "$LLMCTL_CHAT_MODEL_URL/health"'
    env = {**os.environ, "PATH": path, "LLMCTL_CONFIG": str(config)}
    ran = subprocess.run(
        ["bash", str(ROOT / "examples" / "dev-setup.sh"), "bash", "-c", app],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "ok" in ran.stdout  # the fake server's /health body, fetched by the "app"
    again = subprocess.run(
        ["bash", str(ROOT / "examples" / "dev-setup.sh")], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and f"LLMCTL_CHAT_MODEL_URL=http://127.0.0.1:{port}" in again.stdout


def test_dev_setup_example_fails_when_an_instance_fails(tmp_path, state_dir):
    import os
    from pathlib import Path

    from .helpers import ROOT

    config = write_config(
        tmp_path,
        "instances:" + command_instance("bad", free_port(), "--exit-at-once", "2", extra="    restart: {policy: no}\n"),
    )
    env = {**os.environ, "PATH": f"{Path(LLMCTL).parent}{os.pathsep}{os.environ['PATH']}", "LLMCTL_CONFIG": str(config)}
    ran = subprocess.run(
        ["bash", str(ROOT / "examples" / "dev-setup.sh"), "echo", "app started"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 1 and "app started" not in ran.stdout and "bad" in ran.stderr
