"""A minimal asyncio HTTP/1.1 client for health probes on this machine.

The supervisor probes servers every few seconds for as long as it lives; a full HTTP client stack
(httpx, httpcore, anyio, h11) would cost it about 10 MB of its ~25 MB. Probes need only a GET or a
small JSON POST to a loopback address, one request per connection, answered with Content-Length,
chunked encoding, or close.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# A health endpoint may answer anything: the whole answer is bounded in time (the caller's timeout
# covers connect, headers and body), in header count and size, and in body size.
MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_LINE = 8 * 1024


class HttpError(Exception):
    """The request could not be made or its answer could not be read."""


@dataclass(frozen=True)
class Response:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class HttpClient:
    """`get` and `post` with the shape of the httpx calls they replace."""

    async def get(self, url: str, timeout: float) -> Response:
        return await request("GET", url, None, timeout)

    async def post(self, url: str, json: Any, timeout: float) -> Response:
        return await request("POST", url, json, timeout)


async def request(method: str, url: str, payload: Any, timeout: float) -> Response:
    try:
        return await asyncio.wait_for(_exchange(method, url, payload), timeout)
    except asyncio.TimeoutError:
        raise HttpError(f"{method} {url}: no answer within {timeout:g}s") from None
    except (OSError, ValueError, UnicodeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise HttpError(f"{method} {url}: {exc}") from None


async def _exchange(method: str, url: str, payload: Any) -> Response:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http URL: {url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=parts.scheme == "https" or None, limit=MAX_LINE
    )
    try:
        body = b"" if payload is None else json.dumps(payload).encode()
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        head = [
            f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {host}:{port}",
            "User-Agent: llmctl",
            "Accept: */*",
            "Connection: close",
        ]
        if payload is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status = _status_code(await reader.readline())
        headers = await _headers(reader)
        return Response(status, await _body(reader, headers))
    finally:
        writer.close()


def _status_code(line: bytes) -> int:
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {line[:80]!r}")
    return int(parts[1])


async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    count = size = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        count, size = count + 1, size + len(line)
        if count > MAX_HEADERS or size > MAX_HEADER_BYTES:
            raise ValueError(f"the answer's headers pass {MAX_HEADERS} lines or {MAX_HEADER_BYTES} bytes")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        total = 0
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size < 0:
                raise ValueError("a negative chunk size")
            if size == 0:
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise ValueError("answer too large")
            chunks.append(await reader.readexactly(size))
            await reader.readline()
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0 or length > MAX_BODY:
            raise ValueError("answer too large")
        return await reader.readexactly(length)
    chunks, total = [], 0  # until the server closes the connection
    while chunk := await reader.read(65536):
        total += len(chunk)
        if total > MAX_BODY:
            raise ValueError("answer too large")
        chunks.append(chunk)
    return b"".join(chunks)
