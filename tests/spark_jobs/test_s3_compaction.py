"""Compaction of a sink on S3 (a real S3-compatible server), where a move is a copy and a delete:
the reader contract still gives every batch once, and the grace period's deletes work the same.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from spark_jobs.compaction import CompactionPolicy, SinkBusy, compact
from spark_jobs.layout import SinkLayout, sink_file_name
from spark_jobs.lease import Lease
from spark_jobs.sinks import (
    WORD_COUNT_SCHEMA,
    ParquetBatchSink,
    read_sink,
    sink_files,
    with_batch_columns,
)
from spark_jobs.storage import Location
from tests.conftest import S3, S3_SERVER
from tests.spark_jobs.test_compaction import T0

pytestmark = [S3_SERVER]


def write_batches(sink: str, ids: range) -> None:
    """Batch i holds two rows: `w<i % 7>` counted 1 and `x<i % 5>` counted i + 1."""
    writer = ParquetBatchSink(sink, WORD_COUNT_SCHEMA)
    for i in ids:
        rows = pa.table({"word": [f"w{i % 7}", f"x{i % 5}"], "count": [1, i + 1]})
        writer.write(i, with_batch_columns(rows, i, T0))


def commit_through(checkpoint: str, last: int) -> None:
    """A checkpoint whose commit log says batches 0..last are committed."""
    for i in range(last + 1):
        Location.of(f"{checkpoint}/commits/{i}").write_text_atomic("v1\n{}")


def rows_per_batch(sink: str) -> dict[int, int]:
    table = read_sink(sink, columns=["batch_id"]).to_pandas()
    return {int(k): int(v) for k, v in table.groupby("batch_id").size().items()}


def test_compaction_on_s3_keeps_each_batch_once_and_deletes_after_the_grace(s3: S3) -> None:
    # Given a sink of 10 batches on S3, of which 0..6 are committed
    sink, checkpoint = s3.uri("sink"), s3.uri("ck")
    write_batches(sink, range(10))
    commit_through(checkpoint, 6)
    # When it is compacted, the merged files kept for an hour
    result = compact(sink, checkpoint, CompactionPolicy(grace_seconds=3600))
    # Then 0..6 are one file, 7..9 untouched, and the contract reads each batch once
    assert [f.name for f in result.written] == ["part-000000000000-000000000006.parquet"]
    assert [uri.rsplit("/", 1)[1] for uri in sink_files(sink)] == [
        "part-000000000000-000000000006.parquet",
        *(sink_file_name(i) for i in (7, 8, 9)),
    ]
    assert all(uri.startswith(f"{sink}/") for uri in sink_files(sink))
    assert rows_per_batch(sink) == dict.fromkeys(range(10), 2)
    # And the merged files left the folder (copied to _superseded/, deleted from it)
    names = {info.base_name for info in Location.of(sink).list()}
    assert not names & {sink_file_name(i) for i in range(7)}
    # When the rest is committed and compacted with no grace
    commit_through(checkpoint, 9)
    second = compact(sink, checkpoint, CompactionPolicy(grace_seconds=0))
    # Then one file holds every batch once, and the superseded ones are gone
    assert second.deleted == 11  # ten batch files and the first range
    assert [uri.rsplit("/", 1)[1] for uri in sink_files(sink)] == [
        "part-000000000000-000000000009.parquet"
    ]
    assert rows_per_batch(sink) == dict.fromkeys(range(10), 2)
    parquet = [i.base_name for i in Location.of(sink).list() if i.base_name.endswith(".parquet")]
    assert parquet == ["part-000000000000-000000000009.parquet"]
    # And the maintenance lease, a conditional object there too, was given back
    assert not SinkLayout.of(sink).maintenance_lease.exists()


def test_a_sink_on_s3_being_maintained_is_refused_with_its_holder(s3: S3) -> None:
    sink, checkpoint = s3.uri("sink"), s3.uri("ck")
    write_batches(sink, range(3))
    commit_through(checkpoint, 2)
    holder = Lease(SinkLayout.of(sink).maintenance_lease, "restore of x", "ops/run1")
    holder.acquire()
    try:
        with pytest.raises(SinkBusy, match=r"ops/run1.*run again once it is done"):
            compact(sink, checkpoint, CompactionPolicy(grace_seconds=0))
    finally:
        holder.release()
    assert compact(sink, checkpoint, CompactionPolicy(grace_seconds=0)).merged == 3
