"""Ollama's native API, translated to and from the OpenAI API that llama-server and mlx_lm.server speak.

Pure functions and small stateful stream translators: no sockets, no files except the model header reads of
`model_details`. The HTTP handlers (llmctl.gateway.server) call them:

    name = request_model(body, "chat")                      # OllamaError(400, "model is required")
    up = chat_request(body, upstream_model, "llama.cpp")    # UpstreamRequest(path, payload, stream, dropped)
    if up.stream:
        stream = ChatStream(name, started_ns=t0)
        for chunk in upstream: send(stream.feed(chunk))     # NDJSON lines as tokens arrive
        send(stream.finish())                               # the `done: true` line with the metrics
    else:
        send(json.dumps(chat_response(upstream_json, name, started_ns=t0)))

Facts come from /work/shared/OLLAMA-API.md; its source keys are cited as [A] (ollama docs/api.md), [T]/[R]
(ollama api/types.go, server/routes.go), [LS] (ollama llm/llama_server.go, Ollama's own llama-server bridge),
[N] (ollama types/model/name.go), [PT] (ollama-python _types.py), [LR]/[LT] (llama.cpp tools/server README,
server-task.cpp), [M] (mlx-lm mlx_lm/server.py), all at the commits that file lists (ollama fb3076099687).

Units: durations in Ollama's replies are integer nanoseconds; clocks passed in are `time.monotonic_ns()` values;
`keep_alive` comes out in seconds. Zero metrics are left out, as Go's `omitempty` does [T].
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from llmctl.memory.gguf import GgufError, read_gguf

LLAMA_CPP = "llama.cpp"  # llmctl.backends.llama_cpp.LlamaCpp.name
MLX = "mlx"  # llmctl.backends.mlx.Mlx.name
OPENAI = "openai"  # any other OpenAI-compatible server: standard fields only

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
INFILL_PATH = "/infill"  # llama-server's fill-in-the-middle endpoint [LC][LR]
EMBEDDINGS_PATH = "/v1/embeddings"

FOREVER = -1.0  # parse_keep_alive's value for "never unload"
_MAX_NS = 2**63 - 1  # Go's time.Duration limit: Ollama's "forever" [T]
THINK_LEVELS = ("high", "medium", "low", "max")  # api/types.go ThinkValue [T]


# --- errors ---------------------------------------------------------------------------------------------------


class OllamaError(Exception):
    """A request Ollama's API refuses: `status` is the HTTP status, `message` the text for `{"error": message}`.

    Texts copy Ollama's server/routes.go where it has one [R], so a client matching on them keeps working.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def message(self) -> str:
        """The message, as given."""
        return str(self)


def error_body(message: str) -> dict[str, str]:
    """Ollama's error shape, `{"error": message}`, used with any status and as a stream's last line [R][ER]."""
    return {"error": message}


def error_line(message: str) -> bytes:
    """An NDJSON error line, the way Ollama ends a stream that fails after output began [R][ST]."""
    return _line(error_body(message))


def upstream_error(status: int, body: bytes) -> OllamaError:
    """An upstream's error reply (OpenAI's `{"error": {"message"}}`, llama-server's `{"error": {"code","message"}}`,
    mlx_lm's `{"error": "text"}`, or any text) as an OllamaError with the same status (500 when not an error)."""
    message = _error_text(body) or f"upstream answered HTTP {status}"
    return OllamaError(status if status >= 400 else 500, message)


def _error_text(body: bytes | str | dict[str, Any]) -> str:
    data: Any = body
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            data = json.loads(text)
        except ValueError:
            return text.strip()[:1000]
    if isinstance(data, dict):
        inner = data.get("error", data.get("detail", data.get("message")))
        if isinstance(inner, dict):
            inner = inner.get("message", inner)
        if inner is not None:
            return inner if isinstance(inner, str) else json.dumps(inner)
    return json.dumps(data)[:1000]


# --- names --------------------------------------------------------------------------------------------------


def _split_tag(name: str) -> tuple[str, str | None]:
    """(`name` without its tag, the tag or None). The tag is the text after the last `:` when that follows the
    last `/` [N], so `host:port/model` has none."""
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, None


def base_name(name: str) -> str:
    """`NAME:latest` (tag matched case-insensitively) -> `NAME`; any other name unchanged.

    Ollama treats `NAME` and `NAME:latest` as one model, names being case-insensitive [N]; llmctl's names carry
    no tag, so this is the name to look up. Other tags (`qwen:7b`) are kept: they may be llmctl aliases.
    """
    stem, tag = _split_tag(name)
    return stem if tag is not None and tag.lower() == "latest" and stem else name


def display_name(name: str) -> str:
    """The name as Ollama lists it, `model:tag`: `NAME` -> `NAME:latest`; a name with a tag is kept [N][A]."""
    return name if _split_tag(name)[1] is not None else f"{name}:latest"


def match_name(asked: str, names: Iterable[str]) -> str | None:
    """The one of `names` that `asked` means, or None: exact, then without `:latest`, then case-insensitively
    (Ollama's names compare case-insensitively [N]). Exact matches win so that distinct llmctl names that differ
    only in case stay distinct."""
    known = list(names)
    for wanted in dict.fromkeys((asked, base_name(asked))):
        if wanted in known:
            return wanted
    folded = {name.casefold(): name for name in known}
    return folded.get(asked.casefold()) or folded.get(base_name(asked).casefold())


def request_model(body: Any, endpoint: str) -> str:
    """The `model` of an Ollama request body, checked as Ollama checks it [R].

    `endpoint` is "chat", "generate", "embed", "embeddings" or "show". A missing or empty model is a 400
    `model is required` on chat, embeddings and show, and a 404 `model '' not found` on generate and embed
    (routes.go: those handlers fall back to the not-found text). `show` also reads the old `name` field [A].
    Raises OllamaError.
    """
    if not isinstance(body, dict):
        raise OllamaError(400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.Request")
    model = body.get("model")
    if endpoint == "show" and not model:
        model = body.get("name")
    if model is not None and not isinstance(model, str):
        raise OllamaError(400, f"json: cannot unmarshal {_go_type(model)} into Go struct field .model of type string")
    if not model:
        if endpoint in ("generate", "embed"):
            raise OllamaError(404, "model '' not found")
        raise OllamaError(400, "model is required")
    return model


def _go_type(value: Any) -> str:
    """The JSON kind as Go's encoding/json names it in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


# --- keep_alive ---------------------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d*\.?\d*)([^\d.]*)")


def parse_keep_alive(value: Any) -> float | None:
    """`keep_alive` in seconds: None when absent (or null), 0 to unload when the request ends, FOREVER (-1.0) for
    any negative value (never unload), else a positive number of seconds.

    A JSON number is seconds (fractions allowed); a string is a Go duration such as "5m", "1h30m", "-1s", "0",
    "250ms": a unit is required except for "0", so "300" is refused [T] (api/types.go Duration.UnmarshalJSON,
    which calls time.ParseDuration). Raises OllamaError(400) with Go's texts for bad values.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise OllamaError(400, f"Unsupported type: '{_go_type(value)}'")
    seconds = _go_duration(value) if isinstance(value, str) else float(value)
    if math.isnan(seconds):
        raise OllamaError(400, f"time: invalid duration {json.dumps(str(value))}")
    return FOREVER if seconds < 0 else min(seconds, _MAX_NS / 1e9)


def _go_duration(text: str) -> float:
    """time.ParseDuration's grammar, `[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`, in seconds; "0" needs no unit."""
    quoted = json.dumps(text)
    rest, sign = text, 1.0
    if rest[:1] in "+-" and rest:
        sign, rest = (-1.0 if rest[0] == "-" else 1.0), rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise OllamaError(400, f"time: invalid duration {quoted}")
    total, position = 0.0, 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        number, unit = (match.group(1), match.group(2)) if match else ("", "")
        if number in ("", "."):
            raise OllamaError(400, f"time: invalid duration {quoted}")
        if not unit:
            raise OllamaError(400, f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise OllamaError(400, f"time: unknown unit {json.dumps(unit)} in duration {quoted}")
        total += float(number) * _DURATION_UNITS[unit]
        position = match.end() if match else len(rest)
    if total * 1e9 > _MAX_NS:
        raise OllamaError(400, f"time: invalid duration {quoted}")
    return sign * total


def is_load_request(body: dict[str, Any], endpoint: str) -> bool:
    """True when the request only loads or unloads its model: `/api/generate` with an empty `prompt`, `/api/chat`
    with no `messages`, `/api/embed` with an empty `input`, `/api/embeddings` with an empty `prompt` [R][A].
    (For generate, a `suffix` alone still generates.) The caller answers with `load_response`."""
    if endpoint == "chat":
        return not body.get("messages")
    if endpoint == "generate":
        return not body.get("prompt") and not body.get("suffix")
    if endpoint == "embed":
        return not body.get("input")
    if endpoint == "embeddings":
        return not body.get("prompt")
    return False


def load_response(model: str, endpoint: str, unloaded: bool, *, wall: Callable[[], int] = time.time_ns) -> dict:
    """The reply to a load/unload-only request [R]: chat and generate say `done_reason` "load" or "unload";
    embed gives `{"model", "embeddings": []}`, embeddings `{"embedding": []}`."""
    if endpoint == "embed":
        return {"model": model, "embeddings": []}
    if endpoint == "embeddings":
        return {"embedding": []}
    reply: dict[str, Any] = {"model": model, "created_at": rfc3339(wall())}
    if endpoint == "chat":
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    reply.update(done=True, done_reason="unload" if unloaded else "load")
    return reply


# --- options ------------------------------------------------------------------------------------------------

_INT, _FLOAT, _BOOL, _STRINGS = "integer", "float32", "boolean", "array"


@dataclass(frozen=True)
class Option:
    """One Ollama `options` key: its Go type (None: Ollama does not read it) and its name in each upstream's
    request (None: no equivalent, dropped). Columns: OpenAI's standard fields, llama-server, mlx_lm.server."""

    kind: str | None
    openai: str | None
    llama_cpp: str | None
    mlx: str | None
    note: str = ""


# The table of OLLAMA-API.md §4 [T][LT][LR][M][MD]. Ollama's own bridge sends the llama-server names [LS].
MAPPING: dict[str, Option] = {
    "temperature": Option(_FLOAT, "temperature", "temperature", "temperature"),
    "top_p": Option(_FLOAT, "top_p", "top_p", "top_p"),
    "top_k": Option(_INT, None, "top_k", "top_k"),
    "min_p": Option(_FLOAT, None, "min_p", "min_p"),
    "typical_p": Option(_FLOAT, None, "typical_p", None),
    "seed": Option(_INT, "seed", "seed", "seed"),
    "num_predict": Option(_INT, "max_tokens", "max_tokens", "max_tokens", "negative = no cap: sent to llama-server"),
    "stop": Option(_STRINGS, "stop", "stop", "stop"),
    "repeat_penalty": Option(_FLOAT, None, "repeat_penalty", "repetition_penalty"),
    "repeat_last_n": Option(_INT, None, "repeat_last_n", "repetition_context_size"),
    "presence_penalty": Option(_FLOAT, "presence_penalty", "presence_penalty", "presence_penalty"),
    "frequency_penalty": Option(_FLOAT, "frequency_penalty", "frequency_penalty", "frequency_penalty"),
    "num_keep": Option(_INT, None, "n_keep", None),
    "mirostat": Option(None, None, "mirostat", None, "the Python client's field; Ollama's server skips it"),
    "mirostat_tau": Option(None, None, "mirostat_tau", None, "as mirostat"),
    "mirostat_eta": Option(None, None, "mirostat_eta", None, "as mirostat"),
    # Fixed when the server starts (llama-server flags, mlx_lm.server arguments): set them in llmctl's config.
    "num_ctx": Option(_INT, None, None, None, "launch setting (context size in the config)"),
    "num_batch": Option(_INT, None, None, None, "launch setting"),
    "num_gpu": Option(_INT, None, None, None, "launch setting"),
    "main_gpu": Option(_INT, None, None, None, "launch setting"),
    "use_mmap": Option(_BOOL, None, None, None, "launch setting"),
    "num_thread": Option(_INT, None, None, None, "launch setting"),
    "draft_num_predict": Option(_INT, None, None, None, "launch setting"),
}


def _column(backend: str) -> str:
    return {LLAMA_CPP: "llama_cpp", MLX: "mlx"}.get(backend, "openai")


def _checked_option(key: str, value: Any, kind: str | None) -> Any:
    """`value` as Ollama's Options.FromMap accepts it for a field of `kind` [T]; raises OllamaError(400)."""
    if kind is None:
        return value
    if kind in (_INT, _FLOAT):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OllamaError(400, f'option "{key}" must be of type {kind}')
        return int(value) if kind == _INT else value  # Go truncates a JSON float into an int field
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise OllamaError(400, f'option "{key}" must be of type boolean')
        return value
    if not isinstance(value, list):
        raise OllamaError(400, f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in value):
        raise OllamaError(400, f'option "{key}" must be of an array of strings')
    return value


def map_options(options: Any, backend: str) -> tuple[dict[str, Any], list[str]]:
    """Ollama `options` -> (fields for the upstream's JSON body, names dropped), per MAPPING and `backend`
    ("llama.cpp", "mlx", anything else = standard OpenAI fields only).

    Unknown keys are dropped, as Ollama skips them with a log line [T]; null values are skipped; a wrong type is
    OllamaError(400) with Ollama's text (`option "top_k" must be of type integer`).
    """
    if options is None:
        return {}, []
    if not isinstance(options, dict):
        raise OllamaError(400, f"json: cannot unmarshal {_go_type(options)} into Go struct field .options of type map")
    column = _column(backend)
    fields: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in options.items():
        option = MAPPING.get(key)
        if option is None or value is None:
            dropped += [key] if value is not None else []
            continue
        value = _checked_option(key, value, option.kind)
        target = getattr(option, column)
        if key == "num_predict" and value < 0 and backend != LLAMA_CPP:
            target = None  # "no cap": only llama-server has a way to say it (-1); elsewhere, the server's default
        if target is None:
            dropped.append(key)
        else:
            fields[target] = value
    return fields, dropped


# --- requests -----------------------------------------------------------------------------------------------


class UpstreamRequest(NamedTuple):
    """What to send upstream: `path` (e.g. "/v1/chat/completions"), JSON `payload`, whether the client asked for
    a stream (`stream`, Ollama's default being true), and the request fields `dropped` for lack of an equivalent
    (for one debug line)."""

    path: str
    payload: dict[str, Any]
    stream: bool
    dropped: list[str]


def _want(body: dict[str, Any], key: str, kinds: tuple[type, ...], go: str) -> Any:
    """`body[key]` when it is absent, null or one of `kinds`; else Go's bind error as a 400."""
    value = body.get(key)
    if value is None or (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
        return value
    raise OllamaError(400, f"json: cannot unmarshal {_go_type(value)} into Go struct field .{key} of type {go}")


def _stream_flag(body: dict[str, Any]) -> bool:
    """Ollama streams unless `stream` is false [R][ST]."""
    return _want(body, "stream", (bool,), "bool") is not False


def _think_fields(think: Any, capabilities: Iterable[str] | None, model: str) -> dict[str, Any]:
    """`think` -> `chat_template_kwargs` as Ollama's own llama-server bridge sends it: enable_thinking, plus
    reasoning_effort for a level [LS] (mlx_lm.server passes chat_template_kwargs to the template too [M]).

    Raises OllamaError(400) for a bad value (api/types.go texts) or for thinking asked of a model whose
    `capabilities` (when known) lack "thinking" (routes.go: `"m" does not support thinking`) [T][R].
    """
    if think is None:
        return {}
    if isinstance(think, str):
        if think not in THINK_LEVELS:
            raise OllamaError(
                400, f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)'
            )
    elif not isinstance(think, bool):
        raise OllamaError(400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)')
    enabled = think is not False
    if enabled and capabilities is not None and "thinking" not in capabilities:
        raise OllamaError(400, f'"{model}" does not support thinking')
    kwargs: dict[str, Any] = {"enable_thinking": enabled}
    if isinstance(think, str):
        kwargs["reasoning_effort"] = think
    return {"chat_template_kwargs": kwargs}


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """Ollama `format` -> OpenAI `response_format`: "json" -> json_object, a schema -> json_schema [LS][LC]."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    raise OllamaError(
        400, f'invalid format: {json.dumps(json.dumps(fmt))}; expected "json" or a valid JSON Schema object'
    )


def _logprob_fields(body: dict[str, Any]) -> dict[str, Any]:
    """`logprobs`/`top_logprobs` -> OpenAI's; top_logprobs must be 0..20 (routes.go text) [R]."""
    top = _want(body, "top_logprobs", (int,), "int") or 0
    if not 0 <= top <= 20:
        raise OllamaError(400, "top_logprobs must be between 0 and 20")
    if not _want(body, "logprobs", (bool,), "bool"):
        return {}
    return {"logprobs": True, "top_logprobs": max(top, 1)} if top else {"logprobs": True}


def _stream_fields(stream: bool) -> dict[str, Any]:
    # Usage arrives in a last chunk only when asked for [LR]; mlx_lm.server reads the key unconditionally [M].
    return {"stream": True, "stream_options": {"include_usage": True}} if stream else {"stream": False}


# Leading bytes of the image formats Go's http.DetectContentType knows, the sniffing Ollama's bridge does [LS].
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
)
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def image_bytes(data: Any) -> bytes:
    """An Ollama image (bare standard base64, as Go's []byte JSON encoding expects) decoded; raises OllamaError(400)
    like Go's decoder: `illegal base64 data at input byte N`. A data URL is refused the same way, as Ollama
    refuses it (ollama-js#68)."""
    if not isinstance(data, str):
        raise OllamaError(400, f"json: cannot unmarshal {_go_type(data)} into Go struct field .images of type []uint8")
    raw = data.encode("ascii", "replace")
    valid = _BASE64.match(raw)
    end = valid.end() if valid else 0
    try:
        if end != len(raw):
            raise binascii.Error
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise OllamaError(400, f"illegal base64 data at input byte {min(end, max(len(raw) - 1, 0))}") from None


def sniff_media(data: bytes) -> tuple[str, str]:
    """("image" | "audio", MIME type or audio format) from leading bytes; unknown -> ("image", "image/jpeg"),
    the default of Ollama's bridge [LS]. WAV and MP3 become OpenAI `input_audio` parts, as the bridge does."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image", "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio", "wav"
    if data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio", "mp3"
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return "image", mime
    return "image", "image/jpeg"


def media_part(data: Any) -> dict[str, Any]:
    """One Ollama image (bare base64) -> an OpenAI content part: `image_url` with a data URL (llama-server needs
    the `data:image/...;base64,` form [LC]) or `input_audio`. Raises OllamaError(400) for bad base64."""
    decoded = image_bytes(data)
    kind, mime = sniff_media(decoded)
    text = base64.b64encode(decoded).decode("ascii")
    if kind == "audio":
        return {"type": "input_audio", "input_audio": {"data": text, "format": mime}}
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{text}"}}


def _content(text: str, images: list[Any] | None, multimodal: bool, dropped: list[str]) -> Any:
    if not images:
        return text
    if not multimodal:
        dropped.append("images")
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [media_part(image) for image in images]


def tool_arguments_text(arguments: Any) -> str:
    """Ollama's `arguments` object -> OpenAI's JSON text (mlx_lm.server json.loads it [M]); text is kept."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps({} if arguments is None else arguments, ensure_ascii=False)


@dataclass
class _Conversation:
    """State while translating messages: ids given to tool calls that came without one, per function name, so a
    later tool result without `tool_call_id` can name its call (OpenAI servers pair them by id)."""

    backend: str
    multimodal: bool
    dropped: list[str]
    pending: dict[str, list[str]] = field(default_factory=dict)
    count: int = 0

    def tool_calls(self, calls: Any) -> list[dict[str, Any]]:
        if not isinstance(calls, list):
            raise OllamaError(400, "json: cannot unmarshal tool_calls: expected an array")
        out = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise OllamaError(400, "invalid tool call: function.name is required")
            call_id = call.get("id") or f"call_{self.count}"
            self.count += 1
            self.pending.setdefault(function["name"], []).append(call_id)
            text = tool_arguments_text(function.get("arguments"))
            out.append({"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": text}})
        return out

    def message(self, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise OllamaError(400, f"json: cannot unmarshal {_go_type(message)} into Go struct field .messages")
        role = _want(message, "role", (str,), "string") or ""
        text = _want(message, "content", (str,), "string") or ""
        images = _want(message, "images", (list,), "[]api.ImageData")
        out: dict[str, Any] = {"role": role, "content": _content(text, images, self.multimodal, self.dropped)}
        if message.get("tool_calls"):
            out["tool_calls"] = self.tool_calls(message["tool_calls"])
        thinking = message.get("thinking")
        if thinking and role == "assistant" and self.backend == LLAMA_CPP:
            out["reasoning_content"] = thinking  # llama-server renders earlier reasoning with the template [LC]
        if role == "tool":
            name = message.get("tool_name")
            call_id = message.get("tool_call_id") or self._pop_pending(name)
            if call_id:
                out["tool_call_id"] = call_id
            if name and self.backend == LLAMA_CPP:
                out["name"] = name  # as Ollama's bridge sends it [LS]
        return out

    def _pop_pending(self, name: Any) -> str | None:
        ids = self.pending.get(name) if isinstance(name, str) else None
        if ids:
            return ids.pop(0)
        for ids in self.pending.values():  # a result naming no tool answers the oldest call still open
            if ids:
                return ids.pop(0)
        return None


def _common(body: dict[str, Any], backend: str, model: str, capabilities: Iterable[str] | None) -> tuple[dict, list]:
    """The fields /api/chat and /api/generate share: options, format, think, logprobs."""
    fields, dropped = map_options(body.get("options"), backend)
    response_format = _response_format(body.get("format"))
    if response_format is not None:
        if backend == MLX:
            dropped.append("format")  # mlx_lm.server has no structured output [M]
        else:
            fields["response_format"] = response_format
    fields.update(_think_fields(body.get("think"), capabilities, model))
    fields.update(_logprob_fields(body))
    return fields, dropped


def _with_model(upstream_model: str | None) -> dict[str, Any]:
    # No model for mlx_lm.server: it would read any other name as a repository to download [M][MD].
    return {"model": upstream_model} if upstream_model else {}


def chat_request(
    body: dict[str, Any],
    upstream_model: str | None,
    backend: str,
    *,
    multimodal: bool | None = None,
    capabilities: Iterable[str] | None = None,
) -> UpstreamRequest:
    """An Ollama `/api/chat` body -> the OpenAI `/v1/chat/completions` request for `backend` ("llama.cpp",
    "mlx", other: standard fields).

    messages: `images` (bare base64) -> content parts with data URLs when `multimodal` (default: not for mlx,
    whose server rejects parts [M]; dropped images are reported); `tool_calls[].function.arguments` object ->
    JSON text; tool results keep `tool_call_id` or get the id of the open call of `tool_name`. `tools` pass as
    they are; `format` -> `response_format`; `options` per MAPPING; `think` -> `chat_template_kwargs`
    (`capabilities`, when known, lets a non-thinking model refuse `think: true` as Ollama does).
    `keep_alive` is the caller's (parse_keep_alive); `truncate`/`shift` have no upstream equivalent.
    Raises OllamaError(400) for what Ollama refuses.
    """
    model = request_model(body, "chat")
    stream = _stream_flag(body)
    messages = _want(body, "messages", (list,), "[]api.Message") or []
    fields, dropped = _common(body, backend, model, capabilities)
    conversation = _Conversation(backend, backend != MLX if multimodal is None else multimodal, dropped)
    payload: dict[str, Any] = _with_model(upstream_model)
    payload["messages"] = [conversation.message(message) for message in messages]
    tools = _tools(body)
    if tools:
        payload["tools"] = tools
    payload.update(fields)
    payload.update(_stream_fields(stream))
    dropped += [key for key in ("truncate", "shift") if body.get(key) is not None]
    return UpstreamRequest(CHAT_PATH, payload, stream, list(dict.fromkeys(dropped)))


def _tools(body: dict[str, Any]) -> list[Any] | None:
    """`tools`, checked: a list of objects whose `function` is an object with a non-empty string `name`.
    Go's decoder refuses what is not an object [T]; a function without a name would reach the upstream, which
    answers 500 with its parser's text (llama-server: "Failed to parse tools"), so it is a 400 here."""
    tools = _want(body, "tools", (list,), "[]api.Tool")
    for tool in tools or []:
        if not isinstance(tool, dict):
            raise OllamaError(
                400, f"json: cannot unmarshal {_go_type(tool)} into Go struct field .tools of type api.Tool"
            )
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise OllamaError(400, "invalid tool: function.name is required")
    return tools


def generate_request(
    body: dict[str, Any],
    upstream_model: str | None,
    backend: str,
    *,
    multimodal: bool | None = None,
    capabilities: Iterable[str] | None = None,
) -> UpstreamRequest:
    """An Ollama `/api/generate` body -> the upstream request [A][R][LC][LR]:

    - default: `/v1/chat/completions` with `system` (when given) and `prompt` + `images` as a user message, so
      the server's chat template applies as Ollama's template would;
    - `raw: true`: `/v1/completions` with the prompt as is (with `template`, `system` or `context`: 400
      `raw mode does not support template, system, or context`, Ollama's text); images are dropped;
    - `suffix`: llama-server `/infill` (`input_prefix`, `input_suffix`); other backends have no fill-in-the-
      middle: 400 `"model" does not support insert`;
    - `template`: 400, a template is fixed when the server starts; `context` (deprecated token list): dropped.
    Raises OllamaError.
    """
    model = request_model(body, "generate")
    stream = _stream_flag(body)
    prompt = _want(body, "prompt", (str,), "string") or ""
    system = _want(body, "system", (str,), "string") or ""
    suffix = _want(body, "suffix", (str,), "string") or ""
    raw = bool(_want(body, "raw", (bool,), "bool"))
    template = _want(body, "template", (str,), "string")
    context = _want(body, "context", (list,), "[]int")
    if context and not all(isinstance(item, int) and not isinstance(item, bool) for item in context):
        raise OllamaError(400, "json: cannot unmarshal context: expected an array of integers")
    if raw and (template or system or body.get("context")):
        raise OllamaError(400, "raw mode does not support template, system, or context")
    if template:
        raise OllamaError(400, "template is not supported: the prompt template is the one the server was started with")
    fields, dropped = _common(body, backend, model, capabilities)
    dropped += ["context"] if body.get("context") else []
    payload: dict[str, Any] = _with_model(upstream_model)
    images = _want(body, "images", (list,), "[]api.ImageData")
    if suffix:
        return _infill_request(
            model, prompt, suffix, payload, fields, stream, backend, dropped + (["images"] if images else [])
        )
    if raw:
        payload["prompt"] = prompt
        fields.pop("chat_template_kwargs", None)
        path = COMPLETIONS_PATH
        dropped += ["images"] if images else []
    else:
        multimodal = backend != MLX if multimodal is None else multimodal
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": _content(prompt, images, multimodal, dropped)})
        payload["messages"] = messages
        path = CHAT_PATH
    payload.update(fields)
    payload.update(_stream_fields(stream))
    return UpstreamRequest(path, payload, stream, list(dict.fromkeys(dropped)))


def _infill_request(
    model: str,
    prompt: str,
    suffix: str,
    payload: dict[str, Any],
    fields: dict[str, Any],
    stream: bool,
    backend: str,
    dropped: list[str],
) -> UpstreamRequest:
    """llama-server's `/infill` (its `/v1/completions` rejects `suffix`) [LC][LR]; its native fields: n_predict,
    json_schema; replies in the native shape (`content`, `stop`, `timings`)."""
    if backend != LLAMA_CPP:
        raise OllamaError(400, f'"{model}" does not support insert')
    payload.update(input_prefix=prompt, input_suffix=suffix, prompt="")
    fields.pop("chat_template_kwargs", None)
    fields.pop("logprobs", None)
    fields.pop("top_logprobs", None)
    if "max_tokens" in fields:
        fields["n_predict"] = fields.pop("max_tokens")
    response_format = fields.pop("response_format", None)
    if response_format is not None:
        schema = response_format.get("json_schema", {}).get("schema", {})
        payload["json_schema"] = schema  # {} = any JSON value
    payload.update(fields)
    payload["stream"] = stream
    return UpstreamRequest(INFILL_PATH, payload, stream, list(dict.fromkeys(dropped)))


def embed_request(body: dict[str, Any], upstream_model: str | None) -> UpstreamRequest:
    """An Ollama `/api/embed` body -> `/v1/embeddings` with `input` as a list of strings.

    `input` must be a string or a list of strings (else 400 `invalid input type`, Ollama's text [R]). `truncate`,
    `dimensions` (applied by embed_response) and `options` are not sent. Raises OllamaError.
    """
    request_model(body, "embed")
    value = body.get("input")
    if isinstance(value, str):
        inputs = [value] if value else []
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        inputs = list(value)
    elif value is None:
        inputs = []
    else:
        raise OllamaError(400, "invalid input type")
    dimensions = _want(body, "dimensions", (int,), "int")
    if dimensions is not None and dimensions < 0:
        raise OllamaError(400, "dimensions must be a positive integer")
    dropped = [key for key in ("options", "truncate") if body.get(key) is not None]
    payload = _with_model(upstream_model) | {"input": inputs, "encoding_format": "float"}
    return UpstreamRequest(EMBEDDINGS_PATH, payload, False, dropped)


def embeddings_request(body: dict[str, Any], upstream_model: str | None) -> UpstreamRequest:
    """A legacy `/api/embeddings` body (`prompt`) -> `/v1/embeddings` with one input. Raises OllamaError."""
    request_model(body, "embeddings")
    prompt = _want(body, "prompt", (str,), "string") or ""
    dropped = ["options"] if body.get("options") is not None else []
    payload = _with_model(upstream_model) | {"input": [prompt], "encoding_format": "float"}
    return UpstreamRequest(EMBEDDINGS_PATH, payload, False, dropped)


# --- responses ----------------------------------------------------------------------------------------------


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


# --- streams ------------------------------------------------------------------------------------------------


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


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


# --- model details ------------------------------------------------------------------------------------------

# llama.cpp's llama_ftype numbers -> names, as Ollama's fs/ggml FileType.String [T]; bits per weight for a
# parameter estimate when the file has no size label.
_FILE_TYPES: dict[int, tuple[str, float]] = {
    0: ("F32", 32.0), 1: ("F16", 16.0), 2: ("Q4_0", 4.5), 3: ("Q4_1", 5.0), 7: ("Q8_0", 8.5),
    8: ("Q5_0", 5.5), 9: ("Q5_1", 6.0), 10: ("Q2_K", 3.0), 11: ("Q3_K_S", 3.5), 12: ("Q3_K_M", 3.9),
    13: ("Q3_K_L", 4.3), 14: ("Q4_K_S", 4.6), 15: ("Q4_K_M", 4.9), 16: ("Q5_K_S", 5.5), 17: ("Q5_K_M", 5.7),
    18: ("Q6_K", 6.6), 19: ("IQ2_XXS", 2.1), 20: ("IQ2_XS", 2.3), 21: ("Q2_K_S", 2.7), 22: ("IQ3_XS", 3.3),
    23: ("IQ3_XXS", 3.1), 24: ("IQ1_S", 1.6), 25: ("IQ4_NL", 4.5), 26: ("IQ3_S", 3.4), 27: ("IQ3_M", 3.7),
    28: ("IQ2_S", 2.5), 29: ("IQ2_M", 2.7), 30: ("IQ4_XS", 4.3), 31: ("IQ1_M", 1.8), 32: ("BF16", 16.0),
    36: ("TQ1_0", 1.7), 37: ("TQ2_0", 2.1), 38: ("MXFP4_MOE", 4.3),
}  # fmt: skip
_ARRAY_KEYS = ("tokens", "token_type", "merges", "scores", "languages", "tags", "datasets")
_SAFETENSOR_BITS = {"F64": 64, "F32": 32, "BF16": 16, "F16": 16, "I64": 64, "I32": 32, "U32": 32, "I8": 8, "U8": 8}


def human_number(count: int) -> str:
    """A parameter count as Ollama prints it (format.HumanNumber): 134515008 -> "134.52M", 7e9 -> "7B",
    7.6e9 -> "7.6B", 1500 -> "2K" [T]."""
    for limit, suffix, places in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 0)):
        if count >= limit:
            number = count / limit
            whole = number == math.floor(number) or not places  # no decimals for a whole number, none for K
            return f"{number:.0f}{suffix}" if whole else f"{number:.{places}f}{suffix}"
    return str(count)


def _stat_identity(path: Path) -> tuple[int, float, str]:
    """(size in bytes, mtime in epoch seconds, digest): a stable sha256 of path, size and mtime (no hashing of
    gigabytes: the digest names this file at this version, as Ollama's digest names a manifest)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size, mtime_ns = 0, 0
    for file in files:
        info = file.stat()
        size += info.st_size
        mtime_ns = max(mtime_ns, info.st_mtime_ns)
    digest = hashlib.sha256(f"{path.resolve()}\0{size}\0{mtime_ns}".encode()).hexdigest()
    return size, mtime_ns / 1e9, digest


def model_details(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What Ollama's listings say of a model, read from a GGUF file (its header, through llmctl.memory.gguf,
    never the tensors) or an MLX folder (config.json, tokenizer_config.json, safetensors headers).

    Returns a dict with any of: path, format ("gguf" | "safetensors"), family, families, architecture,
    parameter_count (int), parameter_size ("135M", "7.6B"), quantization_level ("Q4_K_M", "int4", "BF16"),
    size (bytes on disk), modified_at (epoch seconds), digest (64 hex), context_length, embedding_length,
    template (the chat template), capabilities (completion | embedding, tools, thinking, vision, insert) and
    model_info (for /api/show). Never raises: what cannot be read is left out. Cached per (path, size, mtime).
    """
    location = Path(path)
    try:
        info = location.stat()
    except OSError:
        return {"path": str(location)}
    return dict(_details_cached(str(location), info.st_size, info.st_mtime_ns))


@lru_cache(maxsize=256)
def _details_cached(path: str, _size: int, _mtime_ns: int) -> dict[str, Any]:
    location = Path(path)
    details: dict[str, Any] = {"path": path}
    try:
        details["size"], details["modified_at"], details["digest"] = _stat_identity(location)
        details.update(_mlx_details(location) if location.is_dir() else _gguf_details(location))
    except (OSError, ValueError, GgufError, KeyError, TypeError, struct.error):
        pass  # partial details: a listing must never fail on one unreadable model
    return details


def _capabilities(template: str, embedding: bool, vision: bool, insert: bool) -> list[str]:
    """Ollama's rules (server/images.go): tools when the template mentions "tools" or "tool_call", thinking when
    it has `<think>` and `</think>` (or another sign of reasoning, _THINKING_MARKS), embedding instead of
    completion for pooling models [R]."""
    capabilities = ["embedding" if embedding else "completion"]
    if "tools" in template or "tool_call" in template:
        capabilities.append("tools")
    if insert:
        capabilities.append("insert")
    if vision:
        capabilities.append("vision")
    if ("<think>" in template and "</think>" in template) or any(mark in template for mark in _THINKING_MARKS):
        capabilities.append("thinking")
    return capabilities


# Signs of reasoning in a Jinja chat template besides <think> tags, so that `think` is not refused (400) for a
# model that can: Qwen3/DeepSeek's `enable_thinking` switch, llama.cpp's `reasoning_content`, gpt-oss's harmony
# channels and `message.thinking`, Mistral's [THINK], Seed's <seed:think>.
_THINKING_MARKS = ("enable_thinking", "reasoning_content", "<|channel|>", ".thinking", "[THINK]", "<seed:think>")


def _gguf_details(path: Path) -> dict[str, Any]:
    info = read_gguf(path)
    meta = info.metadata
    arch = str(meta.get("general.architecture", ""))
    out: dict[str, Any] = {"format": "gguf", "family": arch, "families": [arch] if arch else None, "architecture": arch}
    name, bits = _FILE_TYPES.get(_int(meta.get("general.file_type", -1)), ("", 0.0))
    if "general.file_type" in meta:
        out["quantization_level"] = name or "unknown"
    label = meta.get("general.size_label")
    if isinstance(label, str) and label:
        out["parameter_size"] = label
    elif bits:
        estimate = info.tensor_bytes * 8 / bits
        rounded = round(estimate, 1 - math.floor(math.log10(estimate))) if estimate >= 1 else 0
        out["parameter_count"] = int(rounded)
        out["parameter_size"] = human_number(int(rounded))
    for key in ("context_length", "embedding_length"):
        if isinstance(info.arch_value(key), int):
            out[key] = info.arch_value(key)
    template = meta.get("tokenizer.chat_template")
    out["template"] = template if isinstance(template, str) else ""
    insert = any(f"tokenizer.ggml.{part}_token_id" in meta for part in ("fim_pre", "fim_suf", "prefix", "suffix"))
    embedding = f"{arch}.pooling_type" in meta
    out["capabilities"] = _capabilities(out["template"], embedding, "vision.block_count" in meta, insert)
    model_info: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("general.name", "tokenizer.chat_template"):
            continue  # Ollama's show leaves these out [R]
        long_array = key.rsplit(".", 1)[-1] in _ARRAY_KEYS or (isinstance(value, list) and len(value) > 5)
        model_info[key] = [] if long_array else value  # Ollama empties long arrays unless verbose [R]
    if out.get("parameter_count"):
        model_info["general.parameter_count"] = out["parameter_count"]
    out["model_info"] = model_info
    return out


def _safetensors_count(folder: Path, quantization: dict[str, Any]) -> tuple[int, str]:
    """(parameters, dtype of the largest unquantized tensor) from the safetensors headers (8-byte length, then
    JSON). A packed weight of a quantized MLX model holds `group_size` parameters per entry of its `.scales`
    (bits may differ per layer: mlx-lm puts per-layer settings under the layer's name in `quantization`);
    scales and biases are not parameters."""
    shapes: dict[str, tuple[str, list[int]]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as stream:
            length = struct.unpack("<Q", stream.read(8))[0]
            if length > 100 * 1024 * 1024:
                raise ValueError("implausible safetensors header")
            header = json.loads(stream.read(length))
        for name, tensor in header.items():
            if name != "__metadata__" and isinstance(tensor, dict):
                shapes[name] = (str(tensor.get("dtype", "")), list(tensor.get("shape") or []))
    count, dtype, largest = 0, "", 0
    for name, (kind, shape) in shapes.items():
        if name.endswith((".scales", ".biases")):
            continue
        stem = name.removesuffix(".weight")
        scales = shapes.get(f"{stem}.scales")
        if scales is not None:
            layer = quantization.get(stem)
            group = _int((layer if isinstance(layer, dict) else quantization).get("group_size")) or 64
            count += math.prod(scales[1]) * group
        else:
            count += math.prod(shape)
            if math.prod(shape) > largest:  # the weights' type, not a norm's
                dtype, largest = kind, math.prod(shape)
    return count, dtype


def _mlx_details(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    text_config = config.get("text_config") or {}
    arch = str(config.get("model_type") or text_config.get("model_type") or "")
    out: dict[str, Any] = {"format": "safetensors", "family": arch, "families": [arch] if arch else None}
    out["architecture"] = arch
    quantization = config.get("quantization") or config.get("quantization_config") or {}
    bits = _int(quantization.get("bits")) or None
    count, dtype = _safetensors_count(folder, quantization)
    if bits:
        mode = quantization.get("mode") or "affine"
        out["quantization_level"] = f"int{bits}" if mode == "affine" else str(mode)  # Ollama's lower-case names
    elif dtype:
        out["quantization_level"] = dtype
    if count:
        out["parameter_count"] = count
        out["parameter_size"] = human_number(count)
    context = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    if isinstance(context, int):
        out["context_length"] = context
    if isinstance(config.get("hidden_size"), int):
        out["embedding_length"] = config["hidden_size"]
    out["template"] = _mlx_template(folder)
    vision = "vision_config" in config
    out["capabilities"] = _capabilities(out["template"], False, vision, False)
    info: dict[str, Any] = {"general.architecture": arch}
    if count:
        info["general.parameter_count"] = count
    for key in ("context_length", "embedding_length"):
        if key in out:
            info[f"{arch}.{key}"] = out[key]
    out["model_info"] = info
    return out


def _mlx_template(folder: Path) -> str:
    """The chat template: chat_template.jinja (newer transformers) or tokenizer_config.json's chat_template."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(errors="replace")
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return ""
    template = json.loads(config_path.read_text()).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), "")
    return template if isinstance(template, str) else ""


# --- listings -----------------------------------------------------------------------------------------------


def ollama_details(details: dict[str, Any]) -> dict[str, Any]:
    """model_details -> Ollama's `details` object {parent_model, format, family, families, parameter_size,
    quantization_level} [A][T]; unknown values are empty strings, as Ollama's are."""
    return {
        "parent_model": "",
        "format": details.get("format", ""),
        "family": details.get("family", ""),
        "families": details.get("families"),
        "parameter_size": details.get("parameter_size", ""),
        "quantization_level": details.get("quantization_level", ""),
    }


def _modified(details: dict[str, Any]) -> str:
    return rfc3339(int(float(details.get("modified_at") or 0) * 1e9))


def _digest(name: str, details: dict[str, Any]) -> str:
    return details.get("digest") or hashlib.sha256(name.encode()).hexdigest()


def tag_entry(name: str, details: dict[str, Any]) -> dict[str, Any]:
    """One `/api/tags` entry: `{name, model (both "NAME:latest"), modified_at, size, digest, details}` [A][T]."""
    shown = display_name(name)
    return {
        "name": shown,
        "model": shown,
        "modified_at": _modified(details),
        "size": _int(details.get("size")),
        "digest": _digest(name, details),
        "details": ollama_details(details),
    }


def ps_entry(
    name: str,
    details: dict[str, Any],
    size: int,
    size_vram: int,
    expires_at: float | None,
    context_length: int | None,
) -> dict[str, Any]:
    """One `/api/ps` entry [T][R]: `size` the measured bytes, `size_vram` GPU memory (or the footprint on a
    Mac), `expires_at` epoch seconds of the ttl's end (None: never, shown far in the future as Ollama shows
    a negative keep_alive), `context_length` tokens (falls back to the model's)."""
    shown = display_name(name)
    expires_ns = time.time_ns() + _MAX_NS if expires_at is None else int(expires_at * 1e9)
    return {
        "name": shown,
        "model": shown,
        "size": int(size),
        "digest": _digest(name, details),
        "details": ollama_details(details),
        "expires_at": rfc3339(expires_ns),
        "size_vram": int(size_vram),
        "context_length": _int(context_length or details.get("context_length")),
    }


def _parameter_lines(parameters: dict[str, Any]) -> str:
    """Modelfile PARAMETER text as Ollama's show prints it: `name` padded to 30, then the Go-quoted value [R]."""
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


def show_response(
    name: str,
    details: dict[str, Any],
    *,
    parameters: dict[str, Any] | None = None,
    system: str = "",
    vision: bool = False,
    context_length: int | None = None,
) -> dict[str, Any]:
    """The `/api/show` reply [A][R]: modelfile, parameters (text), template, system, details, model_info (with
    `general.architecture` and `<arch>.context_length`, which clients read for the window), capabilities and
    modified_at. `vision` adds the capability (e.g. llama-server started with an mmproj); `context_length`
    (the instance's, when set) overrides the model's trained length; `parameters` are Modelfile-style
    settings to show (e.g. {"num_ctx": 8192, "stop": [...]})."""
    arch = details.get("architecture") or details.get("family") or ""
    model_info = dict(details.get("model_info") or {})
    if arch:
        model_info.setdefault("general.architecture", arch)
        window = context_length or details.get("context_length")
        if window:
            model_info[f"{arch}.context_length"] = int(window)
    capabilities = list(details.get("capabilities") or ["completion"])
    if vision and "vision" not in capabilities:
        capabilities.append("vision")
    template = details.get("template") or ""
    parameter_text = _parameter_lines(parameters or {})
    modelfile = [f"# Modelfile generated by llmctl for {display_name(name)}", f"FROM {details.get('path', name)}"]
    if template:
        modelfile.append(f'TEMPLATE """{template}"""')
    if system:
        modelfile.append(f'SYSTEM """{system}"""')
    modelfile += [f"PARAMETER {line}" for line in parameter_text.splitlines()]
    out = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": parameter_text,
        "template": template,
        "details": ollama_details(details),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": _modified(details),
    }
    if system:
        out["system"] = system
    return out
