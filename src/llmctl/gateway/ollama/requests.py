"""Ollama's request bodies (/api/chat, /api/generate, /api/embed, /api/embeddings) -> the request to send
upstream, an UpstreamRequest: OpenAI's /v1/chat/completions, /v1/completions or /v1/embeddings, or
llama-server's /infill [A][R][T][LS][LC][LR][M]. Images, tool calls, `format`, `think` and `logprobs` are
translated here; `options` by llmctl.gateway.ollama.options."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from llmctl.gateway.ollama.errors import OllamaError, _go_type
from llmctl.gateway.ollama.names import request_model
from llmctl.gateway.ollama.options import LLAMA_CPP, MLX, map_options

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
INFILL_PATH = "/infill"  # llama-server's fill-in-the-middle endpoint [LC][LR]
EMBEDDINGS_PATH = "/v1/embeddings"

THINK_LEVELS = ("high", "medium", "low", "max")  # api/types.go ThinkValue [T]


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
