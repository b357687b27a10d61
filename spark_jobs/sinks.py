"""Exactly-once Parquet sinks, written from `foreachBatch`.

Spark replays a micro-batch after a crash with the same batch id and the same input (both come
from the checkpoint's offset log), and may call `foreachBatch` again for a batch whose output was
already written. So the sink makes every write of a batch idempotent:

- A batch's rows go to one file whose name is its batch id (`layout.sink_file_name`). A replay
  rewrites the same file with the same rows instead of adding a second copy.
- The file is written under a hidden temporary name and renamed into place, so readers
  (pandas, pyarrow, DuckDB, Spark) see a whole batch or none of it.
- `batch_time` is the timestamp Spark recorded for the batch in the offset log, so a replay
  writes the same value.

A batch with no rows writes no file. Compaction (`compaction.py`) later merges committed
batches into range files and moves the merged files to `_superseded/`; `sink_files` and
`read_sink` are how a reader sees each batch exactly once at every moment, a read of the folder
itself at every moment but a compaction's commit (`layout.py`).
"""

from __future__ import annotations

import io
import logging
import re
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.layout import SinkLayout, list_sink_files, live_files, sink_file_name
from spark_jobs.storage import Location

log = logging.getLogger(__name__)

#: A batch file being written (`storage.Location.write_bytes_atomic`'s temporary name).
BATCH_TEMP_FILE = re.compile(r"^\.part-\d{12}\.parquet\.[0-9a-f]+\.tmp$")

BATCH_COLUMNS: list[pa.Field[Any]] = [
    pa.field("batch_id", pa.int64(), nullable=False),
    pa.field("batch_time", pa.timestamp("us", tz="UTC"), nullable=False),
]
WORD_COUNT_SCHEMA = pa.schema(
    [*BATCH_COLUMNS, pa.field("word", pa.string(), False), pa.field("count", pa.int64(), False)]
)
WINDOWED_WORD_COUNT_SCHEMA = pa.schema(
    [
        *BATCH_COLUMNS,
        pa.field("window_start", pa.timestamp("us", tz="UTC"), False),
        pa.field("window_end", pa.timestamp("us", tz="UTC"), False),
        pa.field("word", pa.string(), False),
        pa.field("count", pa.int64(), False),
    ]
)
RUNNING_TOTAL_SCHEMA = pa.schema(
    [*BATCH_COLUMNS, pa.field("word", pa.string(), False), pa.field("total", pa.int64(), False)]
)


class ParquetBatchSink:
    """A folder of Parquet files, one per micro-batch, that each batch lands in exactly once."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.root = Location.of(path)
        self.schema = schema

    def last_batch_id(self) -> int | None:
        """The largest batch id in the sink, or None when it is empty."""
        files = list_sink_files(self.root)
        return max((f.last for f in files), default=None)

    def remove_incomplete(self) -> int:
        """Delete hidden batch files left by a writer that was killed mid-write. Returns how many.

        Only batch files: a compaction running beside the job cleans up its own.
        """
        stale = [i for i in self.root.list() if BATCH_TEMP_FILE.match(i.base_name)]
        for info in stale:
            self.root.filesystem.delete_file(info.path)
        return len(stale)

    def write(self, batch_id: int, table: pa.Table) -> None:
        """Atomically write (or rewrite) the file of one batch."""
        buffer = io.BytesIO()
        pq.write_table(table.select(self.schema.names).cast(self.schema), buffer)
        self.root.child(sink_file_name(batch_id)).write_bytes_atomic(buffer.getvalue())


def with_batch_columns(table: pa.Table, batch_id: int, batch_time: datetime) -> pa.Table:
    """Prepend the `batch_id` and `batch_time` columns to a batch's result."""
    rows = table.num_rows
    table = table.add_column(0, "batch_time", pa.array([batch_time] * rows, BATCH_COLUMNS[1].type))
    return table.add_column(0, "batch_id", pa.array([batch_id] * rows, pa.int64()))


def format_batch(batch_time: datetime, table: pa.Table, value_column: str, limit: int = 10) -> str:
    """A batch printed the way the seed's DStream `pprint()` prints it."""
    rule = "-" * 43
    lines = [rule, f"Time: {batch_time:%Y-%m-%d %H:%M:%S}", rule]
    top = table.sort_by([(value_column, "descending"), ("word", "ascending")]).slice(0, limit)
    for word, value in zip(top["word"].to_pylist(), top[value_column].to_pylist(), strict=True):
        lines.append(f"({word}, {value})")
    if table.num_rows > limit:
        lines.append("...")
    return "\n".join(lines) + "\n"


def batch_time_of(timestamp_ms: int) -> datetime:
    """A Spark batch timestamp (epoch milliseconds) as a UTC datetime."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def sink_files(sink: str) -> list[str]:
    """The files to read so as to see every batch of a sink exactly once: the reader contract.

    Any Parquet reader takes the list (`pandas.read_parquet`, `pyarrow.parquet.read_table`,
    `duckdb.read_parquet`, `spark.read.parquet(*files)`). Local sinks give absolute paths, URI
    sinks (`s3://...`) URIs. Empty when the sink has no batch yet.

    A compaction that commits after this call moves the files it merged to
    `<sink>/_superseded/<name>`, and deletes them there after its grace period (default one
    hour). A read that then finds a listed file gone never counts a batch twice or misses one:
    it fails, and reading again from a new list is right. `read_sink` opens such a file in
    `_superseded/` instead; a read must end within the grace period.
    """
    root = Location.of(sink)
    prefix = sink.split("://", 1)[0] + "://" if "://" in sink else ""
    return [prefix + f.path for f in live_files(list_sink_files(root))]


def read_sink(sink: str, columns: list[str] | None = None) -> pa.Table:
    """A sink's rows as one Arrow table, every batch exactly once (`sink_files`, read by pyarrow).

    A listed file that a compaction moves to `_superseded/` before it is opened is read there
    (`SinkLayout.reader`); one deleted after the grace period since the listing makes it list
    again.
    """
    import pyarrow.dataset as ds

    layout = SinkLayout.of(sink)
    reader = layout.reader()
    for attempt in range(3):
        files = [f.path for f in layout.live()]
        if not files:
            return pa.table({})
        try:
            dataset = ds.dataset(files, format="parquet", filesystem=reader.filesystem)
            return dataset.to_table(columns=columns)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
