"""Compaction keeps every batch exactly once for readers that follow the sink's reader contract.

Sinks here are written by the real `ParquetBatchSink`; which batches are committed comes from a
checkpoint's `commits/` log (the only part of a checkpoint compaction reads), or from a real
stream in `test_compaction_stream.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pytest

from spark_jobs.compaction import (
    CompactionPolicy,
    SinkBusy,
    SinkHistory,
    compact,
    sink_stats,
    truncate,
)
from spark_jobs.layout import (
    SUPERSEDED_DIR,
    SinkFile,
    SinkLayout,
    SinkLayoutError,
    live_files,
    sink_file_name,
    superseded_files,
)
from spark_jobs.lease import Lease
from spark_jobs.sinks import (
    WORD_COUNT_SCHEMA,
    ParquetBatchSink,
    read_sink,
    sink_files,
    with_batch_columns,
)
from tests.conftest import ROOT

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPARK_LISTING_THRESHOLD = "spark.sql.sources.parallelPartitionDiscovery.threshold"
KEEP = CompactionPolicy(grace_seconds=3600)
NOW = CompactionPolicy(grace_seconds=0)


def write_batches(
    sink: Path, ids: range, batch_time: Callable[[int], datetime] = lambda _i: T0
) -> None:
    """Batch i holds two rows: `w<i % 7>` counted 1 and `x<i % 5>` counted i + 1."""
    writer = ParquetBatchSink(str(sink), WORD_COUNT_SCHEMA)
    for i in ids:
        rows = pa.table({"word": [f"w{i % 7}", f"x{i % 5}"], "count": [1, i + 1]})
        writer.write(i, with_batch_columns(rows, i, batch_time(i)))


def commit_through(checkpoint: Path, last: int) -> None:
    """A checkpoint whose commit log says batches 0..last are committed."""
    (checkpoint / "commits").mkdir(parents=True, exist_ok=True)
    for i in range(last + 1):
        (checkpoint / "commits" / str(i)).touch()


def read_pandas(files: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    """`pd.read_parquet(sink_files(SINK))`, as the README says (pandas hands the list of files to
    pyarrow; its type stubs only know single paths)."""
    return pd.read_parquet(files, columns=columns)  # type: ignore[call-overload,no-any-return]


def waiting(sink: Path) -> list[str]:
    """The names of the files waiting in a sink's `_superseded/` folders, sorted."""
    return sorted(p.name for p in (sink / SUPERSEDED_DIR).glob("*/*"))


def rows_per_batch(frame: pd.DataFrame) -> dict[int, int]:
    return {int(str(k)): int(v) for k, v in frame.groupby("batch_id").size().items()}


def sf(first: int, last: int) -> SinkFile:
    return SinkFile(first, last, f"/s/{sink_file_name(first, last)}")


def test_the_reader_contract_takes_each_batch_from_one_file() -> None:
    files = [sf(i, i) for i in range(6)] + [sf(0, 3), sf(0, 5), sf(6, 6)]
    assert [(f.first, f.last) for f in live_files(files)] == [(0, 5), (6, 6)]
    superseded = {(old.first, old.last): holder.last for old, holder in superseded_files(files)}
    assert superseded == {
        (0, 0): 5,
        (1, 1): 5,
        (2, 2): 5,
        (3, 3): 5,
        (4, 4): 5,
        (5, 5): 5,
        (0, 3): 5,
    }
    with pytest.raises(SinkLayoutError, match="partly overlapping batch ranges"):
        live_files([sf(0, 3), sf(2, 5)])
    assert SinkFile.parse("part-000000000002-000000000009.parquet", "p") == SinkFile(2, 9, "p")
    assert SinkFile.parse("part-000000000009-000000000002.parquet", "p") is None
    assert SinkFile.parse("part-000000000002.parquet.abc.tmp", "p") is None
    # A retention tombstone expires every batch before it, and is never read itself
    tombstone = SinkFile.parse("_expired-before-000000000004", "t")
    assert tombstone == SinkFile(0, 3, "t", tombstone=True)
    assert tombstone.name == "_expired-before-000000000004"
    assert [(f.first, f.last) for f in live_files([*files, tombstone])] == [(0, 5), (6, 6)]
    assert [(f.first, f.last) for f in live_files([*files[:6], tombstone])] == [(4, 4), (5, 5)]
    one = SinkFile.parse("_expired-before-000000000001", "t")
    assert [(f.first, f.tombstone) for f in live_files([sf(0, 0), one, sf(1, 1)])] == [(1, False)]


def test_compaction_merges_committed_batches_and_keeps_the_rest(tmp_path: Path) -> None:
    # Given a sink of 10 batches, of which 0..6 are committed
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(10))
    commit_through(checkpoint, 6)
    before = read_pandas(sink_files(str(sink)))
    # When it is compacted
    result = compact(str(sink), str(checkpoint), KEEP)
    # Then batches 0..6 are one file, and 7..9 (may still be replayed) are untouched
    assert [f.name for f in result.written] == ["part-000000000000-000000000006.parquet"]
    assert result.merged == 7
    assert result.deleted == 0
    assert [Path(p).name for p in sink_files(str(sink))] == [
        "part-000000000000-000000000006.parquet",
        *(sink_file_name(i) for i in (7, 8, 9)),
    ]
    # And every reader that follows the contract sees the same rows, each batch once
    after = read_pandas(sink_files(str(sink)))
    pd.testing.assert_frame_equal(
        after.sort_values(["batch_id", "word"]).reset_index(drop=True),
        before.sort_values(["batch_id", "word"]).reset_index(drop=True),
    )
    assert read_sink(str(sink)).num_rows == 20
    # And the merged files leave the folder at once, so that a plain reader of it reads each
    # batch once too
    assert not (sink / sink_file_name(3)).exists()
    assert rows_per_batch(pd.read_parquet(sink)) == dict.fromkeys(range(10), 2)
    # And they wait in _superseded/ for the grace period, then go
    assert waiting(sink) == [sink_file_name(i) for i in range(7)]
    commit_through(checkpoint, 9)
    second = compact(str(sink), str(checkpoint), NOW)
    assert [f.name for f in second.written] == ["part-000000000000-000000000009.parquet"]
    assert second.deleted == 11  # ten batch files and the first range
    assert sorted(p.name for p in sink.glob("*.parquet")) == [
        "part-000000000000-000000000009.parquet"
    ]
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == dict.fromkeys(range(10), 2)
    # And the sink's history and stats say what happened
    history = SinkHistory.read(SinkLayout.of(str(sink)))
    assert [c["merged"] for c in history.compactions] == [7, 4]
    stats = sink_stats(str(sink), rows_cache={})
    assert (stats.files, stats.live_files, stats.rows) == (1, 1, 20)
    assert stats.last_compaction == history.compactions[-1]["time"]


def test_a_sink_without_committed_batches_is_left_alone(tmp_path: Path) -> None:
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(3))
    (checkpoint / "commits").mkdir(parents=True)
    result = compact(str(sink), str(checkpoint), NOW)
    assert result.summary() == "nothing to compact: no committed batch yet"
    assert len(list(sink.glob("*.parquet"))) == 3
    with pytest.raises(FileNotFoundError, match="compact a sink with the checkpoint"):
        compact(str(sink), str(tmp_path / "nope"), NOW)


def test_files_of_another_schema_are_not_merged_with_the_others(tmp_path: Path) -> None:
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(3))
    odd = pa.table({"batch_id": [3], "word": ["a"]})
    import pyarrow.parquet as pq

    pq.write_table(odd, sink / sink_file_name(3))
    write_batches(sink, range(4, 7))
    commit_through(checkpoint, 6)
    result = compact(str(sink), str(checkpoint), KEEP)
    assert [f.name for f in result.written] == [
        "part-000000000000-000000000002.parquet",
        "part-000000000004-000000000006.parquet",
    ]


def test_truncation_cuts_a_compacted_file_at_the_restored_batch(tmp_path: Path) -> None:
    # Given batches 0..9 compacted into one file (the merged ones still there)
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(10))
    commit_through(checkpoint, 9)
    compact(str(sink), str(checkpoint), KEEP)
    # When a restore of a snapshot at batch 4 truncates the sink
    removed = truncate(SinkLayout.of(str(sink)), 4, owner="test", reason="restore")
    # Then batches 0..4 remain, each once, and nothing after them
    assert removed == [0, 5, 6, 7, 8, 9]  # the range 0-9 and the batch files after 4
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == dict.fromkeys(range(5), 2)
    assert [Path(p).name for p in sink_files(str(sink))] == [
        "part-000000000000-000000000004.parquet"
    ]
    history = SinkHistory.read(SinkLayout.of(str(sink)))
    assert history.truncations[-1]["after"] == 4
    assert history.truncations[-1]["reason"] == "restore"


HOUR = 3600.0


def hours_ago(ages: dict[int, float]) -> Callable[[int], datetime]:
    now = datetime.now(UTC)
    return lambda i: now - timedelta(hours=ages[i])


def test_retention_expires_the_oldest_files_whole_and_a_restore_below_it_lowers_it(
    tmp_path: Path,
) -> None:
    # Given 10 committed batches, batch i written 10 - i hours ago
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(10), hours_ago({i: 10 - i for i in range(10)}))
    commit_through(checkpoint, 9)
    # When it is compacted with an age limit of 3.5 hours
    policy = CompactionPolicy(grace_seconds=HOUR, retention_seconds=3.5 * HOUR)
    result = compact(str(sink), str(checkpoint), policy)
    # Then batches 0..6 (4 hours old or more) expired in one step, the rest was merged
    assert (result.expired, result.expired_before) == (7, 7)
    assert "expired 7 files (kept batches from 7)" in result.summary()
    assert (sink / "_expired-before-000000000007").exists()
    assert [Path(p).name for p in sink_files(str(sink))] == [
        "part-000000000007-000000000009.parquet"
    ]
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == dict.fromkeys([7, 8, 9], 2)
    # And the expired files leave the folder at once, stay in _superseded/ for reads under
    # way, then go; the tombstone stays
    assert not (sink / sink_file_name(0)).exists()
    assert waiting(sink) == [sink_file_name(i) for i in range(10)]  # expired 0..6, merged 7..9
    layout = SinkLayout.of(str(sink))
    history = SinkHistory.read(layout)
    assert history.retention is not None
    assert history.retention["max_age_days"] == 3.5 / 24
    assert history.retention["expired_before"] == 7
    later = compact(str(sink), str(checkpoint), CompactionPolicy(0, 0, 3.5 * HOUR))
    assert later.deleted == 10  # batches 0..9: seven expired, three merged
    assert sorted(p.name for p in sink.iterdir() if not p.name.startswith("_streamops")) == [
        "_expired-before-000000000007",
        "part-000000000007-000000000009.parquet",
    ]
    stats = sink_stats(str(sink), rows_cache={})
    assert (stats.files, stats.live_files, stats.rows) == (1, 1, 6)
    assert (stats.retention_days, stats.expired_before) == (3.5 / 24, 7)
    # And a plain directory reader does not trip over the tombstone
    assert pa.parquet.read_table(str(sink)).num_rows == 6  # type: ignore[attr-defined]

    # When a restore goes back to batch 3, before the first batch kept
    removed = truncate(layout, 3, owner="test", reason="restore")
    # Then only batches up to 3 stay expired: the recomputed batches 4.. are read again
    assert removed == [7]
    assert [p.name for p in sink.glob("_expired-*")] == ["_expired-before-000000000004"]
    assert sink_files(str(sink)) == []
    write_batches(sink, range(4, 6))
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == {4: 2, 5: 2}


def test_retention_keeps_the_newest_file_so_batch_ids_go_on(tmp_path: Path) -> None:
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(3), hours_ago(dict.fromkeys(range(3), 240.0)))
    commit_through(checkpoint, 2)
    result = compact(str(sink), str(checkpoint), CompactionPolicy(0, 0, 24 * HOUR))
    assert (result.expired, result.expired_before) == (2, 2)
    assert [Path(p).name for p in sink_files(str(sink))] == [sink_file_name(2)]
    assert ParquetBatchSink(str(sink), WORD_COUNT_SCHEMA).last_batch_id() == 2
    # And retention off by default: nothing expires
    write_batches(sink, range(3, 5), hours_ago(dict.fromkeys(range(3, 5), 240.0)))
    commit_through(checkpoint, 4)
    assert compact(str(sink), str(checkpoint), NOW).expired == 0


def test_a_compacted_file_spans_at_most_a_day_and_only_the_newest_one_grows(
    tmp_path: Path,
) -> None:
    # Given batches 10 hours apart
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(5), hours_ago({i: 50 - 10 * i for i in range(6)}))
    commit_through(checkpoint, 4)
    first = compact(str(sink), str(checkpoint), KEEP)
    # Then a file ends before a batch more than a day after its oldest one
    assert [f.name for f in first.written] == [
        "part-000000000000-000000000002.parquet",
        "part-000000000003-000000000004.parquet",
    ]
    # And a next run grows the newest compacted file only: the closed one is not rewritten
    closed = sink / "part-000000000000-000000000002.parquet"
    before = closed.stat().st_mtime_ns
    write_batches(sink, range(5, 6), hours_ago({5: 0.0}))
    commit_through(checkpoint, 5)
    second = compact(str(sink), str(checkpoint), KEEP)
    assert [f.name for f in second.written] == ["part-000000000003-000000000005.parquet"]
    assert closed.stat().st_mtime_ns == before
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == dict.fromkeys(range(6), 2)


def test_a_sink_being_maintained_is_refused_with_its_holder(tmp_path: Path) -> None:
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(3))
    commit_through(checkpoint, 2)
    holder = Lease(SinkLayout.of(str(sink)).maintenance_lease, "restore of x", "ops/run1")
    holder.acquire()
    try:
        with pytest.raises(SinkBusy, match=r"ops/run1.*run again once it is done"):
            compact(str(sink), str(checkpoint), NOW)
    finally:
        holder.release()
    assert compact(str(sink), str(checkpoint), NOW).merged == 3


KILL_AFTER = """
import os, signal, sys
from spark_jobs import compaction
original = compaction._RangeWriter.{method}
def killed(self, *args):
    result = original(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)
    return result
compaction._RangeWriter.{method} = killed
sys.exit(compaction.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("method", ["_flush", "commit"])
def test_a_compaction_killed_midway_leaves_every_batch_once(tmp_path: Path, method: str) -> None:
    # Given a committed sink of 300 batches
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(300))
    commit_through(checkpoint, 299)
    argv = ["--sink", str(sink), "--checkpoint", str(checkpoint), "--grace-seconds", "0"]
    # When its compaction is killed (SIGKILL) with its file half written, or just renamed
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER.format(method=method), *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Then a reader still sees each batch exactly once
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == dict.fromkeys(range(300), 2)
    left = {p.name for p in sink.iterdir()}
    if method == "_flush":
        assert any(n.startswith(".compact-") for n in left), left  # the half-written file
    else:
        assert "part-000000000000-000000000299.parquet" in left
    # And the next run takes over the dead run's lease and finishes the work
    again = subprocess.run(
        [sys.executable, "-m", "spark_jobs.compaction", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(p.name for p in sink.iterdir()) == [
        "_streamops",
        "part-000000000000-000000000299.parquet",
    ]
    assert rows_per_batch(read_pandas(sink_files(str(sink)))) == dict.fromkeys(range(300), 2)


#: How each reader says that a file it listed was gone when it opened it: pyarrow and DuckDB
#: ("No files found": DuckDB takes each path of a list for a glob), then Spark's conditions and
#: the JVM's exception (a footer Spark could not read names its cause only in the stack trace).
MISSING_FILE = (
    "No such file or directory",
    "No files found that match the pattern",
    "PATH_NOT_FOUND",
    "FILE_NOT_EXIST",
    "java.io.FileNotFoundException",
    "java.nio.file.NoSuchFileException",
)


def missing_file(err: Exception) -> bool:
    """Whether a read failed because a file it had listed was gone when it opened it."""
    text = f"{err}\n{getattr(err, '_stackTrace', '')}"  # pyspark keeps the JVM's trace there
    return isinstance(err, FileNotFoundError) or any(m in text for m in MISSING_FILE)


def overlaps(read: tuple[float, float], windows: list[tuple[float, float]]) -> bool:
    """Whether a read (start, end, monotonic) overlaps any of the commit windows."""
    return any(read[0] <= end and start <= read[1] for start, end in windows)


def documented_readers(spark: SparkSession) -> dict[str, Callable[[list[str]], list[int]]]:
    """The batch ids each reader of the README reads from the files `sink_files` lists."""
    import duckdb
    import pyarrow.parquet as pq

    return {
        "pandas": lambda files: read_pandas(files, ["batch_id"])["batch_id"].tolist(),
        "pyarrow": lambda files: pq.read_table(files, columns=["batch_id"])["batch_id"].to_pylist(),
        "duckdb": lambda files: [
            row[0] for row in duckdb.read_parquet(files).select("batch_id").fetchall()
        ],
        "spark": lambda files: [
            row[0] for row in spark.read.parquet(*files).select("batch_id").collect()
        ],
    }


class ReaderLoops:
    """One thread per reader, reading the sink again and again, checking every read.

    A read that fails on a missing file (a compaction's commit moved a file it had listed) is
    recorded in `missing` and read again, unless the reader is `strict`; the test checks that
    each such read overlapped a commit. Any other failure, and any wrong count, ends the loop.
    """

    def __init__(
        self,
        readers: dict[str, Callable[[list[str]], list[int]]],
        sink: Path,
        expected: Counter[int],
        strict: tuple[str, ...] = (),
    ) -> None:
        self.readers = readers
        self.sink = sink
        self.expected = expected
        self.strict = strict
        self.halt = threading.Event()
        # Each reader's reads: (started, seconds, files read), on the monotonic clock
        self.reads: dict[str, list[tuple[float, float, int]]] = {name: [] for name in readers}
        # Each reader's reads that failed on a missing file: (started, ended)
        self.missing: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
        self.wrong: list[str] = []
        self.threads = [threading.Thread(target=self.loop, args=(n,)) for n in readers]
        for thread in self.threads:
            thread.start()

    def loop(self, name: str) -> None:
        while not self.halt.wait(0.5):  # a pause between reads leaves the 2 cores some air
            started = time.monotonic()
            files = sink_files(str(self.sink))
            try:
                ids = self.readers[name](files)
            except Exception as err:  # a failed read is what the test looks for
                if name not in self.strict and missing_file(err):
                    self.missing[name].append((started, time.monotonic()))
                    continue
                self.wrong.append(f"{name}: {type(err).__name__}: {err}"[:800])
                return
            self.reads[name].append((started, time.monotonic() - started, len(files)))
            counted = Counter(ids)
            if counted != self.expected:
                extra = sorted((counted - self.expected).keys())[:5]
                missing = sorted((self.expected - counted).keys())[:5]
                self.wrong.append(f"{name}: duplicated batches {extra}, missing {missing}")
                return

    def wait_for_reads_started_after(self, moment: float, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while any(not any(r[0] > moment for r in runs) for runs in self.reads.values()):
            assert not self.wrong, self.wrong
            assert time.monotonic() < deadline, {n: len(r) for n, r in self.reads.items()}
            time.sleep(0.5)

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(timeout=600)


@pytest.mark.spark
@pytest.mark.slow
def test_readers_see_each_batch_once_while_a_large_sink_is_compacted(
    tmp_path: Path, spark: SparkSession
) -> None:
    """20,000 batch files, compacted in four steps and then cleaned, while `read_sink`, pandas,
    pyarrow, DuckDB and Spark read the sink in a loop, each the way the README says.

    Every read counts each batch once. `read_sink` never fails: a file it listed before a
    commit moved it is read from `_superseded/`. A read of a `sink_files` list by another
    reader fails on such a file (and is read again) only if it overlapped a commit."""
    batches = 20_000
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(batches))
    readers = {
        "read_sink": lambda _files: read_sink(str(sink), ["batch_id"])["batch_id"].to_pylist(),
        **documented_readers(spark),
    }
    # Spark lists a long list of files from the driver, as docs/sinks.md advises
    spark.conf.set(SPARK_LISTING_THRESHOLD, "100000")
    loops = ReaderLoops(
        readers, sink, Counter({i: 2 for i in range(batches)}), strict=("read_sink",)
    )
    steps = []
    try:
        # While they read, the sink is compacted in four steps, as its batches get committed
        began = time.monotonic()
        for through in (4_999, 9_999, 14_999, batches - 1):
            commit_through(checkpoint, through)
            steps.append(compact(str(sink), str(checkpoint), KEEP))
        compacted = time.monotonic()
        # Reads that listed the sink before the last step end (what the grace period is for),
        # then the merged files are deleted while the readers go on
        loops.wait_for_reads_started_after(compacted)
        steps.append(compact(str(sink), str(checkpoint), NOW))
        loops.wait_for_reads_started_after(time.monotonic())
    finally:
        loops.stop()
        spark.conf.unset(SPARK_LISTING_THRESHOLD)
    assert not loops.wrong, loops.wrong
    # Each reader read during the compaction (reads are (started, seconds, files))
    assert all(runs[0][0] < compacted for runs in loops.reads.values())
    # And a read failed on a file moved under it only if a commit overtook it
    windows = [window for step in steps for window in step.commit_windows]
    assert len(windows) == 4
    for name, failed in loops.missing.items():
        assert all(overlaps(read, windows) for read in failed), (name, failed, windows)
    assert [len(s.written) for s in steps] == [1, 1, 1, 1, 0]
    assert steps[-1].deleted == batches + 3  # every batch file and the first three ranges
    assert sorted(p.name for p in sink.glob("*.parquet")) == [
        f"part-000000000000-{batches - 1:012d}.parquet"
    ]
    longest_window = max(1000 * (end - start) for start, end in windows)
    print(
        f"compaction in 4 steps: {compacted - began:.1f} s, commit windows up to "
        f"{longest_window:.1f} ms; reads:"
    )
    for name, runs in loops.reads.items():
        longest = max(runs, key=lambda r: r[1])
        print(
            f"  {name}: {len(runs)}, longest {longest[1]:.1f} s ({longest[2]:,} files); "
            f"{len(loops.missing[name])} overtaken by a commit, read again"
        )
