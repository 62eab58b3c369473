"""`llmctl status` against `supervisorctl status`, each managing the same N processes, same run.

The processes are the purpose-built test server (an HTTP server answering /health), N = 3 and 10.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, FAKE_SERVER, free_port, summary, supervisord_config, time_command

RUNS = 30


def supervised_fakes(folder: Path, ports: list[int]) -> Path:
    programs = "\n".join(
        f"[program:fake{index}]\ncommand={sys.executable} {FAKE_SERVER} --port {port}\nautorestart=true\n"
        for index, port in enumerate(ports)
    )
    return supervisord_config(folder, programs)


def llmctl_config(folder: Path, ports: list[int]) -> Path:
    entries = "".join(
        f"  - name: fake{index}\n    backend: command\n    command: {json.dumps([sys.executable, str(FAKE_SERVER), '--port', str(port)])}\n"
        f"    port: {port}\n    health: {{path: /health}}\n"
        for index, port in enumerate(ports)
    )
    config = folder / "instances.yaml"
    config.write_text("instances:\n" + entries)
    return config


def bench(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as temp:
        folder = Path(temp)
        sup_ports = [free_port() for _ in range(count)]
        llm_ports = [free_port() for _ in range(count)]
        sup_config = supervised_fakes(folder, sup_ports)
        llm_config = llmctl_config(folder, llm_ports)
        env = {"LLMCTL_STATE_DIR": str(folder / "state"), "LLMCTL_CONFIG": str(llm_config)}
        subprocess.run([BIN / "supervisord", "-c", sup_config], check=True)
        subprocess.run([BIN / "llmctl", "up"], check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while (
                b"RUNNING"
                not in subprocess.run([BIN / "supervisorctl", "-c", sup_config, "status"], capture_output=True).stdout
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("supervisord did not start its programs")
                time.sleep(0.2)
            supervisorctl = time_command([str(BIN / "supervisorctl"), "-c", str(sup_config), "status"], RUNS)
            llmctl_plain = time_command([str(BIN / "llmctl"), "status"], RUNS, env)
            llmctl_json = time_command([str(BIN / "llmctl"), "status", "--json"], RUNS, env)
        finally:
            subprocess.run([BIN / "llmctl", "down"], env={**os.environ, **env}, stdout=subprocess.DEVNULL)
            subprocess.run([BIN / "supervisorctl", "-c", sup_config, "shutdown"], stdout=subprocess.DEVNULL)
    print(f"\n{count} processes")
    print(summary("supervisorctl status", supervisorctl))
    print(summary("llmctl status (plain, not a tty)", llmctl_plain))
    print(summary("llmctl status --json", llmctl_json))
    ratio = statistics.median(llmctl_json) / statistics.median(supervisorctl)
    print(f"ratio llmctl status --json / supervisorctl status: {ratio:.2f}  (below 1 is faster)")
    return {
        "count": count,
        "ratio_json": ratio,
        "ratio_plain": statistics.median(llmctl_plain) / statistics.median(supervisorctl),
    }


if __name__ == "__main__":
    results = [bench(3), bench(10)]
    print(json.dumps(results))
