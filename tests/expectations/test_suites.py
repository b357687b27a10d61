"""Fast checks of the pure parts: thresholds, the derived views, batch planning, alignment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from expectations import suites
from expectations.reconcile import CommonPoint, InputBatch, common_points, reconciliation_view
from expectations.results import QualityConfigError
from expectations.suites import QualityConfig, Thresholds
from expectations.validate import PartFile, ValidationState, format_batches, plan_batches


def test_the_shipped_thresholds_load() -> None:
    config = QualityConfig.load(suites.DEFAULT_CONFIG)
    assert config.thresholds("word_count", "word_count").min_rows_per_batch == 1
    assert config.thresholds("anything", "running_total").freshness_max_age_seconds == 900
    assert [(p.word_count, p.running_total) for p in config.pairs] == [
        ("word_count", "running_total")
    ]


def test_stream_overrides_apply_on_top_of_the_job(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "jobs:\n  word_count: {rows_per_batch: {min: 2, max: 9}}\n"
        "streams:\n  clicks: {freshness_max_age_seconds: null}\n"
    )
    config = QualityConfig.load(path)
    assert config.thresholds("clicks", "word_count") == Thresholds(2, 9, None)
    assert config.thresholds("other", "word_count") == Thresholds(2, 9, 900.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs: {word_count: {rows_per_batch: {min: -1}}}", "rows_per_batch.min must be"),
        ("jobs: {word_count: {rows_per_batch: {min: 5, max: 2}}}", "max (2) is below min (5)"),
        ("jobs: {word_count: {freshness_max_age_seconds: 0}}", "positive number of seconds"),
        ("jobs: {word_count: {row_per_batch: {}}}", "unknown settings ['row_per_batch']"),
        ("reconcile: {pairs: [{word_count: a}]}", "exactly the keys word_count and running_total"),
        ("[1, 2]", "expected a mapping at the top level"),
        ("jobs: [", "is not valid YAML"),
    ],
)
def test_bad_thresholds_name_the_file_and_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(QualityConfigError) as caught:
        QualityConfig.load(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_thresholds_file_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(QualityConfigError, match="STREAMOPS_QUALITY_CONFIG"):
        QualityConfig.load(tmp_path / "nope.yaml")


def test_total_not_decreasing_uses_the_words_earlier_totals() -> None:
    # Given rows of batches 5 and 6, and totals up to batch 4 from an earlier run
    rows = pd.DataFrame(
        {
            "batch_id": [5, 5, 6, 6],
            "word": ["a", "b", "a", "b"],
            "total": [3, 1, 2, 4],
        }
    )
    # When the derived column is computed
    view = suites.with_total_not_decreasing(rows, {"a": 1, "b": 2})
    # Then a's drop from 3 to 2 and b's drop from 2 (earlier run) to 1 are flagged
    assert view["total_not_decreasing"].tolist() == [True, False, False, True]


def test_latest_totals_take_each_words_largest_batch() -> None:
    rows = pd.DataFrame({"batch_id": [2, 1, 3], "word": ["a", "a", "b"], "total": [5, 3, 1]})
    assert suites.latest_totals(rows, {"c": 7}) == {"a": 5, "b": 1, "c": 7}


def test_volume_view_keeps_empty_files() -> None:
    view = suites.volume_view({3: 10, 1: 0})
    assert view.to_dict("list") == {"batch_id": [1, 3], "rows": [0, 10]}


def test_format_batches_joins_ranges() -> None:
    assert format_batches([5, 1, 2, 3, 9]) == "1-3, 5, 9"
    assert format_batches(range(0, 100, 2), limit=2) == "0, 2, ... (48 more ranges)"


def files(*ids: int, mtime: int = 100) -> list[PartFile]:
    return [PartFile(i, i, f"/s/part-{i:012d}.parquet", 1, mtime) for i in ids]


def test_plan_takes_every_batch_the_first_time_and_then_only_new_ones() -> None:
    assert [f.first for f in plan_batches(files(0, 1), None, "/s", False).files] == [0, 1]
    state = ValidationState("s", "/s", last_validated_batch_id=1, last_validated_mtime_ns=100)
    plan = plan_batches(files(0, 1, 2, 3), state, "/s", False)
    assert [f.first for f in plan.files] == [2, 3]
    assert plan.start_batch_id == 2
    assert plan.from_watermark
    assert plan_batches(files(0, 1), state, "/s", False).files == []
    assert len(plan_batches(files(0, 1), state, "/s", True).files) == 2


def test_plan_rechecks_from_a_rewritten_batch() -> None:
    state = ValidationState("s", "/s", last_validated_batch_id=3, last_validated_mtime_ns=100)
    rewritten = [*files(0, 1), *files(2, mtime=200), *files(3, 4)]
    plan = plan_batches(rewritten, state, "/s", False)
    assert [f.first for f in plan.files] == [2, 3, 4]
    assert "rewritten" in plan.reason
    assert not plan.from_watermark


def test_plan_reads_only_new_batches_of_a_compacted_file() -> None:
    # Given batches 0-3 validated, then compacted together with the new batches 4 and 5
    state = ValidationState("s", "/s", last_validated_batch_id=3, last_validated_mtime_ns=100)
    compacted = [PartFile(0, 5, "/s/part-000000000000-000000000005.parquet", 1, 900)]
    plan = plan_batches([*compacted, *files(6)], state, "/s", False)
    # Then the compacted file is no rewrite: the run starts after the watermark
    assert plan.from_watermark
    assert plan.start_batch_id == 4
    assert [(f.first, f.last) for f in plan.files] == [(0, 5), (6, 6)]
    # And a compacted file of checked batches only is no new batch
    plan = plan_batches([PartFile(0, 3, "/s/x", 1, 900)], state, "/s", False)
    assert plan.files == []


def test_plan_rechecks_after_a_truncation_it_has_not_seen() -> None:
    state = ValidationState(
        "s", "/s", last_validated_batch_id=5, last_validated_mtime_ns=100, last_truncation="t1"
    )
    seen = [{"time": "t1", "after": 1}]
    assert plan_batches(files(0, 1, 2, 3, 4, 5), state, "/s", False, seen).files == []
    restored = [*seen, {"time": "t2", "after": 2}]
    plan = plan_batches(files(0, 1, 2, 3, 4, 5), state, "/s", False, restored)
    assert plan.start_batch_id == 3
    assert [f.first for f in plan.files] == [3, 4, 5]
    assert not plan.from_watermark


def test_plan_restarts_when_the_sink_moved() -> None:
    state = ValidationState("s", "/old", last_validated_batch_id=3, last_validated_mtime_ns=100)
    assert len(plan_batches(files(0, 1), state, "/new", False).files) == 2


def batches(*groups: str) -> list[InputBatch]:
    return [InputBatch(i, frozenset(g.split())) for i, g in enumerate(groups)]


def test_common_points_of_identical_batching_are_every_batch() -> None:
    points = common_points(batches("a", "b", "c"), batches("a", "b", "c"))
    assert [(p.word_count_batch, p.running_total_batch) for p in points] == [(0, 0), (1, 1), (2, 2)]


def test_common_points_of_different_batching_are_where_both_caught_up() -> None:
    points = common_points(batches("a", "b", "c", "d"), batches("a b", "c", "d e"))
    assert [(p.word_count_batch, p.running_total_batch) for p in points] == [(1, 0), (2, 1)]


def test_reconciliation_view_sums_counts_and_carries_totals() -> None:
    # Given word_count batches 0-2 and running_total batches 0-1 (its batch 1 = wc batches 1-2)
    wc = pd.DataFrame(
        {"batch_id": [0, 0, 1, 2], "word": ["a", "b", "a", "a"], "count": [1, 2, 1, 1]}
    )
    rt = pd.DataFrame({"batch_id": [0, 0, 1], "word": ["a", "b", "a"], "total": [1, 2, 3]})
    points = [CommonPoint(0, 0, 1), CommonPoint(2, 1, 3)]
    # When the view is built
    view = reconciliation_view(wc, rt, points)
    # Then each word has a row per point where it changed, and the sums match the totals
    assert view[["point", "word", "cumulative_count", "running_total"]].values.tolist() == [
        [0, "a", 1, 1],
        [1, "a", 3, 3],
        [0, "b", 2, 2],
    ]
    assert (view["difference"] == 0).all()


def test_a_word_count_sink_is_windowed_when_its_first_batch_is() -> None:
    from spark_jobs.sinks import WINDOWED_WORD_COUNT_SCHEMA, WORD_COUNT_SCHEMA

    windowed = suites.contract_for("word_count", WINDOWED_WORD_COUNT_SCHEMA)
    assert windowed is suites.WINDOWED_WORD_COUNT
    assert suites.contract_for("word_count", WORD_COUNT_SCHEMA) is suites.WORD_COUNT
    assert suites.schema_matches(WINDOWED_WORD_COUNT_SCHEMA, windowed)
    assert not suites.schema_matches(WORD_COUNT_SCHEMA, windowed)
    with pytest.raises(QualityConfigError, match="no quality suites"):
        suites.contract_for("clicks", None)


def test_prune_keeps_the_newest_results_of_each_suite_and_their_pages(tmp_path: Path) -> None:
    from expectations.validate import prune_results

    store = tmp_path / "gx/uncommitted/validations"
    pages = tmp_path / "data_docs/validations"
    for suite in ("wc/rows", "wc/volume"):
        for number in range(5):
            relative = Path(suite, f"run{number}", f"20260101T00000{number}Z", "batch.json")
            (store / relative).parent.mkdir(parents=True)
            (store / relative).write_text("{}")
            (pages / relative).parent.mkdir(parents=True)
            (pages / relative).with_suffix(".html").write_text("")
    assert prune_results(tmp_path, keep=2) == 6
    kept = sorted(str(p.relative_to(store)) for p in store.rglob("*.json"))
    assert kept == [
        "wc/rows/run3/20260101T000003Z/batch.json",
        "wc/rows/run4/20260101T000004Z/batch.json",
        "wc/volume/run3/20260101T000003Z/batch.json",
        "wc/volume/run4/20260101T000004Z/batch.json",
    ]
    assert len(list(pages.rglob("*.html"))) == 4
    assert not (store / "wc/rows/run0").exists()
