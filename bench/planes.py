"""The two planes, measured: the gateway process's memory beside a bare aiohttp server's, its added
latency (p99; the median is run.py's) beside the same llama-server direct, and health probes kept on schedule while
the gateway is flooded (2,000 idle sockets and 10 MB bodies) beside the same probes on a quiet machine.

bench/run.py calls `two_planes(settings)`; each figure pairs llmctl with a peer measured in the same run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
from common import BIN, FAKE_SERVER, free_port, tiny_llama

LLMCTL = str(BIN / "llmctl")
PROBE_INTERVAL = 0.5  # seconds between health probes in the flood benchmark
BARE_AIOHTTP = """
import sys
from aiohttp import web
async def answer(request):
    await request.read()
    return web.json_response({"choices": [{"message": {"content": "ok"}}]})
app = web.Application()
app.router.add_post("/v1/chat/completions", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}


def _run(argv: list[str], env: dict[str, str], folder: Path) -> None:
    subprocess.run(argv, env=env, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def _fleet(folder: Path, config: str) -> Iterator[dict[str, str]]:
    (folder / "instances.yaml").write_text(config)
    env = _env(folder)
    _run([LLMCTL, "up"], env, folder)
    try:
        yield env
    finally:
        subprocess.run([LLMCTL, "down"], env=env, cwd=folder, check=False, capture_output=True)


def _gateway_pid(env: dict[str, str], folder: Path) -> int:
    import json

    out = subprocess.run([LLMCTL, "status", "--json"], env=env, cwd=folder, check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout)["gateway"]["pid"])


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _requests(url: str, model: str, count: int) -> list[float]:
    timings = []
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(url + "/v1/chat/completions", json=body)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return timings


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def memory_and_latency(settings: object) -> list:
    """Gateway RSS idle and after N requests beside a bare aiohttp server; the p99 added latency."""
    from run import Figure

    count = max(20, getattr(settings, "gateway_requests", 200) * 5)  # 1,000 in the full setting
    figures = []
    with tiny_llama() as (_binary, model, folder):
        port, gateway_port, bare_port = free_port(), free_port(), free_port()
        config = (
            f"gateway: {{port: {gateway_port}}}\ninstances:\n  - name: chat\n    backend: llama.cpp\n"
            f"    model: {model}\n    port: {port}\n    args: ['-c', '256']\n"
        )
        bare = subprocess.Popen([sys.executable, "-c", BARE_AIOHTTP, str(bare_port)])
        try:
            with _fleet(folder, config) as env:
                gateway = _gateway_pid(env, folder)
                _wait_serving(f"http://127.0.0.1:{bare_port}")
                time.sleep(1.0)
                idle = (_rss_mib(gateway), _rss_mib(bare.pid))
                through, direct = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{port}"
                _requests(through, "chat", 5)
                _requests(direct, "chat", 5)
                gateway_times = _requests(through, "chat", count)
                direct_times = _requests(direct, "chat", count)
                _requests(f"http://127.0.0.1:{bare_port}", "chat", count)
                after = (_rss_mib(gateway), _rss_mib(bare.pid))
        finally:
            bare.kill()
            bare.wait()
    note = "the gateway process (aiohttp server + client, routes, metrics) beside aiohttp answering by itself"
    figures.append(Figure("gateway process RSS, idle", "MiB", [idle[0]], "bare aiohttp server", [idle[1]], note))
    figures.append(
        Figure(
            f"gateway process RSS after {count} requests", "MiB", [after[0]], "bare aiohttp server", [after[1]], note
        )
    )
    # The median is run.py's claim "one request through the gateway" (one row per claim): only the tail here.
    figures.append(
        Figure(
            f"one request through the gateway, p99 of {count}",
            "ms",
            [_p99(gateway_times)],
            "the same llama-server, direct",
            [_p99(direct_times)],
        )
    )
    return figures


def _wait_serving(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(url + "/v1/chat/completions", json={}, trust_env=False, timeout=1)
            return
        time.sleep(0.05)


def _probe_times(log: Path) -> list[float]:
    return [float(match) for match in re.findall(r"probe at (\d+\.\d+)", log.read_text(errors="replace"))]


def _intervals(times: list[float], since: float, until: float) -> list[float]:
    window = [t for t in times if since <= t <= until]
    return [b - a for a, b in itertools.pairwise(window)]


def _flood(port: int, url: str, stop: threading.Event, sockets: int) -> None:
    idle = []
    try:
        for _ in range(sockets):
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", port)))
        big = b'{"model": "a", "pad": "' + b"x" * (10 << 20) + b'"}'
        with httpx.Client(trust_env=False, timeout=60) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post(url + "/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    finally:
        for connection in idle:
            connection.close()


def probes_under_flood(settings: object) -> list:
    """Probe intervals of a healthy instance, quiet and while the gateway is flooded."""
    from run import Figure

    seconds = 10.0 if getattr(settings, "repeats", 7) > 2 else 3.0
    sockets = 2000 if seconds > 5 else 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, sockets + 512)), hard))
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(__import__("tempfile").TemporaryDirectory(prefix="llmctl-flood-")))
        port, gateway_port = free_port(), free_port()
        command = [sys.executable, str(FAKE_SERVER), "--port", str(port), "--log-probes"]
        config = (
            f"gateway: {{port: {gateway_port}, max_body: 16MiB}}\ninstances:\n  - name: a\n    backend: command\n"
            f"    command: {command!r}\n    port: {port}\n    health: {{path: /health, interval: {PROBE_INTERVAL}}}\n"
        )
        env = stack.enter_context(_fleet(folder, config))
        time.sleep(1.0)
        quiet_from = time.monotonic()
        time.sleep(seconds)
        flood_from = time.monotonic()
        stop = threading.Event()
        workers = [threading.Thread(target=_flood, args=(gateway_port, f"http://127.0.0.1:{gateway_port}", stop, sockets // 2))
                   for _ in range(2)]  # fmt: skip
        for worker in workers:
            worker.start()
        time.sleep(seconds)
        flood_until = time.monotonic()
        stop.set()
        for worker in workers:
            worker.join()
        time.sleep(1.0)
        times = _probe_times(folder / "state" / "logs" / "a.log")
        del env
    quiet = _intervals(times, quiet_from, flood_from)
    flooded = _intervals(times, flood_from, flood_until)
    note = f"{sockets} idle sockets + 10 MB bodies on 2 threads; probes every {PROBE_INTERVAL}s; aim: within 10 %"
    return [
        Figure(
            "probe interval during a flood, median",
            "ms",
            [statistics.median(flooded)],
            "the same probes, quiet",
            [statistics.median(quiet)],
            note,
        ),
        Figure(
            "probe interval during a flood, longest",
            "ms",
            [max(flooded)],
            "the same probes, quiet",
            [max(quiet)],
            note,
        ),
    ]


def two_planes(settings: object) -> list:
    return memory_and_latency(settings) + probes_under_flood(settings)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from run import Settings

    for figure in two_planes(Settings.quick() if "--quick" in sys.argv else Settings.full()):
        print(figure.claim, figure.ours, figure.peer_name, figure.peer, figure.ratio)
