"""`llmctl up` beside a shell-script floor, on real llama-servers with a tiny GGUF, in one run.

The floor is what a dev script would do by hand: start the same llama-server in the background and
poll GET /health with curl every 50 ms (`floor_script`). The server's own ready time is measured by
starting it directly and polling every 5 ms. Figures (medians):

- up, everything already running      vs the floor's check: one curl of each /health
- up of one instance (supervisor up)   vs the server's own ready time, and the floor
- up of 8 instances at once            vs the slowest of 8 servers started directly at once

Run: .venv/bin/python bench/lifecycle.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import httpx
from common import BIN, free_port, tiny_llama

RUNS = 7
RUNNING_RUNS = 20
FLOOR_SCRIPT = """
"$1" -m "$2" --host 127.0.0.1 --port "$3" -c 256 >/dev/null 2>&1 &
server=$!
until curl -sf "http://127.0.0.1:$3/health" >/dev/null; do sleep 0.05; done
kill $server; wait $server 2>/dev/null
"""


def direct_ready(binary: str, model: Path, count: int = 1) -> float:
    """Seconds until all of `count` servers started at once answer /health (polled every 5 ms)."""
    ports = [free_port() for _ in range(count)]
    started = time.perf_counter()
    servers = [
        subprocess.Popen(
            [binary, "-m", str(model), "--port", str(port), "-c", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        pending = set(ports)
        with httpx.Client(trust_env=False, timeout=1) as client:
            while pending:
                for port in list(pending):
                    try:
                        if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                            pending.discard(port)
                    except httpx.HTTPError:
                        pass
                time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        for server in servers:
            server.terminate()
            server.wait()


def floor_script(binary: str, model: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["bash", "-c", FLOOR_SCRIPT, "floor", binary, str(model), str(free_port())], check=True)
    return time.perf_counter() - started


def write_config(folder: Path, model: Path, count: int) -> list[str]:
    names = [f"chat{index}" for index in range(count)]
    entries = "".join(
        f"  - name: {name}\n    backend: llama.cpp\n    model: {model}\n    port: {free_port()}\n    args: ['-c', '256']\n"
        for name in names
    )
    (folder / "instances.yaml").write_text("instances:\n" + entries)
    return names


def timed(argv: list[str], folder: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    with tiny_llama() as (binary, model, folder):
        env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
        llmctl = str(BIN / "llmctl")
        own = [direct_ready(binary, model) for _ in range(RUNS)]
        floor = [floor_script(binary, model) for _ in range(RUNS)]
        own8 = [direct_ready(binary, model, 8) for _ in range(3)]

        try:
            names = write_config(folder, model, 8)
            subprocess.run([llmctl, "up", names[0]], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
            subprocess.run([llmctl, "down", names[0]], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
            one = []
            for _ in range(RUNS):  # the supervisor runs; the instance does not
                one.append(timed([llmctl, "up", names[0]], folder, env))
                subprocess.run([llmctl, "down", names[0]], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
            eight = []
            for _ in range(3):
                eight.append(timed([llmctl, "up"], folder, env))
                subprocess.run([llmctl, "down", *names], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)

            names = write_config(folder, model, 3)
            subprocess.run([llmctl, "up"], check=True, cwd=folder, env=env, stdout=subprocess.DEVNULL)
            running = [timed([llmctl, "up"], folder, env) for _ in range(RUNNING_RUNS)]
            status = subprocess.run([llmctl, "status", "--json"], cwd=folder, env=env, capture_output=True, text=True)
            urls = [i["url"] + "/health" for i in json.loads(status.stdout)["instances"] if i["state"] == "healthy"]
            check = [
                timed(
                    ["bash", "-c", 'for u in "$@"; do curl -sf "$u" >/dev/null || exit 1; done', "check", *urls],
                    folder,
                    env,
                )
                for _ in range(RUNNING_RUNS)
            ]
        finally:  # nothing may outlive the temp folder
            subprocess.run([llmctl, "down"], cwd=folder, env=env, stdout=subprocess.DEVNULL)

    med = statistics.median
    ms = lambda seconds: f"{seconds * 1000:7.1f} ms"  # noqa: E731
    print(f"llama-server's own ready time (5 ms poll)      : {ms(med(own))}")
    print(f"shell floor: start + curl /health every 50 ms  : {ms(med(floor))}")
    print(
        f"llmctl up, one instance (supervisor running)   : {ms(med(one))}   own ready +{(med(one) - med(own)) * 1000:.0f} ms, ratio to floor {med(one) / med(floor):.2f}"
    )
    print(f"slowest of 8 started directly at once          : {ms(med(own8))}")
    print(
        f"llmctl up, 8 instances                         : {ms(med(eight))}   ratio to the slowest {med(eight) / med(own8):.2f}"
    )
    print(f"shell check: curl each of 3 /health            : {ms(med(check))}")
    print(
        f"llmctl up, 3 instances already running         : {ms(med(running))}   ratio to the check {med(running) / med(check):.2f}"
    )


if __name__ == "__main__":
    main()
