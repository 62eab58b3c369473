"""Ollama's `options` -> the fields of each upstream's request: MAPPING, the table of OLLAMA-API.md §4, and the
type checks of Ollama's Options.FromMap [T][LT][LR][M]; the backend names that pick a column of the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmctl.gateway.ollama.errors import OllamaError, _go_type

LLAMA_CPP = "llama.cpp"  # llmctl.backends.llama_cpp.LlamaCpp.name
MLX = "mlx"  # llmctl.backends.mlx.Mlx.name
OPENAI = "openai"  # any other OpenAI-compatible server: standard fields only


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
