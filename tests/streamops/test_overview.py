"""The stream overview (Streams page, API, metrics, CLI) on real files at fixed times.

States come from the same health rules as `stream_health`; these tests pin how breaches, the
desired state and a pending restart combine into one state per stream.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from spark_jobs.compaction import CompactionPolicy, compact
from spark_jobs.layout import CheckpointLayout, Generation
from spark_jobs.lease import LeaseHolder, process_started
from spark_jobs.sinks import WORD_COUNT_SCHEMA, ParquetBatchSink, with_batch_columns
from spark_jobs.status import write_status
from streamops import registry
from streamops.health import Breach, HealthThresholds
from streamops.overview import clear_cache, judge, overview, restart_pending
from tests.streamops.test_health import NOW, batch, dead_pid, iso, make_record, make_status

__all__ = ["dead_pid"]  # a fixture, used by name


def breach(signal: str) -> Breach:
    return Breach(
        stream="word_count", signal=signal, value=1, message=f"stream word_count: {signal}"
    )


RESTARTED = iso(NOW - timedelta(seconds=30))


def test_a_healthy_stream_is_running() -> None:
    assert judge(make_record(), make_status(), [], restart_pending=True) == ("running", True)


def test_a_stream_stopped_on_purpose_is_stopped_and_healthy(dead_pid: int) -> None:
    status = make_status(state="stopped", pid=dead_pid)
    assert judge(make_record(desired="stopped"), status, [], restart_pending=False) == (
        "stopped",
        True,
    )


def test_an_available_now_run_still_working_shows_running() -> None:
    assert judge(make_record(desired="stopped"), make_status(), [], False) == ("running", True)


def test_a_failed_job_with_a_pending_restart_is_restarting(dead_pid: int) -> None:
    record = make_record(restarts=[RESTARTED], updated_at=RESTARTED)
    status = make_status(state="failed", pid=dead_pid, updated_at=iso(NOW - timedelta(seconds=40)))
    assert judge(record, status, [], restart_pending=True) == ("restarting", False)


def test_the_restarted_job_reporting_again_is_running_again() -> None:
    record = make_record(restarts=[RESTARTED], updated_at=RESTARTED)
    assert judge(record, make_status(), [], restart_pending=True) == ("running", True)


def test_a_dead_stream_without_a_pending_restart_has_failed(dead_pid: int) -> None:
    record = make_record(restarts=[RESTARTED])
    status = make_status(state="failed", pid=dead_pid)
    assert judge(record, status, [breach("not_running")], restart_pending=False) == (
        "failed",
        False,
    )


@pytest.mark.parametrize("signal", ["falling_behind", "backlog", "slow_batches"])
def test_lagging_signals_mean_falling_behind(signal: str) -> None:
    state = judge(make_record(), make_status(), [breach(signal)], restart_pending=True)
    assert state == ("falling_behind", False)


def test_a_stuck_batch_is_stalled() -> None:
    assert judge(make_record(), make_status(), [breach("stalled")], True) == ("stalled", False)


def test_a_running_stream_that_failed_recently_is_running_but_unhealthy() -> None:
    state = judge(make_record(), make_status(), [breach("last_exception")], restart_pending=True)
    assert state == ("running", False)


def test_a_stream_without_a_batch_yet_is_starting() -> None:
    started = make_status(state="starting", last_batch=None, recent_batches=[])
    assert judge(make_record(), started, [], True) == ("starting", True)
    assert judge(make_record(), None, [], True) == ("starting", True)


# --- overview() on a real data root -------------------------------------------------------------


def register(root: Path, stream: str, desired: str, updated: str) -> registry.StreamRecord:
    base = root / "streams" / stream
    (base / "input").mkdir(parents=True)
    record = make_record(
        stream=stream,
        checkpoint=str(base / "checkpoint"),
        sink=str(base / "sink"),
        input=str(base / "input"),
        desired=desired,
        dag_id=f"{stream}_stream",
    )
    registry.save(record, str(root))
    # save() stamps the time; put it back to the fixed clock of these tests.
    path = root / "_streamops" / "streams" / f"{stream}.json"
    data = json.loads(path.read_text())
    data["updated_at"] = updated
    path.write_text(json.dumps(data))
    return record


@pytest.fixture
def data_root(tmp_path: Path, dead_pid: int) -> Path:
    """Two streams: `word_count` running (live driver and supervisor), `totals` stopped."""
    clear_cache()
    root = tmp_path / "root"
    running = register(root, "word_count", "running", iso(NOW - timedelta(hours=1)))
    layout = CheckpointLayout.of(running.checkpoint)
    layout.root.mkdirs()
    Generation(first_sink_batch_id=40, number=2).write(layout)
    batches = [batch(40 + i, seconds_ago=5 - i) for i in range(5)]
    write_status(
        make_status(
            checkpoint=running.checkpoint,
            recent_batches=batches,
            last_batch=replace(batches[-1], state_rows=123),
        )
    )
    holder = LeaseHolder(
        stream="word_count",
        owner="word_count_stream/run",
        host=socket.gethostname(),
        pid=os.getpid(),
        pid_started=process_started(os.getpid()),
        token="t",
        since=NOW.timestamp() - 60,
        renewed=NOW.timestamp(),
    )
    layout.lease_file.write_text_atomic(json.dumps(holder.__dict__))
    snapshot = Path(running.checkpoint + ".snapshots") / "20260105T110000Z"
    snapshot.mkdir(parents=True)
    (snapshot / "snapshot.json").write_text(
        json.dumps(
            {
                "id": "20260105T110000Z",
                "created_at": iso(NOW - timedelta(hours=1)),
                "last_spark_batch_id": 3,
                "last_sink_batch_id": 39,
                "size_bytes": 2048,
                "reason": "rotation",
            }
        )
    )
    (root / "streams" / "word_count" / "input" / "waiting.txt").write_text("a b c\n")

    stopped = register(root, "totals", "stopped", iso(NOW - timedelta(hours=2)))
    write_status(
        make_status(
            checkpoint=stopped.checkpoint, state="stopped", pid=dead_pid, job="running_total"
        )
    )
    quality = root / "_streamops" / "quality"
    quality.mkdir(parents=True)
    lines = [
        {"time": iso(NOW - timedelta(minutes=20)), "subject": "stream word_count", "success": True},
        {
            "time": iso(NOW - timedelta(minutes=10)),
            "subject": "stream word_count",
            "success": False,
            "checked": "batches 41-44",
            "rows": 500,
            "failures": [{"check": "rows"}],
            "data_docs": "file:///x/index.html",
        },
    ]
    (quality / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    alerts = [
        {"time": iso(NOW), "stream": "word_count", "dag_id": "stream_health", "message": "m1"},
        {"time": iso(NOW), "stream": "totals", "dag_id": "stream_health", "message": "m2"},
    ]
    (root / "_streamops" / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts))
    return root


def test_overview_reads_every_stream_from_its_files(data_root: Path) -> None:
    view = overview(str(data_root), now=NOW, thresholds=HealthThresholds())

    assert [s.stream for s in view.streams] == ["totals", "word_count"]
    totals, words = view.streams
    assert (totals.state, totals.healthy, totals.desired) == ("stopped", True, "stopped")
    assert (words.state, words.healthy) == ("running", True)
    assert words.last_batch_id == 44
    assert words.last_batch_age_seconds == pytest.approx(1.0)
    assert words.state_rows == 123
    assert [b.batch_id for b in words.recent_batches] == [40, 41, 42, 43, 44]
    assert words.backlog_files == 1
    assert words.lease is not None
    assert f"pid {os.getpid()} on {socket.gethostname()}" in words.lease
    assert "started by word_count_stream/run" in words.lease
    assert words.checkpoint.generation == 2
    assert words.checkpoint.size_bytes is not None
    assert words.checkpoint.size_bytes > 0
    assert words.checkpoint.latest_snapshot is not None
    assert words.checkpoint.latest_snapshot["id"] == "20260105T110000Z"
    assert words.quality is not None
    assert (words.quality.success, words.quality.failures) == (False, 1)
    assert [a["message"] for a in words.alerts] == ["m1"]
    assert view.healthy
    assert view.problems == []


def test_overview_flags_a_dead_stream_that_should_run(data_root: Path, dead_pid: int) -> None:
    record = registry.load("word_count", str(data_root))
    assert record is not None
    write_status(make_status(checkpoint=record.checkpoint, state="failed", pid=dead_pid))
    lease = CheckpointLayout.of(record.checkpoint).lease_file
    lease.filesystem.delete_file(lease.path)
    view = overview(str(data_root), now=NOW, thresholds=HealthThresholds(), use_cache=False)

    words = view.streams[1]
    assert (words.state, words.healthy) == ("failed", False)
    assert [b["signal"] for b in words.breaches] == ["not_running"]
    assert not view.healthy


def test_an_unreadable_status_is_a_problem_not_a_crash(data_root: Path) -> None:
    record = registry.load("word_count", str(data_root))
    assert record is not None
    Path(CheckpointLayout.of(record.checkpoint).status_file.path).write_text("{not json")
    view = overview(str(data_root), now=NOW, thresholds=HealthThresholds(), use_cache=False)

    assert any("status file" in p and "unreadable" in p for p in view.problems)
    assert not view.healthy


def test_an_empty_data_root_has_no_streams(tmp_path: Path) -> None:
    view = overview(str(tmp_path), thresholds=HealthThresholds())
    assert view.streams == []
    assert view.problems == []
    assert view.healthy


def test_the_lease_of_a_gone_driver_does_not_count(data_root: Path) -> None:
    record = registry.load("word_count", str(data_root))
    assert record is not None
    stale = LeaseHolder("word_count", "x", "elsewhere", 1, None, "t", 0, NOW.timestamp() - 3600)
    CheckpointLayout.of(record.checkpoint).lease_file.write_text_atomic(json.dumps(stale.__dict__))
    view = overview(str(data_root), now=NOW, thresholds=HealthThresholds(), use_cache=False)
    assert view.streams[1].lease is None


def test_a_restart_due_soon_is_pending_and_one_long_overdue_is_not() -> None:
    soon = make_record(restart_at=iso(NOW + timedelta(seconds=20)))
    overdue = make_record(restart_at=iso(NOW - timedelta(hours=1)))
    assert restart_pending(soon, NOW)
    assert not restart_pending(overdue, NOW)
    assert not restart_pending(make_record(), NOW)


def test_open_and_resolved_incidents_reach_the_page_the_cli_and_the_metrics(
    data_root: Path,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from streamops.cli import status_table
    from streamops.incidents import AlertSettings, IncidentStore, update
    from streamops.metrics import render

    # Given an incident of word_count open for 30 minutes, and one of totals resolved
    store = IncidentStore(str(data_root))
    settings = AlertSettings()
    quiet = lambda *_: []  # noqa: E731  # no channel
    opened = NOW - timedelta(minutes=30)
    update("word_count", [breach("stalled")], opened, quiet, settings, store, log=print)
    update("totals", [breach("backlog")], opened, quiet, settings, store, log=print)
    update("totals", [], NOW - timedelta(minutes=5), quiet, settings, store, log=print)
    # When the overview is read
    view = overview(str(data_root), now=NOW, thresholds=HealthThresholds(), use_cache=False)
    totals, words = view.streams
    # Then word_count shows its open incident and its age; totals has none open
    assert [(i["signal"], i["age_seconds"]) for i in words.incidents] == [("stalled", 1800)]
    assert totals.incidents == []
    assert [(i["stream"], i["signal"], i["duration_seconds"]) for i in view.recent_incidents] == [
        ("totals", "backlog", 1500)
    ]
    # And the CLI prints it
    assert "stream word_count: incident stalled open for 30m" in status_table(view.to_dict())
    # And the metrics have it, with its opening time
    families = {f.name: f for f in text_string_to_metric_families(render(view).decode())}
    (sample,) = families["streamops_incident_open"].samples
    assert (sample.labels, sample.value) == ({"stream": "word_count", "signal": "stalled"}, 1.0)
    (opened_at,) = families["streamops_incident_opened_timestamp_seconds"].samples
    assert opened_at.value == opened.replace(microsecond=0).timestamp()


RUN_ID = "5b0c7a52-1111-4c1e-9f00-000000000001"


def test_a_spark_ui_on_loopback_comes_with_the_tunnel_that_reaches_it() -> None:
    from streamops.cli import status_table
    from streamops.overview import spark_ui_view

    # Given a running driver whose UI got port 4041 on its host's loopback
    status = make_status(ui_url="http://localhost:4041", run_id=RUN_ID, host="driver-1")
    # When the overview says where its UI is
    ui = spark_ui_view(status, this_host="api-1")
    # Then it links the query's Structured Streaming page, and says how to reach it from elsewhere
    assert ui is not None
    assert ui.url == f"http://localhost:4041/StreamingQuery/statistics/?id={RUN_ID}"
    assert (ui.port, ui.loopback_only, ui.on_this_host) == (4041, True, False)
    assert ui.tunnel == "ssh -N -L 4041:localhost:4041 driver-1"
    assert ui.tunneled_url == ui.url
    # And `streamops status STREAM` prints both
    view = {
        "streams": [
            {
                "stream": "word_count", "state": "running", "healthy": True,
                "last_batch_id": 4, "last_batch_age_seconds": 1.0,
                "input_rows_per_second": 1.0, "processed_rows_per_second": 1.0,
                "backlog_files": 0, "restarts_total": 0, "breaches": [],
                "checkpoint": {"generation": 0, "size_bytes": 10}, "quality": None,
                "spark_ui": asdict(ui),
            }
        ],
        "problems": [],
    }  # fmt: skip
    table = status_table(view)
    assert f"stream word_count: Spark UI {ui.url}" in table
    assert "from elsewhere, ssh -N -L 4041:localhost:4041 driver-1 then open" in table


def test_a_spark_ui_behind_the_masters_reverse_proxy_needs_no_tunnel() -> None:
    from streamops.overview import spark_ui_view

    proxied = "http://spark-master.example:8081/proxy/app-20261130-0001"
    ui = spark_ui_view(make_status(ui_url=proxied, run_id=RUN_ID), this_host="api-1")
    assert ui is not None
    assert ui.url == f"{proxied}/StreamingQuery/statistics/?id={RUN_ID}"
    assert (ui.port, ui.loopback_only, ui.tunnel) == (8081, False, None)


@pytest.mark.parametrize(
    "changes",
    [{"state": "stopped"}, {"state": "failed"}, {"ui_url": None}],
    ids=["stopped", "failed", "no UI"],
)
def test_a_driver_without_a_running_ui_gets_no_link(changes: dict[str, object]) -> None:
    from streamops.overview import spark_ui_view

    status = make_status(**{"ui_url": "http://localhost:4040", "run_id": RUN_ID, **changes})
    assert spark_ui_view(status) is None


def test_the_overview_and_the_cli_say_where_batch_time_goes(data_root: Path) -> None:
    from spark_jobs.status import batch_from_progress
    from streamops.cli import status_table

    # Given word_count's last batches, timed phase by phase
    status = make_status(checkpoint=str(data_root / "streams/word_count/checkpoint"))
    status.recent_batches = []
    for spark_batch_id, add_batch in ((0, 800), (1, 1200), (2, 2000)):
        phases = {"latestOffset": 5, "getBatch": 1, "addBatch": add_batch, "walCommit": 40}
        progress = {
            "batchId": spark_batch_id, "timestamp": iso(NOW), "batchDuration": add_batch + 100,
            "durationMs": phases,
        }  # fmt: skip
        status.record_batch(batch_from_progress(progress, 0, {"result": add_batch - 100}))
    write_status(status)
    # When the overview is read
    view = overview(str(data_root), now=NOW, thresholds=HealthThresholds(), use_cache=False)
    words = next(s for s in view.streams if s.stream == "word_count")
    # Then it has each phase's last and median milliseconds, the job's parts under addBatch
    phases = {p["phase"]: (p["last_ms"], p["median_ms"]) for p in words.batch_time}
    assert phases["addBatch"] == (2000, 1200)
    assert phases["addBatch.result"] == (1900, 1100)
    assert phases["other"] == (54, 54)
    # And `streamops status word_count` prints them
    one = {**view.to_dict(), "streams": [words.to_dict()]}
    table = status_table(one)
    assert "batch time by phase, last / median of 3 batches (ms): latestOffset 5/5" in table
    assert "addBatch 2000/1200, addBatch.result 1900/1100" in table


def test_the_sink_shows_its_files_rows_last_compaction_and_retention(data_root: Path) -> None:
    # Given the running stream's sink: batches 40 and 41 of last year, 42 of now, all committed
    record = registry.load("word_count", str(data_root))
    assert record is not None
    sink = ParquetBatchSink(record.sink, WORD_COUNT_SCHEMA)
    now = datetime.now(UTC)
    for batch_id, when in (
        (40, now - timedelta(days=365)),
        (41, now - timedelta(days=300)),
        (42, now),
    ):
        sink.write(
            batch_id,
            with_batch_columns(pa.table({"word": ["a", "b"], "count": [1, 2]}), batch_id, when),
        )
    commits = Path(record.checkpoint) / "commits"
    commits.mkdir()
    for spark_batch_id in range(3):
        (commits / str(spark_batch_id)).write_text("v1\n{}\n")
    # When the stream's sink is compacted with a 30-day age limit
    compact(record.sink, record.checkpoint, CompactionPolicy(retention_seconds=30 * 86400))
    # Then the overview shows the files (expired ones in their grace period too), the rows a
    # reader reads, and the retention
    words = overview(str(data_root), now=NOW, thresholds=HealthThresholds(), use_cache=False)
    info = words.streams[1].sink_files
    assert (info.files, info.live_files, info.rows) == (3, 1, 2)
    assert (info.retention_days, info.expired_before) == (30.0, 42)
    assert info.last_compaction is not None
