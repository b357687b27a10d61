"""The stream DAGs on a real Airflow (`airflow dags test`, which runs the deferred task's trigger
in-process): submission through SparkSubmitHook, the lease, the restart budget, the graceful stop,
and a driver that outlives the Airflow process that started it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.layout import CheckpointLayout
from spark_jobs.lease import Lease, process_started
from spark_jobs.status import read_status
from streamops import registry
from streamops.triggers import stop_driver
from tests.conftest import drop_file
from tests.dags.conftest import airflow_env, dags_test, run_state, running_stream

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

SEED = "hello world spark streaming\nhello spark\n"


def test_stream_dag_submits_the_job_and_fills_the_sink(airflow_home: Path, tmp_path: Path) -> None:
    # Given input in the stream's default folder under the data root
    drop_file(tmp_path / "streams/word_count/input", "1.txt", SEED)
    env = airflow_env(airflow_home, tmp_path)
    # When the stream DAG runs a bounded (available-now) run
    result = dags_test("word_count_stream", {"available_now": True, "shuffle_partitions": 2}, env)
    # Then the run succeeds through spark-submit and the sink holds the counts
    assert run_state(result) == "success", result.stdout[-3000:]
    counts = pd.read_parquet(tmp_path / "streams/word_count/sink")
    assert dict(zip(counts.word, counts["count"], strict=True)) == {
        "hello": 2, "spark": 2, "world": 1, "streaming": 1,
    }  # fmt: skip
    # And the driver gave its lease back, and the stream is recorded as not expected to run
    assert not (tmp_path / "streams/word_count/checkpoint/_streamops/lease.json").exists()
    record = registry.load("word_count", str(tmp_path))
    assert record is not None
    assert record.desired == "stopped"


def test_second_run_on_a_running_stream_is_refused(airflow_home: Path, tmp_path: Path) -> None:
    # Given a live driver of another run holding the stream's checkpoint
    (tmp_path / "streams/running_total/input").mkdir(parents=True)
    layout = CheckpointLayout.of(str(tmp_path / "streams/running_total/checkpoint"))
    holder = Lease(layout.lease_file, "running_total", "running_total_stream/manual__first")
    holder.acquire()
    try:
        # When another run of the stream DAG starts
        result = dags_test(
            "running_total_stream", {"available_now": True}, airflow_env(airflow_home, tmp_path)
        )
    finally:
        holder.release()
    # Then it fails at once, naming the running one, and never submitted a job
    assert run_state(result) == "failed"
    output = result.stdout + result.stderr
    assert "stream running_total: checkpoint is leased by stream running_total" in output
    assert "(started by running_total_stream/manual__first)" in output
    assert read_status(layout.root.path) is None


def test_a_failing_job_is_restarted_then_fails_past_the_budget(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a stream whose job fails at every start (a socket source with nothing listening)
    env = airflow_env(
        airflow_home,
        tmp_path,
        STREAMOPS_MAX_RESTARTS="1",
        STREAMOPS_RESTART_BACKOFF_SECONDS="1",
    )
    params = {"stream": "flaky", "source": "socket", "socket_port": 1, "shuffle_partitions": 1}
    # When the stream DAG runs
    result = dags_test("word_count_stream", params, env)
    # Then the job was started twice (one restart), and the task failed saying why and what to do
    assert run_state(result) == "failed"
    output = result.stdout + result.stderr
    assert "restart 1 of 1" in output
    assert "stream flaky: failed 2 times in 30 min, restart budget (1) used up" in output
    record = registry.load("flaky", str(tmp_path))
    assert record is not None
    assert len(record.restarts) == 2
    assert record.desired == "running"  # stream_health must flag it


def test_a_bounded_run_whose_driver_is_killed_restarts_and_reads_everything_once(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a bounded (available-now) run over 30 files, one a micro-batch
    files = {f"{i:02d}.txt": f"alpha beta w{i}\nalpha\n" for i in range(30)}
    for name, text in files.items():
        drop_file(tmp_path / "streams/word_count/input", name, text)
    env = airflow_env(airflow_home, tmp_path, STREAMOPS_RESTART_BACKOFF_SECONDS="1")
    checkpoint = tmp_path / "streams/word_count/checkpoint"
    conf = {"available_now": True, "max_files_per_trigger": 1, "shuffle_partitions": 2}
    with running_stream("word_count_stream", checkpoint, env, conf=conf) as stream:
        # When its driver is killed after its first batch (as the OOM killer would)
        status = read_status(str(checkpoint))
        assert status is not None
        assert status.pid is not None
        os.kill(status.pid, signal.SIGKILL)
        output, _ = stream.communicate(timeout=400)
    # Then the run restarts the job from the checkpoint and succeeds only once all is read
    assert "restart 1 of" in output, output[-3000:]
    assert "state=success" in output, output[-3000:]
    sink = pd.read_parquet(tmp_path / "streams/word_count/sink")
    assert sink.batch_id.nunique() == len(files)
    expected = {"alpha": 60, "beta": 30} | {f"w{i}": 1 for i in range(30)}
    assert sink.groupby("word")["count"].sum().to_dict() == expected
    record = registry.load("word_count", str(tmp_path))
    assert record is not None
    assert len(record.restarts) == 1


def test_stream_control_stops_a_stream_at_a_batch_boundary(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a running stream
    drop_file(tmp_path / "streams/word_count/input", "1.txt", SEED)
    env = airflow_env(airflow_home, tmp_path)
    checkpoint = tmp_path / "streams/word_count/checkpoint"
    with running_stream("word_count_stream", checkpoint, env) as stream:
        # When stream_control asks it to stop
        control = dags_test("stream_control", {"stream": "word_count", "action": "stop"}, env)
        assert run_state(control) == "success", control.stdout[-2000:]
        output, _ = stream.communicate(timeout=240)
    # Then the stream's run ends as a success, stopped by request, with its batch committed
    assert "stopped at a batch boundary, as requested" in output
    assert "state=success" in output
    status = read_status(str(tmp_path / "streams/word_count/checkpoint"))
    assert status is not None
    assert status.state == "stopped"
    assert not (tmp_path / "streams/word_count/checkpoint/_streamops/stop-request").exists()


def test_the_driver_outlives_the_airflow_process_that_started_it(
    airflow_home: Path, tmp_path: Path
) -> None:
    # Given a running stream
    drop_file(tmp_path / "streams/word_count/input", "1.txt", SEED)
    checkpoint = tmp_path / "streams/word_count/checkpoint"
    env = airflow_env(airflow_home, tmp_path)
    with running_stream("word_count_stream", checkpoint, env) as stream:
        status = read_status(str(checkpoint))
        assert status is not None
        # When the Airflow process (and its whole process group) is killed
        os.killpg(stream.pid, signal.SIGKILL)
        stream.wait()
    try:
        # Then the driver keeps running and committing batches from new input
        drop_file(tmp_path / "streams/word_count/input", "2.txt", "after the kill\n")
        deadline = time.monotonic() + 60
        while True:
            now = read_status(str(checkpoint))
            if now is not None and now.last_batch and now.last_batch.batch_id > 0:
                break
            assert time.monotonic() < deadline, "the driver made no batch after the kill"
            time.sleep(1)
        assert now.pid == status.pid
        assert Path(f"/proc/{status.pid}").exists()
    finally:
        # Stopped by its pid, which this test started (through Airflow)
        stop_driver(str(checkpoint), None, grace_seconds=60)
    assert wait_gone(status.pid, 30)
    final = read_status(str(checkpoint))
    assert final is not None
    assert final.state == "stopped"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_started(pid) is None:
            return True
        time.sleep(0.5)
    return False
