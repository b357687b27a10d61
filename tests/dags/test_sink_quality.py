"""The sink_quality DAG on a real Airflow over the real jobs' sinks, and its asset watcher."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from airflow.sdk import AssetOrTimeSchedule

from spark_jobs.layout import sink_file_name
from streamops import registry
from streamops.quality import quality_schedule
from streamops.registry import StreamRecord
from streamops.triggers import SinkBatchesTrigger
from tests.dags.conftest import airflow_env, dags_test, run_state
from tests.expectations.conftest import RealSinks, real_sinks, rewrite_part

__all__ = ["real_sinks"]  # the session fixture, shared with tests/expectations

THRESHOLDS = """\
jobs:
  word_count: {rows_per_batch: {min: 1, max: 1000}, freshness_max_age_seconds: 86400}
  running_total: {rows_per_batch: {min: 1, max: 1000}, freshness_max_age_seconds: 86400}
reconcile:
  pairs: [{word_count: word_count, running_total: running_total}]
"""


def stage(real_sinks: RealSinks, root: Path) -> dict[str, str]:
    """Both real sinks and checkpoints as registered streams under the data root; the env."""
    for name in ("word_count", "running_total"):
        folder = root / "streams" / name
        real_sinks.copy(name, folder)
        registry.save(
            StreamRecord(
                stream=name,
                job=name,
                checkpoint=str(folder / "checkpoint"),
                sink=str(folder / "sink"),
                input=str(folder / "input"),
                trigger_interval="1 second",
            ),
            str(root),
        )
    (root / "thresholds.yaml").write_text(THRESHOLDS)
    return {"STREAMOPS_QUALITY_CONFIG": str(root / "thresholds.yaml")}


def history(root: Path) -> list[dict[str, object]]:
    lines = (root / "_streamops/quality/history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.airflow
@pytest.mark.spark
def test_sink_quality_validates_reconciles_and_publishes_data_docs(
    airflow_home: Path, real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given two registered streams with the real jobs' sinks
    env = airflow_env(airflow_home, tmp_path, **stage(real_sinks, tmp_path))
    # When sink_quality runs
    result = dags_test("sink_quality", {}, env)
    output = result.stdout + result.stderr
    # Then it succeeds, validating both sinks and reconciling the pair
    assert run_state(result) == "success", output[-4000:]
    docs = tmp_path / "_streamops/quality/data_docs/index.html"
    assert docs.exists()
    assert f"Data Docs: {docs.as_uri()}" in output
    first = history(tmp_path)
    assert {line["subject"] for line in first} == {
        "stream word_count",
        "stream running_total",
        "streams word_count and running_total",
    }
    assert all(line["success"] for line in first)
    assert {line["batches"]["count"] for line in first} == {6}  # type: ignore[index]
    # And when sink_compaction then merges both sinks' committed batches
    compaction = dags_test("sink_compaction", {"grace_minutes": 0}, env)
    output = compaction.stdout + compaction.stderr
    assert run_state(compaction) == "success", output[-4000:]
    for name in ("word_count", "running_total"):
        assert f"stream {name}: merged 6 files" in output, output[-4000:]
        sink = tmp_path / "streams" / name / "sink"
        assert [p.name for p in sink.glob("*.parquet")] == [
            "part-000000000000-000000000005.parquet"
        ]
    # Then the next sink_quality run finds no new batch in them, and passes without revalidating
    result = dags_test("sink_quality", {}, env)
    assert run_state(result) == "success", (result.stdout + result.stderr)[-4000:]
    after = history(tmp_path)[len(first) :]
    assert all(line["success"] for line in after), after
    checked = {str(line["subject"]): str(line["checked"]) for line in after}
    assert checked["stream word_count"] == "no new batches since batch 5", checked
    assert checked["stream running_total"] == "no new batches since batch 5", checked
    assert checked["streams word_count and running_total"].endswith(", 0 new"), checked
    first = history(tmp_path)
    # And a manual run with revalidate_all checks every batch again, from the compacted files
    result = dags_test("sink_quality", {"revalidate_all": True}, env)
    assert run_state(result) == "success", (result.stdout + result.stderr)[-4000:]
    second = history(tmp_path)[len(first) :]
    assert {line["checked"] for line in second if line["subject"] == "stream word_count"} == {
        "revalidate_all: every batch"
    }
    assert {line["batches"]["count"] for line in second} == {6}  # type: ignore[index]


@pytest.mark.airflow
@pytest.mark.spark
def test_a_failed_expectation_fails_with_details_and_alerts_once(
    airflow_home: Path, real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given word_count's batch 2 holds a count of 0
    env = airflow_env(airflow_home, tmp_path, **stage(real_sinks, tmp_path))
    sink = tmp_path / "streams/word_count/sink"

    def zero(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["word"] == "hello", "count"] = 0
        return frame

    rewrite_part(sink, 2, zero)
    before = {p.name: p.read_bytes() for p in sink.iterdir()}
    # When sink_quality runs
    result = dags_test("sink_quality", {}, env)
    output = result.stdout + result.stderr
    # Then the run fails; the log names the stream, sink, expectation, batch and sample
    assert run_state(result) == "failed"
    assert f"stream word_count: 1 quality expectation(s) failed on {sink}" in output
    assert "expect_column_values_to_be_between(column=count, min_value=1)" in output
    assert "in batch 2; samples: 0 (file_batch_id=2, word='hello')" in output
    # And the reconciliation, which ran anyway, saw hello's count missing from batch 2 on
    assert "cumulative_count=" in output
    # And each failed task alerted once, naming the stream when there is one
    alerts = [
        json.loads(line) for line in (tmp_path / "_streamops/alerts.jsonl").read_text().splitlines()
    ]
    by_task = {alert["task_id"]: alert for alert in alerts}
    assert len(alerts) == len(by_task) == 2
    assert by_task["validate_sink"]["stream"] == "word_count"
    assert (
        "stream word_count: 1 quality expectation(s) failed" in by_task["validate_sink"]["message"]
    )
    assert by_task["reconcile_sinks"]["message"].startswith("streams word_count and running_total")
    # And the sink was only read
    assert {p.name: p.read_bytes() for p in sink.iterdir()} == before


def test_the_schedule_is_time_or_new_sink_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMOPS_DATA_ROOT", str(tmp_path))
    schedule = quality_schedule()
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "*/10 * * * *"  # type: ignore[attr-defined]
    asset = schedule.asset_condition
    (watcher,) = asset.watchers  # type: ignore[attr-defined]
    assert isinstance(watcher.trigger, SinkBatchesTrigger)
    assert watcher.trigger.serialize() == (
        "streamops.triggers.SinkBatchesTrigger",
        {"root": str(tmp_path), "poll_interval": 60.0},
    )


def test_the_watcher_fires_once_per_new_part_file(tmp_path: Path) -> None:
    # Given a registered stream whose sink holds batch 0
    sink = tmp_path / "sink"
    sink.mkdir()
    (sink / sink_file_name(0)).write_bytes(b"x")
    registry.save(
        StreamRecord("s", "word_count", str(tmp_path / "ck"), str(sink), "", None), str(tmp_path)
    )
    trigger = SinkBatchesTrigger(root=str(tmp_path), poll_interval=0.05)

    async def watch() -> list[dict[str, object]]:
        events = trigger.run()
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.2)
        assert not first.done()  # batch 0 was there at the start: no event
        (sink / ".part-000000000001.parquet.tmp").write_bytes(b"x")  # being written
        await asyncio.sleep(0.2)
        assert not first.done()
        shutil.move(sink / ".part-000000000001.parquet.tmp", sink / sink_file_name(1))
        event = await asyncio.wait_for(first, 5)
        second = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.2)
        assert not second.done()  # nothing new since
        second.cancel()
        return [event.payload]

    (payload,) = asyncio.run(watch())
    assert payload["streams"]["s"]["batch_id"] == 1  # type: ignore[index]
