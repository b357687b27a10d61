"""One stream, one query: the checkpoint lock refuses live owners and takes over dead ones."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_jobs.storage import Location
from streamops.locks import LockHolder, StreamLock, StreamLocked
from streamops.supervision import RestartBudget


def lock_at(tmp_path: Path, owner: str) -> StreamLock:
    return StreamLock(Location.of(str(tmp_path / "ck/_streamops/lock.json")), owner, ttl_seconds=60)


def test_a_live_owner_keeps_the_lock_and_is_named(tmp_path: Path) -> None:
    first = lock_at(tmp_path, "word_count_stream/run-1/run_stream#1")
    first.acquire()
    with pytest.raises(
        StreamLocked, match=r"already running as word_count_stream/run-1/run_stream#1"
    ):
        lock_at(tmp_path, "word_count_stream/run-2/run_stream#1").acquire()
    first.release()
    lock_at(tmp_path, "word_count_stream/run-2/run_stream#1").acquire()


def test_a_lock_whose_process_died_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock = lock_at(tmp_path, "new")
    holder = LockHolder("old", lock._holder().host, int(dead.stdout), "t", time.time())
    lock.lock_file.write_text_atomic(json.dumps(holder.__dict__))
    lock.acquire()
    assert lock.read() is not None
    assert lock.read().owner == "new"  # type: ignore[union-attr]


def test_a_lock_without_heartbeat_is_taken_over_even_from_another_host(tmp_path: Path) -> None:
    lock = lock_at(tmp_path, "new")
    holder = LockHolder("old", "other-host", 1, "t", time.time() - 3600)
    lock.lock_file.write_text_atomic(json.dumps(holder.__dict__))
    lock.acquire()
    assert lock.read().owner == "new"  # type: ignore[union-attr]


def test_a_fresh_lock_on_another_host_is_respected(tmp_path: Path) -> None:
    lock = lock_at(tmp_path, "new")
    holder = LockHolder("old", "other-host", 1, "t", time.time())
    lock.lock_file.write_text_atomic(json.dumps(holder.__dict__))
    with pytest.raises(StreamLocked, match="pid 1 on other-host"):
        lock.acquire()


def test_release_never_removes_another_owners_lock(tmp_path: Path) -> None:
    mine = lock_at(tmp_path, "mine")
    mine.acquire()
    theirs = LockHolder("theirs", "other-host", 1, "t", time.time())
    mine.lock_file.write_text_atomic(json.dumps(theirs.__dict__))
    mine.release()
    assert mine.read() == theirs


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
