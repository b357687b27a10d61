"""The status contract round-trips through its file and reads Spark's progress documents."""

from __future__ import annotations

import json
from pathlib import Path

from spark_jobs.layout import CheckpointLayout
from spark_jobs.status import (
    RECENT_BATCHES,
    StreamStatus,
    batch_from_progress,
    batch_time_breakdown,
    read_status,
    write_status,
)

PROGRESS = {
    "id": "q",
    "runId": "r",
    "batchId": 3,
    "timestamp": "2025-10-27T10:30:00.000Z",
    "numInputRows": 120,
    "inputRowsPerSecond": 100.0,
    "processedRowsPerSecond": 80.5,
    "batchDuration": 1490,
    "stateOperators": [{"numRowsTotal": 42}],
    "durationMs": {
        "latestOffset": 10, "getBatch": 20, "queryPlanning": 100, "addBatch": 1200,
        "walCommit": 60, "commitOffsets": 50, "triggerExecution": 1480,
    },
}  # fmt: skip


def test_progress_maps_to_sink_batch_ids() -> None:
    batch = batch_from_progress(PROGRESS, first_sink_batch_id=10)
    assert (batch.batch_id, batch.spark_batch_id) == (13, 3)
    assert batch.input_rows == 120
    assert batch.processed_rows_per_second == 80.5
    assert batch.duration_ms == 1490
    assert batch.state_rows == 42


def test_a_kafka_source_reports_the_records_behind_per_topic() -> None:
    # Given a progress of a query on two topics, as Spark's Kafka source reports it
    sources = [
        {
            "description": "KafkaV2[Subscribe[lines, clicks]]",
            "startOffset": '{"lines": {"0": 40, "1": 40}, "clicks": {"0": 0}}',
            "endOffset": '{"lines": {"0": 90, "1": 100}, "clicks": {"0": 7}}',
            "latestOffset": '{"lines": {"0": 300, "1": 100, "2": 5}, "clicks": {"0": 7}}',
            "numInputRows": 117,
            "metrics": {"maxOffsetsBehindLatest": "210"},
        }
    ]
    # Then each topic's records past the end offsets are summed over its partitions (a partition
    # the batch did not read yet counts from 0)
    batch = batch_from_progress({**PROGRESS, "sources": sources}, 0)
    assert batch.records_behind == {"lines": 215, "clicks": 0}
    # And so are the offsets of the JVM's progress JSON, where they are objects, not strings
    objects = [
        {**sources[0], **{k: json.loads(sources[0][k]) for k in ("endOffset", "latestOffset")}}
    ]
    assert batch_from_progress({**PROGRESS, "sources": objects}, 0).records_behind == {
        "lines": 215,
        "clicks": 0,
    }
    # And other sources report none
    files = [{"description": "FileStreamSource[file:/in]", "endOffset": '{"logOffset": 3}'}]
    assert batch_from_progress({**PROGRESS, "sources": files}, 0).records_behind == {}
    assert batch_from_progress(PROGRESS, 0).records_behind == {}


def test_progress_says_where_the_batch_time_went() -> None:
    batch = batch_from_progress(PROGRESS, 0, job_ms={"result": 900, "write": 250})
    assert batch.phases_ms == {
        "latestOffset": 10, "getBatch": 20, "queryPlanning": 100, "addBatch": 1200,
        "walCommit": 60, "commitOffsets": 50,
    }  # fmt: skip
    assert batch.job_ms == {"result": 900, "write": 250}


def test_the_breakdown_gives_each_phase_last_and_median_in_running_order() -> None:
    slow = {**PROGRESS["durationMs"], "addBatch": 3000}  # type: ignore[dict-item]
    batches = [
        batch_from_progress({**PROGRESS, "batchId": 1}, 0, {"result": 900, "write": 250}),
        batch_from_progress({**PROGRESS, "batchId": 2}, 0, {"result": 700, "write": 150}),
        batch_from_progress(
            {**PROGRESS, "batchId": 3, "durationMs": slow, "batchDuration": 3300},
            0,
            {"result": 2600, "write": 350},
        ),
    ]
    breakdown = {p["phase"]: (p["last_ms"], p["median_ms"]) for p in batch_time_breakdown(batches)}
    assert list(breakdown) == [
        "latestOffset", "getBatch", "queryPlanning", "addBatch", "addBatch.result",
        "addBatch.write", "walCommit", "commitOffsets", "other",
    ]  # fmt: skip
    assert breakdown["addBatch"] == (3000, 1200)
    assert breakdown["addBatch.result"] == (2600, 900)
    assert breakdown["addBatch.write"] == (350, 250)
    # `other`: the batch duration outside Spark's phases (1490 - 1440, 3300 - 3240)
    assert breakdown["other"] == (60, 50)


def test_statuses_written_before_phases_were_kept_still_read() -> None:
    old = StreamStatus(job="word_count", checkpoint="ck", sink="s")
    old.record_batch(batch_from_progress(PROGRESS, 0))
    data = json.loads(old.to_json())
    for batch in [data["last_batch"], *data["recent_batches"]]:
        del batch["phases_ms"], batch["job_ms"]
    read = StreamStatus.from_json(json.dumps(data))
    assert read.last_batch is not None
    assert read.last_batch.phases_ms == {}
    assert batch_time_breakdown(read.recent_batches) == []


def test_stateless_progress_has_no_state_rows() -> None:
    batch = batch_from_progress({**PROGRESS, "stateOperators": []}, 0)
    assert batch.state_rows is None


def test_status_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    status = StreamStatus(
        job="running_total",
        checkpoint=str(tmp_path / "ck"),
        sink="s",
        run_id="0f1e2d3c-run",
        app_id="local-1",
        ui_url="http://localhost:4041",
    )
    for i in range(RECENT_BATCHES + 5):
        status.record_batch(batch_from_progress({**PROGRESS, "batchId": i}, 0))
    write_status(status)
    assert CheckpointLayout.of(str(tmp_path / "ck")).status_file.exists()
    read = read_status(str(tmp_path / "ck"))
    assert read == status
    assert read is not None
    assert read.state == "running"
    assert len(read.recent_batches) == RECENT_BATCHES
    assert read.last_batch is not None
    assert read.last_batch.batch_id == RECENT_BATCHES + 4
    # And it says where the query's page in the Spark UI is
    assert read.streaming_ui_url == (
        "http://localhost:4041/StreamingQuery/statistics/?id=0f1e2d3c-run"
    )


def test_no_status_before_the_first_start(tmp_path: Path) -> None:
    assert read_status(str(tmp_path / "never-started")) is None
