"""Ollama's errors: OllamaError (an HTTP status and Ollama's text), the `{"error": ...}` body and the NDJSON line
that ends a failed stream, an upstream's error reply read as one, and the JSON kinds as Go's decoder names them
in its texts [R][ER][T]."""

from __future__ import annotations

import json
from typing import Any


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


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
