"""What the gateway adds, on one tiny llama-server, beside the same server direct and beside the
LiteLLM proxy (from PyPI, in its own venv at $LITELLM or /tmp/litellm-venv) routing to it, in one run.

- added latency, non-streaming (p50, p99 of 300 requests, max_tokens 1)
- time to first token, streaming (p50 of 100)
- throughput with 8 concurrent streams for 10 s, as a ratio to direct
- first token of a cold on-demand instance, against its own ready time + one request direct

Run: .venv/bin/python bench/gateway_latency.py   (install LiteLLM first: python3 -m venv /tmp/litellm-venv &&
     /tmp/litellm-venv/bin/pip install 'litellm[proxy]'; without it the LiteLLM column is skipped)
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
from common import BIN, free_port, tiny_llama

ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
LITELLM = Path(os.environ.get("LITELLM", "/tmp/litellm-venv")) / "bin" / "litellm"


def direct_ready(binary: str, model: Path) -> float:
    """Seconds until a llama-server started directly answers /health (polled every 5 ms)."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [binary, "-m", str(model), "--port", str(port), "-c", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(trust_env=False, timeout=1) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        return time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.005)
    finally:
        server.terminate()
        server.wait()


def paired_latencies(url: str, model: str, count: int) -> tuple[list[float], list[float]]:
    """(OpenAI path, Ollama path) seconds of `count` non-streamed chats each through the gateway, taken in turn
    so that both see the same machine: /v1/chat/completions with max_tokens 1, /api/chat with num_predict 1."""
    openai_times, ollama_times = [], []
    ollama_ask = {"model": model, "messages": ASK["messages"], "stream": False, "options": {"num_predict": 1}}
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(count):
            for path, body, times in (
                ("/v1/chat/completions", {**ASK, "model": model}, openai_times),
                ("/api/chat", ollama_ask, ollama_times),
            ):
                started = time.perf_counter()
                response = client.post(url + path, json=body)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
    return openai_times, ollama_times


def latencies(url: str, model: str, count: int) -> list[float]:
    timings = []
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.post(url + "/v1/chat/completions", json={**ASK, "model": model})
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return timings


def first_tokens(url: str, model: str, count: int) -> list[float]:
    timings = []
    body = {**ASK, "model": model, "stream": True, "max_tokens": 8}
    failures = 0
    with httpx.Client(trust_env=False, timeout=30) as client:
        while len(timings) < count:
            started = time.perf_counter()
            try:
                with client.stream("POST", url + "/v1/chat/completions", json=body) as stream:
                    lines = stream.iter_lines()
                    for line in lines:
                        if line.startswith("data:"):
                            timings.append(time.perf_counter() - started)
                            break
                    for _ in lines:
                        pass
            except httpx.RemoteProtocolError:  # a kept-alive connection the server closed: not timed, retried
                failures += 1
                if failures > count:
                    raise
    if failures:
        print(f"  ({url}: {failures} kept-alive connections closed by the server during the TTFT run)")
    return timings


def throughput(url: str, model: str, streams: int = 8, seconds: float = 10.0) -> float:
    done, errors = [0] * streams, [0] * streams
    stop = time.monotonic() + seconds
    body = {**ASK, "model": model, "stream": True, "max_tokens": 16}

    def worker(index: int) -> None:
        with httpx.Client(trust_env=False, timeout=30) as client:
            while time.monotonic() < stop:
                try:
                    with client.stream("POST", url + "/v1/chat/completions", json=body) as stream:
                        for _ in stream.iter_lines():
                            pass
                    done[index] += 1
                except httpx.HTTPError:  # a kept-alive connection the server closed: counted, retried
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sum(errors):
        print(f"  ({url}: {sum(errors)} requests failed under 8 streams)")
    return sum(done) / seconds


def p(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def start_litellm(folder: Path, upstream: str) -> tuple[subprocess.Popen[bytes] | None, str]:
    if not LITELLM.exists():
        return None, ""
    port = free_port()
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: chat\n    litellm_params:\n      model: openai/chat\n"
        f"      api_base: {upstream}/v1\n      api_key: none\n"
    )
    process = subprocess.Popen(
        [str(LITELLM), "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if (
                httpx.post(
                    url + "/v1/chat/completions", json={**ASK, "model": "chat"}, trust_env=False, timeout=5
                ).status_code
                == 200
            ):
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    return None, ""


def main() -> None:
    with tiny_llama() as (binary, model, folder):
        env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
        gateway_port, chat_port, cold_port = free_port(), free_port(), free_port()
        (folder / "instances.yaml").write_text(
            f"gateway: {{port: {gateway_port}}}\ninstances:\n"
            f"  - name: chat\n    backend: llama.cpp\n    model: {model}\n    port: {chat_port}\n    args: ['-c', '256']\n"
            f"  - name: cold\n    backend: llama.cpp\n    model: {model}\n    port: {cold_port}\n    args: ['-c', '256']\n"
            "    on_demand: true\n"
        )
        llmctl = str(BIN / "llmctl")
        subprocess.run([llmctl, "up"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
        direct, gateway = f"http://127.0.0.1:{chat_port}", f"http://127.0.0.1:{gateway_port}"
        litellm, litellm_url = start_litellm(folder, direct)
        try:
            paths = {"direct": direct, "gateway": gateway} | ({"litellm": litellm_url} if litellm else {})
            for url in paths.values():
                latencies(url, "chat", 20)  # warm up
            plain = {name: latencies(url, "chat", 300) for name, url in paths.items()}
            ttft = {name: first_tokens(url, "chat", 100) for name, url in paths.items()}
            rate = {name: throughput(url, "chat") for name, url in paths.items()}
            status = json.loads(
                subprocess.run([llmctl, "status", "--json"], cwd=folder, env=env, capture_output=True, text=True).stdout
            )
            rss = status["supervisor"]["memory_rss_bytes"]
            started = time.perf_counter()
            cold_first = first_tokens(gateway, "cold", 1)[0]
            cold_total = time.perf_counter() - started
        finally:
            subprocess.run([llmctl, "down"], cwd=folder, env=env, stdout=subprocess.DEVNULL)
            if litellm:
                litellm.kill()
                litellm.wait()
        own_ready = direct_ready(binary, model)
    ms = lambda seconds: f"{seconds * 1000:6.2f} ms"  # noqa: E731
    base50, base99 = p(plain["direct"], 0.5), p(plain["direct"], 0.99)
    for name in plain:
        added50, added99 = p(plain[name], 0.5) - base50, p(plain[name], 0.99) - base99
        print(
            f"{name:<8} p50 {ms(p(plain[name], 0.5))} (+{ms(added50)})  p99 {ms(p(plain[name], 0.99))} (+{ms(added99)})"
            f"  TTFT p50 {ms(p(ttft[name], 0.5))}  8 streams {rate[name]:6.1f} req/s ({rate[name] / rate['direct']:.2f} of direct)"
        )
    if "litellm" in plain:
        ratio = (p(plain["gateway"], 0.5) - base50) / max(1e-9, p(plain["litellm"], 0.5) - base50)
        print(f"gateway's added p50 / LiteLLM's added p50: {ratio:.3f}")
    print(f"supervisor RSS with the gateway on: {rss / 2**20:.1f} MiB")
    print(
        f"cold on-demand instance: first token {ms(cold_first)} (request {ms(cold_total)}); its own ready time {ms(own_ready)} "
        f"+ one request direct {ms(p(ttft['direct'], 0.5))}"
    )


if __name__ == "__main__":
    main()
