"""The restart policy on scripted histories and clocks: no process, no sleep, no randomness."""

from __future__ import annotations

import pytest

from llmctl.control.policy import JITTER, Attempt, Rules, decide, delay_after, trim

RULES = Rules(policy="on-failure", backoff=1.0, max_backoff=8.0, max_starts=5, window=60.0)


def healthy_run(started: float) -> Attempt:
    return Attempt(started, became_ready=True)


def failed_start(started: float) -> Attempt:
    return Attempt(started, became_ready=False)


def test_policies_decide_whether_to_restart():
    history = [healthy_run(0)]
    assert not decide(Rules("no", 1, 8, 5, 60), history, 10, failed=True).restart
    assert not decide(RULES, history, 10, failed=False).restart  # on-failure, clean exit
    assert decide(RULES, history, 10, failed=True).restart
    assert decide(Rules("always", 1, 8, 5, 60), history, 10, failed=False).restart


def test_a_server_that_had_been_healthy_restarts_at_once():
    assert decide(RULES, [healthy_run(0)], 5, failed=True).delay == 0.0


def test_backoff_doubles_for_failed_starts_in_a_row_up_to_max_backoff():
    history: list[Attempt] = [healthy_run(0)]
    delays = []
    for second in range(1, 6):
        history.append(failed_start(second * 100))  # far apart: the window never counts them
        delays.append(delay_after(RULES, history, jitter=0.0))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_jitter_stays_within_twenty_percent():
    history = [failed_start(0), failed_start(1)]
    assert delay_after(RULES, history, jitter=-1.0) == pytest.approx(2.0 * (1 - JITTER))
    assert delay_after(RULES, history, jitter=1.0) == pytest.approx(2.0 * (1 + JITTER))
    assert delay_after(RULES, history, jitter=7.0) == pytest.approx(2.0 * (1 + JITTER))  # clamped


def test_crash_loop_fires_exactly_at_max_starts_within_the_window():
    history = [healthy_run(float(second)) for second in range(4)]
    assert decide(RULES, history, 4.0, failed=True).restart  # 4 starts: one more allowed
    history.append(healthy_run(4.0))
    decision = decide(RULES, history, 5.0, failed=True)
    assert not decision.restart and decision.crash_loop == "crash loop: 5 starts within 60s"


def test_starts_outside_the_window_do_not_count():
    history = [healthy_run(0.0), healthy_run(1.0), healthy_run(2.0), healthy_run(3.0), healthy_run(100.0)]
    assert decide(RULES, history, 101.0, failed=True).restart  # only one start within the last 60 s


def test_failed_starts_count_however_long_each_took():
    """A server that never gets ready within a start_timeout longer than the window is still given up."""
    history = [failed_start(second * 300.0) for second in range(5)]  # one start every 5 minutes
    decision = decide(RULES, history, 1500.0, failed=True)
    assert not decision.restart and decision.crash_loop == "crash loop: 5 failed starts in a row"


def test_a_long_healthy_run_resets_the_series():
    history = [failed_start(0), failed_start(1), failed_start(2), healthy_run(3), failed_start(500)]
    assert delay_after(RULES, history, jitter=0.0) == 1.0  # one failure in a row, not four
    assert decide(RULES, history, 501.0, failed=True).restart


def test_trim_keeps_what_can_still_count():
    history = [healthy_run(0.0), failed_start(10.0), healthy_run(200.0), failed_start(300.0), failed_start(900.0)]
    assert trim(history, RULES, 901.0) == [failed_start(300.0), failed_start(900.0)]
