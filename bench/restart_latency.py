"""Time from `kill -9` of a server to its replacement answering /health, under llmctl and under
supervisord managing the same llama-server on the same tiny GGUF, in the same run.

llmctl runs with its default restart settings (a server that had been healthy is replaced at once;
the default crash-loop limit is 5 starts a minute, so a `llmctl restart` between groups of 3 kills
starts a new series); supervisord with startsecs=0. "New process" is when the supervisor's new child
exists, "healthy" when it answers /health again.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time

import httpx
import psutil
from common import BIN, free_port, supervisord_config, tiny_llama

RUNS = 9


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def server_pid(parent: psutil.Process, port: int) -> int | None:
    """The supervisor's live child serving `port`."""
    for child in parent.children():
        try:
            if str(port) in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return child.pid
        except psutil.Error:
            continue
    return None


def measure(parent: psutil.Process, port: int) -> tuple[float, float]:
    """(seconds to a new process, seconds to healthy again) after kill -9 of the server on `port`."""
    while not healthy(port) or server_pid(parent, port) is None:
        time.sleep(0.05)
    old = server_pid(parent, port)
    assert old is not None
    killed = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    respawned = None
    while True:
        current = server_pid(parent, port)
        if respawned is None and current not in (None, old):
            respawned = time.perf_counter() - killed
        if respawned is not None and healthy(port):
            return respawned, time.perf_counter() - killed
        time.sleep(0.002)


def main() -> None:
    with tiny_llama() as (binary, model, folder):
        sup_port, llm_port = free_port(), free_port()
        sup_config = supervisord_config(
            folder,
            f"""[program:chat]
command={binary} -m {model} --host 127.0.0.1 --port {sup_port} -c 256
autorestart=true
startsecs=0
""",
        )
        (folder / "instances.yaml").write_text(
            f"""instances:
  - name: chat
    backend: llama.cpp
    model: {model}
    port: {llm_port}
    args: ["-c", "256"]
"""
        )
        env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
        subprocess.run([BIN / "supervisord", "-c", sup_config], check=True)
        subprocess.run([BIN / "llmctl", "up"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
        supervisord_pid = int((folder / "supervisord.pid").read_text())
        llmctl_pid = int((folder / "state" / "supervisor.lock").read_text())
        try:
            supervisord = [measure(psutil.Process(supervisord_pid), sup_port) for _ in range(RUNS)]
            llmctl = []
            for index in range(RUNS):
                if index and index % 3 == 0:  # a new series: the defaults allow 5 starts a minute
                    subprocess.run(
                        [BIN / "llmctl", "restart", "chat"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL
                    )
                llmctl.append(measure(psutil.Process(llmctl_pid), llm_port))
        finally:
            subprocess.run([BIN / "llmctl", "down"], cwd=folder, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([BIN / "supervisorctl", "-c", sup_config, "shutdown"], stdout=subprocess.DEVNULL)

    def report(label: str, samples: list[tuple[float, float]]) -> tuple[float, float]:
        respawn = statistics.median(sample[0] for sample in samples)
        ready = statistics.median(sample[1] for sample in samples)
        print(
            f"{label:<12} new pid after {respawn * 1000:7.1f} ms   healthy after {ready * 1000:7.1f} ms   (median of {len(samples)})"
        )
        return respawn, ready

    s_respawn, s_ready = report("supervisord", supervisord)
    l_respawn, l_ready = report("llmctl", llmctl)
    print(
        f"ratio llmctl / supervisord: new pid {l_respawn / s_respawn:.3f}, healthy again {l_ready / s_ready:.3f}  (below 1 is faster)"
    )


if __name__ == "__main__":
    main()
