"""Bounded work per request: the body read under a size and a time limit, decoded without bombs, parsed once.

    body = await read_body(request, limit=spec.max_body, timeout=30.0)       # Refused 408/413/415/400
    parsed = parse_body(request.content_type, body)                          # Refused 400
    upstream_body = with_model(body, parsed.is_json, "served-name", parsed.payload)

The server must run with aiohttp's `auto_decompress=False` (an AppRunner/Server option): `read_body` decodes
Content-Encoding itself, with `zlib.decompressobj(...).decompress(data, max_length)`, so the *decoded* size
never exceeds `limit` however small the compressed body (30 KB of gzip can expand to 30 MB). aiohttp's own
decoding has no such bound in older releases, and aiohttp's `client_max_size` guards only `request.read()`,
never `request.content`.

Parsing a JSON body of LARGE_BODY bytes or more takes milliseconds of CPU: the server may run
`parse_body` and `with_model` in a thread (`asyncio.to_thread`) above that size so one large request does not
stall every stream. Either way the body is parsed once: `parse_body` returns the payload `with_model` rewrites.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import zlib
from typing import Any, NamedTuple

from aiohttp import web

from llmctl.gateway.problems import Refused

CHUNK = 64 * 1024  # bytes read from the socket at a time
LARGE_BODY = 1 << 20  # bytes: above this, parse in a thread
MAX_MODEL_NAME = 256  # characters
MAX_PARTS = 1000  # multipart parts scanned; OpenAI's multipart endpoints take a few dozen fields at most
MAX_PART_HEADERS = 8 * 1024  # bytes of one part's header block
SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate")


class RequestBody(NamedTuple):
    """A parsed request body: JSON or multipart, the `model` it names, and the JSON object (None for multipart)."""

    is_json: bool
    model: str
    payload: dict[str, Any] | None


# -- reading ---------------------------------------------------------------------------------------------------


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The request's body, decoded from its Content-Encoding, at most `limit` bytes, read within `timeout` seconds.

    Refused, in the order checked:
    - 413 "too_large": Content-Length above `limit` (before reading a byte), or more than `limit` bytes
      received, or more than `limit` bytes once decoded (decoding stops at `limit` + 1 bytes);
    - 415 "unsupported_encoding": a Content-Encoding other than gzip, x-gzip or deflate (RFC 9110 §8.4.1), such
      as br, zstd or compress, or more than one coding;
    - 400 "corrupt_body": compressed data that does not decode, is truncated, or has bytes after its end;
    - 408 "body_timeout": the whole body did not arrive within `timeout` seconds (a slow client holds a
      connection and a buffer; the deadline bounds both).
    "deflate" is the zlib format (RFC 9110 §8.4.1.2), but some clients send raw DEFLATE (RFC 1951): both are
    taken, told apart by the zlib header's check bits (RFC 1950 §2.2), as aiohttp's own decoder does.
    """
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    decoder = _decoder_for(request.headers.getall("Content-Encoding", []), limit)
    try:
        return await asyncio.wait_for(_read(request, decoder, limit), timeout)
    except asyncio.TimeoutError:
        raise Refused(408, f"the request body did not arrive within {timeout:g} s", "body_timeout") from None


async def _read(request: web.BaseRequest, decoder: _Decoder, limit: int) -> bytes:
    received = 0
    while chunk := await request.content.read(CHUNK):
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)  # compressed bytes count too: no need to decode what is already too much
        decoder.feed(chunk)
    return decoder.finish()


def _too_large(limit: int) -> Refused:
    return Refused(413, f"the request body is larger than {limit} bytes", "too_large")


def _decoder_for(values: list[str], limit: int) -> _Decoder:
    codings = [token.strip().lower() for value in values for token in value.split(",")]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if not codings:
        return _Decoder(None, limit)
    if len(codings) > 1 or codings[0] not in SUPPORTED_ENCODINGS:
        raise Refused(
            415,
            f"Content-Encoding {', '.join(codings)!s} is not supported; send gzip, deflate or no encoding",
            "unsupported_encoding",
        )
    return _Decoder(codings[0], limit)


class _Decoder:
    """Incremental decoding with a hard cap: at most `limit` + 1 decoded bytes ever exist, then 413."""

    def __init__(self, coding: str | None, limit: int) -> None:
        self.coding, self.limit = coding, limit
        self.parts: list[bytes] = []
        self.size = 0
        self._zlib: Any = None  # zlib.Decompress, made once the first bytes say which format "deflate" is
        self._head = b""  # the first bytes of a deflate body, until two arrive

    def feed(self, data: bytes) -> None:
        if self.coding is None:
            self._keep(data)
            return
        if self._zlib is None:
            self._head += data
            if self.coding == "deflate" and len(self._head) < 2:
                return  # the zlib header is two bytes: wait for both before choosing the format
            data, self._head = self._head, b""
            self._zlib = zlib.decompressobj(self._wbits(data))
        self._decode(data)

    def _decode(self, data: bytes) -> None:
        if self._zlib.eof:
            raise _corrupt("data after the end of the compressed body")
        try:
            # max_length is never 0 here (that would mean "no limit"): size <= limit while we run.
            out = self._zlib.decompress(data, self.limit + 1 - self.size)
        except zlib.error:
            raise _corrupt("the compressed body does not decode") from None
        self._keep(out)
        if self._zlib.unused_data:
            raise _corrupt("data after the end of the compressed body")

    def _wbits(self, head: bytes) -> int:
        if self.coding in ("gzip", "x-gzip"):
            return 16 + zlib.MAX_WBITS  # gzip wrapper only (RFC 1952)
        is_zlib = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS

    def _keep(self, out: bytes) -> None:
        self.size += len(out)
        if self.size > self.limit:
            raise _too_large(self.limit)
        self.parts.append(out)

    def finish(self) -> bytes:
        # Nothing came, one byte of deflate (no stream is that short), or a stream cut before its end.
        if self.coding is not None and (self._zlib is None or not self._zlib.eof):
            raise _corrupt("the compressed body is truncated")
        return b"".join(self.parts)


def _corrupt(why: str) -> Refused:
    return Refused(400, why, "corrupt_body")


# -- parsing ---------------------------------------------------------------------------------------------------


def parse_body(content_type: str, body: bytes) -> RequestBody:
    """Parse a request body once: multipart/form-data by its `model` field, anything else as a JSON object.

    Refused(400) with code "invalid_json" (not JSON, not UTF-8, not an object), "nesting_too_deep" (arrays or
    objects nested past Python's recursion limit), "missing_model" (absent, empty or not a string),
    "model_too_long" (over MAX_MODEL_NAME characters), "bad_multipart" (no boundary, malformed parts, more than
    MAX_PARTS, two `model` fields). Never raises anything else.
    """
    if content_type.partition(";")[0].strip().lower() == "multipart/form-data":
        return RequestBody(False, _checked_model(_multipart_model(content_type, body)), None)
    payload = _json_object(body)
    return RequestBody(True, _checked_model(payload.get("model")), payload)


def model_of(content_type: str, body: bytes) -> tuple[bool, str]:
    """(is_json, model) for a request body; `parse_body` without the payload. Refused(400) as `parse_body`."""
    parsed = parse_body(content_type, body)
    return parsed.is_json, parsed.model


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise _nested() from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, and ints over sys.get_int_max_str_digits()
        raise Refused(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(payload, dict):
        raise Refused(400, "the request body must be a JSON object", "invalid_json")
    return payload


def _nested() -> Refused:
    return Refused(400, "the request body is nested too deeply", "nesting_too_deep")


def _checked_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise Refused(400, "the request names no `model`", "missing_model")
    if len(model) > MAX_MODEL_NAME:
        raise Refused(400, f"the model name is longer than {MAX_MODEL_NAME} characters", "model_too_long")
    return model


# -- multipart -------------------------------------------------------------------------------------------------


def _multipart_model(content_type: str, body: bytes) -> str | None:
    """The value of the one `model` form field (RFC 7578), or None; Refused(400) for a malformed body.

    A scan with bytes.find, not a full parser: part bodies (audio, images) are never copied. The body must be
    well formed up to its close delimiter, so the gateway and the upstream cannot read it differently; two
    `model` fields are refused for the same reason.
    """
    delimiter = b"\r\n--" + _boundary(content_type)
    found: list[str] = []
    position = _first_part(body, delimiter)
    for _ in range(MAX_PARTS + 1):
        if body.startswith(b"--", position):
            return found[0] if found else None  # the close delimiter: "--boundary--"
        start = _after_line(body, position)
        end = body.find(delimiter, start)
        if end < 0:
            raise _bad_multipart("a part is not closed by the boundary")
        value = _field_value(body, start, end, "model")
        if value is not None:
            found.append(value)
            if len(found) > 1:
                raise _bad_multipart("the form holds `model` twice")
        position = end + len(delimiter)
    raise _bad_multipart(f"the form holds more than {MAX_PARTS} parts")


def _boundary(content_type: str) -> bytes:
    boundary = _param(content_type, "content-type", "boundary")
    # RFC 2046 §5.1.1: 1 to 70 characters, 7-bit; no line breaks can then hide in the delimiter.
    if not boundary or len(boundary) > 70 or not boundary.isascii() or not boundary.isprintable():
        raise _bad_multipart("the Content-Type has no usable boundary")
    return boundary.encode("ascii")


def _param(value: str, header: str, name: str) -> str | None:
    """A parameter of a header value (quoted or not), parsed by the standard library's MIME code."""
    message = email.message.Message()
    try:
        message[header] = value
        found = message.get_param(name, header=header)
    except (ValueError, LookupError, TypeError):
        return None
    return found if isinstance(found, str) else None  # an RFC 2231 tuple is no name a client should send


def _first_part(body: bytes, delimiter: bytes) -> int:
    """Where the first part's delimiter line ends; the preamble before it is ignored (RFC 2046 §5.1.1)."""
    if body.startswith(delimiter[2:]):
        return len(delimiter) - 2
    found = body.find(delimiter)
    if found < 0:
        raise _bad_multipart("the body does not start with the boundary")
    return found + len(delimiter)


def _after_line(body: bytes, position: int) -> int:
    """The start of a part: past the delimiter line's optional whitespace and its CRLF."""
    end = body.find(b"\r\n", position, position + 256)
    if end < 0 or body[position:end].strip(b" \t"):
        raise _bad_multipart("a boundary line is malformed")
    return end + 2


def _field_value(body: bytes, start: int, end: int, field: str) -> str | None:
    """The value of a form field named `field` in the part body[start:end], or None for another part."""
    if body.startswith(b"\r\n", start):
        return None  # a part without headers names no field
    headers_end = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADERS))
    if headers_end < 0:
        raise _bad_multipart("a part's headers are malformed or too long")
    disposition = _disposition(body[start:headers_end])
    if disposition is None or _param(disposition, "content-disposition", "name") != field:
        return None
    if _param(disposition, "content-disposition", "filename") is not None:
        return None  # a file upload, not a text field
    raw = body[headers_end + 4 : end]
    if len(raw) > MAX_MODEL_NAME * 4:  # four UTF-8 bytes per character at most
        raise Refused(400, f"the model name is longer than {MAX_MODEL_NAME} characters", "model_too_long")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_multipart("the `model` field is not UTF-8") from None


def _disposition(block: bytes) -> str | None:
    """The Content-Disposition value of a part's header block, if it is a form-data one."""
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-disposition":
            text = value.decode("latin-1").strip()
            return text if text.partition(";")[0].strip().lower() == "form-data" else None
    return None


def _bad_multipart(why: str) -> Refused:
    return Refused(400, f"malformed multipart body: {why}", "bad_multipart")


# -- rewriting -------------------------------------------------------------------------------------------------


def with_model(
    body: bytes, payload_is_json: bool, upstream_model: str | None, parsed: dict[str, Any] | None = None
) -> bytes:
    """The body as the upstream must see it: `model` set to `upstream_model`, or removed when that is None.

    JSON is re-serialised from `parsed` (the payload `parse_body` returned; the body is parsed again only when
    it is not given), so the upstream reads exactly the object the gateway routed by: duplicate keys and other
    parser differences are gone. ASCII-escaped output, so lone surrogates (valid JSON escapes, invalid UTF-8)
    survive. `parsed` is not modified. A multipart body is returned unchanged (the upstream serves one model
    and ignores the field). Refused(400) as `parse_body` when the body is parsed here, or "nesting_too_deep"
    if serialising recurses too deeply.
    """
    if not payload_is_json:
        return body
    payload = dict(parsed) if parsed is not None else _json_object(body)
    if upstream_model is None:
        payload.pop("model", None)
    else:
        payload["model"] = upstream_model
    try:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")
    except RecursionError:
        raise _nested() from None
