"""Issue 19's defect classes, attacked with cases their first tests did not have.

- an on-demand instance that failed is put back to standby by `up`, so `up` then `wait` agree;
- `logs -n N` counts lines across a fresh rotation, after the probe filter;
- `init` leaves a port another server holds on another address (::1) alone;
- `check`: an external server on another machine clashes with no local port;
- `--help` into a closed pipe ends by SIGPIPE, quietly, as any other output does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from llmctl.beyond.init import _free_port
from llmctl.config.load import parse_config
from llmctl.errors import ConfigError
from llmctl.logs.files import last_lines

from .helpers import LLMCTL, command_instance, free_port, llmctl, write_config


def test_an_on_demand_instance_that_failed_is_back_to_standby_after_up(tmp_path: Path, state_dir: Path):
    port = free_port()
    extra = '    on_demand: true\n    restart: {policy: "no"}\n'
    entry = command_instance("lazy", port, "--exit-at-once", "3", extra=extra)
    text = f"gateway: {{port: {free_port()}}}\ninstances:{entry}"
    write_config(tmp_path, text)
    started = llmctl("up", "lazy", cwd=tmp_path)  # named: started now, and it fails
    assert started.returncode == 1, started.stdout + started.stderr
    up = llmctl("up", "--json", cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert json.loads(up.stdout)["actions"] == {"lazy": "on demand"}
    waited = llmctl("wait", "lazy", "--json", cwd=tmp_path)
    assert waited.returncode == 0, waited.stdout + waited.stderr  # `up` said settled: `wait` agrees
    (instance,) = json.loads(waited.stdout)["instances"]
    assert (instance["state"], instance["outcome"], instance["standby"]) == ("stopped", "ok", True)


def test_up_no_wait_says_on_demand_once(tmp_path: Path, state_dir: Path):
    extra = "    on_demand: true\n"
    text = f"gateway: {{port: {free_port()}}}\ninstances:{command_instance('lazy', free_port(), extra=extra)}"
    write_config(tmp_path, text)
    result = llmctl("up", "--no-wait", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("lazy:")] == [
        "lazy: on demand (the gateway starts it at its first request)"
    ]


def _probe(line: str) -> bool:
    return "GET /health" not in line


def test_last_lines_reach_into_the_rotated_file_after_filtering(tmp_path: Path):
    log = tmp_path / "a.log"
    log.with_name("a.log.2").write_text("".join(f"old {n}\n" for n in range(3)))
    log.with_name("a.log.1").write_text("".join(f"real {n}\n" for n in range(30)))
    log.write_text("".join(f"real {n}\n" + "GET /health 200\n" * 40 for n in range(30, 35)))
    assert last_lines(log, 10, _probe) == [f"real {n}" for n in range(25, 35)]
    assert last_lines(log, 36, _probe) == ["old 2"] + [f"real {n}" for n in range(35)]
    assert last_lines(log, 1000, _probe)[0] == "old 0"  # more than there is: all of it, oldest first
    assert last_lines(log, 0, _probe) == []
    assert last_lines(log, 2) == ["GET /health 200"] * 2  # unfiltered: the live file's own last lines


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_init_skips_a_port_held_on_another_address():
    with socket.socket(socket.AF_INET6) as other:
        other.bind(("::1", 0))
        other.listen()
        held = other.getsockname()[1]
        taken: set[int] = set()
        chosen = _free_port(held, taken, "127.0.0.1")  # 127.0.0.1:held binds, but localhost:held is the other's
        assert chosen != held
        assert _free_port(held, taken, "127.0.0.1") not in (held, chosen)  # and never twice


def test_check_a_remote_external_server_clashes_with_no_local_port(tmp_path: Path):
    gateway = free_port()
    text = f"""gateway: {{port: {gateway}}}
instances:
  - name: far
    backend: external
    url: http://10.1.2.3:{gateway}
  - name: near
    backend: external
    url: http://localhost:{gateway}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "instances.yaml")
    (problem,) = caught.value.problems  # `near` on this machine clashes; `far` does not
    assert problem.endswith(f":6: instance 'near': port {gateway} is already used by the gateway")


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["logs", "--help"]])
def test_help_into_a_closed_pipe_ends_quietly(args: list[str]):
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before anything is written: the first write fails, every time
    try:
        result = subprocess.run([LLMCTL, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (-signal.SIGPIPE, "")
