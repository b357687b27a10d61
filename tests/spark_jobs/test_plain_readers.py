"""Readers of a sink's folder itself read each batch exactly once, as readers of the contract do.

A compaction's commit renames its range file into place and moves the files it merged to
`_superseded/` right after; retention moves the files its tombstone expires the same way; a
truncation deletes what it removes. Plain readers, `pd.read_parquet(SINK)`, DuckDB's
`read_parquet('SINK/*.parquet')` and `spark.read.parquet(SINK)`, list no `_` folder, so they read
what the contract's reader (`read_sink`) reads, except for a read that overlaps a commit's window
(between the rename and the last move): the compaction records each window, each read its start
and end, and only reads that overlap a window are told apart from the rest.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.parquet as pq
import pytest

from spark_jobs import word_count
from spark_jobs.compaction import CompactionPolicy, compact, truncate
from spark_jobs.layout import (
    SinkLayout,
    sink_file_name,
    superseded_folder_name,
    tombstone_name,
)
from spark_jobs.sinks import read_sink, sink_files
from tests.conftest import ROOT, drop_file, job_command, run_available_now
from tests.spark_jobs.test_compaction import (
    HOUR,
    KEEP,
    commit_through,
    hours_ago,
    missing_file,
    overlaps,
    waiting,
    write_batches,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

COLUMNS = ["batch_id", "word", "count"]
Rows = Counter[tuple[int, str, int]]


def rows_of(records: list[tuple[object, ...]]) -> Rows:
    """Each (batch_id, word, count) row of a read, with how many times it was read."""
    return Counter((int(str(b)), str(w), int(str(c))) for b, w, c in records)


def plain_readers(spark: SparkSession) -> dict[str, Callable[[Path], Rows]]:
    """The rows each plain reader reads from a sink's folder, the usual way of each library."""
    import duckdb

    def with_duckdb(sink: Path) -> Rows:
        with duckdb.connect() as con:
            query = f"SELECT {', '.join(COLUMNS)} FROM read_parquet('{sink}/*.parquet')"
            return rows_of(con.sql(query).fetchall())

    return {
        "pandas": lambda sink: rows_of(
            list(pd.read_parquet(sink, columns=COLUMNS).itertuples(index=False))
        ),
        "duckdb": with_duckdb,
        "spark": lambda sink: rows_of(
            [tuple(r) for r in spark.read.parquet(str(sink)).select(*COLUMNS).collect()]
        ),
    }


def contract_rows(sink: Path) -> Rows:
    """The rows the reader contract reads (`read_sink`)."""
    table = read_sink(str(sink), COLUMNS)
    return rows_of(list(zip(*(table[c].to_pylist() for c in COLUMNS), strict=True)))


def visible(sink: Path) -> list[str]:
    """The names of the files directly in a sink's folder."""
    return sorted(p.name for p in sink.iterdir() if p.is_file())


def assert_plain_reads_equal_the_contract(spark: SparkSession, sink: Path) -> Rows:
    expected = contract_rows(sink)
    assert expected, "the sink holds no rows"
    for name, read in plain_readers(spark).items():
        assert read(sink) == expected, name
    return expected


@pytest.mark.spark
def test_plain_readers_read_each_batch_once_right_after_a_compaction(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given word_count run on 3 small files, one batch each
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    for i in range(3):
        drop_file(tmp_path / "in", f"{i}.txt", "hello hello world\nspark streaming\n")
    run_available_now(
        spark,
        word_count,
        [
            "--input", str(tmp_path / "in"),
            "--sink", str(sink),
            "--checkpoint", str(checkpoint),
            "--max-files-per-trigger", "1",
            "--shuffle-partitions", "2",
        ],
    )  # fmt: skip
    listed = sink_files(str(sink))
    assert len(listed) == 3
    # When the sink is compacted, its merged files kept for the grace period
    result = compact(str(sink), str(checkpoint), KEEP)
    assert result.merged == 3
    # Then only the range file is left in the folder, the merged files wait in _superseded/
    assert visible(sink) == ["part-000000000000-000000000002.parquet"]
    assert waiting(sink) == [sink_file_name(i) for i in range(3)]
    # And pandas, DuckDB and Spark reading the folder read what the contract reads
    rows = assert_plain_reads_equal_the_contract(spark, sink)
    assert sum(rows.values()) == 12
    assert sum(c * n for (_, word, c), n in rows.items() if word == "hello") == 6
    # And a read of the contract that listed the files before still reads them, each once
    under_way = pq.read_table(listed, filesystem=SinkLayout.of(str(sink)).reader().filesystem)
    assert sorted(under_way["batch_id"].to_pylist()) == sorted(b for b, _, _ in rows.elements())
    # While a reader given that list without the contract's filesystem fails; it never counts
    # a batch twice (it lists again)
    with pytest.raises(FileNotFoundError):
        pd.read_parquet(listed)  # type: ignore[call-overload]


@pytest.mark.spark
def test_retention_and_truncation_leave_no_double_count_for_plain_readers(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Given 10 committed batches, batch i written 10 - i hours ago
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(10), hours_ago({i: 10 - i for i in range(10)}))
    commit_through(checkpoint, 9)
    # When a compaction with an age limit of 3.5 hours expires batches 0..6 and merges 7..9
    policy = CompactionPolicy(grace_seconds=HOUR, retention_seconds=3.5 * HOUR)
    result = compact(str(sink), str(checkpoint), policy)
    assert (result.expired, result.merged) == (7, 3)
    # Then the expired and merged files are out of the folder, and plain readers read batches
    # 7..9 once, as the contract does
    assert visible(sink) == [tombstone_name(7), sink_file_name(7, 9)]
    rows = assert_plain_reads_equal_the_contract(spark, sink)
    assert sorted(set(b for b, _, _ in rows)) == [7, 8, 9]

    # When a restore to batch 8 cuts the range file (the files it merged still waiting)
    assert truncate(SinkLayout.of(str(sink)), 8, owner="test", reason="restore") == [7, 9]
    # Then plain readers read batches 7 and 8 once
    assert visible(sink) == [tombstone_name(7), sink_file_name(7, 8)]
    rows = assert_plain_reads_equal_the_contract(spark, sink)
    assert sorted(set(b for b, _, _ in rows)) == [7, 8]
    assert sink_file_name(9) not in waiting(sink)

    # When a restore goes back to batch 3, before the first batch kept, and the stream
    # recomputes batches 4 and 5
    removed = truncate(SinkLayout.of(str(sink)), 3, owner="test", reason="restore")
    assert removed == [4, 5, 6, 7, 7, 8]  # waiting in _superseded/: 4..8; in the folder: 7-8
    write_batches(sink, range(4, 6))
    # Then the expired batches up to 3 stay out of every read, and 4 and 5 are read once
    assert visible(sink) == [tombstone_name(4), sink_file_name(4), sink_file_name(5)]
    rows = assert_plain_reads_equal_the_contract(spark, sink)
    assert sorted(set(b for b, _, _ in rows)) == [4, 5]


def test_superseded_files_are_deleted_a_grace_period_after_they_were_superseded(
    tmp_path: Path,
) -> None:
    # Given batch files written ten hours ago
    sink, checkpoint = tmp_path / "sink", tmp_path / "ck"
    write_batches(sink, range(5))
    long_ago = time.time() - 10 * HOUR
    for i in range(5):
        os.utime(sink / sink_file_name(i), (long_ago, long_ago))
    commit_through(checkpoint, 4)
    # When they are compacted, with a grace period of an hour
    assert compact(str(sink), str(checkpoint), KEEP).merged == 5
    # Then they wait in a folder of _superseded/ named after the commit's time (a rename kept
    # their mtime of ten hours ago)
    layout = SinkLayout.of(str(sink))
    [(folder, since)] = layout.superseded_folders()
    assert since is not None
    assert abs((datetime.now(UTC) - since).total_seconds()) < 600
    assert waiting(sink) == [sink_file_name(i) for i in range(5)]
    assert (Path(folder.path) / sink_file_name(0)).stat().st_mtime == pytest.approx(long_ago)
    # And a run that grows the range file keeps them: they were superseded just now
    write_batches(sink, range(5, 7))
    commit_through(checkpoint, 6)
    second = compact(str(sink), str(checkpoint), KEEP)
    assert (second.merged, second.deleted) == (3, 0)
    assert len(layout.superseded_folders()) == 2
    # When an hour and more has passed since the first commit (its folder made older)
    older = since - timedelta(hours=1, minutes=1)
    Path(folder.path).rename(Path(folder.path).with_name(superseded_folder_name(older)))
    # Then the next run deletes its files, and keeps those of the second commit
    assert compact(str(sink), str(checkpoint), KEEP).deleted == 5
    assert waiting(sink) == sorted([sink_file_name(0, 4), sink_file_name(5), sink_file_name(6)])
    # And once those are past the grace period too, _superseded/ goes with them
    assert compact(str(sink), str(checkpoint), CompactionPolicy(grace_seconds=0)).deleted == 3
    assert sorted(p.name for p in sink.iterdir()) == ["_streamops", sink_file_name(0, 6)]
    assert sorted(contract_rows(sink)) == sorted(
        (b, w, c) for b in range(7) for w, c in ((f"w{b % 7}", 1), (f"x{b % 5}", b + 1))
    )


# A compaction every `pause` seconds until the stop file appears, each run's commit windows
# (time.monotonic, the same clock in every process of the machine) printed as a JSON line.
COMPACT_LOOP = """
import json, sys, time
from pathlib import Path
from spark_jobs.compaction import CompactionPolicy, compact
sink, checkpoint, stop, grace, pause = sys.argv[1:]
policy = CompactionPolicy(grace_seconds=float(grace))
while not Path(stop).exists():
    if Path(checkpoint, "commits").exists():
        result = compact(sink, checkpoint, policy)
        print(json.dumps({"windows": result.commit_windows, "merged": result.merged,
                          "deleted": result.deleted}), flush=True)
    time.sleep(float(pause))
"""

VOCABULARY = [f"word{i}" for i in range(30)]


class PlainReadLoops:
    """One thread per reader, reading the sink's folder again and again, recording every read:
    (started, ended, rows read or None, what failed)."""

    def __init__(self, readers: dict[str, Callable[[Path], Rows]], sink: Path) -> None:
        self.readers = readers
        self.sink = sink
        self.halt = threading.Event()
        self.reads: dict[str, list[tuple[float, float, Rows | None, str]]] = {
            name: [] for name in readers
        }
        self.threads = [threading.Thread(target=self.loop, args=(n,)) for n in readers]
        for thread in self.threads:
            thread.start()

    def loop(self, name: str) -> None:
        while not self.halt.wait(0.2):  # a pause between reads leaves the 2 cores some air
            started = time.monotonic()
            try:
                rows, failure = self.readers[name](self.sink), ""
            except Exception as err:  # each failure is checked against the commit windows
                kind = "missing file" if missing_file(err) else "error"
                rows, failure = None, f"{kind}: {type(err).__name__}: {str(err)[:500]}"
            self.reads[name].append((started, time.monotonic(), rows, failure))

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(timeout=300)


def exact(rows: Rows, truth: Rows) -> bool:
    """Whether a read holds every batch up to its newest exactly as the final sink does."""
    newest = max((b for b, _, _ in rows), default=-1)
    return rows == Counter({row: n for row, n in truth.items() if row[0] <= newest})


def check_reads(
    loops: PlainReadLoops, truth: Rows, windows: list[tuple[float, float]]
) -> dict[str, int]:
    """Check that every read of the loops was exact, but plain reads that overlapped a commit
    window (counting some batches twice, or failing on a file moved under them); how many of
    those each reader made."""
    in_window: dict[str, int] = {}
    for name, reads in loops.reads.items():
        in_window[name] = 0
        for started, ended, rows, failure in reads:
            if rows is not None and exact(rows, truth):
                continue
            what = failure or f"{sum(rows.values()) if rows else 0} rows, not those of the sink"
            assert name != "read_sink", f"the contract's read at {started:.3f}: {what}"
            assert overlaps((started, ended), windows), (
                f"{name}, read from {started:.3f} to {ended:.3f}, outside every commit: {what}"
            )
            assert failure == "" or failure.startswith("missing file"), (name, failure)
            in_window[name] += 1
    return in_window


def start_word_count(tmp_path: Path, inputs: Path, sink: Path, checkpoint: Path) -> Popen[bytes]:
    """word_count as its own process, a batch per input file, as soon as each arrives."""
    argv = [
        "--input", str(inputs),
        "--sink", str(sink),
        "--checkpoint", str(checkpoint),
        "--max-files-per-trigger", "1",
        "--shuffle-partitions", "2",
        "--trigger-interval", "0 seconds",
    ]  # fmt: skip
    return subprocess.Popen(
        job_command("word_count", *argv),
        start_new_session=True,  # its own process group: the JVM ends with the driver
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "word_count.log").open("wb"),
    )


@pytest.mark.spark
@pytest.mark.slow
def test_plain_readers_stay_exact_while_a_stream_is_compacted_in_a_loop(
    spark: SparkSession, tmp_path: Path
) -> None:
    """word_count writes a batch about every 0.3 s; a compaction runs every second with a
    2-second grace period, so files come into `_superseded/` and leave it all along; pandas,
    DuckDB and Spark read the folder, and `read_sink` the contract, in a loop."""
    sink, checkpoint, inputs = tmp_path / "sink", tmp_path / "ck", tmp_path / "in"
    stop = tmp_path / "stop-compacting"
    rng = random.Random(34)
    expected: Counter[str] = Counter()
    job = start_word_count(tmp_path, inputs, sink, checkpoint)
    compactions = subprocess.Popen(
        [sys.executable, "-c", COMPACT_LOOP, str(sink), str(checkpoint), str(stop), "2", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "compaction.log").open("wb"),
        text=True,
    )
    loops = None
    try:
        # While input arrives, a file every 0.3 s
        mtime = time.time() - 3600
        for i in range(150):
            text = "\n".join(" ".join(rng.choices(VOCABULARY, k=8)) for _ in range(5)) + "\n"
            expected.update(text.split())
            mtime += 1
            drop_file(inputs, f"{i:04d}.txt", text, mtime=mtime)
            if loops is None and list(sink.glob("part-*.parquet")):
                loops = PlainReadLoops({**plain_readers(spark), "read_sink": contract_rows}, sink)
            assert job.poll() is None, (tmp_path / "word_count.log").read_text()[-3000:]
            assert compactions.poll() is None, (tmp_path / "compaction.log").read_text()[-3000:]
            time.sleep(0.3)
        # And the stream catches up with it
        deadline = time.monotonic() + 180
        while sum(c for (_, _, c) in contract_rows(sink).elements()) < expected.total():
            assert time.monotonic() < deadline, "word_count did not catch up in 180 s"
            time.sleep(1)
    finally:
        if loops is not None:
            loops.stop()
        stop.touch()
        output, _ = compactions.communicate(timeout=300)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert loops is not None, "word_count wrote no batch"
    assert compactions.returncode == 0, (tmp_path / "compaction.log").read_text()[-3000:]
    runs = [json.loads(line) for line in output.splitlines()]
    windows = [(float(w[0]), float(w[1])) for run in runs for w in run["windows"]]

    # Then the sink holds every word once, and plain readers read what the contract reads
    truth = contract_rows(sink)
    totals: Counter[str] = Counter()
    for (_, word, count), n in truth.items():
        totals[word] += count * n
    assert totals == expected
    for name, read in plain_readers(spark).items():
        assert read(sink) == truth, name
    # And every read during the loop was exact, but plain reads that overlapped a commit
    in_window = check_reads(loops, truth, windows)
    # And the loop did what it is for: many commits, deletions from _superseded/ after the
    # grace period, and each reader read right between commits
    assert sum(1 for run in runs if run["merged"]) >= 10, runs
    assert sum(run["deleted"] for run in runs) > 0, runs
    first_commit = min(start for start, _ in windows)
    for name, reads in loops.reads.items():
        right = [r for r in reads if r[0] > first_commit and r[2] and exact(r[2], truth)]
        assert len(right) >= 5, (name, len(reads), in_window[name])
    sizes = [1000 * (end - start) for start, end in windows]
    print(
        f"{len(windows)} commits, windows median {statistics.median(sizes):.2f} ms, "
        f"max {max(sizes):.2f} ms; reads (of which overlapping a commit and not exact): "
        + ", ".join(f"{n} {len(r)} ({in_window[n]})" for n, r in loops.reads.items())
    )
