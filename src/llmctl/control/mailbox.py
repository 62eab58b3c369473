"""Requests to a runner, and how a runner waits for its own events and a request at once.

A runner reads one request at a time, between the events its current phase waits for (an exit, a
ready answer, a probe, a timer): `wait` returns the events that happened, or raises Interrupted with
the request that ends the phase. A pending read of the queue survives from one phase to the next,
so no request is ever lost to a cancelled read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec


@dataclass
class Request:
    kind: str  # start | stop | restart | replace
    reason: str
    spec: InstanceSpec | None = None
    done: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def answer(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


class Interrupted(Exception):
    """A request arrived that ends the current phase; the runner handles it next."""

    def __init__(self, request: Request) -> None:
        self.request = request


class Mailbox:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Request] = asyncio.Queue()
        self._reading: asyncio.Future[Request] | None = None

    def put(self, request: Request) -> None:
        self._queue.put_nowait(request)

    def _read(self) -> asyncio.Future[Request]:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._queue.get())
        return self._reading

    async def get(self) -> Request:
        reading = self._read()
        try:
            return await asyncio.shield(reading)
        finally:
            if reading.done():
                self._reading = None

    async def wait(
        self,
        futures: set[asyncio.Future[Any]],
        timeout: float | None,
        absorb: Callable[[Request], bool],
    ) -> set[asyncio.Future[Any]]:
        """The futures done by `timeout`, or Interrupted by the first request that `absorb` does not
        answer on the spot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reading = self._read()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({*futures, reading}, timeout=remaining, return_when="FIRST_COMPLETED")
            if reading not in done:
                return done
            self._reading = None
            if not absorb(reading.result()):
                raise Interrupted(reading.result())
