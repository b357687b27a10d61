"""The sink's exactly-once mechanics, without Spark: idempotent batch files and generations."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from spark_jobs.layout import CheckpointLayout, Generation
from spark_jobs.runner import RefusedToStart, resolve_generation
from spark_jobs.sinks import (
    WORD_COUNT_SCHEMA,
    ParquetBatchSink,
    format_batch,
    sink_files,
    with_batch_columns,
)

T0 = datetime(2025, 10, 27, 10, 30, tzinfo=UTC)


def counts(words: dict[str, int]) -> pa.Table:
    return pa.table({"word": list(words), "count": list(words.values())})


def test_rewriting_a_batch_replaces_it_instead_of_adding_a_copy(tmp_path: Path) -> None:
    # Given a sink that already holds batch 0
    sink = ParquetBatchSink(str(tmp_path), WORD_COUNT_SCHEMA)
    sink.write(0, with_batch_columns(counts({"hello": 2, "spark": 2}), 0, T0))
    # When Spark replays batch 0 after a crash
    sink.write(0, with_batch_columns(counts({"hello": 2, "spark": 2}), 0, T0))
    sink.write(1, with_batch_columns(counts({"hello": 1}), 1, T0))
    # Then every reader sees each batch once
    frame = pd.read_parquet(tmp_path)
    assert len(frame) == 3
    assert frame.groupby("word")["count"].sum().to_dict() == {"hello": 3, "spark": 2}
    assert sink.last_batch_id() == 1
    assert sink_files(str(tmp_path)) == [
        str(tmp_path / "part-000000000000.parquet"),
        str(tmp_path / "part-000000000001.parquet"),
    ]


def test_sink_columns_have_the_contract_types(tmp_path: Path) -> None:
    sink = ParquetBatchSink(str(tmp_path), WORD_COUNT_SCHEMA)
    sink.write(7, with_batch_columns(counts({"a": 1}), 7, T0))
    frame = pd.read_parquet(tmp_path)
    assert list(frame.columns) == ["batch_id", "batch_time", "word", "count"]
    assert str(frame["batch_id"].dtype) == "int64"
    assert str(frame["count"].dtype) == "int64"
    assert str(frame["batch_time"].dtype).startswith("datetime64")
    assert frame["batch_time"].iloc[0] == pd.Timestamp(T0)


def test_files_left_by_a_killed_writer_are_invisible_and_removed(tmp_path: Path) -> None:
    sink = ParquetBatchSink(str(tmp_path), WORD_COUNT_SCHEMA)
    sink.write(0, with_batch_columns(counts({"a": 1}), 0, T0))
    (tmp_path / ".part-000000000001.parquet.abc.tmp").write_bytes(b"PAR1 half written")
    assert len(pd.read_parquet(tmp_path)) == 1
    assert sink.remove_incomplete() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["part-000000000000.parquet"]


def args_for(tmp_path: Path, **overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "checkpoint": str(tmp_path / "ck"),
        "sink": str(tmp_path / "sink"),
        "source": "file",
        "allow_new_checkpoint": False,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def test_new_checkpoint_on_empty_sink_starts_at_batch_zero(tmp_path: Path) -> None:
    args = args_for(tmp_path)
    layout = CheckpointLayout.of(args.checkpoint)
    sink = ParquetBatchSink(args.sink, WORD_COUNT_SCHEMA)
    assert resolve_generation(layout, sink, args) == Generation(0)
    assert Generation.read(layout) == Generation(0)


def test_new_checkpoint_on_a_filled_sink_is_refused_for_the_file_source(tmp_path: Path) -> None:
    args = args_for(tmp_path)
    sink = ParquetBatchSink(args.sink, WORD_COUNT_SCHEMA)
    sink.write(4, with_batch_columns(counts({"a": 1}), 4, T0))
    with pytest.raises(RefusedToStart, match=r"already holds batches up to 4.*count it twice"):
        resolve_generation(CheckpointLayout.of(args.checkpoint), sink, args)


def test_allowed_new_checkpoint_continues_the_sink_batch_ids(tmp_path: Path) -> None:
    args = args_for(tmp_path, allow_new_checkpoint=True)
    layout = CheckpointLayout.of(args.checkpoint)
    sink = ParquetBatchSink(args.sink, WORD_COUNT_SCHEMA)
    sink.write(4, with_batch_columns(counts({"a": 1}), 4, T0))
    generation = resolve_generation(layout, sink, args)
    assert generation == Generation(5)
    assert generation.sink_batch_id(0) == 5
    # A restart reads the recorded generation, whatever the sink holds by then.
    sink.write(5, with_batch_columns(counts({"a": 1}), 5, T0))
    assert resolve_generation(layout, sink, args_for(tmp_path)) == Generation(5)


def test_console_output_looks_like_the_seed_pprint() -> None:
    text = format_batch(T0, counts({"spark": 2, "hello": 2, "world": 1, "streaming": 1}), "count")
    assert text == (
        "-------------------------------------------\n"
        "Time: 2025-10-27 10:30:00\n"
        "-------------------------------------------\n"
        "(hello, 2)\n(spark, 2)\n(streaming, 1)\n(world, 1)\n"
    )


def test_console_output_shows_at_most_ten_pairs() -> None:
    text = format_batch(T0, counts({f"w{i}": i for i in range(1, 13)}), "count")
    assert text.count("(") == 10
    assert "(w12, 12)" in text
    assert text.endswith("...\n")
