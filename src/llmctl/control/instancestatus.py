"""An instance as the status document (llmctl.control.statusdoc) shows it, from its runner or, when no
supervisor knows it, from its spec alone: the same keys either way."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llmctl.backends import safe_estimate
from llmctl.control import policy, states
from llmctl.control.states import State
from llmctl.memory.measure import memory_fields
from llmctl.system.redact import redact_env

if TYPE_CHECKING:
    from llmctl.control.runner import Runner
    from llmctl.spec import InstanceSpec


def describe(spec: InstanceSpec, runner: Runner | None, log_path: str) -> dict[str, Any]:
    now = time.monotonic()
    state = runner.state if runner else State.STOPPED
    server = runner.server if runner else None
    standby = states.standby(state, spec.on_demand)
    usage = runner.usage if runner and spec.on_demand and runner.usage.starts else None
    return {
        "name": spec.name,
        "backend": spec.backend,
        "model": spec.model,
        "state": state.value,
        "outcome": states.OK if standby else runner.outcome if runner else states.outcome(state, False),
        "standby": standby,
        "reason": runner.reason if runner else "not started",
        "pid": server.pid if server else None,
        "host": spec.host,
        "port": spec.port,
        "url": spec.url,
        "restarts": runner.restarts if runner else 0,
        "uptime_s": round(now - server.started_mono, 3) if server else None,
        "state_since_s": round(now - runner.state_since, 3) if runner else None,
        # While starting: {"phase": "downloading"|"loading"|"starting", "elapsed_s", "idle_s",
        # "downloaded_bytes", "total_bytes", "rate_bytes_per_s"}; null otherwise.
        "progress": runner.progress.describe(now) if runner and runner.progress and state is State.STARTING else None,
        **memory_fields(
            runner.memory if runner and server else None, runner.estimate if runner else safe_estimate(spec)
        ),
        # By pool (llmctl.memory.pools: "ram" or "unified", "gpu:N"): measured now, the largest measured
        # in this supervisor's life (kept after a stop), and the estimate; {} or null where unknown.
        "memory_pools": (runner.memory_pools if runner and server else None),
        "peak_pools": dict(runner.peak_pools) if runner else {},
        "estimate_pools": runner.estimate_pools.pools if runner and runner.estimate_pools else None,
        "health": runner.health if runner else None,
        "start_failures": policy.failed_starts_in_a_row(runner.history) if runner else 0,
        "last_exit": runner.last_exit if runner else None,
        "last_error": runner.last_error if runner else None,
        "next_restart_in_s": (
            round(max(0.0, runner.next_start_at - now), 3)
            if runner and state is State.BACKOFF and runner.next_start_at
            else None
        ),
        # On demand: seconds since its last request ended (null until the gateway first started it), and
        # while healthy with a ttl, the seconds left before it is stopped if it stays idle.
        "idle_s": round(max(0.0, now - usage.last_used), 3) if usage else None,
        "ttl_left_s": _ttl_left(spec, runner, now),
        "log": log_path,
        "env": redact_env(spec.env),
    }


def _ttl_left(spec: InstanceSpec, runner: Runner | None, now: float) -> float | None:
    """Seconds before ttl stops an idle, healthy on-demand instance (its spec's ttl or a request's keep_alive)."""
    if runner is None or not spec.on_demand or runner.state is not State.HEALTHY:
        return None
    ttl = runner.usage.ttl(spec.ttl)
    if ttl is None:
        return None
    return round(max(0.0, ttl - (now - max(runner.usage.last_used, runner.state_since))), 3)
