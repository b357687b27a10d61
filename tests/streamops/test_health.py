"""Health rules on real records and statuses at fixed times, and the backlog of real checkpoints.

Every signal is tested both ways: flagged past its threshold, and not flagged just inside it.
`test_the_baseline_stream_is_healthy` guarantees that each "not flagged" case starts from a
stream with no breach at all, so those cases can fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spark_jobs.status import BatchProgress, StreamStatus
from streamops.health import (
    SIGNALS,
    Backlog,
    Breach,
    HealthThresholds,
    backlog_of,
    evaluate,
)
from streamops.registry import StreamRecord
from tests.conftest import ROOT, drop_file, job_command

NOW = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
DEFAULTS = HealthThresholds()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def batch(
    batch_id: int,
    seconds_ago: float,
    *,
    input_rows: int = 100,
    input_rate: float = 50.0,
    processed_rate: float = 500.0,
    duration_ms: int = 200,
) -> BatchProgress:
    started = NOW - timedelta(seconds=seconds_ago)
    return BatchProgress(
        batch_id=batch_id,
        spark_batch_id=batch_id,
        timestamp=started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        input_rows=input_rows,
        input_rows_per_second=input_rate,
        processed_rows_per_second=processed_rate,
        duration_ms=duration_ms,
        state_rows=None,
    )


def make_record(**changes: Any) -> StreamRecord:
    record = StreamRecord(
        stream="word_count",
        job="word_count",
        checkpoint="/data/streams/word_count/checkpoint",
        sink="/data/streams/word_count/sink",
        input="/data/streams/word_count/input",
        trigger_interval="1 second",
        desired="running",
        dag_id="word_count_stream",
        run_id="manual__2026-01-05",
        updated_at=iso(NOW - timedelta(hours=1)),
    )
    return replace(record, **changes)


def make_status(**changes: Any) -> StreamStatus:
    batches = [batch(i, seconds_ago=5 - i) for i in range(5)]
    status = StreamStatus(
        job="word_count",
        checkpoint="/data/streams/word_count/checkpoint",
        sink="/data/streams/word_count/sink",
        state="running",
        pid=os.getpid(),  # a live driver on this host
        host=socket.gethostname(),
        trigger_interval="1 second",
        started_at=iso(NOW - timedelta(hours=1)),
        updated_at=iso(NOW - timedelta(seconds=1)),
        last_batch=batches[-1],
        recent_batches=batches,
    )
    return replace(status, **changes)


HEALTHY = make_status()
NO_BACKLOG = Backlog(files=0, size_bytes=0)


def check(
    record: StreamRecord | None = None,
    status: StreamStatus | None = HEALTHY,
    backlog: Backlog | None = NO_BACKLOG,
    thresholds: HealthThresholds = DEFAULTS,
) -> list[Breach]:
    """The breaches at NOW; by default of a healthy, running stream with nothing waiting."""
    return evaluate(record or make_record(), status, NOW, thresholds, backlog)


def signals(breaches: list[Breach]) -> list[str]:
    return [breach.signal for breach in breaches]


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_baseline_stream_is_healthy() -> None:
    assert check() == []


def test_a_stream_that_should_not_run_has_no_breaches(dead_pid: int) -> None:
    failed = make_status(state="failed", pid=dead_pid, exception="boom")
    assert check(make_record(desired="stopped"), failed, Backlog(10_000, 10 * 2**30)) == []


# --- not_running ----------------------------------------------------------------------------


def test_not_running_when_no_status_was_ever_written() -> None:
    breaches = check(status=None)
    assert signals(breaches) == ["not_running"]
    assert breaches[0].value == "missing"
    assert "no status" in breaches[0].message


def test_no_status_shortly_after_a_start_is_a_job_starting() -> None:
    just_started = make_record(updated_at=iso(NOW - timedelta(seconds=20)))
    assert check(just_started, status=None) == []


@pytest.mark.parametrize("state", ["failed", "stopped"])
def test_not_running_when_the_status_says_it_ended(state: str) -> None:
    error = (
        "StreamingQueryException: [CANNOT_READ] cannot read s3://bucket/in/x.txt"
        if state == "failed"
        else None
    )
    status = make_status(state=state, exception=error, updated_at=iso(NOW - timedelta(minutes=3)))
    breaches = check(status=status)
    assert signals(breaches) == ["not_running"]
    assert breaches[0].value == state
    message = breaches[0].message
    assert message.startswith("stream word_count: not_running (")
    assert f"last status '{state}' 3 min ago" in message
    assert "trigger word_count_stream again" in message
    if error:
        assert error in message


def test_not_running_when_the_driver_process_on_this_host_is_gone(dead_pid: int) -> None:
    # A fresh status is no proof of life: the driver may have been killed a second ago.
    breaches = check(status=make_status(pid=dead_pid))
    assert signals(breaches) == ["not_running"]
    assert breaches[0].value == "driver gone"
    assert f"pid {dead_pid}" in breaches[0].message


def test_a_driver_on_another_host_is_judged_by_its_heartbeat() -> None:
    elsewhere = {"host": "spark-driver-7.example.internal", "pid": 4242}
    fresh = make_status(**elsewhere, updated_at=iso(NOW - timedelta(seconds=50)))
    assert check(status=fresh) == []
    silent = make_status(**elsewhere, updated_at=iso(NOW - timedelta(seconds=70)))
    breaches = check(status=silent)
    assert signals(breaches) == ["not_running"]
    assert breaches[0].value == "no heartbeat"
    assert "spark-driver-7.example.internal" in breaches[0].message


def test_a_restart_under_way_is_not_flagged_until_the_stall_limit(dead_pid: int) -> None:
    # The operator recorded a failure and is restarting the job; the status is the old run's.
    old = make_status(
        state="failed", pid=dead_pid, exception="boom", updated_at=iso(NOW - timedelta(seconds=40))
    )
    restarting = make_record(updated_at=iso(NOW - timedelta(seconds=30)))
    assert check(restarting, old) == []
    overdue = make_record(updated_at=iso(NOW - timedelta(seconds=61)))
    assert signals(check(overdue, old)) == ["not_running"]


# --- stalled --------------------------------------------------------------------------------


def test_stalled_when_a_live_driver_writes_no_status() -> None:
    silent = make_status(updated_at=iso(NOW - timedelta(seconds=61)))
    breaches = check(status=silent)
    assert signals(breaches) == ["stalled"]
    assert breaches[0].value == 61
    assert "is alive but has written no status for 61 s (limit 60 s)" in breaches[0].message


def test_the_stall_floor_protects_fast_triggers() -> None:
    # 10 x 1 s would be 10 s: a single slow batch would trip it. The 60 s floor applies.
    assert check(status=make_status(updated_at=iso(NOW - timedelta(seconds=59)))) == []


def test_the_stall_limit_scales_with_the_trigger_interval() -> None:
    slow_trigger = make_record(trigger_interval="30 seconds")
    batches = [batch(0, seconds_ago=250)]
    quiet = make_status(
        updated_at=iso(NOW - timedelta(seconds=290)), last_batch=batches[0], recent_batches=batches
    )
    assert check(slow_trigger, quiet) == []
    too_quiet = replace(quiet, updated_at=iso(NOW - timedelta(seconds=310)))
    assert signals(check(slow_trigger, too_quiet)) == ["stalled"]
    assert DEFAULTS.stall_limit("30 seconds") == timedelta(seconds=300)
    assert DEFAULTS.stall_limit("1 second") == timedelta(seconds=60)
    assert DEFAULTS.stall_limit(None) == timedelta(seconds=60)


def test_stalled_when_files_wait_and_no_batch_runs() -> None:
    # The driver reports idle (fresh heartbeat) but has run no batch for 5 minutes.
    last = batch(9, seconds_ago=300)
    idle = make_status(last_batch=last, recent_batches=[last])
    waiting = Backlog(files=3, size_bytes=300, oldest_mtime=NOW - timedelta(minutes=4))
    breaches = check(status=idle, backlog=waiting)
    assert signals(breaches) == ["stalled"]
    assert "while 3 files wait in /data/streams/word_count/input (oldest 4 min)" in (
        breaches[0].message
    )
    # Files that arrived a moment ago are the next batch's, not a stall.
    just_arrived = Backlog(files=3, size_bytes=300, oldest_mtime=NOW - timedelta(seconds=5))
    assert check(status=idle, backlog=just_arrived) == []
    # And an idle stream without waiting files is simply idle.
    assert check(status=idle, backlog=Backlog(files=0, size_bytes=0)) == []


# --- falling_behind -------------------------------------------------------------------------


def test_falling_behind_when_the_last_batches_process_slower_than_input_arrives() -> None:
    behind = [batch(i, 10 - i, input_rate=1000.0, processed_rate=600.0) for i in range(3)]
    breaches = check(status=make_status(last_batch=behind[-1], recent_batches=behind))
    assert signals(breaches) == ["falling_behind"]
    assert breaches[0].value == 0.6
    assert "processed 600 rows/s but 1000 rows/s arrived" in breaches[0].message


def test_rates_within_ten_percent_are_keeping_up() -> None:
    # Seen on a busy 2-core machine: a healthy trickle stream at 94% of its input rate.
    close = [batch(i, 10 - i, input_rate=5.0, processed_rate=4.7) for i in range(3)]
    assert check(status=make_status(last_batch=close[-1], recent_batches=close)) == []
    behind = [batch(i, 10 - i, input_rate=5.0, processed_rate=4.4) for i in range(3)]
    assert signals(check(status=make_status(last_batch=behind[-1], recent_batches=behind))) == [
        "falling_behind"
    ]


def test_batches_without_input_do_not_hide_or_make_a_trend() -> None:
    behind = [batch(i, 10 - i, input_rate=1000.0, processed_rate=600.0) for i in range(3)]
    empty = batch(3, 1, input_rows=0, input_rate=0.0, processed_rate=0.0)
    status = make_status(last_batch=empty, recent_batches=[*behind, empty])
    assert signals(check(status=status)) == ["falling_behind"]


def test_one_batch_keeping_up_ends_the_trend() -> None:
    batches = [
        batch(0, 3, input_rate=1000.0, processed_rate=600.0),
        batch(1, 2, input_rate=1000.0, processed_rate=1200.0),
        batch(2, 1, input_rate=1000.0, processed_rate=600.0),
    ]
    assert check(status=make_status(last_batch=batches[-1], recent_batches=batches)) == []
    # Two slow batches are fewer than K = 3.
    two = [*batches[2:], batch(3, 0.5, input_rate=1000.0, processed_rate=600.0)]
    assert check(status=make_status(last_batch=two[-1], recent_batches=two)) == []


# --- backlog --------------------------------------------------------------------------------


def test_backlog_by_file_count() -> None:
    at_limit = Backlog(files=100, size_bytes=100, oldest_mtime=NOW)
    assert check(backlog=at_limit) == []
    breaches = check(backlog=replace(at_limit, files=101))
    assert signals(breaches) == ["backlog"]
    assert breaches[0].value == 101
    assert "101 files" in breaches[0].message


def test_backlog_by_size() -> None:
    one_gib = Backlog(files=3, size_bytes=2**30, oldest_mtime=NOW)
    assert check(backlog=one_gib) == []
    assert signals(check(backlog=replace(one_gib, size_bytes=2**30 + 1))) == ["backlog"]


def test_backlog_of_a_kafka_stream_in_records() -> None:
    kafka = make_record(input="")
    at_limit = Backlog(files=0, size_bytes=0, records_behind={"lines": 600_000, "clicks": 400_000})
    assert check(record=kafka, backlog=at_limit) == []
    breaches = check(record=kafka, backlog=replace(at_limit, records_behind={"lines": 1_000_001}))
    assert signals(breaches) == ["backlog"]
    assert breaches[0].value == 1_000_001
    assert "1000001 records behind the latest offsets after the last batch (lines 1000001" in (
        breaches[0].message
    )
    lower = HealthThresholds(backlog_records=10)
    assert signals(check(record=kafka, backlog=at_limit, thresholds=lower)) == ["backlog"]


def test_a_kafka_streams_backlog_comes_from_its_last_batch() -> None:
    from streamops.health import backlog_of

    kafka = make_record(input="")
    last = replace(HEALTHY.recent_batches[-1], records_behind={"lines": 42})
    assert backlog_of(kafka, make_status(last_batch=last)).records_behind == {"lines": 42}
    assert backlog_of(kafka, HEALTHY).records_behind is None  # socket, rate: none
    assert backlog_of(kafka, None) == Backlog(files=0, size_bytes=0)


def test_a_dead_stream_reports_its_backlog_too_worst_first(dead_pid: int) -> None:
    breaches = check(status=make_status(pid=dead_pid), backlog=Backlog(500, 10, NOW))
    assert signals(breaches) == ["not_running", "backlog"]


# --- slow_batches ---------------------------------------------------------------------------


def test_slow_batches_when_each_of_the_last_batches_outlasts_the_trigger() -> None:
    slow = [batch(i, 10 - i, duration_ms=1500) for i in range(3)]
    breaches = check(status=make_status(last_batch=slow[-1], recent_batches=slow))
    assert signals(breaches) == ["slow_batches"]
    assert breaches[0].value == 1.5
    assert "1.5 s, 1.5 s, 1.5 s" in breaches[0].message


def test_one_batch_within_the_trigger_breaks_the_run_of_slow_ones() -> None:
    batches = [batch(0, 3, duration_ms=1500), batch(1, 2, duration_ms=1000)]
    batches.append(batch(2, 1, duration_ms=1500))
    assert check(status=make_status(last_batch=batches[-1], recent_batches=batches)) == []


def test_back_to_back_triggers_have_no_slow_batches() -> None:
    slow = [batch(i, 10 - i, duration_ms=5000) for i in range(3)]
    record = make_record(trigger_interval="0 seconds")
    assert check(record, make_status(last_batch=slow[-1], recent_batches=slow)) == []


# --- last_exception -------------------------------------------------------------------------


def test_last_exception_when_the_stream_was_restarted_recently() -> None:
    error = "Py4JJavaError: java.lang.OutOfMemoryError: Java heap space"
    record = make_record(
        restarts=["2026-01-05T11:20:00Z", "2026-01-05T11:50:00Z"],
        last_error=error,
        updated_at=iso(NOW - timedelta(minutes=10)),
    )
    breaches = check(record)
    assert signals(breaches) == ["last_exception"]
    assert breaches[0].value == error
    assert "failed 1 times in the last 30 min, last 10 min ago" in breaches[0].message
    # Past the window, an old failure is history.
    old = replace(record, restarts=["2026-01-05T11:29:00Z"])
    assert check(old) == []
    # A hung driver its supervisor restarted is reported by its stalled incident, not here
    healed = replace(record, last_error_kind="hung", last_error="made no progress for 181 s")
    assert check(healed) == []


def test_last_exception_reported_by_a_running_job() -> None:
    status = make_status(exception="StreamingQueryException: source file vanished")
    breaches = check(status=status)
    assert signals(breaches) == ["last_exception"]
    assert "source file vanished" in breaches[0].message


# --- messages and thresholds ----------------------------------------------------------------


def test_each_message_is_one_line_naming_stream_signal_and_action(dead_pid: int) -> None:
    slow = [
        batch(i, 10 - i, input_rate=1000.0, processed_rate=10.0, duration_ms=2000) for i in range(3)
    ]
    breaches = check(
        make_record(restarts=[iso(NOW - timedelta(minutes=1))], last_error="boom\nat line 2"),
        make_status(last_batch=slow[-1], recent_batches=slow),
        Backlog(200, 2**31, NOW),
    )
    assert signals(breaches) == ["falling_behind", "backlog", "slow_batches", "last_exception"]
    assert [s for s in SIGNALS if s in signals(breaches)] == signals(breaches)
    for breach in breaches:
        assert "\n" not in breach.message
        assert breach.message.startswith(f"stream word_count: {breach.signal} (")
        assert ") — " in breach.message


def test_thresholds_come_from_the_environment() -> None:
    env = {
        "STREAMOPS_HEALTH_BACKLOG_FILES": "5",
        "STREAMOPS_HEALTH_STALL_FLOOR_SECONDS": "90.5",
        "STREAMOPS_HEALTH_SLOW_BATCHES": " 2 ",
        "STREAMOPS_HEALTH_FALLING_BEHIND_BATCHES": "",
    }
    thresholds = HealthThresholds.from_env(env)
    assert thresholds == replace(
        DEFAULTS, backlog_files=5, stall_floor_seconds=90.5, slow_batches=2
    )
    assert signals(check(backlog=Backlog(6, 6, NOW), thresholds=thresholds)) == ["backlog"]


def test_thresholds_default_to_the_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMOPS_HEALTH_STALL_MULTIPLE", "3")
    assert HealthThresholds.from_env().stall_multiple == 3.0


@pytest.mark.parametrize(
    ("value", "error"),
    [("many", "STREAMOPS_HEALTH_BACKLOG_FILES='many': expected a whole number"),
     ("0", "backlog_files (STREAMOPS_HEALTH_BACKLOG_FILES) must be greater than 0")],
)  # fmt: skip
def test_a_bad_threshold_names_its_variable(value: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        HealthThresholds.from_env({"STREAMOPS_HEALTH_BACKLOG_FILES": value})


# --- backlog_of -----------------------------------------------------------------------------


def write_source_log(checkpoint: Path, name: str, paths: list[str]) -> None:
    folder = checkpoint / "sources" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    entries = [json.dumps({"path": p, "timestamp": 0, "batchId": 0}) for p in paths]
    (folder / name).write_text("\n".join(["v1", *entries]))


def record_for(tmp_path: Path) -> StreamRecord:
    return make_record(
        input=str(tmp_path / "in"), checkpoint=str(tmp_path / "ck"), sink=str(tmp_path / "sink")
    )


def test_backlog_of_reads_the_compacted_log_and_the_deltas_after_it(tmp_path: Path) -> None:
    # Given files the log lists in a compact file, in a later delta, and one it does not list
    uri = (tmp_path / "in").as_uri()
    for name in ("a.txt", "b c%.txt", "d.txt", "new.txt"):
        drop_file(tmp_path / "in", name, "12345")
    write_source_log(tmp_path / "ck", "0", [f"{uri}/stale-entry-superseded.txt"])
    write_source_log(tmp_path / "ck", "1.compact", [f"{uri}/a.txt", f"{uri}/b%20c%25.txt"])
    write_source_log(tmp_path / "ck", "2", [f"{uri}/d.txt"])
    (tmp_path / "ck/sources/0/.2.crc").write_bytes(b"crc")
    # And files Spark never reads: hidden, underscored, being copied, in a subfolder
    (tmp_path / "in/.e.txt.tmp").write_text("x")
    (tmp_path / "in/_SUCCESS").write_text("")
    (tmp_path / "in/f.txt._COPYING_").write_text("x")
    drop_file(tmp_path / "in/sub", "g.txt", "x")
    # When the backlog is computed / Then only new.txt waits
    backlog = backlog_of(record_for(tmp_path))
    assert (backlog.files, backlog.size_bytes) == (1, 5)
    mtime = (tmp_path / "in/new.txt").stat().st_mtime
    assert backlog.oldest_mtime is not None
    # pyarrow reports nanoseconds, stat() a float: equal to the microsecond, give or take one.
    assert abs(backlog.oldest_mtime - datetime.fromtimestamp(mtime, UTC)) <= timedelta(
        microseconds=1
    )


def test_backlog_of_a_stream_that_never_ran_is_its_whole_input(tmp_path: Path) -> None:
    drop_file(tmp_path / "in", "a.txt", "123")
    drop_file(tmp_path / "in", "b.txt", "4567")
    assert backlog_of(record_for(tmp_path)).files == 2
    assert backlog_of(record_for(tmp_path)).size_bytes == 7


def test_backlog_of_a_stream_without_input_folder_is_empty(tmp_path: Path) -> None:
    socket_stream = replace(record_for(tmp_path), input="")
    assert backlog_of(socket_stream) == Backlog(files=0, size_bytes=0)
    assert backlog_of(record_for(tmp_path)) == Backlog(files=0, size_bytes=0)


@pytest.mark.spark
def test_backlog_of_a_checkpoint_written_by_the_real_job(tmp_path: Path) -> None:
    # Given the real word_count job ran over three files, one batch each, and Spark compacted
    # its file-source log (every 2 batches here, instead of every 10)
    for name in ("1.txt", "2 two.txt", "3.txt"):
        drop_file(tmp_path / "in", name, "hello spark\n")
    env = dict(os.environ)
    env["PYSPARK_SUBMIT_ARGS"] = (
        "--master local[1] --conf spark.sql.streaming.fileSource.log.compactInterval=2 "
        "pyspark-shell"
    )
    record = record_for(tmp_path)
    args = ["--input", record.input, "--sink", record.sink, "--checkpoint", record.checkpoint]
    done = subprocess.run(
        job_command(
            "word_count", *args, "--available-now", "--max-files-per-trigger", "1",
            "--shuffle-partitions", "1",
        ),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log_names = sorted(p.name for p in (tmp_path / "ck/sources/0").iterdir())
    assert "1.compact" in log_names
    assert "2" in log_names
    assert backlog_of(record) == Backlog(files=0, size_bytes=0)
    # When two more files arrive, and a third is still being written under a hidden name
    drop_file(tmp_path / "in", "4.txt", "more words\n")
    drop_file(tmp_path / "in", "5.txt", "and more\n")
    (tmp_path / "in/.6.txt.tmp").write_text("half a line")
    # Then the backlog is exactly those two files
    backlog = backlog_of(record)
    assert backlog.files == 2
    assert backlog.size_bytes == len("more words\n") + len("and more\n")
