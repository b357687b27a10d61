"""How long the sink quality checks take, with Great Expectations on pandas and on Spark.

What is measured
----------------
For each size (default 1,000,000 and 10,000,000 rows per sink) the benchmark writes two
synthetic, valid sinks with pyarrow, in the jobs' exact layout: a word_count sink and the
running_total sink of the same counts (totals consistent, so every check passes). Batches hold
distinct words drawn from a 200,000-word vocabulary; files hold `--rows-per-file` rows (default:
1,000 for 1e6 rows, 10,000 for 1e7, so 1,000 files either way). Then, each step in a fresh
subprocess (so its peak memory is its own):

- `pandas full`: the production path, `QualityRunner.validate_stream(revalidate_all=True)` for
  both sinks (read every file with pyarrow, build the views, run the schema, rows, volume and
  freshness suites on pandas, store the results), then the Data Docs build.
- `pandas incremental`: the same after 10 new batches arrive, from the watermark the full run
  left: what a scheduled run costs in steady state.
- `pandas reconcile`: the reconciliation of the two sinks (read both, the per-word view at every
  batch, the GX pair expectation), batch-aligned.
- `spark local[2]`: the same rows and volume suites run by GX on Spark DataFrames (read with
  `spark.read.parquet`, the derived columns with Spark functions and a window for
  `total_not_decreasing`), in a local[2] session with a 4 GB driver. Session start-up is
  reported apart; the schema suite (file footers) and freshness (one file) do not depend on
  the engine and are left out.

Figures: `seconds` is wall time of the step; `rows/s` is the sink rows checked per second;
`peak MB` is the step's peak resident memory (Python process; for Spark without the JVM).
Absolute figures depend on the machine and its load: compare rows within one run.

    .venv/bin/python bench/quality.py [--quick] [--sizes 1000000 10000000] [--workdir DIR]

`--quick`: 100,000 and 1,000,000 rows, for a check in about two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

VOCABULARY = 200_000
NEW_BATCHES = 10
MARKER = "BENCH-RESULT "


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Synthetic sinks


def write_sinks(folder: Path, rows: int, rows_per_file: int, first_batch: int = 0) -> None:
    """A word_count sink and its running_total sink under `folder`, `rows` rows each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spark_jobs.layout import sink_file_name
    from spark_jobs.sinks import RUNNING_TOTAL_SCHEMA, WORD_COUNT_SCHEMA

    rng = np.random.default_rng(first_batch)
    vocabulary = pa.array([f"word{i}" for i in range(VOCABULARY)])
    totals_file = folder / "totals.npy"
    totals = np.load(totals_file) if totals_file.exists() else np.zeros(VOCABULARY, np.int64)
    (folder / "word_count").mkdir(parents=True, exist_ok=True)
    (folder / "running_total").mkdir(parents=True, exist_ok=True)
    files = rows // rows_per_file
    # One batch a second, the newest a minute ago: fresh for the freshness suite.
    start = datetime.now(UTC).timestamp() - files - 60
    for number in range(files):
        batch_id = first_batch + number
        words = rng.choice(VOCABULARY, rows_per_file, replace=False)
        counts = rng.integers(1, 6, rows_per_file)
        totals[words] += counts
        batch = pa.array(np.full(rows_per_file, batch_id, np.int64))
        when = pa.array(np.full(rows_per_file, int((start + number) * 1_000_000), np.int64)).cast(
            pa.timestamp("us", tz="UTC")
        )
        word = vocabulary.take(pa.array(words))
        name = sink_file_name(batch_id)
        wc = pa.table([batch, when, word, pa.array(counts)], schema=WORD_COUNT_SCHEMA)
        rt = pa.table([batch, when, word, pa.array(totals[words])], schema=RUNNING_TOTAL_SCHEMA)
        pq.write_table(wc, folder / "word_count" / name)
        pq.write_table(rt, folder / "running_total" / name)
    np.save(totals_file, totals)


# ---------------------------------------------------------------------------------------------
# Steps (each run in its own subprocess)


def step_pandas_full(folder: Path, rows: int) -> dict[str, Any]:
    """Both sinks, every batch, with the production runner; then the Data Docs."""
    from expectations.suites import QualityConfig
    from expectations.validate import QualityRunner, StreamSink

    runner = QualityRunner(str(folder / "root"), QualityConfig.load(), run="bench-full")
    started = time.perf_counter()
    checked = 0
    for job in ("word_count", "running_total"):
        report = runner.validate_stream(
            StreamSink(job, job, str(folder / job), running=True), revalidate_all=True
        )
        if not report.success:
            raise SystemExit(f"FAIL: a synthetic sink failed validation:\n{report.message()}")
        checked += report.rows
    validated = time.perf_counter() - started
    runner.build_docs()
    runner.commit()
    docs = time.perf_counter() - started - validated
    return {"seconds": validated, "rows": checked, "docs_seconds": docs}


def step_pandas_incremental(folder: Path, rows: int) -> dict[str, Any]:
    """Both sinks after `NEW_BATCHES` new batches, from the watermark of the full run."""
    from expectations.suites import QualityConfig
    from expectations.validate import QualityRunner, StreamSink

    runner = QualityRunner(str(folder / "root"), QualityConfig.load(), run="bench-incremental")
    started = time.perf_counter()
    checked = 0
    for job in ("word_count", "running_total"):
        report = runner.validate_stream(StreamSink(job, job, str(folder / job), running=True))
        if not report.success or len(report.batches) != NEW_BATCHES:
            raise SystemExit(f"FAIL: incremental run checked {report.batches}")
        checked += report.rows
    runner.build_docs()
    runner.commit()
    return {"seconds": time.perf_counter() - started, "rows": checked}


def step_pandas_reconcile(folder: Path, rows: int) -> dict[str, Any]:
    """Reconcile the two sinks batch by batch (the view and the GX pair expectation)."""
    from expectations import suites
    from expectations.reconcile import CommonPoint, read_sink, reconciliation_view
    from expectations.suites import QualityConfig
    from expectations.validate import QualityRunner, StreamSink

    runner = QualityRunner(str(folder / "root"), QualityConfig.load(), run="bench-reconcile")
    started = time.perf_counter()
    wc, wc_ids = read_sink(
        StreamSink("wc", "word_count", str(folder / "word_count")), suites.WORD_COUNT
    )
    rt, _ = read_sink(
        StreamSink("rt", "running_total", str(folder / "running_total")), suites.RUNNING_TOTAL
    )
    view = reconciliation_view(wc, rt, [CommonPoint(b, b, 0) for b in wc_ids])
    ok, failures = runner.validate_view(
        suites.reconcile_suite("bench"), view, ["word_count_batch", "running_total_batch", "word"]
    )
    if not ok:
        raise SystemExit(f"FAIL: the synthetic sinks do not reconcile: {failures[0].describe()}")
    return {"seconds": time.perf_counter() - started, "rows": len(wc) + len(rt)}


def step_spark(folder: Path, rows: int) -> dict[str, Any]:
    """The rows and volume suites run by GX on Spark DataFrames (local[2])."""
    os.environ["PYSPARK_SUBMIT_ARGS"] = "--master local[2] --driver-memory 4g pyspark-shell"
    started = time.perf_counter()
    import great_expectations as gx
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from expectations import suites
    from expectations.suites import QualityConfig
    from spark_jobs.session import build_session

    spark = build_session("bench-quality")
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    startup = time.perf_counter() - started
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(folder / "spark-gx"))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_spark("spark")
    thresholds = QualityConfig.load().thresholds("bench", "word_count")
    started = time.perf_counter()
    checked = 0
    for job, contract in (
        ("word_count", suites.WORD_COUNT),
        ("running_total", suites.RUNNING_TOTAL),
    ):
        frame = spark.read.parquet(str(folder / job)).withColumn(
            "file_batch_id",
            F.regexp_extract(F.input_file_name(), r"part-(\d{12})\.parquet", 1).cast("long"),
        )
        if contract is suites.RUNNING_TOTAL:
            previous = F.lag("total").over(Window.partitionBy("word").orderBy("batch_id"))
            frame = frame.withColumn(
                "total_not_decreasing", F.coalesce(F.col("total") >= previous, F.lit(True))
            )
        frame = frame.cache()
        checked += frame.count()
        volume = frame.groupBy(F.col("file_batch_id").alias("batch_id")).agg(
            F.count("*").alias("rows")
        )
        for name, suite, data in (
            ("rows", suites.rows_suite(job, contract), frame),
            ("volume", suites.volume_suite(job, thresholds), volume),
        ):
            asset = source.add_dataframe_asset(f"{job}.{name}")
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(
                    name=f"{job}.{name}",
                    data=asset.add_batch_definition_whole_dataframe("all"),
                    suite=context.suites.add(suite),
                )
            )
            result = definition.run(
                batch_parameters={"dataframe": data},
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": [
                        "batch_id" if name == "volume" else "file_batch_id"
                    ],
                },
            )
            if not result.success:
                raise SystemExit(
                    f"FAIL: GX on Spark failed {job}.{name}: {result.describe()[:2000]}"
                )
        frame.unpersist()
    seconds = time.perf_counter() - started
    spark.stop()
    return {"seconds": seconds, "rows": checked, "startup_seconds": startup}


STEPS: dict[str, Callable[[Path, int], dict[str, Any]]] = {
    "pandas full": step_pandas_full,
    "pandas incremental": step_pandas_incremental,
    "pandas reconcile": step_pandas_reconcile,
    "spark local[2]": step_spark,
}


def run_step(name: str, folder: Path, rows: int) -> dict[str, Any]:
    """Run one step in a subprocess; its result and peak memory."""
    command = [
        sys.executable,
        __file__,
        "--step",
        name,
        "--folder",
        str(folder),
        "--rows",
        str(rows),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step {name!r} at {rows:,} rows failed:\n{output[-3000:]}")
    line = next(x for x in output.splitlines() if x.startswith(MARKER))
    result = dict(json.loads(line[len(MARKER) :]))
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


# ---------------------------------------------------------------------------------------------
# Report


def report(results: list[tuple[int, str, dict[str, Any]]]) -> None:
    """The table of every step."""
    header = f"{'rows/sink':>12}  {'step':<20} {'seconds':>8} {'rows/s':>11} {'peak MB':>8}  notes"
    print()
    print(header)
    print("-" * len(header))
    for rows, step, result in results:
        notes = []
        if "docs_seconds" in result:
            notes.append(f"+ Data Docs build {result['docs_seconds']:.1f} s")
        if "startup_seconds" in result:
            notes.append(f"+ session start {result['startup_seconds']:.1f} s; JVM not in peak MB")
        if step == "pandas incremental":
            notes.append(f"{NEW_BATCHES} new batches per sink")
        rate = result["rows"] / result["seconds"] if result["seconds"] else float("nan")
        print(
            f"{rows:>12,}  {step:<20} {result['seconds']:>8.1f} {rate:>11,.0f} "
            f"{result['peak_mb']:>8,.0f}  {'; '.join(notes)}"
        )
    print()
    print("rows/s counts the rows of both sinks checked by the step (2 x rows/sink for full runs).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 and 1,000,000 rows")
    parser.add_argument("--sizes", type=int, nargs="+", help="rows per sink (default 1e6 1e7)")
    parser.add_argument(
        "--rows-per-file", type=int, help="rows per batch file (default: 1/1000 of the size)"
    )
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--workdir", type=Path, help="where sinks go (default: a temp folder)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden --step, one step of it)."""
    args = parse_args(argv)
    if args.step:
        result = STEPS[args.step](args.folder, args.rows)
        print(MARKER + json.dumps(result), flush=True)
        return 0
    sizes = args.sizes or ([100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    results = []
    try:
        for rows in sizes:
            per_file = args.rows_per_file or max(rows // 1000, 100)
            folder = workdir / f"rows-{rows}"
            shutil.rmtree(folder, ignore_errors=True)
            log(f"writing two sinks of {rows:,} rows ({rows // per_file:,} files each)")
            write_sinks(folder, rows, per_file)
            for step in args.steps:
                if step == "pandas incremental":
                    write_sinks(
                        folder, NEW_BATCHES * per_file, per_file, first_batch=rows // per_file
                    )
                log(f"{rows:,} rows: {step}")
                results.append((rows, step, run_step(step, folder, rows)))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
