"""The answers the gateway gives itself when it refuses a request: OpenAI's error shape, and one log line each.

    raise Refused(404, "model 'x' not found", "model_not_found")   # anywhere below the handler
    ...
    except Refused as refused:                                      # in one place, at the edge
        log_refusal(log, request.method, raw_path, model, refused.status, refused.code, elapsed)
        return error_response(refused)

The body is the shape OpenAI's API documents for every error (platform.openai.com/docs/guides/error-codes):
`{"error": {"message", "type", "param", "code"}}`. OpenAI's own client libraries choose the exception class by
the HTTP status alone (openai-python `_client.py` `_make_status_error`: 400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422
UnprocessableEntityError, 429 RateLimitError, >= 500 InternalServerError), so `type` is for people and `code` is
for programs. OpenAI itself answers a wrong key with 401 and type "invalid_request_error" (code
"invalid_api_key"), so one type per status class is faithful: "invalid_request_error" for 4xx, "server_error"
for 5xx.

The log line is built from text a client chose (the path, the model), so every field is escaped and cut short:
a model named "x\\n... 200 OK" cannot forge a second line, and a 1 MB model name cannot fill the log.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from llmctl.planes import Admission

FIELD_LIMIT = 200  # characters of one logged field, after escaping
_ESCAPES = {"\\": "\\\\", '"': '\\"'}


class Refused(Exception):
    """A request the gateway answers itself, with an HTTP status, a message for people and a code for programs.

    `status` is the HTTP status (4xx or 5xx); `code` a short snake_case word ("model_not_found"); `retry_after`
    whole seconds for a Retry-After header (RFC 9110 §10.2.3), or None. `str(refused)` is the message.
    """

    def __init__(self, status: int, message: str, code: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after

    @property
    def message(self) -> str:
        """The message for people, as given."""
        return str(self)

    @classmethod
    def of(cls, admission: Admission) -> Refused:
        """The answer for a request the supervisor would not admit (llmctl.planes.Admission)."""
        return cls(admission.status, admission.message, admission.code, admission.retry_after)


class Unreachable(Exception):
    """No connection to an upstream could be made before any byte was sent: the request may go again."""


def error_type(status: int) -> str:
    """OpenAI's `error.type` for an HTTP status: "invalid_request_error" below 500, "server_error" from 500.

    One type per class, not per status: see the module docstring for why that is what OpenAI's clients need.
    """
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """`{"error": {"message", "type", "param": None, "code"}}`: OpenAI's documented error object.

    `param` names the offending request parameter in OpenAI's answers; the gateway's refusals concern the
    request as a whole (its host, key, size, encoding), so it is always None.
    """
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}


def error_response(refused: Refused) -> web.Response:
    """A JSON response for a refusal: OpenAI's error body, Retry-After when set, and never cached.

    Cache-Control: no-store keeps a proxy or browser from replaying a 401/429 to a later request;
    X-Content-Type-Options: nosniff keeps a browser from rendering the body (it echoes client text, such as
    the model name) as anything but JSON. A negative retry_after is sent as 0.
    """
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if refused.retry_after is not None:
        headers["Retry-After"] = str(max(0, int(refused.retry_after)))
    body = error_body(refused.status, refused.message, refused.code)
    return web.json_response(body, status=refused.status, headers=headers)


def ollama_error_response(refused: Refused) -> web.Response:
    """The same refusal in Ollama's shape, `{"error": "<text>"}` with the same status and headers (Ollama's
    `docs/api/errors.mdx`; its Python client raises ResponseError reading `error`, shared/OLLAMA-API.md §1)."""
    response = error_response(refused)
    response.text = json.dumps({"error": refused.message})
    return response


def sanitize(value: object, limit: int = FIELD_LIMIT) -> str:
    """`value` as one safe log field: at most `limit` characters, printable, on one line.

    Characters that `str.isprintable` refuses (control characters, line and paragraph separators, bidi
    overrides, lone surrogates, non-breaking spaces) become `\\xNN` / `\\uNNNN` / `\\UNNNNNNNN` escapes, and a
    backslash or double quote is escaped too, so an escape in the log always means the client sent that
    character. A field cut short ends with "...".
    """
    text = str(value)
    out: list[str] = []
    used = 0
    for char in text:
        piece = _ESCAPES.get(char) or (char if char.isprintable() else _escape(char))
        if used + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _escape(char: str) -> str:
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point < 0x10000 else f"\\U{point:08x}"


def _quoted(value: object) -> str:
    # Quotes always: a field with spaces ("model=a status=200") then cannot pass for two fields.
    return '"' + sanitize(value) + '"'


def log_refusal(
    logger: logging.Logger,
    method: str,
    path: str,
    model: str | None,
    status: int,
    reason: str,
    duration_s: float,
) -> None:
    """Log one line for a 4xx/5xx the gateway made itself:

        POST "/v1/chat/completions" model="x" status=404 reason="model_not_found" duration_ms=3

    `path` is the raw path (escapes kept, as the client sent it); `model` None when none was read; `reason` the
    refusal's code; `duration_s` seconds since the request arrived, logged as whole milliseconds. Every
    client-chosen field is sanitized (see `sanitize`) and quoted. 5xx lines are warnings (the gateway or an
    upstream failed), 4xx lines are info (the client's mistake, which must not page anyone).
    """
    level = logging.WARNING if status >= 500 else logging.INFO
    logger.log(
        level,
        "%s %s model=%s status=%d reason=%s duration_ms=%d",
        sanitize(method, 16).replace(" ", "\\x20"),  # a token for aiohttp's parser; kept one field regardless
        _quoted(path),
        _quoted(model if model is not None else "-"),
        status,
        _quoted(reason),
        round(max(duration_s, 0.0) * 1000),
    )
