"""Every expectation on real Parquet with real Great Expectations: the real jobs' sinks pass, and a
copy with one part file rewritten to break one rule fails that rule, naming the batch."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from expectations import suites
from expectations.results import read_history
from expectations.suites import QualityConfig
from expectations.validate import (
    QualityRunner,
    Report,
    StreamSink,
    ValidationState,
    batch_chunks,
    load_totals,
)
from spark_jobs.layout import sink_file_name
from spark_jobs.sinks import RUNNING_TOTAL_SCHEMA, WORD_COUNT_SCHEMA
from tests.expectations.conftest import RealSinks, nullable, rewrite_part

pytestmark = pytest.mark.spark

CONFIG = QualityConfig.load(suites.DEFAULT_CONFIG)


def validate(
    root: Path,
    sink: Path,
    job: str,
    *,
    config: QualityConfig = CONFIG,
    now: datetime | None = None,
    running: bool = True,
    revalidate_all: bool = False,
) -> Report:
    """One validation run of one stream (named after its job), recorded like the DAG does."""
    runner = QualityRunner(str(root), config, run="test", now=now)
    report = runner.validate_stream(
        StreamSink(job, job, str(sink), running=running), revalidate_all
    )
    runner.build_docs()
    runner.commit()
    return report


def test_the_real_jobs_sinks_pass_every_check(real_sinks: RealSinks, tmp_path: Path) -> None:
    for job in ("word_count", "running_total"):
        report = validate(tmp_path, real_sinks.sink(job), job)
        assert report.success, report.message()
        assert report.checks == {"schema": True, "rows": True, "volume": True, "freshness": True}
        assert report.batches == [0, 1, 2, 3, 4, 5]
    # And the Data Docs show the results
    assert (tmp_path / "_streamops/quality/data_docs/index.html").exists()
    pages = tmp_path / "_streamops/quality/data_docs/validations"
    suites_shown = {p.relative_to(pages).parts[:2] for p in pages.rglob("*.html")}
    assert suites_shown >= {("word_count", "rows"), ("running_total", "reconcile")} - {
        ("running_total", "reconcile")
    }
    assert len(suites_shown) == 8  # 4 aspects x 2 streams


Change = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Damage:
    """One part file rewritten to break one rule, and the failure it must cause."""

    job: str
    change: Change
    aspect: str
    expectation: str
    target: str
    sample: str
    schema: pa.Schema | None = None
    batch_id: int = 2


def first(column: str, value: object) -> Change:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object}) if value is None else frame
        frame.loc[frame.index[0], column] = value
        return frame

    return change


def where_word(word: str, column: str, value: object) -> Change:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["word"] == word, column] = value
        return frame

    return change


WC_NULLABLE = nullable(WORD_COUNT_SCHEMA)
RT_NULLABLE = nullable(RUNNING_TOTAL_SCHEMA)
IN_SET = "expect_column_values_to_be_in_set"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_compound_columns_to_be_unique"

DAMAGES = {
    # schema: one row per file
    "count is a double": Damage(
        "word_count", lambda f: f.astype({"count": float}), "schema", IN_SET, "type_of_count",
        "'double'",
    ),
    "batch_time is missing": Damage(
        "word_count", lambda f: f.drop(columns="batch_time"), "schema", IN_SET,
        "type_of_batch_time", "'<missing>'",
    ),
    "word is binary": Damage(
        "word_count", lambda f: f.assign(word=f["word"].str.encode("utf-8")), "schema", IN_SET,
        "type_of_word", "'binary'",
    ),
    "batch_id is int32": Damage(
        "running_total", lambda f: f.astype({"batch_id": "int32"}), "schema", IN_SET,
        "type_of_batch_id", "'int32'",
    ),
    "window_start where none belongs": Damage(
        "word_count", lambda f: f.assign(window_start=f["batch_time"]), "schema", IN_SET,
        "unexpected_columns", "'window_start'",
    ),
    "total is a string": Damage(
        "running_total", lambda f: f.astype({"total": str}), "schema", IN_SET, "type_of_total",
        "'string'",
    ),
    # rows
    "batch_id is null": Damage(
        "word_count", first("batch_id", None), "rows", NOT_NULL, "batch_id", "None",
        schema=WC_NULLABLE,
    ),
    "a row of another batch": Damage(
        "word_count", first("batch_id", 4), "rows", "expect_column_pair_values_to_be_equal",
        "column_A=batch_id, column_B=file_batch_id", "batch_id=4, file_batch_id=2",
    ),
    "batch_time is null": Damage(
        "running_total", first("batch_time", None), "rows", NOT_NULL, "batch_time", "None",
        schema=RT_NULLABLE,
    ),
    "word is null": Damage(
        "word_count", first("word", None), "rows", NOT_NULL, "word", "None", schema=WC_NULLABLE
    ),
    "word is empty": Damage(
        "running_total", where_word("hello", "word", ""), "rows",
        "expect_column_value_lengths_to_be_between", "word", "''",
    ),
    "word holds a space": Damage(
        "word_count", where_word("hello", "word", "hello spark"), "rows",
        "expect_column_values_to_not_match_regex", "word", "'hello spark'",
    ),
    "word holds a no-break space": Damage(
        "running_total", where_word("hello", "word", "hello\u00a0x"), "rows",
        "expect_column_values_to_not_match_regex", "word", "'hello\\xa0x'",
    ),
    "word holds a NUL": Damage(
        "word_count", where_word("hello", "word", "he\x00llo"), "rows",
        "expect_column_values_to_not_match_regex", "word", "'he\\x00llo'",
    ),
    "count is null": Damage(
        "word_count", first("count", None), "rows", NOT_NULL, "count", "None", schema=WC_NULLABLE
    ),
    "count is 0": Damage(
        "word_count", where_word("hello", "count", 0), "rows", BETWEEN, "count", "0"
    ),
    "count is negative": Damage(
        "word_count", where_word("spark", "count", -3), "rows", BETWEEN, "count", "-3"
    ),
    "total is null": Damage(
        "running_total", first("total", None), "rows", NOT_NULL, "total", "None",
        schema=RT_NULLABLE,
    ),
    "total is 0": Damage(
        "running_total", where_word("hello", "total", 0), "rows", BETWEEN, "total", "0"
    ),
    "a word twice in a word_count batch": Damage(
        "word_count", lambda f: pd.concat([f, f[f["word"] == "hello"]]), "rows", UNIQUE,
        "['batch_id', 'word']", "'word': 'hello'",
    ),
    "a word twice in a running_total batch": Damage(
        "running_total", lambda f: pd.concat([f, f[f["word"] == "hello"]]), "rows", UNIQUE,
        "['batch_id', 'word']", "'word': 'hello'",
    ),
    "a total that decreases": Damage(
        "running_total", where_word("spark", "total", 1), "rows", IN_SET,
        "total_not_decreasing", "False", batch_id=3,
    ),
    # volume: one row per batch
    "a batch file without rows": Damage(
        "word_count", lambda f: f.iloc[:0], "volume", BETWEEN, "rows", "0",
        schema=WORD_COUNT_SCHEMA,
    ),
    "a running_total batch file without rows": Damage(
        "running_total", lambda f: f.iloc[:0], "volume", BETWEEN, "rows", "0",
        schema=RUNNING_TOTAL_SCHEMA,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_part_file_fails_its_expectation(
    real_sinks: RealSinks, tmp_path: Path, case: str
) -> None:
    damage = DAMAGES[case]
    # Given a copy of a real sink with one part file rewritten
    sink = real_sinks.copy(damage.job, tmp_path / "copy", with_checkpoint=False)
    rewrite_part(sink, damage.batch_id, damage.change, damage.schema)
    # When it is validated
    report = validate(tmp_path / "root", sink, damage.job)
    # Then the expectation fails, naming the check, the batch and a sample value
    assert not report.success
    matching = [
        f
        for f in report.failures
        if f.check == f"{damage.job}.{damage.aspect}" and f.expectation == damage.expectation
    ]
    assert matching, report.message()
    failure = matching[0]
    assert damage.target in failure.describe()
    assert failure.batches == [damage.batch_id]
    assert damage.sample in failure.describe(), failure.describe()
    # And the message's first line (the alert) names the stream, the sink and the batch
    head = report.message().splitlines()[0]
    assert head.startswith(f"stream {damage.job}: ")
    assert str(sink) in head
    assert str(damage.batch_id) in head


def test_every_expectation_has_a_damage_that_fails_it() -> None:
    covered = {(d.job, d.aspect, d.expectation, d.target) for d in DAMAGES.values()}
    expected = set()
    for job, contract in (
        ("word_count", suites.WORD_COUNT),
        ("running_total", suites.RUNNING_TOTAL),
    ):
        for suite in (suites.schema_suite(job, contract), suites.rows_suite(job, contract)):
            aspect = suite.name.split(".")[1]
            for expectation in suite.expectations:
                config = expectation.configuration
                kwargs = config.kwargs
                if "column_A" in kwargs:
                    target = f"column_A={kwargs['column_A']}, column_B={kwargs['column_B']}"
                elif "column_list" in kwargs:
                    target = str(kwargs["column_list"])
                else:
                    target = kwargs["column"]
                expected.add((job, aspect, config.type, target))
    # Every schema column is damaged for at least one job; rows rules for each job that has them.
    schema_targets = {(a, t) for _, a, _, t in covered if a == "schema"}
    assert {(a, t) for _, a, _, t in expected if a == "schema"} <= schema_targets | {
        ("schema", "type_of_window_start"),
        ("schema", "type_of_window_end"),
    }
    rows = {(j, e, t) for j, a, e, t in expected if a == "rows"}
    rows_covered = {(j, e, t) for j, a, e, t in covered if a == "rows"}
    # batch_id / batch_time / word rules are shared: one job's damage covers both jobs.
    shared = {(e, t) for _, e, t in rows_covered}
    assert {(j, e, t) for j, e, t in rows if (e, t) not in shared} == set()
    assert ("volume", BETWEEN) in {(a, e) for _, a, e, _ in covered}


def test_rows_per_batch_above_the_maximum_fail_volume(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    config_file = tmp_path / "t.yaml"
    config_file.write_text("jobs: {word_count: {rows_per_batch: {min: 1, max: 5}}}\n")
    report = validate(
        tmp_path / "root",
        real_sinks.sink("word_count"),
        "word_count",
        config=QualityConfig.load(config_file),
    )
    failures = [f for f in report.failures if f.check == "word_count.volume"]
    assert len(failures) == 1
    assert failures[0].arguments == {"column": "rows", "min_value": 1, "max_value": 5}
    assert failures[0].batches  # the batches of more than 5 distinct words


def test_an_old_newest_batch_fails_freshness_unless_the_stream_is_stopped(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    later = datetime.now(UTC) + timedelta(days=2)
    report = validate(tmp_path / "a", real_sinks.sink("running_total"), "running_total", now=later)
    failures = [f for f in report.failures if f.check == "running_total.freshness"]
    assert len(failures) == 1
    assert failures[0].batches == [5]
    assert failures[0].arguments["max_value"] == 900
    stopped = validate(
        tmp_path / "b", real_sinks.sink("running_total"), "running_total", now=later, running=False
    )
    assert stopped.success
    assert "freshness not checked: the stream is stopped" in stopped.notes


def copy_batches(source: Path, target: Path, ids: range) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for batch_id in ids:
        shutil.copy2(source / sink_file_name(batch_id), target / sink_file_name(batch_id))


def test_an_incremental_run_validates_exactly_the_new_batches(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given a sink validated with batches 0-2
    sink = tmp_path / "sink"
    copy_batches(real_sinks.sink("word_count"), sink, range(3))
    first_run = validate(tmp_path / "root", sink, "word_count")
    assert first_run.batches == [0, 1, 2]
    # When the job adds batches 3-5 and the next run starts
    copy_batches(real_sinks.sink("word_count"), sink, range(3, 6))
    second = validate(tmp_path / "root", sink, "word_count")
    # Then exactly those are validated, and a run without new batches validates none
    assert second.batches == [3, 4, 5]
    assert second.checked == "batches after 2"
    third = validate(tmp_path / "root", sink, "word_count")
    assert third.batches == []
    assert third.checks == {"freshness": True}
    state = ValidationState.load(str(tmp_path / "root"), "word_count")
    assert state is not None
    assert state.last_validated_batch_id == 5
    history = [
        h for h in read_history(str(tmp_path / "root")) if h["subject"] == "stream word_count"
    ]
    assert [h["batches"]["count"] for h in history] == [3, 3, 0]
    assert all(h["data_docs"].endswith("data_docs/index.html") for h in history)
    # And revalidate_all checks everything again
    again = validate(tmp_path / "root", sink, "word_count", revalidate_all=True)
    assert again.batches == [0, 1, 2, 3, 4, 5]


def test_a_total_that_decreases_across_runs_fails_in_the_new_batch(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given running totals validated up to batch 2
    sink = tmp_path / "sink"
    copy_batches(real_sinks.sink("running_total"), sink, range(3))
    assert validate(tmp_path / "root", sink, "running_total").success
    snapshot = load_totals(str(tmp_path / "root"), "running_total", 2)
    assert snapshot is not None
    assert snapshot["spark"] >= 3
    # When batch 3 arrives with spark's total below its total in batch 2
    copy_batches(real_sinks.sink("running_total"), sink, range(3, 4))
    rewrite_part(sink, 3, where_word("spark", "total", 1))
    report = validate(tmp_path / "root", sink, "running_total")
    # Then only batch 3 is validated, and it fails, comparing with the previous run's totals
    assert report.batches == [3]
    failure = next(f for f in report.failures if "total_not_decreasing" in f.describe())
    assert failure.batches == [3]
    assert "word='spark'" in failure.describe()


def test_a_rewritten_batch_is_validated_again_from_that_batch_on(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    sink = real_sinks.copy("running_total", tmp_path / "copy", with_checkpoint=False)
    assert validate(tmp_path / "root", sink, "running_total").success
    # When batch 4 is rewritten (a restore or a replay) with a bad total
    rewrite_part(sink, 4, where_word("hello", "total", 0))
    report = validate(tmp_path / "root", sink, "running_total")
    assert report.batches == [4, 5]
    assert "rewritten" in report.checked
    failed = [f for f in report.failures if f.check == "running_total.rows"]
    assert {tuple(f.batches) for f in failed} == {(4,)}
    assert {f.expectation for f in failed} == {
        "expect_column_values_to_be_between",  # total >= 1
        "expect_column_values_to_be_in_set",  # total_not_decreasing
    }


def test_batch_chunks_end_between_batches_only() -> None:
    # Given a compacted file whose two row groups share batch 4, then two batch files
    schema = pa.schema([])
    files = [
        suites.PartFileSchema(0, "part-0-9", schema, ((0, 4, 50), (4, 9, 50))),
        suites.PartFileSchema(10, "part-10", schema, ((10, 10, 5),)),
        suites.PartFileSchema(11, "part-11", schema, ((11, 11, 5),)),
    ]
    # Then chunks of 40 rows cannot cut inside batch 4, and the last chunk is open-ended
    assert batch_chunks(files, 40) == [(None, 10), (10, None)]
    assert batch_chunks(files, 5) == [(None, 10), (10, 11), (11, None)]
    assert batch_chunks(files, 1000) == [(None, None)]
    # And a chunked run from a watermark starts there
    assert batch_chunks(files, 5, start=10) == [(10, 11), (11, None)]


@pytest.mark.parametrize("job", ["word_count", "running_total"])
def test_a_run_in_chunks_of_one_batch_finds_what_one_chunk_finds(
    real_sinks: RealSinks, tmp_path: Path, job: str
) -> None:
    # Given a sink with a defect in batch 3 (running_total: a total that decreases, which only
    # the totals carried from the chunk before can see)
    sink = tmp_path / "sink"
    copy_batches(real_sinks.sink(job), sink, range(6))
    column = "count" if job == "word_count" else "total"
    rewrite_part(sink, 3, where_word("spark", column, -1 if job == "word_count" else 1))
    # When it is validated whole, and in chunks of one row (so one batch per chunk)
    whole = validate(tmp_path / "whole", sink, job, revalidate_all=True)
    chunked = validate(
        tmp_path / "chunked", sink, job, config=replace(CONFIG, chunk_rows=1), revalidate_all=True
    )
    # Then both find the same failures, on the same rows and batches
    assert not whole.success
    assert [f.describe() for f in chunked.failures] == [f.describe() for f in whole.failures]
    assert [f.batches for f in whole.failures] == [[3]] * len(whole.failures)
    assert (chunked.rows, chunked.batches, chunked.checks) == (
        whole.rows,
        whole.batches,
        whole.checks,
    )
    if job == "running_total":
        for root in ("whole", "chunked"):
            assert load_totals(str(tmp_path / root), job, 5) is not None
        assert load_totals(str(tmp_path / "chunked"), job, 5) == load_totals(
            str(tmp_path / "whole"), job, 5
        )
