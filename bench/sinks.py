"""Sinks over time: read time, size on disk and quality cost, before and after compaction.

    .venv/bin/python bench/sinks.py [--batches 5000 20000 86400] [--rows-per-batch 20]

A trickle stream at the default 1-second trigger writes 86,400 batch files a day. For each size
N, N batches of R rows are written with the jobs' own `ParquetBatchSink`, and this measures:

- read time with pandas, `pd.read_parquet(sink_files(sink))`: before compaction, after it, and
  of the same rows written as one file (the baseline, measured in the same run);
- size on disk (allocated blocks) of the three;
- the compaction itself (`spark_jobs.compaction.compact`, everything committed);
- a `sink_quality` validation of 600 new batches (one 10-minute run at a 1-second trigger) on
  top of the compacted sink, its watermark at the rest, in a fresh process: time and peak RSS.
  Flat as N grows means the cost follows new data, not the sink.

Then a line is fitted through each curve and extrapolated to a day (86,400 batches) and a week
(604,800) where those were not measured. Ratios print as they come; `measure()` returns them for
the performance report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = 86_400
WEEK = 7 * DAY
READ_GOAL = 2.0  # compacted read time against one file
SIZE_GOAL = 1.5  # compacted size on disk against one file
NEW_BATCHES = 600  # what one sink_quality run (every 10 minutes) finds at a 1-second trigger


@dataclass
class SinkFigures:
    """One sink size's figures (seconds, bytes, MiB)."""

    batches: int
    rows: int
    files_before: int
    read_before: float
    read_after: float
    read_one_file: float
    disk_before: int
    disk_after: int
    disk_one_file: int
    compaction_seconds: float
    quality_seconds: float
    quality_peak_mib: float

    @property
    def read_ratio(self) -> float:
        """Compacted read time against one file."""
        return self.read_after / self.read_one_file

    @property
    def size_ratio(self) -> float:
        """Compacted size on disk against one file."""
        return self.disk_after / self.disk_one_file


def progress(message: str) -> None:
    """A progress line on stderr."""
    print(f"[sinks {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def disk_bytes(folder: Path) -> int:
    """Allocated bytes of the Parquet files in a folder (what `du` counts)."""
    return sum(p.stat().st_blocks * 512 for p in folder.glob("*.parquet"))


def write_sink(folder: Path, batches: int, rows_per_batch: int, first: int = 0) -> None:
    """Batches `first`.. of a word_count sink, written by the jobs' sink code."""
    import pyarrow as pa

    from spark_jobs.sinks import WORD_COUNT_SCHEMA, ParquetBatchSink, with_batch_columns

    sink = ParquetBatchSink(str(folder), WORD_COUNT_SCHEMA)
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    words = [f"word{i}" for i in range(rows_per_batch)]
    for batch_id in range(first, first + batches):
        counts = pa.table(
            {"word": words, "count": [1 + (batch_id + i) % 7 for i in range(len(words))]}
        )
        when = datetime.fromtimestamp(start + batch_id, UTC)
        sink.write(batch_id, with_batch_columns(counts, batch_id, when))


def timed_read(sink: Path, repeat: int = 1) -> tuple[float, int]:
    """Seconds to read the sink with pandas as the reader contract says (the median of `repeat`
    reads), and its rows."""
    import statistics

    import pandas as pd

    from spark_jobs.sinks import sink_files

    times = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(pd.read_parquet(sink_files(str(sink))))  # type: ignore[call-overload]
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def quality_run(root: Path, sink: Path, watermark: int) -> dict[str, float]:
    """Validate the batches after `watermark` in a fresh process; its seconds and peak RSS."""
    child = subprocess.run(
        [sys.executable, __file__, "--quality-child", str(root), str(sink), str(watermark)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"},
    )
    if child.returncode != 0:
        raise RuntimeError(f"the quality run failed: {child.stderr[-3000:]}")
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def quality_child(root: str, sink: str, watermark: int) -> None:
    """The measured process: one incremental validation of a word_count sink."""
    from expectations.suites import QualityConfig
    from expectations.validate import QualityRunner, StreamSink, ValidationState

    ValidationState("bench", sink, last_validated_batch_id=watermark).save(root)
    runner = QualityRunner(root, QualityConfig.load(), run="bench")
    started = time.perf_counter()
    report = runner.validate_stream(StreamSink("bench", "word_count", sink, running=False))
    seconds = time.perf_counter() - started
    if not report.success:
        raise SystemExit(report.message())
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib(), "rows": report.rows}))


def peak_rss_mib() -> float:
    """This process's peak RSS since it was exec'ed (`VmHWM`; `ru_maxrss` would also count
    the forking parent's memory, which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(work: Path, batches: int, rows_per_batch: int) -> SinkFigures:
    """Every figure of one sink size."""
    import pyarrow.parquet as pq

    from spark_jobs.compaction import CompactionPolicy, compact
    from spark_jobs.sinks import read_sink

    folder = work / f"batches-{batches}"
    shutil.rmtree(folder, ignore_errors=True)
    sink, one, checkpoint = folder / "sink", folder / "one", folder / "checkpoint"
    new = NEW_BATCHES
    progress(f"{batches:,} batches of {rows_per_batch} rows: writing them with ParquetBatchSink")
    write_sink(sink, batches, rows_per_batch)
    files_before = len(list(sink.glob("*.parquet")))
    read_before, rows = timed_read(sink)
    one.mkdir(parents=True)
    pq.write_table(read_sink(str(sink)), one / "part-000000000000.parquet")
    timed_read(one)  # warm pandas and the page cache up, as for the other reads
    read_one, _ = timed_read(one, repeat=5)
    disk_before, disk_one = disk_bytes(sink), disk_bytes(one)
    progress(f"{batches:,} batches: compacting (read before {read_before:.2f} s)")
    (checkpoint / "commits").mkdir(parents=True)
    for batch_id in range(batches):
        (checkpoint / "commits" / str(batch_id)).touch()
    started = time.perf_counter()
    compact(str(sink), str(checkpoint), CompactionPolicy(grace_seconds=0))
    compaction = time.perf_counter() - started
    read_after, rows_after = timed_read(sink, repeat=5)
    if rows_after != rows:
        raise RuntimeError(f"compaction changed the rows: {rows} before, {rows_after} after")
    disk_after = disk_bytes(sink)
    progress(f"{batches:,} batches: sink_quality on {new:,} new batches in a fresh process")
    write_sink(sink, new, rows_per_batch, first=batches)
    quality = quality_run(folder / "quality", sink, batches - 1)
    figures = SinkFigures(
        batches=batches,
        rows=rows,
        files_before=files_before,
        read_before=read_before,
        read_after=read_after,
        read_one_file=read_one,
        disk_before=disk_before,
        disk_after=disk_after,
        disk_one_file=disk_one,
        compaction_seconds=compaction,
        quality_seconds=quality["seconds"],
        quality_peak_mib=quality["peak_mib"],
    )
    print(
        f"{batches:>8,} batches: read {read_before:.2f} s before, {read_after:.3f} s after, "
        f"{read_one:.3f} s one file (after / one file x{figures.read_ratio:.2f}, before "
        f"x{read_before / read_one:.0f}); disk {disk_before / 2**20:.1f} MiB before, "
        f"{disk_after / 2**20:.2f} after, {disk_one / 2**20:.2f} one file "
        f"(x{figures.size_ratio:.2f}); compaction {compaction:.1f} s; quality on {new:,} new "
        f"batches {quality['seconds']:.2f} s, peak {quality['peak_mib']:.0f} MiB",
        flush=True,
    )
    shutil.rmtree(folder, ignore_errors=True)
    return figures


def extrapolate(points: list[tuple[int, float]], at: int) -> float:
    """A least-squares line through the origin and (batches, value), read at `at`: reading
    and listing grow in proportion to the files."""
    slope = sum(x * y for x, y in points) / sum(x * x for x, _ in points)
    return slope * at


def measure(work: Path, sizes: list[int], rows_per_batch: int = 20) -> list[SinkFigures]:
    """Figures for each size, smallest first."""
    return [measure_one(work, batches, rows_per_batch) for batches in sorted(sizes)]


def summary(figures: list[SinkFigures]) -> list[str]:
    """The extrapolated day and week, and whether the goals hold."""
    lines = []
    for label, at in (("a day", DAY), ("a week", WEEK)):
        measured = [f for f in figures if f.batches == at]
        how = "measured" if measured else f"extrapolated from {len(figures)} sizes"
        names = ("read_before", "read_after", "read_one_file")
        if measured:
            reads = [getattr(measured[0], name) for name in names]
        else:
            reads = [extrapolate([(f.batches, getattr(f, n)) for f in figures], at) for n in names]
        lines.append(
            f"{label} ({at:,} batches, {how}): read {reads[0]:.1f} s before compaction, "
            f"{reads[1]:.2f} s after, {reads[2]:.2f} s as one file"
        )
    worst_read = max(f.read_ratio for f in figures)
    worst_size = max(f.size_ratio for f in figures)
    quality = [f.quality_seconds for f in figures]
    peaks = [f.quality_peak_mib for f in figures]
    lines.append(
        f"goals: compacted read within x{READ_GOAL:g} of one file: worst x{worst_read:.2f} "
        f"({'met' if worst_read <= READ_GOAL else 'missed'}); size within x{SIZE_GOAL:g}: "
        f"worst x{worst_size:.2f} ({'met' if worst_size <= SIZE_GOAL else 'missed'}); quality "
        f"on {NEW_BATCHES} new batches {min(quality):.2f}-{max(quality):.2f} s and "
        f"{min(peaks):.0f}-{max(peaks):.0f} MiB peak across sizes"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure, print each size and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[5_000, 20_000, DAY])
    parser.add_argument("--rows-per-batch", type=int, default=20)
    parser.add_argument("--quality-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quality_child:
        root, sink, watermark = args.quality_child
        quality_child(root, sink, int(watermark))
        return 0
    with tempfile.TemporaryDirectory(prefix="streamops-bench-sinks-") as work:
        figures = measure(Path(work), args.batches, args.rows_per_batch)
    for line in summary(figures):
        print(line)
    print(json.dumps([asdict(f) for f in figures]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
