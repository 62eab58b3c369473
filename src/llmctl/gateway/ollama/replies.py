"""Upstream replies not streamed (chat completion, completion, llama-server's native /infill shape, embeddings)
-> Ollama's replies, with Ollama's timestamps (rfc3339) and metrics (nanoseconds and tokens, from the upstream's
usage/timings and the front's Clock) [A][T][U][LS][LR][M][R]."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from llmctl.gateway.ollama.errors import OllamaError, upstream_error


def rfc3339(ns: int) -> str:
    """Epoch nanoseconds -> RFC 3339 in UTC with up to nine fraction digits, trailing zeros cut, as Go's
    time.RFC3339Nano writes Ollama's `created_at` (`2024-05-01T10:00:00.123456789Z`) [A]."""
    seconds, fraction = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def done_reason(finish_reason: Any) -> str:
    """OpenAI `finish_reason` -> Ollama `done_reason`: "length" stays, all else (stop, tool_calls) is "stop" [LS]."""
    return "length" if finish_reason == "length" else "stop"


@dataclass
class Clock:
    """The front's own time points, `time.monotonic_ns()` values: `started` when the request arrived, `loaded` when
    the instance was ready and the request went upstream (None: no wait), `first`/`last` token, `end`."""

    started: int
    loaded: int | None = None
    first: int | None = None
    last: int | None = None
    end: int | None = None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> int:
    return int(value) if _number(value) else 0


def _float(value: Any) -> float:
    return float(value) if _number(value) else 0.0


def metrics(usage: dict | None, timings: dict | None, clock: Clock) -> dict[str, int]:
    """Ollama's final metrics, zero values left out [T][U] (units: nanoseconds and tokens) [LS][LR][M]:

    prompt_eval_count = timings.cache_n + prompt_n (llama-server, as Ollama's bridge) else usage.prompt_tokens;
    eval_count = timings.predicted_n else usage.completion_tokens; prompt_eval_duration = timings.prompt_ms
    else request sent -> first token; eval_duration = timings.predicted_ms else first -> last token (for a
    reply not streamed, sent -> end: an upper bound that includes the prompt); total_duration and
    load_duration from the front's clock.
    """
    usage, timings = usage or {}, timings or {}
    end = clock.end if clock.end is not None else time.monotonic_ns()
    sent = clock.loaded if clock.loaded is not None else clock.started
    out = {"total_duration": end - clock.started, "load_duration": sent - clock.started}
    if timings:
        out["prompt_eval_count"] = _int(timings.get("cache_n")) + _int(timings.get("prompt_n"))
        out["prompt_eval_duration"] = round(_float(timings.get("prompt_ms")) * 1e6)
        out["eval_count"] = _int(timings.get("predicted_n"))
        out["eval_duration"] = round(_float(timings.get("predicted_ms")) * 1e6)
    if not out.get("prompt_eval_count"):
        out["prompt_eval_count"] = _int(usage.get("prompt_tokens"))
    if not out.get("eval_count"):
        out["eval_count"] = _int(usage.get("completion_tokens"))
    if not out.get("prompt_eval_duration") and clock.first is not None:
        out["prompt_eval_duration"] = clock.first - sent
    if not out.get("eval_duration"):
        if clock.first is not None:
            out["eval_duration"] = (clock.last or clock.first) - clock.first
        else:
            out["eval_duration"] = end - sent
    return {key: int(value) for key, value in out.items() if value and value > 0}


def tool_calls_from_openai(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` (arguments as JSON text) -> Ollama's (`function.arguments` an object, `index`) [T][LS].

    Raises OllamaError(500) for arguments that are not a JSON object, as Ollama's bridge fails on them [LS]
    (the Python client accepts only a mapping [PT])."""
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        name = function.get("name") or ""
        text = function.get("arguments")
        arguments: Any = text if isinstance(text, dict) else {}
        if isinstance(text, str) and text.strip():
            try:
                arguments = json.loads(text)
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                raise OllamaError(500, f'upstream returned invalid tool call arguments for "{name}": {text[:200]}')
        entry: dict[str, Any] = {"function": {"index": call.get("index", index), "name": name, "arguments": arguments}}
        if call.get("id"):
            entry = {"id": call["id"]} | entry
        out.append(entry)
    return out


def logprobs_from_openai(logprobs: Any) -> list[dict[str, Any]]:
    """OpenAI `choices[].logprobs.content` -> Ollama's `logprobs` list of {token, logprob, top_logprobs} [T]."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    out = []
    for item in content or []:
        entry = {"token": item.get("token", ""), "logprob": item.get("logprob", 0.0)}
        if item.get("top_logprobs"):
            entry["top_logprobs"] = [
                {"token": top.get("token", ""), "logprob": top.get("logprob", 0.0)} for top in item["top_logprobs"]
            ]
        out.append(entry)
    return out


def _first_choice(reply: dict[str, Any]) -> dict[str, Any]:
    choices = reply.get("choices")
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}


def _reply_parts(reply: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]], str, Any]:
    """(text, thinking, OpenAI tool calls, done_reason, logprobs) of an upstream reply not streamed: chat
    completion (`message`), completion (`text`) or llama-server's native shape (`content`, `stop_type`)."""
    if isinstance(reply.get("error"), dict | str):
        raise upstream_error(500, json.dumps(reply).encode())
    choice = _first_choice(reply)
    if not choice and "content" in reply:
        reason = "length" if reply.get("stop_type") == "limit" else "stop"
        return str(reply.get("content") or ""), "", [], reason, None
    message = choice.get("message") or {}
    text = message.get("content") if message else choice.get("text")
    thinking = message.get("reasoning_content") or message.get("reasoning") or ""
    return (
        text or "",
        thinking,
        message.get("tool_calls") or [],
        done_reason(choice.get("finish_reason")),
        choice.get("logprobs"),
    )


def _native_usage(reply: dict[str, Any]) -> dict[str, Any] | None:
    """llama-server's native replies count tokens in tokens_evaluated/tokens_predicted [LR]."""
    if "tokens_predicted" not in reply:
        return reply.get("usage")
    return {"prompt_tokens": reply.get("tokens_evaluated"), "completion_tokens": reply.get("tokens_predicted")}


def chat_response(
    reply: dict[str, Any], model: str, clock: Clock, *, wall: Callable[[], int] = time.time_ns
) -> dict[str, Any]:
    """An upstream's non-streamed chat completion -> Ollama's `/api/chat` reply with `stream: false`:
    `{model, created_at, message: {role, content, thinking?, tool_calls?}, done: true, done_reason, metrics}`.
    Thinking comes from `reasoning_content` (llama-server) or `reasoning` (mlx_lm) [LR][M]. Raises OllamaError
    when the reply is an error or holds tool arguments that are not an object."""
    text, thinking, calls, reason, logprobs = _reply_parts(reply)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = tool_calls_from_openai(calls)
    out: dict[str, Any] = {"model": model, "created_at": rfc3339(wall()), "message": message}
    out.update(done=True, done_reason=reason)
    out.update(metrics(_native_usage(reply), reply.get("timings"), clock))
    if logprobs:
        out["logprobs"] = logprobs_from_openai(logprobs)
    return out


def generate_response(
    reply: dict[str, Any], model: str, clock: Clock, *, wall: Callable[[], int] = time.time_ns
) -> dict[str, Any]:
    """An upstream's non-streamed reply (chat completion, completion or llama-server /infill) -> Ollama's
    `/api/generate` reply: `{model, created_at, response, thinking?, done: true, done_reason, metrics}`.
    `context` (deprecated) is not given. Raises OllamaError for an error reply."""
    text, thinking, _calls, reason, logprobs = _reply_parts(reply)
    out: dict[str, Any] = {"model": model, "created_at": rfc3339(wall()), "response": text}
    if thinking:
        out["thinking"] = thinking
    out.update(done=True, done_reason=reason)
    out.update(metrics(_native_usage(reply), reply.get("timings"), clock))
    if logprobs:
        out["logprobs"] = logprobs_from_openai(logprobs)
    return out


def _vectors(reply: dict[str, Any]) -> list[list[float]]:
    if isinstance(reply.get("error"), dict | str):
        raise upstream_error(500, json.dumps(reply).encode())
    data = reply.get("data")
    if not isinstance(data, list):
        raise OllamaError(500, "upstream returned no embeddings")
    items = sorted((item for item in data if isinstance(item, dict)), key=lambda item: _int(item.get("index")))
    vectors = []
    for item in items:
        vector = item.get("embedding")
        if isinstance(vector, str):  # base64 little-endian float32, OpenAI's encoding_format "base64"
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        if not isinstance(vector, list) or (vector and isinstance(vector[0], list)):
            raise OllamaError(500, "upstream returned an embedding per token: start the server with pooling")
        vectors.append([float(value) for value in vector])
    return vectors


def normalize(vector: list[float]) -> list[float]:
    """L2-normalised `vector`, as Ollama's /api/embed does (routes.go `normalize`, norm floored at 1e-12) [R].
    Raises OllamaError(400) `embedding contains NaN or Inf values`."""
    if any(math.isnan(value) or math.isinf(value) for value in vector):
        raise OllamaError(400, "embedding contains NaN or Inf values")
    scale = 1.0 / max(math.sqrt(sum(value * value for value in vector)), 1e-12)
    return [value * scale for value in vector]


def embed_response(reply: dict[str, Any], model: str, clock: Clock, *, dimensions: int | None = None) -> dict:
    """An OpenAI embeddings reply -> Ollama's `/api/embed` reply `{model, embeddings, total_duration,
    load_duration, prompt_eval_count}`: each vector L2-normalised, then cut to `dimensions` (when smaller) and
    normalised again, as Ollama does [R]. Raises OllamaError."""
    vectors = [normalize(vector) for vector in _vectors(reply)]
    if dimensions and dimensions > 0:
        vectors = [normalize(vector[:dimensions]) if dimensions < len(vector) else vector for vector in vectors]
    out: dict[str, Any] = {"model": model, "embeddings": vectors}
    end = clock.end if clock.end is not None else time.monotonic_ns()
    sent = clock.loaded if clock.loaded is not None else clock.started
    numbers = {
        "total_duration": end - clock.started,
        "load_duration": sent - clock.started,
        "prompt_eval_count": _int((reply.get("usage") or {}).get("prompt_tokens")),
    }
    out.update({key: value for key, value in numbers.items() if value > 0})
    return out


def embeddings_response(reply: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings reply -> the legacy `/api/embeddings` reply `{"embedding": [...]}`, not normalised
    [R]. Raises OllamaError."""
    vectors = _vectors(reply)
    return {"embedding": vectors[0] if vectors else []}
