"""Streams outlive Airflow: real Airflow components, restarted and killed under running streams.

Each test runs a stack of separate Airflow processes (api-server, scheduler with LocalExecutor,
dag-processor, triggerer on SQLite) with both stream DAGs on a file feed. `stream_health` runs
every minute meanwhile: its orphan check must never stop a driver whose run is active.

- The first restarts and kills Airflow's parts the ways deploys and crashes do and checks, after
  each, that the same drivers still run, that batches go on, that the stream runs are deferred
  (no worker slot held) and none failed. A driver SIGKILL is restarted within the backoff. Then
  it stops both streams with `stream_control` and checks both sinks exactly.
- The second kills all of Airflow while the tasks start their drivers (the new tries must adopt
  those drivers), then kills everything drivers included and checks that the streams come back
  by themselves from Airflow alone, with exact sinks. Marking the task failed through the REST
  API stops the driver without a restart.

They are two tests, each with its own stack, so that a parallel run takes them side by side:
each still takes 2 to 4 minutes, since every step waits on real Airflow processes starting,
scheduling and recovering (the orphan check alone runs every 60 s, as deployed).

Why the bound on gaps (`BATCH_BOUND_SECONDS`): the drivers never stop, so a new file is in both
sinks a few 1-second triggers after it lands; 45 s leaves room for a 2-core machine that is busy
starting Airflow's components at the same moment.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import LeaseHolder, process_started, read_lease
from streamops import registry
from tests.conftest import AIRFLOW_STACK, drop_file
from tests.dags.airflow_processes import AirflowProcesses, wait_for

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow, AIRFLOW_STACK]

STREAMS = {"word_count_stream": "word_count", "running_total_stream": "running_total"}
BATCH_BOUND_SECONDS = 45.0
CONF = {"shuffle_partitions": 1, "trigger_interval": "1 second"}


class Feed:
    """Files dropped into both streams' inputs, and the word counts they add up to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.expected: collections.Counter[str] = collections.Counter()
        self.n = 0

    def drop(self) -> str:
        """Drop one new file into both inputs; the file's one new word."""
        self.n += 1
        marker = f"file{self.n:03d}"
        text = f"{marker} spark airflow spark\nstreams {marker}\n"
        for stream in STREAMS.values():
            drop_file(self.root / "streams" / stream / "input", f"{marker}.txt", text)
        self.expected.update(text.split())
        return marker


def sink_counts(root: Path, stream: str) -> dict[str, int]:
    """Each word's count as the sink says it: summed per batch, or the newest running total."""
    sink = root / "streams" / stream / "sink"
    if not any(sink.glob("*.parquet")):
        return {}
    frame = pd.read_parquet(sink)
    if stream == "word_count":
        return {str(k): int(v) for k, v in frame.groupby("word")["count"].sum().items()}
    newest = frame.sort_values("batch_id").groupby("word").tail(1)
    return {str(w): int(t) for w, t in zip(newest.word, newest.total, strict=True)}


def in_both_sinks(root: Path, word: str) -> bool:
    return all(word in sink_counts(root, stream) for stream in STREAMS.values())


def lease(root: Path, stream: str) -> LeaseHolder | None:
    holder = read_lease(
        CheckpointLayout.of(str(root / "streams" / stream / "checkpoint")).lease_file
    )
    return holder if holder is not None and not holder.is_gone() else None


def driver_starts(root: Path, stream: str) -> int:
    """How many drivers the stream's tasks have started: one start line each in its log."""
    log = Path(registry.driver_log(stream, str(root)))
    return log.read_text().count("==== ") if log.exists() else 0


def driver_log_tail(root: Path, stream: str) -> str:
    return Path(registry.driver_log(stream, str(root))).read_text()[-3000:]


def drivers(root: Path) -> dict[str, int]:
    """The pid of each stream's live driver."""
    return {s: h.pid for s in STREAMS.values() if (h := lease(root, s)) is not None}


def both_drivers(root: Path) -> dict[str, int] | None:
    """Both streams' driver pids, once both drivers hold their leases."""
    found = drivers(root)
    return found if len(found) == len(STREAMS) else None


def check_undisturbed(
    airflow: AirflowProcesses, root: Path, feed: Feed, runs: dict[str, str], pids: dict[str, int]
) -> float:
    """The same drivers run, a new file reaches both sinks, the runs are deferred and none
    failed. Returns the seconds the new file took to reach both sinks."""
    assert drivers(root) == pids
    marker = feed.drop()
    t0 = time.monotonic()
    wait_for(lambda: in_both_sinks(root, marker), BATCH_BOUND_SECONDS, f"{marker} in both sinks")
    took = time.monotonic() - t0
    assert drivers(root) == pids
    for dag_id, run_id in runs.items():
        assert airflow.run_state(dag_id, run_id) == "running"
        state = wait_for(
            lambda d=dag_id, r=run_id: airflow.task_state(d, r) == "deferred",
            60,
            f"{dag_id} to be deferred",
        )
        assert state
    return took


@contextmanager
def airflow_under_streams(tmp_path: Path) -> Iterator[tuple[AirflowProcesses, Path, Feed]]:
    """Airflow's four components on a fresh database with a first file fed to both streams, and
    `stream_health` unpaused (every minute: its orphan check must never stop a driver whose run
    is active). On exit every component and any driver left holding a lease is stopped."""
    root = tmp_path / "data"
    feed = Feed(root)
    airflow = AirflowProcesses(
        tmp_path / "airflow",
        root,
        STREAMOPS_RESTART_BACKOFF_SECONDS="2",
        # As the embedded stack and the compose file set it (scripts/stack.py)
        AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL="60",
    )
    try:
        feed.drop()
        airflow.start()
        wait_for(lambda: airflow.dag_parsed("stream_health"), 180, "stream_health to be parsed")
        airflow.api("PATCH", "/api/v2/dags/stream_health", {"is_paused": False})
        yield airflow, root, feed
    finally:
        airflow.stop_all(signal.SIGTERM)
        for stream in STREAMS.values():
            holder = lease(root, stream)
            if holder is not None and holder.process_alive():
                os.kill(holder.pid, signal.SIGKILL)


def test_streams_survive_every_restart_of_airflow_and_a_driver_kill(tmp_path: Path) -> None:
    with airflow_under_streams(tmp_path) as (airflow, root, feed):
        # Given both stream DAGs running on a file feed
        runs = {dag_id: airflow.trigger(dag_id, CONF) for dag_id in STREAMS}
        wait_for(lambda: in_both_sinks(root, "file001"), 300, "the first batch in both sinks")
        pids = wait_for(lambda: both_drivers(root), 60, "both drivers")
        check_undisturbed(airflow, root, feed, runs, pids)

        # Then no stream task holds a worker slot while its stream runs (stream_health's own
        # tasks take one for a few seconds each minute, so wait for a moment between them)
        for dag_id in STREAMS:
            path = f"/api/v2/dags/{dag_id}/dagRuns/~/taskInstances?state=running"
            running = airflow.api("GET", path)
            assert running["total_entries"] == 0, running
        wait_for(
            lambda: airflow.api("GET", "/api/v2/pools/default_pool")["occupied_slots"] == 0,
            90,
            "a moment with no occupied worker slot",
        )

        took: dict[str, float] = {}
        # When the scheduler gets SIGTERM (a deploy), then starts again
        airflow.restart("scheduler", signal.SIGTERM)
        took["scheduler SIGTERM"] = check_undisturbed(airflow, root, feed, runs, pids)
        # When the scheduler is SIGKILLed (a crash), then starts again
        airflow.restart("scheduler", signal.SIGKILL)
        took["scheduler SIGKILL"] = check_undisturbed(airflow, root, feed, runs, pids)
        # When the triggerer is SIGKILLed, then starts again (not a user's kill: nothing stops)
        airflow.restart("triggerer", signal.SIGKILL)
        took["triggerer SIGKILL"] = check_undisturbed(airflow, root, feed, runs, pids)
        # When the api-server restarts
        airflow.restart("api-server", signal.SIGTERM)
        took["api-server restart"] = check_undisturbed(airflow, root, feed, runs, pids)
        # When all of Airflow is killed at once, then started again
        airflow.stop_all(signal.SIGKILL)
        airflow.start()
        took["all of Airflow SIGKILL"] = check_undisturbed(airflow, root, feed, runs, pids)
        print("seconds for a new file to reach both sinks after each restart:", took)
        # And no second driver ever started: each driver log holds exactly one start
        for stream in STREAMS.values():
            assert driver_starts(root, stream) == 1, driver_log_tail(root, stream)

        # When a driver is SIGKILLed, its task restarts it from the checkpoint within the backoff
        os.kill(pids["word_count"], signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: (h := lease(root, "word_count")) and h.pid != pids["word_count"] and h,
            120,
            "a new word_count driver",
        )
        marker = feed.drop()
        wait_for(lambda: in_both_sinks(root, marker), 120, f"{marker} after the driver restart")
        print(f"driver kill to first batch of the new driver: {time.monotonic() - killed_at:.1f} s")
        record = registry.load("word_count", str(root))
        assert record is not None
        assert len(record.restarts) == 1

        # When both streams are stopped with stream_control
        for stream in STREAMS.values():
            airflow.trigger("stream_control", {"stream": stream, "action": "stop"})
        for dag_id, run_id in runs.items():
            wait_for(
                lambda d=dag_id, r=run_id: airflow.run_state(d, r) == "success",
                180,
                f"{dag_id} to succeed",
            )
        # Then both sinks hold exactly what was fed
        for stream in STREAMS.values():
            assert sink_counts(root, stream) == dict(feed.expected), stream
        assert drivers(root) == {}


def test_streams_come_back_after_airflow_dies_while_they_start_and_after_a_full_outage(
    tmp_path: Path,
) -> None:
    with airflow_under_streams(tmp_path) as (airflow, root, feed):
        # When both streams are started and all of Airflow is SIGKILLed while their tasks start
        # the drivers (each task has written its start line, and runs until the JVM takes the
        # lease), then started again
        runs = {dag_id: airflow.trigger(dag_id, CONF) for dag_id in STREAMS}
        wait_for(
            lambda: all(driver_starts(root, s) == 1 for s in STREAMS.values()),
            180,
            "both tasks to start their drivers",
        )
        airflow.stop_all(signal.SIGKILL)
        killed_at = time.monotonic()
        airflow.start()
        # Then the scheduler runs each orphaned task again, and a new try adopts its driver:
        # deferred, on a later try, and no second driver started. (A try whose worker started
        # before the api-server answered fails and is retried: the stream task's retries.)
        for dag_id, run_id in runs.items():
            seen: list[str] = []  # the task's states as they change, with when: in a failure

            def deferred(d: str = dag_id, r: str = run_id, seen: list[str] = seen) -> bool:
                state = airflow.task_state(d, r)
                if not seen or not seen[-1].startswith(f"{state} "):
                    seen.append(f"{state} at {time.monotonic() - killed_at:.0f} s")
                return state == "deferred"

            wait_for(
                deferred,
                360,
                lambda d=dag_id, seen=seen: f"{d} to be run again and deferred (states: {seen})",
            )
            ti = airflow.api(
                "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/run_stream"
            )
            assert ti["try_number"] >= 2, ti
        print(
            f"kill during driver start to both tasks deferred: {time.monotonic() - killed_at:.1f} s"
        )
        pids = wait_for(lambda: both_drivers(root), 60, "both drivers")
        assert {s: driver_starts(root, s) for s in STREAMS.values()} == dict.fromkeys(
            STREAMS.values(), 1
        )
        marker = feed.drop()
        wait_for(lambda: in_both_sinks(root, marker), 120, f"{marker} after the kill during start")

        # Given both streams running (deferred), when everything is killed, drivers included
        airflow.stop_all(signal.SIGKILL)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: all(process_started(p) is None for p in pids.values()), 30, "the kill")
        marker = feed.drop()
        # And only Airflow is started again
        airflow.start()
        # Then each stream comes back by itself, and its sink is exact
        wait_for(lambda: in_both_sinks(root, marker), 300, f"{marker} after the full outage")
        back = drivers(root)
        assert set(back) == set(STREAMS.values())
        assert not set(back.values()) & set(pids.values())
        for stream in STREAMS.values():
            assert sink_counts(root, stream) == dict(feed.expected), stream

        # When the word_count task is marked failed through the REST API
        dag_id, run_id = "word_count_stream", runs["word_count_stream"]
        driver = back["word_count"]
        airflow.api(
            "PATCH",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/run_stream",
            {"new_state": "failed"},
        )
        marked = time.monotonic()
        # Then its driver is gone within the kill bound, and nothing restarts it
        wait_for(lambda: process_started(driver) is None, 60, "the driver to stop")
        print(f"mark failed to driver gone: {time.monotonic() - marked:.1f} s")
        time.sleep(10)
        assert lease(root, "word_count") is None
        assert airflow.run_state(dag_id, run_id) == "failed"
