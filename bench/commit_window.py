"""The commit window of a compaction: how long a reader of a sink's folder itself may be wrong.

    .venv/bin/python bench/commit_window.py [--files 10 600 3600] [--rounds 20]

A compaction commits by renaming its range file into place and, right after, moving the files
it merged to `_superseded/` (`spark_jobs/compaction.py`). In between, a plain reader of the
folder (`pd.read_parquet(SINK)`, DuckDB's `SINK/*.parquet`, `spark.read.parquet(SINK)`) may list
the range file beside some of the merged files. This measures that window as the compaction
records it (`CompactionResult.commit_windows`: from just before the rename to the last move).

For each size N, the same sink gets N new batch files (20 rows each, written by the jobs' own
`ParquetBatchSink`) and a compaction, `--rounds` times in a row: each round merges the N new
files with the newest range file, as the hourly `sink_compaction` run does (N = 3,600 is an hour
at a 1-second trigger). Prints each size's median and largest window in milliseconds, and the
whole compaction's time for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS_PER_BATCH = 20


def write_batches(sink: Path, first: int, count: int) -> None:
    """`count` batch files from batch `first` on, as a trickle stream writes them."""
    import pyarrow as pa

    from spark_jobs.sinks import WORD_COUNT_SCHEMA, ParquetBatchSink, with_batch_columns

    writer = ParquetBatchSink(str(sink), WORD_COUNT_SCHEMA)
    words = [f"w{i}" for i in range(ROWS_PER_BATCH)]
    for batch_id in range(first, first + count):
        rows = pa.table({"word": words, "count": [1 + batch_id % 7] * ROWS_PER_BATCH})
        writer.write(batch_id, with_batch_columns(rows, batch_id, datetime.now(UTC)))


def commit_through(checkpoint: Path, first: int, last: int) -> None:
    """Mark batches first..last committed in the checkpoint's commit log."""
    commits = checkpoint / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    for batch_id in range(first, last + 1):
        (commits / str(batch_id)).touch()


def measure(work: Path, files: int, rounds: int) -> dict[str, float]:
    """The windows of `rounds` compactions of `files` new batch files each, in milliseconds."""
    from spark_jobs.compaction import CompactionPolicy, compact

    sink, checkpoint = work / f"sink-{files}", work / f"ck-{files}"
    policy = CompactionPolicy(grace_seconds=3600)
    windows, seconds, moved = [], [], []
    first = 0
    for _ in range(rounds):
        write_batches(sink, first, files)
        commit_through(checkpoint, first, first + files - 1)
        first += files
        started = time.perf_counter()
        result = compact(str(sink), str(checkpoint), policy)
        seconds.append(time.perf_counter() - started)
        if len(result.commit_windows) != 1:
            raise RuntimeError(f"expected one commit, got {result.summary()}")
        start, end = result.commit_windows[0]
        windows.append(1000 * (end - start))
        moved.append(result.merged)
    return {
        "files": files,
        "moved": statistics.median(moved),
        "median_ms": statistics.median(windows),
        "max_ms": max(windows),
        "compaction_s": statistics.median(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10, 600, 3600])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(
        f"{'new files':>9} | {'moved':>6} | {'window median':>13} | {'window max':>10} | "
        f"{'compaction':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="streamops-commit-window-") as work:
        for files in args.files:
            row = measure(Path(work), files, args.rounds)
            print(
                f"{files:>9,} | {row['moved']:>6,.0f} | {row['median_ms']:>10.2f} ms | "
                f"{row['max_ms']:>7.2f} ms | {row['compaction_s']:>8.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
