"""Ending a streamed answer: shared by the OpenAI relay (llmctl.gateway.server) and Ollama's
translation (llmctl.gateway.ollama_api)."""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web


async def finish(response: web.StreamResponse, status: int) -> int:
    """End an answer whose body went out whole; returns `status` (the one to count), also when the client
    closed before the chunked body's last, empty chunk: OpenAI's client does so once it has read
    `data: [DONE]`, Ollama's once it has the `done: true` line. It had everything: that is not a 499."""
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write_eof()
    return status
