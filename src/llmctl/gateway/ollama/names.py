"""Model names as Ollama compares them (`NAME` is `NAME:latest`, case-insensitively) [N], a request's `model` as
routes.go checks it [R], `keep_alive` as a Go duration in seconds [T], and the requests that only load or
unload a model, with their replies [R][A]."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from llmctl.gateway.ollama.errors import OllamaError, _go_type
from llmctl.gateway.ollama.replies import rfc3339

FOREVER = -1.0  # parse_keep_alive's value for "never unload"
_MAX_NS = 2**63 - 1  # Go's time.Duration limit: Ollama's "forever" [T]


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
