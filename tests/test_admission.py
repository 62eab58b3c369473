"""Admission that decides before it acts (issue 18), on real llama-servers: a model requested while
another loads stays within the budget, an instance of unknown size is not counted as 0, a model that
cannot fit even alone is refused at once with nothing stopped, and concurrent admissions never
overshoot. The ~290 MB GGUF is copied per instance (one mapped file would share its pages)."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .helpers import by_name, command_instance, free_port, llmctl, status_json, write_config

ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
RUNNING = {"starting", "healthy", "unhealthy", "stopping"}


def big(tmp_path: Path, big_gguf_model: Path, names: list[str], extra: str = "    on_demand: true\n") -> str:
    entries = ""
    for name in names:
        model = shutil.copy(big_gguf_model, tmp_path / f"{name}.gguf")
        entries += (
            f"\n  - name: {name}\n    backend: llama.cpp\n    model: {model}\n    port: {free_port()}\n"
            f"    args: ['-c', '256']\n{extra}"
        )
    return entries


def fleet(tmp_path: Path, budget: str, entries: str) -> str:
    port = free_port()
    write_config(
        tmp_path, f"memory_budget: {budget}\ngateway: {{port: {port}, drain_timeout: 30}}\ninstances:{entries}"
    )
    result = llmctl("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return f"http://127.0.0.1:{port}"


def ask(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={**ASK, "model": model}, trust_env=False, timeout=120)


class Watch:
    """Samples which instances are resident, in the background, for as long as it runs."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.most, self.seen = folder, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            resident = sorted(n for n, i in by_name(status_json(cwd=self.folder)).items() if i["state"] in RUNNING)
            self.seen.append(resident)
            self.most = max(self.most, len(resident))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_model_requested_while_another_loads_stays_within_the_budget(
    tmp_path, state_dir, big_gguf_model, llama_server
):
    """A budget that holds one: B is asked for while A still loads. A counts by its estimate while it
    loads (not by the little it mapped so far), so B waits for A's request and then evicts it."""
    url = fleet(tmp_path, "450MiB", big(tmp_path, big_gguf_model, ["a", "b"]))
    with Watch(tmp_path) as watch, ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask, url, "a")
        second = pool.submit(ask, url, "b")
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert watch.most == 1, watch.seen  # never both resident
    logs = [(state_dir / "logs" / f"{name}.log").read_text() for name in ("a", "b")]
    assert "evicted to make room for b" in logs[0] or "evicted to make room for a" in logs[1]


def test_an_instance_of_unknown_size_is_not_counted_as_zero(tmp_path, state_dir, big_gguf_model, llama_server):
    entries = big(tmp_path, big_gguf_model, ["pinned"], extra="") + command_instance(
        "unknown", free_port(), extra="    on_demand: true\n"
    )
    url = fleet(tmp_path, "600MiB", entries)
    refused = ask(url, "unknown")  # no estimate, no max_memory: it counts as 1 GiB, which does not fit
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "insufficient_memory"
    assert "1.0 GiB" in refused.json()["error"]["message"]
    write_config(
        tmp_path,
        (tmp_path / "instances.yaml")
        .read_text()
        .replace("    on_demand: true\n", "    on_demand: true\n    max_memory: 64MiB\n"),
    )
    assert llmctl("up", cwd=tmp_path).returncode == 0
    assert ask(url, "unknown").status_code == 200  # its max_memory fits


def test_a_model_that_cannot_fit_alone_is_refused_at_once_and_nothing_stops(
    tmp_path, state_dir, big_gguf_model, llama_server
):
    entries = command_instance("small", free_port(), extra="    on_demand: true\n    max_memory: 32MiB\n") + big(
        tmp_path, big_gguf_model, ["huge"]
    )
    url = fleet(tmp_path, "200MiB", entries)
    assert ask(url, "small").status_code == 200
    pid = by_name(status_json(cwd=tmp_path))["small"]["pid"]
    refused = ask(url, "huge")
    assert refused.status_code == 503 and refused.headers.get("Retry-After")
    message = refused.json()["error"]["message"]
    assert "huge" in message and "budget" in message and "MiB" in message
    status = by_name(status_json(cwd=tmp_path))
    assert status["small"]["state"] == "healthy" and status["small"]["pid"] == pid  # nothing was stopped for it
    assert status["huge"]["state"] == "stopped"
    assert "evicted" not in (state_dir / "logs" / "small.log").read_text()


def test_concurrent_admissions_never_overshoot(tmp_path, state_dir, big_gguf_model, llama_server):
    """Four requests at once for four models, a budget that holds two: never three resident."""
    names = ["c0", "c1", "c2", "c3"]
    url = fleet(tmp_path, "750MiB", big(tmp_path, big_gguf_model, names))
    with Watch(tmp_path) as watch, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda name: ask(url, name), names))
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    assert watch.most <= 2, watch.seen
    status = status_json(cwd=tmp_path)
    ram = next(p for p in status["system"]["pools"] if p["pool"] in ("ram", "unified"))
    assert ram["used_bytes"] <= ram["budget_bytes"]
