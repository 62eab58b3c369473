"""`llmctl bench`: one chat workload against several instances, through the gateway, one instance at a time.

    document = run(paths, config, ["chat", "mlx-chat"], Workload(prompt_tokens=512, max_tokens=128))
    draw_chart(document, Path("bench.png"))

Every request is what an OpenAI client sends the gateway: `POST {gateway}/v1/chat/completions` with
`"model": <instance name>`, `"stream": true`, `"stream_options": {"include_usage": true}` (OpenAI API
reference, "Create chat completion"), `"temperature": 0` and `"max_tokens": M`. llama-server also gets
`"ignore_eos": true`, so it writes exactly M tokens (tools/server README, /completion options); mlx_lm.server
(0.32, `server.py` reads no such key) and Ollama's /v1 API have no equivalent, so they may stop earlier: the
token counts in the results are always the upstream's own `usage`.

The prompt: the user message `Note <nonce>.`, then `words` filler words (an English pangram, repeated: one
token a word in common BPE vocabularies), then an instruction to write a long story. A first request per
instance (max_tokens 1; it also warms the server up, and its TTFT is the cold start when the instance was in
standby) reports the prompt's real size; the filler is corrected once by the difference, so the prompt is about
`prompt_tokens` long (never shorter than the chat template's own tokens). Each request has its own nonce right
after the template's system part, so no server answers from the prompt cache of an earlier request (llama-server
and mlx_lm.server both reuse a cached common prefix).

Per instance (medians over `runs` sequential requests):
- `ttft_ms`: from sending the request to the first chunk carrying text (`delta.content`, or the reasoning fields);
- `prompt_tokens_per_s`, `completion_tokens_per_s`: llama-server's `timings.prompt_per_second` and
  `timings.predicted_per_second` when the stream carries them (`rates_from: "timings"`); else, from the clock
  (`"clock"`): uncached prompt tokens / TTFT, and (completion tokens - 1) / (last text chunk - first text chunk);
- `concurrency`: for each level c, c requests sent at once, `runs` times: all their completion tokens / the wall
  time from the first send to the last byte (median over the runs; level 1 reuses the sequential runs);
- `cold_start_s`: only for an on-demand instance in standby when its turn comes: the TTFT of its first request
  (the gateway starts the server, the model loads, the first token comes). A running instance is not stopped to
  measure it: null (`llmctl down NAME` first to measure one);
- `peak_memory_bytes`: by pool ("ram", "unified", "gpu:N"; llmctl.memory.pools), the largest the supervisor
  measured while the instance was benched: the status document is read every MEMORY_POLL_S seconds
  (`memory_pools`), and a rise of `peak_pools` during the run counts too. null when nothing was measured.

An instance that fails (an HTTP error, a stream that breaks, no usage, not running) gets `error` and the others
still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from llmctl.control import client, service, statusdoc
from llmctl.errors import ConfigError, LlmctlError, SupervisorError
from llmctl.system.secrets import read_secret

if TYPE_CHECKING:
    from llmctl.paths import StatePaths
    from llmctl.spec import Config

BENCHED_BACKENDS = ("llama.cpp", "mlx", "ollama")  # llmctl.backends: the engines benched when no name is given
IGNORE_EOS_BACKENDS = ("llama.cpp",)  # those that read `ignore_eos` (see the module docstring)
FILLER = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog")  # a pangram, repeated
INSTRUCTION = "Now write a long story about a lighthouse."
TEMPLATE_GUESS = 40  # tokens of chat template and instruction around the filler, before the first request says
MEMORY_POLL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # a cold start of a large model, or a queue behind other requests, can take minutes
ERROR_TEXT = 300  # characters of an upstream's error body kept in a result


class BenchFailed(LlmctlError):
    """One instance's bench could not be completed (its row carries the message; the others still run)."""


class ChartUnavailable(LlmctlError):
    """matplotlib, which draws the chart, is not installed."""


@dataclass(frozen=True)
class Workload:
    """What every instance is sent: a prompt of about `prompt_tokens` tokens, at most `max_tokens` back,
    `runs` times in a row, then `runs` times at each level of `concurrency` (requests at once)."""

    prompt_tokens: int = 512
    max_tokens: int = 128
    concurrency: tuple[int, ...] = (1, 4)
    runs: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "concurrency": list(self.concurrency),
            "runs": self.runs,
        }

    def steps(self) -> int:
        """Request batches per instance: the first request, the sequential runs, the runs of each level above 1."""
        return 1 + self.runs + self.runs * len([level for level in self.concurrency if level != 1])


@dataclass(frozen=True)
class Step:
    """Progress: `done` of `total` request batches of the whole bench; `phase` says what runs now."""

    instance: str
    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class Reply:
    """One streamed request as measured. Times in seconds from `time.perf_counter`; counts from `usage`."""

    sent: float
    first_text: float | None
    last_text: float | None
    ended: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str | None
    timings: dict[str, Any] | None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_text is None else self.first_text - self.sent

    def prompt_rate(self) -> float | None:
        """Prompt tokens/s: llama-server's own figure, else uncached tokens over the TTFT."""
        if self.timings and isinstance(self.timings.get("prompt_per_second"), (int, float)):
            return float(self.timings["prompt_per_second"])
        ttft = self.ttft_s
        uncached = self.prompt_tokens - self.cached_tokens
        return uncached / ttft if ttft and uncached > 0 else None

    def completion_rate(self) -> float | None:
        """Completion tokens/s after the first: llama-server's own figure, else counted between text chunks."""
        if self.timings and isinstance(self.timings.get("predicted_per_second"), (int, float)):
            return float(self.timings["predicted_per_second"])
        if self.first_text is None or self.last_text is None or self.completion_tokens < 2:
            return None
        span = self.last_text - self.first_text
        return (self.completion_tokens - 1) / span if span > 0 else None

    def to_dict(self, nonce: int) -> dict[str, Any]:
        ttft = self.ttft_s
        return {
            "nonce": nonce,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_per_s": _rounded(self.prompt_rate()),
            "completion_tokens_per_s": _rounded(self.completion_rate()),
            "finish_reason": self.finish_reason,
        }


# -- the workload ------------------------------------------------------------------------------------------------


def prompt_text(words: int, nonce: int) -> str:
    """The user message: a nonce (no two requests share a cached prefix), `words` filler words, the instruction."""
    filler = " ".join(FILLER[i % len(FILLER)] for i in range(words))
    return f"Note {nonce}. {filler}\n\n{INSTRUCTION}" if filler else f"Note {nonce}. {INSTRUCTION}"


def chat_body(
    backend: str, words: int, nonce: int, max_tokens: int, model: str | None = None, stream: bool = True
) -> dict[str, Any]:
    """The chat completion request bench sends (`model`: the instance name; None leaves the key out, for a
    request straight to an upstream that picks its own model)."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt_text(words, nonce)}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if model is not None:
        body["model"] = model
    if stream:
        body["stream_options"] = {"include_usage": True}
    if backend in IGNORE_EOS_BACKENDS:
        body["ignore_eos"] = True
    return body


async def send(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Reply:
    """Send one streamed chat completion and read it to the end. Raises BenchFailed on an HTTP error status, an
    error event in the stream, a broken connection, or a stream without `usage`."""
    sent = time.perf_counter()
    first = last = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    finish: str | None = None
    try:
        async with http.stream("POST", url, json=body) as response:
            if response.status_code >= 400:
                raise BenchFailed(f"HTTP {response.status_code}: {_error_text(await response.aread())}")
            async for line in response.aiter_lines():
                chunk = _event(line)
                if chunk is None:
                    continue
                if "error" in chunk:
                    raise BenchFailed(f"the stream ended with an error: {_error_text(json.dumps(chunk['error']))}")
                if _has_text(chunk):
                    last = time.perf_counter()
                    first = first if first is not None else last
                finish = next((c["finish_reason"] for c in _choices(chunk) if c.get("finish_reason")), finish)
                usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else usage
                timings = chunk.get("timings") if isinstance(chunk.get("timings"), dict) else timings
    except httpx.HTTPError as exc:
        raise BenchFailed(f"{type(exc).__name__}: {exc or 'no details'}") from None
    if usage is None:
        raise BenchFailed("the stream carried no usage (the upstream ignored stream_options.include_usage)")
    details = usage.get("prompt_tokens_details") or {}
    return Reply(
        sent=sent,
        first_text=first,
        last_text=last,
        ended=time.perf_counter(),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=finish,
        timings=timings,
    )


def _event(line: str) -> dict[str, Any] | None:
    """A server-sent event's JSON (`data: {...}`); None for comments, blank lines and `[DONE]`."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        raise BenchFailed(f"unreadable stream event: {data[:80]!r}") from None
    return chunk if isinstance(chunk, dict) else None


def _choices(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    choices = chunk.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _has_text(chunk: dict[str, Any]) -> bool:
    """A chunk with generated text: content, or reasoning (llama-server `reasoning_content`, mlx `reasoning`)."""
    for choice in _choices(chunk):
        delta = choice.get("delta") or {}
        if isinstance(delta, dict) and any(delta.get(key) for key in ("content", "reasoning_content", "reasoning")):
            return True
    return False


def _error_text(body: bytes | str) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        payload = json.loads(text)
        error = payload.get("error", payload)
        text = error.get("message", text) if isinstance(error, dict) else str(error)
    return " ".join(text.split())[:ERROR_TEXT]


# -- what to bench, and where ------------------------------------------------------------------------------------


def status_document(paths: StatePaths) -> dict[str, Any]:
    """The supervisor's status document. Raises SupervisorError (exit 3) when none runs, as `llmctl wait` does."""
    if not service.supervisor_is_needed(paths):
        raise SupervisorError(f"no supervisor is running for {paths.root}; start instances with `llmctl up`")
    return client.request(paths, {"op": "status"})


def select(status: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """The named instances of the status document (every llama.cpp, mlx and ollama one when none is named).
    Raises ConfigError for a name the supervisor does not know, or when nothing is left to bench."""
    if names:
        chosen, unknown = statusdoc.select(status["instances"], names)
        if unknown:
            known = ", ".join(sorted(i["name"] for i in status["instances"])) or "none"
            raise ConfigError(f"unknown instance {unknown[0]!r} (known: {known})")
        return chosen
    chosen = [i for i in status["instances"] if i.get("backend") in BENCHED_BACKENDS]
    if not chosen:
        raise ConfigError(f"no {', '.join(BENCHED_BACKENDS)} instance to bench; name the instances to bench")
    return chosen


def gateway_target(status: dict[str, Any], config: Config | None, environ: dict[str, str]) -> tuple[str, str | None]:
    """(the gateway's URL, its API key or None). The URL from the status document, else the config; the key from
    the config's gateway.api_key_env / api_key_file. Raises ConfigError when no gateway runs or the key is
    named but missing."""
    gateway = status.get("gateway")
    url = gateway.get("url") if isinstance(gateway, dict) else None
    spec = config.gateway if config is not None else None
    if not url and spec is not None and gateway is not None:
        url = spec.url
    if not url:
        raise ConfigError(
            "llmctl bench sends its requests through the gateway, and none runs: add `gateway: {port: 8080}` "
            "to the config and run `llmctl up`"
        )
    key = read_secret("gateway.api_key", spec.api_key_env, spec.api_key_file, environ) if spec else None
    return str(url), key


def machine() -> dict[str, Any]:
    """This machine, as the results say it: OS, architecture, CPU model, logical CPUs, RAM in bytes."""
    import psutil

    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    if platform.system() == "Darwin":
        import subprocess

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            )
            if found.returncode == 0 and found.stdout.strip():
                return found.stdout.strip()
    return platform.processor() or platform.machine()


# -- the bench ---------------------------------------------------------------------------------------------------


def run(
    paths: StatePaths,
    config: Config | None,
    names: list[str],
    workload: Workload,
    on_step: Callable[[Step], None] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Bench the instances one after another; the results document:

        {"version": 1, "machine": {...}, "gateway": URL, "workload": {...}, "results": [row, ...]}

    (rows: see `_row`). Raises SupervisorError when no supervisor runs, ConfigError for unknown names or no
    gateway; an instance's own failure is its row's `error`."""
    status = status_document(paths)
    chosen = select(status, names)
    url, key = gateway_target(status, config, dict(os.environ if environ is None else environ))
    rows = asyncio.run(_bench_all(paths, chosen, url, key, workload, on_step or (lambda step: None)))
    return statusdoc.with_version(
        {"machine": machine(), "gateway": url, "workload": workload.to_dict(), "results": rows}
    )


async def _bench_all(
    paths: StatePaths,
    instances: list[dict[str, Any]],
    url: str,
    key: str | None,
    workload: Workload,
    on_step: Callable[[Step], None],
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    widest = max(workload.concurrency, default=1)
    limits = httpx.Limits(max_connections=widest + 2, max_keepalive_connections=widest + 2)
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    total = len(instances) * workload.steps()
    rows = []
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as http:
        for index, instance in enumerate(instances):
            progress = _Progress(instance["name"], index * workload.steps(), total, on_step)
            rows.append(await _bench_one(paths, http, instance, workload, progress))
            progress.finish(workload.steps())
    return rows


class _Progress:
    def __init__(self, name: str, base: int, total: int, on_step: Callable[[Step], None]) -> None:
        self.name, self.base, self.total, self.on_step, self.done = name, base, total, on_step, 0

    def say(self, phase: str) -> None:
        self.on_step(Step(self.name, phase, self.base + self.done, self.total))

    def advance(self, phase: str) -> None:
        self.done += 1
        self.say(phase)

    def finish(self, steps: int) -> None:
        if self.done < steps:  # a failed instance skips what it did not run
            self.done = steps
            self.say("done")


async def _bench_one(
    paths: StatePaths, http: httpx.AsyncClient, instance: dict[str, Any], workload: Workload, progress: _Progress
) -> dict[str, Any]:
    row = _row(instance)
    if instance.get("state") != "healthy" and not instance.get("standby"):
        row["error"] = f"not running (state {instance.get('state')}): start it with `llmctl up {instance['name']}`"
        return row
    watch = _MemoryWatch(paths, instance["name"], dict(instance.get("peak_pools") or {}))
    watcher = asyncio.create_task(watch.run())
    try:
        await _measure(http, instance, workload, progress, row)
    except BenchFailed as exc:
        row["error"] = str(exc)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await asyncio.to_thread(watch.sample)
    row["peak_memory_bytes"] = watch.peak()
    return row


def _row(instance: dict[str, Any]) -> dict[str, Any]:
    """A result row: every key present, null until measured."""
    return {
        "instance": instance["name"],
        "backend": instance.get("backend"),
        "model": instance.get("model"),
        "error": None,
        "cold_start_s": None,
        "ttft_ms": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "prompt_tokens_per_s": None,
        "completion_tokens_per_s": None,
        "rates_from": None,
        "concurrency": {},
        "peak_memory_bytes": None,
        "prompt_words": None,
        "runs": [],
    }


async def _measure(
    http: httpx.AsyncClient, instance: dict[str, Any], workload: Workload, progress: _Progress, row: dict[str, Any]
) -> None:
    """Fill `row` in place (what was measured stays when a later request fails)."""
    name, backend = instance["name"], str(instance.get("backend"))
    cold = bool(instance.get("standby"))
    nonce = 0

    def body(words: int, max_tokens: int) -> dict[str, Any]:
        nonlocal nonce
        nonce += 1
        return chat_body(backend, words, nonce, max_tokens, model=name)

    progress.say("starting" if cold else "first request")
    guess = max(0, workload.prompt_tokens - TEMPLATE_GUESS)
    first = await send(http, "/v1/chat/completions", body(guess, 1))
    if cold:
        row["cold_start_s"] = _rounded(first.ttft_s if first.ttft_s is not None else first.ended - first.sent, 3)
    words = max(0, guess + workload.prompt_tokens - first.prompt_tokens)  # one filler word is about one token
    row["prompt_words"] = words
    progress.advance("one request at a time")

    singles = []
    for _ in range(workload.runs):
        reply = await send(http, "/v1/chat/completions", body(words, workload.max_tokens))
        singles.append(reply)
        row["runs"].append(reply.to_dict(nonce))
        progress.advance("one request at a time")
    _summarise(row, singles)
    for level in workload.concurrency:
        rates = [_aggregate([reply]) for reply in singles] if level == 1 else []
        for _ in range(workload.runs if level != 1 else 0):
            batch = [body(words, workload.max_tokens) for _ in range(level)]
            replies = await asyncio.gather(*(send(http, "/v1/chat/completions", b) for b in batch))
            rates.append(_aggregate(list(replies)))
            progress.advance(f"{level} requests at once")
        known = [rate for rate in rates if rate is not None]
        row["concurrency"][str(level)] = {
            "completion_tokens_per_s": _rounded(statistics.median(known)) if known else None,
            "runs": [_rounded(rate) for rate in rates],
        }


def _summarise(row: dict[str, Any], replies: list[Reply]) -> None:
    """Medians of the sequential runs; token counts as the upstream reported them (the lower median: a count
    one run really had)."""
    row["ttft_ms"] = _median([None if r.ttft_s is None else r.ttft_s * 1000 for r in replies])
    row["prompt_tokens"] = statistics.median_low([r.prompt_tokens for r in replies])
    row["completion_tokens"] = statistics.median_low([r.completion_tokens for r in replies])
    row["prompt_tokens_per_s"] = _median([r.prompt_rate() for r in replies])
    row["completion_tokens_per_s"] = _median([r.completion_rate() for r in replies])
    row["rates_from"] = "timings" if all(r.timings for r in replies) else "clock"


def _aggregate(replies: list[Reply]) -> float | None:
    """Completion tokens of requests sent together, per second of wall time from the first send to the last byte."""
    span = max(r.ended for r in replies) - min(r.sent for r in replies)
    return sum(r.completion_tokens for r in replies) / span if span > 0 else None


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return _rounded(statistics.median(known)) if known else None


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


class _MemoryWatch:
    """The largest memory, by pool, the supervisor measured for one instance while it was benched."""

    def __init__(self, paths: StatePaths, name: str, peaks_before: dict[str, int]) -> None:
        self.paths, self.name, self.before = paths, name, peaks_before
        self.largest: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(MEMORY_POLL_S)

    def sample(self) -> None:
        try:
            status = client.request(self.paths, {"op": "status"}, timeout=10.0)
        except LlmctlError:
            return  # a missed sample: the requests say what is wrong, if anything is
        for instance in status.get("instances", []):
            if instance.get("name") != self.name:
                continue
            for pool, size in (instance.get("memory_pools") or {}).items():
                self._keep(pool, size)
            for pool, size in (instance.get("peak_pools") or {}).items():
                if size > self.before.get(pool, 0):  # a new peak, so measured during this run
                    self._keep(pool, size)

    def _keep(self, pool: str, size: Any) -> None:
        if isinstance(size, int) and size > 0:
            self.largest[pool] = max(self.largest.get(pool, 0), size)

    def peak(self) -> dict[str, int] | None:
        return dict(sorted(self.largest.items())) or None


# -- the chart ---------------------------------------------------------------------------------------------------


def chart_available() -> bool:
    """Whether matplotlib can be imported (the `bench` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw_chart(document: dict[str, Any], path: Path) -> None:
    """A PNG at `path`: per instance, single-request prompt and completion tokens/s, aggregate completion tokens/s
    at each concurrency, and peak memory by pool. Rows with an error are left out. Raises ChartUnavailable
    without matplotlib, OSError when the file cannot be written."""
    try:
        import matplotlib
    except ImportError:
        raise ChartUnavailable('--chart needs matplotlib: pip install -e ".[bench]"') from None
    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    rows = [row for row in document["results"] if not row.get("error")]
    labels = [f"{row['instance']}\n({row['backend']})" for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    _bars(
        axes[0],
        labels,
        {"prompt": _values(rows, "prompt_tokens_per_s"), "completion": _values(rows, "completion_tokens_per_s")},
        "tokens/s, one request (higher is better)",
    )
    levels = document["workload"]["concurrency"]
    by_level = {
        f"{level} at once": [
            (row["concurrency"].get(str(level)) or {}).get("completion_tokens_per_s") or 0.0 for row in rows
        ]
        for level in levels
    }
    _bars(axes[1], labels, by_level, "completion tokens/s, all requests together")
    pools = sorted({pool for row in rows for pool in (row.get("peak_memory_bytes") or {})})
    memory = {pool: [((row.get("peak_memory_bytes") or {}).get(pool) or 0) / 2**20 for row in rows] for pool in pools}
    _bars(axes[2], labels, memory, "peak memory, MiB (lower is better)")
    work, host = document["workload"], document.get("machine") or {}
    ram = (host.get("memory_bytes") or 0) / 2**30
    figure.suptitle(
        f"llmctl bench: ~{work['prompt_tokens']} prompt tokens, up to {work['max_tokens']} generated, "
        f"median of {work['runs']} runs\n{host.get('cpu', '?')}, {host.get('cpus', '?')} CPUs, {ram:.0f} GiB RAM, "
        f"{host.get('system', '')} {host.get('machine', '')}",
        fontsize=10,
    )
    try:
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=110)
    finally:
        plt.close(figure)  # pyplot keeps every figure until closed, failed or not


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(row.get(key) or 0.0) for row in rows]


def _bars(axis: Any, labels: list[str], series: dict[str, list[float]], title: str) -> None:
    """Grouped bars: one group per instance, one bar per series, each bar labelled with its value."""
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        positions = [i - 0.4 + width * (index + 0.5) for i in range(len(labels))]
        bars = axis.bar(positions, values, width, label=name)
        axis.bar_label(bars, labels=[f"{v:.0f}" if v else "" for v in values], fontsize=7)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_title(title, fontsize=9)
    if series:
        axis.legend(fontsize=7)
