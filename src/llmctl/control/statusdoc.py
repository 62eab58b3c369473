"""The status document: the one shape every JSON llmctl prints is built from.

    {"version": 1, "supervisor": {...} | null, "system": {...} | null, "instances": [{...}, ...]}

Each instance carries its `state` and the `outcome` the supervisor computed from it (ok / pending /
failed: see llmctl.control.states.outcome), so no client interprets state strings itself. An on-demand
instance that is stopped waits for its first request: state "stopped", outcome "ok", "standby": true. `up`, `down`,
`restart`, `wait` and errors under --json add their own keys beside these, and always `version`.
A new key may appear in a later version 1; a key changes meaning or disappears only with a new version.

Standard library only: `llmctl status --json` in a script loop imports this and nothing heavier.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing`: importing typing costs `llmctl status` 4 ms
if TYPE_CHECKING:
    from typing import Any


VERSION = 1

INSTANCE_KEYS = (
    "name",
    "backend",
    "model",
    "state",
    "outcome",
    "standby",
    "reason",
    "pid",
    "host",
    "port",
    "url",
    "restarts",
    "uptime_s",
    "state_since_s",
    "progress",
    "health",
    "start_failures",
    "last_exit",
    "last_error",
    "next_restart_in_s",
    "idle_s",
    "ttl_left_s",
    "log",
    "env",
)


def document(
    supervisor: dict[str, Any] | None,
    system: dict[str, Any] | None,
    instances: list[dict[str, Any]],
    gateway: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`gateway`: its URL and counters (per instance too) while one runs, else null."""
    return {"version": VERSION, "supervisor": supervisor, "system": system, "instances": instances, "gateway": gateway}


def with_version(payload: dict[str, Any]) -> dict[str, Any]:
    return {"version": VERSION, **payload}


def error_document(kind: str, message: str, exit_code: int) -> dict[str, Any]:
    return {"version": VERSION, "ok": False, "error": {"kind": kind, "message": message, "exit_code": exit_code}}


def select(instances: list[dict[str, Any]], names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The named instances in the order given (all when none are), and the names not found."""
    if not names:
        return instances, []
    by_name = {instance["name"]: instance for instance in instances}
    unknown = [name for name in names if name not in by_name]
    return [by_name[name] for name in dict.fromkeys(names) if name in by_name], unknown


def outcomes(instances: list[dict[str, Any]]) -> set[str]:
    return {instance["outcome"] for instance in instances}
