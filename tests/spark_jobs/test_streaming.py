"""Both jobs on the seed's text: a real file source, real checkpoints, restarts between batches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql.streaming.listener import StreamingQueryProgress

from spark_jobs import running_total, session, word_count
from spark_jobs.status import SPARK_PHASES, read_status
from tests.conftest import drop_file, read_sink, run_available_now

pytestmark = pytest.mark.spark

SEED_FIRST = "hello world spark streaming\nhello spark\n"
SEED_SECOND = "hello spark\n"


def argv(tmp_path: Path, name: str) -> list[str]:
    return [
        "--input",
        str(tmp_path / "in"),
        "--sink",
        str(tmp_path / f"{name}-sink"),
        "--checkpoint",
        str(tmp_path / f"{name}-ck"),
        "--shuffle-partitions",
        "2",
    ]


def rows(frame: pd.DataFrame, value: str) -> set[tuple[int, str, int]]:
    return {
        (int(b), str(w), int(v))
        for b, w, v in zip(frame.batch_id, frame.word, frame[value], strict=True)
    }


def test_seed_text_gives_the_seed_output_across_a_restart(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given the seed's first input
    drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
    # When both jobs process it, stop, and start again on the same checkpoints after more input
    run_available_now(spark, word_count, argv(tmp_path, "wc"))
    run_available_now(spark, running_total, argv(tmp_path, "rt"))
    drop_file(tmp_path / "in", "2.txt", SEED_SECOND)
    run_available_now(spark, word_count, argv(tmp_path, "wc"))
    run_available_now(spark, running_total, argv(tmp_path, "rt"))

    # Then word_count holds the seed's per-batch counts
    counts = read_sink(tmp_path / "wc-sink")
    assert rows(counts, "count") == {
        (0, "hello", 2), (0, "spark", 2), (0, "world", 1), (0, "streaming", 1),
        (1, "hello", 1), (1, "spark", 1),
    }  # fmt: skip
    # And running_total the seed's updateStateByKey totals, one row per word changed in a batch
    totals = read_sink(tmp_path / "rt-sink")
    assert rows(totals, "total") == {
        (0, "hello", 2), (0, "spark", 2), (0, "world", 1), (0, "streaming", 1),
        (1, "hello", 3), (1, "spark", 3),
    }  # fmt: skip
    # And each batch's rows share the batch's own time, increasing with the batch id
    for frame in (counts, totals):
        times = frame.groupby("batch_id")["batch_time"].nunique()
        assert (times == 1).all()
        firsts = frame.groupby("batch_id")["batch_time"].first()
        assert firsts.is_monotonic_increasing


def test_normalize_counts_case_and_punctuation_variants_as_one_word(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given lines whose words differ only in case and edge punctuation
    drop_file(tmp_path / "in", "1.txt", "Hello, hello HELLO!\n-- (spark) Spark\n")
    # When both jobs run with --normalize
    run_available_now(spark, word_count, [*argv(tmp_path, "wc"), "--normalize"])
    run_available_now(spark, running_total, [*argv(tmp_path, "rt"), "--normalize"])
    # Then each counts the normalized words, and the punctuation-only token is no word
    assert rows(read_sink(tmp_path / "wc-sink"), "count") == {(0, "hello", 3), (0, "spark", 2)}
    assert rows(read_sink(tmp_path / "rt-sink"), "total") == {(0, "hello", 3), (0, "spark", 2)}


def test_status_file_reports_the_last_batch(spark: SparkSession, tmp_path: Path) -> None:
    drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
    run_available_now(spark, running_total, argv(tmp_path, "rt"))
    status = read_status(str(tmp_path / "rt-ck"))
    assert status is not None
    assert status.job == "running_total"
    assert status.state == "stopped"
    assert status.last_batch is not None
    assert status.last_batch.batch_id == 0
    assert status.last_batch.input_rows == 2
    assert status.last_batch.state_rows == 4
    assert status.exception is None
    # And where the batch's time went: each of Spark's phases, and the job's parts of addBatch
    phases = status.last_batch.phases_ms
    assert set(phases) == set(SPARK_PHASES), phases
    job = status.last_batch.job_ms
    assert set(job) == {"prepare", "result", "write"}, job  # no --console
    assert job["result"] > 0
    assert sum(job.values()) <= phases["addBatch"] + 5, (job, phases)  # parts of addBatch
    assert sum(phases.values()) <= status.last_batch.duration_ms + 5, phases


def test_sink_batch_ids_continue_on_a_new_checkpoint(spark: SparkSession, tmp_path: Path) -> None:
    drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
    run_available_now(spark, word_count, argv(tmp_path, "wc"))
    # A new checkpoint over a new input folder, same sink: batch ids go on from 1, not 0 again.
    new_argv = argv(tmp_path, "wc")
    new_argv[1] = str(tmp_path / "in2")
    new_argv[5] = str(tmp_path / "wc-ck2")
    drop_file(tmp_path / "in2", "1.txt", SEED_SECOND)
    run_available_now(spark, word_count, [*new_argv, "--allow-new-checkpoint"])
    assert sorted(read_sink(tmp_path / "wc-sink").batch_id.unique()) == [0, 1]
    assert json.loads((tmp_path / "wc-ck2/_streamops/generation.json").read_text()) == {
        "first_sink_batch_id": 1,
        "number": 0,
    }


def test_sliding_windows_count_each_word_once_per_window(
    spark: SparkSession, tmp_path: Path
) -> None:
    windows = ["--window", "4 seconds", "--slide", "2 seconds"]
    # Given words in one batch, then a later batch that moves the watermark past their windows
    drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
    run_available_now(spark, word_count, [*argv(tmp_path, "win"), *windows])
    time.sleep(4.5)
    drop_file(tmp_path / "in", "2.txt", "later\n")
    run_available_now(spark, word_count, [*argv(tmp_path, "win"), *windows])
    run_available_now(spark, word_count, [*argv(tmp_path, "win"), *windows])
    frame = read_sink(tmp_path / "win-sink")
    first = frame[frame.word != "later"]
    # Then each of the two windows that hold the first batch's time holds its counts, written once
    assert list(frame.columns) == [
        "batch_id",
        "batch_time",
        "window_start",
        "window_end",
        "word",
        "count",
    ]
    assert first.groupby("word")["count"].sum().to_dict() == {
        "hello": 4,
        "spark": 4,
        "world": 2,
        "streaming": 2,
    }
    assert first.groupby(["window_start", "word"]).size().max() == 1
    assert first.window_start.nunique() == 2
    assert ((first.window_end - first.window_start) == pd.Timedelta(seconds=4)).all()


def test_a_checkpoint_keeps_its_shuffle_partitions_when_the_default_changes(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given a running_total checkpoint started with 8 shuffle partitions (an earlier default)
    base = argv(tmp_path, "rt")[:-2]  # without --shuffle-partitions: the current default
    drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
    run_available_now(spark, running_total, [*base, "--shuffle-partitions", "8"])
    # When it restarts after more input with the default, whatever that is now
    drop_file(tmp_path / "in", "2.txt", SEED_SECOND)
    run_available_now(spark, running_total, base)

    # Then the totals carry on from the state
    assert rows(read_sink(tmp_path / "rt-sink"), "total") == {
        (0, "hello", 2), (0, "spark", 2), (0, "world", 1), (0, "streaming", 1),
        (1, "hello", 3), (1, "spark", 3),
    }  # fmt: skip
    # And the state keeps the 8 partitions its checkpoint started with, in both batches
    state = tmp_path / "rt-ck" / "state" / "0"
    assert sorted(int(p.name) for p in state.iterdir() if p.name.isdigit()) == list(range(8))
    for batch in (0, 1):
        lines = (tmp_path / "rt-ck" / "offsets" / str(batch)).read_text().splitlines()
        assert json.loads(lines[1])["conf"]["spark.sql.shuffle.partitions"] == "8"


def test_a_local_checkpoint_is_written_through_hadoops_filesystem_api(
    spark: SparkSession, tmp_path: Path
) -> None:
    key = session.CHECKPOINT_FILE_MANAGER_KEY
    file_context = session.LOCAL_CHECKPOINT_FILE_MANAGERS[0].replace("FileSystem", "FileContext")
    try:
        # Given a running_total checkpoint written by Spark's default manager (Hadoop FileContext)
        spark.conf.set(key, file_context)
        drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
        run_available_now(spark, running_total, argv(tmp_path, "rt"))
        assert spark.conf.get(key) == file_context  # a manager set for the session is kept
        # When the job starts again on it in a session that sets none
        spark.conf.unset(key)
        drop_file(tmp_path / "in", "2.txt", SEED_SECOND)
        run_available_now(spark, running_total, argv(tmp_path, "rt"))

        # Then the job used the FileSystem-based manager, which this Spark has
        used = spark.conf.get(key)
        assert used == session.LOCAL_CHECKPOINT_FILE_MANAGERS[0]
        # And it read the checkpoint the other one wrote: offsets, commits and state carry on
        assert rows(read_sink(tmp_path / "rt-sink"), "total") == {
            (0, "hello", 2), (0, "spark", 2), (0, "world", 1), (0, "streaming", 1),
            (1, "hello", 3), (1, "spark", 3),
        }  # fmt: skip
        # And only a checkpoint on the local filesystem gets it
        spark.conf.unset(key)
        for local in (str(tmp_path / "ck"), "relative/ck", f"file://{tmp_path}/ck"):
            assert session.checkpoint_conf(spark, local) == {key: used}, local
        for remote in ("s3a://bucket/ck", "hdfs://namenode:8020/ck", "gs://bucket/ck"):
            assert session.checkpoint_conf(spark, remote) == {}, remote
    finally:
        spark.conf.unset(key)


def test_the_status_listener_takes_each_progress_as_one_json_string(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given PySpark's field-by-field conversion of a progress made unusable
    def field_by_field(jprogress: object) -> None:
        raise AssertionError("the progress was converted field by field")

    monkeypatch.setattr(StreamingQueryProgress, "fromJObject", field_by_field)
    # When a job runs two batches
    drop_file(tmp_path / "in", "1.txt", SEED_FIRST)
    drop_file(tmp_path / "in", "2.txt", SEED_SECOND)
    run_available_now(spark, running_total, [*argv(tmp_path, "rt"), "--max-files-per-trigger", "1"])

    # Then its status still records both, with Spark's figures for each
    status = read_status(str(tmp_path / "rt-ck"))
    assert status is not None
    assert [b.batch_id for b in status.recent_batches] == [0, 1]
    assert [b.input_rows for b in status.recent_batches] == [2, 1]
    assert status.last_batch is not None
    assert status.last_batch.state_rows == 4
    assert set(status.last_batch.phases_ms) == set(SPARK_PHASES)
