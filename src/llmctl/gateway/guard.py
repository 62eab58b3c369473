"""Connection limits the event loop can afford: what keeps a flood of sockets from starving the gateway.

aiohttp's server has no cap on connections and no deadline for a request's headers (slowloris), and
keeps idle keep-alive connections for an hour by default. Every accepted connection here goes through
a Guard that wraps aiohttp's protocol:

- at `max_connections`, the connection idle the longest (no request in progress) is closed to make
  room; only when every connection is busy is the newcomer refused (closed at once);
- a new connection that has not sent a whole request's headers within `header_timeout` seconds is
  closed, and so is a kept-alive one that began a next request and did not finish its headers;
- an idle keep-alive connection is closed after `idle_timeout` seconds;
- each limit hit is logged, at most one line per LOG_EVERY seconds, with how many times it was hit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("llmctl.gateway")
SWEEP_EVERY = 1.0
LOG_EVERY = 10.0


class _RateLimitedLog:
    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def hit(self, kind: str, message: str) -> None:
        now = time.monotonic()
        self._count[kind] = self._count.get(kind, 0) + 1
        if now - self._last.get(kind, -LOG_EVERY) >= LOG_EVERY:
            log.warning("%s (%d times since the last such line)", message, self._count[kind])
            self._last[kind], self._count[kind] = now, 0


class Limits:
    """The connection limits in force (the gateway's settings may change them at any time)."""

    def __init__(self, max_connections: int, header_timeout: float, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout


class Guard(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the limits around it."""

    def __init__(self, inner: Any, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests being handled on this connection
        self.quiet_since = time.monotonic()  # opened, or the last answer ended
        self.partial = False  # bytes of a next request arrived while nothing was handled
        self.served = 0  # requests handled on this connection so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.gate.admit(self):
            transport.abort()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.partial = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gate.forget(self):
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def request_started(self) -> None:
        self.busy += 1
        self.partial = False

    def request_ended(self) -> None:
        self.busy = max(0, self.busy - 1)
        self.served += 1
        self.quiet_since = time.monotonic()

    def expired(self, now: float, limits: Limits) -> str | None:
        """Why this connection should be closed now, or None."""
        if self.busy:
            return None
        quiet = now - self.quiet_since
        if (self.partial or not self.served) and quiet > limits.header_timeout:
            # A new connection owes its first request at once; a kept-alive one, the rest of a request it began.
            return "did not finish its request's headers in time"
        if quiet > limits.idle_timeout:
            return "idle keep-alive"
        return None


class Gate:
    """Every open connection, and the limits applied to them."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: dict[int, Guard] = {}
        self._by_transport: dict[int, Guard] = {}
        self._log = _RateLimitedLog()
        self._sweeper: asyncio.Task[None] | None = None

    def factory(self, inner_factory: Callable[[], Any]) -> Callable[[], Guard]:
        """Wrap each of aiohttp's protocols that `inner_factory` makes."""
        return lambda: Guard(inner_factory(), self)

    def admit(self, guard: Guard) -> bool:
        if len(self.open) >= self.limits.max_connections and not self._evict_idlest():
            self._log.hit("full", f"refused a connection: {len(self.open)} open, every one busy (max_connections)")
            return False
        self.open[id(guard)] = guard
        self._by_transport[id(guard.transport)] = guard
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return True

    def forget(self, guard: Guard) -> bool:
        """True when the connection had been admitted (aiohttp knows of it)."""
        self._by_transport.pop(id(guard.transport), None)
        return self.open.pop(id(guard), None) is not None

    def _evict_idlest(self) -> bool:
        idle = [guard for guard in self.open.values() if not guard.busy]
        if not idle:
            return False
        victim = min(idle, key=lambda guard: guard.quiet_since)
        self._log.hit("evicted", "closed the idlest connection to admit a new one (max_connections)")
        self._close(victim)
        return True

    def _close(self, guard: Guard) -> None:
        if not self.forget(guard):
            return
        if guard.transport is not None:
            guard.transport.abort()
        guard.inner.connection_lost(None)

    def by_transport(self, transport: Any) -> Guard | None:
        return self._by_transport.get(id(transport))

    async def _sweep(self) -> None:
        while self.open:
            await asyncio.sleep(SWEEP_EVERY)
            now = time.monotonic()
            for guard in list(self.open.values()):
                reason = guard.expired(now, self.limits)
                if reason is not None:
                    self._log.hit(
                        reason,
                        f"closed a connection that {reason}" if "did" in reason else f"closed an {reason} connection",
                    )
                    self._close(guard)

    def close_all(self) -> None:
        for guard in list(self.open.values()):
            self._close(guard)
