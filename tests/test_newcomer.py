"""What a newcomer meets first (issue 19): an on-demand instance in standby, `logs -n`, a closed pipe,
OpenAI URLs, `down` of an external server, and the ports `init` picks."""

from __future__ import annotations

import os

from .helpers import by_name, command_instance, free_port, llmctl, status_json, write_config


def test_wait_after_up_counts_an_on_demand_instance_as_standby(tmp_path):
    write_config(
        tmp_path,
        f"gateway: {{port: {free_port()}}}\ninstances:"
        + command_instance("lazy", free_port(), extra="    on_demand: true\n    ttl: 600\n")
        + command_instance("eager", free_port()),
    )
    up = llmctl("up", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "lazy: on demand" in up.stdout
    waited = llmctl("wait", cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    assert "failed" not in waited.stdout + waited.stderr and "lazy: standby" in waited.stdout
    lazy = by_name(status_json(cwd=tmp_path))["lazy"]
    assert (lazy["state"], lazy["standby"], lazy["outcome"]) == ("stopped", True, "ok")
    table = llmctl("status", cwd=tmp_path).stdout.splitlines()
    assert any(line.split()[:1] == ["lazy"] and "standby" in line.split() for line in table), table


PROBE = '127.0.0.1 - - [27/Nov/2026 07:34:00] "GET /health HTTP/1.1" 200 -\n'


def _mlx_with_log(tmp_path, state_dir, mlx_model, text: str) -> None:
    write_config(
        tmp_path, f"instances:\n  - name: mlx-chat\n    backend: mlx\n    model: {mlx_model}\n    port: {free_port()}\n"
    )
    logs = state_dir / "logs"
    logs.mkdir(parents=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    (logs / "mlx-chat.log").write_text(text)


def test_logs_n_counts_the_lines_shown_after_probe_noise_is_hidden(tmp_path, state_dir, mlx_model):
    said = [f"said {index}" for index in range(5)]
    _mlx_with_log(tmp_path, state_dir, mlx_model, "".join(f"{line}\n" for line in said) + PROBE * 3000)
    assert llmctl("logs", "mlx-chat", cwd=tmp_path).stdout.splitlines() == said
    assert llmctl("logs", "mlx-chat", "-n", "2", cwd=tmp_path).stdout.splitlines() == said[-2:]
    assert llmctl("logs", "mlx-chat", "-n", "2", "--since", "1h", cwd=tmp_path).stdout.splitlines() == said[-2:]
    assert llmctl("logs", "mlx-chat", "-n", "4", "--probes", cwd=tmp_path).stdout == PROBE * 4


def _first_line_then_close(args: list[str], cwd) -> tuple[int, str, str]:
    """Run llmctl with its stdout into a pipe that is closed after one line, as `| head -1` does."""
    import subprocess

    from .helpers import LLMCTL

    child = subprocess.Popen([LLMCTL, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = child.stdout.readline()
    child.stdout.close()
    stderr = child.stderr.read().decode()
    return child.wait(timeout=60), first.decode(), stderr


def test_output_into_a_closed_pipe_ends_quietly_as_sigpipe(tmp_path, state_dir, mlx_model):
    import signal

    long_log = "".join(f"line {index} {'x' * 100}\n" for index in range(20000))  # far more than a pipe holds
    _mlx_with_log(tmp_path, state_dir, mlx_model, long_log)
    for args in (["logs", "mlx-chat", "-n", "20000"], ["logs", "mlx-chat", "-n", "20000", "--no-prefix", "--raw"]):
        code, first, stderr = _first_line_then_close(args, tmp_path)
        assert first.startswith("line 0")
        assert (code, stderr) == (-signal.SIGPIPE, ""), (args, code, stderr)
    ports: set[int] = set()
    while len(ports) < 1500:  # never started: the ports need only differ; the output is several pipe buffers
        ports.add(free_port())
    instances = "".join(command_instance(f"i{index}", port) for index, port in enumerate(ports))
    write_config(tmp_path, "instances:" + instances)
    for args in (["status"], ["status", "--json"], ["env"]):
        code, first, stderr = _first_line_then_close(args, tmp_path)
        assert first and (code, stderr) == (-signal.SIGPIPE, ""), (args, code, stderr)


def test_url_and_env_give_openai_base_urls(tmp_path):
    import subprocess

    from .helpers import LLMCTL

    chat, code, gateway = free_port(), free_port(), free_port()
    instances = "instances:" + command_instance("chat", chat) + command_instance("code", code)
    write_config(tmp_path, instances)
    assert llmctl("url", "chat", cwd=tmp_path).stdout == f"http://127.0.0.1:{chat}/v1\n"
    assert llmctl("url", "chat", "--bare", cwd=tmp_path).stdout == f"http://127.0.0.1:{chat}\n"
    script = f'eval "$({LLMCTL} env)" && echo "$OPENAI_BASE_URL $LLMCTL_CODE_OPENAI_URL $LLMCTL_CODE_URL"'

    def shown() -> list[str]:
        return subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout.split()

    assert shown() == [f"http://127.0.0.1:{chat}/v1", f"http://127.0.0.1:{code}/v1", f"http://127.0.0.1:{code}"]
    write_config(tmp_path, f"gateway: {{port: {gateway}}}\n" + instances)
    assert shown()[0] == f"http://127.0.0.1:{gateway}/v1"
    assert llmctl("url", "gateway", cwd=tmp_path).stdout == f"http://127.0.0.1:{gateway}/v1\n"
    write_config(
        tmp_path, "instances:" + command_instance("a", free_port()) + command_instance("a-openai", free_port())
    )
    clash = llmctl("env", cwd=tmp_path)
    assert clash.returncode == 2 and "LLMCTL_A_OPENAI_URL" in clash.stderr


def test_down_says_detached_for_an_external_server_and_leaves_it_running(tmp_path):
    import subprocess

    from .helpers import fake_server_command

    outside, own = free_port(), free_port()
    server = subprocess.Popen(fake_server_command(outside), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        write_config(
            tmp_path,
            f"instances:\n  - name: desk\n    backend: external\n    kind: llama.cpp\n    url: http://127.0.0.1:{outside}\n"
            + command_instance("mine", own),
        )
        up = llmctl("up", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        down = llmctl("down", cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        lines = down.stdout.splitlines()
        assert "mine: stopped" in lines and any(line.startswith("desk: detached") for line in lines), lines
        assert server.poll() is None
    finally:
        server.kill()
        server.wait()


def test_init_picks_ports_free_of_each_other_and_of_the_gateway(tmp_path, gguf_model):
    import errno
    import re
    import shutil
    import socket

    from llmctl.beyond.init import GATEWAY_PORT

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for index in range(3):
        shutil.copy(gguf_model, home / "models" / f"model-{index}.gguf")
    with socket.socket() as busy:  # the gateway's usual port taken: it moves up, onto the instances' range
        try:
            busy.bind(("127.0.0.1", GATEWAY_PORT))
            busy.listen()
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE  # taken already: the same situation
        result = llmctl("init", "--stdout", cwd=tmp_path, env={"HOME": str(home), "HF_HOME": ""})
    assert result.returncode == 0, result.stderr
    ports = [int(port) for port in re.findall(r"^\s*(?:gateway: \{)?port: (\d+)", result.stdout, re.MULTILINE)]
    assert len(ports) == 4 and GATEWAY_PORT not in ports, result.stdout
    assert len(set(ports)) == len(ports), ports
