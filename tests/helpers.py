"""Shared helpers for tests that drive the installed `llmctl` command against real servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).resolve().parent / "standins"
LLMCTL = str(Path(sys.executable).parent / "llmctl")
FAKE_SERVER = str(STANDINS / "fake_server.py")
FAKE_OLLAMA = str(STANDINS / "fake_ollama.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def llmctl(
    *args: str, cwd: Path | None = None, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `llmctl` command, as a user's script would."""
    return subprocess.run(
        [LLMCTL, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def status_json(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    result = llmctl("status", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {instance["name"]: instance for instance in status["instances"]}


def fake_server_command(port: int, *flags: str) -> list[str]:
    return [sys.executable, FAKE_SERVER, "--port", str(port), *flags]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "instances.yaml"
    path.write_text(text)
    return path


def command_instance(name: str, port: int, *flags: str, extra: str = "") -> str:
    """A YAML list entry for a fake server run through the generic `command` backend."""
    command = json.dumps(fake_server_command(port, *flags))
    return f"""
  - name: {name}
    backend: command
    command: {command}
    port: {port}
    health: {{path: /health, interval: 0.2, timeout: 1}}
{extra}"""


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def processes_mentioning(marker: str) -> list[psutil.Process]:
    """Live processes whose command line contains `marker` (a port or a temp path unique to a test)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


def supervisor_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "supervisor.lock").read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def llama_instance(name: str, model: Path, *args: str, port: int | None = None, extra: str = "") -> str:
    """One llama.cpp instance as instances.yaml text (starting with a newline, for `instances:` + these), on
    the CPU (`-ngl 0`), with `-c 1024 -np 1` unless `args` are given. `extra`: more keys, indented by 4."""
    argv = json.dumps([*(args or ("-c", "1024", "-np", "1")), "-ngl", "0"])
    where = free_port() if port is None else port
    return (
        f"\n  - name: {name}\n    backend: llama.cpp\n    model: {model}\n    port: {where}\n    args: {argv}\n{extra}"
    )
