"""The restart budget: backoff, then no more restarts within the window."""

from __future__ import annotations

import json
import time
from pathlib import Path

from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import LeaseHolder
from streamops.registry import StreamRecord
from streamops.supervision import RestartBudget, orphan_drivers
from streamops.triggers import stop_driver


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


def test_orphan_drivers_are_those_whose_stream_run_is_no_longer_active(tmp_path: Path) -> None:
    # Given three streams with live drivers (on another host: nothing here is signalled): one of
    # an active run, one of a failed run, one started by hand; and a fourth whose driver is gone
    def stream(name: str, owner: str, renewed: float) -> StreamRecord:
        checkpoint = tmp_path / name / "checkpoint"
        record = StreamRecord(name, "word_count", str(checkpoint), "", "", None)
        holder = LeaseHolder(name, owner, "other-host", 1, None, name, 0.0, renewed)
        CheckpointLayout.of(str(checkpoint)).lease_file.write_text_atomic(
            json.dumps(holder.__dict__)
        )
        return record

    now = time.time()
    records = [
        stream("active", "word_count_stream/run-a", now),
        stream("ended", "word_count_stream/run-b", now),
        stream("by_hand", "me@laptop (command line)", now),
        stream("gone", "word_count_stream/run-c", now - 3600),
    ]
    states = {"run-a": "running", "run-b": "failed", "run-c": "failed"}
    asked: list[tuple[str, str]] = []

    def run_state(dag_id: str, run_id: str) -> str | None:
        asked.append((dag_id, run_id))
        return states.get(run_id)

    # When the orphans are looked for
    orphans = orphan_drivers(records, run_state)
    # Then only the live driver of the ended run is one
    assert [(r.stream, h.owner) for r, h in orphans] == [("ended", "word_count_stream/run-b")]
    assert ("word_count_stream", "run-a") in asked
    # And stopping it writes its stop request once, and says nothing the second time
    assert stop_driver(records[1].checkpoint, "ended", grace_seconds=0, kill=False) is not None
    assert (tmp_path / "ended/checkpoint/_streamops/stop-request").exists()
    assert stop_driver(records[1].checkpoint, "ended", grace_seconds=0, kill=False) is None
