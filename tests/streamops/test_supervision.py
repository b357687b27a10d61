"""The restart budget: backoff, then no more restarts within the window."""

from __future__ import annotations

from streamops.supervision import RestartBudget


def test_restart_budget_backs_off_then_runs_out() -> None:
    budget = RestartBudget(
        max_restarts=3, window_seconds=100, backoff_seconds=10, max_backoff_seconds=25
    )
    delays = []
    for now in (0, 1, 2):
        budget.record_failure(now)
        delays.append(budget.next_delay())
        assert not budget.exhausted()
    assert delays == [10, 20, 25]
    budget.record_failure(3)
    assert budget.exhausted()


def test_restart_budget_forgets_failures_outside_the_window() -> None:
    budget = RestartBudget(max_restarts=1, window_seconds=60)
    budget.record_failure(0)
    budget.record_failure(100)
    assert not budget.exhausted()
    assert budget.next_delay() == budget.backoff_seconds
