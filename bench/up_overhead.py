"""How long `llmctl up` takes beyond the server's own readiness.

Peer: the same llama-server on the same tiny GGUF, started directly and polled every 5 ms until
GET /health answers 200. Then `llmctl up` for one such instance (supervisor already running, as in
a dev loop; and cold, with the supervisor started by `up`). Reported as a difference and a ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import httpx
from common import BIN, free_port, tiny_llama

RUNS = 5


def direct_ready(binary: str, model: Path) -> float:
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [binary, "-m", str(model), "--port", str(port), "-c", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    finally:
        server.terminate()
        server.wait()


def llmctl_up(folder: Path, model: Path, env: dict[str, str]) -> float:
    port = free_port()
    (folder / "instances.yaml").write_text(
        f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {model}\n    port: {port}\n    args: ['-c', '256']\n"
    )
    started = time.perf_counter()
    subprocess.run([BIN / "llmctl", "up", "chat"], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - started
    subprocess.run([BIN / "llmctl", "down", "chat"], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
    return took


def main() -> None:
    with tiny_llama() as (binary, model, folder):
        env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
        direct = [direct_ready(binary, model) for _ in range(RUNS)]
        cold = []
        for _ in range(RUNS):
            cold.append(llmctl_up(folder, model, env))
            subprocess.run([BIN / "llmctl", "down"], cwd=folder, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([BIN / "llmctl", "status"], cwd=folder, env=env, stdout=subprocess.DEVNULL)
        warm_env = env
        (folder / "instances.yaml").write_text("instances: []\n")
        subprocess.run(
            [BIN / "llmctl", "up"], cwd=folder, env=warm_env, stdout=subprocess.DEVNULL
        )  # starts the supervisor
        warm = [llmctl_up(folder, model, warm_env) for _ in range(RUNS)]
        subprocess.run([BIN / "llmctl", "down"], cwd=folder, env=env, stdout=subprocess.DEVNULL)
    d, w, c = (statistics.median(values) for values in (direct, warm, cold))
    print(f"llama-server ready, started directly : {d * 1000:7.1f} ms")
    print(f"llmctl up, supervisor running        : {w * 1000:7.1f} ms   (+{(w - d) * 1000:.0f} ms, ratio {w / d:.2f})")
    print(f"llmctl up, supervisor started by up  : {c * 1000:7.1f} ms   (+{(c - d) * 1000:.0f} ms, ratio {c / d:.2f})")


if __name__ == "__main__":
    main()
