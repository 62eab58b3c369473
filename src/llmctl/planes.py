"""The contract between the two planes: the supervisor (control plane) and the gateway (data plane).

They are separate processes. The gateway opens the supervisor's control socket (llmctl.control.server)
and sends one line, `{"op": "subscribe", "pid": PID}`; from then on that connection carries JSON lines
both ways until either side goes away. The gateway never reads state files: everything it knows of
the fleet, the supervisor pushed.

Supervisor -> gateway (each line has an "event"):

    {"event": "snapshot", "gateway": {GatewaySpec as a dict} | null, "instances": [Route, ...]}
        First after subscribing, and again whenever the config changes. `gateway` null: stop serving.
    {"event": "instance", "instance": Route}
        One instance changed (state, usage counters). Routes are replaced whole, never patched.
    {"event": "reply", "id": N, "ok": true}
    {"event": "reply", "id": N, "ok": false, "error": {"status": 503, "code": "...", "message": "...",
                                                      "retry_after": S | null}}
        The answer to one `acquire`: the instance is healthy and the request now counts as in flight
        on its runner, or the request must be refused with that HTTP status (an Admission error).

Gateway -> supervisor (each line has an "op"):

    {"op": "listening", "url": "http://127.0.0.1:8080"}   the gateway serves its settings' address
    {"op": "failed", "message": "..."}                     it cannot (the port is taken): it exits next
    {"op": "acquire", "id": N, "instance": NAME}
        A request for NAME that cannot go straight through (the instance is not healthy). The runner
        starts it if it is on demand (stopping others to make room), waits for a stop in progress to
        end and starts it again, and answers with a `reply` once it is healthy or can never be.
    {"op": "cancel", "id": N}          the client of an `acquire` went away before the reply
    {"op": "keep_alive", "instance": NAME, "seconds": F}
        A request's keep_alive (Ollama's semantics): 0 is `stop` below; a negative value keeps an on-demand
        instance loaded with no ttl, a positive one sets its ttl, counted from now, until its next start.
        A pinned instance ignores it (its log says so).
    {"op": "lifecycle", "id": N, "instance": NAME, "action": "start" | "stop"}
        Start (through admission, for an on-demand one) or stop an instance for the gateway's HTTP
        endpoints; answered by a `reply` with `"state"` once the runner took it on, or an Admission error.
    {"op": "begin", "id": N, "instance": NAME}
        A request is going straight to a healthy instance: it counts as in flight from now on.
    {"op": "end", "id": N, "status": S, "seconds": F}
        A request that was acquired or begun is over (S: the HTTP status the client got; 499: it left).
    {"op": "stop", "instance": NAME, "reason": "..."}
        Stop the instance once idle (a request's keep_alive of 0). The runner decides: an instance
        with requests in flight or waiting, or a pinned one (no on_demand), is not stopped.

Requests ids are the gateway's, unique per connection. When the connection closes, the supervisor
ends every request still open on it, and a new gateway (or the same one, reconnected to a new
supervisor) sends `begin` again for the requests it is still serving, so in-flight counts survive
either side restarting. Last use, in-flight counts, ttl and eviction live on the runners, never here.

Route (the gateway's view of one instance):

    {"name": str, "aliases": [str], "url": "http://127.0.0.1:8081", "upstream_model": str | null,
     "backend": str, "state": "healthy" | ..., "on_demand": bool, "parallel": int,
     "upstream_api_key": str | null, "usage": {"in_flight", "queued", "starts", "evictions",
     "load_seconds", "requests", "last_used_s"}, "model": str | null (the spec's model: a path or a name)}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 4 << 20  # the longest line either side accepts (a snapshot of hundreds of instances fits)
SERVING = "healthy"  # the one state in which a request goes straight through


class ChannelError(Exception):
    """A line on the channel that is not one of the messages above."""


@dataclass(frozen=True)
class Admission:
    """Why a request cannot be served: the HTTP status the gateway answers with, and the reason."""

    status: int
    code: str
    message: str
    retry_after: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message, "retry_after": self.retry_after}

    @classmethod
    def from_dict(cls, data: Any) -> Admission:
        """Raises ChannelError for anything but the shape `to_dict` writes."""
        try:
            return cls(int(data["status"]), str(data["code"]), str(data["message"]), data.get("retry_after"))
        except (KeyError, TypeError, ValueError):
            raise ChannelError(f"not an admission error: {data!r}"[:200]) from None


class AdmissionRefused(Exception):
    """Raised on the control-plane side when a request cannot be admitted; carries the Admission."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(admission.message)
        self.admission = admission


@dataclass(frozen=True)
class Route:
    """One instance as the gateway routes to it."""

    name: str
    url: str
    backend: str
    state: str
    aliases: tuple[str, ...] = ()
    upstream_model: str | None = None
    on_demand: bool = False
    parallel: int = 1
    upstream_api_key: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # the spec's model: a file or folder path, or a name the server knows

    @property
    def serving(self) -> bool:
        return self.state == SERVING

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "url": self.url,
            "backend": self.backend,
            "state": self.state,
            "upstream_model": self.upstream_model,
            "on_demand": self.on_demand,
            "parallel": self.parallel,
            "upstream_api_key": self.upstream_api_key,
            "usage": self.usage,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Route:
        """Raises ChannelError for anything but the shape `to_dict` writes."""
        try:
            return cls(
                name=str(data["name"]),
                url=str(data["url"]),
                backend=str(data["backend"]),
                state=str(data["state"]),
                aliases=tuple(str(alias) for alias in data.get("aliases") or ()),
                upstream_model=data.get("upstream_model"),
                on_demand=bool(data.get("on_demand")),
                parallel=max(1, int(data.get("parallel") or 1)),
                upstream_api_key=data.get("upstream_api_key"),
                usage=dict(data.get("usage") or {}),
                model=None if data.get("model") is None else str(data["model"]),
            )
        except (KeyError, TypeError, ValueError):
            raise ChannelError(f"not a route: {data!r}"[:200]) from None


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line as a message; ChannelError for anything that is not a JSON object."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise ChannelError(f"not JSON: {line[:100]!r}") from None
    if not isinstance(message, dict):
        raise ChannelError(f"not a JSON object: {line[:100]!r}")
    return message
