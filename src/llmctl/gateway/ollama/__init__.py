"""Ollama's native API, translated to and from the OpenAI API that llama-server and mlx_lm.server speak.

Pure functions and small stateful stream translators: no sockets, no files except the model header reads of
`model_details`. The HTTP handlers (llmctl.gateway.ollama_api, llmctl.gateway.server) call them:

    name = request_model(body, "chat")                      # OllamaError(400, "model is required")
    up = chat_request(body, upstream_model, "llama.cpp")    # UpstreamRequest(path, payload, stream, dropped)
    if up.stream:
        stream = ChatStream(name, started_ns=t0)
        for chunk in upstream: send(stream.feed(chunk))     # NDJSON lines as tokens arrive
        send(stream.finish())                               # the `done: true` line with the metrics
    else:
        send(json.dumps(chat_response(upstream_json, name, started_ns=t0)))

Modules, each importing only those above it (and llmctl.memory.gguf):

    errors    OllamaError, Ollama's error body and stream line, an upstream's error reply read as one
    replies   upstream replies not streamed -> Ollama's; rfc3339 timestamps, Clock and metrics
    names     model names (`NAME:latest`), a request's `model`, `keep_alive`, load/unload-only requests
    options   `options` -> upstream fields (MAPPING), the backend names
    requests  Ollama request bodies -> the UpstreamRequest to send
    streams   upstream SSE -> Ollama NDJSON (SseParser, ChatStream, GenerateStream)
    models    model_details (GGUF header, MLX folder) and the /api/tags, /api/ps, /api/show entries

Facts come from /work/shared/OLLAMA-API.md; its source keys are cited as [A] (ollama docs/api.md), [ST]/[ER]/[U]
(its docs/api/streaming, errors, usage pages), [T]/[R] (ollama api/types.go, server/routes.go), [LS] (ollama
llm/llama_server.go, Ollama's own llama-server bridge), [N] (ollama types/model/name.go), [PT] (ollama-python
_types.py), [LR]/[LC]/[LT] (llama.cpp tools/server README, server-common.cpp, server-task.cpp), [M]/[MD] (mlx-lm
mlx_lm/server.py, SERVER.md), all at the commits that file lists (ollama fb3076099687).

Units: durations in Ollama's replies are integer nanoseconds; clocks passed in are `time.monotonic_ns()` values;
`keep_alive` comes out in seconds. Zero metrics are left out, as Go's `omitempty` does [T].
"""

from __future__ import annotations

from llmctl.gateway.ollama.errors import OllamaError, error_body, error_line, upstream_error
from llmctl.gateway.ollama.models import (
    human_number,
    model_details,
    ollama_details,
    ps_entry,
    show_response,
    tag_entry,
)
from llmctl.gateway.ollama.names import (
    FOREVER,
    base_name,
    display_name,
    is_load_request,
    load_response,
    match_name,
    parse_keep_alive,
    request_model,
)
from llmctl.gateway.ollama.options import LLAMA_CPP, MAPPING, MLX, OPENAI, Option, map_options
from llmctl.gateway.ollama.replies import (
    Clock,
    chat_response,
    done_reason,
    embed_response,
    embeddings_response,
    generate_response,
    logprobs_from_openai,
    metrics,
    normalize,
    rfc3339,
    tool_calls_from_openai,
)
from llmctl.gateway.ollama.requests import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBEDDINGS_PATH,
    INFILL_PATH,
    THINK_LEVELS,
    UpstreamRequest,
    chat_request,
    embed_request,
    embeddings_request,
    generate_request,
    image_bytes,
    media_part,
    sniff_media,
    tool_arguments_text,
)
from llmctl.gateway.ollama.streams import ChatStream, GenerateStream, SseParser

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "EMBEDDINGS_PATH",
    "FOREVER",
    "INFILL_PATH",
    "LLAMA_CPP",
    "MAPPING",
    "MLX",
    "OPENAI",
    "THINK_LEVELS",
    "ChatStream",
    "Clock",
    "GenerateStream",
    "OllamaError",
    "Option",
    "SseParser",
    "UpstreamRequest",
    "base_name",
    "chat_request",
    "chat_response",
    "display_name",
    "done_reason",
    "embed_request",
    "embed_response",
    "embeddings_request",
    "embeddings_response",
    "error_body",
    "error_line",
    "generate_request",
    "generate_response",
    "human_number",
    "image_bytes",
    "is_load_request",
    "load_response",
    "logprobs_from_openai",
    "map_options",
    "match_name",
    "media_part",
    "metrics",
    "model_details",
    "normalize",
    "ollama_details",
    "parse_keep_alive",
    "ps_entry",
    "request_model",
    "rfc3339",
    "show_response",
    "sniff_media",
    "tag_entry",
    "tool_arguments_text",
    "tool_calls_from_openai",
    "upstream_error",
]
