"""The translation between Ollama's API and the OpenAI API (llmctl.gateway.ollama): requests, replies, streams
split anywhere, listings. Every reply built here is checked with the official `ollama` client's own pydantic
types, which is what an app built on that client parses. One test runs the real llama-server on the real model."""

from __future__ import annotations

import ast
import base64
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ollama._types import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ShowResponse,
)

from llmctl.gateway import ollama
from llmctl.gateway.ollama import (
    FOREVER,
    MAPPING,
    ChatStream,
    Clock,
    GenerateStream,
    OllamaError,
    SseParser,
)
from llmctl.gateway.ollama.models import _capabilities

from .helpers import ROOT, free_port

REAL_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_MLX = ROOT / "models" / "SmolLM2-135M-Instruct-mlx"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
GIF = base64.b64encode(b"GIF89a" + b"\x00" * 8).decode()
UNKNOWN = base64.b64encode(b"not an image at all").decode()
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def chat(**extra):
    return {"model": "smol", "messages": [{"role": "user", "content": "hi"}], **extra}


def sse(*objects, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in objects)
    return body + (b"data: [DONE]\n\n" if done else b"")


def delta(content=None, finish=None, **fields):
    piece = {"content": content} if content is not None else {}
    piece.update(fields)
    return {"choices": [{"index": 0, "delta": piece, "finish_reason": finish}]}


def lines_of(chunks: list[bytes]) -> list[dict]:
    for chunk in chunks:
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1, chunk
    return [json.loads(chunk) for chunk in chunks]


class FakeClock:
    """A monotonic clock that moves 1 ms per reading: durations become predictable without sleeping."""

    def __init__(self, start: int = 10_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1_000_000
        return self.now


# --- errors and names -----------------------------------------------------------------------------------------


def test_error_body_and_line():
    assert ollama.error_body("boom") == {"error": "boom"}
    assert ollama.error_line("boom") == b'{"error":"boom"}\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"message":"bad thing","type":"invalid_request_error"}}', "bad thing"),
        (b'{"error":{"code":503,"message":"Loading model"}}', "Loading model"),
        (b'{"error":"load failed"}', "load failed"),
        (b'{"detail":"nope"}', "nope"),
        (b"plain text", "plain text"),
    ],
)
def test_upstream_error_keeps_status_and_message(body, message):
    error = ollama.upstream_error(404, body)
    assert (error.status, error.message) == (404, message)


def test_upstream_error_with_a_2xx_status_is_a_500():
    assert ollama.upstream_error(200, b"{}").status == 500


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("smol:latest", "smol"),
        ("smol:LATEST", "smol"),
        ("smol", "smol"),
        ("qwen:7b", "qwen:7b"),
        ("host:8080/ns/model", "host:8080/ns/model"),
        ("host:8080/ns/model:latest", "host:8080/ns/model"),
        (":latest", ":latest"),
    ],
)
def test_base_name(name, base):
    assert ollama.base_name(name) == base


@pytest.mark.parametrize(
    ("name", "shown"),
    [("smol", "smol:latest"), ("qwen:7b", "qwen:7b"), ("host:8080/model", "host:8080/model:latest")],
)
def test_display_name(name, shown):
    assert ollama.display_name(name) == shown


@given(st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9._/-]{0,30}", fullmatch=True))
def test_display_then_base_name_gives_the_name_back(name):
    assert ollama.base_name(ollama.display_name(name)) == ollama.base_name(name)


def test_match_name_prefers_exact_then_latest_then_case():
    names = ["smol", "Big", "big", "coder:7b"]
    assert ollama.match_name("smol:latest", names) == "smol"
    assert ollama.match_name("big", names) == "big"
    assert ollama.match_name("BIG:Latest", ["Big"]) == "Big"
    assert ollama.match_name("coder:7B", names) == "coder:7b"
    assert ollama.match_name("coder", names) is None
    assert ollama.match_name("absent", names) is None


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("chat", 400, "model is required"),
        ("embeddings", 400, "model is required"),
        ("show", 400, "model is required"),
        ("generate", 404, "model '' not found"),
        ("embed", 404, "model '' not found"),
    ],
)
def test_a_missing_model_gets_ollamas_status_and_text(endpoint, status, message):
    for body in ({}, {"model": ""}, {"model": None}):
        with pytest.raises(OllamaError) as caught:
            ollama.request_model(body, endpoint)
        assert (caught.value.status, caught.value.message) == (status, message)


def test_request_model_reads_show_name_and_refuses_wrong_types():
    assert ollama.request_model({"name": "smol"}, "show") == "smol"
    assert ollama.request_model({"model": "smol:latest"}, "chat") == "smol:latest"
    for body in ([], {"model": 3}):
        with pytest.raises(OllamaError) as caught:
            ollama.request_model(body, "chat")
        assert caught.value.status == 400


# --- keep_alive -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("0", 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("10s", 10.0),
        ("+10s", 10.0),
        ("-1s", FOREVER),
        ("-0.5h", FOREVER),
        (-1, FOREVER),
        (-0.001, FOREVER),
        ("1µs", 1e-6),
    ],
)
def test_parse_keep_alive(value, seconds):
    parsed = ollama.parse_keep_alive(value)
    assert parsed == (seconds if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        ("m", 'time: invalid duration "m"'),
        ("-", 'time: invalid duration "-"'),
        (True, "Unsupported type: 'bool'"),
        ([1], "Unsupported type: 'array'"),
        ({"s": 1}, "Unsupported type: 'object'"),
    ],
)
def test_parse_keep_alive_refuses_what_go_refuses(value, message):
    with pytest.raises(OllamaError) as caught:
        ollama.parse_keep_alive(value)
    assert (caught.value.status, caught.value.message) == (400, message)


@given(st.one_of(st.text(max_size=12), st.floats(allow_nan=True), st.integers(), st.booleans(), st.none()))
def test_parse_keep_alive_gives_seconds_or_a_400(value):
    try:
        seconds = ollama.parse_keep_alive(value)
    except OllamaError as error:
        assert error.status == 400
        return
    assert seconds is None or seconds == FOREVER or (seconds >= 0 and not math.isnan(seconds))


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=59), st.integers(0, 59))
def test_go_durations_add_up(hours, minutes, seconds):
    assert ollama.parse_keep_alive(f"{hours}h{minutes}m{seconds}s") == hours * 3600 + minutes * 60 + seconds


def test_load_and_unload_requests():
    assert ollama.is_load_request({"model": "m"}, "chat")
    assert ollama.is_load_request({"model": "m", "messages": []}, "chat")
    assert not ollama.is_load_request(chat(), "chat")
    assert ollama.is_load_request({"model": "m", "prompt": ""}, "generate")
    assert not ollama.is_load_request({"model": "m", "prompt": "", "suffix": "x"}, "generate")
    assert ollama.is_load_request({"model": "m", "input": []}, "embed")
    assert ollama.is_load_request({"model": "m"}, "embeddings")
    chat_reply = ollama.load_response("m", "chat", unloaded=True)
    assert chat_reply["done_reason"] == "unload" and chat_reply["message"] == {"role": "assistant", "content": ""}
    ChatResponse.model_validate(chat_reply)
    generated = ollama.load_response("m", "generate", unloaded=False)
    assert generated["done_reason"] == "load" and generated["response"] == ""
    GenerateResponse.model_validate(generated)
    EmbedResponse.model_validate(ollama.load_response("m", "embed", unloaded=False))
    EmbeddingsResponse.model_validate(ollama.load_response("m", "embeddings", unloaded=False))


# --- options --------------------------------------------------------------------------------------------------


def test_options_map_field_by_field_per_backend():
    options = {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "typical_p": 0.7,
        "seed": 7,
        "num_predict": 16,
        "stop": ["\n"],
        "repeat_penalty": 1.1,
        "repeat_last_n": 32,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "num_keep": 4,
        "num_ctx": 4096,
        "num_gpu": 99,
        "made_up": 1,
    }
    llama, llama_dropped = ollama.map_options(options, "llama.cpp")
    assert llama == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "typical_p": 0.7,
        "seed": 7,
        "max_tokens": 16,
        "stop": ["\n"],
        "repeat_penalty": 1.1,
        "repeat_last_n": 32,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "n_keep": 4,
    }
    assert llama_dropped == ["num_ctx", "num_gpu", "made_up"]
    mlx, mlx_dropped = ollama.map_options(options, "mlx")
    assert mlx["repetition_penalty"] == 1.1 and mlx["repetition_context_size"] == 32
    assert "repeat_penalty" not in mlx and "typical_p" not in mlx and "n_keep" not in mlx
    assert set(mlx_dropped) == {"typical_p", "num_keep", "num_ctx", "num_gpu", "made_up"}
    standard, _ = ollama.map_options(options, "external")
    assert set(standard) == {
        "temperature",
        "top_p",
        "seed",
        "max_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
    }


def test_options_skip_nulls_and_truncate_floats_into_integers():
    fields, dropped = ollama.map_options({"temperature": None, "top_k": 40.9, "seed": 3}, "llama.cpp")
    assert fields == {"top_k": 40, "seed": 3} and dropped == []


def test_no_cap_on_predictions_goes_only_to_llama_server():
    assert ollama.map_options({"num_predict": -1}, "llama.cpp")[0] == {"max_tokens": -1}
    assert ollama.map_options({"num_predict": -1}, "mlx") == ({}, ["num_predict"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": "40"}, 'option "top_k" must be of type integer'),
        ({"top_k": True}, 'option "top_k" must be of type integer'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "\n"}, 'option "stop" must be of type array'),
        ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_wrong_option_types_are_refused_with_ollamas_text(options, message):
    with pytest.raises(OllamaError) as caught:
        ollama.map_options(options, "llama.cpp")
    assert (caught.value.status, caught.value.message) == (400, message)


def test_options_must_be_an_object():
    with pytest.raises(OllamaError):
        ollama.map_options(["temperature"], "llama.cpp")


def test_the_mapping_table_names_every_go_option():
    go_options = {
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "temperature",
        "repeat_penalty", "presence_penalty", "frequency_penalty", "stop", "num_ctx", "num_batch", "num_gpu",
        "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
    }  # fmt: skip
    assert go_options <= set(MAPPING)


@given(
    st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.booleans()))
)
def test_map_options_gives_fields_or_a_400(options):
    for backend in ("llama.cpp", "mlx", "command"):
        try:
            _fields, dropped = ollama.map_options(options, backend)
        except OllamaError as error:
            assert error.status == 400
            continue
        assert set(dropped) <= set(options)


# --- chat requests --------------------------------------------------------------------------------------------


def test_chat_request_plain():
    up = ollama.chat_request(chat(), "smol", "llama.cpp")
    assert up.path == "/v1/chat/completions" and up.stream is True and up.dropped == []
    assert up.payload == {
        "model": "smol",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_chat_request_not_streamed_and_without_upstream_model():
    up = ollama.chat_request(chat(stream=False), None, "mlx")
    assert up.stream is False and up.payload["stream"] is False and "stream_options" not in up.payload
    assert "model" not in up.payload


def test_system_and_history_pass_in_order():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "thinking": "hmm"},
        {"role": "user", "content": "c"},
    ]
    llama = ollama.chat_request({"model": "m", "messages": messages}, None, "llama.cpp").payload["messages"]
    assert [m["role"] for m in llama] == ["system", "user", "assistant", "user"]
    assert llama[2] == {"role": "assistant", "content": "b", "reasoning_content": "hmm"}
    mlx = ollama.chat_request({"model": "m", "messages": messages}, None, "mlx").payload["messages"]
    assert mlx[2] == {"role": "assistant", "content": "b"}


def test_images_become_data_url_parts_with_sniffed_types():
    body = {"model": "m", "messages": [{"role": "user", "content": "what?", "images": [PNG, GIF, UNKNOWN]}]}
    content = ollama.chat_request(body, None, "llama.cpp").payload["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "what?"}
    urls = [part["image_url"]["url"] for part in content[1:]]
    assert urls == [f"data:image/png;base64,{PNG}", f"data:image/gif;base64,{GIF}", f"data:image/jpeg;base64,{UNKNOWN}"]


def test_audio_becomes_an_input_audio_part():
    wav = base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEfmt ").decode()
    body = {"model": "m", "messages": [{"role": "user", "content": "", "images": [wav]}]}
    content = ollama.chat_request(body, None, "llama.cpp").payload["messages"][0]["content"]
    assert content == [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}]


def test_images_are_dropped_for_a_text_only_upstream():
    body = {"model": "m", "messages": [{"role": "user", "content": "what?", "images": [PNG]}]}
    up = ollama.chat_request(body, None, "mlx")
    assert up.payload["messages"][0]["content"] == "what?" and up.dropped == ["images"]
    assert ollama.chat_request(body, None, "llama.cpp", multimodal=False).dropped == ["images"]


@pytest.mark.parametrize("image", ["data:image/png;base64,AAAA", "@@@@", "AAA", 12])
def test_bad_base64_images_are_a_400(image):
    body = {"model": "m", "messages": [{"role": "user", "content": "x", "images": [image]}]}
    with pytest.raises(OllamaError) as caught:
        ollama.chat_request(body, None, "llama.cpp")
    assert caught.value.status == 400


def test_data_url_refusal_names_the_byte_like_go():
    with pytest.raises(OllamaError, match="illegal base64 data at input byte 4"):
        ollama.image_bytes("data:image/png;base64,AAAA")


@given(st.binary(max_size=64))
def test_any_bytes_survive_the_base64_round_trip(data):
    part = ollama.media_part(base64.b64encode(data).decode())
    if part["type"] == "image_url":
        url = part["image_url"]["url"]
        assert url.startswith("data:image/") and base64.b64decode(url.split(",", 1)[1]) == data
    else:
        assert base64.b64decode(part["input_audio"]["data"]) == data


def test_tool_calls_and_results_translate_both_ways():
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    body = {
        "model": "m",
        "tools": tools,
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"id": "given", "function": {"name": "weather", "arguments": {"city": "Rome"}}},
                ],
            },
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
            {"role": "tool", "content": "rain", "tool_name": "weather", "tool_call_id": "given"},
        ],
    }
    payload = ollama.chat_request(body, None, "llama.cpp").payload
    assert payload["tools"] == tools
    calls = payload["messages"][1]["tool_calls"]
    assert [json.loads(call["function"]["arguments"]) for call in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(call["type"] == "function" and call["id"] for call in calls)
    assert calls[1]["id"] == "given"
    first, second = payload["messages"][2], payload["messages"][3]
    assert first["tool_call_id"] == calls[0]["id"] and first["name"] == "weather"
    assert second["tool_call_id"] == "given"
    mlx_tool = ollama.chat_request(body, None, "mlx").payload["messages"][2]
    assert "name" not in mlx_tool and mlx_tool["tool_call_id"]


def test_tool_arguments_given_as_text_stay_text():
    assert ollama.tool_arguments_text('{"a": 1}') == '{"a": 1}'
    assert ollama.tool_arguments_text(None) == "{}"
    assert json.loads(ollama.tool_arguments_text({"ü": [1, 2]})) == {"ü": [1, 2]}


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", {"type": "json_object"}),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "schema",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                },
            },
        ),
        ("", None),
        (None, None),
    ],
)
def test_format_becomes_response_format(fmt, expected):
    payload = ollama.chat_request(chat(format=fmt), None, "llama.cpp").payload
    assert payload.get("response_format") == expected


def test_format_is_dropped_for_mlx_and_refused_when_invalid():
    up = ollama.chat_request(chat(format="json"), None, "mlx")
    assert "response_format" not in up.payload and up.dropped == ["format"]
    with pytest.raises(OllamaError, match='expected "json" or a valid JSON Schema object'):
        ollama.chat_request(chat(format="xml"), None, "llama.cpp")


@pytest.mark.parametrize(
    ("think", "kwargs"),
    [
        (True, {"enable_thinking": True}),
        (False, {"enable_thinking": False}),
        ("high", {"enable_thinking": True, "reasoning_effort": "high"}),
        ("max", {"enable_thinking": True, "reasoning_effort": "max"}),
    ],
)
def test_think_becomes_chat_template_kwargs(think, kwargs):
    for backend in ("llama.cpp", "mlx"):
        assert ollama.chat_request(chat(think=think), None, backend).payload["chat_template_kwargs"] == kwargs
    assert "chat_template_kwargs" not in ollama.chat_request(chat(), None, "llama.cpp").payload


def test_bad_think_values_and_non_thinking_models_are_refused_like_ollama():
    with pytest.raises(OllamaError, match=r'invalid think value: "very"'):
        ollama.chat_request(chat(think="very"), None, "llama.cpp")
    with pytest.raises(OllamaError, match="think must be a boolean or string"):
        ollama.chat_request(chat(think=1), None, "llama.cpp")
    with pytest.raises(OllamaError) as caught:
        ollama.chat_request(chat(think=True), None, "llama.cpp", capabilities=["completion"])
    assert (caught.value.status, caught.value.message) == (400, '"smol" does not support thinking')
    allowed = ollama.chat_request(chat(think=False), None, "llama.cpp", capabilities=["completion"])
    assert allowed.payload["chat_template_kwargs"] == {"enable_thinking": False}


def test_logprobs_pass_and_top_logprobs_is_bounded():
    payload = ollama.chat_request(chat(logprobs=True, top_logprobs=3), None, "llama.cpp").payload
    assert payload["logprobs"] is True and payload["top_logprobs"] == 3
    with pytest.raises(OllamaError, match="top_logprobs must be between 0 and 20"):
        ollama.chat_request(chat(top_logprobs=21), None, "llama.cpp")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        {"model": "m", "messages": ["hi"]},
        {"model": "m", "messages": [], "stream": "yes"},
        {"model": "m", "messages": [], "tools": {"a": 1}},
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
    ],
)
def test_malformed_chat_bodies_are_a_400(body):
    with pytest.raises(OllamaError) as caught:
        ollama.chat_request(body, None, "llama.cpp")
    assert caught.value.status == 400


def test_unsupported_top_level_fields_are_reported():
    assert ollama.chat_request(chat(truncate=True, shift=False), None, "llama.cpp").dropped == ["truncate", "shift"]


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(["model", "messages", "options", "format", "think", "stream", "tools"]), JSONISH)
)
def test_chat_request_gives_a_request_or_an_ollama_error(body):
    for backend in ("llama.cpp", "mlx"):
        try:
            up = ollama.chat_request(body, "x", backend)
        except OllamaError as error:
            assert error.status in (400, 404)
            continue
        json.dumps(up.payload)
        assert up.payload["stream"] is up.stream


# --- generate and embeddings requests -------------------------------------------------------------------------


def test_generate_becomes_a_chat_with_system_and_images():
    up = ollama.generate_request(
        {"model": "m", "prompt": "describe", "system": "be brief", "images": [PNG], "options": {"seed": 1}},
        "up",
        "llama.cpp",
    )
    assert up.path == "/v1/chat/completions" and up.stream
    assert up.payload["messages"][0] == {"role": "system", "content": "be brief"}
    user = up.payload["messages"][1]
    assert user["role"] == "user" and user["content"][0] == {"type": "text", "text": "describe"}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert up.payload["seed"] == 1 and up.payload["model"] == "up"


def test_raw_generate_goes_to_completions_untemplated():
    up = ollama.generate_request(
        {"model": "m", "prompt": "<s>x", "raw": True, "stream": False, "think": True}, None, "mlx"
    )
    assert up.path == "/v1/completions" and up.payload == {"prompt": "<s>x", "stream": False}


@pytest.mark.parametrize("extra", [{"system": "s"}, {"template": "t"}, {"context": [1, 2]}])
def test_raw_with_template_system_or_context_is_ollamas_400(extra):
    with pytest.raises(OllamaError, match="raw mode does not support template, system, or context"):
        ollama.generate_request({"model": "m", "prompt": "p", "raw": True, **extra}, None, "llama.cpp")


def test_a_per_request_template_is_refused_and_context_dropped():
    with pytest.raises(OllamaError) as caught:
        ollama.generate_request({"model": "m", "prompt": "p", "template": "{{ .Prompt }}"}, None, "llama.cpp")
    assert caught.value.status == 400
    assert ollama.generate_request({"model": "m", "prompt": "p", "context": [1]}, None, "llama.cpp").dropped == [
        "context"
    ]


def test_suffix_goes_to_llama_server_infill():
    body = {"model": "m", "prompt": "def f(", "suffix": "return x", "options": {"num_predict": 8}, "format": "json"}
    up = ollama.generate_request(body, None, "llama.cpp")
    assert up.path == "/infill"
    assert up.payload == {
        "input_prefix": "def f(",
        "input_suffix": "return x",
        "prompt": "",
        "n_predict": 8,
        "json_schema": {},
        "stream": True,
    }
    with pytest.raises(OllamaError) as caught:
        ollama.generate_request(body, None, "mlx")
    assert (caught.value.status, caught.value.message) == (400, '"m" does not support insert')


@pytest.mark.parametrize(
    ("value", "inputs"), [("one", ["one"]), (["a", "b"], ["a", "b"]), ("", []), ([], []), (None, [])]
)
def test_embed_request_inputs(value, inputs):
    up = ollama.embed_request({"model": "m", "input": value, "truncate": True}, "up")
    assert up.path == "/v1/embeddings" and not up.stream
    assert up.payload == {"model": "up", "input": inputs, "encoding_format": "float"}
    assert up.dropped == ["truncate"]


@pytest.mark.parametrize("value", [3, ["a", 3], {"a": "b"}])
def test_embed_request_refuses_other_inputs_with_ollamas_text(value):
    with pytest.raises(OllamaError, match="invalid input type"):
        ollama.embed_request({"model": "m", "input": value}, None)


def test_legacy_embeddings_request():
    up = ollama.embeddings_request({"model": "m", "prompt": "hello"}, None)
    assert up.payload == {"input": ["hello"], "encoding_format": "float"}


# --- replies not streamed -------------------------------------------------------------------------------------

LLAMA_REPLY = {
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    "timings": {"cache_n": 2, "prompt_n": 7, "prompt_ms": 12.5, "predicted_n": 3, "predicted_ms": 30.25},
}


def test_rfc3339_matches_gos_nanosecond_format():
    assert ollama.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert ollama.rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert ollama.rfc3339(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"


@given(st.integers(min_value=0, max_value=2**62))
def test_rfc3339_always_parses(ns):
    stamp = ollama.rfc3339(ns)
    assert STAMP.match(stamp)
    ListResponse.model_validate({"models": [{"modified_at": stamp}]})


def test_chat_response_from_llama_server_uses_its_timings():
    clock = Clock(started=1_000, loaded=5_000, end=100_000_000)
    reply = ollama.chat_response(LLAMA_REPLY, "smol", clock)
    ChatResponse.model_validate(reply)
    assert reply["message"] == {"role": "assistant", "content": "Hello!"}
    assert reply["done"] is True and reply["done_reason"] == "stop" and STAMP.match(reply["created_at"])
    assert reply["prompt_eval_count"] == 9 and reply["eval_count"] == 3
    assert reply["prompt_eval_duration"] == 12_500_000 and reply["eval_duration"] == 30_250_000
    assert reply["total_duration"] == 100_000_000 - 1_000 and reply["load_duration"] == 4_000
    assert all(isinstance(reply[key], int) for key in ("total_duration", "eval_duration", "prompt_eval_duration"))


def test_chat_response_from_mlx_uses_usage_reasoning_and_the_front_clock():
    reply_in = {
        "choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "4", "reasoning": "2+2"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }
    reply = ollama.chat_response(reply_in, "smol:latest", Clock(started=0, end=50))
    ChatResponse.model_validate(reply)
    assert reply["message"]["thinking"] == "2+2" and reply["done_reason"] == "length"
    assert (reply["prompt_eval_count"], reply["eval_count"], reply["total_duration"]) == (5, 1, 50)
    assert "load_duration" not in reply and "prompt_eval_duration" not in reply  # zero values are omitted


def test_chat_response_tool_calls_get_objects():
    reply_in = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "need weather",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        },
                        {"type": "function", "function": {"name": "now", "arguments": ""}},
                    ],
                },
            }
        ]
    }
    reply = ollama.chat_response(reply_in, "m", Clock(started=0, end=1))
    parsed = ChatResponse.model_validate(reply)
    assert reply["done_reason"] == "stop" and reply["message"]["content"] == ""
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Paris"}
    assert reply["message"]["tool_calls"][0]["id"] == "c1"
    assert reply["message"]["tool_calls"][1] == {"function": {"index": 1, "name": "now", "arguments": {}}}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_arguments_that_are_not_an_object_are_an_error(arguments):
    reply_in = {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": arguments}}]}}]}
    with pytest.raises(OllamaError) as caught:
        ollama.chat_response(reply_in, "m", Clock(started=0, end=1))
    assert caught.value.status == 500


def test_an_error_reply_raises():
    with pytest.raises(OllamaError, match="context too long"):
        ollama.chat_response({"error": {"message": "context too long"}}, "m", Clock(started=0, end=1))


def test_logprobs_are_translated():
    reply_in = {
        "choices": [
            {
                "message": {"content": "a"},
                "logprobs": {
                    "content": [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "b", "logprob": -2}]}]
                },
            }
        ]
    }
    reply = ollama.chat_response(reply_in, "m", Clock(started=0, end=1))
    ChatResponse.model_validate(reply)
    assert reply["logprobs"] == [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "b", "logprob": -2}]}]


@pytest.mark.parametrize(
    "reply_in",
    [
        {"choices": [{"message": {"content": "text"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 1}},
        {"choices": [{"text": "text", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}},
        {"content": "text", "stop": True, "stop_type": "eos", "tokens_predicted": 1, "tokens_evaluated": 4},
    ],
)
def test_generate_response_reads_chat_completion_and_native_shapes(reply_in):
    reply = ollama.generate_response(reply_in, "m", Clock(started=0, end=10))
    GenerateResponse.model_validate(reply)
    assert reply["response"] == "text" and reply["done"] is True and reply["eval_count"] == 1


def test_native_limit_is_length():
    reply = ollama.generate_response({"content": "x", "stop_type": "limit"}, "m", Clock(started=0, end=1))
    assert reply["done_reason"] == "length"


def test_embed_response_is_normalised_and_cut_to_dimensions():
    reply_in = {
        "data": [{"index": 1, "embedding": [0.0, 3.0, 4.0]}, {"index": 0, "embedding": [1.0, 1.0, 1.0, 1.0]}],
        "usage": {"prompt_tokens": 6},
    }
    reply = ollama.embed_response(reply_in, "e", Clock(started=0, loaded=2, end=10))
    EmbedResponse.model_validate(reply)
    assert reply["embeddings"][0] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert reply["embeddings"][1] == pytest.approx([0.0, 0.6, 0.8])
    assert (reply["prompt_eval_count"], reply["total_duration"], reply["load_duration"]) == (6, 10, 2)
    cut = ollama.embed_response(reply_in, "e", Clock(started=0, end=1), dimensions=2)
    assert cut["embeddings"][1] == pytest.approx([0.0, 1.0])
    assert cut["embeddings"][0] == pytest.approx([math.sqrt(0.5)] * 2)


def test_embed_response_reads_base64_vectors_and_refuses_nan():
    packed = base64.b64encode(b"\x00\x00\x80\x3f" + b"\x00\x00\x00\x00").decode()
    assert ollama.embed_response({"data": [{"embedding": packed}]}, "e", Clock(0, end=1))["embeddings"] == [[1.0, 0.0]]
    with pytest.raises(OllamaError, match="NaN or Inf"):
        ollama.embed_response({"data": [{"embedding": [float("nan")]}]}, "e", Clock(0, end=1))
    with pytest.raises(OllamaError):
        ollama.embed_response({"data": [{"embedding": [[1.0], [2.0]]}]}, "e", Clock(0, end=1))


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=32))
def test_normalised_vectors_have_unit_length_or_are_zero(vector):
    norm = math.sqrt(sum(value * value for value in ollama.normalize(vector)))
    assert norm == pytest.approx(1.0, abs=1e-6) or all(abs(value) < 1e-6 for value in vector)


def test_legacy_embeddings_are_not_normalised():
    reply = ollama.embeddings_response({"data": [{"embedding": [3.0, 4.0]}]})
    EmbeddingsResponse.model_validate(reply)
    assert reply == {"embedding": [3.0, 4.0]}


# --- streams --------------------------------------------------------------------------------------------------

LLAMA_STREAM = b": keepalive 1/3\n\n" + sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
    delta("Hel"),
    delta(reasoning_content="thinking..."),
    delta("lo, ", logprobs=None),
    delta("wörld", finish="stop"),
    {
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4},
        "timings": {"cache_n": 1, "prompt_n": 10, "prompt_ms": 2.0, "predicted_n": 4, "predicted_ms": 8.0},
    },
)


def run_stream(stream, data: bytes, cuts: list[int]) -> list[bytes]:
    out, start = [], 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += stream.feed(data[start:cut])
        start = cut
    return out + stream.finish()


def test_chat_stream_emits_a_line_per_piece_and_a_final_line():
    stream = ChatStream("smol", started_ns=0, clock=FakeClock(0))
    lines = lines_of(run_stream(stream, LLAMA_STREAM, []))
    for line in lines:
        ChatResponse.model_validate(line)
        assert line["model"] == "smol" and STAMP.match(line["created_at"])
    assert [line["message"].get("content") for line in lines[:-1]] == ["Hel", "", "lo, ", "wörld"]
    assert lines[1]["message"]["thinking"] == "thinking..."
    assert all(line["done"] is False for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert (final["prompt_eval_count"], final["eval_count"]) == (11, 4)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (2_000_000, 8_000_000)
    assert final["total_duration"] > 0


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=len(LLAMA_STREAM)), max_size=40))
def test_chat_stream_gives_the_same_text_however_the_bytes_are_split(cuts):
    stream = ChatStream("smol", started_ns=0)
    lines = lines_of(run_stream(stream, LLAMA_STREAM, cuts))
    assert "".join(line["message"]["content"] for line in lines) == "Hello, wörld"
    assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"] is True


def test_every_byte_split_and_crlf_lines_give_the_same_stream():
    whole = [
        line["message"]["content"] for line in lines_of(run_stream(ChatStream("m", started_ns=0), LLAMA_STREAM, []))
    ]
    crlf = LLAMA_STREAM.replace(b"\n", b"\r\n")
    for data in (LLAMA_STREAM, crlf):
        stream = ChatStream("m", started_ns=0)
        lines = lines_of(run_stream(stream, data, list(range(len(data)))))
        assert [line["message"]["content"] for line in lines] == whole


def test_text_on_the_last_chunk_is_kept_without_done_or_trailing_newline():
    data = sse(delta("a"), delta("b", finish="length"), done=False).rstrip(b"\n")
    lines = lines_of(run_stream(ChatStream("m", started_ns=0), data, []))
    assert [line["message"]["content"] for line in lines] == ["a", "b", ""]
    assert lines[-1]["done_reason"] == "length"


def test_usage_only_chunk_from_mlx_fills_counts_and_the_clock_fills_durations():
    clock = FakeClock(0)
    stream = ChatStream("m", started_ns=0, loaded_ns=500_000, clock=clock)
    data = b": keepalive 0/4\n\n" + sse(
        delta("x"),
        delta("y"),
        delta("z", finish="stop"),
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}},
    )
    final = lines_of(run_stream(stream, data, []))[-1]
    assert (final["prompt_eval_count"], final["eval_count"]) == (4, 3)
    # first token at the clock's first reading (1 ms), the last two ms later; the end one reading after
    assert final["prompt_eval_duration"] == 1_000_000 - 500_000
    assert final["eval_duration"] == 2_000_000
    assert final["load_duration"] == 500_000 and final["total_duration"] == 4_000_000


def test_tool_call_fragments_are_joined_per_index():
    fragments = sse(
        delta(
            tool_calls=[{"index": 0, "id": "c0", "type": "function", "function": {"name": "weather", "arguments": ""}}]
        ),
        delta(
            tool_calls=[{"index": 1, "id": "c1", "type": "function", "function": {"name": "time", "arguments": "{}"}}]
        ),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        delta(finish="tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 9}},
    )
    lines = lines_of(run_stream(ChatStream("m", started_ns=0), fragments, [7, 100, 101]))
    for line in lines:
        ChatResponse.model_validate(line)
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert calls == [
        {"id": "c0", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}},
        {"id": "c1", "function": {"index": 1, "name": "time", "arguments": {}}},
    ]
    assert lines[-1]["done_reason"] == "stop" and "tool_calls" not in lines[-1]["message"]


def test_tool_calls_are_sent_even_when_no_finish_reason_came():
    data = sse(delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}]), done=False)
    lines = lines_of(run_stream(ChatStream("m", started_ns=0), data, []))
    assert lines[0]["message"]["tool_calls"][0]["function"]["name"] == "f" and lines[-1]["done"]


@pytest.mark.parametrize(
    "failure",
    [
        b'event: error\ndata: {"error": {"message": "out of memory"}}\n\n',
        b'error: {"code": 500, "message": "out of memory", "type": "server_error"}\n\n',
        b'data: {"error": {"message": "out of memory"}}\n\n',
        b'data: {"error": "out of memory"}\n\n',
    ],
)
def test_an_upstream_error_mid_stream_ends_with_ollamas_error_line(failure):
    stream = ChatStream("m", started_ns=0)
    data = sse(delta("partial"), done=False) + failure + sse(delta("never"))
    lines = lines_of(run_stream(stream, data, [len(data) // 2]))
    assert lines[0]["message"]["content"] == "partial"
    assert lines[-1] == {"error": "out of memory"} and len(lines) == 2
    assert stream.failed and stream.feed(b"data: {}\n\n") == [] and stream.finish() == []


def test_fail_and_malformed_events_end_the_stream_once():
    stream = ChatStream("m", started_ns=0)
    assert lines_of(stream.feed(b"data: {not json\n\n"))[0]["error"].startswith("upstream sent a malformed event")
    assert stream.fail("again") == [] and stream.finish() == []
    broken = ChatStream("m", started_ns=0)
    assert broken.fail("connection reset") == [b'{"error":"connection reset"}\n']


def test_finish_is_given_once():
    stream = ChatStream("m", started_ns=0)
    assert len(stream.finish()) == 1 and stream.finish() == [] and stream.feed(sse(delta("x"))) == []


def test_generate_stream_from_completions_and_chat_chunks():
    data = sse(
        {"choices": [{"index": 0, "text": "The", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": " end", "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2}},
    )
    lines = lines_of(run_stream(GenerateStream("g", started_ns=0), data, [5, 50]))
    for line in lines:
        GenerateResponse.model_validate(line)
    assert [line["response"] for line in lines] == ["The", " end", ""]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 2
    thinking = lines_of(run_stream(GenerateStream("g", started_ns=0), sse(delta(reasoning="hm"), delta("ok")), []))
    assert thinking[0] == {**thinking[0], "response": "", "thinking": "hm"} and thinking[1]["response"] == "ok"


def test_generate_stream_from_llama_server_infill():
    data = (
        b'data: {"index":0,"content":"x = ","stop":false}\n\n'
        b'data: {"index":0,"content":"1","stop":false}\n\n'
        b'data: {"index":0,"content":"","stop":true,"stop_type":"limit","tokens_predicted":2,"tokens_evaluated":9,'
        b'"timings":{"prompt_n":9,"prompt_ms":1.5,"predicted_n":2,"predicted_ms":3.0}}\n\n'
    )
    lines = lines_of(run_stream(GenerateStream("g", started_ns=0), data, []))
    assert [line["response"] for line in lines] == ["x = ", "1", ""]
    final = lines[-1]
    assert final["done_reason"] == "length" and (final["prompt_eval_count"], final["eval_count"]) == (9, 2)
    assert final["prompt_eval_duration"] == 1_500_000


def test_generate_stream_drops_tool_calls():
    data = sse(delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}], finish="tool_calls"))
    lines = lines_of(run_stream(GenerateStream("g", started_ns=0), data, []))
    assert len(lines) == 1 and lines[0]["done"] is True


def test_sse_parser_fields():
    parser = SseParser()
    events = parser.feed(b'event: x\ndata: a\ndata: b\n\n: comment\n\nid: 3\nretry: 5\ndata:c\n\n{"bare": 1}\n\n')
    assert events == [("x", "a\nb"), ("message", "c"), ("message", '{"bare": 1}')]
    assert parser.feed(b"data: tail") == [] and parser.flush() == [("message", "tail")]


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=10))
def test_streams_survive_any_bytes(data, cuts):
    for kind in (ChatStream, GenerateStream):
        stream = kind("m", started_ns=0)
        lines = run_stream(stream, data, [cut for cut in cuts if cut <= len(data)])
        parsed = lines_of(lines)
        assert parsed and ("error" in parsed[-1] or parsed[-1]["done"] is True)


# --- model details and listings -------------------------------------------------------------------------------


@pytest.fixture
def real_gguf() -> Path:
    if not REAL_GGUF.is_file():
        pytest.skip(f"{REAL_GGUF} is absent (scripts/fetch_model.py fetches it)")
    return REAL_GGUF


@pytest.fixture
def real_mlx() -> Path:
    if not (REAL_MLX / "config.json").is_file():
        pytest.skip(f"{REAL_MLX} is absent (scripts/gguf_to_mlx.py writes it)")
    return REAL_MLX


def test_details_of_the_real_gguf(real_gguf):
    details = ollama.model_details(real_gguf)
    assert details["format"] == "gguf" and details["family"] == "llama" and details["families"] == ["llama"]
    assert details["quantization_level"] == "Q4_1" and details["parameter_size"] == "135M"
    assert details["context_length"] == 8192 and details["size"] == real_gguf.stat().st_size
    assert re.fullmatch(r"[0-9a-f]{64}", details["digest"])
    assert "im_start" in details["template"] and details["capabilities"][0] == "completion"
    info = details["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 8192
    assert info["tokenizer.ggml.tokens"] == [] and "tokenizer.chat_template" not in info
    assert ollama.model_details(real_gguf)["digest"] == details["digest"]  # stable


def test_details_of_the_real_mlx_folder(real_mlx):
    details = ollama.model_details(real_mlx)
    assert details["format"] == "safetensors" and details["family"] == "llama"
    # the same model as the GGUF: 134,515,008 parameters, which Ollama prints as 134.52M
    assert details["parameter_count"] == 134_515_008 and details["parameter_size"] == "134.52M"
    assert details["quantization_level"] == "int4" and details["context_length"] == 8192
    assert details["size"] == sum(p.stat().st_size for p in real_mlx.iterdir())
    assert details["model_info"]["llama.context_length"] == 8192 and details["template"]


def test_details_of_the_tiny_models(gguf_model, mlx_model):
    tiny = ollama.model_details(gguf_model)
    assert tiny["quantization_level"] == "F32" and tiny["family"] == "llama" and tiny["context_length"] == 512
    assert tiny["parameter_size"].endswith("K") or tiny["parameter_size"].endswith("M")
    assert tiny["model_info"]["general.parameter_count"] == tiny["parameter_count"]
    mlx = ollama.model_details(mlx_model)
    assert mlx["format"] == "safetensors" and mlx["family"] == "llama" and mlx["parameter_count"] > 0
    assert mlx["context_length"] == 512


def test_details_never_raise(tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(40))
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    broken = tmp_path / "broken-mlx"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for path in (garbage, empty, broken, tmp_path / "absent.gguf", tmp_path):
        details = ollama.model_details(path)
        assert details["path"] == str(path)
    assert ollama.model_details(garbage)["size"] == 48 and "format" not in ollama.model_details(garbage)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_details_of_any_bytes_never_raise(tmp_path, data):
    path = tmp_path / f"any-{hash(data)}.gguf"
    path.write_bytes(b"GGUF" + data)
    assert ollama.model_details(path)["size"] == len(data) + 4


@pytest.mark.parametrize(
    ("count", "shown"),
    [(134_515_008, "134.52M"), (7_000_000_000, "7B"), (7_615_616_512, "7.6B"), (1_500, "2K"), (999, "999")],
)
def test_human_number_as_ollama_prints(count, shown):
    assert ollama.human_number(count) == shown


def test_tag_entry_validates_with_the_client(real_gguf, mlx_model):
    entries = [
        ollama.tag_entry("smol", ollama.model_details(real_gguf)),
        ollama.tag_entry("tiny:q4", ollama.model_details(mlx_model)),
    ]
    listing = ListResponse.model_validate({"models": entries})
    assert [model.model for model in listing.models] == ["smol:latest", "tiny:q4"]
    assert entries[0]["name"] == "smol:latest" and entries[0]["details"]["parameter_size"] == "135M"
    assert entries[0]["details"]["parent_model"] == "" and listing.models[0].size == real_gguf.stat().st_size
    assert listing.models[0].modified_at.timestamp() == pytest.approx(real_gguf.stat().st_mtime, abs=1e-3)


def test_tag_entry_with_no_details_still_validates():
    entry = ollama.tag_entry("remote", {})
    ListResponse.model_validate({"models": [entry]})
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"]) and entry["size"] == 0


def test_show_response(real_gguf):
    details = ollama.model_details(real_gguf)
    shown = ollama.show_response(
        "smol", details, parameters={"num_ctx": 2048, "stop": ["<|im_end|>"]}, vision=True, context_length=2048
    )
    parsed = ShowResponse.model_validate(shown)
    assert parsed.modelinfo["general.architecture"] == "llama" and parsed.modelinfo["llama.context_length"] == 2048
    assert parsed.capabilities == ["completion", "vision"]
    assert parsed.template == details["template"]
    assert shown["parameters"].splitlines() == [f"{'num_ctx':<30} 2048", f'{"stop":<30} "<|im_end|>"']
    assert "FROM " in shown["modelfile"] and "PARAMETER stop" in shown["modelfile"]


def test_show_capabilities_follow_the_template(tmp_path, model_maker):
    template = "{% if tools %}{{ tools }}{% endif %}<think></think>{{ messages }}"
    folder = model_maker.write_mlx(tmp_path / "tools-mlx")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    shown = ollama.show_response("t", ollama.model_details(folder))
    ShowResponse.model_validate(shown)
    assert shown["capabilities"] == ["completion", "tools", "thinking"]


def test_ps_entry(real_gguf):
    details = ollama.model_details(real_gguf)
    expires = time.time() + 300
    entries = [
        ollama.ps_entry("smol", details, 250_000_000, 200_000_000, expires, 4096),
        ollama.ps_entry("pinned", details, 1, 0, None, None),
    ]
    parsed = ProcessResponse.model_validate({"models": entries})
    assert parsed.models[0].expires_at.timestamp() == pytest.approx(expires, abs=1e-3)
    assert (parsed.models[0].size, parsed.models[0].size_vram, parsed.models[0].context_length) == (
        250_000_000,
        200_000_000,
        4096,
    )
    assert parsed.models[1].expires_at.year > 2200 and parsed.models[1].context_length == 8192
    assert parsed.models[0].name == "smol:latest"


# --- layering -------------------------------------------------------------------------------------------------


def test_the_package_imports_only_allowed_layers():
    imported = set()
    for path in Path(ollama.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.startswith("llmctl")}
    own = {name for name in ours if name.startswith("llmctl.gateway.ollama.")}
    assert ours - own == {"llmctl.memory.gguf"}
    assert not {"aiohttp", "asyncio", "socket"} & imported


# --- the real upstream ----------------------------------------------------------------------------------------


@pytest.fixture
def real_llama_server(llama_server, real_gguf):
    port = free_port()
    process = subprocess.Popen(
        [llama_server, "-m", str(real_gguf), "--port", str(port), "--host", "127.0.0.1", "-c", "1024", "--jinja"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, "llama-server exited"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_real_llama_server_through_the_translation(real_llama_server):
    body = {
        "model": "smol",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hello."}],
        "options": {"temperature": 0, "num_predict": 12, "seed": 1, "repeat_penalty": 1.1, "num_ctx": 99},
    }
    up = ollama.chat_request(body, None, "llama.cpp")
    assert up.dropped == ["num_ctx"]
    stream = ChatStream("smol", started_ns=time.monotonic_ns())
    lines: list[bytes] = []
    with httpx.stream("POST", real_llama_server + up.path, json=up.payload, timeout=60) as reply:
        assert reply.status_code == 200
        for chunk in reply.iter_raw():
            lines += stream.feed(chunk)
    lines += stream.finish()
    parsed = [ChatResponse.model_validate(line) for line in lines_of(lines)]
    text = "".join(part.message.content or "" for part in parsed)
    final = parsed[-1]
    assert text and final.done and final.done_reason in ("stop", "length")
    assert final.eval_count and final.eval_count <= 12 and final.prompt_eval_count and final.eval_duration

    whole = ollama.chat_request({**body, "stream": False}, None, "llama.cpp")
    clock = Clock(started=time.monotonic_ns())
    answer = httpx.post(real_llama_server + whole.path, json=whole.payload, timeout=60).json()
    clock.end = time.monotonic_ns()
    reply = ChatResponse.model_validate(ollama.chat_response(answer, "smol", clock))
    assert reply.message.content == text  # temperature 0: the same words streamed or not
    assert reply.eval_count == final.eval_count and reply.prompt_eval_duration


# --- found by hostile clients (helper on issue 20) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tools",
    [
        [1, 2],  # llama-server answered 500 "Failed to parse tools: Missing tool type"
        [{"type": "function"}],  # 500 "Missing tool function"
        [{"type": "function", "function": {"name": ""}}],
        [{"type": "function", "function": "add"}],
    ],
)
def test_tools_that_are_not_named_function_objects_are_a_400(tools):
    with pytest.raises(OllamaError) as caught:
        ollama.chat_request(chat(tools=tools), None, "llama.cpp")
    assert caught.value.status == 400


def test_a_named_tool_passes_unchanged():
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    assert ollama.chat_request(chat(tools=[tool]), None, "llama.cpp").payload["tools"] == [tool]


@pytest.mark.parametrize("context", ["abc", {"a": 1}, [1, "x"], [True]])
def test_a_context_that_is_not_a_list_of_tokens_is_a_400(context):
    with pytest.raises(OllamaError) as caught:
        ollama.generate_request({"model": "m", "prompt": "x", "context": context}, None, "llama.cpp")
    assert caught.value.status == 400
    assert (
        "context"
        in ollama.generate_request({"model": "m", "prompt": "x", "context": [1, 2]}, None, "llama.cpp").dropped
    )


@pytest.mark.parametrize(
    "template",
    [
        "{% if enable_thinking %}...{% endif %}",  # Qwen3
        "{{ message.reasoning_content }}",  # llama.cpp's reasoning field
        "<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}",  # gpt-oss (harmony)
        "[THINK]{{ m }}[/THINK]",  # Mistral's reasoning models
    ],
)
def test_templates_of_reasoning_models_without_think_tags_say_thinking(template):
    # `think: true` is refused for a model without "thinking": a model that reasons must not be refused.
    capabilities = _capabilities(template, False, False, False)
    assert "thinking" in capabilities
    ollama.chat_request(chat(think=True), None, "llama.cpp", capabilities=capabilities)


def test_a_plain_template_does_not_say_thinking():
    assert "thinking" not in _capabilities("{{ '<|im_start|>' + message['content'] }}", False, False, False)
