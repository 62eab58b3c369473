"""Upstream SSE streams -> Ollama's NDJSON streams [A][ST]: SseParser reads the events (OpenAI chunks, mlx_lm's
keepalives, llama-server's native /infill chunks and `error:` field) [LR][M]; ChatStream and GenerateStream emit
one line per piece of text as it arrives and a last `done: true` line with the metrics, or an error line."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from llmctl.gateway.ollama.errors import OllamaError, _error_text, _line, error_line
from llmctl.gateway.ollama.replies import (
    Clock,
    _first_choice,
    _int,
    _native_usage,
    done_reason,
    logprobs_from_openai,
    metrics,
    rfc3339,
    tool_calls_from_openai,
)


class SseParser:
    """Server-sent events from bytes split anywhere: `feed(chunk)` -> [(event name, data text)].

    Lines end in LF, CRLF or CR; `:` lines are comments (mlx_lm's `: keepalive`) [M]; several `data:` lines join
    with LF; an event ends at a blank line. A bare JSON line (no field name) counts as data, and llama-server's
    `error: {...}` field as an `error` event. `flush()` gives an event the upstream left unterminated.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        self._buffer += chunk
        lines = re.split(rb"\r\n|\r(?!$)|\n", self._buffer)
        self._buffer = lines.pop()  # an incomplete line (or a lone CR that may start a CRLF)
        events = []
        for raw in lines:
            event = self._take(raw.rstrip(b"\r").decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[tuple[str, str]]:
        events = self.feed(b"\n") if self._buffer else []
        if self._data:
            events.append((self._event or "message", "\n".join(self._data)))
        self._event, self._data = "", []
        return events

    def _take(self, line: str) -> tuple[str, str] | None:
        if not line:
            event = (self._event or "message", "\n".join(self._data)) if self._data else None
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":") if not line.startswith(("{", "[")) else ("data", "", line)
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "error":
            self._event = "error"
            self._data.append(value)
        return None


class _Stream:
    """Shared work of ChatStream and GenerateStream: parse the upstream's SSE, emit one NDJSON line per piece of
    text as it arrives, keep usage/timings/finish_reason, join tool-call fragments per `index`."""

    def __init__(
        self,
        model: str,
        *,
        started_ns: int,
        loaded_ns: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        self.model = model
        self.clock = Clock(started=started_ns, loaded=loaded_ns)
        self._now, self._wall = clock, wall
        self._sse = SseParser()
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.failed = False
        self.finished = False
        self._tools: dict[int, dict[str, str]] = {}
        self._tools_sent = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Upstream bytes -> the NDJSON lines (each ending in `\\n`) they complete; [] after an error."""
        if self.failed or self.finished:
            return []
        return self._events(self._sse.feed(chunk))

    def finish(self) -> list[bytes]:
        """The last lines once the upstream ended: text still buffered, tool calls not yet sent, then the
        `done: true` line with done_reason and metrics. [] when the stream already ended with an error."""
        if self.failed or self.finished:
            return []
        lines = self._events(self._sse.flush())
        if self.failed:
            return lines
        lines += self._tool_lines()
        self.finished = True
        self.clock.end = self._now()
        final = self._frame({"done": True, "done_reason": done_reason(self.finish_reason)}, final=True)
        final.update(metrics(self.usage, self.timings, self.clock))
        return [*lines, _line(final)]

    def fail(self, message: str) -> list[bytes]:
        """Ends the stream with Ollama's error line (e.g. the upstream connection broke); [] if already ended."""
        if self.failed or self.finished:
            return []
        self.failed = True
        return [error_line(message)]

    def _events(self, events: list[tuple[str, str]]) -> list[bytes]:
        lines: list[bytes] = []
        for event, data in events:
            if self.failed:
                break
            lines += self._event(event, data)
        return lines

    def _event(self, event: str, data: str) -> list[bytes]:
        if data.strip() == "[DONE]":
            return []
        try:
            obj = json.loads(data)
        except ValueError:
            return self.fail(f"upstream sent a malformed event: {data[:200]}")
        if event == "error" or not isinstance(obj, dict) or "error" in obj:
            return self.fail(_error_text(obj if isinstance(obj, dict) else data) or "upstream error")
        if isinstance(obj.get("timings"), dict):
            self.timings = obj["timings"]
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        if "choices" not in obj and "content" in obj:
            return self._native(obj)
        choice = _first_choice(obj)
        delta = choice.get("delta") or {}
        text = delta.get("content") if "delta" in choice else choice.get("text")
        thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
        for fragment in delta.get("tool_calls") or []:
            self._join_tool(fragment)
        lines = self._text(text or "", thinking, logprobs_from_openai(choice.get("logprobs")))
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            lines += self._tool_lines()
        return lines

    def _native(self, obj: dict[str, Any]) -> list[bytes]:
        """llama-server's native stream (/infill): `content` per chunk; the last has `stop`, `stop_type`."""
        lines = self._text(str(obj.get("content") or ""), "", [])
        if obj.get("stop"):
            self.finish_reason = "length" if obj.get("stop_type") == "limit" else "stop"
            self.usage = _native_usage(obj)
        return lines

    def _join_tool(self, fragment: dict[str, Any]) -> None:
        """OpenAI streams a call as fragments with one `index`: the first names it, the rest add argument text."""
        slot = self._tools.setdefault(_int(fragment.get("index")), {"id": "", "name": "", "arguments": ""})
        function = fragment.get("function") or {}
        slot["id"] += fragment.get("id") or ""
        slot["name"] += function.get("name") or ""
        arguments = function.get("arguments")
        slot["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments) if arguments else ""

    def _tool_lines(self) -> list[bytes]:
        if self._tools_sent or not self._tools:
            return []
        self._tools_sent = True
        calls = [
            {"index": index, "id": slot["id"], "function": {"name": slot["name"], "arguments": slot["arguments"]}}
            for index, slot in sorted(self._tools.items())
        ]
        try:
            converted = tool_calls_from_openai(calls)
        except OllamaError as error:
            return self.fail(error.message)
        return [_line(self._frame({"done": False}, tool_calls=converted))]

    def _text(self, text: str, thinking: str, logprobs: list[dict[str, Any]]) -> list[bytes]:
        if not text and not thinking and not logprobs:
            return []
        now = self._now()
        if self.clock.first is None:
            self.clock.first = now
        self.clock.last = now
        frame = self._frame({"done": False}, text=text, thinking=thinking)
        if logprobs:
            frame["logprobs"] = logprobs
        return [_line(frame)]

    def _frame(self, tail: dict[str, Any], **parts: Any) -> dict[str, Any]:
        raise NotImplementedError


class ChatStream(_Stream):
    """An upstream chat-completion SSE stream -> Ollama `/api/chat` NDJSON [A][ST]:
    `{"model", "created_at", "message": {"role": "assistant", "content", "thinking"?, "tool_calls"?}, "done": false}`
    per piece, then (finish) `{..., "done": true, "done_reason", metrics}`; an upstream error ends it with
    `{"error": "..."}`. Construct with the name the client asked for and the clock values (monotonic ns)."""

    def _frame(self, tail: dict[str, Any], text: str = "", thinking: str = "", **parts: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if parts.get("tool_calls"):
            message["tool_calls"] = parts["tool_calls"]
        return {"model": self.model, "created_at": rfc3339(self._wall()), "message": message} | tail


class GenerateStream(_Stream):
    """An upstream stream (chat completion, completion, or llama-server /infill) -> Ollama `/api/generate`
    NDJSON: `{"model", "created_at", "response", "thinking"?, "done": false}` per piece, then the `done: true`
    line with done_reason and metrics; errors as in ChatStream. Tool calls have no place here and are dropped."""

    def _frame(self, tail: dict[str, Any], text: str = "", thinking: str = "", **parts: Any) -> dict[str, Any]:
        if parts.get("tool_calls"):
            return {"model": self.model, "created_at": rfc3339(self._wall()), "response": ""} | tail
        out: dict[str, Any] = {"model": self.model, "created_at": rfc3339(self._wall()), "response": text}
        if thinking:
            out["thinking"] = thinking
        return out | tail

    def _tool_lines(self) -> list[bytes]:
        self._tools_sent = True
        return []
