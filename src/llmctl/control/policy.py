"""Restart policy as pure functions of an instance's start history and the time.

Nothing here reads a clock or draws a random number: the runner passes `now` (monotonic seconds) and
the jitter, so tests drive the policy with scripted histories.

- Whether to restart: `always`; `on-failure` after a non-zero exit, a signal, a failed probe or a
  failed start; `no` never.
- Crash loop: `max_starts` starts within `window` seconds, or `max_starts` failed starts in a row
  however long each took (a server that never gets ready within a long start_timeout must not be
  retried forever).
- Delay: a server that had been healthy restarts at once (as systemd's 100 ms RestartSec); only
  failures in a row back off: `backoff`, then twice that, ... up to `max_backoff`, each ±20 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

JITTER = 0.2
QUICK_RESTART = 0.0


@dataclass(frozen=True)
class Attempt:
    """One start of an instance: when it began (monotonic) and whether it ever became healthy."""

    started: float
    became_ready: bool = False


@dataclass(frozen=True)
class Rules:
    policy: str  # no | on-failure | always
    backoff: float
    max_backoff: float
    max_starts: int
    window: float


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay: float = 0.0
    crash_loop: str | None = None  # why the instance is given up on, when it is


def failed_starts_in_a_row(history: Sequence[Attempt]) -> int:
    count = 0
    for attempt in reversed(history):
        if attempt.became_ready:
            break
        count += 1
    return count


def starts_within(history: Sequence[Attempt], window: float, now: float) -> int:
    return sum(1 for attempt in history if now - attempt.started <= window)


def decide(rules: Rules, history: Sequence[Attempt], now: float, *, failed: bool, jitter: float = 0.0) -> Decision:
    """What to do after the last attempt of `history` ended. `jitter` is in [-1, 1]."""
    if rules.policy == "no" or (rules.policy == "on-failure" and not failed):
        return Decision(restart=False)
    recent = starts_within(history, rules.window, now)
    failed_starts = failed_starts_in_a_row(history)
    if recent >= rules.max_starts:
        return Decision(False, crash_loop=f"crash loop: {recent} starts within {rules.window:g}s")
    if failed_starts >= rules.max_starts:
        return Decision(False, crash_loop=f"crash loop: {failed_starts} failed starts in a row")
    return Decision(restart=True, delay=delay_after(rules, history, jitter))


def delay_after(rules: Rules, history: Sequence[Attempt], jitter: float) -> float:
    failures = failed_starts_in_a_row(history)
    if failures == 0:
        return QUICK_RESTART  # it had been healthy: this crash is the first failure of a new series
    base = min(rules.max_backoff, rules.backoff * 2 ** (failures - 1))
    return base * (1 + JITTER * max(-1.0, min(1.0, jitter)))


def trim(history: list[Attempt], rules: Rules, now: float) -> list[Attempt]:
    """Forget what can no longer count: starts outside the window, unless part of a failed series."""
    keep_failed = failed_starts_in_a_row(history)
    cutoff = len(history) - keep_failed
    return [
        attempt for index, attempt in enumerate(history) if index >= cutoff or now - attempt.started <= rules.window
    ]
