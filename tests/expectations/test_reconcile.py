"""Reconciliation on the real jobs' sinks and checkpoints: they agree, and a batch duplicated or
missing in either sink is caught, naming the words and batches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from expectations import suites
from expectations.reconcile import align, reconcile_pair
from expectations.suites import QualityConfig, ReconcilePair
from expectations.validate import QualityRunner, Report, StreamSink
from spark_jobs.layout import sink_file_name, tombstone_name
from spark_jobs.sinks import RUNNING_TOTAL_SCHEMA, WORD_COUNT_SCHEMA
from tests.expectations.conftest import RealSinks, rewrite_part

pytestmark = pytest.mark.spark

CONFIG = QualityConfig.load(suites.DEFAULT_CONFIG)
PAIR = ReconcilePair("wc", "rt")


def reconcile(
    root: Path, word_count: Path, running_total: Path, revalidate_all: bool = False
) -> Report:
    """One reconciliation run over two copied sinks (each with its checkpoint beside it)."""
    runner = QualityRunner(str(root), CONFIG, run="test")
    report = reconcile_pair(
        runner,
        PAIR,
        StreamSink("wc", "word_count", str(word_count), str(word_count.parent / "checkpoint")),
        StreamSink(
            "rt", "running_total", str(running_total), str(running_total.parent / "checkpoint")
        ),
        revalidate_all,
    )
    runner.build_docs()
    runner.commit()
    return report


def copies(
    real_sinks: RealSinks, tmp_path: Path, running_total: str = "running_total"
) -> tuple[Path, Path]:
    return (
        real_sinks.copy("word_count", tmp_path / "wc"),
        real_sinks.copy(running_total, tmp_path / "rt"),
    )


def test_jobs_that_batch_alike_reconcile_batch_by_batch(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    wc, rt = copies(real_sinks, tmp_path)
    report = reconcile(tmp_path / "root", wc, rt)
    assert report.success, report.message()
    assert report.checked.startswith("batch-aligned (6 batches)")
    assert report.batches == [0, 1, 2, 3, 4, 5]
    assert report.checks == {"reconcile": True}
    # And a second run has no new common point to check; revalidate_all checks them all again
    again = reconcile(tmp_path / "root", wc, rt)
    assert again.batches == []
    assert again.checks == {}
    assert reconcile(tmp_path / "root", wc, rt, revalidate_all=True).batches == [0, 1, 2, 3, 4, 5]
    # And once retention expired word_count's first batches, a run that would read both sinks
    # whole says why it cannot, instead of failing on sums that lack the expired batches
    (wc / tombstone_name(2)).touch()
    whole = reconcile(tmp_path / "root", wc, rt, revalidate_all=True)
    assert whole.checked.startswith("not reconciled: sink retention expired batches of wc ")
    assert "(before batch 2)" in whole.checked
    assert whole.checks == {}


def test_jobs_that_batch_differently_reconcile_where_both_caught_up(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given running_total read two files per batch, word_count one
    wc, rt = copies(real_sinks, tmp_path, "running_total_by2")
    alignment = align(str(wc.parent / "checkpoint"), str(rt.parent / "checkpoint"))
    assert [(p.word_count_batch, p.running_total_batch) for p in alignment.points] == [
        (1, 0),
        (3, 1),
        (5, 2),
    ]
    report = reconcile(tmp_path / "root", wc, rt)
    assert report.success, report.message()
    assert report.checked.startswith("3 common points")


def test_a_running_total_behind_word_count_is_compared_up_to_where_it_is(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given running_total has not committed its last two batches yet
    wc, rt = copies(real_sinks, tmp_path)
    for batch in (4, 5):
        (rt.parent / "checkpoint/commits" / str(batch)).unlink()
        (rt / sink_file_name(batch)).unlink()
    report = reconcile(tmp_path / "root", wc, rt)
    assert report.success, report.message()
    assert report.batches == [0, 1, 2, 3]
    assert any("word_count batches 4-5" in note for note in report.notes)


def standing(root: Path) -> pd.DataFrame:
    """Where each word stood at the pair's last reconciled point."""
    frame = pd.read_parquet(root / "_streamops/quality" / f"{PAIR.name}.reconcile.parquet")
    return frame.sort_values("word").reset_index(drop=True)


def test_an_incremental_run_reads_only_new_batches_and_agrees_with_a_full_one(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given a first run while running_total had committed batches 0-3 only
    wc, rt = copies(real_sinks, tmp_path)
    held = {}
    for batch in (4, 5):
        for path in (rt.parent / "checkpoint/commits" / str(batch), rt / sink_file_name(batch)):
            held[path] = path.read_bytes()
            path.unlink()
    assert reconcile(tmp_path / "root", wc, rt).batches == [0, 1, 2, 3]
    # And running_total has caught up since
    for path, data in held.items():
        path.write_bytes(data)
    full = reconcile(tmp_path / "full", wc, rt)
    assert full.success, full.message()
    # When the batches already reconciled are gone from both sinks (as an age limit removes them)
    for sink in (wc, rt):
        for batch in range(4):
            (sink / sink_file_name(batch)).unlink()
    report = reconcile(tmp_path / "root", wc, rt)
    # Then the next run checks the two new points from where the first left each word
    assert report.success, report.message()
    assert report.batches == [4, 5]
    assert report.checked.endswith("2 new")
    assert not [n for n in report.notes if "no sink file" in n], report.notes
    # And it stands where a run over both whole sinks does
    pd.testing.assert_frame_equal(standing(tmp_path / "root"), standing(tmp_path / "full"))


def count_batch_twice(sink: Path, batch_id: int) -> None:
    """Add word_count batch `batch_id`'s counts to the next batch (its input read twice)."""
    again = pd.read_parquet(sink / sink_file_name(batch_id))

    def change(frame: pd.DataFrame) -> pd.DataFrame:
        extra = again.assign(batch_id=batch_id + 1, batch_time=frame["batch_time"].iloc[0])
        merged = pd.concat([frame, extra]).groupby(["batch_id", "batch_time", "word"])
        return merged["count"].sum().reset_index()

    rewrite_part(sink, batch_id + 1, change, WORD_COUNT_SCHEMA)


def test_a_duplicated_word_count_batch_is_caught(real_sinks: RealSinks, tmp_path: Path) -> None:
    # Given word_count's batch 1 counted a second time in batch 2
    wc, rt = copies(real_sinks, tmp_path)
    count_batch_twice(wc, 1)
    # When the pair is reconciled
    report = reconcile(tmp_path / "root", wc, rt)
    # Then the sums exceed the totals from batch 2 on, for batch 1's words
    assert not report.success
    failure = report.failures[0]
    assert failure.check == "wc~rt.reconcile"
    assert failure.batches[0] == 2
    message = report.message()
    assert message.splitlines()[0].startswith("streams wc and rt: ")
    assert "word='airflow'" in message  # a word of batch 1
    assert (
        "cumulative_count=2, running_total=1 (word_count_batch=2, running_total_batch=2" in message
    )


def test_a_duplicated_running_total_batch_is_caught(real_sinks: RealSinks, tmp_path: Path) -> None:
    # Given running_total's batch 2 added batch 1's counts a second time
    wc, rt = copies(real_sinks, tmp_path)
    counts = pd.read_parquet(wc / sink_file_name(1)).set_index("word")["count"]
    previous = pd.read_parquet(rt / sink_file_name(1)).set_index("word")["total"]

    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.set_index("word")
        for word, count in counts.items():
            base = frame["total"].get(word, previous[word])
            frame.loc[word, ["batch_id", "batch_time", "total"]] = [
                2,
                frame["batch_time"].iloc[0],
                base + count,
            ]
        return frame.reset_index()[RUNNING_TOTAL_SCHEMA.names]

    rewrite_part(rt, 2, change, RUNNING_TOTAL_SCHEMA)
    report = reconcile(tmp_path / "root", wc, rt)
    assert not report.success
    assert report.failures[0].batches[0] == 2
    assert "running_total=" in report.message()


@pytest.mark.parametrize("side", ["word_count", "running_total"])
def test_a_missing_batch_in_either_sink_is_caught(
    real_sinks: RealSinks, tmp_path: Path, side: str
) -> None:
    # Given one sink lost its batch 3 (the checkpoint committed it)
    wc, rt = copies(real_sinks, tmp_path)
    (wc if side == "word_count" else rt).joinpath(sink_file_name(3)).unlink()
    # When the pair is reconciled
    report = reconcile(tmp_path / "root", wc, rt)
    # Then the sums and totals differ at batch 3 for batch 3's words
    assert not report.success
    failure = report.failures[0]
    assert failure.batches[0] == 3
    assert "word='schedules'" in report.message()  # only in batch 3's input
    name = "wc" if side == "word_count" else "rt"
    assert f"{name}: committed batches 3 have no sink file" in " ".join(report.notes)


def test_a_duplicated_batch_is_caught_when_the_jobs_batch_differently(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    wc, rt = copies(real_sinks, tmp_path, "running_total_by2")
    count_batch_twice(wc, 2)
    report = reconcile(tmp_path / "root", wc, rt)
    assert not report.success
    # word_count batch 3 / running_total batch 1 is the first point after the duplicate
    assert "word_count_batch=3, running_total_batch=1" in report.message()


def test_streams_that_read_the_same_input_are_paired_beside_the_configured_pairs() -> None:
    from streamops.quality import pairs_to_reconcile
    from streamops.registry import StreamRecord

    def record(stream: str, job: str, input_: str, **params: object) -> StreamRecord:
        return StreamRecord(
            stream, job, f"/ck/{stream}", f"/sink/{stream}", input_, None, params=params
        )

    records = [
        record("wc_a", "word_count", "/in/a"),
        record("wc_a_windowed", "word_count", "/in/a", window="30 seconds"),
        record("rt_a", "running_total", "/in/a"),
        record("wc_b", "word_count", "/in/b"),
        record("rt_b1", "running_total", "/in/b"),
        record("rt_b2", "running_total", "/in/b"),
        record("wc_socket", "word_count", ""),
        record("rt_socket", "running_total", ""),
        record("rt_c", "running_total", "/in/c"),
    ]
    configured = [ReconcilePair("word_count", "running_total"), ReconcilePair("wc_a", "rt_a")]
    assert pairs_to_reconcile(configured, records) == [
        ReconcilePair("word_count", "running_total"),
        ReconcilePair("wc_a", "rt_a"),
        ReconcilePair("wc_b", "rt_b1"),
        ReconcilePair("wc_b", "rt_b2"),
    ]


def test_a_run_in_chunks_of_one_point_agrees_with_one_chunk(
    real_sinks: RealSinks, tmp_path: Path
) -> None:
    # Given both sinks, word_count's batch 2 counted twice
    wc, rt = copies(real_sinks, tmp_path)
    count_batch_twice(wc, 2)
    # When they are reconciled whole, and a point at a time (chunks of one row)
    whole = reconcile(tmp_path / "whole", wc, rt)
    runner = QualityRunner(str(tmp_path / "chunked"), replace(CONFIG, chunk_rows=1), run="test")
    chunked = reconcile_pair(
        runner,
        PAIR,
        StreamSink("wc", "word_count", str(wc), str(wc.parent / "checkpoint")),
        StreamSink("rt", "running_total", str(rt), str(rt.parent / "checkpoint")),
    )
    runner.commit()
    # Then both find the same failure at the same points, and stand at the same place
    assert chunked.checked.endswith("6 new, reconciled in 6 chunks"), chunked.checked
    assert not whole.success

    def found(report: Report) -> list[tuple[object, ...]]:
        return [
            (f.expectation, f.unexpected_count, f.element_count, f.batches) for f in report.failures
        ]

    assert found(chunked) == found(whole)
    assert (chunked.rows, chunked.batches) == (whole.rows, whole.batches)
    pd.testing.assert_frame_equal(standing(tmp_path / "chunked"), standing(tmp_path / "whole"))
