"""What supervision costs while nothing happens: 50 instances of a minimal server (the purpose-built
test server), under llmctl and under supervisord, in the same run.

- CPU of the supervisor process over 30 s, once every instance has been healthy for a minute
  (llmctl samples a young server's memory more often); llmctl probes each /health every 5 s (its
  default), supervisord probes nothing.
- PSS of the log handling: llmctl's one log hub for all 50, divided by 50.

Run: .venv/bin/python bench/idle_cost.py      (about 4 minutes)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import BIN, FAKE_SERVER, free_port, supervisord_config

COUNT = 50
SETTLE = 65.0
WINDOW = 30.0


def cpu_percent(pid: int) -> float:
    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(WINDOW)
    return (sum(process.cpu_times()[:2]) - before) / WINDOW * 100


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as temp:
        folder = Path(temp)
        entries = "".join(
            f"  - name: s{index}\n    backend: command\n    command: [{sys.executable}, {FAKE_SERVER}, --port, '{port}']\n    port: {port}\n"
            for index, port in enumerate(free_port() for _ in range(COUNT))
        )
        (folder / "instances.yaml").write_text("instances:\n" + entries)
        programs = "".join(
            f"[program:s{index}]\ncommand={sys.executable} {FAKE_SERVER} --port {free_port()}\nautorestart=true\n"
            for index in range(COUNT)
        )
        sup_config = supervisord_config(folder, programs)
        env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
        subprocess.run([BIN / "supervisord", "-c", sup_config], check=True)
        subprocess.run([BIN / "llmctl", "up"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
        try:
            time.sleep(SETTLE)
            llmctl_pid = int((folder / "state" / "supervisor.lock").read_text())
            supervisord_pid = int((folder / "supervisord.pid").read_text())
            llmctl_cpu = cpu_percent(llmctl_pid)
            supervisord_cpu = cpu_percent(supervisord_pid)
            hub = next(
                child.pid
                for child in psutil.process_iter(["cmdline"])
                if any("logrelay.py" in part for part in child.info["cmdline"] or [])
                and str(folder) in " ".join(child.info["cmdline"])
            )
            hub_pss = pss(hub)
            llmctl_pss, supervisord_pss = pss(llmctl_pid), pss(supervisord_pid)
        finally:
            subprocess.run([BIN / "llmctl", "down"], cwd=folder, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([BIN / "supervisorctl", "-c", sup_config, "shutdown"], stdout=subprocess.DEVNULL)
    mib = 1024 * 1024
    print(f"{COUNT} instances, idle, CPU over {WINDOW:g} s:")
    print(
        f"  llmctl supervisor  {llmctl_cpu:5.2f} % of a core   (probing each /health every 5 s)   PSS {llmctl_pss / mib:5.1f} MiB"
    )
    print(
        f"  supervisord        {supervisord_cpu:5.2f} % of a core   (no health probes)                 PSS {supervisord_pss / mib:5.1f} MiB"
    )
    print(f"  log handling: one hub, PSS {hub_pss / mib:.1f} MiB = {hub_pss / COUNT / mib:.2f} MiB per instance")


if __name__ == "__main__":
    main()
