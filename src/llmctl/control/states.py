"""An instance's states, the moves between them, and what each means to someone waiting.

Standard library only: the supervisor, the status fast path and the diagram in docs/supervision.md all read
this one table. Every state change goes through `Transitions.move`, which refuses an edge the
table does not hold, so the diagram cannot drift from the code.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    STOPPED = "stopped"  # not running, and nothing will start it on its own
    STARTING = "starting"  # a process runs and is not ready yet (or is being adopted)
    HEALTHY = "healthy"  # ready, and its liveness probes pass
    UNHEALTHY = "unhealthy"  # running, but its last probe failed; stopped after failure_threshold
    STOPPING = "stopping"  # being stopped, for the reason recorded with the move
    BACKOFF = "backoff"  # waiting to start again after an exit or a failed start
    FAILED = "failed"  # given up on: crash loop, an error no retry can fix, or policy `no`

    def __str__(self) -> str:
        return self.value


S = State

# from -> the states it may move to, and why (docs/supervision.md's diagram is generated from this).
TRANSITIONS: dict[State, dict[State, str]] = {
    S.STOPPED: {
        S.STARTING: "up, restart, or adopting a running server",
    },
    S.STARTING: {
        S.HEALTHY: "the backend says ready",
        S.STOPPING: "down, restart, or a start that failed",
        S.BACKOFF: "exited while starting; retry per policy",
        S.FAILED: "exited while starting, or cannot start (no binary, busy port); no retry",
    },
    S.HEALTHY: {
        S.UNHEALTHY: "a liveness probe failed",
        S.STOPPING: "down, restart, max_memory",
        S.BACKOFF: "exited; restart per policy",
        S.FAILED: "exited; crash loop or policy says no",
        S.STOPPED: "exited cleanly; policy says no restart",
    },
    S.UNHEALTHY: {
        S.HEALTHY: "a liveness probe passed again",
        S.STOPPING: "failure_threshold probes failed in a row, down, restart, max_memory",
        S.BACKOFF: "exited; restart per policy",
        S.FAILED: "exited; crash loop or policy says no",
        S.STOPPED: "exited cleanly; policy says no restart",
    },
    S.STOPPING: {
        S.STOPPED: "stopped on request",
        S.STARTING: "restart",
        S.BACKOFF: "stopped by a probe or max_memory; restart per policy",
        S.FAILED: "stopped by a probe or max_memory; crash loop or policy says no",
    },
    S.BACKOFF: {
        S.STARTING: "the backoff delay passed, or up/restart",
        S.STOPPED: "down",
    },
    S.FAILED: {
        S.STARTING: "up or restart",
        S.STOPPED: "down",
    },
}

# A process of the instance may be alive in these states.
RUNNING = frozenset({S.STARTING, S.HEALTHY, S.UNHEALTHY, S.STOPPING})
# The supervisor means to keep the instance running in these (persisted, so a new supervisor resumes).
WANTED_RUNNING = RUNNING | {S.BACKOFF}


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in llmctl, never a user's mistake."""


def check_edge(current: State, target: State) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {target} is not an edge of the state table")


# What `wait` and `up` make of a state: will waiting longer make the instance healthy?
OK, PENDING, FAILED_OUTCOME = "ok", "pending", "failed"


def outcome(state: State, failed_start: bool) -> str:
    """ok (healthy), failed (it will not become healthy without help, or its last start failed and it
    is only retrying), or pending."""
    if state is S.HEALTHY:
        return OK
    if state in (S.FAILED, S.STOPPED) or (state is S.BACKOFF and failed_start):
        return FAILED_OUTCOME
    return PENDING


def standby(state: State, on_demand: bool) -> bool:
    """An on-demand instance not running and not failed: it waits for the gateway to start it at its
    first request. `wait` and `up` count it settled (outcome ok), `status` shows it as standby."""
    return on_demand and state is S.STOPPED


def mermaid() -> str:
    """The state diagram, as docs/supervision.md shows it."""
    lines = ["stateDiagram-v2", "    [*] --> stopped"]
    for source, targets in TRANSITIONS.items():
        for target, why in targets.items():
            lines.append(f"    {source} --> {target}: {why}")
    return "\n".join(lines)
